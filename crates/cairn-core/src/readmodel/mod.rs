//! The interface projections and process managers use to keep their state: tables of
//! JSON documents keyed by id, with a few declared indexed fields, changed only inside a
//! transaction that also moves the consumer's checkpoint.
//!
//! Written once against these traits, a projection runs on every backend; the domain
//! crate depends on no database driver. Documents are JSON *text*, so money keeps its
//! digits.
//!
//! The store is a handful of small traits, one per thing it keeps ([`Documents`],
//! [`Checkpoints`], [`DeadLetters`], [`Generations`], [`Leases`], [`SchemaStore`],
//! [`Tokens`]), so that
//! a backend is checked one concern at a time (`cairn-conformance`) and a caller can see
//! which concern it depends on. [`ReadModelStore`] is all of them at once: what the engine
//! holds as `Arc<dyn ReadModelStore>`. Calling a method through it needs its small trait
//! in scope (`use cairn_core::readmodel::*`).
//!
//! All of it is blocking by design: callers run it on blocking threads.

mod checkpoints;
mod dead_letters;
mod documents;
mod error;
mod fence;
mod generations;
mod leases;
pub mod memory;
mod schemas;
mod subject_keys;
mod tokens;
pub mod write_behind;

pub use checkpoints::Checkpoints;
pub use dead_letters::{DeadLetter, DeadLetterCursor, DeadLetters};
pub use documents::{DocTxn, DocTxnExt, Documents, ListQuery, TableSpec, TxnFn};
pub use error::ReadModelError;
pub use fence::{Fence, LeaseIssuer};
pub use generations::{Generations, REBUILD_SUFFIX};
pub use leases::{Leases, leadership_key};
pub use memory::MemoryReadModels;
pub use schemas::SchemaStore;
pub use subject_keys::{SUBJECT_KEY_LEN, SubjectKeys};
pub use tokens::{StoredToken, Tokens};

/// Where read models, checkpoints, dead letters and process-manager state live: every
/// small trait at once.
///
/// Implemented for anything that implements them all; a backend never implements it by
/// hand.
pub trait ReadModelStore:
    Documents
    + Checkpoints
    + DeadLetters
    + Generations
    + Leases
    + SchemaStore
    + Tokens
    + SubjectKeys
    + Send
    + Sync
    + 'static
{
}

impl<T> ReadModelStore for T where
    T: Documents
        + Checkpoints
        + DeadLetters
        + Generations
        + Leases
        + SchemaStore
        + Tokens
        + SubjectKeys
        + Send
        + Sync
        + 'static
        + ?Sized
{
}

/// Checks a table or field name against `[a-z0-9_]{1,64}` (they become SQL identifiers).
pub fn validate_identifier(name: &str) -> Result<(), ReadModelError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(()) } else { Err(ReadModelError::Unknown(format!("invalid identifier {name:?}"))) }
}
