//! The console's index (projection [`INDEX`]): which events share a correlation id, and
//! which events each process-manager instance handled.
//!
//! A correlation chain ("from a command to every event it caused, across aggregates") is
//! every event with one `correlation_id`, each linked to its cause by `causation_id`;
//! the log itself can only be scanned for them. [`LINKS_TABLE`] holds one small document
//! per event that has a correlation id, keyed by its zero-padded position (so a table
//! page is in log order) and indexed by correlation id. [`HANDLED_TABLE`] holds one per
//! (event, process manager that handles it), indexed by `<manager>/<instance key>`: an
//! instance's history is its handled events, and the events whose cause they are.
//!
//! It is a projection like any other: checkpointed, rebuildable, listed in
//! `/admin/projections`. Its cost on appends is measured in docs/benchmarks.md.

use std::collections::HashSet;
use std::sync::Arc;

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::CommandMetadata;
use cairn_cqrs::process::ProcessManager;
use cairn_cqrs::projection::Projection;
use cairn_server::Module;
use serde::{Deserialize, Serialize};

/// The projection's name (and checkpoint key).
pub const INDEX: &str = "cairn_console_index";
/// One document per correlated event.
pub const LINKS_TABLE: &str = "cairn_console_links";
/// One document per (event, process manager that handles it).
pub const HANDLED_TABLE: &str = "cairn_console_handled";
/// The index's pause between batches once caught up: nobody reads it on a command's
/// path, so under load it takes one batch per interval rather than one per commit.
pub const INDEX_COALESCE: std::time::Duration = std::time::Duration::from_millis(50);

/// One indexed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its `$all` position.
    pub position: u64,
    /// Its id.
    pub event_id: String,
    /// Its stream.
    pub aggregate_id: String,
    /// Its stream's aggregate type.
    pub aggregate_type: String,
    /// Its type.
    pub event_type: String,
    /// Its version in its stream.
    pub version: u64,
    /// `metadata.correlation_id`.
    pub correlation_id: String,
    /// `metadata.causation_id`: the command or event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

/// One event a process-manager instance handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    /// `<manager>/<instance key>`.
    pub instance: String,
    /// Its `$all` position.
    pub position: u64,
    /// Its id.
    pub event_id: String,
    /// Its stream.
    pub aggregate_id: String,
    /// Its type.
    pub event_type: String,
    /// Its version in its stream.
    pub version: u64,
    /// `metadata.correlation_id`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// The key of an event's document: its position, zero-padded so keys sort as positions.
#[must_use]
pub fn position_key(position: u64) -> String {
    format!("{position:020}")
}

/// The `instance` field of a handled event's document.
#[must_use]
pub fn instance_field(manager: &str, key: &str) -> String {
    format!("{manager}/{key}")
}

struct Manager {
    manager: Arc<dyn ProcessManager>,
    types: HashSet<&'static str>,
}

struct ConsoleIndex {
    managers: Vec<Manager>,
}

impl Projection for ConsoleIndex {
    fn name(&self) -> &'static str {
        INDEX
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec { name: LINKS_TABLE, indexed: &["correlation_id"] },
            TableSpec { name: HANDLED_TABLE, indexed: &["instance"] },
        ]
    }

    fn event_types(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn coalesce(&self) -> std::time::Duration {
        INDEX_COALESCE
    }

    fn apply(&self, event: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let metadata = CommandMetadata::of_event(event.metadata.get());
        // Written again on a redelivery: the same key and document, so no double.
        if let Some(correlation_id) = &metadata.correlation_id {
            txn.save(
                LINKS_TABLE,
                &position_key(event.position),
                &Link {
                    position: event.position,
                    event_id: event.event_id.to_string(),
                    aggregate_id: event.aggregate_id.clone(),
                    aggregate_type: event.aggregate_type.clone(),
                    event_type: event.event_type.clone(),
                    version: event.version,
                    correlation_id: correlation_id.clone(),
                    causation_id: metadata.causation_id.clone(),
                },
            )?;
        }
        for m in &self.managers {
            if !m.types.contains(event.event_type.as_str()) {
                continue;
            }
            let Some(key) = m.manager.instance_key(event) else { continue };
            txn.save(
                HANDLED_TABLE,
                &format!("{}:{}", position_key(event.position), m.manager.name()),
                &Handled {
                    instance: instance_field(m.manager.name(), &key),
                    position: event.position,
                    event_id: event.event_id.to_string(),
                    aggregate_id: event.aggregate_id.clone(),
                    event_type: event.event_type.clone(),
                    version: event.version,
                    correlation_id: metadata.correlation_id.clone(),
                },
            )?;
        }
        Ok(())
    }
}

/// The console's module: the index over every event, and over what each of `managers`
/// (every process manager the server runs) handles.
#[must_use]
pub fn module(managers: Vec<Arc<dyn ProcessManager>>) -> Module {
    let managers = managers
        .into_iter()
        .map(|manager| Manager { types: manager.event_types().into_iter().collect(), manager })
        .collect();
    Module::builder("cairn_console").projection(Arc::new(ConsoleIndex { managers })).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_keys_sort_as_positions() {
        let mut keys: Vec<String> = [10u64, 9, 100, 1, u64::MAX].map(position_key).to_vec();
        keys.sort();
        assert_eq!(keys, [1u64, 9, 10, 100, u64::MAX].map(position_key).to_vec());
    }
}
