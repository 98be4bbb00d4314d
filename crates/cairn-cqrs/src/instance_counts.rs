//! How many instances of a process manager have each status, kept as counters.
//!
//! `/metrics` reports them on every scrape; counting the instance table then would read up
//! to every instance per status per scrape. Instead one document per manager in
//! [`COUNTS_TABLE`] holds the counts, changed in the same transaction as the instance
//! whose status changes (so a crash cannot make them drift), written under the manager's
//! fence like the instance itself. The first save that finds no counts document counts the
//! table once (a store from before the counters, or right after an import).

use std::collections::BTreeMap;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, ReadModelStore, TableSpec};
use serde_json::Value;

use crate::process::Instances;

/// The reserved table of the counts: one document per process manager, keyed by its name,
/// `{status: count}`.
pub const COUNTS_TABLE: &str = "cairn_instance_counts";

/// [`COUNTS_TABLE`]'s declaration.
pub const COUNTS_SPEC: TableSpec = TableSpec { name: COUNTS_TABLE, indexed: &[] };

/// Counts by status.
pub type Counts = BTreeMap<String, u64>;

fn status_of(json: &str) -> Option<String> {
    serde_json::from_str::<Value>(json).ok()?.get("status")?.as_str().map(str::to_owned)
}

/// Counts `manager`'s instances by status, reading the table (one indexed lookup per
/// status), and stores the counts.
pub fn recount(
    txn: &mut dyn DocTxn,
    manager: &str,
    instances: &Instances,
) -> Result<Counts, ReadModelError> {
    let mut counts = Counts::new();
    for &status in instances.statuses() {
        let n = txn.find(instances.table_name(), "status", status)?.len() as u64;
        counts.insert(status.to_owned(), n);
    }
    txn.save(COUNTS_TABLE, manager, &counts)?;
    Ok(counts)
}

/// Stores instance `key` as `json` and moves the counts from its old status to its new
/// one. For a manager whose instances have no statuses, or a table other than the
/// instances', it only stores.
pub fn put_instance(
    txn: &mut dyn DocTxn,
    manager: &str,
    instances: &Instances,
    table: &str,
    key: &str,
    json: &str,
) -> Result<(), ReadModelError> {
    if instances.statuses().is_empty() || table != instances.table_name() {
        return txn.put(table, key, json);
    }
    let before = txn.get(table, key)?.as_deref().and_then(status_of);
    let after = status_of(json);
    if before == after {
        return txn.put(table, key, json);
    }
    // Counted before this change, so the delta below applies to a true base.
    let mut counts = match txn.load::<Counts>(COUNTS_TABLE, manager)? {
        Some(counts) => counts,
        None => recount(txn, manager, instances)?,
    };
    txn.put(table, key, json)?;
    if let Some(old) = before
        && let Some(n) = counts.get_mut(&old)
    {
        *n = n.saturating_sub(1);
    }
    if let Some(new) = after {
        *counts.entry(new).or_insert(0) += 1;
    }
    txn.save(COUNTS_TABLE, manager, &counts)
}

/// The counts of `manager`, if kept yet (read outside any transaction).
pub fn read(rm: &dyn ReadModelStore, manager: &str) -> Result<Option<Counts>, ReadModelError> {
    rm.get(COUNTS_TABLE, manager)?
        .map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| ReadModelError::Decode(format!("{COUNTS_TABLE}/{manager}: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use cairn_core::readmodel::memory::MemoryReadModels;
    use cairn_core::readmodel::{Documents, Leases};
    use proptest::prelude::*;

    use super::*;

    const STATUSES: &[&str] = &["open", "shipped", "cancelled"];
    const INSTANCES: Instances = Instances::table("pm_things").by_status(STATUSES);
    const TABLE: TableSpec = TableSpec { name: "pm_things", indexed: &["status"] };

    proptest! {
        /// Whatever the saves (new instances, status changes, saves without a change,
        /// documents without a status), the counters equal a count of the table.
        #[test]
        fn counters_equal_a_count_of_the_table(
            saves in proptest::collection::vec((0u8..6, proptest::option::of(0usize..3)), 1..40),
            counted_from_the_start in any::<bool>(),
        ) {
            let rm = MemoryReadModels::new();
            rm.ensure_tables(&[TABLE, COUNTS_SPEC]).unwrap();
            let fence = rm.try_lead("pm").unwrap().unwrap();
            // Either the counters exist from the first save, or instances exist before
            // them (a store from before the counters) and the first save counts them.
            let (before, saves) = if counted_from_the_start { (&saves[..0], &saves[..]) } else { saves.split_at(saves.len() / 2) };
            rm.transact(&fence, "pm", None, &mut |txn| {
                for (key, status) in before {
                    let doc = status.map_or_else(|| serde_json::json!({}), |s| serde_json::json!({"status": STATUSES[s]}));
                    txn.put("pm_things", &key.to_string(), &doc.to_string())?;
                }
                Ok(())
            }).unwrap();
            for (key, status) in saves {
                let doc = status.map_or_else(|| serde_json::json!({"n": 1}), |s| serde_json::json!({"status": STATUSES[s], "n": 1}));
                rm.transact(&fence, "pm", None, &mut |txn| {
                    put_instance(txn, "pm", &INSTANCES, "pm_things", &key.to_string(), &doc.to_string())
                }).unwrap();
            }
            let kept = read(&rm, "pm").unwrap();
            let mut truth = Counts::new();
            rm.transact(&fence, "pm", None, &mut |txn| {
                truth = recount(txn, "pm", &INSTANCES)?;
                Ok(())
            }).unwrap();
            if saves.is_empty() {
                prop_assert!(kept.is_none());
            } else if let Some(kept) = kept {
                for s in STATUSES {
                    prop_assert_eq!(kept.get(*s).copied().unwrap_or(0), truth[*s], "{}", s);
                }
            } else {
                // Only saves that changed no status: never counted, never needed.
                prop_assert!(saves.iter().all(|(_, s)| s.is_none()) || !counted_from_the_start);
            }
        }
    }
}
