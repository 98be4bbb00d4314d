//! An in-memory `EventStore`: the reference for tests and examples. Not durable.
//!
//! It passes the same conformance suite as the durable backends.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::error::{AppendError, ReadError};
use crate::lifecycle::{
    SCAVENGED_EVENT, STREAM_DELETED, STREAM_TOMBSTONED, StreamState, meta_stream,
};
use crate::store::{
    AllFilter, AllSlice, Append, AppendOutcome, Direction, EventStore, IdempotencyKey,
    IdempotencyRecord, KeyOutcome, READ_LIMIT_MAX, Refusal, StoredLocation, StreamRead,
    StreamSlice, StreamStats, recognise_retry,
};
use crate::timestamp::Timestamp;

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    /// aggregate id -> (aggregate type, indexes into `log` in version order)
    streams: HashMap<String, (String, Vec<usize>)>,
    ids: HashMap<Uuid, usize>,
    idempotency: HashMap<String, IdempotencyRecord>,
    last_timestamp: i64,
}

/// A store that keeps everything in one `Vec` behind a mutex.
pub struct MemoryEventStore {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEventStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner::default()), head: watch::Sender::new(0) }
    }

    /// The live record under `key`; an expired one is deleted on the way.
    fn live_record<'a>(inner: &'a mut Inner, key: &str) -> Option<&'a IdempotencyRecord> {
        if inner.idempotency.get(key).is_some_and(|r| r.is_expired(Timestamp::now())) {
            inner.idempotency.remove(key);
        }
        inner.idempotency.get(key)
    }

    /// A stream's version, type, and the version its expected version is checked against
    /// (a soft-deleted stream's is 0; a tombstoned one takes no append).
    fn head(inner: &Inner, id: &str) -> Result<(u64, Option<String>, u64), AppendError> {
        let Some((t, idx)) = inner.streams.get(id) else { return Ok((0, None, 0)) };
        let version = idx.len() as u64;
        let last = idx.last().map_or("", |&i| inner.log[i].event_type.as_str());
        let effective = crate::lifecycle::effective_version(id, version, last)?;
        Ok((version, Some(t.clone()), effective))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append: appends mutate
        // only after every check passed, so the data behind a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        append.validate()?;
        let mut inner = self.lock();
        if let Some(key) = &append.idempotency
            && let Some(record) = Self::live_record(&mut inner, &key.key)
        {
            return Err(record.clone().clash(key));
        }
        if inner.ids.contains_key(&append.events[0].event_id) {
            let found: Vec<_> = append
                .events
                .iter()
                .map(|e| {
                    inner.ids.get(&e.event_id).map(|&i| {
                        let ev = &inner.log[i];
                        StoredLocation {
                            aggregate_id: ev.aggregate_id.clone(),
                            version: ev.version,
                            position: ev.position,
                            event_type: ev.event_type.clone(),
                            data: ev.data.get().to_owned(),
                        }
                    })
                })
                .collect();
            return recognise_retry(&append, &found);
        }
        let (actual, stream_type, effective) = Self::head(&inner, &append.aggregate_id)?;
        if !append.expected.is_satisfied_by(effective) {
            return Err(AppendError::WrongExpectedVersion {
                expected: append.expected,
                actual: effective,
            });
        }
        if let Some(t) = stream_type
            && t != append.aggregate_type
        {
            return Err(AppendError::AggregateTypeMismatch {
                actual: t,
                requested: append.aggregate_type,
            });
        }
        if let Some(e) = append.events.iter().find(|e| inner.ids.contains_key(&e.event_id)) {
            return Err(AppendError::DuplicateEventId { event_id: e.event_id });
        }
        let ts = Timestamp::now().as_micros().max(inner.last_timestamp);
        inner.last_timestamp = ts;
        let n = append.events.len() as u64;
        let Append { aggregate_id, aggregate_type, events, idempotency, .. } = append;
        for (i, e) in events.into_iter().enumerate() {
            let index = inner.log.len();
            inner.ids.insert(e.event_id, index);
            inner.log.push(RecordedEvent {
                event_id: e.event_id,
                aggregate_id: aggregate_id.clone(),
                aggregate_type: aggregate_type.clone(),
                event_type: e.event_type,
                version: actual + i as u64 + 1,
                position: index as u64 + 1,
                timestamp: Timestamp::from_micros(ts),
                data: e.data,
                metadata: e.metadata,
            });
            inner
                .streams
                .entry(aggregate_id.clone())
                .or_insert_with(|| (aggregate_type.clone(), Vec::new()))
                .1
                .push(index);
        }
        let position = inner.log.len() as u64;
        let outcome = AppendOutcome {
            first_version: actual + 1,
            last_version: actual + n,
            position,
            deduplicated: false,
        };
        if let Some(key) = idempotency {
            let record = IdempotencyRecord {
                outcome: KeyOutcome::Appended {
                    aggregate_id,
                    outcome: AppendOutcome { deduplicated: true, ..outcome },
                },
                key,
            };
            inner.idempotency.insert(record.key.key.clone(), record);
        }
        drop(inner);
        self.head.send_replace(position);
        Ok(outcome)
    }

    async fn read_stream_raw(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError> {
        let inner = self.lock();
        let (aggregate_type, idx) =
            inner.streams.get(aggregate_id).ok_or(ReadError::StreamNotFound)?;
        let version = idx.len() as u64;
        let limit = read.limit.min(READ_LIMIT_MAX);
        let events: Vec<_> = match read.direction {
            Direction::Forward => {
                let from = read.from_version.unwrap_or(1).max(1);
                (from..=version)
                    .take(limit)
                    .map(|v| inner.log[idx[v as usize - 1]].clone())
                    .collect()
            }
            Direction::Backward => {
                let from = read.from_version.unwrap_or(version).min(version);
                (1..=from)
                    .rev()
                    .take(limit)
                    .map(|v| inner.log[idx[v as usize - 1]].clone())
                    .collect()
            }
        };
        Ok(StreamSlice {
            aggregate_type: aggregate_type.clone(),
            stream_version: version,
            first_visible: 1,
            moving: false,
            scanned_version: None,
            events,
        })
    }

    async fn stream_state(&self, aggregate_id: &str) -> Result<Option<StreamState>, ReadError> {
        let inner = self.lock();
        let Some((aggregate_type, idx)) = inner.streams.get(aggregate_id) else {
            return Ok(None);
        };
        let mut events = idx.iter().map(|&i| &inner.log[i]);
        let marker = events
            .clone()
            .rev()
            .find(|e| matches!(e.event_type.as_str(), STREAM_DELETED | STREAM_TOMBSTONED))
            .map(|e| e.version);
        let meta = inner.streams.get(&meta_stream(aggregate_id)).and_then(|(_, m)| {
            m.last().map(|&i| (m.len() as u64, inner.log[i].data.get().to_owned()))
        });
        Ok(Some(StreamState {
            aggregate_type: aggregate_type.clone(),
            version: idx.len() as u64,
            last_event_type: events.next_back().map(|e| e.event_type.clone()).unwrap_or_default(),
            marker,
            meta,
        }))
    }

    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError> {
        let mut inner = self.lock();
        let mut changed = 0;
        for &p in positions {
            let Some(e) =
                usize::try_from(p).ok().and_then(|p| inner.log.get_mut(p.wrapping_sub(1)))
            else {
                continue;
            };
            if e.event_type != SCAVENGED_EVENT {
                SCAVENGED_EVENT.clone_into(&mut e.event_type);
                e.data = crate::envelope::empty_object();
                e.metadata = crate::envelope::empty_object();
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError> {
        let inner = self.lock();
        let limit = limit.min(READ_LIMIT_MAX);
        let start = usize::try_from(from_position).unwrap_or(usize::MAX).min(inner.log.len());
        let mut events = Vec::new();
        let mut scanned_to = inner.log.len() as u64;
        for e in &inner.log[start..] {
            if events.len() == limit {
                break;
            }
            if filter.matches(e) {
                events.push(e.clone());
                if events.len() == limit {
                    scanned_to = e.position;
                }
            }
        }
        Ok(AllSlice {
            events,
            scanned_to: scanned_to.max(from_position.min(inner.log.len() as u64)),
        })
    }

    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError> {
        Ok(self.lock().streams.get(aggregate_id).map_or(0, |(_, idx)| idx.len() as u64))
    }

    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError> {
        let inner = self.lock();
        let mut stats: Vec<_> = inner
            .streams
            .iter()
            .map(|(id, (t, idx))| StreamStats {
                aggregate_id: id.clone(),
                aggregate_type: t.clone(),
                event_count: idx.len() as u64,
                latest_version: idx.len() as u64,
            })
            .collect();
        stats.sort_by(|a, b| {
            b.event_count.cmp(&a.event_count).then_with(|| a.aggregate_id.cmp(&b.aggregate_id))
        });
        stats.truncate(top);
        Ok(stats)
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotencyRecord>, ReadError> {
        Ok(Self::live_record(&mut self.lock(), key).cloned())
    }

    async fn record_refusal(
        &self,
        key: IdempotencyKey,
        aggregate_id: String,
        refusal: Refusal,
    ) -> Result<IdempotencyRecord, AppendError> {
        key.validate_key()?;
        let mut inner = self.lock();
        if let Some(record) = Self::live_record(&mut inner, &key.key) {
            return match record.clone() {
                r if r.key.fingerprint == key.fingerprint => Ok(r),
                r => Err(r.clash(&key)),
            };
        }
        let record =
            IdempotencyRecord { outcome: KeyOutcome::Refused { aggregate_id, refusal }, key };
        inner.idempotency.insert(record.key.key.clone(), record.clone());
        Ok(record)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn check_health(&self) -> Result<(), AppendError> {
        Ok(())
    }
}
