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
    rm.ensure_tables(&projection.tables())?;
    let stored_count = rm.projection_version(&count_key(name))?.filter(|n| *n > 0);
    let Some(count) = partitions else {
        if stored_count.is_some() {
            // It ran partitioned: its whole checkpoint (if any) is not what the tables show.
            tracing::info!(projection = name, "projection no longer partitioned; replaying it");
            reset(rm, name, &projection.tables())?;
            rm.set_projection_version(&count_key(name), 0)?;
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
    let stored_version = rm.projection_version(name)?;
    let version = projection.version();
    // Nothing stored: the projection never ran here, its tables are as new.
    if stored_version.is_some_and(|v| v != version || stored_count != Some(count)) {
        tracing::info!(
            projection = name,
            from_version = stored_version,
            to_version = version,
            from_partitions = stored_count,
            to_partitions = count,
            "partitioned projection changed; resetting it to replay the log"
        );
        reset(rm, name, &projection.tables())?;
    }
    // Recorded only once the reset is done: a crash in between resets again at next start.
    rm.set_projection_version(name, version)?;
    rm.set_projection_version(&count_key(name), count)?;
    let handles = spawn_partitioned_projection(store, readmodels, &projection, count, shutdown)?;
    consumers.add_partitioned_projection(name, handles)?;
    Ok(())
}

/// Resets projection `name`: empty tables (swapped in empty shadows), checkpoint 0 for it
/// and every partition of it that ever ran, and none of their dead letters. Leads each
/// of them meanwhile, so no process runs any of them during the reset;
/// [`ReadModelError::NotLeader`] names one that another process runs (nothing was reset).
pub(crate) fn reset(
    rm: &dyn ReadModelStore,
    name: &str,
    specs: &[TableSpec],
) -> Result<(), ReadModelError> {
    let letters = rm.dead_letters(None)?;
    let mut consumers: BTreeSet<String> = BTreeSet::from([name.to_owned()]);
    consumers
        .extend(rm.checkpoints()?.into_iter().map(|(c, _)| c).filter(|c| is_partition_of(name, c)));
    consumers
        .extend(letters.iter().map(|l| l.projection.clone()).filter(|c| is_partition_of(name, c)));
    let mut led = Vec::new();
    let result = (|| {
        for consumer in &consumers {
            if !rm.try_lead(consumer)? {
                return Err(ReadModelError::NotLeader(consumer.clone()));
            }
            led.push(consumer);
        }
        rm.ensure_tables(specs)?;
        let tables: Vec<&str> = specs.iter().map(|t| t.name).collect();
        let shadow = format!("{name}{}", cairn_core::readmodel::REBUILD_SUFFIX);
        rm.create_shadow(name, &tables)?;
        rm.transact_shadow(&shadow, Some(0), &mut |_| Ok(()))?;
        // Also sets `name`'s checkpoint to 0.
        rm.swap_shadow(&tables, name, &shadow)?;
        for consumer in consumers.iter().filter(|c| c.as_str() != name) {
            rm.transact(consumer, Some(0), &mut |_| Ok(()))?;
        }
        for letter in letters.iter().filter(|l| consumers.contains(&l.projection)) {
            rm.resolve_dead_letter(&letter.projection, letter.id, &mut |_| Ok(()))?;
        }
        Ok(())
    })();
    for consumer in led {
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
