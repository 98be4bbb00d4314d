//! The `EventStore` trait every backend implements, and the request/response types around it.

use std::collections::HashSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::{AppendError, ReadError};
use crate::expected_version::ExpectedVersion;
use crate::id::{validate_aggregate_id, validate_type_name};
use crate::lifecycle::{
    self, DeleteError, MetaError, ScavengeError, ScavengeReport, StreamLifecycle, StreamMeta,
    StreamState,
};
use crate::timestamp::Timestamp;

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
    /// An append whose key is already recorded (and not expired) stores nothing and fails
    /// with [`AppendError::IdempotencyKeyUsed`] carrying the first outcome, or with
    /// [`AppendError::IdempotencyKeyReused`] when the recorded fingerprint differs.
    pub idempotency: Option<IdempotencyKey>,
}

/// A command's idempotency key as the store records it: the (already scoped) key, what
/// the request looked like, and until when the record counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The scoped key (1 to [`IDEMPOTENCY_KEY_MAX_LEN`] bytes).
    pub key: String,
    /// A digest of the request; the same key with another fingerprint is a different
    /// request, refused with [`AppendError::IdempotencyKeyReused`]. `None` for keys that
    /// name their command by construction (process managers').
    pub fingerprint: Option<String>,
    /// When the record stops counting: an expired record is treated as absent (and
    /// deleted by the next write that meets it). `None`: never.
    pub expires_at: Option<Timestamp>,
}

impl IdempotencyKey {
    /// A key without fingerprint that never expires.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self { key: key.into(), fingerprint: None, expires_at: None }
    }

    /// Checks the key's and fingerprint's lengths.
    pub fn validate_key(&self) -> Result<(), AppendError> {
        if self.key.is_empty() || self.key.len() > IDEMPOTENCY_KEY_MAX_LEN {
            return Err(AppendError::Invalid(format!(
                "an idempotency key has 1 to {IDEMPOTENCY_KEY_MAX_LEN} bytes"
            )));
        }
        if self.fingerprint.as_ref().is_some_and(|f| f.len() > IDEMPOTENCY_KEY_MAX_LEN) {
            return Err(AppendError::Invalid(format!(
                "an idempotency fingerprint has at most {IDEMPOTENCY_KEY_MAX_LEN} bytes"
            )));
        }
        Ok(())
    }
}

/// Why a keyed command was refused, as recorded: what every repeat of it is answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// A stable code (`rule_violation`, `not_found`, `already_exists`,
    /// `wrong_expected_version`).
    pub code: String,
    /// The human message the first refusal carried.
    pub message: String,
    /// Whatever else the refusal carried (e.g. `{"expected": 3, "actual": 4}`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// The first outcome of a keyed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Its events were appended.
    Appended {
        /// The stream they went to.
        aggregate_id: String,
        /// What was stored.
        outcome: AppendOutcome,
    },
    /// It was refused; nothing was appended.
    Refused {
        /// The aggregate it was refused on.
        aggregate_id: String,
        /// Why.
        refusal: Refusal,
    },
}

/// What the store keeps under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key, its fingerprint and expiry as first recorded.
    pub key: IdempotencyKey,
    /// The first outcome.
    pub outcome: KeyOutcome,
}

impl IdempotencyRecord {
    /// Whether the record no longer counts at `now`.
    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.key.expires_at.is_some_and(|at| at <= now)
    }

    /// The error a keyed write meeting this record gets: the first outcome, or
    /// [`AppendError::IdempotencyKeyReused`] when the request's fingerprint differs.
    #[must_use]
    pub fn clash(self, with: &IdempotencyKey) -> AppendError {
        if self.key.fingerprint == with.fingerprint {
            AppendError::IdempotencyKeyUsed { record: Box::new(self) }
        } else {
            AppendError::IdempotencyKeyReused { key: self.key.key }
        }
    }

    /// A column-friendly form of the outcome: `(aggregate_id, first_version, last_version,
    /// position, refusal as JSON text)`; versions and position are 0 for a refusal.
    #[must_use]
    pub fn columns(&self) -> (&str, u64, u64, u64, Option<String>) {
        match &self.outcome {
            KeyOutcome::Appended { aggregate_id, outcome } => {
                (aggregate_id, outcome.first_version, outcome.last_version, outcome.position, None)
            }
            KeyOutcome::Refused { aggregate_id, refusal } => (
                aggregate_id,
                0,
                0,
                0,
                Some(serde_json::to_string(refusal).unwrap_or_else(|_| "{}".to_owned())),
            ),
        }
    }

    /// Rebuilds a record from its columns (the inverse of [`Self::columns`]). A refusal
    /// whose JSON cannot be read (never written by Cairn) is kept as an opaque refusal.
    #[must_use]
    pub fn from_columns(
        key: IdempotencyKey,
        aggregate_id: String,
        (first_version, last_version, position): (u64, u64, u64),
        refusal: Option<&str>,
    ) -> Self {
        let outcome = match refusal {
            None => KeyOutcome::Appended {
                aggregate_id,
                outcome: AppendOutcome {
                    first_version,
                    last_version,
                    position,
                    deduplicated: true,
                },
            },
            Some(json) => KeyOutcome::Refused {
                aggregate_id,
                refusal: serde_json::from_str(json).unwrap_or_else(|_| Refusal {
                    code: "refused".to_owned(),
                    message: json.to_owned(),
                    details: serde_json::Value::Null,
                }),
            },
        };
        Self { key, outcome }
    }
}

/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 256;

impl Append {
    /// Checks what can be checked without the store: names, size, distinct ids.
    pub fn validate(&self) -> Result<(), AppendError> {
        let invalid = |m: String| Err(AppendError::Invalid(m));
        let meta_stream = self.aggregate_id.strip_prefix("$$");
        validate_aggregate_id(meta_stream.unwrap_or(&self.aggregate_id))
            .or_else(|e| invalid(e.to_string()))?;
        if meta_stream.is_some() != (self.aggregate_type == lifecycle::META_STREAM_TYPE) {
            return invalid(format!(
                "the aggregate type {:?} is for metadata streams ($$<id>) and only for them",
                lifecycle::META_STREAM_TYPE
            ));
        }
        if meta_stream.is_none() {
            validate_type_name("aggregate_type", &self.aggregate_type)
                .or_else(|e| invalid(e.to_string()))?;
        }
        if self.events.is_empty() {
            return invalid("an append needs at least one event".into());
        }
        if self.events.len() > APPEND_EVENTS_MAX {
            return invalid(format!(
                "an append carries at most {APPEND_EVENTS_MAX} events, got {}",
                self.events.len()
            ));
        }
        if let Some(key) = &self.idempotency {
            key.validate_key()?;
        }
        let mut seen = HashSet::with_capacity(self.events.len());
        // Cairn's own event types: markers and erased events in a stream, `$metadata` alone
        // in a metadata stream (an import replays them as they were exported).
        for e in &self.events {
            let allowed = match (meta_stream.is_some(), e.event_type.as_str()) {
                (true, t) => t == lifecycle::METADATA_EVENT,
                (
                    false,
                    lifecycle::STREAM_DELETED
                    | lifecycle::STREAM_TOMBSTONED
                    | lifecycle::SCAVENGED_EVENT,
                ) => true,
                (false, t) => !lifecycle::is_system_type(t),
            };
            if !allowed {
                return invalid(format!(
                    "event type {:?} cannot be appended here: names starting with $ are Cairn's own ($streamDeleted, $streamTombstoned and $scavenged in a stream, $metadata only in a metadata stream $$<id>)",
                    e.event_type
                ));
            }
        }
        for e in self.events.iter().filter(|e| !lifecycle::is_system_type(&e.event_type)) {
            validate_type_name("event_type", &e.event_type).or_else(|e| invalid(e.to_string()))?;
        }
        for e in &self.events {
            if !seen.insert(e.event_id) {
                return invalid(format!("event id {} appears twice in one append", e.event_id));
            }
        }
        Ok(())
    }
}

impl Append {
    /// [`Append::validate`], and, for a metadata stream, metadata that Cairn can read: what a
    /// client's append must pass. (A client may append Cairn's own events: an import
    /// replays an export's markers, metadata and erased events as they were.)
    pub fn validate_client(&self) -> Result<(), AppendError> {
        self.validate()?;
        for e in self.events.iter().filter(|e| e.event_type == lifecycle::METADATA_EVENT) {
            let meta: StreamMeta = serde_json::from_str(e.data.get()).map_err(|err| {
                AppendError::Invalid(format!("$metadata must be stream metadata: {err}"))
            })?;
            meta.validate().map_err(|err| AppendError::Invalid(err.to_string()))?;
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
        // A scavenge erased what it held: the id is all that is left to recognise it by.
        if self.event_type == lifecycle::SCAVENGED_EVENT {
            return true;
        }
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
/// The order of checks every backend follows: (0) idempotency key recorded and not
/// expired → [`AppendError::IdempotencyKeyUsed`] (or [`AppendError::IdempotencyKeyReused`]
/// when its fingerprint differs); (1) first id stored → this rule;
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
    /// The first version a read can return (1 unless truncation, retention or a soft
    /// delete hides the versions before it).
    pub first_visible: u64,
    /// Whether the visible window moves with appends or time (retention by count or age).
    pub moving: bool,
    /// The last version this page examined, when hidden events (deleted, truncated,
    /// expired, scavenged) were left out after the last one returned; `None`: the last
    /// event's version. The next page starts after it.
    pub scanned_version: Option<u64>,
    /// The events, in the requested direction.
    pub events: Vec<RecordedEvent>,
}

impl StreamSlice {
    /// The version the next page starts at, or `None` when this page reached the end.
    #[must_use]
    pub fn next_version(&self, direction: Direction) -> Option<u64> {
        let last = self.scanned_version.or_else(|| self.events.last().map(|e| e.version))?;
        match direction {
            Direction::Forward => (last < self.stream_version).then_some(last + 1),
            Direction::Backward => (last > self.first_visible.max(1)).then_some(last - 1),
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
/// events are never updated or deleted, except that a scavenge redacts events the
/// lifecycle rules hide (their position, id, stream and version stay); versions count
/// from 1 with no holes; an append
/// is atomic; positions increase in the order readers can see events, so a catch-up
/// reader never skips a committed event; event ids are unique, and a retried append is
/// answered with its original outcome, durably.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch to one stream under an expected-version condition.
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError>;

    /// Reads a page of one stream's visible events; [`ReadError::StreamNotFound`] when it
    /// has no events or is soft-deleted, [`ReadError::StreamTombstoned`] when tombstoned.
    /// Pages start at the first visible version ([`crate::lifecycle`]).
    async fn read_stream(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError> {
        lifecycle::read_visible(self, aggregate_id, read).await
    }

    /// Reads a page of one stream as stored, hidden events and markers included (what
    /// [`EventStore::read_stream`] filters); [`ReadError::StreamNotFound`] when it has no
    /// events. The backend's part of a read.
    async fn read_stream_raw(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError>;

    /// The stream's head, last marker and metadata, read in one snapshot; `None` when it
    /// has no events.
    async fn stream_state(&self, aggregate_id: &str) -> Result<Option<StreamState>, ReadError>;

    /// Rewrites the events at `positions` as [`lifecycle::SCAVENGED_EVENT`] with `{}` data
    /// and metadata, in one transaction; returns how many changed (an event already
    /// redacted is not counted). Only [`EventStore::scavenge`] calls it.
    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError>;

    /// The stream's metadata, its version, its life and its visible window.
    async fn stream_lifecycle(&self, aggregate_id: &str) -> Result<StreamLifecycle, ReadError> {
        lifecycle::lifecycle(self, aggregate_id).await
    }

    /// Soft-deletes (`tombstone` false) or tombstones the stream under `expected`: appends
    /// its marker, which hides every earlier version.
    async fn delete_stream(
        &self,
        aggregate_id: &str,
        expected: ExpectedVersion,
        tombstone: bool,
    ) -> Result<AppendOutcome, DeleteError> {
        lifecycle::delete(self, aggregate_id, expected, tombstone).await
    }

    /// Replaces the stream's metadata if it is at `expected_meta_version` (`None`: any);
    /// returns the new metadata version.
    async fn set_stream_meta(
        &self,
        aggregate_id: &str,
        expected_meta_version: Option<u64>,
        meta: StreamMeta,
    ) -> Result<u64, MetaError> {
        lifecycle::set_meta(self, aggregate_id, expected_meta_version, meta).await
    }

    /// Hides the stream's versions below `before`; returns the new metadata version.
    async fn truncate_stream(&self, aggregate_id: &str, before: u64) -> Result<u64, MetaError> {
        lifecycle::truncate(self, aggregate_id, before).await
    }

    /// Redacts every event the lifecycle rules hide now.
    async fn scavenge(&self) -> Result<ScavengeReport, ScavengeError> {
        lifecycle::scavenge(self).await
    }

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

    /// The record under an idempotency key, unless there is none or it expired.
    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotencyRecord>, ReadError>;

    /// Records that the keyed command `key` was refused on `aggregate_id`, unless the key
    /// already holds a (live) record: insert-if-absent, serialised with keyed appends.
    /// Returns the record that is first — this refusal, or whatever was there before
    /// (maybe an `Appended` one). A record with another fingerprint is
    /// [`AppendError::IdempotencyKeyReused`].
    async fn record_refusal(
        &self,
        key: IdempotencyKey,
        aggregate_id: String,
        refusal: Refusal,
    ) -> Result<IdempotencyRecord, AppendError>;

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
