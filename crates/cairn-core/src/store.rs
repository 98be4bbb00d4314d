//! The `EventStore` trait every backend implements, and the request/response types around it.

use std::collections::HashSet;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::{AppendError, ReadError};
use crate::expected_version::ExpectedVersion;
use crate::id::{validate_aggregate_id, validate_type_name};

/// Most events one append may carry.
pub const APPEND_EVENTS_MAX: usize = 1000;
/// Most events one read returns; larger limits are clamped to it.
pub const READ_LIMIT_MAX: usize = 10_000;

/// A batch of events for one stream, appended atomically or not at all.
#[derive(Debug, Clone)]
pub struct Append {
    /// The stream.
    pub aggregate_id: String,
    /// The stream's aggregate type (checked against the stream's fixed type).
    pub aggregate_type: String,
    /// The optimistic-concurrency condition.
    pub expected: ExpectedVersion,
    /// 1 to [`APPEND_EVENTS_MAX`] events.
    pub events: Vec<NewEvent>,
    /// A command's idempotency key, recorded with the events in the same transaction.
    /// An append whose key is already recorded stores nothing and fails with
    /// [`AppendError::IdempotencyKeyUsed`] carrying the first outcome.
    pub idempotency_key: Option<String>,
}

/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 256;

impl Append {
    /// Checks what can be checked without the store: names, size, distinct ids.
    pub fn validate(&self) -> Result<(), AppendError> {
        let invalid = |m: String| Err(AppendError::Invalid(m));
        validate_aggregate_id(&self.aggregate_id).or_else(|e| invalid(e.to_string()))?;
        validate_type_name("aggregate_type", &self.aggregate_type)
            .or_else(|e| invalid(e.to_string()))?;
        if self.events.is_empty() {
            return invalid("an append needs at least one event".into());
        }
        if self.events.len() > APPEND_EVENTS_MAX {
            return invalid(format!(
                "an append carries at most {APPEND_EVENTS_MAX} events, got {}",
                self.events.len()
            ));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_LEN)
        {
            return invalid(format!("an idempotency key has 1 to {IDEMPOTENCY_KEY_MAX_LEN} bytes"));
        }
        let mut seen = HashSet::with_capacity(self.events.len());
        for e in &self.events {
            validate_type_name("event_type", &e.event_type).or_else(|e| invalid(e.to_string()))?;
            if !seen.insert(e.event_id) {
                return invalid(format!("event id {} appears twice in one append", e.event_id));
            }
        }
        Ok(())
    }
}

/// What a successful append stored (or, for a retry, had stored the first time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// Version of the first event of the append.
    pub first_version: u64,
    /// Version of the last event: the stream's version right after the append.
    pub last_version: u64,
    /// `$all` position of the last event.
    pub position: u64,
    /// True when every event was already stored and nothing new was written.
    #[serde(skip)]
    pub deduplicated: bool,
}

/// Where a stored event sits, for recognising a retried append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLocation {
    /// The stream holding it.
    pub aggregate_id: String,
    /// Its version there.
    pub version: u64,
    /// Its `$all` position.
    pub position: u64,
    /// Its type, as stored.
    pub event_type: String,
    /// Its data, as stored (JSON text).
    pub data: String,
}

impl StoredLocation {
    /// Whether `event` is the stored event again: same type, same data as JSON (key order
    /// and whitespace aside). A retry resends what it sent; the same id with other
    /// content is a different event, and taking it for a retry would hide the change.
    fn holds(&self, event: &NewEvent) -> bool {
        if self.event_type != event.event_type {
            return false;
        }
        let sent = event.data.get();
        self.data == sent
            || matches!(
                (
                    serde_json::from_str::<serde_json::Value>(&self.data),
                    serde_json::from_str::<serde_json::Value>(sent),
                ),
                (Ok(stored), Ok(sent)) if stored == sent
            )
    }
}

/// Decides what an append whose first event id is already stored means.
///
/// The order of checks every backend follows: (0) idempotency key recorded →
/// [`AppendError::IdempotencyKeyUsed`]; (1) first id stored → this rule;
/// (2) expected version; (3) aggregate type; (4) any other id stored →
/// [`AppendError::DuplicateEventId`].
///
/// `found[i]` is where `append.events[i]` is stored, if it is. A retry is recognised only
/// when every event is stored, in this stream, at consecutive versions in request order,
/// with the type and data it carries now ([`AppendError::EventChanged`] otherwise);
/// anything else is a [`AppendError::DuplicateEventId`]. Shared by every backend so that
/// they agree on the rule.
pub fn recognise_retry(
    append: &Append,
    found: &[Option<StoredLocation>],
) -> Result<AppendOutcome, AppendError> {
    let mut prev: Option<&StoredLocation> = None;
    for (event, loc) in append.events.iter().zip(found) {
        let Some(loc) = loc else {
            return Err(AppendError::DuplicateEventId { event_id: append.events[0].event_id });
        };
        let in_sequence = loc.aggregate_id == append.aggregate_id
            && prev.is_none_or(|p| loc.version == p.version + 1);
        if !in_sequence {
            return Err(AppendError::DuplicateEventId { event_id: event.event_id });
        }
        if !loc.holds(event) {
            return Err(AppendError::EventChanged {
                event_id: event.event_id,
                aggregate_id: loc.aggregate_id.clone(),
                version: loc.version,
            });
        }
        prev = Some(loc);
    }
    let (first, last) = (found[0].as_ref(), found[found.len() - 1].as_ref());
    match (first, last) {
        (Some(first), Some(last)) => Ok(AppendOutcome {
            first_version: first.version,
            last_version: last.version,
            position: last.position,
            deduplicated: true,
        }),
        _ => Err(AppendError::DuplicateEventId { event_id: append.events[0].event_id }),
    }
}

/// Which way a stream read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Ascending versions.
    #[default]
    Forward,
    /// Descending versions.
    Backward,
}

/// A page request on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRead {
    /// First version to return; `None` = the start (forward) or the end (backward).
    pub from_version: Option<u64>,
    /// Which way to go.
    pub direction: Direction,
    /// Most events to return (clamped to [`READ_LIMIT_MAX`]).
    pub limit: usize,
}

impl StreamRead {
    /// Everything from the start, forward, up to the read limit.
    #[must_use]
    pub fn forward_from(from_version: u64, limit: usize) -> Self {
        Self { from_version: Some(from_version), direction: Direction::Forward, limit }
    }
}

/// A page of one stream, read in one consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    /// The stream's aggregate type.
    pub aggregate_type: String,
    /// The stream's version at the time of the read.
    pub stream_version: u64,
    /// The events, in the requested direction.
    pub events: Vec<RecordedEvent>,
}

impl StreamSlice {
    /// The version the next page starts at, or `None` when this page reached the end.
    #[must_use]
    pub fn next_version(&self, direction: Direction) -> Option<u64> {
        let last = self.events.last()?;
        match direction {
            Direction::Forward => (last.version < self.stream_version).then_some(last.version + 1),
            Direction::Backward => (last.version > 1).then_some(last.version - 1),
        }
    }
}

/// Which events a `$all` read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllFilter {
    /// Only these event types (empty = all).
    pub event_types: Vec<String>,
    /// Only these aggregate types (empty = all).
    pub aggregate_types: Vec<String>,
}

impl AllFilter {
    /// Whether the event passes the filter.
    #[must_use]
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
            && (self.aggregate_types.is_empty() || self.aggregate_types.contains(&e.aggregate_type))
    }

    /// True when nothing is filtered out.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.aggregate_types.is_empty()
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllSlice {
    /// Matching events with position > the requested one, ascending.
    pub events: Vec<RecordedEvent>,
    /// Every position up to here has been examined by this read (matched or not).
    ///
    /// Equal to the last event's position when the page is full; otherwise the reader's
    /// horizon, so a filtered reader moves past events it does not want.
    pub scanned_to: u64,
}

/// One row of the stream statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamStats {
    /// The stream.
    pub aggregate_id: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// How many events it holds (equal to its version: events are never deleted).
    pub event_count: u64,
    /// Its last event's version.
    pub latest_version: u64,
}

/// An append-only, per-stream versioned, globally ordered event store.
///
/// **Invariants** every implementation keeps (the conformance suite checks them):
/// events are never updated or deleted; versions count from 1 with no holes; an append
/// is atomic; positions increase in the order readers can see events, so a catch-up
/// reader never skips a committed event; event ids are unique, and a retried append is
/// answered with its original outcome, durably.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch to one stream under an expected-version condition.
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError>;

    /// Reads a page of one stream; [`ReadError::StreamNotFound`] when it has no events.
    async fn read_stream(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError>;

    /// Reads up to `limit` events of `$all` with position > `from_position`.
    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError>;

    /// The stream's current version, or 0 when it does not exist.
    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError>;

    /// The largest streams by event count.
    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError>;

    /// The first outcome recorded under an idempotency key: the stream and what was stored.
    async fn idempotent_result(
        &self,
        key: &str,
    ) -> Result<Option<(String, AppendOutcome)>, ReadError>;

    /// Watches the last position visible in `$all`; changes after every commit.
    fn head(&self) -> watch::Receiver<u64>;

    /// Checks the store can serve reads and writes (for readiness probes).
    async fn check_health(&self) -> Result<(), AppendError>;

    /// Finishes every append already accepted, then refuses new ones. Idempotent.
    async fn close(&self) {}

    /// Backend-specific figures for `/metrics` as `(name, value)` (e.g. group-commit totals).
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// Mints a time-ordered event id.
#[must_use]
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}
