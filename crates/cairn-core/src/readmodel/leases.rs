//! Which process runs which consumer.

use super::{REBUILD_SUFFIX, ReadModelError};

/// The consumer whose leadership covers writes made under `consumer`'s name.
#[must_use]
pub fn leadership_key(consumer: &str) -> &str {
    consumer.strip_suffix(REBUILD_SUFFIX).unwrap_or(consumer)
}

/// Leadership of consumers: each consumer is run by one process at a time.
///
/// No method has a default: a backend that forgot to say would otherwise let every
/// process run every consumer. An embedded backend (one process per store) grants
/// everything, and says so.
pub trait Leases: Send + Sync {
    /// Tries to make this process the one that runs `consumer`: `true` when it now leads
    /// it (or already did).
    fn try_lead(&self, consumer: &str) -> Result<bool, ReadModelError>;
    /// Whether this process still leads `consumer` (its leadership can be lost with its
    /// database session).
    fn leads(&self, consumer: &str) -> bool;
    /// Gives up leadership of `consumer`, so that another process may take it.
    fn resign(&self, consumer: &str);
    /// How many processes share this store right now (for spreading partitions fairly).
    fn live_members(&self) -> Result<usize, ReadModelError>;
}
