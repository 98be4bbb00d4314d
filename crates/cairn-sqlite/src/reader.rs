//! Read connections: a small pool, used from blocking tasks so async callers never stall.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cairn_core::ReadError;
use rusqlite::{Connection, OpenFlags};

/// Read-only connections to the event log, opened on demand and reused.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    idle_max: usize,
}

fn unavailable(e: impl std::fmt::Display) -> ReadError {
    ReadError::Unavailable(e.to_string())
}

impl ReadPool {
    pub fn new(path: PathBuf, idle_max: usize) -> Self {
        Self { path, idle: Mutex::new(Vec::new()), idle_max }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.execute_batch(
            "PRAGMA query_only = ON; PRAGMA cache_size = -32768; PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;",
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(conn)
    }

    fn take(&self) -> rusqlite::Result<Connection> {
        let pooled = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection on the calling (blocking) thread.
    pub fn run_here<R, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, E>,
        open_failed: impl FnOnce(String) -> E,
    ) -> Result<R, E> {
        let conn = self.take().map_err(|e| open_failed(e.to_string()))?;
        let out = f(&conn);
        if conn.is_autocommit() {
            self.give_back(conn);
        }
        out
    }

    /// Runs `f` on a pooled connection in a blocking task.
    pub async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, ReadError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take().map_err(unavailable)?;
            let out = f(&conn);
            // A connection is only returned when it is not stuck inside a transaction.
            if conn.is_autocommit() {
                pool.give_back(conn);
            }
            out
        })
        .await
        .map_err(unavailable)?
    }
}

/// Converts a SQLite read failure into the core error.
pub fn read_failed(e: rusqlite::Error) -> ReadError {
    unavailable(e)
}
