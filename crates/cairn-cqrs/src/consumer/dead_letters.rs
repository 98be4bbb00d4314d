//! Dead letters: events that keep failing are parked, and so is every later event of
//! their aggregate (per-aggregate order), until an operator retries or discards them.
//!
//! With an empty queue the loop's fast path is one in-memory emptiness check per batch:
//! no extra query.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_core::readmodel::{DeadLetter, Fence};
use cairn_core::timestamp::Timestamp;
use cairn_core::{AllFilter, RecordedEvent};
use futures_util::FutureExt as _;
use serde::Serialize;

use super::{
    ConsumerHandle, ControlError, DEAD_LETTER_GATE_WAIT, HandleError, Shared, blocking,
    panic_message,
};

/// What became of a retried or discarded dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterOutcome {
    /// Dead letters of that aggregate still waiting (0 = it flows again).
    pub remaining: usize,
}

/// What the loop keeps in memory of its dead letters: the blocked aggregates and the
/// depth (the letters themselves live in the read-model store).
#[derive(Default)]
pub(super) struct DeadLetterQueue {
    blocked: Mutex<HashSet<String>>,
    depth: AtomicU64,
}

impl DeadLetterQueue {
    pub(super) fn is_blocked(&self, aggregate_id: &str) -> bool {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).contains(aggregate_id)
    }

    pub(super) fn any_blocked(&self) -> bool {
        !self.blocked.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    pub(super) fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// What a leader starts from: `letters` as stored.
    pub(super) fn load(&self, letters: &[DeadLetter]) {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.clear();
        blocked.extend(letters.iter().map(|l| l.aggregate_id.clone()));
        self.depth.store(letters.len() as u64, Ordering::Relaxed);
    }

    /// A follower's copy of the leader's depth; blocks nothing (it handles nothing).
    pub(super) fn mirror(&self, depth: u64) {
        self.depth.store(depth, Ordering::Relaxed);
    }

    /// Leadership lost: the next leader term reloads what is blocked.
    pub(super) fn forget_blocked(&self) {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// One letter fewer (never below zero: a follower may have mirrored a smaller count).
    fn release_one(&self) {
        let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }
}

impl Shared {
    async fn letters(&self) -> Result<Vec<DeadLetter>, HandleError> {
        let (rm, name) = (Arc::clone(self.handler.readmodels()), self.name().to_owned());
        blocking(move || rm.dead_letters(Some(&name))).await
    }

    /// Parks `event` and blocks its aggregate behind it.
    pub(super) async fn park(
        &self,
        fence: &Fence,
        event: &RecordedEvent,
        error: String,
        attempts: u32,
    ) -> Result<(), HandleError> {
        let now = Timestamp::now();
        let letter = DeadLetter {
            id: 0,
            projection: self.name().to_owned(),
            position: event.position,
            aggregate_id: event.aggregate_id.clone(),
            event_type: event.event_type.clone(),
            error,
            attempts,
            first_failed_at: now,
            last_failed_at: now,
        };
        let (rm, position, fence) =
            (Arc::clone(self.handler.readmodels()), event.position, fence.clone());
        blocking(move || rm.park(&fence, position, &letter)).await?;
        self.letters
            .blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(event.aggregate_id.clone());
        self.letters.depth.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Re-runs the chain of `aggregate_id`'s dead letters in order, stopping at the first
    /// that still fails. Returns how many remain.
    async fn replay_chain(&self, fence: &Fence, aggregate_id: &str) -> Result<usize, HandleError> {
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
            let retried = AssertUnwindSafe(self.handler.retry(fence, event, letter.id))
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
                    self.letters.release_one();
                }
                Err(e @ HandleError::Deposed(_)) => return Err(e),
                Err(e) => {
                    let (rm, id, message, name, fence) = (
                        Arc::clone(self.handler.readmodels()),
                        letter.id,
                        e.to_string(),
                        self.name().to_owned(),
                        fence.clone(),
                    );
                    blocking(move || rm.dead_letter_failed(&fence, &name, id, &message)).await?;
                    return Ok(remaining);
                }
            }
        }
        self.letters.blocked.lock().unwrap_or_else(PoisonError::into_inner).remove(aggregate_id);
        Ok(0)
    }
}

impl ConsumerHandle {
    /// Events waiting in its dead letter queue.
    #[must_use]
    pub fn dlq_depth(&self) -> u64 {
        self.shared.letters.depth()
    }

    /// Its dead letters, in position order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ControlError> {
        Ok(self.shared.letters().await?)
    }

    /// Waits for the consumer's gate, at most [`DEAD_LETTER_GATE_WAIT`].
    async fn gate_for_letters(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ControlError> {
        tokio::time::timeout(DEAD_LETTER_GATE_WAIT, self.shared.gate.lock())
            .await
            .map_err(|_| ControlError::Busy { consumer: self.name.clone() })
    }

    /// Dead letter `id` if it is this consumer's (`None` otherwise); acting on it needs
    /// this process to lead the consumer: the letter comes with the fence of its term.
    /// The caller holds the gate.
    async fn own_letter(&self, id: i64) -> Result<Option<(DeadLetter, Fence)>, ControlError> {
        let letters = self.shared.letters().await?;
        let Some(letter) = letters.into_iter().find(|l| l.id == id) else { return Ok(None) };
        let fence = self.require_leader()?;
        Ok(Some((letter, fence)))
    }

    /// Re-runs dead letter `id` and the events parked behind it, in order.
    /// `Ok(None)` when this consumer has no such letter.
    pub async fn retry_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<DeadLetterOutcome>, ControlError> {
        let _gate = self.gate_for_letters().await?;
        let Some((letter, fence)) = self.own_letter(id).await? else { return Ok(None) };
        let remaining = self.shared.replay_chain(&fence, &letter.aggregate_id).await?;
        Ok(Some(DeadLetterOutcome { remaining }))
    }

    /// Drops dead letter `id` (its event is never applied); when it headed a chain, the
    /// events parked behind it are re-run. `Ok(None)` when this consumer has no such letter.
    pub async fn discard_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<DeadLetterOutcome>, ControlError> {
        let _gate = self.gate_for_letters().await?;
        let Some((letter, fence)) = self.own_letter(id).await? else { return Ok(None) };
        let (rm, name, held) =
            (Arc::clone(self.shared.handler.readmodels()), self.name.clone(), fence.clone());
        blocking(move || rm.resolve_dead_letter(&held, &name, id, &mut |_| Ok(()))).await?;
        self.shared.letters.release_one();
        let remaining = self.shared.replay_chain(&fence, &letter.aggregate_id).await?;
        Ok(Some(DeadLetterOutcome { remaining }))
    }
}
