//! The router: every route of the contract, the JSON fallback, and panic containment.

mod admin;
mod commands;
mod health;
mod queries;
mod streams;

use std::any::Any;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::ApiError;

/// The application router with its state.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/streams/{aggregate_id}", get(streams::read_stream).post(streams::append))
        .route("/all", get(streams::read_all))
        .route("/all/subscribe", get(streams::subscribe))
        .route("/customers", post(commands::register_customer))
        .route("/customers/{aggregate_id}", get(queries::get_customer))
        .route("/customers/{aggregate_id}/email", post(commands::change_email))
        .route("/inventory/{aggregate_id}", get(queries::get_inventory))
        .route("/inventory/{aggregate_id}/restock", post(commands::restock))
        .route("/orders", post(commands::create_order).get(queries::list_orders))
        .route("/orders/{aggregate_id}", get(queries::get_order))
        .route("/orders/{aggregate_id}/items", post(commands::add_item))
        .route(
            "/orders/{aggregate_id}/items/{product_id}",
            axum::routing::delete(commands::remove_item),
        )
        .route("/orders/{aggregate_id}/confirm", post(commands::confirm))
        .route("/orders/{aggregate_id}/ship", post(commands::ship))
        .route("/orders/{aggregate_id}/cancel", post(commands::cancel))
        .route("/orders/{aggregate_id}/correct-total", post(commands::correct_total))
        .route("/orders/{aggregate_id}/events", get(queries::order_events))
        .route("/orders/{aggregate_id}/state", get(queries::order_state))
        .route("/shipped-orders/{aggregate_id}", get(queries::get_shipped_order))
        .route("/admin/projections", get(admin::projections))
        .route("/admin/projections/{name}/rebuild", post(admin::rebuild_projection))
        .route("/admin/streams/stats", get(admin::stream_stats))
        .route("/metrics", get(admin::metrics))
        .route("/admin/dlq", get(admin::dead_letters))
        .route("/admin/schemas", get(admin::schemas))
        .route("/admin/schemas/{event_type}", axum::routing::put(admin::put_schema))
        .route("/admin/dlq/{id}/retry", post(admin::retry_dead_letter))
        .route("/admin/dlq/{id}", axum::routing::delete(admin::discard_dead_letter))
        .route("/admin/process-managers/order-fulfillment", get(admin::fulfillment_instances))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A handler panic is a bug; the client still gets JSON and the server keeps serving.
#[allow(clippy::needless_pass_by_value)] // the signature is what `CatchPanicLayer` calls
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
        .into_response()
}
