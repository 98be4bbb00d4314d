//! `SqliteEventStore`: opening the data directory and serving the `EventStore` trait.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_core::lifecycle::{StreamState, meta_stream};
use cairn_core::store::READ_LIMIT_MAX;
use cairn_core::{
    AllFilter, AllSlice, Append, AppendError, AppendOutcome, Direction, EventStore, IdempotencyKey,
    IdempotencyRecord, ReadError, Refusal, StreamRead, StreamSlice, StreamStats,
};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{EVENT_COLUMNS, event_of_stream};
use crate::dir_lock::{DirLock, LockError};
use crate::reader::{ReadPool, read_failed};
use crate::schema;
use crate::writer::{self, Job, WriterConfig, WriterStats};

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged append survives power loss (default).
    #[default]
    Full,
    /// fsync at WAL checkpoints only: survives a process crash, not power loss.
    Normal,
    /// No fsync at all (benchmarks of the CPU path only).
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
            Self::Off => "OFF",
        }
    }
}

/// Tuning knobs; the defaults are what `cairn serve` uses.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of a commit.
    pub synchronous: Synchronous,
    /// Appends waiting for the writer before callers are made to wait (back-pressure).
    pub queue_appends_max: usize,
    /// Bytes of events waiting for (or being committed by) the writer before callers are
    /// made to wait.
    pub queue_bytes_max: usize,
    /// Most appends committed in one group.
    pub batch_appends_max: usize,
    /// Most events committed in one group (a group stops growing past this).
    pub batch_events_max: usize,
    /// Idle read connections kept open.
    pub read_connections_idle_max: usize,
    /// How long a group commit may wait for more appends when writers are concurrent
    /// (zero disables; a lone writer never waits).
    pub gather_wait_us: u64,
    /// SQLite's soft heap limit (`PRAGMA soft_heap_limit`), set when the store opens: past
    /// it every connection's page cache recycles its pages instead of growing. It is
    /// process-wide, so the store opened last sets it; 0 lifts it.
    pub heap_soft_limit_bytes: u64,
}

/// The default [`SqliteOptions::heap_soft_limit_bytes`]. Each connection may cache up to
/// its `cache_size` (the log's writer 64 MiB, the read models' writer and every pooled
/// reader 32 MiB): two dozen connections could hold most of a gigabyte between them, which a long-running server reached little by little (#18's soak). One bound for
/// all of them keeps the hot pages and nothing more.
pub const HEAP_SOFT_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            queue_appends_max: 4096,
            queue_bytes_max: cairn_core::append_budget::QUEUED_APPEND_BYTES_MAX,
            batch_appends_max: 1024,
            batch_events_max: 20_000,
            read_connections_idle_max: 16,
            gather_wait_us: 300,
            heap_soft_limit_bytes: HEAP_SOFT_LIMIT_BYTES,
        }
    }
}

/// Totals of the group-commit writer since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Group commits that reached the disk (one fsync each).
    pub groups: u64,
    /// Appends answered by them.
    pub appends: u64,
    /// Events they wrote.
    pub events: u64,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process has this data directory open.
    #[error("data directory {0} is in use by another cairn process (lock file {1} is held)")]
    Locked(PathBuf, PathBuf),
    /// The directory or its files could not be created or opened.
    #[error("cannot open data directory {0}: {1}")]
    Io(PathBuf, String),
    /// The database could not be set up.
    #[error("cannot open event log {0}: {1}")]
    Database(PathBuf, String),
}

/// The embedded event store. Cheap to share behind an `Arc`.
pub struct SqliteEventStore {
    jobs: mpsc::Sender<Job>,
    budget: cairn_core::append_budget::AppendBudget,
    readers: Arc<ReadPool>,
    head: Arc<watch::Sender<u64>>,
    poisoned: Arc<AtomicBool>,
    fail_next_commit: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

/// The event log's file name inside the data directory.
pub const EVENT_LOG_FILE: &str = "events.db";

impl SqliteEventStore {
    /// Opens (creating if needed) the store in `dir`, taking its lock.
    pub fn open(dir: &Path, options: &SqliteOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Io(dir.to_owned(), e.to_string()))?;
        let lock = DirLock::acquire(dir).map_err(|e| match e {
            LockError::Held(p) => OpenError::Locked(dir.to_owned(), p),
            LockError::Io(p, e) => OpenError::Io(p, e.to_string()),
        })?;
        let path = dir.join(EVENT_LOG_FILE);
        let db_err = |e: &dyn std::fmt::Display| OpenError::Database(path.clone(), e.to_string());
        let conn = Connection::open(&path).map_err(|e| db_err(&e))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
            options.synchronous.pragma()
        ))
        .map_err(|e| db_err(&e))?;
        // Process-wide: the store opened last sets it (0 lifts it).
        conn.execute_batch(&format!("PRAGMA soft_heap_limit = {};", options.heap_soft_limit_bytes))
            .map_err(|e| db_err(&e))?;
        schema::migrate(&conn).map_err(|e| db_err(&e))?;
        // Read here, where a failure stops the open, not in the writer thread.
        let (head_position, last_timestamp_us): (i64, i64) = conn
            .query_row(
                "SELECT coalesce(max(position), 0), coalesce(max(timestamp_us), 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| db_err(&e))?;

        let head = Arc::new(watch::Sender::new(head_position as u64));
        let poisoned = Arc::new(AtomicBool::new(false));
        let fail_next_commit = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::channel(options.queue_appends_max.max(1));
        let stats = Arc::new(WriterStats::default());
        let config = WriterConfig {
            stats: Arc::clone(&stats),
            batch_appends_max: options.batch_appends_max.max(1),
            batch_events_max: options.batch_events_max.max(1),
            poisoned: Arc::clone(&poisoned),
            gather_wait: std::time::Duration::from_micros(options.gather_wait_us),
            fail_next_commit: Arc::clone(&fail_next_commit),
        };
        let writer_head = Arc::clone(&head);
        let writer_thread = std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            // The writer thread owns the directory lock: it is released only after the last
            // queued append has been committed, never while a write can still happen.
            .spawn(move || {
                let _lock = lock;
                writer::run(
                    conn,
                    rx,
                    writer_head,
                    config,
                    (head_position as u64, last_timestamp_us),
                );
            })
            .map_err(|e| OpenError::Io(dir.to_owned(), e.to_string()))?;
        Ok(Self {
            budget: cairn_core::append_budget::AppendBudget::new(options.queue_bytes_max),
            jobs,
            readers: Arc::new(ReadPool::new(path.clone(), options.read_connections_idle_max)),
            head,
            poisoned,
            fail_next_commit,
            stats,
            writer_thread: Mutex::new(Some(writer_thread)),
            path,
        })
    }

    /// The event log's file path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier failed write has poisoned the store.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Totals of the group-commit writer: (groups, appends, events) committed so far.
    #[must_use]
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            appends: self.stats.appends.load(Ordering::Relaxed),
            events: self.stats.events.load(Ordering::Relaxed),
        }
    }

    /// Fault injection for tests: the next group commit fails as a failed fsync would.
    #[doc(hidden)]
    pub fn inject_commit_failure(&self) {
        self.fail_next_commit.store(true, Ordering::Release);
    }
}

/// Reads event rows into a vector sized for the page up front (pages are often large).
/// Most payload bytes one page carries; a page stops early past it (at least one event),
/// so a reader of large events gets shorter pages instead of gigabytes of memory.
pub const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Events a read reserves room for before it has seen a row. Not the page's limit: most
/// reads are a consumer's live tail of a few events, and reserving `limit` (up to
/// [`READ_LIMIT_MAX`]) rows for each made every read fault in and zero a fresh huge page
/// (the profile of the order lifecycle: 8% of all CPU in `clear_page`); a long page grows
/// by doubling, a few copies of pointers-sized rows.
const READ_RESERVE_EVENTS: usize = 64;

/// Reads at most `limit` event rows into a vector. The flag says the page stopped early at
/// [`PAGE_BYTES_MAX`].
///
/// The queries have no `LIMIT ?`: SQLite's planner reads a bound LIMIT, so every new
/// value expired the cached statement and each read re-parsed and re-planned its SQL
/// (the profile of the order lifecycle: 8% of all CPU in `sqlite3Reprepare`). Each query
/// walks an index in the order asked for, so stopping after `limit` rows is the same page.
fn collect_events(
    mut rows: rusqlite::Rows<'_>,
    limit: usize,
    stream: Option<(&str, &str)>,
) -> rusqlite::Result<(Vec<cairn_core::RecordedEvent>, bool)> {
    let mut events = Vec::with_capacity(limit.min(READ_LIMIT_MAX).min(READ_RESERVE_EVENTS));
    let mut bytes = 0;
    while events.len() < limit {
        let Some(row) = rows.next()? else { break };
        let event = event_of_stream(row, stream)?;
        bytes += event.data.get().len() + event.metadata.get().len();
        events.push(event);
        if bytes > PAGE_BYTES_MAX {
            return Ok((events, true));
        }
    }
    Ok((events, false))
}

fn invalid_read(m: &str) -> ReadError {
    ReadError::Invalid(m.to_owned())
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        append.validate()?;
        if self.is_poisoned() {
            return Err(AppendError::Poisoned);
        }
        // Held until the writer answers: queued bytes are bounded, not only queued appends.
        let _reserved = self.budget.reserve(&append).await?;
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Append(append, reply)).await.map_err(|_| AppendError::ShuttingDown)?;
        answer.await.map_err(|_| AppendError::ShuttingDown)?
    }

    async fn read_stream_raw(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError> {
        if read.from_version == Some(0) && read.direction == Direction::Backward {
            return Err(invalid_read("from_version must be at least 1"));
        }
        let id = aggregate_id.to_owned();
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(read_failed)?;
                let stream: Option<(String, i64)> = tx
                    .prepare_cached(crate::schema::STREAM_HEAD_SQL)
                    .and_then(|mut s| s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .map_err(read_failed)?;
                let Some((aggregate_type, version)) = stream else {
                    return Err(ReadError::StreamNotFound);
                };
                let limit = read.limit.min(READ_LIMIT_MAX);
                let (sql, from) = match read.direction {
                    Direction::Forward => (
                        format!("SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = ?1 AND version >= ?2 ORDER BY version"),
                        read.from_version.unwrap_or(1).min(i64::MAX as u64) as i64,
                    ),
                    Direction::Backward => (
                        format!("SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = ?1 AND version <= ?2 ORDER BY version DESC"),
                        read.from_version.map_or(version, |v| v.min(i64::MAX as u64) as i64),
                    ),
                };
                let events = tx
                    .prepare_cached(&sql)
                    .and_then(|mut s| {
                        let stream = Some((id.as_str(), aggregate_type.as_str()));
                        collect_events(s.query(rusqlite::params![id, from])?, limit, stream)
                            .map(|(events, _)| events)
                    })
                    .map_err(read_failed)?;
                Ok(StreamSlice {
                    aggregate_type,
                    stream_version: version as u64,
                    first_visible: 1,
                    moving: false,
                    scanned_version: None,
                    events,
                })
            })
            .await
    }

    async fn stream_state(&self, aggregate_id: &str) -> Result<Option<StreamState>, ReadError> {
        let id = aggregate_id.to_owned();
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(read_failed)?;
                let head: Option<(String, i64, String)> = tx
                    .prepare_cached(crate::schema::STREAM_HEAD_SQL)
                    .and_then(|mut s| {
                        s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
                    })
                    .map_err(read_failed)?;
                let Some((aggregate_type, version, last_event_type)) = head else {
                    return Ok(None);
                };
                let marker: Option<i64> = tx
                    .prepare_cached(crate::schema::STREAM_MARKER_SQL)
                    .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                    .map_err(read_failed)?;
                let meta: Option<(i64, String)> = tx
                    .prepare_cached(crate::schema::STREAM_LAST_DATA_SQL)
                    .and_then(|mut s| {
                        s.query_row([meta_stream(&id)], |r| Ok((r.get(0)?, r.get(1)?))).optional()
                    })
                    .map_err(read_failed)?;
                Ok(Some(StreamState {
                    aggregate_type,
                    version: version as u64,
                    last_event_type,
                    marker: marker.map(|m| m as u64),
                    meta: meta.map(|(v, d)| (v as u64, d)),
                }))
            })
            .await
    }

    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError> {
        if self.is_poisoned() {
            return Err(AppendError::Poisoned);
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Redact(positions.to_vec(), reply))
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        answer.await.map_err(|_| AppendError::ShuttingDown)?
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError> {
        let filter = filter.clone();
        let limit = limit.min(READ_LIMIT_MAX);
        self.readers
            .run(move |conn| {
                let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position > ?");
                let mut args: Vec<rusqlite::types::Value> =
                    vec![(from_position.min(i64::MAX as u64) as i64).into()];
                if !filter.event_types.is_empty() {
                    sql.push_str(" AND event_type IN (");
                    for (i, t) in filter.event_types.iter().enumerate() {
                        sql.push_str(if i == 0 { "?" } else { ", ?" });
                        args.push(t.clone().into());
                    }
                    sql.push(')');
                }
                if !filter.aggregate_types.is_empty() {
                    sql.push_str(" AND aggregate_type IN (");
                    for (i, t) in filter.aggregate_types.iter().enumerate() {
                        sql.push_str(if i == 0 { "?" } else { ", ?" });
                        args.push(t.clone().into());
                    }
                    sql.push(')');
                }
                sql.push_str(" ORDER BY position");
                let tx = conn.unchecked_transaction().map_err(read_failed)?;
                let events = tx
                    .prepare_cached(&sql)
                    .and_then(|mut s| collect_events(s.query(params_from_iter(args))?, limit, None))
                    .map_err(read_failed)?;
                let (events, truncated) = events;
                let scanned_to = if truncated || (events.len() == limit && limit > 0) {
                    events.last().map_or(from_position, |e| e.position)
                } else {
                    // Same snapshot as the page: nothing up to here was left out.
                    let head: i64 = tx
                        .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                            r.get(0)
                        })
                        .map_err(read_failed)?;
                    (head as u64).max(from_position)
                };
                Ok(AllSlice { events, scanned_to })
            })
            .await
    }

    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError> {
        let id = aggregate_id.to_owned();
        self.readers
            .run(move |conn| {
                conn.prepare_cached(
                    "SELECT coalesce(max(version), 0) FROM events WHERE aggregate_id = ?1",
                )
                .and_then(|mut s| s.query_row([&id], |r| r.get::<_, i64>(0)))
                .map(|v| v as u64)
                .map_err(read_failed)
            })
            .await
    }

    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError> {
        self.readers
            .run(move |conn| {
                // A scan of the (aggregate_id, version) index only; the type is looked up for
                // the few rows returned. Versions are dense, so count = latest version.
                let tx = conn.unchecked_transaction().map_err(read_failed)?;
                let top: Vec<(String, i64)> = tx
                    .prepare_cached(
                        "SELECT aggregate_id, max(version) AS v FROM events GROUP BY aggregate_id ORDER BY v DESC, aggregate_id LIMIT ?1",
                    )
                    .and_then(|mut s| s.query_map([top as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                    .map_err(read_failed)?;
                let mut head = tx.prepare_cached(crate::schema::STREAM_HEAD_SQL).map_err(read_failed)?;
                top.into_iter()
                    .map(|(aggregate_id, version)| {
                        let aggregate_type: String =
                            head.query_row([&aggregate_id], |r| r.get(0)).map_err(read_failed)?;
                        Ok(StreamStats {
                            aggregate_id,
                            aggregate_type,
                            event_count: version as u64,
                            latest_version: version as u64,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotencyRecord>, ReadError> {
        let key = key.to_owned();
        // Readers cannot delete: an expired record is skipped here and deleted by the
        // writer when a write meets it.
        let record = self
            .readers
            .run(move |conn| crate::writer::recorded_key(conn, &key).map_err(read_failed))
            .await?;
        Ok(record.filter(|r| !r.is_expired(cairn_core::timestamp::Timestamp::now())))
    }

    async fn record_refusal(
        &self,
        key: IdempotencyKey,
        aggregate_id: String,
        refusal: Refusal,
    ) -> Result<IdempotencyRecord, AppendError> {
        key.validate_key()?;
        if self.is_poisoned() {
            return Err(AppendError::Poisoned);
        }
        let (reply, answer) = oneshot::channel();
        let job = writer::RefusalJob { key, aggregate_id, refusal, reply };
        self.jobs.send(Job::RecordRefusal(job)).await.map_err(|_| AppendError::ShuttingDown)?;
        answer.await.map_err(|_| AppendError::ShuttingDown)?
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn check_health(&self) -> Result<(), AppendError> {
        if self.is_poisoned() {
            return Err(AppendError::Poisoned);
        }
        if self.jobs.is_closed() {
            return Err(AppendError::ShuttingDown);
        }
        self.readers
            .run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(read_failed))
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        let stats = self.commit_stats();
        let file_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", self.path.display())).ok())
            .map(|m| m.len())
            .sum::<u64>();
        vec![
            ("cairn_store_group_commits_total", stats.groups as f64),
            ("cairn_store_group_commit_appends_total", stats.appends as f64),
            ("cairn_store_group_commit_events_total", stats.events as f64),
            ("cairn_store_size_bytes", file_bytes as f64),
            ("cairn_store_queued_append_bytes", self.budget.reserved_bytes() as f64),
        ]
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
        let handle =
            self.writer_thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
