//! The registry of every background consumer the server runs: projections, process
//! managers and outboxes, each under its name and kind. Admin, `/metrics`, readiness,
//! the dead-letter endpoints and process-manager state all iterate it, so registering a
//! consumer here is all it takes for every operational feature to cover it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_cqrs::consumer::{ConsumerHandle, ConsumerStatus};
use serde::Serialize;
use thiserror::Error;

/// The kinds of row in `GET /admin/projections`.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    /// A read model.
    Projection,
    /// A process manager: it issues commands.
    ProcessManager,
    /// A publisher of `$all` to the bus.
    Relay,
}

/// Where a process manager keeps its instances (from its `ProcessManager::instances`).
pub use cairn_cqrs::process::Instances;

/// A publisher of `$all` to the outside world (e.g. the NATS outbox relay): listed with the
/// projections in `/admin/projections` and in `/metrics`.
pub trait Outbox: Send + Sync {
    /// Its name (its checkpoint's name, e.g. `relay:CAIRN_EVENTS`).
    fn name(&self) -> String;
    /// Every event up to this `$all` position has been published and acknowledged.
    fn position(&self) -> u64;
    /// Events this process has published.
    fn published(&self) -> u64;
    /// Whether this process runs it (another process may).
    fn leading(&self) -> bool;
    /// Events it parked in the dead-letter queue (it could not make a message of them).
    fn dlq_depth(&self) -> u64 {
        0
    }
}

/// Why a consumer could not be registered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// Consumer names key checkpoints, dead letters and the admin paths, so two
    /// consumers under one name would share (and corrupt) one checkpoint.
    #[error("a consumer named {name:?} is already registered")]
    Duplicate {
        /// The name registered twice.
        name: String,
    },
}

/// A running projection: one consumer, or one per partition (`<name>#p<i>of<n>`).
#[derive(Clone)]
enum Projected {
    Whole(ConsumerHandle),
    Partitioned(Vec<ConsumerHandle>),
}

impl Projected {
    fn handles(&self) -> &[ConsumerHandle] {
        match self {
            Self::Whole(handle) => std::slice::from_ref(handle),
            Self::Partitioned(handles) => handles,
        }
    }
}

/// The read-your-writes face of a projection, whole or partitioned: all a query handler
/// needs of it. Handlers never hold a consumer handle, so the engine behind it can change.
#[derive(Clone)]
pub struct ProjectionView {
    handles: Vec<ConsumerHandle>,
}

impl ProjectionView {
    /// The last `$all` position every partition has scanned: the read model shows every
    /// event up to it (for a whole projection, its position).
    #[must_use]
    pub fn position(&self) -> u64 {
        self.handles.iter().map(ConsumerHandle::position).min().unwrap_or(0)
    }

    /// Waits until every partition has scanned `position` (each moves over the events it
    /// skips, so the wait ends once the log has been read that far); `Err(position())`
    /// after `timeout`, one deadline for all of them.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reached = u64::MAX;
        for handle in &self.handles {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match handle.wait_for(position, left).await {
                Ok(p) => reached = reached.min(p),
                Err(_) => return Err(self.position()),
            }
        }
        // Every partition is past `position`; with none (never built so) it is reached.
        Ok(if reached == u64::MAX { position } else { reached })
    }
}

impl std::fmt::Debug for ProjectionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionView")
            .field("partitions", &self.handles.iter().map(ConsumerHandle::name).collect::<Vec<_>>())
            .field("position", &self.position())
            .finish()
    }
}

/// Every running projection, process manager and outbox, by name.
#[derive(Default)]
pub struct Consumers {
    projections: BTreeMap<&'static str, Projected>,
    process_managers: BTreeMap<&'static str, (ConsumerHandle, Instances)>,
    /// Registered after start (the binary adds the NATS relay once the router exists).
    outboxes: Mutex<Vec<Arc<dyn Outbox>>>,
}

impl Consumers {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn check_free(&self, name: &str) -> Result<(), RegisterError> {
        if self.projections.contains_key(name)
            || self.process_managers.contains_key(name)
            || self.partition(name).is_some()
        {
            return Err(RegisterError::Duplicate { name: name.to_owned() });
        }
        Ok(())
    }

    /// Registers a running projection under `name` (its consumer name).
    pub fn add_projection(
        &mut self,
        name: &'static str,
        handle: ConsumerHandle,
    ) -> Result<(), RegisterError> {
        self.check_free(name)?;
        self.projections.insert(name, Projected::Whole(handle));
        Ok(())
    }

    /// Registers a projection running as `partitions` (one consumer each, named
    /// `<name>#p<i>of<n>`) under its own `name`.
    pub fn add_partitioned_projection(
        &mut self,
        name: &'static str,
        partitions: Vec<ConsumerHandle>,
    ) -> Result<(), RegisterError> {
        self.check_free(name)?;
        for partition in &partitions {
            self.check_free(partition.name())?;
        }
        self.projections.insert(name, Projected::Partitioned(partitions));
        Ok(())
    }

    /// The partition of a partitioned projection named `name` (`<projection>#p<i>of<n>`).
    fn partition(&self, name: &str) -> Option<&ConsumerHandle> {
        let (base, _) = name.split_once("#p")?;
        match self.projections.get(base)? {
            Projected::Partitioned(handles) => handles.iter().find(|h| h.name() == name),
            Projected::Whole(_) => None,
        }
    }

    /// The read-your-writes face of projection `name`, whole or partitioned.
    #[must_use]
    pub fn view(&self, name: &str) -> Option<ProjectionView> {
        self.projections.get(name).map(|p| ProjectionView { handles: p.handles().to_vec() })
    }

    /// The partitions of projection `name`, when it runs partitioned.
    #[must_use]
    pub fn partitions(&self, name: &str) -> Option<&[ConsumerHandle]> {
        match self.projections.get(name)? {
            Projected::Partitioned(handles) => Some(handles),
            Projected::Whole(_) => None,
        }
    }

    /// Registers a running process manager under `name`, with where its instances live.
    pub fn add_process_manager(
        &mut self,
        name: &'static str,
        handle: ConsumerHandle,
        instances: Instances,
    ) -> Result<(), RegisterError> {
        self.check_free(name)?;
        self.process_managers.insert(name, (handle, instances));
        Ok(())
    }

    /// The projection `name` when it runs whole (one consumer); a partitioned one has
    /// [`Consumers::partitions`] instead, and both have [`Consumers::view`].
    #[must_use]
    pub fn projection(&self, name: &str) -> Option<&ConsumerHandle> {
        match self.projections.get(name)? {
            Projected::Whole(handle) => Some(handle),
            Projected::Partitioned(_) => None,
        }
    }

    /// The process manager `name` and where its instances live.
    #[must_use]
    pub fn process_manager(&self, name: &str) -> Option<(&ConsumerHandle, &Instances)> {
        self.process_managers.get(name).map(|(handle, instances)| (handle, instances))
    }

    /// Every projection's consumer, by name: one per partition of a partitioned one.
    pub fn projections(&self) -> impl Iterator<Item = &ConsumerHandle> {
        self.projections.values().flat_map(Projected::handles)
    }

    /// Every process manager with where its instances live, by name.
    pub fn process_managers(&self) -> impl Iterator<Item = (&ConsumerHandle, &Instances)> {
        self.process_managers.values().map(|(handle, instances)| (handle, instances))
    }

    /// Every projection (each partition of a partitioned one), then every process manager
    /// (each by name), with its kind.
    pub fn all(&self) -> impl Iterator<Item = (ConsumerKind, &ConsumerHandle)> {
        self.projections()
            .map(|c| (ConsumerKind::Projection, c))
            .chain(self.process_managers.values().map(|(c, _)| (ConsumerKind::ProcessManager, c)))
    }

    /// The projection, partition or process manager `name`, with its kind.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<(ConsumerKind, &ConsumerHandle)> {
        self.projection(name)
            .or_else(|| self.partition(name))
            .map(|c| (ConsumerKind::Projection, c))
            .or_else(|| self.process_manager(name).map(|(c, _)| (ConsumerKind::ProcessManager, c)))
    }

    /// Registers a publisher to be reported beside the projections.
    pub fn add_outbox(&self, outbox: Arc<dyn Outbox>) {
        self.outboxes.lock().unwrap_or_else(PoisonError::into_inner).push(outbox);
    }

    /// The registered publishers.
    #[must_use]
    pub fn outboxes(&self) -> Vec<Arc<dyn Outbox>> {
        self.outboxes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Which consumers are not fully well: not ready while one is starting or has failed;
    /// ready, but named, while one is stalled (its storage keeps failing).
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let mut readiness = Readiness::default();
        for (_, c) in self.all() {
            let list = match c.status() {
                ConsumerStatus::Starting => &mut readiness.starting,
                ConsumerStatus::Failed => &mut readiness.failed,
                ConsumerStatus::Stalled => &mut readiness.stalled,
                _ => continue,
            };
            list.push(c.name().to_owned());
        }
        readiness
    }
}

/// What `/health/ready` reports of the consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Still loading their checkpoint (or waiting to lead).
    pub starting: Vec<String>,
    /// Retrying their storage with backoff: serving stale reads.
    pub stalled: Vec<String>,
    /// Stopped for good.
    pub failed: Vec<String>,
}

impl Readiness {
    /// Ready = every consumer started and none failed (contract §6); stalled ones are
    /// named but do not make the process unready (their reads still answer, with lag).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.starting.is_empty() && self.failed.is_empty()
    }

    /// A one-line account for the `message` field.
    #[must_use]
    pub fn message(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("failed", &self.failed),
            ("still starting", &self.starting),
            ("stalled", &self.stalled),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {}", names.join(", ")));
            }
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_cqrs::projection::spawn_projection;
    use cairn_testkit::Backend;
    use tokio::sync::watch;

    const INSTANCES: Instances = Instances::table("t").by_status(&["open"]);

    /// One running projection of the Order context, on a fresh embedded store.
    async fn running(
        name: &'static str,
    ) -> (ConsumerHandle, cairn_testkit::Place, watch::Sender<bool>) {
        let (stores, place) = Backend::Sqlite.open().await;
        let (stop, stop_rx) = watch::channel(false);
        let projection = cairn_orders::projections()
            .into_iter()
            .find(|p| p.name() == name)
            .expect("an Order projection of that name");
        let handle =
            spawn_projection(stores.events, stores.readmodels, projection, stop_rx).expect("spawn");
        (handle, place, stop)
    }

    #[tokio::test]
    async fn a_name_is_registered_once_whatever_the_kind() {
        let (handle, _place, _stop) = running("order_summary").await;
        let mut consumers = Consumers::new();
        consumers.add_projection("order_summary", handle.clone()).unwrap();
        let duplicate = RegisterError::Duplicate { name: "order_summary".to_owned() };
        assert_eq!(
            consumers.add_projection("order_summary", handle.clone()),
            Err(duplicate.clone())
        );
        assert_eq!(
            consumers.add_process_manager("order_summary", handle.clone(), INSTANCES),
            Err(duplicate)
        );
        consumers.add_process_manager("manager", handle, INSTANCES).unwrap();
        let kinds: Vec<ConsumerKind> = consumers.all().map(|(kind, _)| kind).collect();
        assert_eq!(kinds, [ConsumerKind::Projection, ConsumerKind::ProcessManager]);
        assert_eq!(
            consumers.get("manager").map(|(kind, _)| kind),
            Some(ConsumerKind::ProcessManager)
        );
        assert_eq!(consumers.process_manager("manager").map(|(_, i)| *i), Some(INSTANCES));
        assert!(consumers.process_manager("order_summary").is_none(), "a projection is no manager");
        assert!(consumers.get("nothing").is_none());
    }
}
