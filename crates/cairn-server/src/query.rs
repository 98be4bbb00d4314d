//! Read-model queries over HTTP, for module handlers: the read-your-writes wait
//! (`min_position` / `X-Min-Position`, `wait_ms`, `504 projection_lagging`), the
//! `X-Projection-Position` header, and documents and pages of a projection's tables in the
//! contract's shapes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::{ListQuery, ReadModelStore};

use crate::AppState;
use crate::consumers::ProjectionView;
use crate::error::ApiError;
use crate::extract::QueryMap;

/// `wait_ms` when a read-your-writes wait gives none.
pub const WAIT_MS_DEFAULT: u64 = 2000;
/// Longest read-your-writes wait: a request never holds a connection longer than this.
pub const WAIT_MS_MAX: u64 = 30_000;
/// Page size of a list when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: u64 = 100;
/// Largest page of a list, whatever `limit` asks: one request reads at most this many rows.
pub const LIST_LIMIT_MAX: u64 = 1000;

/// A response with the projection's position attached (every query response has it).
#[must_use]
pub fn with_position(mut response: Response, position: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert("x-projection-position", v);
    }
    response
}

pub(crate) fn raw_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Waits for read-your-writes: `min_position` (query) or `X-Min-Position` (header); on a
/// partitioned projection, until every partition has passed it.
pub async fn wait_for_position(
    projection: &ProjectionView,
    query: &QueryMap,
    headers: &HeaderMap,
) -> Result<u64, Response> {
    let fail = |e: ApiError| with_position(e.into_response(), projection.position());
    let from_header = match headers.get("x-min-position") {
        None => None,
        Some(v) => {
            Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                fail(ApiError::bad_request("X-Min-Position must be a non-negative integer"))
            })?)
        }
    };
    let min_position = query.u64("min_position").map_err(fail)?.or(from_header);
    let Some(min_position) = min_position else { return Ok(projection.position()) };
    let wait_ms = query.u64("wait_ms").map_err(fail)?.unwrap_or(WAIT_MS_DEFAULT).min(WAIT_MS_MAX);
    match projection.wait_for(min_position, Duration::from_millis(wait_ms)).await {
        Ok(p) => Ok(p),
        Err(applied) => Err(with_position(
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "projection_lagging",
                format!("the read model reached position {applied}, not {min_position}, within {wait_ms} ms"),
            )
            .with("position", applied)
            .into_response(),
            applied,
        )),
    }
}

fn projection(state: &AppState, name: &str) -> Option<ProjectionView> {
    let found = state.consumers.view(name);
    if found.is_none() {
        // A name no module registered is a wiring bug: a 500 names it, the server serves on.
        tracing::error!(projection = name, "a route reads a projection that is not registered");
    }
    found
}

/// The read-your-writes wait on projection `name` before a query of its tables.
async fn projected(
    state: &AppState,
    name: &str,
    query: &QueryMap,
    headers: &HeaderMap,
) -> Result<u64, Response> {
    let Some(view) = projection(state, name) else { return Err(unregistered(name)) };
    wait_for_position(&view, query, headers).await
}

fn unregistered(name: &str) -> Response {
    let message = format!("no projection named {name}");
    ApiError::internal(message).into_response()
}

async fn get_doc(
    rm: &Arc<dyn ReadModelStore>,
    table: &'static str,
    key: String,
) -> Result<Option<String>, ApiError> {
    let rm = Arc::clone(rm);
    tokio::task::spawn_blocking(move || rm.get(table, &key))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// `GET` one document of `table` (a table of projection `projection_name`) under `id`,
/// after the read-your-writes wait, with `X-Projection-Position`; `404` when absent.
pub async fn document(
    state: &AppState,
    projection_name: &str,
    table: &'static str,
    id: String,
    query: &QueryMap,
    headers: &HeaderMap,
) -> Response {
    let position = match projected(state, projection_name, query, headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let response = match get_doc(&state.readmodels, table, id).await {
        Ok(Some(json)) => raw_json(StatusCode::OK, json),
        Ok(None) => ApiError::not_found("no such entry in the read model").into_response(),
        Err(e) => e.into_response(),
    };
    with_position(response, position)
}

/// Lists a table as `{"items": [...], "next": cursor|null}`.
pub(crate) async fn list_documents(
    rm: &Arc<dyn ReadModelStore>,
    table: &str,
    filters: Vec<(String, String)>,
    query: &QueryMap,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let limit = query.u64("limit")?.unwrap_or(LIST_LIMIT_DEFAULT).clamp(1, LIST_LIMIT_MAX) as usize;
    let list = ListQuery {
        table: table.to_owned(),
        filters,
        after: query.str("after").map(str::to_owned),
        limit,
    };
    let rm = Arc::clone(rm);
    let rows = tokio::task::spawn_blocking(move || rm.list(&list))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let next = if rows.len() == limit { rows.last().map(|(k, _)| k.clone()) } else { None };
    Ok((rows.into_iter().map(|(_, doc)| doc).collect(), next))
}

/// `GET` a page of `table` (a table of projection `projection_name`) as
/// `{"items": [...], "next": cursor|null}`, after the read-your-writes wait, with
/// `X-Projection-Position`. Each of `filters` given as a query parameter keeps the rows whose
/// indexed field equals it; `limit` (default [`LIST_LIMIT_DEFAULT`], at most
/// [`LIST_LIMIT_MAX`]) and `after` page.
pub async fn list(
    state: &AppState,
    projection_name: &str,
    table: &'static str,
    filters: &[&str],
    query: &QueryMap,
    headers: &HeaderMap,
) -> Response {
    let position = match projected(state, projection_name, query, headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut given = Vec::new();
    for field in filters {
        if let Some(v) = query.str(field) {
            given.push(((*field).to_owned(), v.to_owned()));
        }
    }
    let response = match list_documents(&state.readmodels, table, given, query).await {
        Ok((docs, next)) => {
            let next = serde_json::to_string(&next).unwrap_or_else(|_| "null".into());
            raw_json(StatusCode::OK, format!(r#"{{"items":[{}],"next":{next}}}"#, docs.join(",")))
        }
        Err(e) => e.into_response(),
    };
    with_position(response, position)
}

/// Aggregate `A` number `id` rebuilt from its events (snapshots included): now, after the
/// `version` query parameter, or as of the `as_of` one (RFC 3339), with the stream's
/// current version. Both parameters at once, or a malformed one, is a `400`; no such
/// aggregate (or a stream of another aggregate type), a version beyond its end or a time
/// before its first event is a `404` worded with `A::TYPE` (`no such order`).
pub async fn load_state<A: cairn_cqrs::Aggregate>(
    state: &AppState,
    id: &str,
    query: &QueryMap,
) -> Result<(cairn_cqrs::repository::Loaded<A>, u64), ApiError> {
    use cairn_cqrs::repository::Until;
    let version = query.u64("version")?;
    let as_of = match query.str("as_of") {
        None => None,
        Some(t) => Some(cairn_core::timestamp::Timestamp::parse_rfc3339(t).map_err(|e| {
            ApiError::bad_request(format!(
                "as_of must be an RFC 3339 time like 2026-02-23T10:00:00Z: {e}"
            ))
        })?),
    };
    let until = match (version, as_of) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give version or as_of, not both")),
        (Some(v), None) => Until::Version(v),
        (None, Some(t)) => Until::Time(t),
        (None, None) => Until::End,
    };
    let kind = A::TYPE.to_lowercase();
    let loaded = match state.repository.load_until::<A>(id, until).await {
        Ok(loaded) => loaded,
        // Another aggregate type's stream is not one of these: as absent as a missing one
        // (a read must not answer with an append's conflict).
        Err(cairn_cqrs::CommandError::Store(cairn_core::AppendError::AggregateTypeMismatch {
            ..
        })) => return Err(ApiError::not_found(format!("no such {kind}"))),
        Err(e) => return Err(e.into()),
    };
    let current = state.store.stream_version(id).await?;
    if loaded.version == 0 {
        return Err(ApiError::not_found(match until {
            Until::Time(_) if current > 0 => format!("the {kind} did not exist yet at that time"),
            _ => format!("no such {kind}"),
        }));
    }
    if let Until::Version(v) = until
        && (v > loaded.version || v == 0)
    {
        return Err(ApiError::not_found(format!(
            "the {kind} has no version {v} (it is at version {current})"
        )));
    }
    Ok((loaded, current))
}

/// A page of aggregate `A` number `id`'s stream (`from_version`, `limit`, `direction`, as
/// `GET /streams/{id}`); `404` when there is no such stream or it belongs to another
/// aggregate type, so a route of one aggregate never shows another's events.
pub async fn events<A: cairn_cqrs::Aggregate>(
    state: &AppState,
    id: crate::extract::AggregateIdPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    // A malformed page request is a 400 whatever the stream is.
    crate::routes::streams::page_params(&query)?;
    let first = state.store.read_stream(&id.0, cairn_core::StreamRead::forward_from(1, 1)).await;
    let foreign = match first {
        Ok(slice) => slice.aggregate_type != A::TYPE,
        Err(cairn_core::ReadError::StreamNotFound) => true,
        Err(e) => return Err(e.into()),
    };
    if foreign {
        return Err(ApiError::not_found(format!("no such {}", A::TYPE.to_lowercase())));
    }
    let page = crate::routes::streams::read_stream(
        axum::extract::State(state.clone()),
        crate::extract::StreamIdPath(id.0),
        query,
    )
    .await?;
    Ok(page.into_response())
}
