//! The query API (contract §4): read models with read-your-writes waits, and the
//! write-model queries (an order's events and its state as of a version or a time).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::{ListQuery, ReadModelError, ReadModelStore};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_cqrs::repository::Until;
use cairn_orders::Order;
use cairn_orders::projections::{customer_view, inventory_view, order_summary, shipped_orders};
use std::sync::Arc;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AggregateIdPath, QueryMap};

/// Default and largest `wait_ms`.
const WAIT_MS_DEFAULT: u64 = 2000;
const WAIT_MS_MAX: u64 = 30_000;
/// Default and largest page of `GET /orders`.
const LIST_LIMIT_DEFAULT: u64 = 100;
const LIST_LIMIT_MAX: u64 = 1000;

impl From<ReadModelError> for ApiError {
    fn from(e: ReadModelError) -> Self {
        tracing::error!(error = %e, "read model failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_model_unavailable",
            "the read model is unavailable",
        )
    }
}

/// A response with the projection's position attached (every query response has it).
fn with_position(mut response: Response, position: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert("x-projection-position", v);
    }
    response
}

fn raw_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Waits for read-your-writes: `min_position` (query) or `X-Min-Position` (header).
async fn wait_for_position(
    projection: &ConsumerHandle,
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

fn projection<'a>(state: &'a AppState, name: &str) -> &'a ConsumerHandle {
    // The names are the domain's own constants; a missing one is a wiring bug caught by tests.
    &state.domain.projections[name]
}

async fn get_doc(
    rm: &Arc<dyn ReadModelStore>,
    table: &'static str,
    key: String,
) -> Result<Option<String>, ApiError> {
    let rm = Arc::clone(rm);
    tokio::task::spawn_blocking(move || rm.get(table, &key))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

/// One document of a read model, after the read-your-writes wait.
async fn document(
    state: &AppState,
    projection_name: &str,
    table: &'static str,
    id: String,
    query: &QueryMap,
    headers: &HeaderMap,
) -> Response {
    let handle = projection(state, projection_name);
    let position = match wait_for_position(handle, query, headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let response = match get_doc(&state.domain.readmodels, table, id).await {
        Ok(Some(json)) => raw_json(StatusCode::OK, json),
        Ok(None) => ApiError::not_found("no such entry in the read model").into_response(),
        Err(e) => e.into_response(),
    };
    with_position(response, position)
}

/// `GET /orders/{id}`.
pub async fn get_order(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "order_summary", order_summary::TABLE, id, &query, &headers).await
}

/// `GET /shipped-orders/{id}`.
pub async fn get_shipped_order(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "shipped_orders_view", shipped_orders::TABLE, id, &query, &headers).await
}

/// `GET /inventory/{product_id}`.
pub async fn get_inventory(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "inventory_view", inventory_view::TABLE, id, &query, &headers).await
}

/// `GET /customers/{id}`.
pub async fn get_customer(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "customer_view", customer_view::TABLE, id, &query, &headers).await
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
    let rows = tokio::task::spawn_blocking(move || rm.list(&list)).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    })??;
    let next = if rows.len() == limit { rows.last().map(|(k, _)| k.clone()) } else { None };
    Ok((rows.into_iter().map(|(_, doc)| doc).collect(), next))
}

/// `GET /orders?status=&customer_id=&limit=&after=`.
pub async fn list_orders(
    State(state): State<AppState>,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    let handle = projection(&state, "order_summary");
    let position = match wait_for_position(handle, &query, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut filters = Vec::new();
    for field in ["status", "customer_id"] {
        if let Some(v) = query.str(field) {
            filters.push((field.to_owned(), v.to_owned()));
        }
    }
    let response =
        match list_documents(&state.domain.readmodels, order_summary::TABLE, filters, &query).await
        {
            Ok((docs, next)) => {
                let next = serde_json::to_string(&next).unwrap_or_else(|_| "null".into());
                raw_json(
                    StatusCode::OK,
                    format!(r#"{{"items":[{}],"next":{next}}}"#, docs.join(",")),
                )
            }
            Err(e) => e.into_response(),
        };
    with_position(response, position)
}

/// `GET /orders/{id}/events`: the order's stream, from the event store.
pub async fn order_events(
    state: State<AppState>,
    id: AggregateIdPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let slice = state.store.read_stream(&id.0, cairn_core::StreamRead::forward_from(1, 1)).await?;
    if slice.aggregate_type != <Order as cairn_cqrs::Aggregate>::TYPE {
        return Err(ApiError::not_found("no such order"));
    }
    Ok(super::streams::read_stream(state, id, query).await?.into_response())
}

/// `GET /orders/{id}/state?version=N | as_of=<RFC 3339>`: the order rebuilt from its events.
pub async fn order_state(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let version = query.u64("version")?;
    let as_of = match query.str("as_of") {
        None => None,
        Some(t) => Some(Timestamp::parse_rfc3339(t).map_err(|e| {
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
    let loaded = state.domain.repository.load_until::<Order>(&id, until).await?;
    let current = state.store.stream_version(&id).await?;
    if loaded.version == 0 {
        return Err(ApiError::not_found(match until {
            Until::Time(_) if current > 0 => "the order did not exist yet at that time",
            _ => "no such order",
        }));
    }
    if let Until::Version(v) = until
        && (v > loaded.version || v == 0)
    {
        return Err(ApiError::not_found(format!(
            "the order has no version {v} (it is at version {current})"
        )));
    }
    let order = loaded.state;
    Ok(axum::Json(OrderState {
        order_id: &id,
        version: loaded.version,
        status: order.status.as_str(),
        customer_id: &order.customer_id,
        item_count: order.items.len(),
        items: &order.items,
        total: order.total(),
        corrections: order.corrections,
        as_of: loaded.timestamp,
        current_version: current,
    })
    .into_response())
}

/// The body of `GET /orders/{id}/state` (a struct, not a `Value`, so money keeps its digits).
#[derive(serde::Serialize)]
struct OrderState<'a> {
    order_id: &'a str,
    version: u64,
    status: &'static str,
    customer_id: &'a str,
    items: &'a [cairn_orders::order::Line],
    item_count: usize,
    total: cairn_orders::Money,
    corrections: cairn_orders::Money,
    /// Timestamp of the last event applied.
    as_of: Option<Timestamp>,
    /// The stream's version now, for comparison.
    current_version: u64,
}
