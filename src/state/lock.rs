//! One run at a time per state file.
//!
//! The lock is an OS file lock on `<state>.lock`, so it dies with its holder;
//! the file also records who holds it, so a second run can say who to wait
//! for instead of just "locked".

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StateError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    #[serde(default = "unknown")]
    pub user: String,
    pub pid: u32,
    pub host: String,
    pub operation: String,
    pub since: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({}, pid {} on {}, since {}, lock ID {})",
            self.operation, self.user, self.pid, self.host, self.since, self.id
        )
    }
}

impl LockInfo {
    /// This process, about to hold a lock for `operation`.
    pub fn new(operation: &str) -> Result<LockInfo, StateError> {
        Ok(LockInfo {
            id: crate::util::random_hex(8)?,
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| unknown()),
            pid: std::process::id(),
            host: hostname(),
            operation: operation.to_string(),
            since: crate::util::now_rfc3339(),
        })
    }

    /// A holder whose record cannot be read.
    pub fn unknown() -> LockInfo {
        LockInfo {
            id: unknown(),
            user: unknown(),
            pid: 0,
            host: unknown(),
            operation: unknown(),
            since: unknown(),
        }
    }
}

fn unknown() -> String {
    "unknown".into()
}

/// Held while a run reads or writes the state; released on drop.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    pub info: LockInfo,
}

pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    state.with_file_name(name)
}

impl StateLock {
    /// Takes the lock or fails at once, naming the holder.
    pub fn acquire(state: &Path, operation: &str) -> Result<StateLock, StateError> {
        let path = lock_path(state);
        let io = |action, source| StateError::Io {
            action,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let mut file = open(&path).map_err(|e| io("open the lock of", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let info = read_info(&mut file).unwrap_or_else(LockInfo::unknown);
                return Err(StateError::Locked(Box::new(info)));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("lock", e)),
        }
        let info = LockInfo::new(operation)?;
        let text = serde_json::to_string(&info).map_err(|e| io("write", e.into()))?;
        file.set_len(0).map_err(|e| io("write", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("write", e))?;
        Ok(StateLock { file, info })
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // The file stays (removing it would let a waiter and a newcomer lock
        // different inodes); emptying it says nobody holds it.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Breaks the lock of a holder that is gone, after checking the ID the user
/// read from the error. "Gone" is decided by the lock itself, not by the
/// record: a live holder keeps its OS lock whatever host or pid the record
/// names, so taking the lock is the only proof. The file is emptied, never
/// removed: a holder of a removed file would go on alone beside a newcomer.
pub fn force_unlock(state: &Path, id: &str) -> Result<LockInfo, StateError> {
    let path = lock_path(state);
    let mut file = match open_existing(&path) {
        Ok(f) => f,
        Err(_) => return Err(StateError::NotLocked { path }),
    };
    let Some(info) = read_info(&mut file) else {
        return Err(StateError::NotLocked { path });
    };
    if info.id != id {
        return Err(StateError::WrongLockId {
            given: id.to_string(),
            actual: info.id,
        });
    }
    let io = |source| StateError::Io {
        action: "break the lock of",
        path: path.clone(),
        source,
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(StateError::HolderAlive(Box::new(info))),
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.sync_all().map_err(io)?;
    let _ = file.unlock();
    Ok(info)
}

fn open(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

fn open_existing(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn read_info(file: &mut File) -> Option<LockInfo> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
