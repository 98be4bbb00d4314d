//! The loop shared by projections and process managers: follow `$all` from a checkpoint,
//! hand over batches, publish the position, sleep on the store's head watch (no polling),
//! and park events that keep failing in the dead letter queue.
//!
//! Dead letters keep per-aggregate order: once an event of aggregate A is dead-lettered,
//! every later event of A for this consumer is parked behind it (other aggregates flow
//! on), until an operator retries or discards it. With an empty queue the fast path is a
//! single in-memory emptiness check per batch: no extra query.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use cairn_core::readmodel::{DeadLetter, ReadModelStore};
use cairn_core::timestamp::Timestamp;
use cairn_core::{AllFilter, EventStore, RecordedEvent};
use futures_util::FutureExt as _;
use serde::Serialize;
use tokio::sync::watch;

/// Events handed to a consumer per batch.
pub const BATCH_EVENTS_MAX: usize = 2000;
/// Tries of a failing event before it is dead-lettered.
pub const EVENT_ATTEMPTS_MAX: u32 = 3;
/// Longest pause between retries of a failing batch.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most often a checkpoint is written only to move over skipped events (for followers).
const MIRRORED_CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// First pause between retries.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest a dead-letter command waits for the consumer to finish the batch in hand; a
/// consumer stuck retrying its storage answers "busy" instead of hanging the operator.
pub const DEAD_LETTER_GATE_WAIT: Duration = Duration::from_secs(2);

/// What a consumer is doing (contract §6 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStatus {
    /// Loading its checkpoint.
    Starting,
    /// Following `$all`.
    Running,
    /// Rebuilding from position 0.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Its storage keeps failing; it retries with backoff.
    Stalled,
    /// Stopped for good (e.g. its storage is gone).
    Failed,
}

/// Why handling failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleError {
    /// The consumer's own storage failed: retried until it works (the consumer stalls).
    Transient(String),
    /// The handler refused an event: retried a few times, then dead-lettered.
    Event(String),
}

/// Why a dead-letter command did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// Another process runs the consumer: the request must go there.
    #[error(
        "{0} runs on another cairn process sharing this database; send this request to that process"
    )]
    NotLeader(String),
    /// The consumer kept a batch in hand for longer than [`DEAD_LETTER_GATE_WAIT`] (its
    /// storage is failing, or a long batch): nothing was done, try again.
    #[error("{0} is busy with a batch (its storage may be failing); nothing was done, try again")]
    Busy(String),
    /// Reading or writing the dead letters failed.
    #[error("{0}")]
    Storage(String),
}

/// The text of a caught panic's payload.
#[must_use]
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(m) | Self::Event(m) => f.write_str(m),
        }
    }
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
    /// Handles `events` and commits the checkpoint `scanned_to` with their effects.
    async fn handle(&self, events: Vec<RecordedEvent>, scanned_to: u64) -> Result<(), HandleError>;
    /// Handles one dead-lettered event again; on success the letter goes with its effects.
    async fn retry(&self, event: RecordedEvent, letter_id: i64) -> Result<(), HandleError>;
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
}

/// A rebuild in progress.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebuildProgress {
    /// `$all` position the shadow tables have reached.
    pub position: u64,
    /// Events per second so far.
    pub rate: f64,
}

/// Blocking read-model calls from async code.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, cairn_core::readmodel::ReadModelError> + Send + 'static,
) -> Result<R, HandleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?
        .map_err(|e| HandleError::Transient(e.to_string()))
}

/// Waits for the consumer's gate, at most [`DEAD_LETTER_GATE_WAIT`].
async fn gate_for_letters<'a>(
    dlq: &'a Dlq,
    name: &str,
) -> Result<tokio::sync::MutexGuard<'a, ()>, DeadLetterError> {
    tokio::time::timeout(DEAD_LETTER_GATE_WAIT, dlq.gate.lock())
        .await
        .map_err(|_| DeadLetterError::Busy(name.to_owned()))
}

/// Observes and steers a running consumer.
#[derive(Clone)]
pub struct ConsumerHandle {
    name: String,
    position: watch::Receiver<u64>,
    status: Arc<Mutex<ConsumerStatus>>,
    head: watch::Receiver<u64>,
    dlq: Arc<Dlq>,
}

/// The consumer's dead-letter state: which aggregates are blocked, how deep the queue is,
/// and a gate that serialises parking with retries.
struct Dlq {
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    blocked: Mutex<HashSet<String>>,
    depth: AtomicU64,
    gate: tokio::sync::Mutex<()>,
    rebuild: Mutex<Option<RebuildProgress>>,
    /// Rebuilds swapped in by this process, so a caller can tell that the one it started
    /// is done (a status can read `running` before, during and after a rebuild).
    rebuilds_completed: AtomicU64,
    /// Rebuilds given up by this process (their shadow tables dropped, nothing swapped).
    rebuilds_abandoned: AtomicU64,
    /// Whether this process runs the consumer (another process may lead it).
    leading: AtomicBool,
    /// A rebuild to start as soon as this process leads the consumer.
    rebuild_when_leading: AtomicBool,
    /// Set by an operator: the leading loop stops between batches until it is cleared.
    paused: watch::Sender<bool>,
    /// Set to hand leadership over to another process (rebalancing partitions).
    handover: watch::Sender<bool>,
    /// After a handover, this process does not try to lead again before this.
    hold_off_until: Mutex<Option<std::time::Instant>>,
}

impl Dlq {
    fn is_blocked(&self, aggregate_id: &str) -> bool {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).contains(aggregate_id)
    }

    fn any_blocked(&self) -> bool {
        !self.blocked.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// One letter fewer (never below zero: a follower may have mirrored a smaller count).
    fn release_one(&self) {
        let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }

    fn block(&self, aggregate_id: &str) {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).insert(aggregate_id.to_owned());
    }

    async fn letters(&self) -> Result<Vec<DeadLetter>, HandleError> {
        let (rm, name) = (Arc::clone(self.handler.readmodels()), self.handler.name().to_owned());
        blocking(move || rm.dead_letters(Some(&name))).await
    }

    async fn park(
        &self,
        event: &RecordedEvent,
        error: String,
        attempts: u32,
    ) -> Result<(), HandleError> {
        let now = Timestamp::now();
        let letter = DeadLetter {
            id: 0,
            projection: self.handler.name().to_owned(),
            position: event.position,
            aggregate_id: event.aggregate_id.clone(),
            event_type: event.event_type.clone(),
            error,
            attempts,
            first_failed_at: now,
            last_failed_at: now,
        };
        let (rm, position) = (Arc::clone(self.handler.readmodels()), event.position);
        blocking(move || rm.park(position, &letter)).await?;
        self.block(&event.aggregate_id);
        self.depth.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Re-runs the chain of `aggregate_id`'s dead letters in order, stopping at the first
    /// that still fails. Returns how many remain.
    async fn replay_chain(&self, aggregate_id: &str) -> Result<usize, HandleError> {
        let chain: Vec<DeadLetter> =
            self.letters().await?.into_iter().filter(|l| l.aggregate_id == aggregate_id).collect();
        let mut remaining = chain.len();
        for letter in chain {
            let page = self
                .store
                .read_all(letter.position.saturating_sub(1), 1, &AllFilter::default())
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            let Some(event) =
                page.events.into_iter().next().filter(|e| e.position == letter.position)
            else {
                return Err(HandleError::Transient(format!(
                    "event at position {} not found",
                    letter.position
                )));
            };
            let retried = AssertUnwindSafe(self.handler.retry(event, letter.id))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(HandleError::Event(format!(
                        "handler panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                });
            match retried {
                Ok(()) => {
                    remaining -= 1;
                    self.release_one();
                }
                Err(e) => {
                    let (rm, id, message, name) = (
                        Arc::clone(self.handler.readmodels()),
                        letter.id,
                        e.to_string(),
                        self.handler.name().to_owned(),
                    );
                    blocking(move || rm.dead_letter_failed(&name, id, &message)).await?;
                    return Ok(remaining);
                }
            }
        }
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).remove(aggregate_id);
        Ok(0)
    }
}

/// What became of a retried or discarded dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterOutcome {
    /// Dead letters of that aggregate still waiting (0 = it flows again).
    pub remaining: usize,
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
        let status = *self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status == ConsumerStatus::Running && self.is_paused() {
            // Paused by an operator: it stops at the end of the batch in hand.
            ConsumerStatus::Paused
        } else if status == ConsumerStatus::Paused && !self.is_paused() {
            // Resumed: the loop wakes and says so itself a moment later; answering
            // `paused` until then would contradict the resume just accepted.
            ConsumerStatus::Running
        } else if status == ConsumerStatus::Running && self.rebuild_progress().is_some() {
            ConsumerStatus::Rebuilding
        } else {
            status
        }
    }

    /// Progress of a running rebuild.
    #[must_use]
    pub fn rebuild_progress(&self) -> Option<RebuildProgress> {
        let running = *self.dlq.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        // A rebuild waiting for leadership counts as started, at position 0.
        running.or_else(|| {
            self.dlq
                .rebuild_when_leading
                .load(Ordering::SeqCst)
                .then_some(RebuildProgress { position: 0, rate: 0.0 })
        })
    }

    /// Rebuilds this process has swapped in since it started. Read after
    /// [`ConsumerHandle::rebuild_progress`] shows none running, it already counts the
    /// rebuild that just ended.
    #[must_use]
    pub fn rebuilds_completed(&self) -> u64 {
        self.dlq.rebuilds_completed.load(Ordering::SeqCst)
    }

    /// Rebuilds this process has given up (nothing swapped in; the log says why).
    #[must_use]
    pub fn rebuilds_abandoned(&self) -> u64 {
        self.dlq.rebuilds_abandoned.load(Ordering::SeqCst)
    }

    /// Starts rebuilding the read model from position 0 into shadow tables, while the live
    /// tables keep answering; they are swapped atomically once the shadow has caught up.
    /// Refused while a rebuild runs, while dead letters wait, for a process manager, and
    /// while the consumer is paused or stalled: the swap needs the live consumer between
    /// two batches at a checkpoint that moves, so such a rebuild would end (if ever) at a
    /// time nobody chose.
    pub fn start_rebuild(&self) -> Result<(), String> {
        self.require_leader()?;
        let refusal = match self.status() {
            ConsumerStatus::Paused => Some("paused: resume it before rebuilding it"),
            ConsumerStatus::Stalled => Some("stalled: its storage keeps failing"),
            ConsumerStatus::Failed => Some("failed: restart it before rebuilding it"),
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(format!("{} is {why}", self.name));
        }
        start_rebuild(&self.dlq)
    }

    /// Starts a rebuild as soon as this process leads the consumer (at once if it does).
    pub fn rebuild_when_leading(&self) {
        self.dlq.rebuild_when_leading.store(true, Ordering::SeqCst);
        if self.is_leader()
            && self.dlq.rebuild_when_leading.swap(false, Ordering::SeqCst)
            && let Err(e) = start_rebuild(&self.dlq)
        {
            tracing::warn!(consumer = %self.name, error = %e, "rebuild not started");
        }
    }

    /// Whether this process runs the consumer; when several processes share a database,
    /// one leads each consumer and the others mirror its progress.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.dlq.leading.load(Ordering::SeqCst)
    }

    fn require_leader_for_letters(&self) -> Result<(), DeadLetterError> {
        if self.is_leader() { Ok(()) } else { Err(DeadLetterError::NotLeader(self.name.clone())) }
    }

    fn require_leader(&self) -> Result<(), String> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(format!(
                "{} runs on another cairn process sharing this database; send this request to that process",
                self.name
            ))
        }
    }

    /// Pauses the consumer: it stops between batches (its checkpoint stays where the last
    /// batch left it) and reports `paused` until [`ConsumerHandle::resume`]. Held in
    /// memory: a restarted process runs it again.
    pub fn pause(&self) -> Result<(), String> {
        self.require_leader()?;
        self.dlq.paused.send_replace(true);
        Ok(())
    }

    /// Resumes a paused consumer from its checkpoint.
    pub fn resume(&self) -> Result<(), String> {
        self.require_leader()?;
        self.dlq.paused.send_replace(false);
        Ok(())
    }

    /// Gives leadership up at the end of the batch in hand and does not take it back for
    /// `hold_off`, so that another process can (rebalancing partitions).
    pub fn hand_over(&self, hold_off: Duration) {
        *self.dlq.hold_off_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(std::time::Instant::now() + hold_off);
        self.dlq.handover.send_replace(true);
    }

    /// Waits (at most [`DEAD_LETTER_GATE_WAIT`]) until no batch is in hand and keeps it so
    /// while the guard lives; with the consumer paused, nothing is handled after that.
    pub async fn hold_between_batches(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout(DEAD_LETTER_GATE_WAIT, self.dlq.gate.lock()).await.ok()
    }

    /// Whether an operator paused it (it stops at the end of the batch in hand).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        *self.dlq.paused.borrow()
    }

    /// Events waiting in its dead letter queue.
    #[must_use]
    pub fn dlq_depth(&self) -> u64 {
        self.dlq.depth.load(Ordering::Relaxed)
    }

    /// Waits until the consumer has scanned `position`; `Err(current)` after `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, u64> {
        let mut rx = self.position.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(p)) => Ok(*p),
            _ => Err(self.position()),
        }
    }

    /// Dead letter `id` if it is this consumer's (`None` otherwise); acting on it needs
    /// this process to lead the consumer. The caller holds the gate.
    async fn own_letter(&self, id: i64) -> Result<Option<DeadLetter>, DeadLetterError> {
        let letters =
            self.dlq.letters().await.map_err(|e| DeadLetterError::Storage(e.to_string()))?;
        let Some(letter) = letters.into_iter().find(|l| l.id == id) else { return Ok(None) };
        self.require_leader_for_letters()?;
        Ok(Some(letter))
    }

    /// Its dead letters, in position order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, String> {
        self.dlq.letters().await.map_err(|e| e.to_string())
    }

    /// Re-runs dead letter `id` and the events parked behind it, in order.
    /// `Ok(None)` when this consumer has no such letter.
    pub async fn retry_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<DeadLetterOutcome>, DeadLetterError> {
        let _gate = gate_for_letters(&self.dlq, &self.name).await?;
        let Some(letter) = self.own_letter(id).await? else { return Ok(None) };
        let remaining = self
            .dlq
            .replay_chain(&letter.aggregate_id)
            .await
            .map_err(|e| DeadLetterError::Storage(e.to_string()))?;
        Ok(Some(DeadLetterOutcome { remaining }))
    }

    /// Drops dead letter `id` (its event is never applied); when it headed a chain, the
    /// events parked behind it are re-run. `Ok(None)` when this consumer has no such letter.
    pub async fn discard_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<DeadLetterOutcome>, DeadLetterError> {
        let _gate = gate_for_letters(&self.dlq, &self.name).await?;
        let Some(letter) = self.own_letter(id).await? else { return Ok(None) };
        let (rm, name) = (Arc::clone(self.dlq.handler.readmodels()), self.name.clone());
        blocking(move || rm.resolve_dead_letter(&name, id, &mut |_| Ok(())))
            .await
            .map_err(|e| DeadLetterError::Storage(e.to_string()))?;
        self.dlq.release_one();
        let remaining = self
            .dlq
            .replay_chain(&letter.aggregate_id)
            .await
            .map_err(|e| DeadLetterError::Storage(e.to_string()))?;
        Ok(Some(DeadLetterOutcome { remaining }))
    }
}

/// Starts a rebuild (see [`ConsumerHandle::start_rebuild`]); the caller leads the consumer.
fn start_rebuild(dlq: &Arc<Dlq>) -> Result<(), String> {
    let name = dlq.handler.name().to_owned();
    let Some(shadow) = dlq.handler.shadow() else {
        return Err(format!("{name} cannot be rebuilt (its side effects must happen once)"));
    };
    if dlq.depth.load(Ordering::Relaxed) > 0 {
        return Err(format!("{name} has dead letters: retry or discard them first"));
    }
    {
        let mut progress = dlq.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        if progress.is_some() {
            return Err(format!("{name} is already rebuilding"));
        }
        *progress = Some(RebuildProgress { position: 0, rate: 0.0 });
    }
    let dlq = Arc::clone(dlq);
    tokio::spawn(async move {
        if let Err(e) = rebuild(&dlq, shadow).await {
            tracing::error!(consumer = dlq.handler.name(), error = %e, "rebuild abandoned");
            let (rm, tables, name) = (
                Arc::clone(dlq.handler.readmodels()),
                dlq.handler.tables(),
                format!("{}#rebuild", dlq.handler.name()),
            );
            let _ = blocking(move || rm.abort_shadow(&tables, &name)).await;
            dlq.rebuilds_abandoned.fetch_add(1, Ordering::SeqCst);
        }
        *dlq.rebuild.lock().unwrap_or_else(PoisonError::into_inner) = None;
    });
    Ok(())
}

/// Feeds `shadow` every event with position in `(from, to]`; returns `to`.
async fn feed(
    store: &Arc<dyn EventStore>,
    shadow: &Arc<dyn BatchHandler>,
    filter: &AllFilter,
    from: u64,
    to: u64,
) -> Result<(), String> {
    let mut position = from;
    while position < to {
        let slice =
            store.read_all(position, BATCH_EVENTS_MAX, filter).await.map_err(|e| e.to_string())?;
        let events: Vec<RecordedEvent> =
            slice.events.into_iter().filter(|e| e.position <= to).collect();
        let checkpoint = slice.scanned_to.min(to);
        let mut attempts = 0;
        loop {
            match shadow.handle(events.clone(), checkpoint).await {
                Ok(()) => break,
                Err(HandleError::Event(e)) => {
                    return Err(format!("an event fails in the rebuilt model: {e}"));
                }
                Err(HandleError::Transient(e)) if attempts < 20 => {
                    attempts += 1;
                    tracing::warn!(error = %e, "rebuild batch failed; retrying");
                    tokio::time::sleep(RETRY_BACKOFF_MIN * attempts).await;
                }
                Err(HandleError::Transient(e)) => return Err(e),
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
async fn rebuild(dlq: &Arc<Dlq>, shadow: Arc<dyn BatchHandler>) -> Result<(), String> {
    let name = dlq.handler.name().to_owned();
    let tables = dlq.handler.tables();
    let rm = Arc::clone(dlq.handler.readmodels());
    let filter = AllFilter { event_types: dlq.handler.event_types(), aggregate_types: Vec::new() };
    {
        let (rm, tables) = (Arc::clone(&rm), tables.clone());
        let name = name.clone();
        blocking(move || rm.create_shadow(&name, &tables)).await.map_err(|e| e.to_string())?;
    }
    // A fresh shadow checkpoint at 0.
    shadow.handle(Vec::new(), 0).await.map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut position = 0;
    loop {
        let (rm2, live) = (Arc::clone(&rm), name.clone());
        let target = blocking(move || rm2.checkpoint(&live)).await.map_err(|e| e.to_string())?;
        if target.saturating_sub(position) <= BATCH_EVENTS_MAX as u64 {
            break;
        }
        let to = target.min(position + 20 * BATCH_EVENTS_MAX as u64);
        feed(&dlq.store, &shadow, &filter, position, to).await?;
        position = to;
        *dlq.rebuild.lock().unwrap_or_else(PoisonError::into_inner) = Some(RebuildProgress {
            position,
            rate: position as f64 / started.elapsed().as_secs_f64().max(1e-9),
        });
    }
    // Hold the live consumer between batches: its checkpoint is now still.
    let _gate = dlq.gate.lock().await;
    let (rm2, live) = (Arc::clone(&rm), name.clone());
    let target = blocking(move || rm2.checkpoint(&live)).await.map_err(|e| e.to_string())?;
    feed(&dlq.store, &shadow, &filter, position, target).await?;
    let (rm2, live, shadow_name) = (Arc::clone(&rm), name.clone(), format!("{name}#rebuild"));
    blocking(move || rm2.swap_shadow(&tables, &live, &shadow_name))
        .await
        .map_err(|e| e.to_string())?;
    dlq.rebuilds_completed.fetch_add(1, Ordering::SeqCst);
    dlq.handler.rebuilt().await;
    tracing::info!(consumer = %name, position = target, seconds = started.elapsed().as_secs_f64(), "rebuild swapped in");
    Ok(())
}

fn set(status: &Mutex<ConsumerStatus>, value: ConsumerStatus) {
    *status.lock().unwrap_or_else(PoisonError::into_inner) = value;
}

/// The running loop's state.
struct Runner {
    handler: Arc<dyn BatchHandler>,
    dlq: Arc<Dlq>,
    status: Arc<Mutex<ConsumerStatus>>,
    shutdown: watch::Receiver<bool>,
    partition: Option<Partition>,
}

/// One of `count` partitions of a consumer: the aggregates whose id hashes to `index`.
/// Each partition has its own checkpoint and leadership, so partitions of one projection
/// run in parallel on different processes while each aggregate's events stay in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// How many there are.
    pub count: u32,
}

impl Partition {
    /// Whether events of `aggregate_id` belong to this partition. FNV-1a: stable across
    /// processes, versions and platforms (the standard hasher promises none of that).
    #[must_use]
    pub fn owns(&self, aggregate_id: &str) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in aggregate_id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

/// Why the leading loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The process is shutting down.
    Shutdown,
    /// Another process may now lead this consumer (the leadership session is gone).
    Lost,
}

impl Runner {
    /// Handles a batch; an event error is retried `EVENT_ATTEMPTS_MAX` times, a
    /// transient one until it works. Returns the event error that remained, if any.
    async fn attempt(
        &mut self,
        events: &[RecordedEvent],
        scanned_to: u64,
    ) -> Result<Option<String>, Stop> {
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut event_failures = 0;
        loop {
            // A panicking handler is the event's fault like a refusing one: retried a few
            // times, then dead-lettered; never a stall, never a dead loop.
            let handled = AssertUnwindSafe(self.handler.handle(events.to_vec(), scanned_to))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(HandleError::Event(format!(
                        "handler panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                });
            let error = match handled {
                Ok(()) => {
                    set(&self.status, ConsumerStatus::Running);
                    return Ok(None);
                }
                Err(e) => e,
            };
            // Whatever failed, a process that lost the consumer must not try again: its
            // successor is handling these events now.
            if !self.handler.readmodels().leads(self.handler.name()) {
                return Err(Stop::Lost);
            }
            match error {
                HandleError::Event(e) => {
                    event_failures += 1;
                    if event_failures >= EVENT_ATTEMPTS_MAX {
                        return Ok(Some(e));
                    }
                }
                HandleError::Transient(e) => {
                    tracing::error!(consumer = self.handler.name(), error = %e, "storage failed; retrying");
                    set(&self.status, ConsumerStatus::Stalled);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => return Err(Stop::Shutdown),
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }

    /// Processes a batch, parking what must be parked. Fast path: one call.
    /// `Ok(false)`: paused meanwhile, nothing handled (the checkpoint has not moved).
    async fn process(&mut self, events: Vec<RecordedEvent>, scanned_to: u64) -> Result<bool, Stop> {
        let dlq = Arc::clone(&self.dlq);
        let _gate = dlq.gate.lock().await;
        // Under the gate: an operator who paused the consumer and then holds the gate
        // (e.g. to import a process manager's state) knows no batch runs after that.
        if *dlq.paused.borrow() {
            return Ok(false);
        }
        if !dlq.any_blocked() && self.attempt(&events, scanned_to).await?.is_none() {
            return Ok(true);
        }
        // Slow path: event by event, so that one bad event (or a blocked aggregate) does
        // not hold back the others.
        for event in events {
            let error = if dlq.is_blocked(&event.aggregate_id) {
                Some((format!("parked behind an earlier dead letter of {}", event.aggregate_id), 0))
            } else {
                self.attempt(std::slice::from_ref(&event), event.position)
                    .await?
                    .map(|e| (e, EVENT_ATTEMPTS_MAX))
            };
            if let Some((error, attempts)) = error {
                tracing::warn!(consumer = self.handler.name(), position = event.position, %error, "event dead-lettered");
                let mut backoff = RETRY_BACKOFF_MIN;
                while let Err(e) = dlq.park(&event, error.clone(), attempts).await {
                    if !self.handler.readmodels().leads(self.handler.name()) {
                        return Err(Stop::Lost);
                    }
                    tracing::error!(consumer = self.handler.name(), error = %e, "cannot park; retrying");
                    set(&self.status, ConsumerStatus::Stalled);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.changed() => return Err(Stop::Shutdown),
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        // The checkpoint also covers the filtered-out tail of the batch.
        self.attempt(&[], scanned_to).await.map(|_| true)
    }

    /// Moves the checkpoint over skipped events (for followers), under the gate like a
    /// batch. `Ok(false)`: paused meanwhile, not moved.
    async fn save_skipped(&mut self, position: u64) -> Result<bool, Stop> {
        let dlq = Arc::clone(&self.dlq);
        let _gate = dlq.gate.lock().await;
        if *dlq.paused.borrow() {
            return Ok(false);
        }
        self.attempt(&[], position).await.map(|_| true)
    }
}

/// How often a process that does not lead a consumer tries to take it over.
const TAKEOVER_INTERVAL: Duration = Duration::from_secs(1);
/// How often a follower re-reads the leader's checkpoint without a notification.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

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
    let status = Arc::new(Mutex::new(ConsumerStatus::Starting));
    let dlq = Arc::new(Dlq {
        store: Arc::clone(&store),
        handler: Arc::clone(&handler),
        blocked: Mutex::new(HashSet::new()),
        depth: AtomicU64::new(0),
        gate: tokio::sync::Mutex::new(()),
        rebuild: Mutex::new(None),
        rebuilds_completed: AtomicU64::new(0),
        rebuilds_abandoned: AtomicU64::new(0),
        leading: AtomicBool::new(false),
        rebuild_when_leading: AtomicBool::new(false),
        paused: watch::channel(start_paused).0,
        handover: watch::channel(false).0,
        hold_off_until: Mutex::new(None),
    });
    let handle = ConsumerHandle {
        name: handler.name().to_owned(),
        position: position_rx,
        status: Arc::clone(&status),
        head: store.head(),
        dlq: Arc::clone(&dlq),
    };
    let mut runner = Runner { handler, dlq, status: Arc::clone(&status), shutdown, partition };
    tokio::spawn(async move {
        loop {
            if !runner.follow(&position_tx).await {
                return;
            }
            runner.dlq.leading.store(true, Ordering::SeqCst);
            tracing::info!(consumer = runner.handler.name(), "leading");
            if runner.dlq.rebuild_when_leading.swap(false, Ordering::SeqCst)
                && let Err(e) = start_rebuild(&runner.dlq)
            {
                tracing::warn!(consumer = runner.handler.name(), error = %e, "rebuild not started");
            }
            let stop = runner.lead(&store, &position_tx).await;
            runner.dlq.leading.store(false, Ordering::Release);
            let (rm, name) =
                (Arc::clone(runner.handler.readmodels()), runner.handler.name().to_owned());
            let _ = tokio::task::spawn_blocking(move || rm.resign(&name)).await;
            match stop {
                Stop::Shutdown => return,
                Stop::Lost => {
                    tracing::warn!(consumer = runner.handler.name(), "leadership lost; following");
                    runner.dlq.blocked.lock().unwrap_or_else(PoisonError::into_inner).clear();
                }
            }
        }
    });
    handle
}

impl Runner {
    /// Until this process leads the consumer: mirror the leader's checkpoint and dead
    /// letter count. `false` = shutting down.
    async fn follow(&mut self, position_tx: &watch::Sender<u64>) -> bool {
        let (rm, name) = (Arc::clone(self.handler.readmodels()), self.handler.name().to_owned());
        let mut changes = rm.changes();
        let mut next_try = tokio::time::Instant::now();
        let mut announced = false;
        loop {
            if *self.shutdown.borrow() {
                return false;
            }
            let held_off = self
                .dlq
                .hold_off_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| std::time::Instant::now() < t);
            if !held_off && tokio::time::Instant::now() >= next_try {
                let (rm, candidate) = (Arc::clone(&rm), name.clone());
                match blocking(move || rm.try_lead(&candidate)).await {
                    Ok(true) => return true,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(consumer = %name, error = %e, "cannot try to lead"),
                }
                next_try = tokio::time::Instant::now() + TAKEOVER_INTERVAL;
                if !announced {
                    tracing::info!(consumer = %name, "another process leads this consumer; following it");
                    announced = true;
                }
            }
            let (rm2, name2) = (Arc::clone(&rm), name.clone());
            if let Ok((p, depth)) = blocking(move || {
                Ok((rm2.checkpoint(&name2)?, rm2.dead_letters(Some(&name2))?.len() as u64))
            })
            .await
            {
                position_tx.send_if_modified(|cur| {
                    let newer = p > *cur;
                    if newer {
                        *cur = p;
                    }
                    newer
                });
                self.dlq.depth.store(depth, Ordering::Relaxed);
                set(&self.status, ConsumerStatus::Running);
            }
            let wait =
                FOLLOW_POLL.min(next_try.saturating_duration_since(tokio::time::Instant::now()));
            let checkpoint_moved = async {
                match changes.as_mut() {
                    Some(c) => {
                        let _ = c.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = checkpoint_moved => {}
                () = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// Reads the checkpoint and the dead letters this consumer starts from (retrying).
    async fn start_position(&mut self, shutdown: &watch::Receiver<bool>) -> Result<u64, Stop> {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            if *shutdown.borrow() {
                return Err(Stop::Shutdown);
            }
            let (rm, name) =
                (Arc::clone(self.handler.readmodels()), self.handler.name().to_owned());
            let started =
                blocking(move || Ok((rm.checkpoint(&name)?, rm.dead_letters(Some(&name))?))).await;
            match started {
                Ok((p, letters)) => {
                    for l in &letters {
                        self.dlq.block(&l.aggregate_id);
                    }
                    self.dlq.depth.store(letters.len() as u64, Ordering::Relaxed);
                    return Ok(p);
                }
                Err(e) => {
                    tracing::error!(consumer = self.handler.name(), error = %e, "cannot read checkpoint; retrying");
                    set(&self.status, ConsumerStatus::Stalled);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Paused between batches (nothing in hand, the checkpoint still): waits for a resume
    /// and answers the position to go on from (`None`: woken by shutdown instead).
    async fn sit_out_pause(
        &mut self,
        paused: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
        position_tx: &watch::Sender<u64>,
    ) -> Result<Option<u64>, Stop> {
        set(&self.status, ConsumerStatus::Paused);
        tokio::select! {
            resumed = paused.wait_for(|p| !*p) => if resumed.is_err() { return Err(Stop::Shutdown) },
            _ = shutdown.changed() => return Ok(None),
        }
        // While paused, an operator may have moved the checkpoint (a process manager's
        // state imported with `cairn import`): go on from the stored one.
        let position = self.start_position(shutdown).await?;
        // Never backwards for `wait_for`: a stored checkpoint can trail the published
        // position only over skipped events, which nothing waits on.
        position_tx.send_if_modified(|p| {
            let newer = position > *p;
            if newer {
                *p = position;
            }
            newer
        });
        set(&self.status, ConsumerStatus::Running);
        Ok(Some(position))
    }

    /// Runs the consumer from its checkpoint until shutdown or lost leadership.
    #[allow(clippy::too_many_lines)] // one loop; its state (position, prefetch, saves) spans every step
    async fn lead(
        &mut self,
        store: &Arc<dyn EventStore>,
        position_tx: &watch::Sender<u64>,
    ) -> Stop {
        let filter =
            AllFilter { event_types: self.handler.event_types(), aggregate_types: Vec::new() };
        let mut shutdown = self.shutdown.clone();
        let mut head = store.head();
        let mut paused = self.dlq.paused.subscribe();
        let mut handover = self.dlq.handover.subscribe();
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut position = match self.start_position(&shutdown).await {
            Ok(p) => p,
            Err(stop) => return stop,
        };
        position_tx.send_replace(position);
        set(&self.status, ConsumerStatus::Running);
        // With followers on other processes, a checkpoint must also move over events this
        // consumer skips (other types, other partitions), or their `min_position` waits
        // would never end; throttled, since every commit wakes every consumer.
        let followed = self.handler.readmodels().changes().is_some();
        let (mut saved, mut last_save, mut pending) = (position, std::time::Instant::now(), false);
        let mut prefetched: Option<
            tokio::task::JoinHandle<Result<cairn_core::AllSlice, cairn_core::ReadError>>,
        > = None;
        loop {
            if *shutdown.borrow() {
                return Stop::Shutdown;
            }
            if *handover.borrow_and_update() {
                self.dlq.handover.send_replace(false);
                tracing::info!(consumer = self.handler.name(), "handing leadership over");
                return Stop::Lost;
            }
            if *paused.borrow_and_update() {
                match self.sit_out_pause(&mut paused, &mut shutdown, position_tx).await {
                    Err(stop) => return stop,
                    Ok(Some(p)) => (prefetched, position, saved, pending) = (None, p, p, false),
                    Ok(None) => {}
                }
                continue;
            }
            head.borrow_and_update();
            let read = match prefetched.take() {
                Some(next) => next
                    .await
                    .unwrap_or_else(|e| Err(cairn_core::ReadError::Unavailable(e.to_string()))),
                None => store.read_all(position, BATCH_EVENTS_MAX, &filter).await,
            };
            let slice = match read {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(consumer = self.handler.name(), error = %e, "reading $all failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = RETRY_BACKOFF_MIN;
            if *paused.borrow() {
                // Paused while the page was read: dropped unhandled, so nothing is handled
                // once the operator has seen "paused" (the loop's top sits the pause out).
                continue;
            }
            // A page the stores cut at their byte cap is short but not the end: whether
            // more is visible is the head's to say, not the page's length.
            let more = slice.events.len() == BATCH_EVENTS_MAX || slice.scanned_to < *head.borrow();
            let mut slice = slice;
            if let Some(p) = self.partition {
                slice.events.retain(|e| p.owns(&e.aggregate_id));
            }
            if more {
                // Catching up: read the next batch while this one is applied.
                let (store, filter, from) = (Arc::clone(store), filter.clone(), slice.scanned_to);
                prefetched = Some(tokio::spawn(async move {
                    store.read_all(from, BATCH_EVENTS_MAX, &filter).await
                }));
            }
            let skipped = slice.events.is_empty();
            if !skipped {
                match self.process(slice.events, slice.scanned_to).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Some(next) = prefetched.take() {
                            next.abort();
                        }
                        continue;
                    }
                    Err(stop) => return stop,
                }
                (saved, last_save, pending) = (slice.scanned_to, std::time::Instant::now(), false);
            }
            if skipped && followed && slice.scanned_to > saved {
                if last_save.elapsed() >= MIRRORED_CHECKPOINT_EVERY {
                    match self.save_skipped(slice.scanned_to).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(stop) => return stop,
                    }
                    (saved, last_save, pending) =
                        (slice.scanned_to, std::time::Instant::now(), false);
                } else {
                    pending = true;
                }
            }
            position = position.max(slice.scanned_to);
            position_tx.send_replace(position);
            if !more {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return Stop::Shutdown },
                    _ = shutdown.changed() => {}
                    _ = paused.changed() => {}
                    _ = handover.changed() => {}
                    () = tokio::time::sleep(MIRRORED_CHECKPOINT_EVERY), if pending => {
                        match self.save_skipped(position).await {
                            Ok(true) => {
                                (saved, last_save, pending) =
                                    (position, std::time::Instant::now(), false);
                            }
                            Ok(false) => {}
                            Err(stop) => return stop,
                        }
                    }
                }
            }
        }
    }
}
