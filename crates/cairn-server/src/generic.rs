//! Generic routes: the common commands and queries of a module without hand-written
//! handlers. Each is one line in a module's builder and answers exactly like the
//! contract's Order routes, because it runs through the same helpers ([`crate::command`],
//! [`crate::query`], [`crate::extract`]); each carries its own OpenAPI operation.
//!
//! ```ignore
//! Module::builder("bank")
//!     .aggregate::<Account>()
//!     .route(CommandRoute::<Account, Open>::create("/accounts", "open_account", "acct",
//!         |b| b.account_id.clone(), AccountCommand::Open))
//!     .route(CommandRoute::<Account, Deposit>::post("/accounts/{aggregate_id}/deposit",
//!         "deposit", AccountCommand::Deposit))
//!     .route(ReadModelRoute::document("/accounts/{aggregate_id}", "balances", "balances"))
//!     .route(StateRoute::<Account>::new("/accounts/{aggregate_id}/state"))
//!     .route(EventsRoute::<Account>::new("/accounts/{aggregate_id}/events"))
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::TableSpec;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::{Aggregate, AggregateKind};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::error::ApiError;
use crate::extract::{AggregateIdPath, CommandHeaders, JsonBody, QueryMap, id_or_mint};
use crate::module::{Module, Permission, Route};
use crate::routes::openapi as doc;
use crate::server::BuildError;
use crate::{AppState, command, query};

/// The one path parameter of every generic route on one aggregate or document.
pub const ID_PARAM: &str = "aggregate_id";

/// The body of a command that takes none ([`CommandRoute::post_empty`]): never read.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct NoBody {}

impl PartialSchema for NoBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().into()
    }
}

impl ToSchema for NoBody {}

/// What the server checks at build for a generic route, against every module: a generic
/// route names aggregates, projections and tables by value, so a typo must fail the
/// build, not every request.
#[derive(Debug, Clone)]
pub(crate) enum RouteCheck {
    /// The path does not have the parameters the route reads.
    Malformed(String),
    /// The route runs or reads this aggregate type, which some module must register.
    Aggregate(&'static str),
    /// A state route: whether the aggregate's `state_json` renders its default state.
    Renders { aggregate: &'static str, renders: bool },
    /// A read-model route: the projection, one of its tables, and that table's indexed
    /// fields the route filters on.
    ReadModel { projection: &'static str, table: &'static str, filters: &'static [&'static str] },
}

/// Checks every generic route of `modules` against all of them (see [`RouteCheck`]).
pub(crate) fn check_routes(modules: &[Module]) -> Result<(), BuildError> {
    let aggregates: BTreeSet<&str> =
        modules.iter().flat_map(|m| m.aggregates.iter().map(AggregateKind::type_name)).collect();
    let projections: BTreeMap<&str, Vec<TableSpec>> =
        modules.iter().flat_map(|m| m.projections.iter().map(|p| (p.name(), p.tables()))).collect();
    for route in modules.iter().flat_map(|m| &m.routes) {
        let refuse = |reason: String| BuildError::Route { path: route.path.to_owned(), reason };
        for check in &route.checks {
            match check {
                RouteCheck::Malformed(reason) => return Err(refuse(reason.clone())),
                RouteCheck::Aggregate(name) if !aggregates.contains(name) => {
                    return Err(refuse(format!("no module registers the aggregate {name}")));
                }
                RouteCheck::Renders { aggregate, renders: false } => {
                    return Err(BuildError::StateNotRenderable { aggregate });
                }
                RouteCheck::ReadModel { projection, table, filters } => {
                    let Some(tables) = projections.get(projection) else {
                        return Err(refuse(format!(
                            "no module registers the projection {projection}"
                        )));
                    };
                    let Some(spec) = tables.iter().find(|t| t.name == *table) else {
                        return Err(refuse(format!("{table} is not a table of {projection}")));
                    };
                    // The store filters only on indexed fields: anything else would fail
                    // every request that uses it.
                    if let Some(field) = filters.iter().find(|f| !spec.indexed.contains(f)) {
                        return Err(refuse(format!("{field} is not an indexed field of {table}")));
                    }
                }
                RouteCheck::Aggregate(_) | RouteCheck::Renders { .. } => {}
            }
        }
    }
    Ok(())
}

/// The `{param}` names of `path`, in order.
fn params_of(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect()
}

/// A check that `path` has exactly the parameters `expected` (a handler extracts them).
fn path_check(path: &str, expected: &[&str]) -> Option<RouteCheck> {
    let found = params_of(path);
    (found != expected).then(|| {
        let wanted = if expected.is_empty() {
            "no parameter".to_owned()
        } else {
            expected.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
        };
        RouteCheck::Malformed(format!("this route's path must have {wanted}"))
    })
}

/// The tag of a route's operation: the one given, or the path's first segment
/// (`/counters/{aggregate_id}` → `counters`), so a module's routes group by resource.
fn tag_of(path: &'static str, tag: Option<&'static str>) -> String {
    tag.map_or_else(
        || path.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned(),
        str::to_owned,
    )
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

type Schemas = Vec<(String, RefOr<Schema>)>;

/// `T` and every schema it refers to.
fn schemas_of<T: ToSchema>(out: &mut Schemas) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

fn path_params(path: &str) -> Vec<Parameter> {
    params_of(path)
        .into_iter()
        .map(|name| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(if name == ID_PARAM {
                    "The aggregate"
                } else {
                    "A path segment"
                }))
                .schema(Some(String::schema()))
                .build()
        })
        .collect()
}

fn query_param(name: &str, schema: RefOr<Schema>, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn json_response(description: &str, schema: impl Into<RefOr<Schema>>) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
}

fn error_response(description: &str) -> ResponseBuilder {
    json_response(description, Ref::from_schema_name(<doc::ErrorBody as ToSchema>::name()))
}

fn with_projection_position(response: ResponseBuilder) -> ResponseBuilder {
    response.header(
        "X-Projection-Position",
        HeaderBuilder::new()
            .schema(u64::schema())
            .description(Some("The position the read model has applied"))
            .build(),
    )
}

/// The document of one operation: its path item and the schemas it refers to (the error
/// shape always among them, so a module with only generic routes documents it).
fn document_of(
    path: &str,
    method: &Method,
    operation: OperationBuilder,
    mut schemas: Schemas,
) -> Option<OpenApi> {
    schemas_of::<doc::ErrorBody>(&mut schemas);
    let item = PathItem::new(http_method(method)?, operation.build());
    Some(
        OpenApiBuilder::new()
            .paths(PathsBuilder::new().path(path, item))
            .components(Some(ComponentsBuilder::new().schemas_from_iter(schemas).build()))
            .build(),
    )
}

/// Builds `route` from its parts: a generic route's OpenAPI fragment and build checks.
fn finish(mut route: Route, openapi: Option<OpenApi>, mut checks: Vec<RouteCheck>) -> Route {
    if let Some(doc) = openapi {
        route = route.openapi(doc);
    } else {
        // Every served route is documented; OpenAPI has no operation for this method.
        let reason = format!("method {} cannot be documented in OpenAPI", route.method);
        checks.push(RouteCheck::Malformed(reason));
    }
    route.checks = checks;
    route
}

/// How a command route finds its aggregate and its command.
enum CommandKind<A: Aggregate, B> {
    /// The id is the path's `{aggregate_id}`; the command is made from the body.
    Path(fn(B) -> A::Command),
    /// The id is in the body or minted; the command is made from the body.
    Create {
        prefix: &'static str,
        id_of: fn(&B) -> Option<String>,
        to_command: fn(B) -> A::Command,
    },
    /// The id is the path's `{aggregate_id}`; no body.
    Empty(fn() -> A::Command),
}

/// A command route: `POST` (or another method) on a path, the body `B` turned into a
/// command of `A` and run with the contract's command headers ([`command::run`]): `201`
/// when the command creates the aggregate, `200` otherwise, `400`/`404`/`409`/`422` as
/// the Order routes answer.
#[must_use]
pub struct CommandRoute<A: Aggregate, B> {
    path: &'static str,
    name: &'static str,
    method: Method,
    permission: Permission,
    summary: Option<&'static str>,
    tag: Option<&'static str>,
    nats: bool,
    kind: CommandKind<A, B>,
}

impl<A: Aggregate, B: DeserializeOwned + ToSchema + Send + 'static> CommandRoute<A, B> {
    fn with(path: &'static str, name: &'static str, kind: CommandKind<A, B>) -> Self {
        Self {
            path,
            name,
            method: Method::POST,
            permission: Permission::Write,
            summary: None,
            tag: None,
            nats: false,
            kind,
        }
    }

    /// `POST path`, where `path` has `{aggregate_id}`: the JSON body `B` → `to_command` →
    /// the command on that aggregate. `name` labels the command metrics and is the
    /// operation id.
    pub fn post(path: &'static str, name: &'static str, to_command: fn(B) -> A::Command) -> Self {
        Self::with(path, name, CommandKind::Path(to_command))
    }

    /// `POST path` without an id in the path, for a command that creates its aggregate:
    /// the id is `id_of(&body)` (checked like a path id) or, when that is `None`, minted
    /// as `<prefix>-<uuid v7>`. A replayed `Idempotency-Key` answers the first outcome,
    /// with the first id.
    pub fn create(
        path: &'static str,
        name: &'static str,
        prefix: &'static str,
        id_of: fn(&B) -> Option<String>,
        to_command: fn(B) -> A::Command,
    ) -> Self {
        Self::with(path, name, CommandKind::Create { prefix, id_of, to_command })
    }

    /// Served under `method` instead of `POST` (`PUT`, `DELETE`, ...).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Callable with `permission` instead of [`Permission::Write`].
    pub fn permission(mut self, permission: Permission) -> Self {
        self.permission = permission;
        self
    }

    /// The operation's summary in the OpenAPI document.
    pub fn summary(mut self, text: &'static str) -> Self {
        self.summary = Some(text);
        self
    }

    /// The operation's OpenAPI tag instead of the path's first segment.
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }

    /// Also served as a command over NATS under its `name` ([`Route::nats`]).
    pub fn nats(mut self) -> Self {
        self.nats = true;
        self
    }

    fn openapi(&self) -> Option<OpenApi> {
        let mut params = path_params(self.path);
        params.extend(<doc::CommandHeaders as IntoParams>::into_params(|| None));
        let mut schemas = Vec::new();
        schemas_of::<doc::CommandOutcome>(&mut schemas);
        let outcome = || Ref::from_schema_name(<doc::CommandOutcome as ToSchema>::name());
        let mut operation = OperationBuilder::new()
            .tag(tag_of(self.path, self.tag))
            .operation_id(Some(self.name))
            .summary(self.summary)
            .parameters(Some(params));
        if !matches!(self.kind, CommandKind::Empty(_)) {
            schemas_of::<B>(&mut schemas);
            let body = RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name(B::name()))).build(),
                )
                .build();
            operation = operation.request_body(Some(body));
        }
        // Whether a command creates its aggregate is known per command (`A::existence`),
        // not per route: every command route may answer either way.
        let created = match self.kind {
            CommandKind::Create { .. } => "Created",
            _ => "Done, and the command created the aggregate",
        };
        operation = operation
            .response("200", json_response("Done", outcome()))
            .response("201", json_response(created, outcome()))
            .response("404", error_response("`not_found`: no such aggregate"))
            .response("409", error_response("`wrong_expected_version`"));
        let operation = operation
            .response("400", error_response("`bad_request`: a malformed header or body"))
            .response("422", error_response("`rule_violation`"));
        document_of(self.path, &self.method, operation, schemas)
    }
}

impl<A: Aggregate> CommandRoute<A, NoBody> {
    /// `POST path`, where `path` has `{aggregate_id}`, for a command without a body (the
    /// body is never read, so any or none is accepted).
    pub fn post_empty(path: &'static str, name: &'static str, command: fn() -> A::Command) -> Self {
        Self::with(path, name, CommandKind::Empty(command))
    }
}

impl<A: Aggregate, B: DeserializeOwned + ToSchema + Send + 'static> From<CommandRoute<A, B>>
    for Route
{
    fn from(r: CommandRoute<A, B>) -> Self {
        let openapi = r.openapi();
        let (name, nats) = (r.name, r.nats);
        let mut checks = vec![RouteCheck::Aggregate(A::TYPE)];
        let route = match r.kind {
            CommandKind::Path(to_command) => {
                checks.extend(path_check(r.path, &[ID_PARAM]));
                let handler = move |State(state): State<AppState>,
                                    AggregateIdPath(id): AggregateIdPath,
                                    headers: CommandHeaders,
                                    JsonBody(body): JsonBody<B>| async move {
                    command::run::<A>(&state, name, &id, to_command(body), headers).await
                };
                Route::new(r.method, r.path, handler, r.permission)
            }
            CommandKind::Create { prefix, id_of, to_command } => {
                checks.extend(path_check(r.path, &[]));
                let handler = move |State(state): State<AppState>,
                                    headers: CommandHeaders,
                                    JsonBody(body): JsonBody<B>| async move {
                    let id = id_or_mint(id_of(&body), prefix)?;
                    command::run::<A>(&state, name, &id, to_command(body), headers).await
                };
                Route::new(r.method, r.path, handler, r.permission)
            }
            CommandKind::Empty(command) => {
                checks.extend(path_check(r.path, &[ID_PARAM]));
                let handler = move |State(state): State<AppState>,
                                    AggregateIdPath(id): AggregateIdPath,
                                    headers: CommandHeaders| async move {
                    command::run::<A>(&state, name, &id, command(), headers).await
                };
                Route::new(r.method, r.path, handler, r.permission)
            }
        };
        let route = if nats { route.nats(name) } else { route };
        finish(route, openapi, checks)
    }
}

/// What a read-model route answers.
enum ReadKind {
    /// One document, keyed by the path's `{aggregate_id}`.
    Document,
    /// A page of the table, filtered by these indexed fields.
    List(&'static [&'static str]),
}

/// A read-model route: `GET` a document or a page of one of a projection's tables, after
/// the read-your-writes wait (`min_position` / `X-Min-Position`, `wait_ms`,
/// `504 projection_lagging`), with `X-Projection-Position` ([`query::document`],
/// [`query::list`]).
#[must_use]
pub struct ReadModelRoute {
    path: &'static str,
    projection: &'static str,
    table: &'static str,
    kind: ReadKind,
    permission: Permission,
    summary: Option<&'static str>,
    tag: Option<&'static str>,
    /// The document's schema name and every schema it needs; `None`: any object.
    schema: Option<(Cow<'static, str>, Schemas)>,
}

impl ReadModelRoute {
    fn with(
        path: &'static str,
        projection: &'static str,
        table: &'static str,
        kind: ReadKind,
    ) -> Self {
        Self {
            path,
            projection,
            table,
            kind,
            permission: Permission::Read,
            summary: None,
            tag: None,
            schema: None,
        }
    }

    /// `GET path`, where `path` has `{aggregate_id}`: the document of `table` (a table of
    /// `projection`) under that key; `404` when there is none.
    pub fn document(path: &'static str, projection: &'static str, table: &'static str) -> Self {
        Self::with(path, projection, table, ReadKind::Document)
    }

    /// `GET path` (no parameter): a page of `table` as `{"items": [...], "next": cursor}`,
    /// keeping the rows whose field equals each of `filters` given as a query parameter
    /// (each must be an indexed field of the table), with `limit` (default
    /// [`query::LIST_LIMIT_DEFAULT`], at most [`query::LIST_LIMIT_MAX`]) and `after`.
    pub fn list(
        path: &'static str,
        projection: &'static str,
        table: &'static str,
        filters: &'static [&'static str],
    ) -> Self {
        Self::with(path, projection, table, ReadKind::List(filters))
    }

    /// Documents the document's shape as `T` (default: any object).
    pub fn schema<T: ToSchema>(mut self) -> Self {
        let mut schemas = Vec::new();
        schemas_of::<T>(&mut schemas);
        self.schema = Some((T::name(), schemas));
        self
    }

    /// Callable with `permission` instead of [`Permission::Read`].
    pub fn permission(mut self, permission: Permission) -> Self {
        self.permission = permission;
        self
    }

    /// The operation's summary in the OpenAPI document.
    pub fn summary(mut self, text: &'static str) -> Self {
        self.summary = Some(text);
        self
    }

    /// The operation's OpenAPI tag instead of the path's first segment.
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }

    fn openapi(&self) -> Option<OpenApi> {
        let (item, schemas): (RefOr<Schema>, Schemas) = match &self.schema {
            Some((name, schemas)) => (Ref::from_schema_name(name.clone()).into(), schemas.clone()),
            None => (ObjectBuilder::new().into(), Vec::new()),
        };
        let mut params = path_params(self.path);
        let (ok, body): (&str, RefOr<Schema>) = match self.kind {
            ReadKind::Document => ("The document", item),
            ReadKind::List(filters) => {
                for field in filters {
                    params.push(query_param(field, String::schema(), "Only rows with this value"));
                }
                params.push(query_param(
                    "limit",
                    u64::schema(),
                    "Page size (default 100, at most 1000)",
                ));
                params.push(query_param(
                    "after",
                    String::schema(),
                    "The `next` cursor of the previous page",
                ));
                let page = ObjectBuilder::new()
                    .property("items", ArrayBuilder::new().items(item))
                    .required("items")
                    .property(
                        "next",
                        ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                                Type::String,
                                Type::Null,
                            ]))
                            .description(Some("Cursor for `after=`; `null` on the last page")),
                    )
                    .required("next");
                ("A page of documents", page.into())
            }
        };
        params.extend(<doc::ReadYourWrites as IntoParams>::into_params(|| None));
        params.extend(<doc::MinPositionHeader as IntoParams>::into_params(|| None));
        let mut operation = OperationBuilder::new()
            .tag(tag_of(self.path, self.tag))
            .summary(self.summary)
            .parameters(Some(params))
            .response("200", with_projection_position(json_response(ok, body)))
            .response("400", error_response("`bad_request`: a malformed parameter"));
        if matches!(self.kind, ReadKind::Document) {
            operation =
                operation.response("404", error_response("`not_found`: not in the read model"));
        }
        let operation = operation.response(
            "504",
            error_response("`projection_lagging`: `min_position` not reached within `wait_ms`"),
        );
        document_of(self.path, &Method::GET, operation, schemas)
    }
}

impl From<ReadModelRoute> for Route {
    fn from(r: ReadModelRoute) -> Self {
        let openapi = r.openapi();
        let ReadModelRoute { path, projection, table, permission, .. } = r;
        let mut checks = Vec::new();
        let route = match r.kind {
            ReadKind::Document => {
                checks.extend(path_check(path, &[ID_PARAM]));
                checks.push(RouteCheck::ReadModel { projection, table, filters: &[] });
                let handler = move |State(state): State<AppState>,
                                    AggregateIdPath(id): AggregateIdPath,
                                    query: QueryMap,
                                    headers: HeaderMap| async move {
                    query::document(&state, projection, table, id, &query, &headers).await
                };
                Route::new(Method::GET, path, handler, permission)
            }
            ReadKind::List(filters) => {
                checks.extend(path_check(path, &[]));
                checks.push(RouteCheck::ReadModel { projection, table, filters });
                let handler = move |State(state): State<AppState>,
                                    query: QueryMap,
                                    headers: HeaderMap| async move {
                    query::list(&state, projection, table, filters, &query, &headers).await
                };
                Route::new(Method::GET, path, handler, permission)
            }
        };
        finish(route, openapi, checks)
    }
}

/// `GET path`, where `path` has `{aggregate_id}`: aggregate `A` rebuilt from its events,
/// now or at the `version` / `as_of` query parameter, as `{aggregate_id, aggregate_type,
/// version, as_of, current_version, state}` with `state` = [`Aggregate::state_json`]
/// ([`query::load_state`], as `GET /orders/{id}/state`). The server refuses to build with
/// it when `A` renders no state.
#[must_use]
pub struct StateRoute<A> {
    path: &'static str,
    permission: Permission,
    tag: Option<&'static str>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> StateRoute<A> {
    /// The state route at `path`.
    pub fn new(path: &'static str) -> Self {
        Self { path, permission: Permission::Read, tag: None, aggregate: PhantomData }
    }

    /// Callable with `permission` instead of [`Permission::Read`].
    pub fn permission(mut self, permission: Permission) -> Self {
        self.permission = permission;
        self
    }

    /// The operation's OpenAPI tag instead of the path's first segment.
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }

    fn openapi(&self) -> Option<OpenApi> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let body = ObjectBuilder::new()
            .property("aggregate_id", text())
            .property("aggregate_type", text())
            .property("version", u64::schema())
            .property(
                "as_of",
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                        Type::String,
                        Type::Null,
                    ]))
                    .description(Some("Timestamp of the last event applied (RFC 3339)")),
            )
            .property("current_version", u64::schema())
            .property(
                "state",
                ObjectBuilder::new().description(Some("The state, as the aggregate renders it")),
            )
            .required("aggregate_id")
            .required("aggregate_type")
            .required("version")
            .required("current_version")
            .required("state");
        let mut params = path_params(self.path);
        params.push(query_param("version", u64::schema(), "The state after this version"));
        params.push(query_param(
            "as_of",
            doc::AsOf::schema(),
            "The state after every event at or before this RFC 3339 time",
        ));
        let kind = A::TYPE.to_lowercase();
        let operation = OperationBuilder::new()
            .tag(tag_of(self.path, self.tag))
            .summary(Some(format!("A {kind} rebuilt from its events")))
            .parameters(Some(params))
            .response("200", json_response("The state", body))
            .response(
                "400",
                error_response("`bad_request`: a malformed parameter, or both `version` and `as_of`"),
            )
            .response(
                "404",
                error_response(
                    "`not_found`: no such aggregate, a version beyond its end, or a time before its first event",
                ),
            );
        document_of(self.path, &Method::GET, operation, Vec::new())
    }
}

/// The body of a state route (a struct, so the state's text is copied, never re-parsed).
#[derive(serde::Serialize)]
struct StateBody<'a> {
    aggregate_id: &'a str,
    aggregate_type: &'static str,
    version: u64,
    as_of: Option<Timestamp>,
    current_version: u64,
    state: Option<Box<RawValue>>,
}

async fn state_of<A: Aggregate>(
    state: &AppState,
    id: &str,
    query: &QueryMap,
) -> Result<Response, ApiError> {
    let (loaded, current_version) = query::load_state::<A>(state, id, query).await?;
    Ok(Json(StateBody {
        aggregate_id: id,
        aggregate_type: A::TYPE,
        version: loaded.version,
        as_of: loaded.timestamp,
        current_version,
        state: loaded.state.state_json(),
    })
    .into_response())
}

impl<A: Aggregate> From<StateRoute<A>> for Route {
    fn from(r: StateRoute<A>) -> Self {
        let openapi = r.openapi();
        let mut checks = vec![
            RouteCheck::Aggregate(A::TYPE),
            // The default state stands for every state: an aggregate renders all or none.
            RouteCheck::Renders {
                aggregate: A::TYPE,
                renders: A::default().state_json().is_some(),
            },
        ];
        checks.extend(path_check(r.path, &[ID_PARAM]));
        let handler =
            move |State(state): State<AppState>,
                  AggregateIdPath(id): AggregateIdPath,
                  query: QueryMap| async move { state_of::<A>(&state, &id, &query).await };
        finish(Route::new(Method::GET, r.path, handler, r.permission), openapi, checks)
    }
}

/// `GET path`, where `path` has `{aggregate_id}`: a page of aggregate `A`'s stream
/// (`from_version`, `limit`, `direction`, as `GET /streams/{id}`), `404` for a stream of
/// another aggregate type ([`query::events`], as `GET /orders/{id}/events`).
#[must_use]
pub struct EventsRoute<A> {
    path: &'static str,
    permission: Permission,
    tag: Option<&'static str>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> EventsRoute<A> {
    /// The events route at `path`.
    pub fn new(path: &'static str) -> Self {
        Self { path, permission: Permission::Read, tag: None, aggregate: PhantomData }
    }

    /// Callable with `permission` instead of [`Permission::Read`].
    pub fn permission(mut self, permission: Permission) -> Self {
        self.permission = permission;
        self
    }

    /// The operation's OpenAPI tag instead of the path's first segment.
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }

    fn openapi(&self) -> Option<OpenApi> {
        let mut params = path_params(self.path);
        params.push(query_param("from_version", u64::schema(), "First version to read"));
        params.push(query_param(
            "limit",
            u64::schema(),
            "At most this many events (default 100, at most 10000)",
        ));
        params.push(query_param(
            "direction",
            doc::ReadDirection::schema(),
            "`forward` (default) or `backward`",
        ));
        let mut schemas = Vec::new();
        schemas_of::<crate::routes::streams::StreamPage>(&mut schemas);
        let page = Ref::from_schema_name(<crate::routes::streams::StreamPage as ToSchema>::name());
        let kind = A::TYPE.to_lowercase();
        let operation = OperationBuilder::new()
            .tag(tag_of(self.path, self.tag))
            .summary(Some(format!("A {kind}'s events, from the event store (always current)")))
            .parameters(Some(params))
            .response("200", json_response("A page of the stream", page))
            .response("400", error_response("`bad_request`: a malformed parameter"))
            .response("404", error_response("`not_found`: no such aggregate of this type"));
        document_of(self.path, &Method::GET, operation, schemas)
    }
}

impl<A: Aggregate> From<EventsRoute<A>> for Route {
    fn from(r: EventsRoute<A>) -> Self {
        let openapi = r.openapi();
        let mut checks = vec![RouteCheck::Aggregate(A::TYPE)];
        checks.extend(path_check(r.path, &[ID_PARAM]));
        let handler = move |State(state): State<AppState>, id: AggregateIdPath, query: QueryMap| async move {
            query::events::<A>(&state, id, query).await
        };
        finish(Route::new(Method::GET, r.path, handler, r.permission), openapi, checks)
    }
}
