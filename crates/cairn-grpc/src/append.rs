//! Appends from the protocol (`Append`, `BatchAppend`, metadata writes to `$$stream`),
//! through the same checks as HTTP's raw append: the caller's role and prefixes, a
//! module's streams the admin's, schema versions, the aggregate's own decoding.

use std::collections::{BTreeSet, HashMap};

use cairn_core::lifecycle::{Life, META_STREAM_TYPE, METADATA_EVENT};
use cairn_core::store::APPEND_EVENTS_MAX;
use cairn_core::{Append, AppendError, ExpectedVersion, NewEvent};
use cairn_server::AppState;
use cairn_server::auth::Caller;
use cairn_server::streams::EventBody;
use serde_json::value::RawValue;
use tonic::Status;
use uuid::Uuid;

use crate::convert::{self, JSON_CONTENT_TYPE, StreamName};
use crate::{auth, metastream, status};

/// The aggregate type of a stream created over gRPC whose event types no module
/// registered: the protocol has no types, and a stream's name is not one (`order-1` is
/// not of type `order`).
pub const UNTYPED: &str = "untyped";

/// One event as the client proposed it, its content type checked.
#[derive(Debug)]
pub struct Proposed {
    id: Option<Uuid>,
    event_type: String,
    data: Vec<u8>,
    custom_metadata: Vec<u8>,
}

impl Proposed {
    /// The event of a proposed message: a type, JSON content.
    pub fn new(
        index: usize,
        id: Option<&crate::proto::event_store::client::Uuid>,
        metadata: &HashMap<String, String>,
        custom_metadata: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<Self, Status> {
        let event_type = metadata.get("type").cloned().unwrap_or_default();
        if event_type.is_empty() {
            return Err(Status::invalid_argument(format!("event {index} has no type")));
        }
        match metadata.get("content-type").map(String::as_str) {
            None | Some(JSON_CONTENT_TYPE) => {}
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "event {index} ({event_type}) has content-type {other:?}: Cairn stores JSON \
                     events only (content-type application/json; docs/grpc.md)"
                )));
            }
        }
        Ok(Self { id: convert::event_id(id)?, event_type, data, custom_metadata })
    }

    fn size(&self) -> usize {
        self.data.len() + self.custom_metadata.len() + self.event_type.len()
    }

    fn data(&self, index: usize) -> Result<Box<RawValue>, Status> {
        let text = String::from_utf8(self.data.clone()).map_err(|_| {
            Status::invalid_argument(format!("event {index}: data is not UTF-8 JSON"))
        })?;
        RawValue::from_string(text).map_err(|e| {
            Status::invalid_argument(format!(
                "event {index} ({}): data is not JSON: {e}",
                self.event_type
            ))
        })
    }
}

/// The events of one append, bounded as an HTTP append's body is.
#[derive(Debug)]
pub struct Batch {
    events: Vec<Proposed>,
    bytes: usize,
    bytes_max: usize,
}

impl Batch {
    /// An empty batch of at most `bytes_max` bytes of data, metadata and types.
    pub fn new(bytes_max: usize) -> Self {
        Self { events: Vec::new(), bytes: 0, bytes_max }
    }

    /// Adds an event; refused past [`APPEND_EVENTS_MAX`] events or the byte limit.
    pub fn push(&mut self, event: Proposed) -> Result<(), Status> {
        if self.events.len() >= APPEND_EVENTS_MAX {
            return Err(Status::invalid_argument(format!(
                "an append carries at most {APPEND_EVENTS_MAX} events"
            )));
        }
        self.bytes += event.size();
        if self.bytes > self.bytes_max {
            let mut status = Status::invalid_argument(format!(
                "an append carries at most {} bytes of events (cairn serve --body-limit-bytes)",
                self.bytes_max
            ));
            status
                .metadata_mut()
                .insert("exception", "maximum-append-size-exceeded".parse().expect("ascii"));
            if let Ok(value) = self.bytes_max.to_string().parse() {
                status.metadata_mut().insert("maximum-append-size", value);
            }
            return Err(status);
        }
        self.events.push(event);
        Ok(())
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What an append came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (or an idempotent retry): the stream's last version and that event's
    /// position (`None` for an empty append, which stores nothing).
    Done { version: u64, position: Option<u64> },
    /// The stream was not at the expected version.
    WrongVersion { expected: ExpectedVersion, actual: u64 },
}

/// Appends `batch` to `stream` under `expected`.
pub async fn append(
    state: &AppState,
    caller: Option<&Caller>,
    stream: &StreamName,
    expected: ExpectedVersion,
    batch: Batch,
) -> Result<Appended, Status> {
    match stream {
        StreamName::Stream(id) => append_events(state, caller, id, expected, batch).await,
        StreamName::Meta(id) => write_metadata(state, caller, id, expected, batch).await,
    }
}

async fn append_events(
    state: &AppState,
    caller: Option<&Caller>,
    id: &str,
    expected: ExpectedVersion,
    batch: Batch,
) -> Result<Appended, Status> {
    auth::check_stream(state, caller, id, None)?;
    if batch.is_empty() {
        let current = state.store.stream_state(id).await.map_err(status::from)?;
        return empty_append(id, expected, current.as_ref());
    }
    // The type is guessed from the events (a module's, or untyped) rather than read
    // first: the store refuses a wrong guess atomically, naming the stream's type, and
    // the append is prepared again with it — one read less on every append.
    let attempt = async |aggregate_type: &str| {
        let events = bodies(&batch, aggregate_type)?;
        let request =
            cairn_server::streams::prepare_append(state, caller, id.to_owned(), expected, events)
                .map_err(|e| status::from_api(&e))?;
        Ok::<_, Status>(store(state, request).await)
    };
    match attempt(&module_type(state, &batch)?).await? {
        Err(Stored::TypeMismatch(actual)) => attempt(&actual).await?.map_err(Stored::into_status),
        other => other.map_err(Stored::into_status),
    }
}

/// The batch as HTTP's append events of `aggregate_type`.
fn bodies(batch: &Batch, aggregate_type: &str) -> Result<Vec<EventBody>, Status> {
    let mut events = Vec::with_capacity(batch.len());
    for (index, event) in batch.events.iter().enumerate() {
        events.push(EventBody {
            event_id: event.id,
            aggregate_type: aggregate_type.to_owned(),
            data: event.data(index)?,
            metadata: convert::metadata_in(index, &event.custom_metadata)?,
            event_type: event.event_type.clone(),
        });
    }
    Ok(events)
}

/// The aggregate type of a new stream: that of the module whose aggregate declares the
/// events' types, or [`UNTYPED`] when none does.
fn module_type(state: &AppState, batch: &Batch) -> Result<String, Status> {
    let owners: BTreeSet<&str> = batch
        .events
        .iter()
        .flat_map(|e| {
            state
                .aggregates
                .values()
                .filter(|k| k.event_types().contains(&e.event_type.as_str()))
                .map(cairn_cqrs::AggregateKind::type_name)
        })
        .collect();
    match owners.len() {
        0 => Ok(UNTYPED.to_owned()),
        1 => Ok(owners.into_iter().next().unwrap_or(UNTYPED).to_owned()),
        _ => Err(Status::invalid_argument(format!(
            "the events' types belong to different aggregates ({}): one stream has one type",
            owners.into_iter().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// An append of no events stores nothing but still answers for the expected version.
fn empty_append(
    id: &str,
    expected: ExpectedVersion,
    current: Option<&cairn_core::lifecycle::StreamState>,
) -> Result<Appended, Status> {
    let version = match current {
        None => 0,
        Some(s) if s.life() == Life::Tombstoned => return Err(status::stream_deleted(id)),
        Some(s) if s.life() == Life::Deleted => 0,
        Some(s) => s.version,
    };
    if expected.is_satisfied_by(version) {
        Ok(Appended::Done { version, position: None })
    } else {
        Ok(Appended::WrongVersion { expected, actual: version })
    }
}

/// A write to `$$id`: one `$metadata` event in the protocol's form, stored as Cairn's
/// metadata (so the lifecycle rules apply it) under the metadata stream's own version.
async fn write_metadata(
    state: &AppState,
    caller: Option<&Caller>,
    id: &str,
    expected: ExpectedVersion,
    batch: Batch,
) -> Result<Appended, Status> {
    let current = state.store.stream_state(id).await.map_err(status::from)?;
    if current.as_ref().is_some_and(|s| s.life() == Life::Tombstoned) {
        return Err(status::stream_deleted(id));
    }
    auth::check_stream(state, caller, id, current.as_ref().map(|s| s.aggregate_type.as_str()))?;
    let mut events = batch.events.into_iter();
    let (Some(event), None) = (events.next(), events.next()) else {
        return Err(Status::invalid_argument(format!(
            "a write to $${id} carries exactly one {METADATA_EVENT} event"
        )));
    };
    if event.event_type != METADATA_EVENT {
        return Err(Status::invalid_argument(format!(
            "$${id} holds only {METADATA_EVENT} events, got {:?}",
            event.event_type
        )));
    }
    let meta = metastream::from_protocol(&event.data)?;
    let data = serde_json::value::to_raw_value(&meta)
        .map_err(|e| Status::internal(format!("metadata: {e}")))?;
    let request = Append {
        aggregate_id: cairn_core::lifecycle::meta_stream(id),
        aggregate_type: META_STREAM_TYPE.to_owned(),
        expected,
        events: vec![NewEvent {
            event_id: event.id.unwrap_or_else(cairn_core::store::new_event_id),
            event_type: METADATA_EVENT.to_owned(),
            data,
            metadata: convert::metadata_in(0, &event.custom_metadata)?
                .unwrap_or_else(cairn_core::envelope::empty_object),
        }],
        idempotency: None,
    };
    store(state, request).await.map_err(Stored::into_status)
}

/// Why a store append did not answer.
enum Stored {
    /// The stream has this other aggregate type.
    TypeMismatch(String),
    /// Any other refusal, as the client gets it.
    Refused(Status),
}

impl Stored {
    fn into_status(self) -> Status {
        match self {
            Self::TypeMismatch(actual) => Status::failed_precondition(format!(
                "the stream has aggregate type {actual:?}, which changed during the append"
            )),
            Self::Refused(status) => status,
        }
    }
}

async fn store(state: &AppState, request: Append) -> Result<Appended, Stored> {
    let (id, aggregate_type) = (request.aggregate_id.clone(), request.aggregate_type.clone());
    match state.store.append(request).await {
        Ok(outcome) => {
            cairn_server::streams::after_append(state, &aggregate_type, &id, &outcome);
            Ok(Appended::Done { version: outcome.last_version, position: Some(outcome.position) })
        }
        Err(AppendError::WrongExpectedVersion { expected, actual }) => {
            Ok(Appended::WrongVersion { expected, actual })
        }
        Err(AppendError::AggregateTypeMismatch { actual, .. }) => Err(Stored::TypeMismatch(actual)),
        Err(AppendError::StreamTombstoned { .. }) => {
            Err(Stored::Refused(status::stream_deleted(&id)))
        }
        Err(e) => Err(Stored::Refused(status::from(e))),
    }
}
