//! The generic event store API (contract §2): append, read a stream, read `$all`, subscribe.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cairn_core::store::{APPEND_EVENTS_MAX, READ_LIMIT_MAX};
use cairn_core::{
    AllFilter, Append, Direction, ExpectedVersion, NewEvent, RecordedEvent, StreamRead,
};
use cairn_cqrs::AggregateKind;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryMap, StreamIdPath};
use crate::routes::openapi::{self, ErrorBody};
use crate::schema_version::{self, KnownVersions};
use crate::schemas::SchemaRegistry;

const STREAM_READ_LIMIT_DEFAULT: u64 = 100;
const ALL_READ_LIMIT_DEFAULT: u64 = 1000;

/// Body of `POST /streams/{aggregate_id}`. Unknown fields are refused: a misspelt
/// `expected_version` must not silently turn into "any".
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// Absent means `"any"`.
    #[serde(default)]
    expected_version: ExpectedVersion,
    /// 1 to 1000 events of one aggregate type, appended atomically.
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<EventBody>,
}

/// One event of an append request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Minted when absent; re-sending the same ids makes a retry idempotent.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub event_id: Option<Uuid>,
    /// The stream's aggregate type (the same for every event of the append).
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,100}$", min_length = 1, max_length = 100)]
    pub aggregate_type: String,
    /// Past-tense name of what happened.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,100}$", min_length = 1, max_length = 100)]
    pub event_type: String,
    /// The payload, stored byte for byte.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// A JSON object (`correlation_id`, `causation_id`, `user_id`, ...).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
}

/// The answer to an append.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AppendResponse<'a> {
    /// The stream.
    aggregate_id: &'a str,
    /// Version of the first event appended.
    first_version: u64,
    /// Version of the last event appended.
    last_version: u64,
    /// Position of the last event appended.
    position: u64,
}

/// A raw append as every protocol sends it (HTTP's `POST /streams/{id}`, gRPC's `Append`),
/// turned into a store append: the caller's right to write the stream's type, schema
/// versions stamped, a registered aggregate's events decoded by its rules, the client
/// limits checked. The events must share one aggregate type.
pub fn prepare_append(
    state: &AppState,
    caller: Option<&crate::auth::Caller>,
    aggregate_id: String,
    expected_version: ExpectedVersion,
    events: Vec<EventBody>,
) -> Result<Append, ApiError> {
    if let Some(first) = events.first() {
        // One append is one type (checked below): the first event's type is the stream's.
        crate::auth::middleware::check_raw_append(caller, state, &first.aggregate_type)?;
    }
    let body = AppendBody { expected_version, events };
    let request = to_append(aggregate_id, body, &state.schemas, &state.aggregates)?;
    request.validate_client()?;
    Ok(request)
}

/// After a raw append to a registered aggregate's stream: its snapshot is taken now, in
/// the background, so that the next command on it does not replay the bulk.
pub fn after_append(
    state: &AppState,
    aggregate_type: &str,
    aggregate_id: &str,
    outcome: &cairn_core::AppendOutcome,
) {
    if let Some(kind) = state.aggregate(aggregate_type) {
        kind.snapshot_after_append(
            &state.repository,
            aggregate_id,
            outcome.first_version,
            outcome.last_version,
        );
    }
}

/// Turns a request body into a store append, checking what the store cannot.
fn to_append(
    aggregate_id: String,
    body: AppendBody,
    schemas: &SchemaRegistry,
    aggregates: &BTreeMap<&'static str, AggregateKind>,
) -> Result<Append, ApiError> {
    if body.events.is_empty() {
        return Err(ApiError::bad_request("events must hold at least one event"));
    }
    if body.events.len() > APPEND_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "an append carries at most {APPEND_EVENTS_MAX} events, got {}",
            body.events.len()
        )));
    }
    let aggregate_type = body.events[0].aggregate_type.clone();
    let mut events = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.into_iter().enumerate() {
        if e.aggregate_type != aggregate_type {
            return Err(ApiError::bad_request(format!(
                "events[{i}].aggregate_type is {:?} but events[0] says {aggregate_type:?}: one append is one stream of one type",
                e.aggregate_type
            )));
        }
        let kind = aggregates.get(aggregate_type.as_str());
        let mut metadata: Map<String, Value> = match &e.metadata {
            None => Map::new(),
            Some(m) => match serde_json::from_str::<Value>(m.get()) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "events[{i}].metadata must be a JSON object"
                    )));
                }
            },
        };
        let domain_version = kind
            .filter(|k| k.event_types().contains(&e.event_type.as_str()))
            .map(|k| k.schema_version(&e.event_type));
        let registered = schemas.versions(&e.event_type).last().copied();
        let known = registered.or(domain_version).map(|current| KnownVersions { current });
        let sent = schema_version::client_version(i, &e.event_type, &metadata, known)?;
        // An older version (an import replaying history) is stored as it was written and
        // upcast on read: decoding it as the current version would refuse it.
        let historic = matches!((sent, domain_version), (Some(v), Some(d)) if v < d);
        // Streams of types no module registered are free-form, as the contract allows.
        // Cairn's own events (markers, erased events) are no aggregate's to decode.
        let system = cairn_core::lifecycle::is_system_type(&e.event_type);
        let checked = kind
            .filter(|_| !historic && !system)
            .map(|kind| kind.check_event(&e.event_type, e.data.get()));
        match checked {
            None | Some(Ok(())) => {}
            Some(Err(cairn_cqrs::DecodeError::UnknownType(t))) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_event_type",
                    format!("events[{i}]: aggregate {aggregate_type} has no event type {t:?}"),
                ));
            }
            Some(Err(invalid)) => {
                // The registered schema names every fault with its JSON pointer, where the
                // decoder names only the first: its answer is the more useful one.
                schemas.validate(i, &e.event_type, e.data.get())?;
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!("events[{i}]: {invalid}"),
                ));
            }
        }
        let metadata = match (sent, registered, domain_version) {
            // A domain type without a registered schema: the registry cannot stamp it, and
            // read as version 1 it would be upcast from the wrong shape.
            (None, None, Some(current)) => {
                metadata.insert("schema_version".into(), Value::from(current));
                serde_json::value::to_raw_value(&metadata)
                    .map_err(|e| ApiError::bad_request(format!("events[{i}].metadata: {e}")))?
            }
            _ => e.metadata.unwrap_or_else(cairn_core::envelope::empty_object),
        };
        events.push(NewEvent {
            event_id: e.event_id.unwrap_or_else(cairn_core::store::new_event_id),
            event_type: e.event_type,
            data: e.data,
            metadata,
        });
    }
    Ok(Append {
        aggregate_id,
        aggregate_type,
        expected: body.expected_version,
        events,
        idempotency: None,
    })
}

/// Appends events to a stream.
///
/// All events of one request are appended atomically under the expected-version
/// condition. Re-sending events whose ids are all stored returns the original outcome.
#[utoipa::path(
    post,
    path = "/streams/{aggregate_id}",
    tag = "store",
    params(("aggregate_id" = String, Path, description = "The stream (`[A-Za-z0-9._:@-]{1,128}`)")),
    request_body = AppendBody,
    responses(
        (status = 200, description = "Appended (or an idempotent retry)", body = AppendResponse),
        (status = 400, description = "`bad_request`: malformed body, no events or more than 1000; `json_too_deep`: nested deeper than 128 levels; `invalid_schema_version`: a `metadata.schema_version` the type does not have", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`, `aggregate_type_mismatch` or `duplicate_event_id`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (schema or domain decoding) or `unknown_event_type`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `store_poisoned` or `shutting_down`", body = ErrorBody),
    )
)]
pub async fn append(
    State(state): State<AppState>,
    StreamIdPath(aggregate_id): StreamIdPath,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Response, ApiError> {
    let caller = caller.as_ref().map(|c| &c.0);
    let request = prepare_append(&state, caller, aggregate_id, body.expected_version, body.events)?;
    let (aggregate_id, aggregate_type) =
        (request.aggregate_id.clone(), request.aggregate_type.clone());
    let outcome = state.store.append(request).await?;
    after_append(&state, &aggregate_type, &aggregate_id, &outcome);
    Ok(Json(AppendResponse {
        aggregate_id: &aggregate_id,
        first_version: outcome.first_version,
        last_version: outcome.last_version,
        position: outcome.position,
    })
    .into_response())
}

/// A page of one stream.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamPage {
    /// The events, in the direction read.
    events: Vec<RecordedEvent>,
    /// Where the next page starts; `null` at the end.
    next_version: Option<u64>,
}

fn limit_param(query: &QueryMap, default: u64) -> Result<usize, ApiError> {
    let limit = query.u64("limit")?.unwrap_or(default);
    Ok(limit.min(READ_LIMIT_MAX as u64) as usize)
}

/// The paging parameters of a stream read (`direction`, `limit`, `from_version`), checked
/// before anything is read.
pub(crate) fn page_params(query: &QueryMap) -> Result<(Direction, usize, Option<u64>), ApiError> {
    let direction = match query.str("direction") {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "direction must be \"forward\" or \"backward\", got {other:?}"
            )));
        }
    };
    let limit = limit_param(query, STREAM_READ_LIMIT_DEFAULT)?;
    Ok((direction, limit, query.u64("from_version")?))
}

/// Reads a stream's events in version order.
#[utoipa::path(
    get,
    path = "/streams/{aggregate_id}",
    tag = "store",
    params(
        ("aggregate_id" = String, Path, description = "The stream"),
        ("from_version" = Option<u64>, Query, description = "First version to read (forward: default 1, and 0 reads from 1; backward: default the last, and 0 is an empty last page)"),
        ("limit" = Option<u64>, Query, description = "At most this many events (default 100, at most 10000)"),
        ("direction" = inline(Option<openapi::ReadDirection>), Query, description = "`forward` (default) or `backward`"),
    ),
    responses(
        (status = 200, description = "A page of the stream", body = StreamPage),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: the stream does not exist", body = ErrorBody),
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    StreamIdPath(aggregate_id): StreamIdPath,
    query: QueryMap,
) -> Result<Json<StreamPage>, ApiError> {
    let (direction, limit, mut from_version) = page_params(&query)?;
    if direction == Direction::Forward {
        // Versions start at 1; from_version=0 reads from the start.
        from_version = Some(from_version.unwrap_or(1).max(1));
    } else if from_version == Some(0) {
        // Nothing comes before version 1: an empty last page (as EventStoreDB answers a
        // backward read from before the start), once the stream is known to exist.
        state.store.read_stream(&aggregate_id, StreamRead::forward_from(1, 1)).await?;
        return Ok(Json(StreamPage { events: Vec::new(), next_version: None }));
    }
    let slice = state
        .store
        .read_stream(&aggregate_id, StreamRead { from_version, direction, limit })
        .await?;
    let next_version = if limit == 0 {
        // An empty page moves nowhere: the next read starts where this one did, if there
        // is anything there.
        match direction {
            Direction::Forward => from_version.filter(|&v| v <= slice.stream_version),
            Direction::Backward => {
                Some(from_version.unwrap_or(slice.stream_version).min(slice.stream_version))
            }
        }
    } else {
        slice.next_version(direction)
    };
    Ok(Json(StreamPage { events: slice.events, next_version }))
}

fn all_filter(query: &QueryMap) -> AllFilter {
    AllFilter {
        event_types: list(query, "event_type"),
        aggregate_types: list(query, "aggregate_type"),
    }
}

/// A comma-separated query parameter (`event_type=A,B`): any of the names matches.
fn list(query: &QueryMap, name: &str) -> Vec<String> {
    query
        .str(name)
        .map(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A page of `$all`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AllPage {
    /// Events with a position above `from_position`, ascending.
    events: Vec<RecordedEvent>,
    /// The last position returned, or `from_position` when none was.
    next_position: u64,
}

/// Reads every event of the store in global (`$all`) order.
#[utoipa::path(
    get,
    path = "/all",
    tag = "store",
    params(
        ("from_position" = Option<u64>, Query, description = "Return events after this position (default 0)"),
        ("limit" = Option<u64>, Query, description = "At most this many events (default 1000, at most 10000)"),
        ("event_type" = Option<String>, Query, description = "Only these event types (comma-separated)"),
        ("aggregate_type" = Option<String>, Query, description = "Only these aggregate types (comma-separated)"),
    ),
    responses(
        (status = 200, description = "A page of `$all`", body = AllPage),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    query: QueryMap,
) -> Result<Json<AllPage>, ApiError> {
    let from_position = query.u64("from_position")?.unwrap_or(0);
    let limit = limit_param(&query, ALL_READ_LIMIT_DEFAULT)?;
    let slice = state.store.read_all(from_position, limit, &all_filter(&query)).await?;
    let next_position = slice.events.last().map_or(from_position, |e| e.position);
    Ok(Json(AllPage { events: slice.events, next_position }))
}

/// Subscribes to `$all`: catch-up, then live (Server-Sent Events).
///
/// Each event is sent as `id: <position>`, `event: <event_type>`, `data: <event JSON>`.
#[utoipa::path(
    get,
    path = "/all/subscribe",
    tag = "store",
    params(
        ("from_position" = Option<u64>, Query, description = "Send events after this position (default 0)"),
        ("event_type" = Option<String>, Query, description = "Only these event types (comma-separated)"),
        ("aggregate_type" = Option<String>, Query, description = "Only these aggregate types (comma-separated)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position (wins over `from_position`)"),
    ),
    responses(
        (status = 200, description = "A stream of events", content_type = "text/event-stream", body = String),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 429, description = "`too_many_subscribers`: the server's cap on open subscriptions (`cairn serve --max-subscribers`) is reached; try again later", body = ErrorBody),
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID must be the position (a non-negative integer) of the last event seen")
        })?),
    };
    let from_position = match resume {
        Some(p) => p,
        None => query.u64("from_position")?.unwrap_or(0),
    };
    // Held by the stream and released when the client goes: the cap counts open streams.
    let permit = Arc::clone(&state.subscribers).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_subscribers",
            format!(
                "{} subscriptions are open, the most this server serves at once; try again later",
                state.config.sse_subscribers_max
            ),
        )
        .with("max_subscribers", state.config.sse_subscribers_max)
    })?;
    let mut shutdown = state.shutdown.clone();
    let stopped = async move {
        // Ends the stream when shutdown starts, so graceful shutdown is not held open by SSE.
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let events = cairn_core::subscribe_all(state.store.clone(), from_position, all_filter(&query))
        .map(move |item| {
            let _held = &permit;
            Ok(match item {
                Ok(e) => match serde_json::to_string(&e) {
                    Ok(json) => SseEvent::default()
                        .id(e.position.to_string())
                        .event(e.event_type)
                        .data(json),
                    Err(err) => error_event(&err.to_string()),
                },
                Err(err) => {
                    tracing::error!(error = %err, "subscription read failed");
                    error_event(
                        "the event store is unavailable; reconnect with Last-Event-ID to resume",
                    )
                }
            })
        })
        .take_until(stopped);
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new().interval(Duration::from_secs(state.config.sse_keep_alive_secs)),
    ))
}

fn error_event(message: &str) -> SseEvent {
    SseEvent::default()
        // `$` cannot start an event type, so this never collides with a stored event's name.
        .event("$error")
        .data(serde_json::json!({"error": "store_unavailable", "message": message}).to_string())
}
