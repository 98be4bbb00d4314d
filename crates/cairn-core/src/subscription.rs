//! Catch-up-then-live subscriptions to `$all`, built on any [`EventStore`].
//!
//! The subscriber only ever asks the store for events with position greater than the
//! last one it yielded, and waits on the store's head watch when it has caught up. So the
//! switch from catch-up to live cannot open a gap or repeat an event: there is no switch,
//! just the same read with a wait in between.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;

use crate::envelope::RecordedEvent;
use crate::error::ReadError;
use crate::store::{AllFilter, EventStore};

/// How many events one catch-up read fetches.
pub const SUBSCRIPTION_BATCH_EVENTS: usize = 512;

struct State {
    store: Arc<dyn EventStore>,
    filter: AllFilter,
    position: u64,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<u64>,
    failed: bool,
}

/// Every event (matching `filter`) with position > `from_position`, then every new one as
/// it commits. Ends only after yielding an error, or when the store's head watch closes.
pub fn subscribe_all(
    store: Arc<dyn EventStore>,
    from_position: u64,
    filter: AllFilter,
) -> impl Stream<Item = Result<RecordedEvent, ReadError>> + Send + 'static {
    // Take the watch before the first read: a commit between the read and the wait is
    // then seen as a change, never missed.
    let head = store.head();
    let state = State {
        store,
        filter,
        position: from_position,
        buffer: VecDeque::new(),
        head,
        failed: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            if let Some(e) = s.buffer.pop_front() {
                return Some((Ok(e), s));
            }
            s.head.borrow_and_update();
            match s.store.read_all(s.position, SUBSCRIPTION_BATCH_EVENTS, &s.filter).await {
                Ok(slice) => {
                    s.position = s.position.max(slice.scanned_to);
                    if slice.events.is_empty() {
                        if s.head.changed().await.is_err() {
                            return None;
                        }
                    } else {
                        s.buffer.extend(slice.events);
                    }
                }
                Err(e) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
            }
        }
    })
}
