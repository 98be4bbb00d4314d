//! The data directory's lock file: one process per data directory.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// Holds an exclusive advisory lock on `<data-dir>/LOCK` for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    Io(PathBuf, std::io::Error),
}

impl DirLock {
    /// Takes the lock without waiting.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held(path)),
            Err(TryLockError::Error(e)) => Err(LockError::Io(path, e)),
        }
    }
}
