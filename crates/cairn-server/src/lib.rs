//! Cairn's HTTP API: the contract in `docs/http-api.md` (cited as "contract §N"), served
//! with axum, for a server built from modules ([`Server::builder`]).
//!
//! This is the only crate that knows HTTP. Handlers translate requests into calls on the
//! core traits and map every error to the contract's JSON shape in one place
//! ([`error::ApiError`]).

pub mod auth;
pub mod bus;
pub mod catalog;
pub mod command;
pub mod consumers;
pub mod domain_schemas;
pub mod error;
pub mod extract;
pub mod generic;
pub mod guard;
pub mod json_depth;
pub mod leaders;
pub mod metrics;
pub mod module;
mod partitions;
pub mod query;
pub mod request_id;
mod routes;
pub mod schema_first;
pub mod schema_version;
pub mod schemas;
pub mod server;
pub mod timeout;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::EventStore;
use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use cairn_core::snapshot::SnapshotStore;
use cairn_cqrs::{AggregateKind, Repository};
use tokio::sync::watch;

use crate::consumers::{Consumers, RegisterError};

pub use bus::{IntegrationEvents, IntegrationRouter, NatsCommand, Translate};
pub use consumers::ProjectionView;
pub use module::ProjectionOptions;
pub use module::{Module, ModuleBuilder, Permission, Route, RouteInfo, SchemaTable};
pub use routes::CORE_ROUTES;
pub use routes::{openapi, streams};
pub use server::{BuildError, RunningServer, Server, ServerBuilder};
pub use timeout::REQUEST_TIMEOUT_SECS_DEFAULT;

/// Default request body limit (contract §7).
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 1024 * 1024;

/// Default lifetime of an HTTP idempotency record (a day: long enough for any client's
/// retries, short enough that the table does not grow without end).
pub const IDEMPOTENCY_TTL_SECS_DEFAULT: u64 = 86_400;

/// Default cap on concurrent `/all/subscribe` streams: each can replay the whole log, a
/// page (up to the read byte cap) at a time, so the cap bounds what subscribers hold.
pub const SSE_SUBSCRIBERS_MAX_DEFAULT: usize = 256;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body; larger ones get `413 payload_too_large`.
    pub body_limit_bytes: usize,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive_secs: u64,
    /// The base URL other processes sharing the database reach this one at
    /// (`cairn serve --advertise-url`, e.g. `http://10.0.0.7:7070`): published for the
    /// consumers it leads, so that an admin request sent to another process is forwarded
    /// here. `None`: admin requests for the consumers it leads are not forwarded to it
    /// (the other processes answer `409 not_leader`).
    pub advertise_url: Option<String>,
    /// How long an HTTP `Idempotency-Key` is remembered (`cairn serve
    /// --idempotency-ttl-secs`); after that, the key is free again.
    pub idempotency_ttl_secs: u64,
    /// Who may call what (#16): off by default (every route open, as on loopback).
    pub auth: auth::AuthConfig,
    /// Most `/all/subscribe` streams open at once; one more is `429 too_many_subscribers`.
    pub sse_subscribers_max: usize,
    /// Longest time for reading a request's body and handling it (`cairn serve
    /// --request-timeout-secs`); past it the client gets `408 request_timeout`. A
    /// streaming response is exempt once its headers are sent. `0`: no deadline.
    pub request_timeout_secs: u64,
    /// The client that forwards admin requests to the leading process; `None`: a default
    /// one (the system's root certificates for an `https://` leader). `cairn serve
    /// --tls-ca-file` gives one that also trusts a private CA.
    pub forward_client: Option<reqwest::Client>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            sse_keep_alive_secs: 15,
            advertise_url: None,
            idempotency_ttl_secs: IDEMPOTENCY_TTL_SECS_DEFAULT,
            auth: auth::AuthConfig::default(),
            sse_subscribers_max: SSE_SUBSCRIBERS_MAX_DEFAULT,
            request_timeout_secs: REQUEST_TIMEOUT_SECS_DEFAULT,
            forward_client: None,
        }
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
    /// Subjects' keys: erasing one erases its personal fields (#19).
    pub vault: Arc<vault::Vault>,
    /// Every registered aggregate type, by type name: the store API checks appends to
    /// their streams against them.
    pub aggregates: Arc<BTreeMap<&'static str, AggregateKind>>,
    /// The OpenAPI document of every served route, serialised once at start.
    pub(crate) openapi: Arc<str>,
    /// Where each consumer's leader is reached (admin requests are forwarded there).
    pub leaders: Arc<leaders::LeaderRegistry>,
    /// One permit per open `/all/subscribe` stream ([`HttpConfig::sse_subscribers_max`]).
    pub(crate) subscribers: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The registered aggregate type `type_name`, if a module registered it.
    #[must_use]
    pub fn aggregate(&self, type_name: &str) -> Option<&AggregateKind> {
        self.aggregates.get(type_name)
    }

    /// The read-your-writes face of projection `name` (whole or partitioned), if a module
    /// registered it.
    #[must_use]
    pub fn projection(&self, name: &str) -> Option<ProjectionView> {
        self.consumers.view(name)
    }

    /// The OpenAPI document of every served route (`GET /openapi.json`), as JSON.
    #[must_use]
    pub fn openapi_json(&self) -> &str {
        &self.openapi
    }

    /// A place among the open subscriptions (`/all/subscribe` and gRPC's alike), held
    /// until dropped; `None` when [`HttpConfig::sse_subscribers_max`] are open.
    #[must_use]
    pub fn subscriber_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.subscribers).try_acquire_owned().ok()
    }
}

/// Every projection, process manager and relay as `GET /admin/projections` lists them
/// (contract §6), for other faces of the server (the console shows them to every role:
/// `/metrics` already tells readers their positions, lag and dead-letter depth).
pub async fn consumer_rows(state: &AppState) -> Vec<serde_json::Value> {
    routes::admin_rows(state).await
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
    /// Two consumers share a name (a wiring bug; [`Server`] refuses it at build).
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The OpenAPI document cannot be serialised (a module's documentation is malformed).
    #[error("the OpenAPI document cannot be serialised: {0}")]
    OpenApi(serde_json::Error),
}
