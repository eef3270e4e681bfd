//! The journal beside a state file: what an apply has done since it began,
//! one line per finished resource.
//!
//! Rewriting the whole state after every resource costs O(N²) bytes and two
//! fsyncs a resource; at a thousand objects that was most of an apply. A
//! journal line is a few hundred bytes, appended; a flusher thread syncs
//! the lines written close together in one go (group commit), each within
//! [`SYNC_EVERY`] of its write.
//! At the end the state is written whole once and the journal removed.
//!
//! A killed run leaves the state as it was when the run began plus its
//! journal: [`replay`] (called by [`super::store::load`]) puts the two back
//! together, so every later reader sees what really happened. The journal
//! names the state it continues (lineage and serial): once the state has been
//! written whole again, an old journal no longer matches and is ignored. A
//! damaged line stops the replay there (see [`Cut`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
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

/// How long after its write a line is on disk (group commit): syncing each
/// one would make a thousand-object apply wait on a thousand fsyncs.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// How long the flusher gathers lines before it syncs them: half of
/// [`SYNC_EVERY`], the other half is for the sync itself.
const GATHER: Duration = Duration::from_millis(50);

/// How the journal reaches the disk. [`Fsync`] is the real one; a test puts
/// in one that counts, or fails, to see what the journal does about it.
pub trait Durability: Send + Sync + 'static {
    /// The file's data is on disk.
    fn sync_file(&self, file: &File) -> std::io::Result<()>;
    /// The directory's entries (a file just created in it) are on disk.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// `fsync(2)` on the file and on its directory.
#[derive(Debug, Clone, Copy)]
pub struct Fsync;

impl Durability for Fsync {
    fn sync_file(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        super::store::sync_dir(dir)
    }
}

/// An open journal. Lines are synced by a flusher thread at most
/// [`SYNC_EVERY`] after they were appended, whether or not another line
/// follows: the last line before a readiness wait of half an hour is on
/// disk within a tenth of a second of its write, not at the end.
pub struct Journal {
    state: PathBuf,
    path: PathBuf,
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the appender and the flusher share.
struct Shared {
    appender: Mutex<Appender>,
    /// Wakes the flusher: a line to sync, or the journal closing.
    wake: Condvar,
    disk: Box<dyn Durability>,
}

struct Appender {
    file: File,
    /// Change lines written, and how many of them are known to be on disk.
    written: usize,
    synced: usize,
    /// When the oldest line not yet synced was written.
    pending_since: Option<Instant>,
    /// A sync that failed in the background, reported by the next append.
    failed: Option<std::io::Error>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Journal {
    /// Writes `state` whole (bumping its serial) and starts an empty journal after it.
    pub fn begin(path: &Path, state: &mut State) -> Result<Journal, StateError> {
        Journal::begin_with(path, state, Box::new(Fsync))
    }

    /// [`Journal::begin`], reaching the disk through `disk`.
    pub fn begin_with(
        path: &Path,
        state: &mut State,
        disk: Box<dyn Durability>,
    ) -> Result<Journal, StateError> {
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
        disk.sync_file(&file).map_err(|e| io("sync", e))?;
        // A new file's name is durable only once its directory is: without
        // this, a power cut could leave the data on disk under no name.
        disk.sync_dir(parent(&journal))
            .map_err(|e| io("sync the directory of", e))?;
        let flush_file = file.try_clone().map_err(|e| io("open", e))?;
        let shared = Arc::new(Shared {
            appender: Mutex::new(Appender {
                file,
                written: 0,
                synced: 0,
                pending_since: None,
                failed: None,
                closing: false,
            }),
            wake: Condvar::new(),
            disk,
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("rayform-journal".into())
                .spawn(move || flush(&shared, &flush_file))
                .map_err(|e| io("start the flusher of", e))?
        };
        Ok(Journal {
            state: path.to_path_buf(),
            path: journal,
            shared,
            flusher: Some(flusher),
        })
    }

    /// Appends one change. It is in the file when this returns, so a killed
    /// run loses nothing; it reaches the disk itself within [`SYNC_EVERY`]
    /// (a power cut may lose that much, which the lineage on the objects
    /// written then lets the next run recover).
    pub fn append(&self, change: &Change) -> Result<(), StateError> {
        let io = |action, source| StateError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(change).map_err(|e| io("serialize", e.into()))?;
        line.push(b'\n');
        let mut a = self.shared.lock();
        if let Some(e) = a.failed.take() {
            return Err(io("sync", e));
        }
        a.file.write_all(&line).map_err(|e| io("append to", e))?;
        a.written += 1;
        if a.pending_since.is_none() {
            a.pending_since = Some(Instant::now());
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// How many appended lines are known to be on disk.
    pub fn synced(&self) -> usize {
        self.shared.lock().synced
    }

    /// Folds the journal into the state file and removes it.
    pub fn finish(&self, state: &mut State) -> Result<(), StateError> {
        super::store::save(&self.state, state)
    }
}

impl Drop for Journal {
    /// Stops the flusher, which syncs what is still pending first.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// The flusher: waits for a line, lets [`GATHER`] gather the lines that
/// follow it (less if the journal closes), and syncs them together. The sync
/// runs outside the lock (on a second handle of the same file), so appends
/// never wait for the disk.
fn flush(shared: &Shared, file: &File) {
    let mut a = shared.lock();
    loop {
        let Some(since) = a.pending_since else {
            if a.closing {
                return;
            }
            a = shared.wake.wait(a).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let due = since + GATHER;
        let now = Instant::now();
        if now < due && !a.closing {
            a = shared
                .wake
                .wait_timeout(a, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let covered = a.written;
        a.pending_since = None;
        drop(a);
        let result = shared.disk.sync_file(file);
        a = shared.lock();
        match result {
            Ok(()) => a.synced = a.synced.max(covered),
            Err(e) => a.failed = Some(e),
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// What replaying a journal gave back.
#[derive(Debug, Default)]
pub struct Replay {
    /// Changes applied to the state.
    pub applied: usize,
    /// Where the journal stopped being readable, if it did before its end.
    pub cut: Option<Cut>,
}

/// A journal line that is not a whole record, and everything after it, left
/// out of the state as etcd leaves out a WAL after its first bad record: a
/// line after a damaged one cannot be trusted to follow it. The resources
/// those lines recorded are found again in the cluster by the next plan
/// (their objects carry the state's lineage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub path: PathBuf,
    /// 1-based, counting the header.
    pub line: usize,
    pub reason: String,
    /// Whole lines after the bad one, not loaded either.
    pub ignored: usize,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal {} is damaged at line {} ({}); the state was read up to the line before it",
            self.path.display(),
            self.line,
            self.reason
        )?;
        if self.ignored > 0 {
            write!(
                f,
                ", and the {} line(s) after it were not read",
                self.ignored
            )?;
        }
        write!(
            f,
            "\n  help: the next plan finds the objects those lines recorded in the cluster (they carry this state's lineage)"
        )
    }
}

/// Applies the journal left beside `path` by a run that did not finish, if
/// it continues this very state, up to its first line that is not a whole
/// record. A last line without its newline is the one a kill interrupted:
/// not done, and not damage.
pub fn replay(path: &Path, state: &mut State) -> Result<Replay, StateError> {
    let journal = journal_path(path);
    let bytes = match fs::read(&journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: journal,
                source,
            });
        }
    };
    let mut lines = bytes.split_inclusive(|b| *b == b'\n');
    let cut = |line: usize, reason: String, rest: usize| Cut {
        path: journal.clone(),
        line,
        reason,
        ignored: rest,
    };
    let whole = |l: &[u8]| l.ends_with(b"\n");
    match lines
        .next()
        .map(|l| (whole(l), serde_json::from_slice::<Header>(l)))
    {
        None | Some((false, _)) => return Ok(Replay::default()),
        Some((true, Ok(h))) if h.lineage == state.lineage && h.serial == state.serial => {}
        // Another state's journal, left behind: ignored, as documented.
        Some((true, Ok(_))) => return Ok(Replay::default()),
        Some((true, Err(e))) => {
            let rest = lines.filter(|l| whole(l)).count();
            return Ok(Replay {
                applied: 0,
                cut: Some(cut(1, format!("not a journal header: {e}"), rest)),
            });
        }
    }
    let mut replay = Replay::default();
    let mut lines = lines.filter(|l| whole(l)).enumerate();
    while let Some((i, line)) = lines.next() {
        match serde_json::from_slice::<Change>(line) {
            Ok(change) => {
                state.apply_change(&change);
                replay.applied += 1;
            }
            Err(e) => {
                replay.cut = Some(cut(i + 2, e.to_string(), lines.count()));
                break;
            }
        }
    }
    Ok(replay)
}

/// Removes the journal once the state it belongs to has been written whole.
pub(super) fn remove(path: &Path) {
    let _ = fs::remove_file(journal_path(path));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::ResourceType;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let mut state = State::new("s").unwrap();
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
        assert_eq!(loaded.cut, None, "a line a kill cut short is not damage");
        let names: Vec<String> = loaded
            .state
            .resources
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["manifest.b"]);
        assert_eq!(
            loaded.state.resources[&Address::new(ResourceType::Manifest, "b")],
            *entry("b")
        );
    }

    #[test]
    fn a_journal_left_beside_a_state_written_whole_since_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let a = Address::new(ResourceType::Manifest, "a");
        let mut state = State::new("s").unwrap();
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
        assert!(loaded.state.resources.contains_key(&a));
        assert_eq!(loaded.cut, None);
    }

    /// Counts syncs, and fails the ones it is told to.
    #[derive(Default)]
    struct Disk {
        file_syncs: AtomicUsize,
        dir_syncs: Mutex<Vec<PathBuf>>,
        dir_fails: bool,
    }

    impl Durability for Arc<Disk> {
        fn sync_file(&self, file: &File) -> std::io::Result<()> {
            self.file_syncs.fetch_add(1, Ordering::SeqCst);
            file.sync_data()
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.dir_syncs.lock().unwrap().push(dir.to_path_buf());
            if self.dir_fails {
                return Err(std::io::Error::other("injected: the disk is gone"));
            }
            crate::state::store::sync_dir(dir)
        }
    }

    fn begin(dir: &Path, disk: &Arc<Disk>) -> Result<Journal, StateError> {
        let mut state = State::new("s").unwrap();
        Journal::begin_with(&dir.join("s.json"), &mut state, Box::new(Arc::clone(disk)))
    }

    #[test]
    fn a_lone_line_is_synced_within_the_group_commit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let journal = begin(dir.path(), &disk).unwrap();
        let header_syncs = disk.file_syncs.load(Ordering::SeqCst);
        let appended = Instant::now();
        // The last line before a long readiness wait: no line follows it.
        journal.append(&put("a")).unwrap();
        while journal.synced() < 1 && appended.elapsed() < SYNC_EVERY * 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = appended.elapsed();
        assert_eq!(journal.synced(), 1, "the line was not synced in {took:?}");
        assert!(disk.file_syncs.load(Ordering::SeqCst) > header_syncs);
        // Group commit gathers for a while, and not (much) longer: within
        // SYNC_EVERY by design; the margin is for a loaded machine's
        // scheduler, not for the design.
        assert!(
            took >= GATHER && took < SYNC_EVERY * 5,
            "synced after {took:?}"
        );
    }

    #[test]
    fn lines_appended_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let journal = begin(dir.path(), &disk).unwrap();
        let before = disk.file_syncs.load(Ordering::SeqCst);
        for name in ["a", "b", "c", "d"] {
            journal.append(&put(name)).unwrap();
        }
        drop(journal);
        assert_eq!(
            disk.file_syncs.load(Ordering::SeqCst) - before,
            1,
            "four lines within one interval, one sync (done on close at the latest)"
        );
    }

    #[test]
    fn a_new_journal_syncs_its_directory_and_fails_if_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        drop(begin(dir.path(), &disk).unwrap());
        assert!(
            disk.dir_syncs
                .lock()
                .unwrap()
                .iter()
                .any(|d| d == dir.path()),
            "the journal's directory entry was synced"
        );

        let failing = Arc::new(Disk {
            dir_fails: true,
            ..Disk::default()
        });
        let err = begin(dir.path(), &failing).unwrap_err().to_string();
        assert!(
            err.contains("cannot sync the directory of state file")
                && err.contains("s.json.journal")
                && err.contains("the disk is gone"),
            "{err}"
        );
    }

    /// A journal of lines `a`..`e` with line `bad` (1-based, header is 1) replaced.
    fn damaged(path: &Path, bad: usize, with: &[u8]) {
        let mut state = State::new("s").unwrap();
        let journal = Journal::begin(path, &mut state).unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            journal.append(&put(name)).unwrap();
        }
        drop(journal);
        let text = fs::read(journal_path(path)).unwrap();
        let mut lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        lines[bad - 1] = with;
        fs::write(journal_path(path), lines.concat()).unwrap();
    }

    fn names(state: &State) -> Vec<String> {
        state.resources.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn a_torn_line_in_the_middle_stops_the_replay_there_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        // Line 4 is `c`: half of it, then the rest of the file as written.
        damaged(&path, 4, b"{\"put\":{\"address\":\"manifest.c\",\n");
        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        assert_eq!(names(&loaded.state), ["manifest.a", "manifest.b"]);
        let cut = loaded.cut.expect("the damage is reported");
        assert_eq!((cut.line, cut.ignored), (4, 2));
        let said = cut.to_string();
        assert!(said.contains("damaged at line 4"), "{said}");
        assert!(
            said.contains("the 2 line(s) after it were not read"),
            "{said}"
        );
    }

    #[test]
    fn bytes_that_are_not_text_are_damage_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        // What a power cut can leave: a block of zeroes, or bytes of nothing.
        damaged(&path, 3, b"\0\0\0\xff\xfe\n");
        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        assert_eq!(names(&loaded.state), ["manifest.a"]);
        assert_eq!(loaded.cut.map(|c| (c.line, c.ignored)), Some((3, 3)));
    }

    #[test]
    fn a_damaged_header_loads_nothing_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        damaged(&path, 1, b"{\"journal\":1,\"lin\n");
        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        assert!(loaded.state.resources.is_empty());
        assert_eq!(loaded.cut.map(|c| (c.line, c.ignored)), Some((1, 5)));
    }

    #[test]
    fn the_next_whole_write_repairs_a_damaged_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        damaged(&path, 4, b"garbage\n");
        let mut state = crate::state::store::load(&path).unwrap().unwrap().state;
        crate::state::store::save(&path, &mut state).unwrap();
        let loaded = crate::state::store::load(&path).unwrap().unwrap();
        assert_eq!(names(&loaded.state), ["manifest.a", "manifest.b"]);
        assert_eq!(loaded.cut, None);
    }
}
