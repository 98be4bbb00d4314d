//! One reader of `$all` per process, shared by every consumer at the log's tail.
//!
//! Every projection, process manager and subscription follows `$all`; each used to read
//! the store itself on every commit, so a process with seven consumers read each new event
//! seven times. [`TailCache`] wraps a store: one task (the filler) reads what is new, once,
//! into a bounded window of the most recent events, and `read_all` calls that start inside
//! the window are answered from memory. Everything else goes to the store underneath.
//!
//! The window holds *every* event of `(start, end]`, unfiltered, in position order, and the
//! filler fills it only with what the store's own `read_all` returned, moving `end` to that
//! read's `scanned_to`. So an answer from the window is the answer the store would have
//! given (or a prefix of it): a reader that never skips a committed event through the store
//! never skips one through the cache. A reader at the window's end while the store's head
//! is past it waits a moment for the filler (the wake-ups of all consumers coalesce into
//! the filler's one read), then falls back to the store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::store::{
    AllFilter, AllSlice, Append, AppendOutcome, EventStore, IdempotencyKey, IdempotencyRecord,
    Refusal, StreamRead, StreamSlice, StreamStats,
};
use crate::{AppendError, ReadError, RecordedEvent};

/// Most events the window holds.
pub const WINDOW_EVENTS_MAX: usize = 20_000;
/// Most bytes of event data and metadata the window holds.
pub const WINDOW_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Events the filler reads per call.
const FILL_PAGE_EVENTS: usize = 2000;
/// Bytes of one answer from the window (as the backends' pages).
const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long a reader at the window's end waits for the filler before reading the store.
const TAIL_WAIT: Duration = Duration::from_millis(200);
/// Pause after a failed fill, before trying again.
const FILL_RETRY: Duration = Duration::from_millis(100);

/// The window: every event in `(start, end]`.
struct Window {
    events: VecDeque<RecordedEvent>,
    start: u64,
    end: u64,
    bytes: usize,
}

fn size(e: &RecordedEvent) -> usize {
    e.data.get().len() + e.metadata.get().len() + e.aggregate_id.len() + e.event_type.len()
}

impl Window {
    /// Erases the events at `positions`, as [`EventStore::redact`] did in the store.
    fn redact(&mut self, positions: &[u64]) {
        for &p in positions {
            if let Ok(i) = self.events.binary_search_by_key(&p, |e| e.position) {
                let e = &mut self.events[i];
                self.bytes -= size(e);
                crate::lifecycle::SCAVENGED_EVENT.clone_into(&mut e.event_type);
                e.data = crate::envelope::empty_object();
                e.metadata = crate::envelope::empty_object();
                self.bytes += size(e);
            }
        }
    }

    fn push(&mut self, events: Vec<RecordedEvent>, scanned_to: u64) {
        for e in events {
            self.bytes += size(&e);
            self.events.push_back(e);
        }
        self.end = self.end.max(scanned_to);
        while self.events.len() > WINDOW_EVENTS_MAX || self.bytes > WINDOW_BYTES_MAX {
            let Some(first) = self.events.pop_front() else { break };
            self.bytes -= size(&first);
            self.start = first.position;
        }
    }

    /// The answer for `(from, …]`, if `from` lies in the window.
    fn answer(&self, from: u64, limit: usize, filter: &AllFilter) -> Option<AllSlice> {
        if from < self.start || from >= self.end {
            return None;
        }
        let first = self.events.partition_point(|e| e.position <= from);
        let mut events = Vec::new();
        let mut bytes = 0;
        for e in self.events.range(first..) {
            if !filter.matches(e) {
                continue;
            }
            bytes += e.data.get().len() + e.metadata.get().len();
            events.push(e.clone());
            if events.len() >= limit || bytes > PAGE_BYTES_MAX {
                let scanned_to = e.position;
                return Some(AllSlice { events, scanned_to });
            }
        }
        Some(AllSlice { events, scanned_to: self.end })
    }
}

/// A store whose `$all` tail is read once per process.
pub struct TailCache {
    inner: Arc<dyn EventStore>,
    window: Arc<Mutex<Window>>,
    end: watch::Receiver<u64>,
    filler: tokio::task::JoinHandle<()>,
}

impl TailCache {
    /// Wraps `inner` and starts the filler (on the current tokio runtime). The window
    /// starts empty at the store's head: older reads go to the store.
    #[must_use]
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        let head = *inner.head().borrow();
        let window = Arc::new(Mutex::new(Window {
            events: VecDeque::new(),
            start: head,
            end: head,
            bytes: 0,
        }));
        let (end_tx, end) = watch::channel(head);
        let filler =
            tokio::spawn(fill(Arc::clone(&inner), Arc::clone(&window), end_tx, inner.head()));
        Self { inner, window, end, filler }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.filler.abort();
    }
}

/// Reads what is new into the window, once, whenever the head moves.
async fn fill(
    inner: Arc<dyn EventStore>,
    window: Arc<Mutex<Window>>,
    end_tx: watch::Sender<u64>,
    mut head: watch::Receiver<u64>,
) {
    loop {
        let end = *end_tx.borrow();
        if *head.borrow_and_update() <= end {
            if head.changed().await.is_err() {
                return;
            }
            continue;
        }
        match inner.read_all(end, FILL_PAGE_EVENTS, &AllFilter::default()).await {
            Ok(page) if page.scanned_to > end => {
                let scanned_to = page.scanned_to;
                window.lock().unwrap_or_else(PoisonError::into_inner).push(page.events, scanned_to);
                end_tx.send_replace(scanned_to);
            }
            // The head moved before the commit is visible to reads: wait for the next move.
            Ok(_) => tokio::time::sleep(FILL_RETRY).await,
            Err(e) => {
                tracing::warn!(error = %e, "the shared $all reader could not read; retrying");
                tokio::time::sleep(FILL_RETRY).await;
            }
        }
    }
}

#[async_trait]
impl EventStore for TailCache {
    async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        self.inner.append(append).await
    }

    async fn read_stream_raw(
        &self,
        aggregate_id: &str,
        read: StreamRead,
    ) -> Result<StreamSlice, ReadError> {
        self.inner.read_stream_raw(aggregate_id, read).await
    }

    async fn stream_state(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<crate::lifecycle::StreamState>, ReadError> {
        self.inner.stream_state(aggregate_id).await
    }

    async fn redact(&self, positions: &[u64]) -> Result<u64, AppendError> {
        let changed = self.inner.redact(positions).await?;
        // The window holds copies of the log: they are erased too, or a `$all` reader
        // served from it would still see what the scavenge removed.
        self.lock().redact(positions);
        Ok(changed)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
        filter: &AllFilter,
    ) -> Result<AllSlice, ReadError> {
        if limit == 0 {
            return self.inner.read_all(from_position, limit, filter).await;
        }
        // The window answers only once it holds everything the store has made visible as
        // this call came in: a reader right after an append sees that append, as with the
        // store itself.
        let head = *self.inner.head().borrow();
        let start = {
            let w = self.lock();
            if w.end >= head {
                if from_position >= w.start && from_position >= w.end {
                    // Nothing after `from`: what the store would answer, without asking it.
                    return Ok(AllSlice { events: Vec::new(), scanned_to: from_position });
                }
                if let Some(slice) = w.answer(from_position, limit, filter) {
                    return Ok(slice);
                }
            }
            w.start
        };
        // Inside the window, or at its end, while the filler is still reading the newest
        // events: wait for it rather than read the same events again.
        if from_position >= start {
            let mut moved = self.end.clone();
            let waited = tokio::time::timeout(TAIL_WAIT, moved.wait_for(|e| *e >= head)).await;
            if matches!(waited, Ok(Ok(_)))
                && let Some(slice) = self.lock().answer(from_position, limit, filter)
            {
                return Ok(slice);
            }
        }
        self.inner.read_all(from_position, limit, filter).await
    }

    async fn stream_version(&self, aggregate_id: &str) -> Result<u64, ReadError> {
        self.inner.stream_version(aggregate_id).await
    }

    async fn stream_stats(&self, top: usize) -> Result<Vec<StreamStats>, ReadError> {
        self.inner.stream_stats(top).await
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotencyRecord>, ReadError> {
        self.inner.idempotent_result(key).await
    }

    async fn record_refusal(
        &self,
        key: IdempotencyKey,
        aggregate_id: String,
        refusal: Refusal,
    ) -> Result<IdempotencyRecord, AppendError> {
        self.inner.record_refusal(key, aggregate_id, refusal).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn check_health(&self) -> Result<(), AppendError> {
        self.inner.check_health().await
    }

    async fn close(&self) {
        self.filler.abort();
        self.inner.close().await;
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        let (events, bytes) = {
            let w = self.lock();
            (w.events.len(), w.bytes)
        };
        let mut gauges = self.inner.gauges();
        gauges.push(("cairn_tail_cache_events", events as f64));
        gauges.push(("cairn_tail_cache_bytes", bytes as f64));
        gauges
    }
}
