//! How far each consumer got along `$all`.

use super::ReadModelError;

/// Consumers' checkpoints. They are written with the documents
/// ([`super::Documents::transact`]), never on their own, so this is the reading side.
pub trait Checkpoints: Send + Sync {
    /// The last `$all` position the consumer committed (0 when it never ran).
    fn checkpoint(&self, consumer: &str) -> Result<u64, ReadModelError>;
    /// Every consumer's checkpoint, by name (the start-up check against the log's head).
    fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadModelError>;
    /// Ticks whenever any process commits a checkpoint (`None`: only this process writes,
    /// so there is nothing to watch).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}
