//! A module: one bounded context as the server sees it — its aggregates, event schemas,
//! projections, process managers and routes. A module is a value built with
//! [`Module::builder`], not a trait: registering `aggregate::<A>()` needs a generic
//! method, and checks across modules (unique names) belong to the server build
//! ([`crate::server::ServerBuilder::build`]).

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use cairn_cqrs::process::ProcessManager;
use cairn_cqrs::projection::Projection;
use cairn_cqrs::{Aggregate, AggregateKind};
use utoipa::openapi::OpenApi;

use crate::AppState;
pub use crate::bus::{IntegrationEvents, Translate};

/// `(event type, its schema versions oldest first)`: one entry per event type, each
/// version a JSON Schema text. The number of versions is the type's schema version.
pub type SchemaTable = &'static [(&'static str, &'static [&'static str])];

/// Who may call a route. In #12 a route only carries it (as a request extension); #16
/// checks it against the caller's role, so every route must say now what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Permission {
    /// Probes and `/openapi.json`: never behind credentials.
    Public,
    /// Queries, aggregate state and events, the store's reads, `/metrics`.
    Read,
    /// Commands.
    Write,
    /// Raw appends through the store API.
    Append,
    /// Everything under `/admin`.
    Admin,
}

/// One route of the router: a method and a path, the handler, and its permission.
pub struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) permission: Permission,
    /// `None` when axum cannot route `method` (refused at build, not a panic at start).
    pub(crate) handler: Option<MethodRouter<AppState>>,
    /// The route's own OpenAPI paths and components (generic routes build theirs).
    pub(crate) openapi: Option<OpenApi>,
    /// Its command name over NATS, if it is also served there.
    pub(crate) nats: Option<&'static str>,
    /// What the server checks at build against every module (generic routes name
    /// aggregates and projections the server must have).
    pub(crate) checks: Vec<crate::generic::RouteCheck>,
}

impl Route {
    /// `method path` served by `handler`, callable with `permission`. The method is given
    /// once, so a route cannot be listed under one method and served under another. The
    /// handler must be documented in the server's OpenAPI document
    /// (`crates/cairn-server/tests/openapi.rs` holds every served route to it).
    pub fn new<H, T>(method: Method, path: &'static str, handler: H, permission: Permission) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let handler = MethodFilter::try_from(method.clone()).ok().map(|f| on(f, handler));
        Self { method, path, permission, handler, openapi: None, nats: None, checks: Vec::new() }
    }

    /// Documents the route with `doc` (its path item and the schemas it refers to),
    /// merged into the server's document at start. Hand-written handlers are usually
    /// documented once per module instead ([`ModuleBuilder::openapi`]).
    #[must_use]
    pub fn openapi(mut self, doc: OpenApi) -> Self {
        self.openapi = Some(doc);
        self
    }

    /// Also served as a command over NATS: a request on
    /// `<commands prefix>.<name>[.<aggregate id>]` is served by this route. Its path may
    /// have one parameter, and only `{aggregate_id}` (the subject's last token); the name
    /// is one subject token, unique across modules (both checked at build).
    #[must_use]
    pub fn nats(mut self, name: &'static str) -> Self {
        self.nats = Some(name);
        self
    }

    /// Its description, as [`crate::server::RunningServer::routes`] lists it.
    pub(crate) fn info(&self, module: Option<&'static str>) -> RouteInfo {
        RouteInfo {
            method: self.method.clone(),
            path: self.path.to_owned(),
            permission: self.permission,
            module,
            nats: self.nats,
        }
    }
}

impl std::fmt::Debug for Route {
    // By hand: a `MethodRouter` prints nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("permission", &self.permission)
            .field("nats", &self.nats)
            .finish_non_exhaustive()
    }
}

/// A served route as the running server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteInfo {
    /// Its method.
    pub method: Method,
    /// Its path in axum's syntax (`{param}`, which is OpenAPI's too).
    pub path: String,
    /// Who may call it.
    pub permission: Permission,
    /// The module that registered it; `None` for the server's own routes.
    pub module: Option<&'static str>,
    /// Its command name over NATS ([`Route::nats`]), if it is also served there.
    pub nats: Option<&'static str>,
}

/// How a projection runs. Fields are private so options can be added without breaking
/// modules; start from [`ProjectionOptions::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionOptions {
    partitions: Option<u32>,
}

impl ProjectionOptions {
    /// Whole: one consumer reads every event (the default).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the projection as `n` partitions (`<name>#p<i>of<n>`), each with its own
    /// checkpoint and leader: the aggregates are spread over them by id, so catch-up runs
    /// in parallel (across processes on PostgreSQL) while each aggregate's events stay in
    /// order. Only for projections whose every document is keyed by one aggregate: a
    /// document fed by two aggregates would be written by two partitions out of order.
    ///
    /// A partitioned projection is not rebuilt in place (`POST
    /// /admin/projections/{name}/rebuild` answers `409 rebuild_refused`): bump its version
    /// or change `n`, and at the next start its tables and every partition's checkpoint
    /// are reset and it replays the log, answering stale reads meanwhile (no shadow swap).
    /// `0` is refused when the server is built.
    #[must_use]
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n);
        self
    }

    /// The partition count, when partitioned.
    #[must_use]
    pub fn partition_count(&self) -> Option<u32> {
        self.partitions
    }
}

/// One bounded context, ready to be added to a server.
pub struct Module {
    pub(crate) name: &'static str,
    pub(crate) aggregates: Vec<AggregateKind>,
    pub(crate) schemas: Vec<SchemaTable>,
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    /// The options of each projection, index for index.
    pub(crate) projection_options: Vec<ProjectionOptions>,
    pub(crate) process_managers: Vec<Arc<dyn ProcessManager>>,
    pub(crate) routes: Vec<Route>,
    pub(crate) openapi: Vec<OpenApi>,
    /// Each call of [`ModuleBuilder::integration_events`] (more than one is refused at build).
    pub(crate) integration: Vec<IntegrationEvents>,
}

impl Module {
    /// Starts a module named `name` (used in build errors and logs; lower-case letters,
    /// digits, `-` and `_`, as the server checks at build).
    pub fn builder(name: &'static str) -> ModuleBuilder {
        ModuleBuilder {
            module: Module {
                name,
                aggregates: Vec::new(),
                schemas: Vec::new(),
                projections: Vec::new(),
                projection_options: Vec::new(),
                process_managers: Vec::new(),
                routes: Vec::new(),
                openapi: Vec::new(),
                integration: Vec::new(),
            },
        }
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its process managers (the console indexes the events each one handles).
    #[must_use]
    pub fn process_managers(&self) -> &[Arc<dyn ProcessManager>] {
        &self.process_managers
    }

    /// Its projections (the start-up guard needs them before anything starts).
    #[must_use]
    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("aggregates", &self.aggregates)
            .field("projections", &self.projections.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field(
                "process_managers",
                &self.process_managers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("routes", &self.routes)
            .field("integration", &self.integration)
            .finish_non_exhaustive()
    }
}

/// Collects what a module registers; nothing is checked until the server is built.
#[must_use]
pub struct ModuleBuilder {
    module: Module,
}

impl ModuleBuilder {
    /// An aggregate: its commands can be run, its events are checked when appended
    /// through the store API.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.module.aggregates.push(AggregateKind::of::<A>());
        self
    }

    /// Domain event schemas, registered in the schema registry at start.
    pub fn schemas(mut self, schemas: SchemaTable) -> Self {
        self.module.schemas.push(schemas);
        self
    }

    /// A projection, run from its checkpoint and listed in admin, `/metrics` and readiness.
    pub fn projection(self, projection: Arc<dyn Projection>) -> Self {
        self.projection_with(projection, ProjectionOptions::default())
    }

    /// A projection run as `options` say (e.g. in partitions).
    pub fn projection_with(
        mut self,
        projection: Arc<dyn Projection>,
        options: ProjectionOptions,
    ) -> Self {
        self.module.projections.push(projection);
        self.module.projection_options.push(options);
        self
    }

    /// A process manager, run like a projection; its instances live where
    /// `ProcessManager::instances` says.
    pub fn process_manager(mut self, manager: Arc<dyn ProcessManager>) -> Self {
        self.module.process_managers.push(manager);
        self
    }

    /// An HTTP route: a hand-written [`Route`] or a generic one ([`crate::generic`]).
    pub fn route(mut self, route: impl Into<Route>) -> Self {
        self.module.routes.push(route.into());
        self
    }

    /// OpenAPI documentation of the module's hand-written routes (typically
    /// `MyDoc::openapi()` of a `#[derive(utoipa::OpenApi)]` listing their
    /// `#[utoipa::path]` handlers, with the module's tags); merged into the server's
    /// document at start.
    pub fn openapi(mut self, doc: OpenApi) -> Self {
        self.module.openapi.push(doc);
        self
    }

    /// The public events the module publishes: their schemas are registered like domain
    /// schemas, and the public relay publishes what `translate` makes of the module's own
    /// aggregates' events, on subjects under `subject_prefix` (unique across modules).
    pub fn integration_events(mut self, events: IntegrationEvents) -> Self {
        self.module.integration.push(events);
        self
    }

    /// The module.
    #[must_use]
    pub fn build(self) -> Module {
        self.module
    }
}
