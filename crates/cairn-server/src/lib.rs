//! Cairn's HTTP API: the contract in `shared/spec/http-api.md`, served with axum.
//!
//! This is the only crate that knows HTTP. Handlers translate requests into calls on the
//! core traits and map every error to the contract's JSON shape in one place
//! ([`error::ApiError`]).

pub mod consumers;
pub mod domain_schemas;
pub mod error;
mod extract;
pub mod guard;
pub mod metrics;
mod routes;
pub mod schemas;

use std::sync::Arc;

use axum::Router;
use cairn_core::EventStore;
use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use cairn_core::snapshot::SnapshotStore;
use cairn_cqrs::Repository;
use cairn_cqrs::process::spawn_process_manager_with;
use cairn_cqrs::projection::{Projection, spawn_projection};
use tokio::sync::watch;

use crate::consumers::{Consumers, RegisterError};

pub use routes::openapi;
pub use routes::{ROUTES, router};

/// Default request body limit (contract §7).
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 1024 * 1024;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body; larger ones get `413 payload_too_large`.
    pub body_limit_bytes: usize,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT, sse_keep_alive_secs: 15 }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// HTTP settings.
    pub config: Arc<HttpConfig>,
    /// Flips to `true` when the server starts shutting down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// Runs commands.
    pub repository: Repository,
    /// Read models, checkpoints and process state.
    pub readmodels: Arc<dyn ReadModelStore>,
    /// Every projection, process manager and outbox, by name.
    pub consumers: Arc<Consumers>,
    /// Event schemas.
    pub schemas: Arc<schemas::SchemaRegistry>,
}

/// The storage a server runs on.
#[derive(Clone)]
pub struct Stores {
    /// The event log.
    pub events: Arc<dyn EventStore>,
    /// Read models, checkpoints, process-manager state.
    pub readmodels: Arc<dyn ReadModelStore>,
    /// Aggregate snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
}

/// Settings of the write side.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// A load that replays this many events or more takes a snapshot.
    pub snapshot_every: u64,
    /// Start the process managers paused: they issue no command until resumed through
    /// the admin API (for a store that is about to receive another store's history).
    pub pause_process_managers: bool,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            snapshot_every: cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT,
            pause_process_managers: false,
        }
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Creating tables, reading versions or registering schemas failed.
    #[error(transparent)]
    ReadModels(#[from] ReadModelError),
    /// Two consumers share a name (a wiring bug).
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// The projections this server runs (today: the Order Management context's). The
/// start-up guard needs them before anything starts, to know which consumers it may reset.
#[must_use]
pub fn projections() -> Vec<Arc<dyn Projection>> {
    cairn_orders::projections()
}

/// Creates the tables and starts every projection and process manager, registered in
/// one [`Consumers`].
fn start_consumers(
    stores: Stores,
    config: &DomainConfig,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Repository, Consumers), StartError> {
    let Stores { events: store, readmodels, snapshots } = stores;
    let mut consumers = Consumers::new();
    for projection in projections() {
        let name = projection.name();
        let handle = spawn_projection(
            Arc::clone(&store),
            Arc::clone(&readmodels),
            projection,
            shutdown.clone(),
        )?;
        consumers.add_projection(name, handle)?;
    }
    let repository =
        Repository::with_snapshots(Arc::clone(&store), snapshots, config.snapshot_every);
    // Wired by hand until modules register their consumers (docs/design/modules.md, step 3).
    let manager = Arc::new(cairn_orders::fulfillment::OrderFulfillment);
    let instances = cairn_cqrs::process::ProcessManager::instances(&*manager);
    let fulfillment = spawn_process_manager_with(
        repository.clone(),
        Arc::clone(&readmodels),
        manager,
        shutdown.clone(),
        config.pause_process_managers,
    )?;
    consumers.add_process_manager(cairn_orders::fulfillment::NAME, fulfillment, instances)?;
    Ok((repository, consumers))
}

/// Starts the background consumers and builds the full application.
pub fn app(
    stores: Stores,
    config: HttpConfig,
    domain: &DomainConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Router, StartError> {
    app_with_domain(stores, config, domain, shutdown).map(|(router, _)| router)
}

/// Like [`app`], also returning the running consumers (benchmarks and tests observe
/// them; the binary adds its outboxes).
pub fn app_with_domain(
    stores: Stores,
    config: HttpConfig,
    domain: &DomainConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(Router, Arc<Consumers>), StartError> {
    // Every append is checked against its type's registered schema, then counted and timed.
    let registry = Arc::new(schemas::SchemaRegistry::load(Arc::clone(&stores.readmodels))?);
    // Before anything can append: the first domain event is validated like every later one.
    domain_schemas::register(&registry)?;
    let metered: Arc<dyn EventStore> =
        Arc::new(metrics::ServerStore::new(Arc::clone(&stores.events), Arc::clone(&registry)));
    let _ = metrics::handle();
    let readmodels = Arc::clone(&stores.readmodels);
    let stores = Stores { events: Arc::clone(&metered), ..stores };
    let (repository, consumers) = start_consumers(stores, domain, &shutdown)?;
    let consumers = Arc::new(consumers);
    let state = AppState {
        store: metered,
        config: Arc::new(config),
        shutdown,
        repository,
        readmodels,
        consumers: Arc::clone(&consumers),
        schemas: registry,
    };
    Ok((router(state), consumers))
}
