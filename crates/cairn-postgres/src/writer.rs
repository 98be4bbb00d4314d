//! The group-commit writer: one task per process, one transaction per group of appends.
//!
//! Per group, in two round trips:
//! 1. take one queued append, then whatever else is queued (bounded), waiting briefly for
//!    the writers of the previous group;
//! 2. send `BEGIN`, the append lock (`pg_advisory_xact_lock`: from here until COMMIT no
//!    other process appends, so what is read now stays true) and four reads back to back:
//!    the head position, the head of every stream in the group, which of the group's event
//!    ids and idempotency keys exist;
//! 3. decide every append in order in memory (a rejection rejects only that append);
//! 4. send one multi-row `INSERT … SELECT FROM unnest(…)` for all events (it also
//!    `pg_notify`s the new head), one for the keys, and `COMMIT`, back to back; answer
//!    only after the COMMIT succeeded.
//!
//! The lock is released after the commit is visible, so positions become visible in
//! order and no reader can skip one. A failed group is answered "outcome unknown" only
//! when COMMIT itself failed; the next group re-reads everything from the database, so
//! nothing in memory can go stale.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::lifecycle::effective_version;
use cairn_core::store::{StoredLocation, recognise_retry};
use cairn_core::timestamp::Timestamp;
use cairn_core::{
    Append, AppendError, AppendOutcome, IdempotencyKey, IdempotencyRecord, KeyOutcome,
};
use deadpool_postgres::Object;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::pool::{Shared, db_error};

pub(crate) type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

pub(crate) enum Job {
    Append(Append, Reply),
    Shutdown(oneshot::Sender<()>),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub groups: AtomicU64,
    pub appends: AtomicU64,
    pub events: AtomicU64,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>, stats: Arc<WriterStats>) {
    let mut conn: Option<Object> = None;
    let mut group: Vec<(Append, Reply)> = Vec::new();
    // Size of the last group, and how many appends were already queued when it was answered.
    let (mut prev_group, mut queued_at_reply) = (0, 0);
    while let Some(job) = rx.recv().await {
        let mut shutdown = None;
        let mut events = 0;
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Append(a, reply) => {
                    events += a.events.len();
                    group.push((a, reply));
                }
                Job::Shutdown(done) => {
                    shutdown = Some(done);
                    break;
                }
            }
            if group.len() < shared.options.batch_appends_max
                && events < shared.options.batch_events_max
            {
                next = rx.try_recv().ok();
            }
        }
        // The writers just answered are about to append again: without waiting for them, N
        // concurrent writers split into two half-size groups that alternate (one arrives
        // while the other commits). Wait briefly for as many as were answered.
        if shutdown.is_none() && prev_group > 1 && !shared.options.gather_wait.is_zero() {
            let target = (queued_at_reply + prev_group).min(shared.options.batch_appends_max);
            let deadline = std::time::Instant::now() + shared.options.gather_wait;
            while group.len() < target
                && events < shared.options.batch_events_max
                && std::time::Instant::now() < deadline
            {
                match rx.try_recv() {
                    Ok(Job::Append(a, reply)) => {
                        events += a.events.len();
                        group.push((a, reply));
                    }
                    Ok(Job::Shutdown(done)) => {
                        shutdown = Some(done);
                        break;
                    }
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }
        prev_group = group.len();
        if !group.is_empty() {
            commit_group(&shared, &mut conn, &mut group, &stats).await;
        }
        queued_at_reply = rx.len();
        if let Some(done) = shutdown {
            rx.close();
            while let Ok(job) = rx.try_recv() {
                if let Job::Append(_, reply) = job {
                    let _ = reply.send(Err(AppendError::ShuttingDown));
                }
            }
            let _ = done.send(());
            break;
        }
    }
}

async fn connection<'a>(
    shared: &Shared,
    conn: &'a mut Option<Object>,
) -> Result<&'a mut Object, String> {
    if conn.as_ref().is_some_and(|c| c.is_closed()) {
        *conn = None;
    }
    if conn.is_none() {
        let c = shared.pool.get().await.map_err(|e| e.to_string())?;
        let timeout_ms = shared.options.lock_timeout.as_millis();
        c.batch_execute(&format!("SET lock_timeout = {timeout_ms}"))
            .await
            .map_err(|e| db_error(&e))?;
        *conn = Some(c);
    }
    conn.as_mut().ok_or_else(|| "no connection".to_owned())
}

async fn commit_group(
    shared: &Shared,
    conn: &mut Option<Object>,
    group: &mut Vec<(Append, Reply)>,
    stats: &WriterStats,
) {
    let result = match connection(shared, conn).await {
        Ok(c) => try_commit(shared, c, group).await,
        Err(e) => Err(Failure::NotStored(e)),
    };
    match result {
        Ok((results, head, stored_events)) => {
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats.appends.fetch_add(group.len() as u64, Ordering::Relaxed);
            stats.events.fetch_add(stored_events, Ordering::Relaxed);
            shared.advance_head(head);
            for ((_, reply), result) in group.drain(..).zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(failure) => {
            // Whatever went wrong, the connection may be inside a transaction: close it
            // (PostgreSQL rolls back) instead of returning it to the pool.
            if let Some(c) = conn.take() {
                drop(Object::take(c));
            }
            let error = match failure {
                Failure::NotStored(m) => {
                    tracing::warn!(error = %m, "append group failed before commit; nothing stored");
                    AppendError::Unavailable(format!("the event store could not append: {m}"))
                }
                Failure::Unknown(m) => {
                    tracing::error!(error = %m, "commit failed; outcome unknown");
                    AppendError::Unavailable(format!(
                        "commit failed, outcome unknown (the events may or may not be stored): retry with the same event ids; {m}"
                    ))
                }
            };
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

enum Failure {
    /// Rolled back: nothing of the group is stored.
    NotStored(String),
    /// COMMIT was sent and did not answer.
    Unknown(String),
}

struct Stream {
    aggregate_type: String,
    version: u64,
    /// Its last event's type: a delete or tombstone marker there decides appends.
    last_event_type: String,
}

/// The group's rows, column by column, for `unnest`.
#[derive(Default)]
struct Rows {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_id: Vec<String>,
    aggregate_type: Vec<String>,
    event_type: Vec<String>,
    version: Vec<i64>,
    data: Vec<String>,
    metadata: Vec<String>,
}

#[derive(Default)]
struct Keys {
    key: Vec<String>,
    aggregate_id: Vec<String>,
    first_version: Vec<i64>,
    last_version: Vec<i64>,
    position: Vec<i64>,
    fingerprint: Vec<Option<String>>,
    expires_us: Vec<Option<i64>>,
}

const HEAD_SQL: &str = "SELECT position, timestamp_us FROM events ORDER BY position DESC LIMIT 1";
const STREAM_HEADS_SQL: &str = "SELECT h.aggregate_id, h.aggregate_type, h.version, h.event_type
     FROM unnest($1::text[]) AS s(id),
          LATERAL (SELECT aggregate_id, aggregate_type, version, event_type FROM events
                   WHERE aggregate_id = s.id ORDER BY version DESC LIMIT 1) h";
const EVENT_IDS_SQL: &str = "SELECT event_id, aggregate_id, version, position, event_type, data FROM events WHERE event_id = ANY($1)";
const KEYS_SQL: &str = "SELECT key, aggregate_id, first_version, last_version, position,
            fingerprint, expires_us, refusal
     FROM idempotency_keys WHERE key = ANY($1)";
const INSERT_SQL: &str = "WITH inserted AS (INSERT INTO events
     (position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata)
     SELECT p, i, a, t, e, v, $7, d, m FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[],
        $5::text[], $6::bigint[], $8::text[], $9::text[]) AS r(p, i, a, t, e, v, d, m)
     RETURNING position)
     SELECT pg_notify($10, (SELECT max(position) FROM inserted)::text)";
/// Under the append lock only an expired record can be in the way (a live one refused
/// the append): it is replaced.
const INSERT_KEYS_SQL: &str = "INSERT INTO idempotency_keys
     (key, aggregate_id, first_version, last_version, position, created_us, fingerprint, expires_us, refusal)
     SELECT k, a, f, l, p, $6, fp, x, NULL FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
        $5::bigint[], $7::text[], $8::bigint[]) AS r(k, a, f, l, p, fp, x)
     ON CONFLICT (key) DO UPDATE SET aggregate_id = excluded.aggregate_id,
        first_version = excluded.first_version, last_version = excluded.last_version,
        position = excluded.position, created_us = excluded.created_us,
        fingerprint = excluded.fingerprint, expires_us = excluded.expires_us, refusal = NULL";

/// A record read back from `idempotency_keys` (columns in order: `key`, `aggregate_id`,
/// `first_version`, `last_version`, `position`, `fingerprint`, `expires_us`, `refusal`).
pub(crate) fn record_from_row(r: &tokio_postgres::Row) -> IdempotencyRecord {
    let refusal: Option<String> = r.get(7);
    IdempotencyRecord::from_columns(
        IdempotencyKey {
            key: r.get(0),
            fingerprint: r.get(5),
            expires_at: r.get::<_, Option<i64>>(6).map(Timestamp::from_micros),
        },
        r.get(1),
        (r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64, r.get::<_, i64>(4) as u64),
        refusal.as_deref(),
    )
}

type Results = Vec<Result<AppendOutcome, AppendError>>;

#[allow(clippy::too_many_lines)] // one transaction, read top to bottom
async fn try_commit(
    shared: &Shared,
    client: &mut Object,
    group: &[(Append, Reply)],
) -> Result<(Results, u64, u64), Failure> {
    let not_stored = |e: tokio_postgres::Error| Failure::NotStored(db_error(&e));
    // BEGIN and the lock in one round trip; the transaction is driven by hand so that
    // independent statements can be pipelined (on failure the connection is discarded,
    // which rolls back).
    let tx: &Object = client;
    let stream_ids: Vec<&str> = group
        .iter()
        .map(|(a, _)| a.aggregate_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let event_ids: Vec<Uuid> =
        group.iter().flat_map(|(a, _)| a.events.iter().map(|e| e.event_id)).collect();
    let keys: Vec<&str> =
        group.iter().filter_map(|(a, _)| a.idempotency.as_ref().map(|k| k.key.as_str())).collect();

    // Statements are prepared once per session (no round trip after the first group).
    let (last_stmt, streams_stmt, ids_stmt, keys_stmt) = tokio::try_join!(
        tx.prepare_cached(HEAD_SQL),
        tx.prepare_cached(STREAM_HEADS_SQL),
        tx.prepare_cached(EVENT_IDS_SQL),
        tx.prepare_cached(KEYS_SQL),
    )
    .map_err(not_stored)?;
    // One round trip: BEGIN, the lock, and the four reads are sent back to back; the
    // server runs them in order, so the reads see everything committed before the lock.
    // READ COMMITTED whatever the database's default: each read must take its snapshot
    // after the lock is granted. Under REPEATABLE READ the snapshot is taken by the lock
    // statement itself, before it waits, so a group that waited for another process's
    // commit would read a stale head and collide on positions.
    let begin = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({})",
        shared.append_lock
    );
    let heads_args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&stream_ids];
    let ((), head_rows, head_of_streams, found_ids, found_keys) = tokio::try_join!(
        tx.batch_execute(&begin),
        tx.query(&last_stmt, &[]),
        tx.query(&streams_stmt, &heads_args),
        async {
            if event_ids.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&ids_stmt, &[&event_ids]).await
            }
        },
        async {
            if keys.is_empty() { Ok(Vec::new()) } else { tx.query(&keys_stmt, &[&keys]).await }
        },
    )
    .map_err(not_stored)?;

    let (head, last_ts): (u64, i64) =
        head_rows.first().map_or((0, 0), |r| (r.get::<_, i64>(0) as u64, r.get(1)));
    let mut streams: HashMap<String, Stream> = head_of_streams
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Stream {
                    aggregate_type: r.get(1),
                    version: r.get::<_, i64>(2) as u64,
                    last_event_type: r.get(3),
                },
            )
        })
        .collect();
    let mut locations: HashMap<Uuid, StoredLocation> = found_ids
        .iter()
        .map(|r| {
            (
                r.get::<_, Uuid>(0),
                StoredLocation {
                    aggregate_id: r.get(1),
                    version: r.get::<_, i64>(2) as u64,
                    position: r.get::<_, i64>(3) as u64,
                    event_type: r.get(4),
                    data: r.get(5),
                },
            )
        })
        .collect();
    // An expired record counts as absent; the key's next record replaces it.
    let now = Timestamp::now();
    let mut used_keys: HashMap<String, IdempotencyRecord> = found_keys
        .iter()
        .map(record_from_row)
        .filter(|r| !r.is_expired(now))
        .map(|r| (r.key.key.clone(), r))
        .collect();

    let timestamp_us = Timestamp::now().as_micros().max(last_ts);
    let mut next_position = head + 1;
    let mut rows = Rows::default();
    let mut new_keys = Keys::default();
    let mut results = Vec::with_capacity(group.len());
    for (append, _) in group {
        let result = decide(append, &streams, &locations, &used_keys);
        let Ok(Decision::Store { actual }) = result else {
            results.push(result.map(|d| match d {
                Decision::Retry(outcome) => outcome,
                Decision::Store { .. } => unreachable!("handled above"),
            }));
            continue;
        };
        let n = append.events.len() as u64;
        for (i, e) in append.events.iter().enumerate() {
            let (position, version) = (next_position + i as u64, actual + 1 + i as u64);
            rows.position.push(position as i64);
            rows.event_id.push(e.event_id);
            rows.aggregate_id.push(append.aggregate_id.clone());
            rows.aggregate_type.push(append.aggregate_type.clone());
            rows.event_type.push(e.event_type.clone());
            rows.version.push(version as i64);
            rows.data.push(e.data.get().to_owned());
            rows.metadata.push(e.metadata.get().to_owned());
            locations.insert(
                e.event_id,
                StoredLocation {
                    aggregate_id: append.aggregate_id.clone(),
                    version,
                    position,
                    event_type: e.event_type.clone(),
                    data: e.data.get().to_owned(),
                },
            );
        }
        let outcome = AppendOutcome {
            first_version: actual + 1,
            last_version: actual + n,
            position: next_position + n - 1,
            deduplicated: false,
        };
        next_position += n;
        streams.insert(
            append.aggregate_id.clone(),
            Stream {
                aggregate_type: append.aggregate_type.clone(),
                version: outcome.last_version,
                last_event_type: append
                    .events
                    .last()
                    .map(|e| e.event_type.clone())
                    .unwrap_or_default(),
            },
        );
        if let Some(key) = &append.idempotency {
            new_keys.key.push(key.key.clone());
            new_keys.aggregate_id.push(append.aggregate_id.clone());
            new_keys.first_version.push(outcome.first_version as i64);
            new_keys.last_version.push(outcome.last_version as i64);
            new_keys.position.push(outcome.position as i64);
            new_keys.fingerprint.push(key.fingerprint.clone());
            new_keys.expires_us.push(key.expires_at.map(Timestamp::as_micros));
            used_keys.insert(
                key.key.clone(),
                IdempotencyRecord {
                    key: key.clone(),
                    outcome: KeyOutcome::Appended {
                        aggregate_id: append.aggregate_id.clone(),
                        outcome: AppendOutcome { deduplicated: true, ..outcome },
                    },
                },
            );
        }
        results.push(Ok(outcome));
    }

    let stored = rows.position.len() as u64;
    let (insert, insert_keys) =
        tokio::try_join!(tx.prepare_cached(INSERT_SQL), tx.prepare_cached(INSERT_KEYS_SQL))
            .map_err(not_stored)?;
    let events_args: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &rows.position,
        &rows.event_id,
        &rows.aggregate_id,
        &rows.aggregate_type,
        &rows.event_type,
        &rows.version,
        &timestamp_us,
        &rows.data,
        &rows.metadata,
        &shared.events_channel,
    ];
    let keys_args: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &new_keys.key,
        &new_keys.aggregate_id,
        &new_keys.first_version,
        &new_keys.last_version,
        &new_keys.position,
        &timestamp_us,
        &new_keys.fingerprint,
        &new_keys.expires_us,
    ];
    let insert_events =
        async { if stored == 0 { Ok(Vec::new()) } else { tx.query(&insert, &events_args).await } };
    let insert_keys = async {
        if new_keys.key.is_empty() { Ok(0) } else { tx.execute(&insert_keys, &keys_args).await }
    };
    if shared.options.commit_delay.is_zero() {
        // One round trip: the events (their INSERT carries the NOTIFY of the new head), the
        // keys and COMMIT, back to back. If an INSERT fails the transaction is aborted and
        // PostgreSQL answers the COMMIT with a rollback: nothing of the group is stored.
        let (events_done, keys_done, committed) =
            tokio::join!(insert_events, insert_keys, tx.batch_execute("COMMIT"));
        events_done.map_err(not_stored)?;
        keys_done.map_err(not_stored)?;
        committed.map_err(|e| Failure::Unknown(db_error(&e)))?;
    } else {
        let (events_done, keys_done) = tokio::join!(insert_events, insert_keys);
        events_done.map_err(not_stored)?;
        keys_done.map_err(not_stored)?;
        // Test hook: hold the lock with the rows written but not committed.
        tokio::time::sleep(shared.options.commit_delay).await;
        tx.batch_execute("COMMIT").await.map_err(|e| Failure::Unknown(db_error(&e)))?;
    }
    Ok((results, next_position - 1, stored))
}

enum Decision {
    Store { actual: u64 },
    Retry(AppendOutcome),
}

/// Decides one append against the state read under the lock plus the group's earlier
/// appends, checking in the order `recognise_retry` documents.
fn decide(
    append: &Append,
    streams: &HashMap<String, Stream>,
    locations: &HashMap<Uuid, StoredLocation>,
    keys: &HashMap<String, IdempotencyRecord>,
) -> Result<Decision, AppendError> {
    if let Some(key) = &append.idempotency
        && let Some(record) = keys.get(&key.key)
    {
        return Err(record.clone().clash(key));
    }
    let retry = || {
        locations.contains_key(&append.events[0].event_id).then(|| {
            let found: Vec<Option<StoredLocation>> =
                append.events.iter().map(|e| locations.get(&e.event_id).cloned()).collect();
            recognise_retry(append, &found).map(Decision::Retry)
        })
    };
    let stream = streams.get(&append.aggregate_id);
    let actual = stream.map_or(0, |s| s.version);
    // A soft-deleted stream counts as absent; a tombstoned one takes nothing.
    let effective = match stream {
        Some(s) => match effective_version(&append.aggregate_id, s.version, &s.last_event_type) {
            Ok(v) => v,
            Err(e) => return retry().unwrap_or(Err(e)),
        },
        None => 0,
    };
    if !append.expected.is_satisfied_by(effective) {
        return retry().unwrap_or(Err(AppendError::WrongExpectedVersion {
            expected: append.expected,
            actual: effective,
        }));
    }
    if let Some(s) = stream
        && s.aggregate_type != append.aggregate_type
    {
        return retry().unwrap_or_else(|| {
            Err(AppendError::AggregateTypeMismatch {
                actual: s.aggregate_type.clone(),
                requested: append.aggregate_type.clone(),
            })
        });
    }
    if let Some(clash) = append.events.iter().find(|e| locations.contains_key(&e.event_id)) {
        return retry().unwrap_or(Err(AppendError::DuplicateEventId { event_id: clash.event_id }));
    }
    Ok(Decision::Store { actual })
}
