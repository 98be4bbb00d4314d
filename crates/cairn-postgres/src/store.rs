//! `PgEventStore`: the `EventStore` trait on PostgreSQL.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cairn_core::lifecycle::{REDACTED_JSON, SCAVENGED_EVENT, StreamState, meta_stream};
use cairn_core::store::READ_LIMIT_MAX;
use cairn_core::{
    AllFilter, AllSlice, Append, AppendError, AppendOutcome, Direction, EventStore, IdempotencyKey,
    IdempotencyRecord, ReadError, Refusal, StreamRead, StreamSlice, StreamStats,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;

use crate::codec::{EVENT_COLUMNS, event_from_row};
use crate::pool::{Shared, Stall, db_error};
use crate::writer::{self, Job, WriterStats};

/// Events on PostgreSQL; see the crate docs for the ordering argument.
pub struct PgEventStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    budget: cairn_core::append_budget::AppendBudget,
    stats: Arc<WriterStats>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

const RECORD_SQL: &str = "SELECT key, aggregate_id, first_version, last_version, position,
        fingerprint, expires_us, refusal
     FROM idempotency_keys WHERE key = $1";

/// A page larger than this ends early (its `scanned_to` says where).
pub const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

fn read_failed(e: &tokio_postgres::Error) -> ReadError {
    ReadError::Unavailable(db_error(e))
}

impl PgEventStore {
    pub(crate) fn start(shared: Arc<Shared>) -> Self {
        let (jobs, rx) = mpsc::channel(shared.options.queue_appends_max.max(1));
        let stats = Arc::new(WriterStats::default());
        let writer = tokio::spawn(writer::run(Arc::clone(&shared), rx, Arc::clone(&stats)));
        let notify = tokio::spawn(crate::notify::listen(Arc::clone(&shared)));
        let monitor = tokio::spawn(crate::notify::monitor(Arc::clone(&shared)));
        let budget = cairn_core::append_budget::AppendBudget::new(shared.options.queue_bytes_max);
        Self { shared, jobs, budget, stats, tasks: Mutex::new(vec![writer, notify, monitor]) }
    }

    /// The current stall diagnostic: who holds the append lock too long, if anyone.
    #[must_use]
    pub fn stall(&self) -> Option<Stall> {
        self.shared.stall()
    }

    /// `(groups, appends, events)` committed by this process's writer.
    #[must_use]
    pub fn commit_stats(&self) -> (u64, u64, u64) {
        (
            self.stats.groups.load(Ordering::Relaxed),
            self.stats.appends.load(Ordering::Relaxed),
            self.stats.events.load(Ordering::Relaxed),
        )
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ReadError> {
        self.shared.pool.get().await.map_err(|e| ReadError::Unavailable(e.to_string()))
    }
}

/// What a page read streamed in: the first row (the head columns are read from it), the
/// events, and whether the byte budget ran out.
struct Streamed {
    first: Option<tokio_postgres::Row>,
    events: Vec<cairn_core::RecordedEvent>,
    truncated: bool,
}

/// Reads rows as they arrive and stops once the page's byte budget is spent: a page of
/// large events never sits in memory whole (the rows after the cut are dropped unread by
/// the connection, not decoded).
async fn collect(rows: tokio_postgres::RowStream, at: usize) -> Result<Streamed, ReadError> {
    let mut rows = std::pin::pin!(rows);
    let mut streamed = Streamed { first: None, events: Vec::new(), truncated: false };
    let mut bytes = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| read_failed(&e))?;
        // A row of the outer join without an event (empty page).
        let has_event = row.try_get::<_, Option<i64>>(at).ok().flatten().is_some();
        if has_event {
            let event = event_from_row(&row, at).map_err(ReadError::Unavailable)?;
            bytes += event.data.get().len() + event.metadata.get().len();
            streamed.events.push(event);
        }
        if streamed.first.is_none() {
            streamed.first = Some(row);
        }
        if bytes > PAGE_BYTES_MAX {
            streamed.truncated = true;
            break;
        }
    }
    Ok(streamed)
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        append.validate()?;
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
            return Err(ReadError::Invalid("from_version must be at least 1".into()));
        }
        let limit = read.limit.min(READ_LIMIT_MAX) as i64;
        // One statement, one snapshot: the stream's head and the page agree.
        let sql = match read.direction {
            Direction::Forward => format!(
                "SELECT h.aggregate_type, h.version, e.* FROM
                   (SELECT aggregate_type, version FROM events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1) h
                 LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events
                   WHERE aggregate_id = $1 AND version >= $2 ORDER BY version LIMIT $3) e ON true"
            ),
            Direction::Backward => format!(
                "SELECT h.aggregate_type, h.version, e.* FROM
                   (SELECT aggregate_type, version FROM events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1) h
                 LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events
                   WHERE aggregate_id = $1 AND version <= coalesce($2, h.version) ORDER BY version DESC LIMIT $3) e ON true"
            ),
        };
        let from: Option<i64> = match read.direction {
            Direction::Forward => Some(read.from_version.unwrap_or(1).min(i64::MAX as u64) as i64),
            Direction::Backward => read.from_version.map(|v| v.min(i64::MAX as u64) as i64),
        };
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| read_failed(&e))?;
        let args: [&(dyn ToSql + Sync); 3] = [&aggregate_id, &from, &limit];
        let rows = client.query_raw(&stmt, args).await.map_err(|e| read_failed(&e))?;
        let streamed = collect(rows, 2).await?;
        let Some(first) = &streamed.first else {
            return Err(ReadError::StreamNotFound);
        };
        let aggregate_type: String = first.get(0);
        let version: i64 = first.get(1);
        Ok(StreamSlice {
            aggregate_type,
            stream_version: version as u64,
            first_visible: 1,
            moving: false,
            scanned_version: None,
            events: streamed.events,
        })
    }

    async fn stream_state(&self, aggregate_id: &str) -> Result<Option<StreamState>, ReadError> {
        // One statement, one snapshot: the head, the last marker (through the partial index
        // `events_markers`) and the metadata stream's last event.
        const SQL: &str = "SELECT h.aggregate_type, h.version, h.event_type,
               (SELECT max(version) FROM events WHERE aggregate_id = $1
                  AND event_type IN ('$streamDeleted', '$streamTombstoned')),
               m.version, m.data
             FROM (SELECT aggregate_type, version, event_type FROM events
                   WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1) h
             LEFT JOIN LATERAL (SELECT version, data FROM events WHERE aggregate_id = $2
                   ORDER BY version DESC LIMIT 1) m ON true";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(|e| read_failed(&e))?;
        let meta_id = meta_stream(aggregate_id);
        let row = client
            .query_opt(&stmt, &[&aggregate_id, &meta_id])
            .await
            .map_err(|e| read_failed(&e))?;
        Ok(row.map(|r| StreamState {
            aggregate_type: r.get(0),
            version: r.get::<_, i64>(1) as u64,
            last_event_type: r.get(2),
            marker: r.get::<_, Option<i64>>(3).map(|m| m as u64),
            meta: r
                .get::<_, Option<i64>>(4)
                .map(|v| (v as u64, r.get::<_, Option<String>>(5).unwrap_or_default())),
        }))
    }

    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError> {
        const SQL: &str = "UPDATE events SET event_type = $2, data = $3, metadata = $3
                           WHERE position = ANY($1) AND event_type <> $2";
        let positions: Vec<i64> =
            positions.iter().map(|&p| i64::try_from(p).unwrap_or(i64::MAX)).collect();
        let client = self.client().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let changed = client
            .execute(SQL, &[&positions, &SCAVENGED_EVENT, &REDACTED_JSON])
            .await
            .map_err(|e| AppendError::Unavailable(db_error(&e)))?;
        Ok(changed)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError> {
        let limit = limit.min(READ_LIMIT_MAX);
        let from = from_position.min(i64::MAX as u64) as i64;
        let limit_arg = limit as i64;
        let mut conditions = String::from("position > $1");
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&from, &limit_arg];
        if !filter.event_types.is_empty() {
            conditions.push_str(" AND event_type = ANY($3)");
            args.push(&filter.event_types);
        }
        if !filter.aggregate_types.is_empty() {
            let _ = write!(conditions, " AND aggregate_type = ANY(${})", args.len() + 1);
            args.push(&filter.aggregate_types);
        }
        // One statement, one snapshot: the head returned is the head the page was read at,
        // so `scanned_to` never claims a position the page could not see.
        let sql = format!(
            "SELECT h.head, e.* FROM (SELECT coalesce(max(position), 0) AS head FROM events) h
             LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events WHERE {conditions}
                                ORDER BY position LIMIT $2) e ON true"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| read_failed(&e))?;
        let rows = client.query_raw(&stmt, args).await.map_err(|e| read_failed(&e))?;
        let Streamed { first, events, truncated } = collect(rows, 1).await?;
        let head: i64 = first.as_ref().map_or(0, |r| r.get(0));
        let scanned_to = if truncated || (events.len() == limit && limit > 0) {
            events.last().map_or(from_position, |e| e.position)
        } else {
            (head as u64).max(from_position)
        };
        Ok(AllSlice { events, scanned_to })
    }

    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT coalesce(max(version), 0) FROM events WHERE aggregate_id = $1")
            .await
            .map_err(|e| read_failed(&e))?;
        let row = client.query_one(&stmt, &[&aggregate_id]).await.map_err(|e| read_failed(&e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.aggregate_id, s.v, (SELECT aggregate_type FROM events e
                     WHERE e.aggregate_id = s.aggregate_id AND e.version = s.v)
                 FROM (SELECT aggregate_id, max(version) AS v FROM events GROUP BY aggregate_id
                       ORDER BY v DESC, aggregate_id LIMIT $1) s
                 ORDER BY s.v DESC, s.aggregate_id",
                &[&(top as i64)],
            )
            .await
            .map_err(|e| read_failed(&e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let version = r.get::<_, i64>(1) as u64;
                StreamStats {
                    aggregate_id: r.get(0),
                    aggregate_type: r.get(2),
                    event_count: version,
                    latest_version: version,
                }
            })
            .collect())
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotencyRecord>, ReadError> {
        let client = self.client().await?;
        let row = client.query_opt(RECORD_SQL, &[&key]).await.map_err(|e| read_failed(&e))?;
        // A reader does not delete: the next write meeting an expired record replaces it.
        Ok(row
            .map(|r| writer::record_from_row(&r))
            .filter(|r| !r.is_expired(cairn_core::timestamp::Timestamp::now())))
    }

    async fn record_refusal(
        &self,
        key: IdempotencyKey,
        aggregate_id: String,
        refusal: Refusal,
    ) -> Result<IdempotencyRecord, AppendError> {
        key.validate_key()?;
        let unavailable = |e: tokio_postgres::Error| {
            AppendError::Unavailable(format!("the refusal was not recorded: {}", db_error(&e)))
        };
        let mut client =
            self.shared.pool.get().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        // Under the append lock, like every keyed append: the writer reads the keys and
        // inserts its own under the lock, so no append can slip its key in between this
        // look-up and this insert (nor collide with it and fail its whole group).
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.shared.append_lock])
            .await
            .map_err(unavailable)?;
        let now = cairn_core::timestamp::Timestamp::now();
        let found = tx.query_opt(RECORD_SQL, &[&key.key]).await.map_err(unavailable)?;
        if let Some(record) =
            found.map(|r| writer::record_from_row(&r)).filter(|r| !r.is_expired(now))
        {
            tx.commit().await.map_err(unavailable)?;
            return if record.key.fingerprint == key.fingerprint {
                Ok(record)
            } else {
                Err(record.clash(&key))
            };
        }
        let record = IdempotencyRecord {
            key,
            outcome: cairn_core::KeyOutcome::Refused { aggregate_id, refusal },
        };
        let (aggregate_id, _, _, _, refusal_json) = record.columns();
        tx.execute(
            "INSERT INTO idempotency_keys
                 (key, aggregate_id, first_version, last_version, position, created_us, fingerprint, expires_us, refusal)
             VALUES ($1, $2, 0, 0, 0, $3, $4, $5, $6)
             ON CONFLICT (key) DO UPDATE SET aggregate_id = excluded.aggregate_id,
                first_version = 0, last_version = 0, position = 0, created_us = excluded.created_us,
                fingerprint = excluded.fingerprint, expires_us = excluded.expires_us,
                refusal = excluded.refusal",
            &[
                &record.key.key,
                &aggregate_id,
                &now.as_micros(),
                &record.key.fingerprint,
                &record.key.expires_at.map(cairn_core::timestamp::Timestamp::as_micros),
                &refusal_json,
            ],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(record)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    async fn check_health(&self) -> Result<(), AppendError> {
        if self.jobs.is_closed() {
            return Err(AppendError::ShuttingDown);
        }
        let client =
            self.shared.pool.get().await.map_err(|e| AppendError::Unavailable(e.to_string()))?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| AppendError::Unavailable(db_error(&e)))
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        let (groups, appends, events) = self.commit_stats();
        let stall = self.shared.stall();
        vec![
            ("cairn_store_group_commits_total", groups as f64),
            ("cairn_store_group_commit_appends_total", appends as f64),
            ("cairn_store_group_commit_events_total", events as f64),
            ("cairn_store_stalled", f64::from(u8::from(stall.is_some()))),
            ("cairn_store_stall_seconds", stall.as_ref().map_or(0.0, |s| s.age_secs)),
            ("cairn_store_stall_blocking_pid", stall.as_ref().map_or(0.0, |s| f64::from(s.pid))),
            ("cairn_store_stall_waiting_appends", stall.as_ref().map_or(0.0, |s| s.waiting as f64)),
            ("cairn_store_size_bytes", self.shared.size_bytes() as f64),
            ("cairn_store_queued_append_bytes", self.budget.reserved_bytes() as f64),
        ]
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
        self.shared.stop.send_replace(true);
        let tasks: Vec<_> =
            self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
