//! Proof of leadership that every consumer write carries.

use std::sync::Arc;

/// Proof that this process led `consumer` in term `epoch`: every write a consumer makes
/// takes one, and the store compares it with the consumer's current term inside the
/// write's own transaction. A deposed leader's fence names a term that is over, so its
/// writes are refused ([`super::ReadModelError::Fenced`]) and write nothing.
///
/// Obtained only from [`super::Leases::try_lead`]: there is no public way to make one,
/// so a write without proof of leadership cannot be expressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    consumer: Arc<str>,
    epoch: u64,
}

impl Fence {
    /// For [`super::Leases`] backends only: the fence of the term `epoch` a backend has
    /// just durably begun for `consumer`. Anything else calling it defeats the fencing.
    #[doc(hidden)]
    #[must_use]
    pub fn issued(consumer: &str, epoch: u64) -> Self {
        Self { consumer: Arc::from(consumer), epoch }
    }

    /// The consumer whose leadership it proves (never a `#rebuild` name).
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The term: grows each time any process takes the consumer.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `Ok` when this fence covers writes made under `consumer`'s name (the consumer or
    /// its rebuild); a fence of another consumer proves nothing about this one.
    pub fn covers(&self, consumer: &str) -> Result<(), super::ReadModelError> {
        if super::leadership_key(consumer) == self.consumer() {
            Ok(())
        } else {
            Err(super::ReadModelError::NotLeader(super::leadership_key(consumer).to_owned()))
        }
    }

    /// `Ok` when the store's current term of the consumer is this fence's.
    pub fn check(&self, current: Option<u64>) -> Result<(), super::ReadModelError> {
        if current == Some(self.epoch) {
            Ok(())
        } else {
            Err(super::ReadModelError::Fenced {
                consumer: self.consumer().to_owned(),
                epoch: self.epoch,
                current: current.unwrap_or(0),
            })
        }
    }
}
