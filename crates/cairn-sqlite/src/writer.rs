//! The group-commit writer: one thread, one write connection, one transaction per group.
//!
//! Protocol, per group:
//! 1. block for one job, then drain whatever else is queued (bounded by
//!    `batch_appends_max` appends and `batch_events_max` events);
//! 2. `BEGIN IMMEDIATE`; each append runs inside its own savepoint, so one append's
//!    rejection (wrong version, type mismatch, duplicate id) rolls back only itself;
//! 3. `COMMIT` (the one fsync of the group);
//! 4. only then answer every append and publish the new head position.
//!
//! Any unexpected SQLite error — above all a failed commit, i.e. a failed fsync — poisons
//! the store: the group is answered with an error, nothing of it is acknowledged, and every
//! later append is refused. Retrying an fsync is unsound (the kernel may have dropped the
//! dirty pages), so we never do.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cairn_core::lifecycle::{REDACTED_JSON, SCAVENGED_EVENT, effective_version};
use cairn_core::store::{StoredLocation, recognise_retry};
use cairn_core::timestamp::Timestamp;
use cairn_core::{
    Append, AppendError, AppendOutcome, IdempotencyKey, IdempotencyRecord, KeyOutcome, Refusal,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};

/// A unit of work for the writer thread.
pub enum Job {
    /// Append and answer.
    Append(Append, oneshot::Sender<Result<AppendOutcome, AppendError>>),
    /// Record a refused keyed command unless its key holds a record; answer the first one.
    RecordRefusal(RefusalJob),
    /// Redact the events at these positions (a scavenge batch); answer how many changed.
    Redact(Vec<u64>, oneshot::Sender<Result<u64, AppendError>>),
    /// Stop after everything queued before this; answer when done.
    Shutdown(oneshot::Sender<()>),
}

/// A refusal to record, and where to send the record that is first.
pub struct RefusalJob {
    pub key: IdempotencyKey,
    pub aggregate_id: String,
    pub refusal: Refusal,
    pub reply: oneshot::Sender<Result<IdempotencyRecord, AppendError>>,
}

/// Limits and hooks of the writer loop.
pub struct WriterConfig {
    pub batch_appends_max: usize,
    pub batch_events_max: usize,
    pub poisoned: Arc<AtomicBool>,
    /// Test hook: when set, the next commit fails as a failed fsync would.
    pub fail_next_commit: Arc<AtomicBool>,
    /// How long a group may wait for more appends when writers are concurrent.
    pub gather_wait: std::time::Duration,
    /// Counters of what was committed.
    pub stats: Arc<WriterStats>,
}

/// Running totals of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Group commits that reached the disk.
    pub groups: AtomicU64,
    /// Appends answered by those commits (including rejected ones).
    pub appends: AtomicU64,
    /// Events written by those commits.
    pub events: AtomicU64,
}

/// Cached (aggregate type, version) per stream. Bounded: cleared when it grows past this.
const STREAM_CACHE_MAX: usize = 100_000;

struct StreamState {
    aggregate_type: String,
    version: u64,
    /// Its last event's type: a delete or tombstone marker there decides appends.
    last_event_type: String,
}

struct Writer {
    conn: Connection,
    head: Arc<watch::Sender<u64>>,
    config: WriterConfig,
    next_position: u64,
    last_timestamp_us: i64,
    streams: HashMap<String, StreamState>,
}

/// Why a group failed as a whole.
struct Fatal(String);

impl From<rusqlite::Error> for Fatal {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

/// Runs the writer loop until shutdown or until every sender is gone.
pub fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    head: Arc<watch::Sender<u64>>,
    config: WriterConfig,
    (last_position, last_ts): (u64, i64),
) {
    let mut w = Writer {
        conn,
        head,
        config,
        next_position: last_position + 1,
        last_timestamp_us: last_ts,
        streams: HashMap::new(),
    };
    let mut group: Vec<(Append, oneshot::Sender<Result<AppendOutcome, AppendError>>)> = Vec::new();
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    let mut refusals: Vec<RefusalJob> = Vec::new();
    let mut redactions: Vec<Redaction> = Vec::new();
    // Size of the last group, and how many appends were already queued when it was answered.
    let mut prev_group = 0;
    let mut queued_at_reply = 0;
    while let Some(job) = rx.blocking_recv() {
        let mut next = Some(job);
        let mut events = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Append(a, reply) => {
                    events += a.events.len();
                    group.push((a, reply));
                }
                Job::RecordRefusal(r) => refusals.push(r),
                Job::Redact(positions, reply) => redactions.push((positions, reply)),
                Job::Shutdown(done) => {
                    shutdown = Some(done);
                    break;
                }
            }
            if group.len() < w.config.batch_appends_max && events < w.config.batch_events_max {
                next = rx.try_recv().ok();
            }
        }
        if shutdown.is_none() && prev_group > 1 && !w.config.gather_wait.is_zero() {
            let target = (queued_at_reply + prev_group).min(w.config.batch_appends_max);
            shutdown =
                gather(&mut rx, &mut group, &mut refusals, &mut redactions, target, &w.config);
        }
        prev_group = group.len();
        if !group.is_empty() {
            w.commit_group(&mut group);
        }
        // After the group: a refusal queued behind a keyed append of the same key finds
        // that append's record, as it would had they come one at a time.
        if !refusals.is_empty() {
            w.record_refusals(&mut refusals);
        }
        for (positions, reply) in redactions.drain(..) {
            let _ = reply.send(w.redact(&positions));
        }
        queued_at_reply = rx.len();
        if let Some(done) = shutdown.take() {
            rx.close();
            // Appends that raced the shutdown are refused, not dropped silently.
            while let Ok(job) = rx.try_recv() {
                match job {
                    Job::Append(_, reply) => {
                        let _ = reply.send(Err(AppendError::ShuttingDown));
                    }
                    Job::RecordRefusal(r) => {
                        let _ = r.reply.send(Err(AppendError::ShuttingDown));
                    }
                    Job::Redact(_, reply) => {
                        let _ = reply.send(Err(AppendError::ShuttingDown));
                    }
                    Job::Shutdown(_) => {}
                }
            }
            let _ = done.send(());
            break;
        }
    }
    tracing::debug!("sqlite writer stopped");
}

/// Waits briefly for the writers answered by the previous group to send their next append,
/// until the group holds `target` appends: those already queued when the previous group
/// was answered plus the previous group's writers.
///
/// Under concurrency the queue otherwise settles into two half-size groups that alternate
/// (one arrives while the other commits). Waiting up to `gather_wait` for the previous
/// group's writers joins the halves: one fsync instead of two. A single writer never waits
/// (`prev_group > 1` is required by the caller).
/// Returns the shutdown request if one arrived meanwhile.
fn gather(
    rx: &mut mpsc::Receiver<Job>,
    group: &mut Vec<Pending>,
    refusals: &mut Vec<RefusalJob>,
    redactions: &mut Vec<Redaction>,
    target: usize,
    config: &WriterConfig,
) -> Option<oneshot::Sender<()>> {
    let deadline = std::time::Instant::now() + config.gather_wait;
    let mut events: usize = group.iter().map(|(a, _)| a.events.len()).sum();
    while group.len() < target
        && events < config.batch_events_max
        && std::time::Instant::now() < deadline
    {
        match rx.try_recv() {
            Ok(Job::Append(a, reply)) => {
                events += a.events.len();
                group.push((a, reply));
            }
            Ok(Job::RecordRefusal(r)) => refusals.push(r),
            Ok(Job::Redact(positions, reply)) => redactions.push((positions, reply)),
            Ok(Job::Shutdown(done)) => return Some(done),
            Err(_) => std::thread::yield_now(),
        }
    }
    None
}

type Pending = (Append, oneshot::Sender<Result<AppendOutcome, AppendError>>);
type Redaction = (Vec<u64>, oneshot::Sender<Result<u64, AppendError>>);

impl Writer {
    /// Redacts the events at `positions` in one transaction (a scavenge batch).
    fn redact(&mut self, positions: &[u64]) -> Result<u64, AppendError> {
        if self.config.poisoned.load(Ordering::Acquire) {
            return Err(AppendError::Poisoned);
        }
        let unavailable = |e: rusqlite::Error| AppendError::Unavailable(e.to_string());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let mut changed = 0;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE events SET event_type = ?2, data = ?3, metadata = ?3
                     WHERE position = ?1 AND event_type <> ?2",
                )
                .map_err(unavailable)?;
            for &p in positions {
                let p = i64::try_from(p).unwrap_or(i64::MAX);
                changed += update
                    .execute(params![p, SCAVENGED_EVENT, REDACTED_JSON])
                    .map_err(unavailable)? as u64;
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(changed)
    }

    fn commit_group(
        &mut self,
        group: &mut Vec<(Append, oneshot::Sender<Result<AppendOutcome, AppendError>>)>,
    ) {
        if self.config.poisoned.load(Ordering::Acquire) {
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(AppendError::Poisoned));
            }
            return;
        }
        match self.try_commit_group(group) {
            Ok(results) => {
                let stats = &self.config.stats;
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.appends.fetch_add(group.len() as u64, Ordering::Relaxed);
                stats.events.fetch_add(
                    self.next_position - 1 - self.head.borrow().to_owned(),
                    Ordering::Relaxed,
                );
                self.head.send_replace(self.next_position - 1);
                for ((_, reply), result) in group.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(Fatal(message)) => {
                self.config.poisoned.store(true, Ordering::Release);
                self.streams.clear();
                tracing::error!(error = %message, "event store write failed; the store is poisoned and refuses all further appends until restarted");
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(AppendError::Unavailable(format!(
                        "write failed, outcome unknown (the events may or may not be stored): retry with the same event ids after a restart; {message}"
                    ))));
                }
            }
        }
    }

    /// Records each refusal unless its key holds a live record, in one transaction.
    fn record_refusals(&mut self, refusals: &mut Vec<RefusalJob>) {
        if self.config.poisoned.load(Ordering::Acquire) {
            for r in refusals.drain(..) {
                let _ = r.reply.send(Err(AppendError::Poisoned));
            }
            return;
        }
        let decided = (|| -> Result<Vec<Result<IdempotencyRecord, AppendError>>, Fatal> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = Timestamp::now().as_micros();
            let mut results = Vec::with_capacity(refusals.len());
            for r in refusals.iter() {
                if let Some(record) = live_key(&tx, &r.key.key, now)? {
                    results.push(if record.key.fingerprint == r.key.fingerprint {
                        Ok(record)
                    } else {
                        Err(record.clash(&r.key))
                    });
                    continue;
                }
                let record = IdempotencyRecord {
                    key: r.key.clone(),
                    outcome: KeyOutcome::Refused {
                        aggregate_id: r.aggregate_id.clone(),
                        refusal: r.refusal.clone(),
                    },
                };
                insert_key(&tx, &record, now)?;
                results.push(Ok(record));
            }
            if self.config.fail_next_commit.swap(false, Ordering::AcqRel) {
                return Err(Fatal("injected commit failure".into()));
            }
            tx.commit()?;
            Ok(results)
        })();
        match decided {
            Ok(results) => {
                for (r, result) in refusals.drain(..).zip(results) {
                    let _ = r.reply.send(result);
                }
            }
            Err(Fatal(message)) => {
                self.config.poisoned.store(true, Ordering::Release);
                self.streams.clear();
                tracing::error!(error = %message, "recording a refusal failed; the store is poisoned and refuses all further writes until restarted");
                for r in refusals.drain(..) {
                    let _ = r.reply.send(Err(AppendError::Unavailable(format!(
                        "write failed, outcome unknown: {message}"
                    ))));
                }
            }
        }
    }

    fn try_commit_group(
        &mut self,
        group: &[(Append, oneshot::Sender<Result<AppendOutcome, AppendError>>)],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, Fatal> {
        let group_start_position = self.next_position;
        let timestamp_us = Timestamp::now().as_micros().max(self.last_timestamp_us);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(group.len());
        let mut touched: HashMap<String, StreamState> = HashMap::new();
        for (append, _) in group {
            let start = self.next_position;
            // A single-event append needs no savepoint: every rejection happens before its
            // one INSERT, and a failing statement is undone by SQLite itself. A batch needs
            // one, so that a clash on its third event also takes back the first two.
            let savepoint = append.events.len() > 1;
            if savepoint {
                tx.prepare_cached("SAVEPOINT append")?.execute([])?;
            }
            match apply(&tx, append, &self.streams, &touched, start, timestamp_us)? {
                Applied::Stored(outcome) => {
                    if savepoint {
                        tx.prepare_cached("RELEASE append")?.execute([])?;
                    }
                    self.next_position = outcome.position + 1;
                    touched.insert(
                        append.aggregate_id.clone(),
                        StreamState {
                            aggregate_type: append.aggregate_type.clone(),
                            version: outcome.last_version,
                            last_event_type: append
                                .events
                                .last()
                                .map(|e| e.event_type.clone())
                                .unwrap_or_default(),
                        },
                    );
                    results.push(Ok(outcome));
                }
                Applied::Retry(outcome) => {
                    if savepoint {
                        tx.prepare_cached("RELEASE append")?.execute([])?;
                    }
                    results.push(Ok(outcome));
                }
                Applied::Rejected(e) => {
                    if savepoint {
                        tx.prepare_cached("ROLLBACK TO append")?.execute([])?;
                        tx.prepare_cached("RELEASE append")?.execute([])?;
                    }
                    results.push(Err(e));
                }
            }
        }
        if self.config.fail_next_commit.swap(false, Ordering::AcqRel) {
            drop(tx);
            self.next_position = group_start_position;
            return Err(Fatal("injected commit failure".into()));
        }
        if let Err(e) = tx.commit() {
            self.next_position = group_start_position;
            return Err(e.into());
        }
        if self.next_position > group_start_position {
            self.last_timestamp_us = timestamp_us;
        }
        if self.streams.len() > STREAM_CACHE_MAX {
            self.streams.clear();
        }
        self.streams.extend(touched);
        Ok(results)
    }
}

enum Applied {
    Stored(AppendOutcome),
    Retry(AppendOutcome),
    Rejected(AppendError),
}

/// The record under an idempotency key, expired or not.
pub fn recorded_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<IdempotencyRecord>> {
    conn.prepare_cached(
        "SELECT aggregate_id, first_version, last_version, position, fingerprint, expires_us, refusal
         FROM idempotency_keys WHERE key = ?1",
    )?
    .query_row([key], |r| {
        let refusal: Option<String> = r.get(6)?;
        Ok(IdempotencyRecord::from_columns(
            IdempotencyKey {
                key: key.to_owned(),
                fingerprint: r.get(4)?,
                expires_at: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
            },
            r.get(0)?,
            (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64),
            refusal.as_deref(),
        ))
    })
    .optional()
}

/// The live record under `key` for a write: an expired one is deleted (in the write's
/// transaction) and counts as absent.
fn live_key(
    conn: &Connection,
    key: &str,
    now_us: i64,
) -> rusqlite::Result<Option<IdempotencyRecord>> {
    let Some(record) = recorded_key(conn, key)? else { return Ok(None) };
    if record.is_expired(Timestamp::from_micros(now_us)) {
        conn.prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1")?.execute([key])?;
        return Ok(None);
    }
    Ok(Some(record))
}

fn insert_key(conn: &Connection, record: &IdempotencyRecord, now_us: i64) -> rusqlite::Result<()> {
    let (aggregate_id, first, last, position, refusal) = record.columns();
    conn.prepare_cached(
        "INSERT INTO idempotency_keys
            (key, aggregate_id, first_version, last_version, position, created_us, fingerprint, expires_us, refusal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        record.key.key,
        aggregate_id,
        first as i64,
        last as i64,
        position as i64,
        now_us,
        record.key.fingerprint,
        record.key.expires_at.map(Timestamp::as_micros),
        refusal,
    ])?;
    Ok(())
}

/// When the append's first event id is already stored: the retry's answer (its original
/// outcome, or a duplicate-id rejection). `None` when the id is new.
fn retry_of_stored(conn: &Connection, append: &Append) -> rusqlite::Result<Option<Applied>> {
    let mut by_id = conn.prepare_cached(
        "SELECT aggregate_id, version, position, event_type, data FROM events WHERE event_id = ?1",
    )?;
    let mut locate = |id: &uuid::Uuid| {
        by_id
            .query_row([id.as_bytes()], |r| {
                Ok(StoredLocation {
                    aggregate_id: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u64,
                    position: r.get::<_, i64>(2)? as u64,
                    event_type: r.get(3)?,
                    data: r.get(4)?,
                })
            })
            .optional()
    };
    if locate(&append.events[0].event_id)?.is_none() {
        return Ok(None);
    }
    let mut found = Vec::with_capacity(append.events.len());
    for e in &append.events {
        found.push(locate(&e.event_id)?);
    }
    Ok(Some(match recognise_retry(append, &found) {
        Ok(outcome) => Applied::Retry(outcome),
        Err(e) => Applied::Rejected(e),
    }))
}

/// Applies one append inside its savepoint. `Err` only for unexpected SQLite failures.
///
/// Checks in the order `recognise_retry` documents, but keeps the common path to one
/// index seek for the stream head (often cached) and the inserts: the event-id lookup
/// happens only when something else already failed.
fn apply(
    conn: &Connection,
    append: &Append,
    cache: &HashMap<String, StreamState>,
    touched: &HashMap<String, StreamState>,
    first_position: u64,
    timestamp_us: i64,
) -> rusqlite::Result<Applied> {
    if let Some(key) = &append.idempotency
        && let Some(record) = live_key(conn, &key.key, timestamp_us)?
    {
        return Ok(Applied::Rejected(record.clash(key)));
    }
    // Later appends of this group see earlier ones through `touched`, then the cache, then disk.
    let known = touched
        .get(&append.aggregate_id)
        .or_else(|| cache.get(&append.aggregate_id))
        .map(|s| (s.aggregate_type.clone(), s.version, s.last_event_type.clone()));
    let (stream_type, actual, last_type) = match known {
        Some((t, v, l)) => (Some(t), v, l),
        None => conn
            .prepare_cached(crate::schema::STREAM_HEAD_SQL)?
            .query_row([&append.aggregate_id], |r| {
                Ok((Some(r.get::<_, String>(0)?), r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .optional()?
            .unwrap_or((None, 0, String::new())),
    };
    // A soft-deleted stream counts as absent; a tombstoned one takes nothing.
    let effective = match effective_version(&append.aggregate_id, actual, &last_type) {
        Ok(v) => v,
        Err(e) => return Ok(retry_of_stored(conn, append)?.unwrap_or(Applied::Rejected(e))),
    };
    if !append.expected.is_satisfied_by(effective) {
        // A retry of an append that did succeed must be answered as such, even though the
        // stream has moved on since: look for it only now, off the fast path.
        return Ok(retry_of_stored(conn, append)?.unwrap_or(Applied::Rejected(
            AppendError::WrongExpectedVersion { expected: append.expected, actual: effective },
        )));
    }
    if let Some(t) = stream_type
        && t != append.aggregate_type
    {
        return Ok(retry_of_stored(conn, append)?.unwrap_or(Applied::Rejected(
            AppendError::AggregateTypeMismatch {
                actual: t,
                requested: append.aggregate_type.clone(),
            },
        )));
    }

    let mut insert = conn.prepare_cached(
        "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, e) in append.events.iter().enumerate() {
        let inserted = insert.execute(params![
            (first_position + i as u64) as i64,
            e.event_id.as_bytes(),
            append.aggregate_id,
            append.aggregate_type,
            e.event_type,
            (actual + i as u64 + 1) as i64,
            timestamp_us,
            e.data.get(),
            e.metadata.get(),
        ]);
        match inserted {
            Ok(_) => {}
            // Only the event-id index can clash here: versions and positions are ours. A
            // clash on the first event may be a retry; a later one cannot be (the first
            // id was new).
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::ConstraintViolation =>
            {
                let retry = if i == 0 { retry_of_stored(conn, append)? } else { None };
                return Ok(retry.unwrap_or(Applied::Rejected(AppendError::DuplicateEventId {
                    event_id: e.event_id,
                })));
            }
            Err(other) => return Err(other),
        }
    }
    let n = append.events.len() as u64;
    let outcome = AppendOutcome {
        first_version: actual + 1,
        last_version: actual + n,
        position: first_position + n - 1,
        deduplicated: false,
    };
    if let Some(key) = &append.idempotency {
        let record = IdempotencyRecord {
            key: key.clone(),
            outcome: KeyOutcome::Appended {
                aggregate_id: append.aggregate_id.clone(),
                outcome: AppendOutcome { deduplicated: true, ..outcome },
            },
        };
        insert_key(conn, &record, timestamp_us)?;
    }
    Ok(Applied::Stored(outcome))
}
