//! A byte bound on the appends waiting for a store's writer.
//!
//! The writer queue is bounded by count, but one append may carry up to
//! [`crate::store::APPEND_EVENTS_MAX`] events of any size, so a count alone lets a burst of
//! large appends hold gigabytes. Each append reserves its size here before it is queued
//! and gives it back once answered: past the budget, callers wait (back-pressure), as they
//! do when the queue is full.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Append, AppendError};

/// Default bytes of event data and metadata queued for (or being committed by) the
/// writer at once.
pub const QUEUED_APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The budget is counted in KiB: a semaphore holds at most `u32::MAX >> 3` permits.
const UNIT: usize = 1024;

/// Bytes reserved by queued appends.
#[derive(Debug, Clone)]
pub struct AppendBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// A reservation, given back when dropped (after the writer answered).
#[derive(Debug)]
pub struct Reserved(#[allow(dead_code)] OwnedSemaphorePermit);

impl AppendBudget {
    /// A budget of `max_bytes` (at least one KiB, at most what a semaphore can count).
    #[must_use]
    pub fn new(max_bytes: usize) -> Self {
        let units = (max_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        Self { permits: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// Waits until `append`'s bytes fit in the budget, and reserves them. An append larger
    /// than the whole budget waits for the queue to empty and then goes alone.
    pub async fn reserve(&self, append: &Append) -> Result<Reserved, AppendError> {
        let units = size_of(append).div_ceil(UNIT).clamp(1, self.units as usize);
        let units = u32::try_from(units).unwrap_or(self.units);
        Arc::clone(&self.permits)
            .acquire_many_owned(units)
            .await
            .map(Reserved)
            .map_err(|_| AppendError::ShuttingDown)
    }

    /// Bytes reserved now (queued or being committed), rounded to KiB.
    #[must_use]
    pub fn reserved_bytes(&self) -> usize {
        (self.units as usize - self.permits.available_permits()) * UNIT
    }
}

/// What an append holds in memory: its events' data, metadata and type names.
fn size_of(append: &Append) -> usize {
    append.aggregate_id.len()
        + append
            .events
            .iter()
            .map(|e| e.data.get().len() + e.metadata.get().len() + e.event_type.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, NewEvent};
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn append_of_bytes(bytes: usize) -> Append {
        let data = format!("\"{}\"", "x".repeat(bytes));
        Append {
            aggregate_id: "a".into(),
            aggregate_type: "T".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("E", RawValue::from_string(data).unwrap())],
            idempotency: None,
        }
    }

    #[tokio::test]
    async fn appends_past_the_budget_wait_until_earlier_ones_are_answered() {
        let budget = AppendBudget::new(1024 * 1024);
        let first = budget.reserve(&append_of_bytes(700 * 1024)).await.unwrap();
        assert!(budget.reserved_bytes() >= 700 * 1024);
        let second = append_of_bytes(400 * 1024);
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.reserve(&second));
        assert!(waiting.await.is_err(), "over the budget: waits");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), budget.reserve(&second))
            .await
            .expect("room again once the first was answered")
            .unwrap();
        // Larger than the whole budget: goes alone once the queue is empty.
        let huge = append_of_bytes(3 * 1024 * 1024);
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.reserve(&huge));
        assert!(waiting.await.is_err());
        drop(second);
        let alone = budget.reserve(&huge).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 1024 * 1024);
        drop(alone);
        assert_eq!(budget.reserved_bytes(), 0);
    }
}
