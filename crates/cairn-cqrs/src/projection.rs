//! Projections: denormalized read models built from `$all`, each batch committed together
//! with the projection's checkpoint (an event's effect happens exactly once).

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::readmodel::{DocTxn, Fence, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{EventStore, RecordedEvent};
use tokio::sync::watch;

use crate::aggregate::DomainEvent;
use crate::consumer::{self, BatchHandler, ConsumerHandle, HandleError};

/// Decodes a stored event into the domain event it is, as every domain read path sees it
/// (upcast from its stored schema version, then decoded: [`DomainEvent::from_recorded`]).
///
/// A failure is [`ReadModelError::Handler`]: the event's fault, so the consumer
/// dead-letters it after a few tries instead of stalling on it as on a storage failure.
pub fn decode<E: DomainEvent>(e: &RecordedEvent) -> Result<E, ReadModelError> {
    E::from_recorded(e).map_err(|err| ReadModelError::Handler(err.to_string()))
}

/// A read model: its tables, the events it handles, and how one event changes it.
pub trait Projection: Send + Sync + 'static {
    /// Unique name; also its checkpoint key.
    fn name(&self) -> &'static str;
    /// Tables it writes.
    fn tables(&self) -> Vec<TableSpec>;
    /// Event types it handles; others are skipped without reaching it.
    fn event_types(&self) -> Vec<&'static str>;
    /// Its version: when it changes, the read model is rebuilt (without downtime) at start.
    fn version(&self) -> u32 {
        1
    }
    /// Applies one event inside the batch's transaction.
    fn apply(&self, event: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError>;

    /// How long it waits after a batch before looking for the next, when it has caught
    /// up: commits that arrive meanwhile are handled as one batch. Zero (the default)
    /// handles each commit as soon as it is visible, which read-your-writes queries need;
    /// a read model nobody waits on by position (the stream catalog) trades a little lag
    /// for far fewer transactions under load.
    fn coalesce(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Applies a batch (in `$all` order) inside one transaction. The default applies each
    /// event; a projection may override it to load and save each document once per batch.
    fn apply_batch(
        &self,
        events: &[RecordedEvent],
        txn: &mut dyn DocTxn,
    ) -> Result<(), ReadModelError> {
        events.iter().try_for_each(|e| self.apply(e, txn))
    }
}

struct ProjectionHandler {
    projection: Arc<dyn Projection>,
    readmodels: Arc<dyn ReadModelStore>,
    /// Writes into the shadow tables under the checkpoint `<name>#rebuild`.
    shadow: bool,
    name: String,
}

/// A handler's refusal is the event's fault; the storage's failures are retried.
fn classify(e: &ReadModelError) -> HandleError {
    if e.is_deposed() {
        HandleError::Deposed(e.to_string())
    } else if e.is_storage() {
        HandleError::Transient(e.to_string())
    } else {
        HandleError::Event(e.to_string())
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), ReadModelError> + Send + 'static,
) -> Result<(), HandleError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| classify(&e)),
        // A projection that panics on an event (e.g. arithmetic on what a user sent) is
        // the event's fault: dead-lettered after a few tries, never a stall. The
        // transaction it ran in was dropped, so nothing of it was committed.
        Err(e) if e.is_panic() => Err(HandleError::Event(format!(
            "projection panicked: {}",
            consumer::panic_message(e.into_panic().as_ref())
        ))),
        Err(e) => Err(HandleError::Transient(e.to_string())),
    }
}

#[async_trait]
impl BatchHandler for ProjectionHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> Vec<String> {
        self.projection.event_types().into_iter().map(str::to_owned).collect()
    }

    fn readmodels(&self) -> &Arc<dyn ReadModelStore> {
        &self.readmodels
    }

    fn coalesce(&self) -> std::time::Duration {
        self.projection.coalesce()
    }

    async fn handle(
        &self,
        fence: &Fence,
        events: Vec<RecordedEvent>,
        scanned_to: u64,
    ) -> Result<(), HandleError> {
        let (rm, projection, name, shadow, fence) = (
            Arc::clone(&self.readmodels),
            Arc::clone(&self.projection),
            self.name.clone(),
            self.shadow,
            fence.clone(),
        );
        blocking(move || {
            let mut apply = |txn: &mut dyn DocTxn| {
                // Most read-model documents are keyed by the aggregate: fetch them for the
                // whole batch at once (a no-op on the embedded store).
                let mut keys: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                for table in projection.tables() {
                    txn.prefetch(table.name, &keys)?;
                }
                projection.apply_batch(&events, txn)
            };
            if shadow {
                rm.transact_shadow(&fence, &name, Some(scanned_to), &mut apply)
            } else {
                rm.transact_derived(&fence, &name, scanned_to, &mut apply)
            }
        })
        .await
    }

    async fn retry(
        &self,
        fence: &Fence,
        event: RecordedEvent,
        letter_id: i64,
    ) -> Result<(), HandleError> {
        let (rm, projection, name, fence) = (
            Arc::clone(&self.readmodels),
            Arc::clone(&self.projection),
            self.name.clone(),
            fence.clone(),
        );
        blocking(move || {
            rm.resolve_dead_letter(&fence, &name, letter_id, &mut |txn| {
                projection.apply(&event, txn)
            })
        })
        .await
    }

    fn shadow(&self) -> Option<Arc<dyn BatchHandler>> {
        Some(Arc::new(ProjectionHandler {
            projection: Arc::clone(&self.projection),
            readmodels: Arc::clone(&self.readmodels),
            shadow: true,
            name: format!("{}#rebuild", self.projection.name()),
        }))
    }

    fn tables(&self) -> Vec<&'static str> {
        self.projection.tables().iter().map(|t| t.name).collect()
    }

    async fn rebuilt(&self) {
        let (rm, name, version) =
            (Arc::clone(&self.readmodels), self.projection.name(), self.projection.version());
        let _ = tokio::task::spawn_blocking(move || rm.set_projection_version(name, version)).await;
    }
}

/// Creates the projection's tables and starts it from its checkpoint.
pub fn spawn_projection(
    store: Arc<dyn EventStore>,
    readmodels: Arc<dyn ReadModelStore>,
    projection: Arc<dyn Projection>,
    shutdown: watch::Receiver<bool>,
) -> Result<ConsumerHandle, ReadModelError> {
    readmodels.ensure_tables(&projection.tables())?;
    let stored = readmodels.projection_version(projection.name())?;
    let version = projection.version();
    if stored.is_none() {
        readmodels.set_projection_version(projection.name(), version)?;
    }
    let name = projection.name().to_owned();
    let handle = consumer::spawn(
        store,
        Arc::new(ProjectionHandler { projection, readmodels, shadow: false, name: name.clone() }),
        shutdown,
    );
    if stored.is_some_and(|v| v != version) {
        // A new version of the projection: rebuilt beside the old read model, swapped in.
        tracing::info!(projection = %name, from = stored, to = version, "projection version changed; rebuilding");
        handle.rebuild_when_leading();
    }
    Ok(handle)
}

/// Starts a projection as `count` partitions (`<name>#p<index>of<count>`), each with its
/// own checkpoint, led by whichever process holds its lease: parallel catch-up across
/// processes, per-aggregate order kept. Only for projections whose documents are keyed by
/// a single aggregate (a projection joining aggregates must stay whole). Not rebuildable
/// in place: change the partition count or the version to rebuild.
pub fn spawn_partitioned_projection(
    store: &Arc<dyn EventStore>,
    readmodels: &Arc<dyn ReadModelStore>,
    projection: &Arc<dyn Projection>,
    count: u32,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<ConsumerHandle>, ReadModelError> {
    readmodels.ensure_tables(&projection.tables())?;
    let handles: Vec<ConsumerHandle> = (0..count.max(1))
        .map(|index| {
            let name = format!("{}#p{index}of{count}", projection.name());
            consumer::spawn_partition(
                Arc::clone(store),
                Arc::new(ProjectionHandler {
                    projection: Arc::clone(projection),
                    readmodels: Arc::clone(readmodels),
                    shadow: false,
                    name,
                }),
                shutdown.clone(),
                Some(consumer::Partition { index, count }),
            )
        })
        .collect();
    tokio::spawn(rebalance(handles.clone(), Arc::clone(readmodels), shutdown.clone()));
    Ok(handles)
}

/// How often a process checks whether it leads more than its share of partitions.
const REBALANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a handed-over partition is left for others to take: a live process's
/// followers try every second, so three seconds suffice; and should the process it was
/// meant for have died meanwhile, the partition waits no longer than that.
const HAND_OVER_HOLD_OFF: std::time::Duration = std::time::Duration::from_secs(3);

/// Keeps this process at its fair share of the partitions (⌈partitions / live processes⌉):
/// when a process joins, the others hand partitions over one at a time; when one dies,
/// its partitions are free and the survivors take them (their followers try every second).
async fn rebalance(
    handles: Vec<ConsumerHandle>,
    readmodels: Arc<dyn ReadModelStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Over its share on two checks in a row: a process that just died still counts as
    // live for a few seconds (its heartbeat has not aged out), and a partition handed to
    // it would sit idle for the hold-off.
    let mut over_share_before = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(REBALANCE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let rm = Arc::clone(&readmodels);
        let Ok(Ok(live)) = tokio::task::spawn_blocking(move || rm.live_members()).await else {
            continue;
        };
        let fair = handles.len().div_ceil(live.max(1));
        let leading: Vec<&ConsumerHandle> = handles.iter().filter(|h| h.is_leader()).collect();
        let over_share = leading.len() > fair;
        let confirmed = over_share && over_share_before;
        over_share_before = over_share;
        if confirmed && let Some(h) = leading.last() {
            over_share_before = false;
            tracing::info!(partition = h.name(), live, fair, "handing a partition over");
            h.hand_over(HAND_OVER_HOLD_OFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::RecordedEvent;
    use cairn_core::readmodel::ReadModelError;
    use cairn_core::timestamp::Timestamp;
    use serde_json::value::RawValue;

    use super::decode;
    // Its `Deposited` has a v1 shape (`amount`) upcast to v2 (`cents`).
    use crate::kind::tests::PurseEvent;

    fn stored(data: &str, metadata: &str) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            aggregate_id: "p-1".into(),
            aggregate_type: "Purse".into(),
            event_type: "Deposited".into(),
            version: 1,
            position: 1,
            timestamp: Timestamp::now(),
            data: RawValue::from_string(data.into()).unwrap(),
            metadata: RawValue::from_string(metadata.into()).unwrap(),
        }
    }

    fn cents(event: &PurseEvent) -> i64 {
        match event {
            PurseEvent::Deposited(d) => d.cents,
            PurseEvent::Closed(_) => panic!("not a deposit: {event:?}"),
        }
    }

    #[test]
    fn decode_upcasts_and_a_bad_event_is_the_events_fault() {
        let v2 = decode::<PurseEvent>(&stored(r#"{"cents":7}"#, r#"{"schema_version":2}"#));
        assert_eq!(v2.map(|e| cents(&e)).unwrap(), 7);
        // No schema_version in the metadata means v1: upcast before decoding.
        let v1 = decode::<PurseEvent>(&stored(r#"{"amount":7}"#, "{}"));
        assert_eq!(v1.map(|e| cents(&e)).unwrap(), 7);
        let bad = decode::<PurseEvent>(&stored(r#"{"cents":"seven"}"#, r#"{"schema_version":2}"#));
        let err = bad.unwrap_err();
        assert!(matches!(err, ReadModelError::Handler(_)), "{err:?}");
        assert!(!err.is_storage(), "dead-lettered, never a stall");
    }
}
