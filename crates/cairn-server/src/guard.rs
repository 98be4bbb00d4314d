//! The start-up check that nothing derived from the log is ahead of it.
//!
//! Read models, checkpoints, dead letters and snapshots are committed apart from the
//! events (another file on the embedded store; possibly another backup on PostgreSQL).
//! After a crash with `--sync normal`, or a restore that mixes two points in time, they
//! can record positions the log no longer holds. The next appends would reuse those
//! positions and every consumer would skip them without a word, so such state is never
//! accepted silently:
//!
//! - a snapshot past the head is a cache of lost events: it is dropped;
//! - a projection checkpoint (or dead letter) past the head: the projection is reset
//!   (empty tables, no dead letters, checkpoint 0) and rebuilt from the log as it starts;
//!   for a partitioned projection, one partition ahead resets the whole projection (its
//!   partitions share its tables), every partition's checkpoint and dead letters included;
//! - any other consumer past the head (the process manager, the bus relay): its effects
//!   went outside the read models (commands, published messages) and cannot be undone
//!   here, so start-up is refused, naming each one, unless the operator runs
//!   `cairn serve --repair`, which moves its checkpoint back to the head and drops its
//!   dead letters past the head.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use cairn_core::readmodel::{Fence, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{AllFilter, EventStore, ReadError};
use cairn_cqrs::projection::Projection;
use thiserror::Error;

use crate::Stores;

/// Why the start-up check refused to start, or could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GuardError {
    /// Consumers whose effects left the read models are ahead of the log.
    #[error(
        "the read models are ahead of the event log (head position {head}): {}; \
         their effects for the lost events cannot be undone here. Check them, then start \
         once with `cairn serve --repair` to move them back to the log's head",
        .ahead.join("; ")
    )]
    Ahead {
        /// The log's last position.
        head: u64,
        /// One line per consumer, naming it and how far ahead it is.
        ahead: Vec<String>,
    },
    /// A consumer to repair runs on another process sharing the database.
    #[error("{consumer} runs on another cairn process: stop every process, then start this one")]
    Led {
        /// The consumer.
        consumer: String,
    },
    /// The log's head could not be read.
    #[error("cannot read the event log's head: {0}")]
    Read(#[from] ReadError),
    /// The read models could not be read or repaired.
    #[error("cannot check the read models against the event log: {0}")]
    ReadModels(#[from] ReadModelError),
}

/// What the check repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuardReport {
    /// The log's last position.
    pub head: u64,
    /// Aggregates whose snapshot past the head was dropped.
    pub dropped_snapshots: Vec<String>,
    /// Projections reset, to be rebuilt from the log.
    pub reset_projections: Vec<String>,
    /// Other consumers moved back to the head (`--repair`).
    pub rewound: Vec<String>,
}

/// Blocking read-model calls from async code.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ReadModelError> + Send + 'static,
) -> Result<R, ReadModelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReadModelError::Storage(format!("the check's thread failed: {e}")))?
}

/// The log's last position, read from the store (not from a head watch that may lag).
async fn log_head(store: &Arc<dyn EventStore>) -> Result<u64, ReadError> {
    // An empty page reports the horizon it was read at.
    Ok(store.read_all(0, 0, &AllFilter::default()).await?.scanned_to)
}

/// Checks (and repairs what is safe to repair) every checkpoint, dead letter and snapshot
/// against the log's head; see the module documentation. Call before any consumer starts.
/// `projections` are the server's projections (see [`crate::projections`]): only they
/// are reset; every other consumer ahead is refused or, with `repair`, rewound.
pub async fn check_read_models_against_log(
    stores: &Stores,
    projections: &[Arc<dyn Projection>],
    repair: bool,
) -> Result<GuardReport, GuardError> {
    let (rm, snapshots) = (Arc::clone(&stores.readmodels), Arc::clone(&stores.snapshots));
    // Read what is recorded first and the head after: a head only grows, so on a shared
    // database a checkpoint that moved on meanwhile is never mistaken for one ahead.
    let rm2 = Arc::clone(&rm);
    let (checkpoints, letters) =
        blocking(move || Ok((rm2.checkpoints()?, rm2.dead_letters(None)?))).await?;
    let head = log_head(&stores.events).await?;
    let mut report = GuardReport { head, ..GuardReport::default() };

    let dropped = blocking(move || snapshots.drop_past(head)).await?;
    if !dropped.is_empty() {
        tracing::warn!(head, count = dropped.len(), aggregates = ?dropped, "dropped snapshots of events the log no longer holds");
    }
    report.dropped_snapshots = dropped;

    // Per consumer: its checkpoint and its dead letters past the head.
    let mut ahead: BTreeMap<String, (Option<u64>, Vec<i64>)> = BTreeMap::new();
    for (consumer, position) in checkpoints {
        // A shadow's checkpoint (`name#rebuild`) belongs to a rebuild that a restart ended.
        if position > head && !consumer.ends_with(cairn_core::readmodel::REBUILD_SUFFIX) {
            ahead.entry(consumer).or_default().0 = Some(position);
        }
    }
    for letter in letters.iter().filter(|l| l.position > head) {
        ahead.entry(letter.projection.clone()).or_default().1.push(letter.id);
    }
    if ahead.is_empty() {
        return Ok(report);
    }
    let projections: BTreeMap<&str, Vec<TableSpec>> =
        projections.iter().map(|p| (p.name(), p.tables())).collect();
    // The projection a consumer belongs to: itself, or the one it is a partition of.
    let owner = |consumer: &str| -> Option<&str> {
        if let Some((name, _)) = projections.get_key_value(consumer) {
            return Some(*name);
        }
        let (base, _) = consumer.split_once("#p")?;
        let (name, _) = projections.get_key_value(base)?;
        crate::partitions::is_partition_of(name, consumer).then_some(*name)
    };
    let others: Vec<String> = ahead
        .iter()
        .filter(|(name, _)| owner(name).is_none())
        .map(|(name, (checkpoint, letters))| {
            let mut line = name.clone();
            if let Some(p) = checkpoint {
                let _ = write!(line, " at position {p}");
            }
            if !letters.is_empty() {
                let _ = write!(line, " with {} dead letter(s) past the head", letters.len());
            }
            line
        })
        .collect();
    if !others.is_empty() && !repair {
        return Err(GuardError::Ahead { head, ahead: others });
    }
    let mut reset = BTreeSet::new();
    for (name, (_, past_letters)) in &ahead {
        if let Some(projection) = owner(name) {
            // One partition ahead resets the whole projection: its partitions share tables.
            if !reset.insert(projection) {
                continue;
            }
            let (rm, tables, projection_name) =
                (Arc::clone(&rm), projections[projection].clone(), projection.to_owned());
            match blocking(move || crate::partitions::reset(&*rm, &projection_name, &tables)).await
            {
                Err(ReadModelError::NotLeader(consumer)) => {
                    return Err(GuardError::Led { consumer });
                }
                result => result?,
            }
            tracing::warn!(projection, consumer = %name, head, "the projection was ahead of the event log; reset, it is rebuilt from the log");
            report.reset_projections.push(projection.to_owned());
            continue;
        }
        let (rm, consumer, past_letters) = (Arc::clone(&rm), name.clone(), past_letters.clone());
        let led = blocking(move || {
            // Leadership first: on a shared database no other process may run it meanwhile.
            let Some(fence) = rm.try_lead(&consumer)? else {
                return Ok(false);
            };
            let result = rewind(&*rm, &fence, &consumer, head, &past_letters);
            rm.resign(&consumer);
            result.map(|()| true)
        })
        .await?;
        if !led {
            return Err(GuardError::Led { consumer: name.clone() });
        }
        tracing::warn!(consumer = %name, head, "the consumer was ahead of the event log; moved back to its head (--repair)");
        report.rewound.push(name.clone());
    }
    Ok(report)
}

/// Moves a consumer's checkpoint back to `head` and drops its dead letters past it.
fn rewind(
    rm: &dyn ReadModelStore,
    fence: &Fence,
    name: &str,
    head: u64,
    letters: &[i64],
) -> Result<(), ReadModelError> {
    rm.transact(fence, name, Some(head.min(rm.checkpoint(name)?)), &mut |_| Ok(()))?;
    for id in letters {
        rm.resolve_dead_letter(fence, name, *id, &mut |_| Ok(()))?;
    }
    Ok(())
}
