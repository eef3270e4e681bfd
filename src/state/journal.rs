//! The journal beside a state file: what an apply has done since it began,
//! one line per finished resource.
//!
//! Rewriting the whole state after every resource costs O(N²) bytes and two
//! fsyncs a resource; at a thousand objects that was most of an apply. A
//! journal line is a few hundred bytes, appended; lines are synced to disk
//! together every [`SYNC_EVERY`] (group commit).
//! At the end the state is written whole once and the journal removed.
//!
//! A killed run leaves the state as it was when the run began plus its
//! journal: [`replay`] (called by [`super::store::load`]) puts the two back
//! together, so every later reader sees what really happened. The journal
//! names the state it continues (lineage and serial): once the state has been
//! written whole again, an old journal no longer matches and is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ResourceState, State, StateError};
use crate::stack::Address;

/// One finished step of an apply, as it changes the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum is buffered while it is
// read, which the raw `applied` JSON of an entry cannot go through.
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// The resource is now as recorded (and no longer released).
    Put {
        address: Address,
        entry: Box<ResourceState>,
    },
    /// The resource is gone, or no longer rayform's.
    Remove { address: Address },
}

impl Change {
    pub fn address(&self) -> &Address {
        match self {
            Change::Put { address, .. } | Change::Remove { address } => address,
        }
    }
}

impl State {
    pub fn apply_change(&mut self, change: &Change) {
        match change {
            Change::Put { address, entry } => {
                self.released.remove(address);
                self.resources.insert(address.clone(), (**entry).clone());
            }
            Change::Remove { address } => {
                self.resources.remove(address);
            }
        }
    }
}

/// The first line: which state this journal continues.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    journal: u32,
    lineage: String,
    serial: u64,
}

pub fn journal_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    state.with_file_name(name)
}

/// How often appended lines are synced to disk (group commit): syncing
/// each one would make a thousand-object apply wait on a thousand fsyncs.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    state: PathBuf,
    path: PathBuf,
    file: Mutex<Appender>,
}

#[derive(Debug)]
struct Appender {
    file: File,
    synced: Instant,
}

impl Journal {
    /// Writes `state` whole (bumping its serial) and starts an empty journal after it.
    pub fn begin(path: &Path, state: &mut State) -> Result<Journal, StateError> {
        super::store::save(path, state)?;
        let journal = journal_path(path);
        let io = |action, source| StateError::Io {
            action,
            path: journal.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.create(true).write(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&journal).map_err(|e| io("create", e))?;
        let header = Header {
            journal: 1,
            lineage: state.lineage.clone(),
            serial: state.serial,
        };
        let mut line = serde_json::to_vec(&header).map_err(|e| io("serialize", e.into()))?;
        line.push(b'\n');
        file.write_all(&line).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        Ok(Journal {
            state: path.to_path_buf(),
            path: journal,
            file: Mutex::new(Appender {
                file,
                synced: Instant::now(),
            }),
        })
    }

    /// Appends one change. It is in the file when this returns, so a killed
    /// run loses nothing; it reaches the disk itself with the next sync, at
    /// most [`SYNC_EVERY`] later (a power cut may lose that much, which the
    /// lineage on the objects written then lets the next run recover).
    pub fn append(&self, change: &Change) -> Result<(), StateError> {
        let io = |action, source| StateError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(change).map_err(|e| io("serialize", e.into()))?;
        line.push(b'\n');
        let mut a = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.file.write_all(&line).map_err(|e| io("append to", e))?;
        if a.synced.elapsed() >= SYNC_EVERY {
            a.file.sync_data().map_err(|e| io("sync", e))?;
            a.synced = Instant::now();
        }
        Ok(())
    }

    /// Folds the journal into the state file and removes it.
    pub fn finish(&self, state: &mut State) -> Result<(), StateError> {
        super::store::save(&self.state, state)
    }
}

/// Applies the journal left beside `path` by a run that did not finish, if
/// it continues this very state. Returns how many changes it applied.
pub fn replay(path: &Path, state: &mut State) -> Result<usize, StateError> {
    let journal = journal_path(path);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: journal,
                source,
            });
        }
    };
    let mut lines = text.split_inclusive('\n');
    let header: Option<Header> = lines
        .next()
        .and_then(|l| serde_json::from_str(l.trim_end()).ok());
    match header {
        Some(h) if h.lineage == state.lineage && h.serial == state.serial => {}
        _ => return Ok(0),
    }
    let mut applied = 0;
    // A line without its newline is the one the kill interrupted: not done.
    for line in lines.filter(|l| l.ends_with('\n')) {
        let change: Change =
            serde_json::from_str(line.trim_end()).map_err(|e| StateError::Corrupt {
                path: journal.clone(),
                message: e.to_string(),
            })?;
        state.apply_change(&change);
        applied += 1;
    }
    Ok(applied)
}

/// Removes the journal once the state it belongs to has been written whole.
pub(super) fn remove(path: &Path) {
    let _ = fs::remove_file(journal_path(path));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::ResourceType;

    fn entry(name: &str) -> Box<ResourceState> {
        Box::new(ResourceState {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: name.into(),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: None,
            desired_fingerprint: "d".into(),
            live_fingerprint: "l".into(),
            applied: crate::state::Applied::new(&serde_json::json!({"data": {"a": "1"}})),
            secret_fingerprints: Default::default(),
            patch: None,
        })
    }

    fn put(name: &str) -> Change {
        Change::Put {
            address: Address::new(ResourceType::Manifest, name),
            entry: entry(name),
        }
    }

    #[test]
    fn a_killed_runs_journal_is_replayed_up_to_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut state = State::new("s");
        let journal = Journal::begin(&path, &mut state).unwrap();
        journal.append(&put("a")).unwrap();
        journal.append(&put("b")).unwrap();
        journal
            .append(&Change::Remove {
                address: Address::new(ResourceType::Manifest, "a"),
            })
            .unwrap();
        // The kill lands in the middle of the next line.
        let mut text = fs::read_to_string(journal_path(&path)).unwrap();
        text.push_str(r#"{"put":{"address":"manifest.c","#);
        fs::write(journal_path(&path), text).unwrap();

        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        let names: Vec<String> = loaded.resources.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["manifest.b"]);
        assert_eq!(
            loaded.resources[&Address::new(ResourceType::Manifest, "b")],
            *entry("b")
        );
    }

    #[test]
    fn a_journal_left_beside_a_state_written_whole_since_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let a = Address::new(ResourceType::Manifest, "a");
        let mut state = State::new("s");
        state.resources.insert(a.clone(), *entry("a"));
        let journal = Journal::begin(&path, &mut state).unwrap();
        journal
            .append(&Change::Remove { address: a.clone() })
            .unwrap();
        let stale = fs::read(journal_path(&path)).unwrap();
        // A later run put `a` back and wrote the state whole, which removes
        // the journal; an old journal reappearing must not remove `a` again.
        crate::state::store::save(&path, &mut state).unwrap();
        assert!(
            !journal_path(&path).exists(),
            "a whole write removes the journal"
        );
        fs::write(journal_path(&path), stale).unwrap();

        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        assert!(loaded.resources.contains_key(&a));
    }
}
