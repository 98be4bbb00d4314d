//! The event envelope: what a writer hands the store, and what every reader gets back.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::timestamp::Timestamp;

/// An event about to be appended. The store adds stream, version, position and timestamp.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Unique id; a retried append with the same ids is recognised as a retry.
    pub event_id: Uuid,
    /// Past-tense name of what happened, e.g. `OrderCreated`.
    pub event_type: String,
    /// The payload, kept byte for byte as given (numbers keep their exact digits).
    pub data: Box<RawValue>,
    /// A JSON object: correlation/causation ids, user, schema version.
    pub metadata: Box<RawValue>,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id and empty metadata.
    #[must_use]
    pub fn new(event_type: impl Into<String>, data: Box<RawValue>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            data,
            metadata: empty_object(),
        }
    }
}

/// `{}` as a raw JSON value.
#[must_use]
pub fn empty_object() -> Box<RawValue> {
    serde_json::value::to_raw_value(&serde_json::Map::new()).unwrap_or_default()
}

/// A stored event, exactly as the contract's §1 shapes it on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Event))]
pub struct RecordedEvent {
    /// The id given at append time.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub event_id: Uuid,
    /// The stream (one aggregate instance) the event belongs to.
    pub aggregate_id: String,
    /// The stream's aggregate type, fixed for the stream's life.
    pub aggregate_type: String,
    /// Past-tense name of what happened.
    pub event_type: String,
    /// 1-based, gap-free index within the stream.
    pub version: u64,
    /// Global (`$all`) order; strictly increasing in the order readers see events.
    pub position: u64,
    /// When the store committed it (RFC 3339 UTC with microseconds); never decreases
    /// along `$all`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: Timestamp,
    /// The payload as stored.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Box<RawValue>,
    /// The metadata object as stored (`correlation_id`, `causation_id`, `user_id`,
    /// `schema_version`, ...).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Box<RawValue>,
}

impl PartialEq for RecordedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.aggregate_id == other.aggregate_id
            && self.aggregate_type == other.aggregate_type
            && self.event_type == other.event_type
            && self.version == other.version
            && self.position == other.position
            && self.timestamp == other.timestamp
            && self.data.get() == other.data.get()
            && self.metadata.get() == other.metadata.get()
    }
}

impl Eq for RecordedEvent {}
