//! Why a read-model operation failed.

use thiserror::Error;

/// Why a read-model operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The backend failed (I/O, connection).
    #[error("read model storage failed: {0}")]
    Storage(String),
    /// A stored document does not match the type it is read as.
    #[error("read model document is not valid: {0}")]
    Decode(String),
    /// A projection or process-manager handler refused the event.
    #[error("handler failed: {0}")]
    Handler(String),
    /// A table or field that was never declared.
    #[error("unknown table or field: {0}")]
    Unknown(String),
    /// This process no longer leads the consumer (another may): nothing was written.
    #[error("this process does not lead {0}")]
    NotLeader(String),
    /// The write carried the fence of a leadership term that is over (another term of
    /// the consumer began since): nothing was written.
    #[error("{consumer}: fence of term {epoch} is stale (the current term is {current})")]
    Fenced {
        /// The consumer.
        consumer: String,
        /// The term the write was made in.
        epoch: u64,
        /// The store's current term (0: none recorded).
        current: u64,
    },
    /// The dead letter is not there any more (resolved by another call): nothing was written.
    #[error("dead letter {0} not found")]
    NoSuchDeadLetter(i64),
    /// The backend refused a value or document (not a failure of the backend: trying again
    /// fails again), e.g. text PostgreSQL cannot index.
    #[error("read model storage refused the data: {0}")]
    Rejected(String),
}

impl ReadModelError {
    /// Whether the failure is the storage's or the engine's (retried, with leadership
    /// re-checked), not the event's: a handler's refusal or a bad document is the event's.
    #[must_use]
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Storage(_) | Self::NotLeader(_) | Self::Fenced { .. } | Self::NoSuchDeadLetter(_)
        )
    }

    /// Whether the write was refused because this process no longer leads the consumer
    /// (or leads it in a newer term than the writer's): the writer must stop, not retry.
    #[must_use]
    pub fn is_deposed(&self) -> bool {
        matches!(self, Self::NotLeader(_) | Self::Fenced { .. })
    }
}
