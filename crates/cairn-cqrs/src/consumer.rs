//! The loop shared by projections and process managers: follow `$all` from a checkpoint,
//! hand over batches, publish the position, sleep on the store's head watch (no polling).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{AllFilter, EventStore, RecordedEvent};
use serde::Serialize;
use tokio::sync::watch;

/// Events handed to a consumer per batch.
pub const BATCH_EVENTS_MAX: usize = 2000;
/// Longest pause between retries of a failing batch.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a consumer is doing (contract §6 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Its handler keeps failing; it retries with backoff.
    Stalled,
    /// Stopped for good (e.g. its storage is gone).
    Failed,
}

/// A consumer's side of the loop.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Its name (the checkpoint key).
    fn name(&self) -> &str;
    /// The event types it wants (empty = all).
    fn event_types(&self) -> Vec<String>;
    /// The committed checkpoint to start from.
    async fn checkpoint(&self) -> Result<u64, String>;
    /// Handles `events` and commits the checkpoint `scanned_to` with their effects.
    async fn handle(&self, events: Vec<RecordedEvent>, scanned_to: u64) -> Result<(), String>;
}

/// Observes a running consumer: position, status, and waits for read-your-writes.
#[derive(Clone)]
pub struct ConsumerHandle {
    name: String,
    position: watch::Receiver<u64>,
    status: Arc<Mutex<ConsumerStatus>>,
    head: watch::Receiver<u64>,
}

impl ConsumerHandle {
    /// The consumer's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `$all` position it has scanned (handled or not).
    #[must_use]
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// The last position visible in `$all`.
    #[must_use]
    pub fn head_position(&self) -> u64 {
        *self.head.borrow()
    }

    /// Its status.
    #[must_use]
    pub fn status(&self) -> ConsumerStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
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

fn set(status: &Mutex<ConsumerStatus>, value: ConsumerStatus) {
    *status.lock().unwrap_or_else(PoisonError::into_inner) = value;
}

/// Starts the loop on the current runtime and returns its handle.
pub fn spawn(
    store: Arc<dyn EventStore>,
    handler: Arc<dyn BatchHandler>,
    mut shutdown: watch::Receiver<bool>,
) -> ConsumerHandle {
    let (position_tx, position_rx) = watch::channel(0);
    let status = Arc::new(Mutex::new(ConsumerStatus::Starting));
    let handle = ConsumerHandle {
        name: handler.name().to_owned(),
        position: position_rx,
        status: Arc::clone(&status),
        head: store.head(),
    };
    let filter = AllFilter { event_types: handler.event_types(), aggregate_type: None };
    tokio::spawn(async move {
        let mut head = store.head();
        let mut backoff = Duration::from_millis(50);
        let mut position = loop {
            match handler.checkpoint().await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::error!(consumer = handler.name(), error = %e, "cannot read checkpoint; retrying");
                    set(&status, ConsumerStatus::Stalled);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        };
        position_tx.send_replace(position);
        set(&status, ConsumerStatus::Running);
        let mut prefetched: Option<
            tokio::task::JoinHandle<Result<cairn_core::AllSlice, cairn_core::ReadError>>,
        > = None;
        loop {
            if *shutdown.borrow() {
                return;
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
                    tracing::warn!(consumer = handler.name(), error = %e, "reading $all failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    continue;
                }
            };
            let full = slice.events.len() == BATCH_EVENTS_MAX;
            if full {
                // Catching up: read the next batch while this one is applied.
                let (store, filter, from) = (Arc::clone(&store), filter.clone(), slice.scanned_to);
                prefetched = Some(tokio::spawn(async move {
                    store.read_all(from, BATCH_EVENTS_MAX, &filter).await
                }));
            }
            if !slice.events.is_empty() {
                let events = slice.events;
                let mut attempt = 0u32;
                loop {
                    match handler.handle(events.clone(), slice.scanned_to).await {
                        Ok(()) => break,
                        Err(e) => {
                            attempt += 1;
                            tracing::error!(consumer = handler.name(), attempt, error = %e, "batch failed; retrying");
                            set(&status, ConsumerStatus::Stalled);
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                _ = shutdown.changed() => return,
                            }
                            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                        }
                    }
                }
                set(&status, ConsumerStatus::Running);
                backoff = Duration::from_millis(50);
            }
            position = position.max(slice.scanned_to);
            position_tx.send_replace(position);
            if !full {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => {}
                }
            }
        }
    });
    handle
}
