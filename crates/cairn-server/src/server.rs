//! The server built from modules: [`Server::builder`] collects them, `build` checks them
//! against each other without touching storage, `start` registers their schemas and runs
//! their consumers, and the [`RunningServer`] serves the core routes beside theirs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use cairn_core::EventStore;
use cairn_cqrs::Repository;
use cairn_cqrs::process::spawn_process_manager_with;
use cairn_cqrs::projection::Projection;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::watch;

use crate::bus::{
    IntegrationRouter, NatsCommand, path_parameters, prefixes_overlap, valid_subject,
};
use crate::consumers::Consumers;
use crate::guard::{GuardError, GuardReport};
use crate::module::{Module, Route, RouteInfo, SchemaTable};
use crate::schemas::backward_incompatibilities;
use crate::{AppState, DomainConfig, HttpConfig, StartError, Stores, domain_schemas, metrics};

/// Who registered a name, in [`BuildError::Duplicate`]: the server's own routes.
pub const CORE: &str = "core";

/// Why a set of modules cannot make one server. Everything is checked at build, before
/// any storage is touched, so a wiring mistake never half-starts a server.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// One name registered twice: an aggregate type, an event type, a consumer, a
    /// method and path, a NATS command or a public subject prefix. They share one store,
    /// one schema registry, one router and one bus, so the second would silently shadow
    /// or corrupt the first.
    #[error("{what} {name:?} is registered by both {first} and {second}")]
    Duplicate {
        /// `aggregate type`, `event type`, `consumer`, `route`, `NATS command` or
        /// `subject prefix`.
        what: &'static str,
        /// The name registered twice.
        name: String,
        /// The module that registered it first ([`CORE`] for the server's own routes).
        first: &'static str,
        /// The module that registered it again.
        second: &'static str,
    },
    /// An aggregate's event type whose schema history does not have one version per
    /// schema version of the event, so appends would be stamped with the wrong version.
    #[error("{event_type}: {schemas} schema version(s) for schema version {expected}")]
    SchemaHistory {
        /// The event type.
        event_type: String,
        /// How many versions the module registers.
        schemas: usize,
        /// The event's schema version (the number of versions expected).
        expected: u32,
    },
    /// A schema that is not JSON or does not compile, or a version that is not BACKWARD
    /// compatible with the one before (the registry would refuse it at start).
    #[error("schema of {event_type} v{version}: {reason}")]
    Schema {
        /// The event type.
        event_type: String,
        /// The version at fault (1-based).
        version: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A route axum cannot serve (it would panic when the router is built), or a NATS
    /// route whose name is not one subject token or whose path has a parameter other
    /// than one `{aggregate_id}` (the subject carries nothing else).
    #[error("route {path}: {reason}")]
    Route {
        /// The route's path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A state route ([`crate::generic::StateRoute`]) on an aggregate whose
    /// `Aggregate::state_json` renders nothing: every answer would have no state.
    #[error("{aggregate}: state_json renders nothing, so it cannot have a state route")]
    StateNotRenderable {
        /// The aggregate type.
        aggregate: &'static str,
    },
    /// A module that is malformed in itself (e.g. integration events declared twice, or a
    /// subject prefix that is not a plain dotted subject or overlaps another module's).
    #[error("{module}: {reason}")]
    Invalid {
        /// The module's name.
        module: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Collects the storage, settings and modules of a server.
#[must_use]
pub struct ServerBuilder {
    stores: Stores,
    http: HttpConfig,
    domain: DomainConfig,
    modules: Vec<Module>,
}

/// A server whose modules fit together; nothing runs yet.
pub struct Server {
    stores: Stores,
    http: HttpConfig,
    domain: DomainConfig,
    modules: Vec<Module>,
}

/// A started server: its consumers run; serve [`RunningServer::router`].
pub struct RunningServer {
    router: Router,
    state: AppState,
    routes: Vec<RouteInfo>,
    integration: Option<IntegrationRouter>,
}

impl Server {
    /// A server on `stores`, with default settings and no module.
    pub fn builder(stores: Stores) -> ServerBuilder {
        ServerBuilder {
            stores,
            http: HttpConfig::default(),
            domain: DomainConfig::default(),
            modules: Vec::new(),
        }
    }
}

impl ServerBuilder {
    /// HTTP settings.
    pub fn http(mut self, config: HttpConfig) -> Self {
        self.http = config;
        self
    }

    /// Write-side settings (snapshots, paused process managers).
    pub fn domain(mut self, config: DomainConfig) -> Self {
        self.domain = config;
        self
    }

    /// Adds a module.
    pub fn module(mut self, module: Module) -> Self {
        self.modules.push(module);
        self
    }

    /// Adds modules.
    pub fn modules(mut self, modules: impl IntoIterator<Item = Module>) -> Self {
        self.modules.extend(modules);
        self
    }

    /// Checks every module against itself, the others and the server's own routes.
    /// Starts nothing and touches no storage.
    pub fn build(self) -> Result<Server, BuildError> {
        let Self { stores, http, domain, mut modules } = self;
        // The server's own consumers run beside every application's.
        modules.insert(0, crate::catalog::module());
        check(&modules)?;
        Ok(Server { stores, http, domain, modules })
    }
}

/// Module names are used in logs, errors and (later) OpenAPI tags and subjects.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Remembers who registered each name of one kind.
struct Names {
    what: &'static str,
    owners: BTreeMap<String, &'static str>,
}

impl Names {
    fn new(what: &'static str) -> Self {
        Self { what, owners: BTreeMap::new() }
    }

    fn claim(&mut self, name: String, by: &'static str) -> Result<(), BuildError> {
        if let Some(first) = self.owners.get(&name) {
            return Err(BuildError::Duplicate { what: self.what, name, first, second: by });
        }
        self.owners.insert(name, by);
        Ok(())
    }
}

fn check(modules: &[Module]) -> Result<(), BuildError> {
    let mut aggregates = Names::new("aggregate type");
    let mut event_types = Names::new("event type");
    let mut schema_types = Names::new("event type");
    let mut consumers = Names::new("consumer");
    let mut routes = Names::new("route");
    let mut nats_commands = Names::new("NATS command");
    let mut prefixes = Names::new("subject prefix");
    for route in crate::routes::core_routes() {
        routes.claim(format!("{} {}", route.method, route.path), CORE)?;
    }
    // Schema versions expected per aggregate event type, from every module: a schema table
    // may describe another module's events only if nobody else does (checked below).
    let mut expected_versions = BTreeMap::new();
    for module in modules {
        if !valid_name(module.name) {
            return Err(BuildError::Invalid {
                module: module.name,
                reason: "a module name is lower-case letters, digits, '-' and '_'".to_owned(),
            });
        }
        for kind in &module.aggregates {
            aggregates.claim(kind.type_name().to_owned(), module.name)?;
            for event_type in kind.event_types() {
                event_types.claim((*event_type).to_owned(), module.name)?;
                expected_versions.insert(*event_type, kind.schema_version(event_type));
            }
        }
        for (projection, options) in module.projections.iter().zip(&module.projection_options) {
            consumers.claim(projection.name().to_owned(), module.name)?;
            if options.partition_count() == Some(0) {
                return Err(BuildError::Invalid {
                    module: module.name,
                    reason: format!("projection {} cannot run in 0 partitions", projection.name()),
                });
            }
        }
        for name in module.process_managers.iter().map(|p| p.name()) {
            consumers.claim(name.to_owned(), module.name)?;
        }
        for route in &module.routes {
            check_route(route)?;
            routes.claim(format!("{} {}", route.method, route.path), module.name)?;
            if let Some(name) = route.nats {
                check_nats_route(route, name)?;
                nats_commands.claim(name.to_owned(), module.name)?;
            }
        }
        check_integration(module, &prefixes)?;
        if let Some(events) = module.integration.first() {
            prefixes.claim(events.subject_prefix.to_owned(), module.name)?;
        }
    }
    crate::generic::check_routes(modules)?;
    check_router(modules)?;
    for module in modules {
        for (event_type, texts) in module_schemas(module).flat_map(|table| table.iter()) {
            schema_types.claim((*event_type).to_owned(), module.name)?;
            check_history(event_type, texts, expected_versions.get(event_type).copied())?;
        }
    }
    Ok(())
}

/// Builds the router's path table once with empty handlers: axum refuses (by panicking)
/// paths that conflict without being equal — one segment with two parameter names, a
/// parameter beside a catch-all — which only the real matcher knows. Caught here, it is a
/// build error instead of a panic in `start`, after storage was touched.
fn check_router(modules: &[Module]) -> Result<(), BuildError> {
    let core = crate::routes::core_routes();
    let all = core.iter().chain(modules.iter().flat_map(|m| m.routes.iter()));
    let mut router = crate::routes::empty::<()>();
    for route in all {
        let Ok(filter) = axum::routing::MethodFilter::try_from(route.method.clone()) else {
            continue; // refused by check_route
        };
        let path = route.path;
        let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            crate::routes::add(router, path, axum::routing::on(filter, || async {}))
        }));
        router = added.map_err(|panic| BuildError::Route {
            path: path.to_owned(),
            reason: panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the router refuses this path beside the others")
                .to_owned(),
        })?;
    }
    Ok(())
}

/// Every schema table of a module: its domain schemas, then its public ones.
fn module_schemas(module: &Module) -> impl Iterator<Item = &SchemaTable> {
    module.schemas.iter().chain(module.integration.iter().map(|events| &events.schemas))
}

/// A NATS subject is the command's name and one token per path parameter, so a parameter
/// must be a whole segment (`{name}`, not `v{n}`) that a token can fill.
fn check_nats_route(route: &Route, name: &str) -> Result<(), BuildError> {
    let refuse = |reason: String| BuildError::Route { path: route.path.to_owned(), reason };
    if !valid_subject(name, false) {
        return Err(refuse(format!(
            "NATS command {name:?} is not one subject token (no '.', '*', '>' or blanks)"
        )));
    }
    let braced = route.path.split('/').filter(|s| s.contains('{') || s.contains('}')).count();
    if braced != path_parameters(route.path).len() {
        return Err(refuse(format!(
            "NATS command {name:?}: every path parameter must be a whole segment, `{{name}}`, \
             for a subject token to fill it"
        )));
    }
    Ok(())
}

/// A module declares its integration events once, on a plain dotted prefix that no other
/// module's prefix overlaps (one stream holds them all; a subject matched by two
/// prefixes would belong to two modules).
fn check_integration(module: &Module, others: &Names) -> Result<(), BuildError> {
    let invalid = |reason: String| BuildError::Invalid { module: module.name, reason };
    if module.integration.len() > 1 {
        return Err(invalid("integration events are declared more than once".to_owned()));
    }
    let Some(events) = module.integration.first() else { return Ok(()) };
    let prefix = events.subject_prefix;
    if !valid_subject(prefix, true) {
        return Err(invalid(format!(
            "subject prefix {prefix:?} is not dot-separated tokens without '*', '>' or blanks"
        )));
    }
    if let Some((other, owner)) =
        others.owners.iter().find(|(other, _)| *other != prefix && prefixes_overlap(other, prefix))
    {
        return Err(invalid(format!("subject prefix {prefix:?} overlaps {other:?} of {owner}")));
    }
    Ok(())
}

fn check_route(route: &Route) -> Result<(), BuildError> {
    let refuse = |reason: String| BuildError::Route { path: route.path.to_owned(), reason };
    if !route.path.starts_with('/') {
        return Err(refuse("a path starts with '/'".to_owned()));
    }
    if route.handler.is_none() {
        return Err(refuse(format!("method {} cannot be routed", route.method)));
    }
    Ok(())
}

/// One event type's schema history: as many versions as the aggregate's schema version
/// (at least one for a type no aggregate knows, e.g. a public event), each compiling and
/// BACKWARD compatible with the one before, as the registry will require at start.
fn check_history(
    event_type: &str,
    texts: &[&str],
    expected: Option<u32>,
) -> Result<(), BuildError> {
    let expected_len = expected.unwrap_or(1);
    let wrong_length = match expected {
        Some(version) => texts.len() != version as usize,
        None => texts.is_empty(),
    };
    if wrong_length {
        return Err(BuildError::SchemaHistory {
            event_type: event_type.to_owned(),
            schemas: texts.len(),
            expected: expected_len,
        });
    }
    let mut previous: Option<Value> = None;
    for (version, text) in (1..).zip(texts) {
        let fail = |reason: String| BuildError::Schema {
            event_type: event_type.to_owned(),
            version,
            reason,
        };
        let schema: Value =
            serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))?;
        jsonschema::validator_for(&schema).map_err(|e| fail(format!("does not compile: {e}")))?;
        if let Some(old) = &previous {
            let reasons = backward_incompatibilities(old, &schema, "");
            if !reasons.is_empty() {
                return Err(fail(format!("not BACKWARD compatible: {}", reasons.join("; "))));
            }
        }
        previous = Some(schema);
    }
    Ok(())
}

impl Server {
    /// Every projection of every module (the start-up guard resets only these).
    #[must_use]
    pub fn projections(&self) -> Vec<Arc<dyn Projection>> {
        self.modules.iter().flat_map(|m| m.projections.iter().cloned()).collect()
    }

    /// The start-up guard ([`crate::guard`]) against this server's projections.
    pub async fn check_against_log(&self, repair: bool) -> Result<GuardReport, GuardError> {
        crate::guard::check_read_models_against_log(&self.stores, &self.projections(), repair).await
    }

    /// Registers every module's schemas, wraps the store so every append is checked,
    /// counted and timed, and starts every projection and process manager.
    pub fn start(self, shutdown: watch::Receiver<bool>) -> Result<RunningServer, StartError> {
        let Self { stores, http, domain, modules } = self;
        let registry =
            Arc::new(crate::schemas::SchemaRegistry::load(Arc::clone(&stores.readmodels))?);
        // Before anything can append: the first event is validated like every later one.
        let tables: Vec<SchemaTable> = modules.iter().flat_map(module_schemas).copied().collect();
        let integration = IntegrationRouter::new(modules.iter().filter_map(|m| {
            let aggregates =
                m.aggregates.iter().map(cairn_cqrs::AggregateKind::type_name).collect();
            m.integration.first().map(|events| (m.name, aggregates, events))
        }));
        domain_schemas::register_tables(&registry, &tables)?;
        // One reader of `$all`'s tail for every consumer and subscription of this process.
        let shared_reads: Arc<dyn EventStore> =
            Arc::new(cairn_core::tail_cache::TailCache::new(Arc::clone(&stores.events)));
        let vault = Arc::new(crate::vault::Vault::new(Arc::clone(&stores.readmodels)));
        let store: Arc<dyn EventStore> = Arc::new(metrics::ServerStore::new(
            shared_reads,
            Arc::clone(&registry),
            Arc::clone(&vault),
        ));
        let _ = metrics::handle();
        let readmodels = Arc::clone(&stores.readmodels);
        let repository =
            Repository::with_snapshots(Arc::clone(&store), stores.snapshots, domain.snapshot_every);
        let mut consumers = Consumers::new();
        let mut routes = crate::routes::core_routes();
        let mut infos: Vec<RouteInfo> = routes.iter().map(|r| r.info(None)).collect();
        let mut aggregates = BTreeMap::new();
        let mut documents = Vec::new();
        for module in modules {
            documents.extend(module.openapi);
            documents.extend(module.routes.iter().filter_map(|r| r.openapi.clone()));
            aggregates.extend(module.aggregates.iter().map(|kind| (kind.type_name(), *kind)));
            for (projection, options) in
                module.projections.into_iter().zip(module.projection_options)
            {
                let partitions = options.partition_count();
                crate::partitions::spawn(
                    &mut consumers,
                    (&store, &readmodels),
                    projection,
                    partitions,
                    &shutdown,
                )?;
            }
            for manager in module.process_managers {
                let (name, instances) = (manager.name(), manager.instances());
                let handle = spawn_process_manager_with(
                    repository.clone(),
                    Arc::clone(&readmodels),
                    manager,
                    shutdown.clone(),
                    domain.pause_process_managers,
                )?;
                consumers.add_process_manager(name, handle, instances)?;
            }
            infos.extend(module.routes.iter().map(|r| r.info(Some(module.name))));
            routes.extend(module.routes);
        }
        // Before the publisher writes to it, and on every process (followers list it).
        crate::leaders::ensure_table(readmodels.as_ref())?;
        let leaders = Arc::new(match &http.forward_client {
            Some(client) => crate::leaders::LeaderRegistry::with_client(
                http.advertise_url.clone(),
                client.clone(),
            ),
            None => crate::leaders::LeaderRegistry::new(http.advertise_url.clone()),
        });
        let consumers = Arc::new(consumers);
        crate::leaders::spawn_publisher(
            Arc::clone(&leaders),
            Arc::clone(&consumers),
            Arc::clone(&readmodels),
            shutdown.clone(),
        );
        let subscribers = Arc::new(tokio::sync::Semaphore::new(http.sse_subscribers_max));
        let state = AppState {
            store,
            subscribers,
            config: Arc::new(http),
            shutdown,
            repository,
            readmodels,
            consumers,
            schemas: registry,
            vault,
            aggregates: Arc::new(aggregates),
            openapi: crate::routes::openapi::assemble(documents, &infos)
                .map_err(StartError::OpenApi)?
                .into(),
            leaders,
        };
        let app = crate::routes::router(routes, state.clone());
        Ok(RunningServer { router: app, state, routes: infos, integration })
    }
}

impl RunningServer {
    /// The application: every route, the JSON fallbacks and panic containment.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// What every handler reaches (for other transports and tests).
    #[must_use]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Every served route: the server's own first, then each module's in order.
    #[must_use]
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    /// Every route also served as a command over NATS, in the order of [`Self::routes`].
    #[must_use]
    pub fn nats_commands(&self) -> Vec<NatsCommand> {
        self.routes
            .iter()
            .filter_map(|route| {
                Some(NatsCommand {
                    name: route.nats?,
                    method: route.method.clone(),
                    path: route.path.clone(),
                })
            })
            .collect()
    }

    /// The modules' public events, for the public relay; `None` when no module declares
    /// integration events.
    #[must_use]
    pub fn integration(&self) -> Option<IntegrationRouter> {
        self.integration.clone()
    }

    /// Every running projection, process manager and outbox.
    #[must_use]
    pub fn consumers(&self) -> &Arc<Consumers> {
        &self.state.consumers
    }
}
