//! Snapshots: an aggregate's state at a version, so loading replays only the tail.
//!
//! A snapshot is derived data, never a source of truth: it records the aggregate's own
//! snapshot-shape version, and a reader ignores any snapshot of another shape (or of
//! another aggregate type) and rebuilds from events instead.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::readmodel::ReadModelError;
use crate::timestamp::Timestamp;

/// An aggregate's state as of one version of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub aggregate_id: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// The aggregate's declared state-shape version when the snapshot was taken.
    pub snapshot_version: u32,
    /// The stream version the state includes.
    pub version: u64,
    /// `$all` position of that event.
    pub position: u64,
    /// Timestamp of that event (for temporal loads).
    pub timestamp: Timestamp,
    /// The state, as the aggregate serialised it.
    pub state: String,
}

/// Where snapshots are kept (blocking, like [`crate::readmodel::ReadModelStore`]).
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of a stream.
    fn load(&self, aggregate_id: &str) -> Result<Option<Snapshot>, ReadModelError>;
    /// Stores a snapshot, replacing an older one of the stream.
    fn save(&self, snapshot: &Snapshot) -> Result<(), ReadModelError>;
    /// Deletes every snapshot taken at a position past `head` (of events the log no longer
    /// holds) and returns their aggregate ids.
    fn drop_past(&self, head: u64) -> Result<Vec<String>, ReadModelError>;
    /// Deletes the stream's snapshot, if any (its subject was erased: the snapshot holds
    /// what its events said).
    fn forget(&self, aggregate_id: &str) -> Result<(), ReadModelError>;
}

/// Snapshots in memory (tests).
#[derive(Default)]
pub struct MemorySnapshotStore {
    snapshots: Mutex<HashMap<String, Snapshot>>,
}

impl SnapshotStore for MemorySnapshotStore {
    fn load(&self, aggregate_id: &str) -> Result<Option<Snapshot>, ReadModelError> {
        Ok(self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(aggregate_id)
            .cloned())
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), ReadModelError> {
        self.snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(snapshot.aggregate_id.clone(), snapshot.clone());
        Ok(())
    }

    fn drop_past(&self, head: u64) -> Result<Vec<String>, ReadModelError> {
        let mut snapshots =
            self.snapshots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let past: Vec<String> = snapshots
            .values()
            .filter(|s| s.position > head)
            .map(|s| s.aggregate_id.clone())
            .collect();
        for id in &past {
            snapshots.remove(id);
        }
        Ok(past)
    }

    fn forget(&self, aggregate_id: &str) -> Result<(), ReadModelError> {
        self.snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(aggregate_id);
        Ok(())
    }
}
