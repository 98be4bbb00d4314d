//! Rebuilds: the read model filled again from position 0 into shadow tables while the live
//! ones keep answering, then swapped in atomically with the live consumer held still.
//!
//! A rebuild belongs to a leadership term: it writes (shadow batches, swap, abort) under
//! the term's fence, so a deposed leader's rebuild can neither fill nor swap; it is
//! cancelled when the term ends (lost, handed over, shut down). The shadow's checkpoint
//! (`<name>#rebuild`) is the durable record that a rebuild is under way: it exists from
//! the rebuild's first write until its swap or abort, so whichever process leads next
//! sees an interrupted rebuild and starts it over (its `create_shadow` empties the
//! leftover shadow). At most one rebuild per projection writes at a time, across
//! processes: only the current term's fence writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_core::readmodel::{Fence, REBUILD_SUFFIX};
use cairn_core::{AllFilter, EventStore, RecordedEvent};
use serde::Serialize;

use super::status::{Rebuild, Transition};
use super::{
    BATCH_EVENTS_MAX, BatchHandler, ConsumerHandle, ConsumerStatus, ControlError, HandleError,
    Shared, blocking,
};

/// First pause between retries of a failing shadow batch.
const RETRY_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(20);

/// A rebuild in progress.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebuildProgress {
    /// `$all` position the shadow tables have reached.
    pub position: u64,
    /// Events per second so far.
    pub rate: f64,
}

/// Why a rebuild was given up (its shadow tables are dropped, nothing is swapped in).
#[derive(Debug, thiserror::Error)]
enum Abandoned {
    /// An event the live model took fails in the rebuilt one: a rebuild cannot park it.
    #[error("an event fails in the rebuilt model: {0}")]
    Event(String),
    /// Reading `$all` or writing the shadow tables kept failing.
    #[error("{0}")]
    Storage(String),
    /// The term it belonged to is over: the next leader starts it over.
    #[error("leadership lost: {0}")]
    Deposed(String),
}

impl From<HandleError> for Abandoned {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Event(e) => Self::Event(e),
            HandleError::Transient(e) => Self::Storage(e),
            HandleError::Deposed(e) => Self::Deposed(e),
        }
    }
}

impl From<cairn_core::ReadError> for Abandoned {
    fn from(e: cairn_core::ReadError) -> Self {
        Self::Storage(e.to_string())
    }
}

/// What this process knows of the consumer's rebuilds; whether one runs is the status
/// machine's to say.
#[derive(Default)]
pub(super) struct Rebuilds {
    progress: Mutex<Option<RebuildProgress>>,
    /// Rebuilds swapped in by this process, so a caller can tell that the one it started
    /// is done (a status can read `running` before, during and after a rebuild).
    completed: AtomicU64,
    /// Rebuilds given up by this process (their shadow tables dropped, nothing swapped).
    abandoned: AtomicU64,
    /// Rebuilds of this process cancelled because its term ended (nothing swapped; the
    /// next leader starts them over).
    cancelled: AtomicU64,
    /// The running rebuild's task, cancelled when the term it belongs to ends.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ConsumerHandle {
    /// Progress of a running rebuild.
    #[must_use]
    pub fn rebuild_progress(&self) -> Option<RebuildProgress> {
        let zero = RebuildProgress { position: 0, rate: 0.0 };
        match self.shared.status.borrow().rebuild() {
            Rebuild::Idle => None,
            // A rebuild waiting for leadership counts as started, at position 0.
            Rebuild::AwaitingLeadership => Some(zero),
            Rebuild::Running => Some(
                self.shared
                    .rebuilds
                    .progress
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .unwrap_or(zero),
            ),
        }
    }

    /// Rebuilds this process has swapped in since it started. Read after
    /// [`ConsumerHandle::rebuild_progress`] shows none running, it already counts the
    /// rebuild that just ended.
    #[must_use]
    pub fn rebuilds_completed(&self) -> u64 {
        self.shared.rebuilds.completed.load(Ordering::SeqCst)
    }

    /// Rebuilds this process has given up (nothing swapped in; the log says why).
    #[must_use]
    pub fn rebuilds_abandoned(&self) -> u64 {
        self.shared.rebuilds.abandoned.load(Ordering::SeqCst)
    }

    /// Rebuilds this process has cancelled because its leadership term ended (lost,
    /// handed over, shutdown): nothing swapped in; the next leader starts them over.
    #[must_use]
    pub fn rebuilds_cancelled(&self) -> u64 {
        self.shared.rebuilds.cancelled.load(Ordering::SeqCst)
    }

    /// Starts rebuilding the read model from position 0 into shadow tables, while the live
    /// tables keep answering; they are swapped atomically once the shadow has caught up.
    /// Refused while a rebuild runs, while dead letters wait, for a process manager, and
    /// while the consumer is paused or stalled: the swap needs the live consumer between
    /// two batches at a checkpoint that moves, so such a rebuild would end (if ever) at a
    /// time nobody chose.
    pub fn start_rebuild(&self) -> Result<(), ControlError> {
        let _ = self.require_leader()?;
        let consumer = self.name.clone();
        match self.status() {
            ConsumerStatus::Paused => return Err(ControlError::Paused { consumer }),
            ConsumerStatus::Stalled => return Err(ControlError::Stalled { consumer }),
            ConsumerStatus::Failed => return Err(ControlError::Failed { consumer }),
            ConsumerStatus::Starting | ConsumerStatus::Running | ConsumerStatus::Rebuilding => {}
        }
        start(&self.shared, false).map(|_| ())
    }

    /// Starts a rebuild as soon as this process leads the consumer (at once if it does).
    pub fn rebuild_when_leading(&self) {
        self.shared.apply(Transition::RebuildQueued);
        if self.is_leader() {
            start_awaiting(&self.shared);
        }
    }
}

/// At the start of a term: starts the rebuild asked for before this process led the
/// consumer, or the one an earlier term (of any process) left unfinished, if any.
pub(super) async fn start_queued(shared: &Arc<Shared>) {
    if shared.handler.shadow().is_some() {
        let (rm, shadow) =
            (Arc::clone(shared.handler.readmodels()), format!("{}{REBUILD_SUFFIX}", shared.name()));
        let recorded = blocking(move || Ok(rm.checkpoints()?.iter().any(|(c, _)| *c == shadow)));
        if let Ok(true) = recorded.await {
            tracing::info!(consumer = shared.name(), "an interrupted rebuild is started over");
            shared.apply(Transition::RebuildQueued);
        }
    }
    start_awaiting(shared);
}

/// Starts the rebuild waiting for leadership, if any.
fn start_awaiting(shared: &Arc<Shared>) {
    // Every leadership term starts here: most have nothing queued, and nothing to say.
    if shared.status.borrow().rebuild() != Rebuild::AwaitingLeadership {
        return;
    }
    if let Err(e) = start(shared, true) {
        tracing::warn!(consumer = shared.name(), error = %e, "rebuild not started");
    }
}

/// Ends the term's rebuild, if one runs, and returns once it has ended: its task is
/// aborted (a write it has in flight is refused by the store once the term is over),
/// nothing is swapped in, and the shadow and its checkpoint stay for the next leader to
/// start over. Awaited before the lease is given back, so that a new term of this process
/// never sees the old rebuild still running.
pub(super) async fn cancel(shared: &Arc<Shared>) {
    let task = shared.rebuilds.task.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(task) = task else { return };
    task.abort();
    // Quick: the task is dropped at its next await point. What it counts, [`Run`] says.
    let _ = task.await;
}

/// How one rebuild ended, counted exactly once: when its task's future is dropped,
/// whether it returned or was aborted at an await point by [`cancel`].
struct Run {
    shared: Arc<Shared>,
    /// `None` until the rebuild returns: dropped without it = aborted with the term.
    ended: Option<Ended>,
}

#[derive(Clone, Copy)]
enum Ended {
    /// Swapped in (counted by the swap itself, before the handler is told).
    Swapped,
    /// Its term ended under it: the next leader starts it over.
    Deposed,
    /// Given up: its shadow tables dropped.
    Abandoned,
}

impl Drop for Run {
    fn drop(&mut self) {
        let counter = match self.ended {
            Some(Ended::Swapped) => None,
            None | Some(Ended::Deposed) => Some(&self.shared.rebuilds.cancelled),
            Some(Ended::Abandoned) => Some(&self.shared.rebuilds.abandoned),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        if self.ended.is_none() {
            tracing::warn!(
                consumer = self.shared.name(),
                "rebuild cancelled: the leadership term ended"
            );
        }
        *self.shared.rebuilds.progress.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.shared.apply(Transition::RebuildEnded);
    }
}

/// Starts a rebuild (see [`ConsumerHandle::start_rebuild`]); the caller leads the consumer.
/// `queued`: only the one waiting for leadership (`Ok(false)` when none waits).
fn start(shared: &Arc<Shared>, queued: bool) -> Result<bool, ControlError> {
    let consumer = shared.name().to_owned();
    let refused = |e: ControlError| {
        // A queued rebuild that cannot start is dropped, or it would show forever.
        if queued {
            shared.apply(Transition::RebuildDropped);
        }
        Err(e)
    };
    let Some(shadow) = shared.handler.shadow() else {
        return refused(ControlError::ProcessManager { consumer });
    };
    let Some(fence) = shared.leadership.fence() else {
        return refused(ControlError::NotLeader { consumer });
    };
    if shared.letters.depth() > 0 {
        return refused(ControlError::HasDeadLetters { consumer });
    }
    // Checked and moved under the machine's lock: two callers never both start one.
    let mut outcome = Ok(false);
    shared.status.send_if_modified(|m| match (m.rebuild(), queued) {
        (Rebuild::Running, false) => {
            outcome = Err(ControlError::Rebuilding { consumer: consumer.clone() });
            false
        }
        // Nothing queued, or the handle and the loop both started the queued one: done.
        (Rebuild::Idle | Rebuild::Running, true) => false,
        _ => {
            outcome = Ok(true);
            m.apply(Transition::RebuildStarted)
        }
    });
    if outcome != Ok(true) {
        return outcome;
    }
    *shared.rebuilds.progress.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(RebuildProgress { position: 0, rate: 0.0 });
    let task_shared = Arc::clone(shared);
    // The slot is held while spawning, so `cancel` never misses the task it must end.
    let mut slot = shared.rebuilds.task.lock().unwrap_or_else(PoisonError::into_inner);
    let task = tokio::spawn(async move {
        let mut run = Run { shared: task_shared, ended: None };
        let shared = Arc::clone(&run.shared);
        match rebuild(&shared, shadow, &fence).await {
            Ok(()) => run.ended = Some(Ended::Swapped),
            Err(Abandoned::Deposed(e)) => {
                // Not given up: the next leader starts it over from the record it left.
                tracing::warn!(consumer = shared.name(), error = %e, "rebuild ended with the term");
                run.ended = Some(Ended::Deposed);
            }
            Err(e) => {
                tracing::error!(consumer = shared.name(), error = %e, "rebuild abandoned");
                // Counted as given up even if the term ends during the clean-up below.
                run.ended = Some(Ended::Abandoned);
                let (rm, tables, name) = (
                    Arc::clone(shared.handler.readmodels()),
                    shared.handler.tables(),
                    format!("{}{REBUILD_SUFFIX}", shared.name()),
                );
                let _ = blocking(move || rm.abort_shadow(&fence, &tables, &name)).await;
            }
        }
    });
    *slot = Some(task);
    Ok(true)
}

/// Feeds `shadow` every event with position in `(from, to]`.
async fn feed(
    fence: &Fence,
    store: &Arc<dyn EventStore>,
    shadow: &Arc<dyn BatchHandler>,
    filter: &AllFilter,
    from: u64,
    to: u64,
) -> Result<(), Abandoned> {
    let mut position = from;
    while position < to {
        let slice = store.read_all(position, BATCH_EVENTS_MAX, filter).await?;
        let events: Vec<RecordedEvent> =
            slice.events.into_iter().filter(|e| e.position <= to).collect();
        let checkpoint = slice.scanned_to.min(to);
        let mut attempts = 0;
        loop {
            match shadow.handle(fence, events.clone(), checkpoint).await {
                Ok(()) => break,
                Err(HandleError::Event(e)) => return Err(Abandoned::Event(e)),
                Err(HandleError::Deposed(e)) => return Err(Abandoned::Deposed(e)),
                Err(HandleError::Transient(e)) if attempts < 20 => {
                    attempts += 1;
                    tracing::warn!(error = %e, "rebuild batch failed; retrying");
                    tokio::time::sleep(RETRY_BACKOFF_MIN * attempts).await;
                }
                Err(HandleError::Transient(e)) => return Err(Abandoned::Storage(e)),
            }
        }
        if checkpoint <= position {
            break; // nothing more visible yet
        }
        position = checkpoint;
    }
    Ok(())
}

/// The rebuild: shadow from 0 up to the live checkpoint, then, with the live consumer
/// held between batches, the last stretch and the atomic swap.
async fn rebuild(
    shared: &Arc<Shared>,
    shadow: Arc<dyn BatchHandler>,
    fence: &Fence,
) -> Result<(), Abandoned> {
    let name = shared.name().to_owned();
    let tables = shared.handler.tables();
    let rm = Arc::clone(shared.handler.readmodels());
    let filter =
        AllFilter { event_types: shared.handler.event_types(), aggregate_types: Vec::new() };
    {
        let (rm, tables, fence) = (Arc::clone(&rm), tables.clone(), fence.clone());
        let name = name.clone();
        blocking(move || rm.create_shadow(&fence, &name, &tables)).await?;
    }
    // A fresh shadow checkpoint at 0: from here on, the record of a rebuild under way.
    shadow.handle(fence, Vec::new(), 0).await?;
    let started = std::time::Instant::now();
    let mut position = 0;
    loop {
        let (rm2, live) = (Arc::clone(&rm), name.clone());
        let target = blocking(move || rm2.checkpoint(&live)).await?;
        if target.saturating_sub(position) <= BATCH_EVENTS_MAX as u64 {
            break;
        }
        let to = target.min(position + 20 * BATCH_EVENTS_MAX as u64);
        feed(fence, &shared.store, &shadow, &filter, position, to).await?;
        position = to;
        *shared.rebuilds.progress.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(RebuildProgress {
                position,
                rate: position as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
    }
    // Hold the live consumer between batches: its checkpoint is now still.
    let _gate = shared.gate.lock().await;
    let (rm2, live) = (Arc::clone(&rm), name.clone());
    let target = blocking(move || rm2.checkpoint(&live)).await?;
    feed(fence, &shared.store, &shadow, &filter, position, target).await?;
    let (rm2, live, shadow_name) =
        (Arc::clone(&rm), name.clone(), format!("{name}{REBUILD_SUFFIX}"));
    // Refused unless `fence` is still the live term: a deposed leader never swaps.
    let fence = fence.clone();
    blocking(move || rm2.swap_shadow(&fence, &tables, &live, &shadow_name)).await?;
    shared.rebuilds.completed.fetch_add(1, Ordering::SeqCst);
    shared.handler.rebuilt().await;
    tracing::info!(consumer = %name, position = target, seconds = started.elapsed().as_secs_f64(), "rebuild swapped in");
    Ok(())
}
