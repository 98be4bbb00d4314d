//! Why handling failed, and why an operator's command did nothing.

/// Why handling failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The consumer's own storage failed: retried until it works (the consumer stalls).
    #[error("{0}")]
    Transient(String),
    /// The handler refused an event: retried a few times, then dead-lettered.
    #[error("{0}")]
    Event(String),
    /// The write was refused because its fence is not the consumer's current term: this
    /// process was deposed. Never retried under the same fence; the runner goes back to
    /// following.
    #[error("{0}")]
    Deposed(String),
}

impl HandleError {
    /// The failure of a read-model write, by what it means to the runner.
    #[must_use]
    pub fn of_write(e: &cairn_core::readmodel::ReadModelError) -> Self {
        if e.is_deposed() { Self::Deposed(e.to_string()) } else { Self::Transient(e.to_string()) }
    }
}

/// Why a command on a consumer (pause, resume, rebuild, a dead-letter retry or discard)
/// did nothing. One type for every command, so that one condition has one name whatever
/// the endpoint (the server maps each variant to HTTP in one place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another process runs the consumer: the request must go there.
    #[error(
        "{consumer} runs on another cairn process sharing this database; send this request to that process"
    )]
    NotLeader {
        /// The consumer.
        consumer: String,
    },
    /// A rebuild is already under way.
    #[error("{consumer} is already rebuilding")]
    Rebuilding {
        /// The consumer.
        consumer: String,
    },
    /// Dead letters wait: a rebuild would skip or repeat their events.
    #[error("{consumer} has dead letters: retry or discard them first")]
    HasDeadLetters {
        /// The consumer.
        consumer: String,
    },
    /// Paused by an operator: a rebuild's swap needs a consumer that moves.
    #[error("{consumer} is paused: resume it before rebuilding it")]
    Paused {
        /// The consumer.
        consumer: String,
    },
    /// Its storage keeps failing.
    #[error("{consumer} is stalled: its storage keeps failing")]
    Stalled {
        /// The consumer.
        consumer: String,
    },
    /// Stopped for good.
    #[error("{consumer} is failed: restart it before rebuilding it")]
    Failed {
        /// The consumer.
        consumer: String,
    },
    /// A process manager is never re-run: its side effects must happen once.
    #[error("{consumer} cannot be rebuilt (its side effects must happen once)")]
    ProcessManager {
        /// The consumer.
        consumer: String,
    },
    /// The command needs the consumer paused first (a process manager's state import).
    #[error("{consumer} is running: pause it first")]
    NotPaused {
        /// The consumer.
        consumer: String,
    },
    /// A partitioned projection is not rebuilt in place: one shadow swap cannot follow
    /// every partition's own checkpoint (a version or partition-count change rebuilds it
    /// at the next start).
    #[error(
        "{consumer} runs in partitions and is not rebuilt in place: bump its version or change its partition count, and it is rebuilt at the next start"
    )]
    Partitioned {
        /// The projection.
        consumer: String,
    },
    /// The consumer kept a batch in hand for longer than
    /// [`DEAD_LETTER_GATE_WAIT`](super::DEAD_LETTER_GATE_WAIT) (its storage is failing, or
    /// a long batch): nothing was done, try again.
    #[error(
        "{consumer} is busy with a batch (its storage may be failing); nothing was done, try again"
    )]
    Busy {
        /// The consumer.
        consumer: String,
    },
    /// Reading or writing its read-model storage failed.
    #[error("{0}")]
    Storage(String),
}

impl From<HandleError> for ControlError {
    fn from(e: HandleError) -> Self {
        Self::Storage(e.to_string())
    }
}
