//! Which process runs which consumer.

use super::{Fence, LeaseIssuer, REBUILD_SUFFIX, ReadModelError};

/// The consumer whose leadership covers writes made under `consumer`'s name.
#[must_use]
pub fn leadership_key(consumer: &str) -> &str {
    consumer.strip_suffix(REBUILD_SUFFIX).unwrap_or(consumer)
}

/// Leadership of consumers: each consumer is run by one process at a time.
///
/// No backend method has a default: a backend that forgot to say would otherwise let
/// every process run every consumer. An embedded backend (one process per store) grants
/// everything, and says so. The one provided method, [`Self::try_lead`], is cairn-core's
/// wrapper around the backend's [`Self::begin_term`].
pub trait Leases: Send + Sync {
    /// Tries to make this process the one that runs `consumer`: its fence when it now
    /// leads it (the same fence when it already did), `None` when another process does.
    /// Each new term gets a greater epoch than every earlier term of the consumer, on
    /// any process, and is recorded durably before the fence is returned.
    ///
    /// Not overridden by backends: it is the only maker of the [`LeaseIssuer`] that
    /// [`Self::begin_term`] needs to issue the fence (see [`LeaseIssuer`] for why).
    fn try_lead(&self, consumer: &str) -> Result<Option<Fence>, ReadModelError> {
        self.begin_term(consumer, LeaseIssuer::new())
    }
    /// What [`Self::try_lead`] does, in the backend: takes `consumer` if it can, and
    /// returns `Fence::issued(consumer, epoch, issuer)` for the term it holds.
    fn begin_term(
        &self,
        consumer: &str,
        issuer: LeaseIssuer<'_>,
    ) -> Result<Option<Fence>, ReadModelError>;
    /// Whether this process still leads `consumer` (its leadership can be lost with its
    /// database session).
    fn leads(&self, consumer: &str) -> bool;
    /// Gives up leadership of `consumer`, so that another process may take it.
    fn resign(&self, consumer: &str);
    /// How many processes share this store right now (for spreading partitions fairly).
    fn live_members(&self) -> Result<usize, ReadModelError>;
}
