//! Stream lifecycle: soft delete, tombstone, truncation and retention **hide** events from
//! stream reads and aggregate loads; only a scavenge changes the log, and then only by
//! redacting events those rules hide. `$all` keeps every position, so no reader ever
//! skips one (the rules and what each reader sees: `docs/design/stream-lifecycle.md`).
//!
//! Where each piece lives:
//! - a soft delete or a tombstone is a marker event appended **to the stream itself**
//!   (`$streamDeleted`, `$streamTombstoned`), through the ordinary append path: it is
//!   ordered with the stream's appends and checked against their expected version in the
//!   same transaction, on every backend, without a second table;
//! - truncation and retention are the stream's metadata, the JSON of the last `$metadata`
//!   event of its metadata stream `$$<id>` (whose version is the metadata's version, for
//!   optimistic concurrency on it, as `KurrentDB`'s metastreams);
//! - which versions are visible is computed on read from both ([`Window`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::{AppendError, ReadError};
use crate::expected_version::ExpectedVersion;
use crate::store::{Append, AppendOutcome, Direction, EventStore, StreamRead, StreamSlice};
use crate::timestamp::Timestamp;

/// Marker of a soft delete: the stream reads as not found until its next append.
pub const STREAM_DELETED: &str = "$streamDeleted";
/// Marker of a tombstone: the stream is deleted for good.
pub const STREAM_TOMBSTONED: &str = "$streamTombstoned";
/// A stream's metadata, appended to its metadata stream.
pub const METADATA_EVENT: &str = "$metadata";
/// The aggregate type of every metadata stream.
pub const META_STREAM_TYPE: &str = "$stream";
/// What a scavenge leaves of an event it erased: its type becomes this, its data and
/// metadata `{}`; its id, stream, version, position and timestamp stay.
pub const SCAVENGED_EVENT: &str = "$scavenged";
/// Largest value of a metadata field (versions and counts are 64-bit signed in the
/// databases).
pub const META_VALUE_MAX: u64 = i64::MAX as u64;
/// Most positions one scavenge batch redacts (one transaction each).
pub const SCAVENGE_BATCH_EVENTS: usize = 1000;
/// Most pages a read skips when retention by age hides whole pages (each page holds at
/// most the read's limit): beyond that it answers an empty page with a next version.
const AGED_PAGES_MAX: usize = 16;

/// The metadata stream of `aggregate_id`.
#[must_use]
pub fn meta_stream(aggregate_id: &str) -> String {
    format!("$${aggregate_id}")
}

/// Whether `event_type` is one of Cairn's own (every such name starts with `$`, which a
/// client's names cannot).
#[must_use]
pub fn is_system_type(event_type: &str) -> bool {
    event_type.starts_with('$')
}

/// Per-stream retention and truncation, as set by `PUT /streams/{id}/metadata`. A field
/// left out is unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamMeta {
    /// Versions below it are hidden (`KurrentDB`'s `$tb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Only the last this many versions are visible (`$maxCount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Events older than this many seconds (by commit time) are hidden (`$maxAge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
}

impl StreamMeta {
    /// Checks the values: every one set is from 1 to [`META_VALUE_MAX`].
    pub fn validate(&self) -> Result<(), MetaError> {
        for (name, value) in [
            ("truncate_before", self.truncate_before),
            ("max_count", self.max_count),
            ("max_age_s", self.max_age_s),
        ] {
            if value.is_some_and(|v| v == 0 || v > META_VALUE_MAX) {
                return Err(MetaError::Invalid(format!(
                    "{name} must be from 1 to {META_VALUE_MAX}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the visible window moves with appends or with time (snapshots are then
    /// never used: they fold events that may have left the window).
    #[must_use]
    pub fn is_moving(&self) -> bool {
        self.max_count.is_some() || self.max_age_s.is_some()
    }
}

/// What a backend knows of one stream's head and lifecycle, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's aggregate type.
    pub aggregate_type: String,
    /// Its last version (markers count: they take a version).
    pub version: u64,
    /// Its last event's type (a marker there means deleted or tombstoned).
    pub last_event_type: String,
    /// The version of its last soft-delete or tombstone marker, if any.
    pub marker: Option<u64>,
    /// Its metadata stream's version and last `$metadata` data, if it has one.
    pub meta: Option<(u64, String)>,
}

/// Whether a stream is live, soft-deleted or tombstoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Life {
    /// Its events are readable (within its window).
    Live,
    /// Soft-deleted: reads as not found; the next append starts it again.
    Deleted,
    /// Deleted for good.
    Tombstoned,
}

impl Life {
    /// The life of a stream whose last event has type `last_event_type`.
    #[must_use]
    pub fn of(last_event_type: &str) -> Self {
        match last_event_type {
            STREAM_DELETED => Self::Deleted,
            STREAM_TOMBSTONED => Self::Tombstoned,
            _ => Self::Live,
        }
    }
}

impl StreamState {
    /// The stream's life.
    #[must_use]
    pub fn life(&self) -> Life {
        Life::of(&self.last_event_type)
    }

    /// The metadata in force (none when the metadata stream is absent or unreadable JSON:
    /// nothing hidden is safer than a guess) and its version (0 = never set).
    #[must_use]
    pub fn metadata(&self) -> (StreamMeta, u64) {
        match &self.meta {
            Some((version, data)) => (serde_json::from_str(data).unwrap_or_default(), *version),
            None => (StreamMeta::default(), 0),
        }
    }
}

/// The version an append's expected version is checked against, for a stream whose
/// last version is `version` and last event has type `last_event_type`: a soft-deleted
/// stream counts as absent (0); every append to a tombstoned one is refused. Every
/// backend decides with this, inside its append transaction.
pub fn effective_version(
    aggregate_id: &str,
    version: u64,
    last_event_type: &str,
) -> Result<u64, AppendError> {
    match Life::of(last_event_type) {
        Life::Live => Ok(version),
        Life::Deleted => Ok(0),
        Life::Tombstoned => {
            Err(AppendError::StreamTombstoned { aggregate_id: aggregate_id.to_owned() })
        }
    }
}

/// Which events of a stream are visible now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first version that can be visible.
    pub first_visible: u64,
    /// Events committed before this are hidden (retention by age).
    pub min_timestamp: Option<Timestamp>,
    /// Whether the window moves with appends or time (see [`StreamMeta::is_moving`]).
    pub moving: bool,
}

impl Window {
    /// The window of a stream at `version` with its last marker at `marker` and `meta`
    /// in force, at `now`.
    #[must_use]
    pub fn of(version: u64, marker: Option<u64>, meta: &StreamMeta, now: Timestamp) -> Self {
        let after_marker = marker.map_or(1, |m| m + 1);
        let by_count = meta.max_count.map_or(1, |c| version.saturating_sub(c) + 1);
        let first_visible =
            [1, after_marker, meta.truncate_before.unwrap_or(1), by_count].into_iter().max();
        let min_timestamp = meta.max_age_s.map(|s| {
            let age = i64::try_from(s.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
            Timestamp::from_micros(now.as_micros().saturating_sub(age))
        });
        Self { first_visible: first_visible.unwrap_or(1), min_timestamp, moving: meta.is_moving() }
    }

    /// Whether `e` (an event of this stream) is visible.
    #[must_use]
    pub fn shows(&self, e: &RecordedEvent) -> bool {
        e.version >= self.first_visible
            && !is_system_type(&e.event_type)
            && self.min_timestamp.is_none_or(|min| e.timestamp >= min)
    }
}

/// Why a delete or tombstone stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The stream has no events, or is soft-deleted already.
    #[error("stream not found")]
    StreamNotFound,
    /// The stream is tombstoned: deleted for good.
    #[error("stream {aggregate_id} is tombstoned")]
    StreamTombstoned {
        /// The stream.
        aggregate_id: String,
    },
    /// The stream was not at the expected version.
    #[error("wrong expected version: expected {expected}, the stream is at version {actual}")]
    WrongExpectedVersion {
        /// What the caller asked for.
        expected: ExpectedVersion,
        /// The stream's version (0 = absent or soft-deleted).
        actual: u64,
    },
    /// The store failed (it says how).
    #[error("{0}")]
    Store(String),
}

/// Why a metadata change stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The stream does not exist (truncation needs one).
    #[error("stream not found")]
    StreamNotFound,
    /// A tombstoned stream's metadata cannot change.
    #[error("stream {aggregate_id} is tombstoned")]
    StreamTombstoned {
        /// The stream.
        aggregate_id: String,
    },
    /// The metadata was not at the version the caller expected.
    #[error(
        "wrong expected metadata version: expected {expected}, the metadata is at version {actual}"
    )]
    WrongExpectedVersion {
        /// What the caller asked for.
        expected: u64,
        /// The metadata's version (0 = never set).
        actual: u64,
    },
    /// A value out of range.
    #[error("invalid metadata: {0}")]
    Invalid(String),
    /// The store failed (it says how).
    #[error("{0}")]
    Store(String),
}

/// Why a scavenge stopped (what it redacted before stays redacted; running it again goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScavengeError {
    /// Reading the log failed.
    #[error("scavenge could not read: {0}")]
    Read(ReadError),
    /// A redaction batch failed (nothing of that batch was changed).
    #[error("scavenge could not write: {0}")]
    Write(String),
}

/// What a scavenge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScavengeReport {
    /// Streams with a marker or metadata that were examined.
    pub streams: u64,
    /// Events redacted by this run.
    pub events_redacted: u64,
    /// The `$all` position the run examined up to.
    pub scanned_to: u64,
}

/// A stream's lifecycle as served by `GET /streams/{id}/metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamLifecycle {
    /// Retention and truncation in force.
    pub metadata: StreamMeta,
    /// The metadata's version (0 = never set): `expected_meta_version` of the next change.
    pub meta_version: u64,
    /// Whether the stream is live, soft-deleted or tombstoned.
    pub state: Life,
    /// The stream's last version (a deleted stream keeps counting: versions are never
    /// reused), 0 when it was never written.
    pub version: u64,
    /// The first version a read can return now.
    pub first_visible: u64,
}

/// [`EventStore::read_stream`]: a page of the visible events.
pub(crate) async fn read_visible<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
    read: StreamRead,
) -> Result<StreamSlice, ReadError> {
    if aggregate_id.starts_with("$$") {
        // A metadata stream is read as it is: its `$metadata` events are its history.
        return store.read_stream_raw(aggregate_id, read).await;
    }
    let state = store.stream_state(aggregate_id).await?.ok_or(ReadError::StreamNotFound)?;
    match state.life() {
        Life::Live => {}
        Life::Deleted => return Err(ReadError::StreamNotFound),
        Life::Tombstoned => return Err(ReadError::StreamTombstoned),
    }
    let (meta, _) = state.metadata();
    let window = Window::of(state.version, state.marker, &meta, Timestamp::now());
    let empty = |stream_version| StreamSlice {
        aggregate_type: state.aggregate_type.clone(),
        stream_version,
        first_visible: window.first_visible,
        moving: window.moving,
        scanned_version: None,
        events: Vec::new(),
    };
    let mut from = match read.direction {
        Direction::Forward => read.from_version.unwrap_or(1).max(window.first_visible),
        Direction::Backward => read.from_version.unwrap_or(state.version).min(state.version),
    };
    let mut pages = 0;
    loop {
        let outside = match read.direction {
            Direction::Forward => from > state.version,
            Direction::Backward => from < window.first_visible,
        };
        if outside {
            return Ok(empty(state.version));
        }
        let raw = StreamRead { from_version: Some(from), ..read };
        let mut slice = match store.read_stream_raw(aggregate_id, raw).await {
            Ok(slice) => slice,
            Err(ReadError::StreamNotFound) => return Ok(empty(state.version)),
            Err(e) => return Err(e),
        };
        let next = slice.next_version(read.direction);
        let scanned = slice.events.last().map(|e| e.version);
        // Markers and scavenged events are never shown, whatever the rules.
        slice.events.retain(|e| window.shows(e));
        if slice.events.last().map(|e| e.version) != scanned {
            slice.scanned_version = scanned;
        }
        slice.first_visible = window.first_visible;
        slice.moving = window.moving;
        pages += 1;
        match next {
            // Retention by age hid the whole page: look further, a bounded number of times.
            Some(n) if slice.events.is_empty() && pages < AGED_PAGES_MAX => from = n,
            _ => return Ok(slice),
        }
    }
}

/// [`EventStore::stream_lifecycle`].
pub(crate) async fn lifecycle<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
) -> Result<StreamLifecycle, ReadError> {
    let state = store.stream_state(aggregate_id).await?;
    let (metadata, meta_version, version, marker, life) = if let Some(s) = &state {
        let (meta, mv) = s.metadata();
        (meta, mv, s.version, s.marker, s.life())
    } else {
        // Metadata may be set before the stream's first event.
        let meta = read_meta(store, aggregate_id).await?;
        (meta.0, meta.1, 0, None, Life::Live)
    };
    let first_visible = Window::of(version, marker, &metadata, Timestamp::now()).first_visible;
    Ok(StreamLifecycle { metadata, meta_version, state: life, version, first_visible })
}

/// The metadata of a stream that may have no events: its metadata stream's last event.
async fn read_meta<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
) -> Result<(StreamMeta, u64), ReadError> {
    let last = StreamRead { from_version: None, direction: Direction::Backward, limit: 1 };
    match store.read_stream_raw(&meta_stream(aggregate_id), last).await {
        Ok(slice) => Ok((
            slice
                .events
                .first()
                .and_then(|e| serde_json::from_str(e.data.get()).ok())
                .unwrap_or_default(),
            slice.stream_version,
        )),
        Err(ReadError::StreamNotFound) => Ok((StreamMeta::default(), 0)),
        Err(e) => Err(e),
    }
}

/// [`EventStore::delete_stream`].
pub(crate) async fn delete<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
    expected: ExpectedVersion,
    tombstone: bool,
) -> Result<AppendOutcome, DeleteError> {
    let state = store
        .stream_state(aggregate_id)
        .await
        .map_err(|e| DeleteError::Store(e.to_string()))?
        .ok_or(DeleteError::StreamNotFound)?;
    match state.life() {
        Life::Tombstoned => {
            return Err(DeleteError::StreamTombstoned { aggregate_id: aggregate_id.to_owned() });
        }
        Life::Deleted if !tombstone => return Err(DeleteError::StreamNotFound),
        Life::Deleted | Life::Live => {}
    }
    // "Any" on a soft delete still needs the stream to exist when the marker lands: of two
    // deletes racing, the second is told the stream is gone.
    let checked = match expected {
        ExpectedVersion::Any if !tombstone => ExpectedVersion::StreamExists,
        other => other,
    };
    let marker = if tombstone { STREAM_TOMBSTONED } else { STREAM_DELETED };
    let append = Append {
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type: state.aggregate_type,
        expected: checked,
        events: vec![NewEvent::new(marker, empty_object())],
        idempotency: None,
    };
    store.append(append).await.map_err(|e| match e {
        AppendError::WrongExpectedVersion { actual: 0, .. } if expected == ExpectedVersion::Any => {
            DeleteError::StreamNotFound
        }
        AppendError::WrongExpectedVersion { actual, .. } => {
            DeleteError::WrongExpectedVersion { expected, actual }
        }
        AppendError::StreamTombstoned { aggregate_id } => {
            DeleteError::StreamTombstoned { aggregate_id }
        }
        other => DeleteError::Store(other.to_string()),
    })
}

/// [`EventStore::set_stream_meta`].
pub(crate) async fn set_meta<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
    expected_meta_version: Option<u64>,
    meta: StreamMeta,
) -> Result<u64, MetaError> {
    meta.validate()?;
    crate::id::validate_aggregate_id(aggregate_id)
        .map_err(|e| MetaError::Invalid(e.to_string()))?;
    let state =
        store.stream_state(aggregate_id).await.map_err(|e| MetaError::Store(e.to_string()))?;
    if state.as_ref().is_some_and(|s| s.life() == Life::Tombstoned) {
        return Err(MetaError::StreamTombstoned { aggregate_id: aggregate_id.to_owned() });
    }
    let data = serde_json::to_string(&meta).map_err(|e| MetaError::Invalid(e.to_string()))?;
    let data = RawValue::from_string(data).map_err(|e| MetaError::Invalid(e.to_string()))?;
    let append = Append {
        aggregate_id: meta_stream(aggregate_id),
        aggregate_type: META_STREAM_TYPE.to_owned(),
        expected: expected_meta_version.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
        events: vec![NewEvent::new(METADATA_EVENT, data)],
        idempotency: None,
    };
    match store.append(append).await {
        Ok(outcome) => Ok(outcome.last_version),
        Err(AppendError::WrongExpectedVersion { actual, .. }) => {
            Err(MetaError::WrongExpectedVersion {
                expected: expected_meta_version.unwrap_or(0),
                actual,
            })
        }
        Err(e) => Err(MetaError::Store(e.to_string())),
    }
}

/// [`EventStore::truncate_stream`]: sets `truncate_before`, keeping the rest, under the
/// metadata's optimistic concurrency (retried when another change got in first).
pub(crate) async fn truncate<S: EventStore + ?Sized>(
    store: &S,
    aggregate_id: &str,
    before: u64,
) -> Result<u64, MetaError> {
    for _ in 0..8 {
        let state =
            store.stream_state(aggregate_id).await.map_err(|e| MetaError::Store(e.to_string()))?;
        let Some(state) = state else { return Err(MetaError::StreamNotFound) };
        match state.life() {
            Life::Deleted => return Err(MetaError::StreamNotFound),
            Life::Tombstoned => {
                return Err(MetaError::StreamTombstoned { aggregate_id: aggregate_id.to_owned() });
            }
            Life::Live => {}
        }
        let (mut meta, version) = state.metadata();
        meta.truncate_before = Some(before);
        match set_meta(store, aggregate_id, Some(version), meta).await {
            Err(MetaError::WrongExpectedVersion { .. }) => {}
            other => return other,
        }
    }
    Err(MetaError::Store("the metadata kept changing under the truncation; try again".into()))
}

/// [`EventStore::scavenge`]: finds every stream with a marker or metadata (one pass over
/// `$all`, filtered to those events), then redacts each one's hidden events, in batches.
pub(crate) async fn scavenge<S: EventStore + ?Sized>(
    store: &S,
) -> Result<ScavengeReport, ScavengeError> {
    let filter = crate::store::AllFilter {
        event_types: vec![STREAM_DELETED.into(), STREAM_TOMBSTONED.into(), METADATA_EVENT.into()],
        aggregate_types: Vec::new(),
    };
    let mut report = ScavengeReport { scanned_to: *store.head().borrow(), ..Default::default() };
    let mut streams = std::collections::BTreeSet::new();
    let mut position = 0;
    while position < report.scanned_to {
        let page = store
            .read_all(position, crate::store::READ_LIMIT_MAX, &filter)
            .await
            .map_err(ScavengeError::Read)?;
        for e in page.events {
            let id = match e.aggregate_id.strip_prefix("$$") {
                Some(data_stream) => data_stream.to_owned(),
                None => e.aggregate_id,
            };
            streams.insert(id);
        }
        if page.scanned_to <= position {
            break;
        }
        position = page.scanned_to;
    }
    let now = Timestamp::now();
    for id in streams {
        let Some(state) = store.stream_state(&id).await.map_err(ScavengeError::Read)? else {
            continue;
        };
        report.streams += 1;
        let (meta, _) = state.metadata();
        let window = match state.life() {
            // Everything before the marker goes; the marker stays, saying what happened.
            Life::Deleted | Life::Tombstoned => {
                Window { first_visible: state.version + 1, min_timestamp: None, moving: false }
            }
            Life::Live => Window::of(state.version, state.marker, &meta, now),
        };
        let mut hidden = Vec::new();
        let mut from = 1;
        loop {
            let read = StreamRead::forward_from(from, crate::store::READ_LIMIT_MAX);
            let slice = match store.read_stream_raw(&id, read).await {
                Ok(slice) => slice,
                Err(ReadError::StreamNotFound) => break,
                Err(e) => return Err(ScavengeError::Read(e)),
            };
            let next = slice.next_version(Direction::Forward);
            for e in slice.events {
                if !window.shows(&e) && !is_system_type(&e.event_type) {
                    hidden.push(e.position);
                }
                if e.version >= window.first_visible && window.min_timestamp.is_none() {
                    break;
                }
            }
            match next {
                // Past the hidden prefix, only retention by age hides anything.
                Some(n) if n < window.first_visible || window.min_timestamp.is_some() => from = n,
                _ => break,
            }
        }
        for batch in hidden.chunks(SCAVENGE_BATCH_EVENTS) {
            report.events_redacted +=
                store.redact(batch).await.map_err(|e| ScavengeError::Write(e.to_string()))?;
        }
    }
    tracing::info!(
        streams = report.streams,
        redacted = report.events_redacted,
        scanned_to = report.scanned_to,
        "scavenge done"
    );
    Ok(report)
}

fn empty_object() -> Box<RawValue> {
    crate::envelope::empty_object()
}

/// The JSON a redacted event's data and metadata become.
pub const REDACTED_JSON: &str = "{}";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::MemoryEventStore;

    /// One step of a stream's life.
    #[derive(Debug, Clone)]
    enum Op {
        Append(u64),
        Delete,
        Truncate(u64),
        MaxCount(Option<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..4).prop_map(Op::Append),
            1 => Just(Op::Delete),
            1 => (1u64..20).prop_map(Op::Truncate),
            1 => proptest::option::of(1u64..5).prop_map(Op::MaxCount),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the sequence of appends, deletes, truncations and retention changes, a
        /// stream read shows exactly the versions the rule names: after the last delete,
        /// at or above `truncate_before`, among the last `max_count`, never a marker.
        #[test]
        fn a_read_shows_exactly_the_visible_versions(ops in proptest::collection::vec(op(), 1..25)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let store = MemoryEventStore::new();
                // The model: every version's kind, the last marker, the metadata.
                let (mut versions, mut marker, mut meta) = (Vec::<bool>::new(), 0u64, StreamMeta::default());
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            let events = (0..n).map(|_| NewEvent::new("Tick", crate::envelope::empty_object())).collect();
                            let append = Append { aggregate_id: "s".into(), aggregate_type: "T".into(), expected: ExpectedVersion::Any, events, idempotency: None };
                            store.append(append).await.unwrap();
                            versions.extend((0..n).map(|_| true));
                        }
                        Op::Delete => match store.delete_stream("s", ExpectedVersion::Any, false).await {
                            Ok(o) => { versions.push(false); marker = o.last_version; }
                            Err(DeleteError::StreamNotFound) => {
                                prop_assert!(versions.is_empty() || versions.last() == Some(&false));
                            }
                            Err(e) => panic!("{e}"),
                        },
                        Op::Truncate(t) => {
                            if store.truncate_stream("s", t).await.is_ok() { meta.truncate_before = Some(t); }
                        }
                        Op::MaxCount(c) => {
                            let next = StreamMeta { max_count: c, ..meta };
                            store.set_stream_meta("s", None, next).await.unwrap();
                            meta = next;
                        }
                    }
                }
                let version = versions.len() as u64;
                let expected: Vec<u64> = (1..=version)
                    .filter(|&v| versions[v as usize - 1] && v > marker)
                    .filter(|&v| v >= meta.truncate_before.unwrap_or(1))
                    .filter(|&v| meta.max_count.is_none_or(|c| v + c > version))
                    .collect();
                let shown = match store.read_stream("s", StreamRead::forward_from(1, 1000)).await {
                    Ok(slice) => slice.events.iter().map(|e| e.version).collect(),
                    Err(ReadError::StreamNotFound) => Vec::new(),
                    Err(e) => panic!("{e}"),
                };
                prop_assert_eq!(shown, expected);
                Ok(())
            })?;
        }
    }
}
