//! The query API (contract §4): read models with read-your-writes waits, and the
//! write-model queries (an order's events and its state as of a version or a time).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cairn_core::timestamp::Timestamp;
use cairn_orders::Order;
use cairn_orders::projections::{customer_view, inventory_view, order_summary, shipped_orders};

use cairn_server::AppState;
use cairn_server::error::ApiError;
use cairn_server::extract::{AggregateIdPath, QueryMap};
use cairn_server::openapi::{self, ErrorBody};
use cairn_server::streams;

use crate::docs;

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
        (status = 200, description = "The order's summary", body = cairn_orders::projections::order_summary::OrderSummary, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
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
    cairn_server::query::document(
        &state,
        "order_summary",
        order_summary::TABLE,
        id,
        &query,
        &headers,
    )
    .await
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
        (status = 200, description = "The shipped order", body = cairn_orders::projections::shipped_orders::ShippedOrder, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
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
    cairn_server::query::document(
        &state,
        "shipped_orders_view",
        shipped_orders::TABLE,
        id,
        &query,
        &headers,
    )
    .await
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
        (status = 200, description = "The product's stock", body = cairn_orders::projections::inventory_view::InventoryRow, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
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
    cairn_server::query::document(
        &state,
        "inventory_view",
        inventory_view::TABLE,
        id,
        &query,
        &headers,
    )
    .await
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
        (status = 200, description = "The customer", body = cairn_orders::projections::customer_view::CustomerRow, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
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
    cairn_server::query::document(
        &state,
        "customer_view",
        customer_view::TABLE,
        id,
        &query,
        &headers,
    )
    .await
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
        (status = 200, description = "A page of orders", body = docs::OrderList, headers(("X-Projection-Position" = u64, description = "The position the read model has applied"))),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 504, description = "`projection_lagging`: `min_position` not reached within `wait_ms`", body = ErrorBody),
    )
)]
pub async fn list_orders(
    State(state): State<AppState>,
    query: QueryMap,
    headers: HeaderMap,
) -> Response {
    let filters = &["status", "customer_id"];
    cairn_server::query::list(
        &state,
        "order_summary",
        order_summary::TABLE,
        filters,
        &query,
        &headers,
    )
    .await
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
        ("direction" = inline(Option<openapi::ReadDirection>), Query, description = "`forward` (default) or `backward`"),
    ),
    responses(
        (status = 200, description = "A page of the order's stream", body = streams::StreamPage),
        (status = 400, description = "`bad_request`: a malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
    )
)]
pub async fn order_events(
    State(state): State<AppState>,
    id: AggregateIdPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    cairn_server::query::events::<Order>(&state, id, query).await
}

/// An order rebuilt from its events: now, as of a version, or as of a time (temporal query).
#[utoipa::path(
    get,
    path = "/orders/{aggregate_id}/state",
    tag = "queries",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        ("version" = Option<u64>, Query, description = "The state after this version"),
        ("as_of" = inline(Option<openapi::AsOf>), Query, description = "The state after every event with a timestamp at or before this RFC 3339 time"),
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
    let (loaded, current) = cairn_server::query::load_state::<Order>(&state, &id, &query).await?;
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
    #[schema(value_type = Vec<cairn_orders::order::Line>)]
    items: &'a [cairn_orders::order::Line],
    /// Number of lines.
    item_count: usize,
    /// Sum of the lines plus corrections.
    total: cairn_orders::Money,
    /// Sum of the total corrections.
    corrections: cairn_orders::Money,
    /// Timestamp of the last event applied.
    #[schema(value_type = Option<String>, format = DateTime)]
    as_of: Option<Timestamp>,
    /// The stream's version now, for comparison.
    current_version: u64,
}
