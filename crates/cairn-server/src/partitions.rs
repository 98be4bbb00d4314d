//! Partitioned projections at start: a projection's partition count is stored beside its
//! version (under `<name>#partitions`; `0` or nothing = whole). Partitions are not rebuilt
//! through a shadow swap (each has its own checkpoint, and one swap cannot follow them
//! all), so a changed version or count resets the read model — its tables, every
//! partition's checkpoint and dead letters — and the partitions replay the log from 0.
//! The start-up guard ([`crate::guard`]) resets the same way when a partition is ahead.

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_core::EventStore;
use cairn_core::readmodel::{ReadModelError, ReadModelStore, TableSpec};
use cairn_cqrs::projection::{Projection, spawn_partitioned_projection, spawn_projection};
use tokio::sync::watch;

use crate::StartError;
use crate::consumers::Consumers;

/// Where a projection's partition count is stored (a projection-version entry).
fn count_key(name: &str) -> String {
    format!("{name}#partitions")
}

/// Whether `consumer` is a partition of projection `name` (`<name>#p<i>of<n>`).
pub(crate) fn is_partition_of(name: &str, consumer: &str) -> bool {
    let Some(rest) = consumer.strip_prefix(name).and_then(|r| r.strip_prefix("#p")) else {
        return false;
    };
    rest.split_once("of").is_some_and(|(index, count)| {
        index.parse::<u32>().is_ok_and(|i| count.parse::<u32>().is_ok_and(|n| i < n))
    })
}

/// Starts `projection` whole or in `partitions` and registers it, first resetting its
/// read model when the way it was built (version, partition count) no longer matches.
pub(crate) fn spawn(
    consumers: &mut Consumers,
    (store, readmodels): (&Arc<dyn EventStore>, &Arc<dyn ReadModelStore>),
    projection: Arc<dyn Projection>,
    partitions: Option<u32>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), StartError> {
    let rm = &**readmodels;
    let name = projection.name();
    let specs = projection.tables();
    rm.ensure_tables(&specs)?;
    let stored_count = |rm: &dyn ReadModelStore| {
        rm.projection_version(&count_key(name)).map(|n| n.filter(|n| *n > 0))
    };
    let Some(count) = partitions else {
        if stored_count(rm)?.is_some() {
            // It ran partitioned: its whole checkpoint (if any) is not what the tables show.
            let plan = Reset {
                lead_partitions: 0,
                needed: &|rm| Ok(stored_count(rm)?.is_some()),
                record: &|rm| rm.set_projection_version(&count_key(name), 0),
            };
            if reset_if(rm, name, &specs, &plan)? {
                tracing::info!(projection = name, "projection no longer partitioned; replayed");
            }
        }
        let handle = spawn_projection(
            Arc::clone(store),
            Arc::clone(readmodels),
            projection,
            shutdown.clone(),
        )?;
        consumers.add_projection(name, handle)?;
        return Ok(());
    };
    let version = projection.version();
    // Nothing stored: the projection never ran here, its tables are as new.
    let changed = |rm: &dyn ReadModelStore| -> Result<bool, ReadModelError> {
        let Some(stored_version) = rm.projection_version(name)? else { return Ok(false) };
        Ok(stored_version != version || stored_count(rm)? != Some(count))
    };
    let record = |rm: &dyn ReadModelStore| {
        rm.set_projection_version(name, version)?;
        rm.set_projection_version(&count_key(name), count)
    };
    if changed(rm)? {
        let plan = Reset { lead_partitions: count, needed: &changed, record: &record };
        if reset_if(rm, name, &specs, &plan)? {
            tracing::info!(
                projection = name,
                to_version = version,
                to_partitions = count,
                "partitioned projection changed; reset to replay the log"
            );
        }
    } else {
        record(rm)?;
    }
    let handles = spawn_partitioned_projection(store, readmodels, &projection, count, shutdown)?;
    consumers.add_partitioned_projection(name, handles)?;
    Ok(())
}

/// A reset decided before any lease was held, re-decided once they are.
pub(crate) struct Reset<'a> {
    /// Also lead `<name>#p<i>of<lead_partitions>` (the layout about to start), so no
    /// process runs the new layout while the tables are emptied under it.
    pub(crate) lead_partitions: u32,
    /// Whether the reset is still needed, asked once `<name>` is led: another process
    /// starting the same layout may have done it meanwhile (then nothing is reset).
    pub(crate) needed: &'a dyn Fn(&dyn ReadModelStore) -> Result<bool, ReadModelError>,
    /// Records the new layout, inside the leases and after the reset: a crash before it
    /// resets again at the next start.
    pub(crate) record: &'a dyn Fn(&dyn ReadModelStore) -> Result<(), ReadModelError>,
}

/// Resets projection `name` unconditionally (the start-up guard's case).
pub(crate) fn reset(
    rm: &dyn ReadModelStore,
    name: &str,
    specs: &[TableSpec],
) -> Result<(), ReadModelError> {
    let plan = Reset { lead_partitions: 0, needed: &|_| Ok(true), record: &|_| Ok(()) };
    reset_if(rm, name, specs, &plan).map(|_| ())
}

/// Resets projection `name` if `plan.needed` still says so once `name` is led: empty
/// tables (swapped in empty shadows), checkpoint 0 for it and every partition of it that
/// ever ran, and none of their dead letters; then `plan.record`. Leads each of them
/// meanwhile, so no process runs any of them during the reset;
/// [`ReadModelError::NotLeader`] names one that another process runs (nothing was reset).
/// `Ok(false)`: not needed any more, nothing done.
pub(crate) fn reset_if(
    rm: &dyn ReadModelStore,
    name: &str,
    specs: &[TableSpec],
    plan: &Reset<'_>,
) -> Result<bool, ReadModelError> {
    let Some(fence) = rm.try_lead(name)? else {
        return Err(ReadModelError::NotLeader(name.to_owned()));
    };
    let mut led = vec![name.to_owned()];
    let mut fences = std::collections::BTreeMap::from([(name.to_owned(), fence.clone())]);
    let result = (|| {
        // Decided again under the lease: the process that did it first has recorded it.
        if !(plan.needed)(rm)? {
            return Ok(false);
        }
        let letters = rm.dead_letters(None)?;
        let mut consumers: BTreeSet<String> = BTreeSet::from([name.to_owned()]);
        consumers.extend(
            rm.checkpoints()?.into_iter().map(|(c, _)| c).filter(|c| is_partition_of(name, c)),
        );
        consumers.extend(
            letters.iter().map(|l| l.projection.clone()).filter(|c| is_partition_of(name, c)),
        );
        let count = plan.lead_partitions;
        consumers.extend((0..count).map(|i| format!("{name}#p{i}of{count}")));
        for consumer in consumers.iter().filter(|c| c.as_str() != name) {
            let Some(f) = rm.try_lead(consumer)? else {
                return Err(ReadModelError::NotLeader(consumer.clone()));
            };
            led.push(consumer.clone());
            fences.insert(consumer.clone(), f);
        }
        let fence_of =
            |c: &str| fences.get(c).ok_or_else(|| ReadModelError::NotLeader(c.to_owned()));
        rm.ensure_tables(specs)?;
        let tables: Vec<&str> = specs.iter().map(|t| t.name).collect();
        let shadow = format!("{name}{}", cairn_core::readmodel::REBUILD_SUFFIX);
        rm.create_shadow(&fence, name, &tables)?;
        rm.transact_shadow(&fence, &shadow, Some(0), &mut |_| Ok(()))?;
        // Also sets `name`'s checkpoint to 0.
        rm.swap_shadow(&fence, &tables, name, &shadow)?;
        for consumer in consumers.iter().filter(|c| c.as_str() != name) {
            rm.transact(fence_of(consumer)?, consumer, Some(0), &mut |_| Ok(()))?;
        }
        for letter in letters.iter().filter(|l| consumers.contains(&l.projection)) {
            let f = fence_of(&letter.projection)?;
            rm.resolve_dead_letter(f, &letter.projection, letter.id, &mut |_| Ok(()))?;
        }
        (plan.record)(rm)?;
        Ok(true)
    })();
    for consumer in &led {
        rm.resign(consumer);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::is_partition_of;

    #[test]
    fn partition_names_are_recognised_by_their_projection_only() {
        assert!(is_partition_of("counts", "counts#p0of4"));
        assert!(is_partition_of("counts", "counts#p3of4"));
        assert!(!is_partition_of("counts", "counts#p4of4"), "index past the count");
        assert!(!is_partition_of("counts", "counts"));
        assert!(!is_partition_of("counts", "counts#rebuild"));
        assert!(!is_partition_of("count", "counts#p0of4"));
        assert!(!is_partition_of("counts", "counts#pxof4"));
    }
}
