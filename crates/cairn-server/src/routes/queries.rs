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
use crate::routes::openapi::{self, ErrorBody};

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
    state.consumers.projection(name).unwrap_or_else(|| panic!("no projection named {name}"))
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
    let response = match get_doc(&state.readmodels, table, id).await {
        Ok(Some(json)) => raw_json(StatusCode::OK, json),
        Ok(None) => ApiError::not_found("no such entry in the read model").into_response(),
        Err(e) => e.into_response(),
    };
    with_position(response, position)
}

/// An order's summary (`order_summary`), with read-your-writes.
#[utoipa::path(
    get,
    path = "/orders/{aggregate_id}",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        openapi::ReadYourWrites,
        openapi::MinPositionHeader,
    ),
    responses(
        (status = 200, description = "The order's summary", body = openapi::OrderSummary, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: not in the read model", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "order_summary", order_summary::TABLE, id, &query, &headers).await
}

/// A shipped order with its customer (`shipped_orders_view`), with read-your-writes.
#[utoipa::path(
    get,
    path = "/shipped-orders/{aggregate_id}",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        openapi::ReadYourWrites,
        openapi::MinPositionHeader,
    ),
    responses(
        (status = 200, description = "The shipped order", body = openapi::ShippedOrder, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: not in the read model", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
pub async fn get_shipped_order(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "shipped_orders_view", shipped_orders::TABLE, id, &query, &headers).await
}

/// A product's stock (`inventory_view`), with read-your-writes.
#[utoipa::path(
    get,
    path = "/inventory/{aggregate_id}",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The product id"),
        openapi::ReadYourWrites,
        openapi::MinPositionHeader,
    ),
    responses(
        (status = 200, description = "The product's stock", body = openapi::InventoryView, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: not in the read model", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
pub async fn get_inventory(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    document(&state, "inventory_view", inventory_view::TABLE, id, &query, &headers).await
}

/// A customer and their orders' totals (`customer_view`), with read-your-writes.
#[utoipa::path(
    get,
    path = "/customers/{aggregate_id}",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The customer"),
        openapi::ReadYourWrites,
        openapi::MinPositionHeader,
    ),
    responses(
        (status = 200, description = "The customer", body = openapi::CustomerView, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: not in the read model", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
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

/// Lists orders (`order_summary`) by status and customer, in pages, with read-your-writes.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "queries",
    params(
        ("status" = Option<String>, Query, description = "Only orders with this status"),
        ("customer_id" = Option<String>, Query, description = "Only this customer's orders"),
        ("limit" = Option<u64>, Query, description = "Page size (default 100, at most 1000)"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        openapi::ReadYourWrites,
        openapi::MinPositionHeader,
    ),
    responses(
        (status = 200, description = "A page of orders", body = openapi::OrderList, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
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
    let response = match list_documents(&state.readmodels, order_summary::TABLE, filters, &query)
        .await
    {
        Ok((docs, next)) => {
            let next = serde_json::to_string(&next).unwrap_or_else(|_| "null".into());
            raw_json(StatusCode::OK, format!(r#"{{"items":[{}],"next":{next}}}"#, docs.join(",")))
        }
        Err(e) => e.into_response(),
    };
    with_position(response, position)
}

/// An order's events, from the event store (always current).
#[utoipa::path(
    get,
    path = "/orders/{aggregate_id}/events",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        ("from_version" = Option<u64>, Query, description = "First version to read"),
        ("limit" = Option<u64>, Query, description = "At most this many events (default 100, at most 10000)"),
        ("direction" = Option<String>, Query, description = "`forward` (default) or `backward`"),
    ),
    responses(
        (status = 200, description = "A page of the order's stream", body = super::streams::StreamPage),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
    )
)]
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

/// An order rebuilt from its events: now, as of a version, or as of a time (temporal query).
#[utoipa::path(
    get,
    path = "/orders/{aggregate_id}/state",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        ("version" = Option<u64>, Query, description = "The state after this version"),
        ("as_of" = Option<String>, Query, format = DateTime, description = "The state after every event with a timestamp at or before this RFC 3339 time"),
    ),
    responses(
        (status = 200, description = "The order's state", body = OrderState),
        (status = 400, description = "`bad_request`: a malformed parameter, or both `version` and `as_of`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, a version beyond its end, or a time before its first event", body = ErrorBody),
    )
)]
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
    let loaded = state.repository.load_until::<Order>(&id, until).await?;
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
#[derive(serde::Serialize, utoipa::ToSchema)]
struct OrderState<'a> {
    /// The order.
    order_id: &'a str,
    /// The version the state was rebuilt to.
    version: u64,
    /// Life-cycle status.
    status: &'static str,
    /// Who ordered.
    customer_id: &'a str,
    /// The lines.
    #[schema(value_type = Vec<openapi::OrderLine>)]
    items: &'a [cairn_orders::order::Line],
    /// Number of lines.
    item_count: usize,
    /// Sum of the lines plus corrections.
    #[schema(value_type = openapi::Money)]
    total: cairn_orders::Money,
    /// Sum of the total corrections.
    #[schema(value_type = openapi::Money)]
    corrections: cairn_orders::Money,
    /// Timestamp of the last event applied.
    #[schema(value_type = Option<String>, format = DateTime)]
    as_of: Option<Timestamp>,
    /// The stream's version now, for comparison.
    current_version: u64,
}
