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
//! - any other consumer past the head (the process manager, the bus relay): its effects
//!   went outside the read models (commands, published messages) and cannot be undone
//!   here, so start-up is refused, naming each one, unless the operator runs
//!   `cairn serve --repair`, which moves its checkpoint back to the head and drops its
//!   dead letters past the head.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use cairn_core::readmodel::{ReadModelError, ReadModelStore, TableSpec};
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
    let others: Vec<String> = ahead
        .iter()
        .filter(|(name, _)| !projections.contains_key(name.as_str()))
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
    for (name, (_, past_letters)) in ahead {
        let rm = Arc::clone(&rm);
        let tables = projections.get(name.as_str()).cloned();
        let consumer = name.clone();
        let led = blocking(move || {
            // Leadership first: on a shared database no other process may run it meanwhile.
            if !rm.try_lead(&consumer)? {
                return Ok(false);
            }
            let result = match &tables {
                Some(tables) => reset_projection(&*rm, &consumer, tables),
                None => rewind(&*rm, &consumer, head, &past_letters),
            };
            rm.resign(&consumer);
            result.map(|()| true)
        })
        .await?;
        if !led {
            return Err(GuardError::Led { consumer: name });
        }
        if projections.contains_key(name.as_str()) {
            tracing::warn!(projection = %name, head, "the projection was ahead of the event log; reset, it is rebuilt from the log");
            report.reset_projections.push(name);
        } else {
            tracing::warn!(consumer = %name, head, "the consumer was ahead of the event log; moved back to its head (--repair)");
            report.rewound.push(name);
        }
    }
    Ok(report)
}

/// Empties a projection's tables, drops its dead letters and sets its checkpoint to 0, so
/// it is rebuilt from the log: swapping in empty shadow tables whose checkpoint is 0.
fn reset_projection(
    rm: &dyn ReadModelStore,
    name: &str,
    specs: &[TableSpec],
) -> Result<(), ReadModelError> {
    rm.ensure_tables(specs)?;
    let tables: Vec<&str> = specs.iter().map(|t| t.name).collect();
    let shadow = format!("{name}#rebuild");
    rm.create_shadow(name, &tables)?;
    rm.transact_shadow(&shadow, Some(0), &mut |_| Ok(()))?;
    rm.swap_shadow(&tables, name, &shadow)?;
    for letter in rm.dead_letters(Some(name))? {
        rm.resolve_dead_letter(name, letter.id, &mut |_| Ok(()))?;
    }
    Ok(())
}

/// Moves a consumer's checkpoint back to `head` and drops its dead letters past it.
fn rewind(
    rm: &dyn ReadModelStore,
    name: &str,
    head: u64,
    letters: &[i64],
) -> Result<(), ReadModelError> {
    rm.transact(name, Some(head.min(rm.checkpoint(name)?)), &mut |_| Ok(()))?;
    for id in letters {
        rm.resolve_dead_letter(name, *id, &mut |_| Ok(()))?;
    }
    Ok(())
}
