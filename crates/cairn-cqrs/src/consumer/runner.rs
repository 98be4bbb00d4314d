//! The catch-up loop: while this process leads the consumer, read `$all` from its
//! checkpoint batch by batch (reading the next while one is applied), hand batches over,
//! publish the position, and sleep on the store's head watch when caught up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::readmodel::Fence;
use cairn_core::{AllFilter, RecordedEvent};
use futures_util::FutureExt as _;
use tokio::sync::watch;

use super::status::Transition;
use super::{BATCH_EVENTS_MAX, EVENT_ATTEMPTS_MAX, HandleError, Partition, Shared, blocking};
use super::{panic_message, rebuild};

/// Longest pause between retries of a failing batch.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First pause between retries.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Most often a checkpoint is written only to move over skipped events (for followers).
const MIRRORED_CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Why the leading loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The process is shutting down.
    Shutdown,
    /// Another process may now lead this consumer (the leadership session is gone).
    Lost,
}

/// The running loop's state.
pub(super) struct Runner {
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: watch::Receiver<bool>,
    partition: Option<Partition>,
    position_tx: watch::Sender<u64>,
}

type Prefetch = tokio::task::JoinHandle<Result<cairn_core::AllSlice, cairn_core::ReadError>>;

impl Runner {
    /// Spawns the loop: follow until leading, lead until shutdown or lost, and again.
    pub(super) fn start(
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
        partition: Option<Partition>,
        position_tx: watch::Sender<u64>,
    ) {
        let mut runner = Self { shared, shutdown, partition, position_tx };
        tokio::spawn(async move {
            loop {
                if !runner.follow().await {
                    return;
                }
                tracing::info!(consumer = runner.shared.name(), "leading");
                rebuild::start_queued(&runner.shared).await;
                let stop = runner.lead().await;
                runner.shared.leadership.lost();
                // The rebuild belongs to the term: it ends with it, before the lease is
                // given back (its shadow stays, recorded by its checkpoint, for the next
                // leader to start over).
                rebuild::cancel(&runner.shared).await;
                let (rm, name) = (
                    Arc::clone(runner.shared.handler.readmodels()),
                    runner.shared.name().to_owned(),
                );
                let _ = tokio::task::spawn_blocking(move || rm.resign(&name)).await;
                match stop {
                    Stop::Shutdown => return,
                    Stop::Lost => {
                        tracing::warn!(
                            consumer = runner.shared.name(),
                            "leadership lost; following"
                        );
                        runner.shared.letters.forget_blocked();
                    }
                }
            }
        });
    }

    /// Publishes `position` unless an earlier one is already further (`wait_for` never
    /// goes backwards).
    pub(super) fn publish_forward(&self, position: u64) {
        self.position_tx.send_if_modified(|cur| {
            let newer = position > *cur;
            if newer {
                *cur = position;
            }
            newer
        });
    }

    /// Reads the checkpoint and the dead letters this consumer starts from (retrying).
    pub(super) async fn start_position(
        &mut self,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<u64, Stop> {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            if *shutdown.borrow() {
                return Err(Stop::Shutdown);
            }
            let (rm, name) =
                (Arc::clone(self.shared.handler.readmodels()), self.shared.name().to_owned());
            let started =
                blocking(move || Ok((rm.checkpoint(&name)?, rm.dead_letters(Some(&name))?))).await;
            match started {
                Ok((p, letters)) => {
                    self.shared.letters.load(&letters);
                    return Ok(p);
                }
                Err(e) => {
                    tracing::error!(consumer = self.shared.name(), error = %e, "cannot read checkpoint; retrying");
                    self.shared.apply(Transition::StorageFailed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Runs the consumer from its checkpoint until shutdown or lost leadership.
    #[allow(clippy::too_many_lines)] // one loop; its state (position, prefetch, saves) spans every step
    async fn lead(&mut self) -> Stop {
        let store = Arc::clone(&self.shared.store);
        let filter = AllFilter {
            event_types: self.shared.handler.event_types(),
            aggregate_types: Vec::new(),
        };
        let mut shutdown = self.shutdown.clone();
        let mut head = store.head();
        let mut control = self.shared.status.subscribe();
        let mut handover = self.shared.leadership.handover();
        let mut backoff = RETRY_BACKOFF_MIN;
        let Some(fence) = self.shared.leadership.fence() else { return Stop::Lost };
        let mut position = match self.start_position(&shutdown).await {
            Ok(p) => p,
            Err(stop) => return stop,
        };
        self.position_tx.send_replace(position);
        self.shared.apply(Transition::Progressed);
        // With followers on other processes, a checkpoint must also move over events this
        // consumer skips (other types, other partitions), or their `min_position` waits
        // would never end; throttled, since every commit wakes every consumer.
        let followed = self.shared.handler.readmodels().changes().is_some();
        let (mut saved, mut last_save, mut pending) = (position, Instant::now(), false);
        let mut prefetched: Option<Prefetch> = None;
        loop {
            if *shutdown.borrow() {
                return Stop::Shutdown;
            }
            if *handover.borrow_and_update() {
                self.shared.leadership.handed_over();
                tracing::info!(consumer = self.shared.name(), "handing leadership over");
                return Stop::Lost;
            }
            if control.borrow_and_update().pause_requested() {
                match self.sit_out_pause(&mut control, &mut shutdown).await {
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
                    tracing::warn!(consumer = self.shared.name(), error = %e, "reading $all failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = RETRY_BACKOFF_MIN;
            if self.shared.status.borrow().pause_requested() {
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
                let (store, filter, from) = (Arc::clone(&store), filter.clone(), slice.scanned_to);
                prefetched = Some(tokio::spawn(async move {
                    store.read_all(from, BATCH_EVENTS_MAX, &filter).await
                }));
            }
            let skipped = slice.events.is_empty();
            if !skipped {
                match self.process(&fence, slice.events, slice.scanned_to).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Some(next) = prefetched.take() {
                            next.abort();
                        }
                        continue;
                    }
                    Err(stop) => return stop,
                }
                (saved, last_save, pending) = (slice.scanned_to, Instant::now(), false);
            }
            if skipped && followed && slice.scanned_to > saved {
                if last_save.elapsed() >= MIRRORED_CHECKPOINT_EVERY {
                    match self.save_skipped(&fence, slice.scanned_to).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(stop) => return stop,
                    }
                    (saved, last_save, pending) = (slice.scanned_to, Instant::now(), false);
                } else {
                    pending = true;
                }
            }
            position = position.max(slice.scanned_to);
            self.position_tx.send_replace(position);
            let coalesce = self.shared.handler.coalesce();
            if !more && !skipped && !coalesce.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(coalesce) => {}
                    _ = shutdown.changed() => {}
                    _ = control.changed() => {}
                    _ = handover.changed() => {}
                }
                continue;
            }
            if !more {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return Stop::Shutdown },
                    _ = shutdown.changed() => {}
                    _ = control.changed() => {}
                    _ = handover.changed() => {}
                    () = tokio::time::sleep(MIRRORED_CHECKPOINT_EVERY), if pending => {
                        match self.save_skipped(&fence, position).await {
                            Ok(true) => {
                                (saved, last_save, pending) = (position, Instant::now(), false);
                            }
                            Ok(false) => {}
                            Err(stop) => return stop,
                        }
                    }
                }
            }
        }
    }

    /// Handles a batch; an event error is retried `EVENT_ATTEMPTS_MAX` times, a
    /// transient one until it works. Returns the event error that remained, if any.
    async fn attempt(
        &mut self,
        fence: &Fence,
        events: &[RecordedEvent],
        scanned_to: u64,
    ) -> Result<Option<String>, Stop> {
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut event_failures = 0;
        loop {
            // A panicking handler is the event's fault like a refusing one: retried a few
            // times, then dead-lettered; never a stall, never a dead loop.
            let handled =
                AssertUnwindSafe(self.shared.handler.handle(fence, events.to_vec(), scanned_to))
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
                    self.shared.apply(Transition::Progressed);
                    return Ok(None);
                }
                Err(e) => e,
            };
            // Whatever failed, a process that lost the consumer must not try again: its
            // successor is handling these events now (and the store refuses this term's
            // writes anyway).
            if matches!(error, HandleError::Deposed(_))
                || !self.shared.handler.readmodels().leads(self.shared.name())
            {
                return Err(Stop::Lost);
            }
            match error {
                HandleError::Event(e) => {
                    event_failures += 1;
                    if event_failures >= EVENT_ATTEMPTS_MAX {
                        return Ok(Some(e));
                    }
                }
                HandleError::Deposed(_) => return Err(Stop::Lost),
                HandleError::Transient(e) => {
                    tracing::error!(consumer = self.shared.name(), error = %e, "storage failed; retrying");
                    self.shared.apply(Transition::StorageFailed);
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
    async fn process(
        &mut self,
        fence: &Fence,
        events: Vec<RecordedEvent>,
        scanned_to: u64,
    ) -> Result<bool, Stop> {
        let shared = Arc::clone(&self.shared);
        let _gate = shared.gate.lock().await;
        // Under the gate: an operator who paused the consumer and then holds the gate
        // (e.g. to import a process manager's state) knows no batch runs after that.
        if shared.status.borrow().pause_requested() {
            return Ok(false);
        }
        if !shared.letters.any_blocked()
            && self.attempt(fence, &events, scanned_to).await?.is_none()
        {
            return Ok(true);
        }
        // Slow path: event by event, so that one bad event (or a blocked aggregate) does
        // not hold back the others.
        for event in events {
            let error = if shared.letters.is_blocked(&event.aggregate_id) {
                Some((format!("parked behind an earlier dead letter of {}", event.aggregate_id), 0))
            } else {
                self.attempt(fence, std::slice::from_ref(&event), event.position)
                    .await?
                    .map(|e| (e, EVENT_ATTEMPTS_MAX))
            };
            if let Some((error, attempts)) = error {
                tracing::warn!(consumer = shared.name(), position = event.position, %error, "event dead-lettered");
                let mut backoff = RETRY_BACKOFF_MIN;
                while let Err(e) = shared.park(fence, &event, error.clone(), attempts).await {
                    if matches!(e, HandleError::Deposed(_))
                        || !shared.handler.readmodels().leads(shared.name())
                    {
                        return Err(Stop::Lost);
                    }
                    tracing::error!(consumer = shared.name(), error = %e, "cannot park; retrying");
                    shared.apply(Transition::StorageFailed);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.changed() => return Err(Stop::Shutdown),
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        // The checkpoint also covers the filtered-out tail of the batch.
        self.attempt(fence, &[], scanned_to).await.map(|_| true)
    }

    /// Moves the checkpoint over skipped events (for followers), under the gate like a
    /// batch. `Ok(false)`: paused meanwhile, not moved.
    async fn save_skipped(&mut self, fence: &Fence, position: u64) -> Result<bool, Stop> {
        let shared = Arc::clone(&self.shared);
        let _gate = shared.gate.lock().await;
        if shared.status.borrow().pause_requested() {
            return Ok(false);
        }
        self.attempt(fence, &[], position).await.map(|_| true)
    }
}
