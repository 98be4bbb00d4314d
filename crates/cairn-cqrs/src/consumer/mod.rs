//! The loop shared by projections and process managers: follow `$all` from a checkpoint,
//! hand over batches, publish the position, sleep on the store's head watch (no polling),
//! and park events that keep failing in the dead letter queue.
//!
//! One job per file:
//! - `runner`: the catch-up loop, batch by batch, while this process leads;
//! - `leadership`: becoming the leader, following the leader's checkpoint until then,
//!   handing over; "since when" and the fence;
//! - `dead_letters`: parking, per-aggregate blocking, retry and discard;
//! - `rebuild`: shadow tables filled from 0 and swapped in;
//! - `control`: an operator's pause and resume;
//! - `status`: the state machine behind [`ConsumerStatus`];
//! - `partitions`: [`Partition`];
//! - `error`: [`HandleError`] and [`ControlError`].

mod control;
mod dead_letters;
mod error;
mod leadership;
mod partitions;
mod rebuild;
mod runner;
mod status;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::readmodel::{Fence, ReadModelStore};
use cairn_core::{EventStore, RecordedEvent};
use tokio::sync::watch;

pub use dead_letters::DeadLetterOutcome;
pub use error::{ControlError, HandleError};
pub use leadership::LeaderInfo;
pub use partitions::Partition;
pub use rebuild::RebuildProgress;
pub use status::ConsumerStatus;

use dead_letters::DeadLetterQueue;
use leadership::Leadership;
use rebuild::Rebuilds;
use status::{Machine, Transition};

/// Events handed to a consumer per batch.
pub const BATCH_EVENTS_MAX: usize = 2000;
/// Tries of a failing event before it is dead-lettered.
pub const EVENT_ATTEMPTS_MAX: u32 = 3;
/// Longest a dead-letter command waits for the consumer to finish the batch in hand; a
/// consumer stuck retrying its storage answers "busy" instead of hanging the operator.
pub const DEAD_LETTER_GATE_WAIT: Duration = Duration::from_secs(2);

/// The text of a caught panic's payload.
#[must_use]
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A consumer's side of the loop.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Its name (the checkpoint key).
    fn name(&self) -> &str;
    /// The event types it wants (empty = all).
    fn event_types(&self) -> Vec<String>;
    /// Where its checkpoint and dead letters live.
    fn readmodels(&self) -> &Arc<dyn ReadModelStore>;
    /// Handles `events` and commits the checkpoint `scanned_to` with their effects, every
    /// write under `fence` (the term the engine leads the consumer in).
    async fn handle(
        &self,
        fence: &Fence,
        events: Vec<RecordedEvent>,
        scanned_to: u64,
    ) -> Result<(), HandleError>;
    /// Handles one dead-lettered event again; on success the letter goes with its effects
    /// (under `fence`).
    async fn retry(
        &self,
        fence: &Fence,
        event: RecordedEvent,
        letter_id: i64,
    ) -> Result<(), HandleError>;
    /// A handler writing the same read model into shadow tables (for a rebuild), with its
    /// own checkpoint; `None` for consumers that must never be re-run (process managers).
    fn shadow(&self) -> Option<Arc<dyn BatchHandler>> {
        None
    }
    /// The tables it writes (rebuilt as a unit).
    fn tables(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Called once a rebuild has been swapped in.
    async fn rebuilt(&self) {}
    /// How long to wait after a batch once caught up, so that commits coalesce into the
    /// next batch (see [`crate::projection::Projection::coalesce`]).
    fn coalesce(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Blocking read-model calls from async code; a write refused for want of leadership is
/// [`HandleError::Deposed`] (the writer stops), any other failure transient.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, cairn_core::readmodel::ReadModelError> + Send + 'static,
) -> Result<R, HandleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?
        .map_err(|e| HandleError::of_write(&e))
}

/// What the loop and its handles share; each part belongs to one file's job.
struct Shared {
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    /// The status machine, in a watch so that the loop wakes on a pause or a resume.
    status: watch::Sender<Machine>,
    /// Held by the loop while a batch is in hand: whoever else holds it (a dead-letter
    /// command, a rebuild's swap, a state import) knows that no batch runs meanwhile.
    gate: tokio::sync::Mutex<()>,
    letters: DeadLetterQueue,
    rebuilds: Rebuilds,
    leadership: Leadership,
}

impl Shared {
    fn name(&self) -> &str {
        self.handler.name()
    }

    /// Moves the status machine; watchers wake only when something changed.
    fn apply(&self, t: Transition) {
        self.status.send_if_modified(|m| m.apply(t));
    }
}

/// Observes and steers a running consumer.
#[derive(Clone)]
pub struct ConsumerHandle {
    name: String,
    position: watch::Receiver<u64>,
    head: watch::Receiver<u64>,
    shared: Arc<Shared>,
}

impl ConsumerHandle {
    /// The consumer's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `$all` position it has scanned (handled, skipped or parked).
    #[must_use]
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// The last position visible in `$all`.
    #[must_use]
    pub fn head_position(&self) -> u64 {
        *self.head.borrow()
    }

    /// Its status (`rebuilding` while a rebuild runs beside the live tables).
    #[must_use]
    pub fn status(&self) -> ConsumerStatus {
        self.shared.status.borrow().served()
    }

    /// Waits until the consumer has scanned `position`; `Err(current)` after `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, u64> {
        let mut rx = self.position.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(p)) => Ok(*p),
            _ => Err(self.position()),
        }
    }
}

/// Starts the loop on the current runtime and returns its handle.
///
/// The loop first becomes the consumer's leader (immediately on an embedded store); until
/// then it mirrors the leader's checkpoint, so `wait_for` (read-your-writes) works on
/// every process. When leadership is lost it goes back to following.
pub fn spawn(
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    shutdown: watch::Receiver<bool>,
) -> ConsumerHandle {
    spawn_partition(store, handler, shutdown, None)
}

/// Like [`spawn`], for one partition of a consumer (`None`: every aggregate).
pub fn spawn_partition(
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    shutdown: watch::Receiver<bool>,
    partition: Option<Partition>,
) -> ConsumerHandle {
    spawn_with(store, handler, shutdown, partition, false)
}

/// Like [`spawn_partition`]; with `start_paused` the consumer handles nothing until
/// [`ConsumerHandle::resume`], from its first batch on (not even one batch slips through
/// before an operator could pause it — what a migration into this store needs).
pub fn spawn_with(
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    shutdown: watch::Receiver<bool>,
    partition: Option<Partition>,
    start_paused: bool,
) -> ConsumerHandle {
    let (position_tx, position_rx) = watch::channel(0);
    let (name, head) = (handler.name().to_owned(), store.head());
    let shared = Arc::new(Shared {
        store,
        handler,
        status: watch::channel(Machine::new(start_paused)).0,
        gate: tokio::sync::Mutex::new(()),
        letters: DeadLetterQueue::default(),
        rebuilds: Rebuilds::default(),
        leadership: Leadership::default(),
    });
    let handle = ConsumerHandle { name, position: position_rx, head, shared: Arc::clone(&shared) };
    runner::Runner::start(shared, shutdown, partition, position_tx);
    handle
}
