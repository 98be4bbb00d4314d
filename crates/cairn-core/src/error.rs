//! One error enum per store operation; every variant says what the caller can do about it.

use thiserror::Error;
use uuid::Uuid;

use crate::expected_version::ExpectedVersion;

/// Why an append stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream was not at the version the writer expected; re-read and decide again.
    #[error("wrong expected version: expected {expected}, the stream is at version {actual}")]
    WrongExpectedVersion {
        /// What the append asked for.
        expected: ExpectedVersion,
        /// The stream's current version (0 = it does not exist).
        actual: u64,
    },
    /// The stream exists with another aggregate type; a stream's type is fixed for life.
    #[error("stream has aggregate type {actual:?}, append says {requested:?}")]
    AggregateTypeMismatch {
        /// The stream's type.
        actual: String,
        /// The type the append carried.
        requested: String,
    },
    /// An event id is already stored, but the request is not a retry of the append that stored it.
    #[error("event id {event_id} is already stored by a different append")]
    DuplicateEventId {
        /// The first clashing id.
        event_id: Uuid,
    },
    /// An event id is already stored, in this stream at this place, but with another type
    /// or other data: not a retry (a retry resends the same events), and not stored.
    #[error(
        "event {event_id} is already stored ({aggregate_id} v{version}) with another type or other data; a retry must resend the same event"
    )]
    EventChanged {
        /// The changed event.
        event_id: Uuid,
        /// Where the stored one is.
        aggregate_id: String,
        /// Its version there.
        version: u64,
    },
    /// The idempotency key was used before: nothing was stored, here is the first outcome
    /// under that key (its events, or its refusal).
    #[error("idempotency key already used")]
    IdempotencyKeyUsed {
        /// What the key holds.
        record: Box<crate::store::IdempotencyRecord>,
    },
    /// The idempotency key was used before for a different request (another fingerprint):
    /// nothing was stored; the client must pick a new key.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The stream is tombstoned: deleted for good, it takes no append ever again.
    #[error("stream {aggregate_id} is tombstoned: deleted for good")]
    StreamTombstoned {
        /// The stream.
        aggregate_id: String,
    },
    /// An event's data breaks its type's registered schema.
    #[error("event {index} ({event_type}) does not match schema version {schema_version}")]
    SchemaViolation {
        /// Index of the event in the append.
        index: usize,
        /// Its type.
        event_type: String,
        /// The schema version it was checked against.
        schema_version: u32,
        /// `(JSON pointer, message)` of each fault.
        errors: Vec<(String, String)>,
    },
    /// The append itself is malformed (empty, too large, repeated ids, bad names).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// A write failed to reach the disk earlier; the store refuses all writes until restarted.
    #[error("the store is poisoned by an earlier failed write and refuses appends; restart it")]
    Poisoned,
    /// The store is shutting down and takes no new appends.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The backend failed (I/O, connection). Nothing was acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Why a read returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream has no events.
    #[error("stream not found")]
    StreamNotFound,
    /// The stream is tombstoned: deleted for good.
    #[error("stream tombstoned")]
    StreamTombstoned,
    /// The request is malformed (e.g. a version of 0).
    #[error("invalid read: {0}")]
    Invalid(String),
    /// The backend failed (I/O, connection).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// `e` and its causes, `a: b: c`, each cause once: client libraries (tokio-postgres,
/// deadpool, async-nats) print only their own part ("error performing TLS handshake") and
/// keep the reason (an unknown issuer, a name mismatch) in the sources.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !message.contains(&part) {
            message.push_str(": ");
            message.push_str(&part);
        }
        source = cause.source();
    }
    message
}
