//! Wires the reference domain: the repository, the projections and the process manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use cairn_cqrs::Repository;
use cairn_cqrs::consumer::{ConsumerHandle, ConsumerStatus};
use cairn_cqrs::process::spawn_process_manager_with;
use cairn_cqrs::projection::spawn_projection;
use tokio::sync::watch;

use crate::{DomainConfig, Stores};

/// The running read side and write side of the Order Management context.
pub struct Domain {
    /// Runs commands.
    pub repository: Repository,
    /// Read models, checkpoints and process state.
    pub readmodels: Arc<dyn ReadModelStore>,
    /// Projections by name.
    pub projections: BTreeMap<&'static str, ConsumerHandle>,
    /// The `OrderFulfillment` process manager.
    pub fulfillment: ConsumerHandle,
    /// Publishers running beside the domain (the NATS relay), registered by the binary.
    pub outboxes: std::sync::Mutex<Vec<Arc<dyn Outbox>>>,
}

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
}

impl Domain {
    /// Registers a publisher to be reported beside the projections.
    pub fn add_outbox(&self, outbox: Arc<dyn Outbox>) {
        self.outboxes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(outbox);
    }

    /// The registered publishers.
    #[must_use]
    pub fn outboxes(&self) -> Vec<Arc<dyn Outbox>> {
        self.outboxes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Domain {
    /// Creates the tables and starts every projection and the process manager.
    pub fn start(
        stores: Stores,
        config: &DomainConfig,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Self, ReadModelError> {
        let Stores { events: store, readmodels, snapshots } = stores;
        let mut projections = BTreeMap::new();
        for projection in cairn_orders::projections() {
            let name = projection.name();
            let handle = spawn_projection(
                Arc::clone(&store),
                Arc::clone(&readmodels),
                projection,
                shutdown.clone(),
            )?;
            projections.insert(name, handle);
        }
        let repository =
            Repository::with_snapshots(Arc::clone(&store), snapshots, config.snapshot_every);
        let fulfillment = spawn_process_manager_with(
            repository.clone(),
            Arc::clone(&readmodels),
            Arc::new(cairn_orders::fulfillment::OrderFulfillment),
            shutdown.clone(),
            config.pause_process_managers,
        )?;
        Ok(Self {
            repository,
            readmodels,
            projections,
            fulfillment,
            outboxes: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The process managers (consumers that issue commands), by name.
    pub fn process_managers(&self) -> impl Iterator<Item = &ConsumerHandle> {
        std::iter::once(&self.fulfillment)
    }

    /// Every background consumer, for health.
    pub fn consumers(&self) -> impl Iterator<Item = &ConsumerHandle> {
        self.projections.values().chain(std::iter::once(&self.fulfillment))
    }

    /// Which consumers are not fully well: not ready while one is starting or has failed;
    /// ready, but named, while one is stalled (its storage keeps failing).
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let mut readiness = Readiness::default();
        for c in self.consumers() {
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
