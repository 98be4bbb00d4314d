//! The OpenAPI 3 document of every route (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the request and response types.
//!
//! Types that the handlers really use derive `ToSchema` where they are declared. The
//! types here only describe JSON that is built elsewhere — `json!` bodies, read-model
//! documents stored as text, and types of crates that know nothing of HTTP — so they are
//! never constructed; their doc comments are the document's descriptions.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::{admin, health, streams};
use crate::AppState;

/// The document: every handler of the router, registered in one place.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn HTTP API",
        description = "The generic event store API, operations, and the commands and queries of every module the server runs. Every response that is not a 2xx is JSON `{\"error\", \"message\", ...}`."
    ),
    paths(
        streams::append,
        streams::read_stream,
        streams::read_all,
        streams::subscribe,
        admin::projections,
        admin::rebuild_projection,
        admin::pause_projection,
        admin::resume_projection,
        admin::stream_stats,
        admin::metrics,
        admin::dead_letters,
        admin::schemas,
        admin::put_schema,
        admin::retry_dead_letter,
        admin::discard_dead_letter,
        admin::process_manager_instances,
        admin::process_state,
        admin::import_process_state,
        health::live,
        health::ready,
        serve,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "store", description = "Generic event store API (contract §2)"),
        (name = "operations", description = "Health, metrics and administration (contract §5, §6)"),
    )
)]
pub struct ApiDoc;

/// The whole document: the server's own routes ([`ApiDoc`]), then each module's
/// documentation in order, then the contract's §7 error shape as every operation's `default`.
/// Built once at start, so `GET /openapi.json` only copies a string.
pub(crate) fn assemble(
    documents: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> Result<String, serde_json::Error> {
    let mut doc = ApiDoc::openapi();
    store_links(&mut doc);
    for module_doc in documents {
        utoipa::openapi::OpenApi::merge(&mut doc, module_doc);
    }
    DefaultErrorResponse.modify(&mut doc);
    IdPathParameters.modify(&mut doc);
    let mut json = serde_json::to_value(&doc)?;
    spell_links(&mut json);
    parameter_schemas(&mut json);
    serde_json::to_string(&json)
}

/// The parameters as the server reads them, whatever types the handlers declare them with:
/// - a parameter is absent or has a value: never `null` (utoipa makes an `Option` nullable);
/// - an integer query parameter is read by [`crate::extract::QueryMap::u64`]: any run of
///   digits, saturating at `u64::MAX` (a limit above its maximum is clamped), so no format
///   bounds it; an integer header (`If-Match`, `X-Min-Position`) is a `u64`: digits up to
///   `u64::MAX`, else `400`.
fn parameter_schemas(json: &mut serde_json::Value) {
    use serde_json::Value;
    let Some(paths) = json.get_mut("paths").and_then(Value::as_object_mut) else { return };
    let parameters = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("parameters")?.as_array_mut())
        .flatten();
    for parameter in parameters {
        let place = parameter["in"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(Value::Array(types)) = schema.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                schema.insert("type".to_owned(), only);
            }
        }
        let unsigned = schema.get("type").is_some_and(|t| t == "integer")
            && schema.get("minimum").is_some_and(|m| m == 0);
        if unsigned && (place == "query" || place == "header") {
            schema.remove("format");
            if place == "header" {
                schema.insert("maximum".to_owned(), Value::from(u64::MAX));
            }
        }
    }
}

/// utoipa 5.5 writes a link's fields in snake case (`operation_id`, `request_body`); OpenAPI
/// spells them `operationId`, `operationRef` and `requestBody`, and a client (or
/// schemathesis) ignores a link without them.
fn spell_links(json: &mut serde_json::Value) {
    let Some(paths) = json.get_mut("paths").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        for link in links.values_mut().filter_map(serde_json::Value::as_object_mut) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}

/// An OpenAPI link on the `status` answer of `method path` of `doc`: a client (or a
/// stateful tester) that got that answer can call `operation_id` with `parameters`, each a
/// runtime expression (`$response.body#/aggregate_id`, `$request.path.aggregate_id`, ...).
/// Does nothing when `doc` has no such answer, so a module's links never invent operations.
pub fn link(
    doc: &mut utoipa::openapi::OpenApi,
    (method, path, status): (&str, &str, &str),
    operation_id: &str,
    parameters: &[(&str, &str)],
) {
    let Some(item) = doc.paths.paths.get_mut(path) else { return };
    let operation = match method {
        "get" => &mut item.get,
        "post" => &mut item.post,
        "put" => &mut item.put,
        "delete" => &mut item.delete,
        "patch" => &mut item.patch,
        _ => return,
    };
    let Some(operation) = operation else { return };
    let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
        return;
    };
    let mut builder = LinkBuilder::new().operation_id(operation_id);
    for (name, expression) in parameters {
        builder = builder.parameter(*name, *expression);
    }
    response.links.insert(operation_id.to_owned(), builder.build().into());
}

/// The links of the store API: an append's answer names the stream the reads need.
fn store_links(doc: &mut utoipa::openapi::OpenApi) {
    let appended = ("post", "/streams/{aggregate_id}", "200");
    link(doc, appended, "read_stream", &[("aggregate_id", "$response.body#/aggregate_id")]);
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of every route", body = Object))
)]
pub async fn serve(State(state): State<AppState>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], state.openapi_json().to_owned())
        .into_response()
}

/// What an aggregate id matches (contract §3); anything else is refused with
/// `400 bad_request` on a path and `422 rule_violation` in a command's body.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,128}$";

/// The schema of an aggregate id: a string matching [`ID_PATTERN`].
#[must_use]
pub fn id_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(128))
        .into()
}

/// Every `{aggregate_id}` path parameter is read by [`crate::extract::AggregateIdPath`] (or
/// checked with [`crate::extract::check_id`]), which refuses an id outside [`ID_PATTERN`]
/// with `400`: the document says so, for every module's routes.
struct IdPathParameters;

impl Modify for IdPathParameters {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == utoipa::openapi::path::ParameterIn::Path
                        && parameter.name == crate::generic::ID_PARAM
                    {
                        parameter.schema = Some(id_schema());
                    }
                }
            }
        }
    }
}

/// Adds the contract's §7 error shape as the `default` response of every operation: any route can
/// answer an error (a malformed request, a panic, an unavailable store), always in it.
struct DefaultErrorResponse;

impl Modify for DefaultErrorResponse {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                operation.responses.responses.entry("default".to_owned()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description("Any other error")
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                                .build(),
                        )
                        .into()
                });
            }
        }
    }
}

/// The error shape of every response that is not a 2xx (contract §7). `error` and
/// `message` are always there; some codes add the fields below.
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Machine-readable code: `bad_request`, `not_found`, `payload_too_large`,
    /// `wrong_expected_version`, `aggregate_type_mismatch`, `validation_failed`,
    /// `unknown_event_type`, `rule_violation`, `projection_lagging`, ...
    pub error: String,
    /// Human-readable text.
    pub message: String,
    /// `wrong_expected_version`: what the request expected.
    pub expected: Option<ExpectedVersion>,
    /// `wrong_expected_version`: the stream's current version (`0` = it does not exist).
    pub actual: Option<u64>,
    /// `projection_lagging`: the position the read model has applied;
    /// `idempotency_key_used`: the position of the first outcome.
    pub position: Option<u64>,
    /// `validation_failed`: which event of the append (0-based).
    pub index: Option<u64>,
    /// `validation_failed`: the event's type.
    pub event_type: Option<String>,
    /// `validation_failed`: the schema version it was checked against.
    pub schema_version: Option<u32>,
    /// `validation_failed`: every fault, with the JSON pointer into the event's `data`.
    pub errors: Option<Vec<SchemaFault>>,
    /// `schema_incompatible`: why the new version is not BACKWARD compatible.
    pub reasons: Option<Vec<String>>,
}

/// One fault of an event against its schema.
#[derive(ToSchema)]
pub struct SchemaFault {
    /// JSON pointer into the event's `data` (`/items/0/price`).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// `expected_version` of an append: an integer, `"any"`, `"no_stream"` or `"exists"`.
pub struct ExpectedVersion;

impl PartialSchema for ExpectedVersion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).description(Some(
                    "The version of the stream's last event (0 = must not exist)",
                )),
            )
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([
                "any",
                "no_stream",
                "exists",
            ])))
            .description(Some(
                "What the writer believes about the stream's version; absent means \"any\"",
            ))
            .into()
    }
}

impl ToSchema for ExpectedVersion {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExpectedVersion")
    }
}

/// `as_of` of a state query: an RFC 3339 time; empty, like every empty query parameter, is
/// absent (the current state).
pub struct AsOf;

impl PartialSchema for AsOf {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).format(Some(
                utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime),
            )))
            .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
            .description(Some("An RFC 3339 time; empty means absent"))
            .into()
    }
}

impl ToSchema for AsOf {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AsOf")
    }
}

/// The direction of a stream read.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadDirection {
    /// From `from_version` (default 1) towards the end.
    Forward,
    /// From `from_version` (default: the last) towards the start.
    Backward,
}

/// A stored event (contract §1).
#[derive(ToSchema)]
pub struct Event {
    /// Unique in the store.
    #[schema(format = "uuid")]
    pub event_id: String,
    /// The stream (one aggregate instance).
    pub aggregate_id: String,
    /// The stream's aggregate type, fixed for its life.
    pub aggregate_type: String,
    /// Past-tense name of what happened.
    pub event_type: String,
    /// 1-based, gap-free within the stream.
    pub version: u64,
    /// The global (`$all`) order; strictly increasing in the order readers see events.
    pub position: u64,
    /// Commit time, RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The payload exactly as written.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// `correlation_id`, `causation_id`, `user_id`, `schema_version`, ...
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// The answer to a command (contract §3).
#[derive(ToSchema)]
pub struct CommandOutcome {
    /// The aggregate the command ran on (minted when the request named none).
    pub aggregate_id: String,
    /// Its version after the command.
    pub version: u64,
    /// The position of the last event the command appended.
    pub position: u64,
}

/// The headers every command takes (contract §3). The text headers hold 1 to 200 visible
/// ASCII characters (inner spaces allowed); anything else is `400 bad_request`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Runs the command only if the aggregate is at this version (`409` otherwise).
    #[param(rename = "If-Match")]
    pub if_match: Option<u64>,
    /// A repeated command with the same key gets the first response and appends nothing.
    #[param(rename = "Idempotency-Key")]
    #[param(pattern = "^[!-~]([ -~]{0,198}[!-~])?$")]
    pub idempotency_key: Option<String>,
    /// Copied into `metadata.correlation_id` of every event the command causes.
    #[param(rename = "X-Correlation-Id")]
    #[param(pattern = "^[!-~]([ -~]{0,198}[!-~])?$")]
    pub correlation_id: Option<String>,
    /// Copied into `metadata.user_id`.
    #[param(rename = "X-User-Id")]
    #[param(pattern = "^[!-~]([ -~]{0,198}[!-~])?$")]
    pub user_id: Option<String>,
}

/// Read-your-writes parameters of every read-model query (contract §4).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadYourWrites {
    /// Wait until the read model has applied every event up to this position.
    pub min_position: Option<u64>,
    /// How long to wait, in milliseconds (default 2000, at most 30000); then `504`.
    pub wait_ms: Option<u64>,
}

/// `X-Min-Position`: the header form of `min_position`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct MinPositionHeader {
    /// Same as the `min_position` query parameter.
    #[param(rename = "X-Min-Position")]
    pub min_position: Option<u64>,
}

/// One instance of a process manager: its state document as the manager saves it, with
/// at least `status` (for `order-fulfillment` also `order_id`, `items`, `reserved`,
/// `reason`, `correlation_id` and `updated_at`).
#[derive(ToSchema)]
pub struct ProcessInstance {
    /// The instance's status, one of those the manager declares (for `order-fulfillment`:
    /// `reserving`, `compensating`, `ready_to_ship`, `shipped` or `cancelled`).
    pub status: String,
}

/// Where a projection or process manager is in its life.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStatus {
    /// Loading its checkpoint.
    Starting,
    /// Following `$all`.
    Running,
    /// Rebuilding from position 0.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Its storage keeps failing; it retries with backoff.
    Stalled,
    /// Stopped for good.
    Failed,
}

/// A rebuild in progress.
#[derive(ToSchema)]
pub struct RebuildProgress {
    /// `$all` position the shadow tables have reached.
    pub position: u64,
    /// Events per second so far.
    pub rate: f64,
}

/// The answer to `POST /admin/projections/{name}/rebuild`.
#[derive(ToSchema)]
pub struct RebuildStarted {
    /// The projection.
    pub name: String,
    /// `rebuilding`.
    pub status: String,
}

/// The answer to `POST /admin/process-managers/{name}/state`.
#[derive(ToSchema)]
pub struct StateImported {
    /// The process manager.
    pub name: String,
    /// Its checkpoint now.
    pub checkpoint: u64,
    /// Instances saved.
    pub saved: u64,
}

/// One row of `GET /admin/streams/stats`.
#[derive(ToSchema)]
pub struct StreamStats {
    /// The stream.
    pub aggregate_id: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// How many events it holds.
    pub event_count: u64,
    /// Its last event's version.
    pub latest_version: u64,
}

/// An event a projection or process manager could not handle (or parked behind one).
#[derive(ToSchema)]
pub struct DeadLetter {
    /// Its id (for retry and discard).
    pub id: i64,
    /// The projection or process manager.
    pub projection: String,
    /// The event's `$all` position.
    pub position: u64,
    /// The event's stream.
    pub aggregate_id: String,
    /// The event's type.
    pub event_type: String,
    /// The last error (for a parked event: which dead letter it waits behind).
    pub error: String,
    /// Times it was tried.
    pub attempts: u32,
    /// RFC 3339.
    pub first_failed_at: String,
    /// RFC 3339.
    pub last_failed_at: String,
}

/// What became of a retried or discarded dead letter.
#[derive(ToSchema)]
pub struct DeadLetterOutcome {
    /// Dead letters of that aggregate still waiting (0 = it flows again).
    pub remaining: u64,
}

/// The current schema of one event type.
#[derive(ToSchema)]
pub struct RegisteredSchema {
    /// The event type.
    pub event_type: String,
    /// Its current version.
    pub version: u32,
    /// The current version's JSON Schema.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    /// Every registered version, ascending.
    pub versions: Vec<u32>,
}

/// The answer to `PUT /admin/schemas/{event_type}`.
#[derive(ToSchema)]
pub struct SchemaRegistered {
    /// The event type.
    pub event_type: String,
    /// The version now current.
    pub version: u32,
}

/// The body of the health probes.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` (with `error` and `message`).
    pub status: String,
    /// `not_ready` when not ready.
    pub error: Option<String>,
    /// Why it is not ready, or which consumers are stalled.
    pub message: Option<String>,
    /// Consumers retrying their storage (ready, but lagging).
    pub stalled: Option<Vec<String>>,
    /// Consumers still starting (not ready).
    pub starting: Option<Vec<String>>,
    /// Consumers stopped for good (not ready).
    pub failed: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    #[test]
    fn the_document_serialises_and_names_openapi_3() {
        let json = super::ApiDoc::openapi().to_json().unwrap();
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    }
}
