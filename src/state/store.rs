//! Reading and atomically writing the state file (with what a killed run's
//! journal adds to it, see [`super::journal`]).
//!
//! A write goes to a temporary file in the same directory, is fsynced, and is
//! renamed over the old file, so a crash leaves either the old or the new
//! state, never half of one. Files are created mode 0600: state names what is
//! deployed where, and it holds the fingerprint key.
//!
//! Before a run first overwrites the state, the state as it found it is
//! written the same way to `<state>.backup` (Terraform's
//! `terraform.tfstate.backup`), and [`restore`] puts that back.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{FORMAT_VERSION, State, StateError};

/// A state as read, with the part of its journal that could not be read.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    /// Where a killed run's journal was damaged; nothing after it was loaded.
    pub cut: Option<super::journal::Cut>,
}

pub fn load(path: &Path) -> Result<Option<Loaded>, StateError> {
    let Some(mut state) = read(path)? else {
        return Ok(None);
    };
    let replay = super::journal::replay(path, &mut state)?;
    Ok(Some(Loaded {
        state,
        cut: replay.cut,
    }))
}

/// Why a text is not a state this rayform reads.
pub enum Decoded {
    Corrupt(String),
    Version(u32),
}

/// Parses a state, whichever backend kept it.
pub fn decode(text: &str) -> Result<State, Decoded> {
    /// Read first, alone, so that another format is named as such rather
    /// than reported as whichever field it lacks.
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(default)]
        format_version: u64,
    }
    let found = serde_json::from_str::<Version>(text)
        .map_err(|e| Decoded::Corrupt(e.to_string()))?
        .format_version;
    if found != u64::from(FORMAT_VERSION) {
        return Err(Decoded::Version(u32::try_from(found).unwrap_or(u32::MAX)));
    }
    serde_json::from_str(text).map_err(|e| Decoded::Corrupt(e.to_string()))
}

/// Makes the entries of `dir` (a file created or renamed there) durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `state` with its serial bumped.
pub fn save(path: &Path, state: &mut State) -> Result<(), StateError> {
    state.serial += 1;
    write(path, state)?;
    // What a journal added is in this file now.
    super::journal::remove(path);
    Ok(())
}

/// `state/x.json` → `state/x.json.backup`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".backup");
    path.with_file_name(name)
}

/// Copies the state at `path` (with what a journal adds to it) to its
/// backup. A state that does not read is not copied: the backup already
/// there is the better one to keep. Returns whether a backup was written.
pub fn back_up(path: &Path) -> Result<bool, StateError> {
    match load(path) {
        Ok(Some(loaded)) => write(&backup_path(path), &loaded.state).map(|()| true),
        Ok(None) | Err(StateError::Corrupt { .. } | StateError::Version { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts the backup back as the state, its serial above both (so a plan
/// saved against the state it replaces is stale); the backup stays.
/// Returns the serial the backup held and the state now stored, or `None`
/// if there is no backup.
pub fn restore(path: &Path) -> Result<Option<(u64, State)>, StateError> {
    let backup = backup_path(path);
    let Some(mut state) = read(&backup)? else {
        return Ok(None);
    };
    let from = state.serial;
    // The state there may not read at all; its serial still may.
    let current = fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("serial").and_then(serde_json::Value::as_u64))
        .unwrap_or_default();
    state.serial = state.serial.max(current);
    save(path, &mut state)?;
    Ok(Some((from, state)))
}

/// A state file as it is, without a journal.
fn read(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    decode(&text).map(Some).map_err(|e| match e {
        Decoded::Corrupt(message) => StateError::Corrupt {
            path: path.to_path_buf(),
            message,
        },
        Decoded::Version(found) => StateError::Version {
            path: path.to_path_buf(),
            found,
        },
    })
}

/// Writes `state` to `path` atomically: a temporary file, fsync, rename.
fn write(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |action, source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let mut text = serde_json::to_string_pretty(state).map_err(|e| io("serialize", e.into()))?;
    text.push('\n');
    let mut builder = tempfile::Builder::new();
    builder.prefix(".rayform-state");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| io("create a temporary file for", e))?;
    tmp.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
    tmp.as_file().sync_all().map_err(|e| io("sync", e))?;
    tmp.persist(path).map_err(|e| io("replace", e.error))?;
    // The rename is durable only once the directory entry is.
    sync_dir(dir).map_err(|e| io("sync the directory of", e))?;
    Ok(())
}
