//! Cairn's HTTP API: the contract in `shared/spec/http-api.md`, served with axum.
//!
//! This is the only crate that knows HTTP. Handlers translate requests into calls on the
//! core traits and map every error to the contract's JSON shape in one place
//! ([`error::ApiError`]).

pub mod domain;
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
use tokio::sync::watch;

use crate::domain::Domain;

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
    /// The reference domain (commands, read models, process manager).
    pub domain: Arc<Domain>,
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

/// Starts the domain's background consumers and builds the full application.
pub fn app(
    stores: Stores,
    config: HttpConfig,
    domain: &DomainConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Router, ReadModelError> {
    app_with_domain(stores, config, domain, shutdown).map(|(router, _)| router)
}

/// Like [`app`], also returning the running domain (benchmarks and tests observe it).
pub fn app_with_domain(
    stores: Stores,
    config: HttpConfig,
    domain: &DomainConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(Router, Arc<Domain>), ReadModelError> {
    // Every append is checked against its type's registered schema, then counted and timed.
    let registry = Arc::new(schemas::SchemaRegistry::load(Arc::clone(&stores.readmodels))?);
    // Before anything can append: the first domain event is validated like every later one.
    domain_schemas::register(&registry)?;
    let metered: Arc<dyn EventStore> =
        Arc::new(metrics::ServerStore::new(Arc::clone(&stores.events), Arc::clone(&registry)));
    let _ = metrics::handle();
    let stores = Stores { events: Arc::clone(&metered), ..stores };
    let store = metered;
    let running = Arc::new(Domain::start(stores, domain, &shutdown)?);
    let state = AppState {
        store,
        config: Arc::new(config),
        shutdown,
        domain: Arc::clone(&running),
        schemas: registry,
    };
    Ok((router(state), running))
}
