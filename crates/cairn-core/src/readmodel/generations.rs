//! Generations of a projection's tables: the live one, the shadow a rebuild fills, and
//! the projection version the live one was built with.

use super::{Fence, ReadModelError, TxnFn};

/// Suffix of the checkpoint a rebuild's shadow tables are written under; its writes run
/// under the leadership of the consumer it rebuilds (`<name>#rebuild` → `<name>`).
pub const REBUILD_SUFFIX: &str = "#rebuild";

/// Rebuilds without downtime: the next generation of a projection's tables is filled
/// beside the live one and replaces it in one step.
///
/// Every backend follows one scheme: a table has one fixed-name shadow (`rm_<t>__shadow`
/// on SQLite and PostgreSQL) that a rebuild creates empty, fills, and either swaps in
/// (one transaction: the live table dropped, the shadow renamed to it, the checkpoint
/// moved) or drops. Each method is fenced, and the conformance suite
/// (`cairn-conformance`, `generations`) holds every backend to the same behaviour.
pub trait Generations: Send + Sync {
    /// Creates empty shadow copies (the next generation) of declared tables, for a rebuild
    /// of `consumer`, under `fence`. A leftover shadow of an interrupted rebuild (this
    /// process's or a deposed leader's) is emptied.
    fn create_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        tables: &[&str],
    ) -> Result<(), ReadModelError>;
    /// Like [`super::Documents::transact`], but the tables with a shadow are written in it.
    fn transact_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// Atomically makes the shadows the live tables (dropping the old ones), gives the
    /// live consumer the shadow consumer's checkpoint and forgets the shadow consumer's;
    /// refused, with nothing changed, unless `fence` is `live`'s current term.
    fn swap_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        live: &str,
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError>;
    /// Drops the shadows of an abandoned rebuild and its checkpoint (under `fence`: a
    /// deposed leader must not drop the shadow its successor is filling).
    fn abort_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError>;
    /// The projection version the stored read model was built with.
    fn projection_version(&self, name: &str) -> Result<Option<u32>, ReadModelError>;
    /// Records the projection version the read model is built with.
    fn set_projection_version(&self, name: &str, version: u32) -> Result<(), ReadModelError>;
}
