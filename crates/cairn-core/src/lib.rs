//! The kernel of Cairn: what an event is, what a store promises, and nothing that does I/O.
//!
//! Backends (`cairn-sqlite`, later `cairn-postgres`) implement [`EventStore`]; the server,
//! the domain and the projection engine only ever see this crate's types.

pub mod append_budget;
pub mod envelope;
pub mod error;
pub mod expected_version;
pub mod id;
pub mod lifecycle;
pub mod memory;
pub mod readmodel;
pub mod snapshot;
pub mod store;
pub mod subscription;
pub mod tail_cache;
pub mod timestamp;
pub mod whole;

pub use envelope::{NewEvent, RecordedEvent};
pub use error::{AppendError, ReadError};
pub use expected_version::ExpectedVersion;
pub use memory::MemoryEventStore;
pub use store::{
    AllFilter, AllSlice, Append, AppendOutcome, Direction, EventStore, IdempotencyKey,
    IdempotencyRecord, KeyOutcome, Refusal, StreamRead, StreamSlice, StreamStats,
};
pub use subscription::subscribe_all;
