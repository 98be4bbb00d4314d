//! The stream catalog: one document per stream, and the longest streams, kept by a
//! projection (`cairn_streams`) that every server runs.
//!
//! `GET /admin/streams/stats` used to run a `GROUP BY` over the whole log per call; it now
//! reads one document. The per-stream documents (indexed by aggregate type) are what a
//! stream search reads, one page at a time.
//!
//! The leaderboard holds the [`TOP_KEPT`] longest streams. It is exact because a stream only
//! grows: every stream left out is no longer than the shortest one kept (true while the
//! board is not full, kept when a stream grows — it enters once it passes the shortest,
//! which leaves — and when a kept one grows). Between streams of equal length at the
//! board's edge, the one kept first stays.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::projection::Projection;
use serde::{Deserialize, Serialize};

use crate::module::Module;

/// The projection's name (and checkpoint key).
pub const CATALOG: &str = "cairn_streams";
/// One document per stream, keyed by its id.
pub const STREAMS_TABLE: &str = "cairn_streams";
/// The leaderboard: one document, [`TOP_KEY`].
pub const TOP_TABLE: &str = "cairn_streams_top";
/// The leaderboard's key.
pub const TOP_KEY: &str = "top";
/// Streams on the leaderboard: the most `GET /admin/streams/stats?top=` can ask for.
pub const TOP_KEPT: usize = 1000;
/// The board's edge (how many it keeps, the shortest kept), beside the board in
/// [`TOP_TABLE`]: a batch that cannot change the board reads this small document instead
/// of the board's thousand entries (the profile of the order lifecycle had 9% of all CPU
/// in reading and writing the board for every batch).
const EDGE_KEY: &str = "edge";
/// The catalog's pause between batches once caught up (see `Projection::coalesce`).
pub const CATALOG_COALESCE: std::time::Duration = std::time::Duration::from_millis(50);

/// One stream, as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// The stream.
    pub aggregate_id: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Events in it.
    pub event_count: u64,
    /// Its last event's version.
    pub latest_version: u64,
    /// `$all` position of its first event.
    pub first_position: u64,
    /// `$all` position of its last event.
    pub last_position: u64,
    /// When its last event was stored (RFC 3339).
    pub updated_at: String,
    /// Whether it is on the leaderboard; `None` in documents written before the board had
    /// an edge (such a stream is looked up on the board when it next grows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_board: Option<bool>,
}

/// The board's edge: [`EDGE_KEY`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Edge {
    /// Streams on the board.
    kept: usize,
    /// The shortest kept stream's event count (0 while the board is empty).
    shortest: u64,
}

impl Edge {
    fn of(top: &Top) -> Self {
        Self { kept: top.streams.len(), shortest: top.streams.last().map_or(0, |s| s.0) }
    }

    /// Whether `entry`, as it now is, can change the board: the board has room, the
    /// stream is (or may be) on it, or it has passed the shortest kept.
    fn touched_by(self, entry: &StreamEntry) -> bool {
        self.kept < TOP_KEPT || entry.on_board != Some(false) || entry.event_count > self.shortest
    }
}

/// The leaderboard, longest first (ties by id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Top {
    /// `(event_count, aggregate_id, aggregate_type)`.
    pub streams: Vec<(u64, String, String)>,
}

impl Top {
    fn sort(&mut self) {
        self.streams.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    }

    /// Records that `entry` now has its `event_count`; `false` when the board is unchanged.
    fn offer(&mut self, entry: &StreamEntry) -> bool {
        if let Some(kept) = self.streams.iter_mut().find(|s| s.1 == entry.aggregate_id) {
            kept.0 = entry.event_count;
        } else if self.streams.len() < TOP_KEPT
            || self.streams.last().is_some_and(|shortest| entry.event_count > shortest.0)
        {
            self.streams.push((
                entry.event_count,
                entry.aggregate_id.clone(),
                entry.aggregate_type.clone(),
            ));
        } else {
            return false;
        }
        self.sort();
        self.streams.truncate(TOP_KEPT);
        true
    }
}

/// The catalog projection.
struct StreamCatalog;

impl Projection for StreamCatalog {
    fn name(&self) -> &'static str {
        CATALOG
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec { name: STREAMS_TABLE, indexed: &["aggregate_type"] },
            TableSpec { name: TOP_TABLE, indexed: &[] },
        ]
    }

    fn event_types(&self) -> Vec<&'static str> {
        // Every event.
        Vec::new()
    }

    fn apply(&self, event: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        self.apply_batch(std::slice::from_ref(event), txn)
    }

    /// `/admin/streams/stats` waits for the catalog by position (up to 5 s), nobody reads
    /// it on a command's path: under load it takes one batch per interval instead of one
    /// per commit (it is the one consumer that reads every event).
    fn coalesce(&self) -> std::time::Duration {
        CATALOG_COALESCE
    }

    fn apply_batch(
        &self,
        events: &[RecordedEvent],
        txn: &mut dyn DocTxn,
    ) -> Result<(), ReadModelError> {
        // Each stream's document and the board are read and written once per batch.
        let mut touched: BTreeMap<&str, StreamEntry> = BTreeMap::new();
        let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        txn.prefetch(STREAMS_TABLE, &ids)?;
        for e in events {
            let entry = match touched.remove(e.aggregate_id.as_str()) {
                Some(entry) => Some(entry),
                None => txn.load::<StreamEntry>(STREAMS_TABLE, &e.aggregate_id)?,
            };
            let updated_at = e.timestamp.to_rfc3339();
            let entry = match entry {
                // A redelivered event (a batch retried after a crash) changes nothing.
                Some(entry) if entry.latest_version >= e.version => entry,
                Some(entry) => StreamEntry {
                    event_count: entry.event_count + 1,
                    latest_version: e.version,
                    last_position: e.position,
                    updated_at,
                    ..entry
                },
                None => StreamEntry {
                    aggregate_id: e.aggregate_id.clone(),
                    aggregate_type: e.aggregate_type.clone(),
                    event_count: 1,
                    latest_version: e.version,
                    first_position: e.position,
                    last_position: e.position,
                    updated_at,
                    on_board: Some(false),
                },
            };
            touched.insert(e.aggregate_id.as_str(), entry);
        }
        // No edge yet (a new catalog, or one written before there was an edge): the board
        // is read, and the edge written with it.
        let edge = txn.load::<Edge>(TOP_TABLE, EDGE_KEY)?;
        if edge.is_some_and(|edge| touched.values().all(|entry| !edge.touched_by(entry))) {
            for (id, entry) in &touched {
                txn.save(STREAMS_TABLE, id, entry)?;
            }
            return Ok(());
        }
        let mut top = txn.load::<Top>(TOP_TABLE, TOP_KEY)?.unwrap_or_default();
        let before: Vec<String> = top.streams.iter().map(|s| s.1.clone()).collect();
        let mut changed = edge.is_none();
        for entry in touched.values() {
            changed |= top.offer(entry);
        }
        let kept: std::collections::HashSet<&str> =
            top.streams.iter().map(|s| s.1.as_str()).collect();
        for (id, entry) in &mut touched {
            entry.on_board = Some(kept.contains(id));
            txn.save(STREAMS_TABLE, id, entry)?;
        }
        // A stream pushed off the board by this batch learns it, so that its own growth
        // is again judged by the edge alone.
        for id in before.iter().filter(|id| !kept.contains(id.as_str())) {
            if touched.contains_key(id.as_str()) {
                continue;
            }
            if let Some(mut entry) = txn.load::<StreamEntry>(STREAMS_TABLE, id)? {
                entry.on_board = Some(false);
                txn.save(STREAMS_TABLE, id, &entry)?;
            }
        }
        if changed {
            txn.save(TOP_TABLE, TOP_KEY, &top)?;
            txn.save(TOP_TABLE, EDGE_KEY, &Edge::of(&top))?;
        }
        Ok(())
    }
}

/// The server's own module: the catalog projection.
#[must_use]
pub fn module() -> Module {
    Module::builder("cairn").projection(Arc::new(StreamCatalog)).build()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(id: &str, n: u64) -> StreamEntry {
        StreamEntry {
            aggregate_id: id.to_owned(),
            aggregate_type: "T".to_owned(),
            event_count: n,
            latest_version: n,
            first_position: 1,
            last_position: n,
            updated_at: String::new(),
            on_board: None,
        }
    }

    fn event(id: &str, version: u64, position: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            aggregate_id: id.to_owned(),
            aggregate_type: "T".to_owned(),
            event_type: "E".to_owned(),
            version,
            position,
            timestamp: cairn_core::timestamp::Timestamp::now(),
            data: serde_json::value::RawValue::from_string("{}".to_owned()).unwrap(),
            metadata: serde_json::value::RawValue::from_string("{}".to_owned()).unwrap(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// Through the projection, in batches of any size: the board holds the longest
        /// streams with their true counts, the edge is the board's, and every stream's
        /// document knows whether it is on the board (which the edge's shortcut relies on).
        #[test]
        fn the_projection_keeps_the_board_its_edge_and_each_streams_flag(
            appends in proptest::collection::vec(0usize..1300, 1..3000),
            batch in 1usize..200,
        ) {
            use cairn_core::readmodel::{Documents as _, Leases as _};
            let rm = cairn_core::readmodel::MemoryReadModels::new();
            rm.ensure_tables(&StreamCatalog.tables()).unwrap();
            let fence = rm.try_lead(CATALOG).unwrap().unwrap();
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let events: Vec<RecordedEvent> = appends
                .iter()
                .enumerate()
                .map(|(i, stream)| {
                    let id = format!("s-{stream}");
                    let n = counts.entry(id.clone()).or_insert(0);
                    *n += 1;
                    event(&id, *n, i as u64 + 1)
                })
                .collect();
            for chunk in events.chunks(batch) {
                rm.transact(&fence, CATALOG, None, &mut |txn| StreamCatalog.apply_batch(chunk, txn))
                    .unwrap();
            }
            let top: Top = serde_json::from_str(&rm.get(TOP_TABLE, TOP_KEY).unwrap().unwrap()).unwrap();
            let mut truth: Vec<u64> = counts.values().copied().collect();
            truth.sort_unstable_by(|a, b| b.cmp(a));
            truth.truncate(TOP_KEPT);
            let kept: Vec<u64> = top.streams.iter().map(|s| s.0).collect();
            prop_assert_eq!(&kept, &truth);
            let edge: Edge = serde_json::from_str(&rm.get(TOP_TABLE, EDGE_KEY).unwrap().unwrap()).unwrap();
            prop_assert_eq!(edge, Edge::of(&top));
            for (id, n) in &counts {
                let entry: StreamEntry = serde_json::from_str(&rm.get(STREAMS_TABLE, id).unwrap().unwrap()).unwrap();
                prop_assert_eq!(entry.event_count, *n);
                let on_board = top.streams.iter().any(|s| &s.1 == id);
                prop_assert_eq!(entry.on_board, Some(on_board), "{}", id);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the order streams grow in, the board's counts are the longest
        /// streams' counts (ties at the edge may keep either stream).
        #[test]
        fn the_board_keeps_the_longest_streams(
            appends in proptest::collection::vec(0usize..1500, 1..4000),
        ) {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut top = Top::default();
            for stream in appends {
                let id = format!("s-{stream}");
                let n = counts.entry(id.clone()).or_insert(0);
                *n += 1;
                top.offer(&entry(&id, *n));
            }
            let mut truth: Vec<u64> = counts.values().copied().collect();
            truth.sort_unstable_by(|a, b| b.cmp(a));
            truth.truncate(TOP_KEPT);
            let kept: Vec<u64> = top.streams.iter().map(|s| s.0).collect();
            prop_assert_eq!(&kept, &truth);
            for (n, id, _) in &top.streams {
                prop_assert_eq!(counts[id], *n, "{} is kept with its true count", id);
            }
        }
    }
}
