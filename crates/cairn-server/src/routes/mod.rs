//! The router: every route of the contract, the JSON fallback, and panic containment.

mod admin;
mod commands;
mod health;
pub mod openapi;
mod queries;
mod streams;

use std::any::Any;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::ApiError;

/// Declares every route exactly once. The router is built from this list and [`ROUTES`]
/// exposes it, so that a test can hold the OpenAPI document to the router: a route added
/// here without a `#[utoipa::path]` of the same method and path fails that test.
macro_rules! route_table {
    ($($method:ident $path:literal => $handler:path),+ $(,)?) => {
        /// Every route of the router as `(method, path)`, the method in lower case as
        /// OpenAPI writes it, the path in axum's syntax (`{param}`, which is OpenAPI's too).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),+];

        /// Adds every route of [`ROUTES`]; axum merges the methods of one path.
        fn with_routes(router: Router<AppState>) -> Router<AppState> {
            router$(.route($path, axum::routing::$method($handler)))+
        }
    };
}

route_table! {
    post "/streams/{aggregate_id}" => streams::append,
    get "/streams/{aggregate_id}" => streams::read_stream,
    get "/all" => streams::read_all,
    get "/all/subscribe" => streams::subscribe,
    post "/customers" => commands::register_customer,
    get "/customers/{aggregate_id}" => queries::get_customer,
    post "/customers/{aggregate_id}/email" => commands::change_email,
    get "/inventory/{aggregate_id}" => queries::get_inventory,
    post "/inventory/{aggregate_id}/restock" => commands::restock,
    post "/orders" => commands::create_order,
    get "/orders" => queries::list_orders,
    get "/orders/{aggregate_id}" => queries::get_order,
    post "/orders/{aggregate_id}/items" => commands::add_item,
    delete "/orders/{aggregate_id}/items/{product_id}" => commands::remove_item,
    post "/orders/{aggregate_id}/confirm" => commands::confirm,
    post "/orders/{aggregate_id}/ship" => commands::ship,
    post "/orders/{aggregate_id}/cancel" => commands::cancel,
    post "/orders/{aggregate_id}/correct-total" => commands::correct_total,
    get "/orders/{aggregate_id}/events" => queries::order_events,
    get "/orders/{aggregate_id}/state" => queries::order_state,
    get "/shipped-orders/{aggregate_id}" => queries::get_shipped_order,
    get "/admin/projections" => admin::projections,
    post "/admin/projections/{name}/rebuild" => admin::rebuild_projection,
    post "/admin/projections/{name}/pause" => admin::pause_projection,
    post "/admin/projections/{name}/resume" => admin::resume_projection,
    get "/admin/streams/stats" => admin::stream_stats,
    get "/metrics" => admin::metrics,
    get "/admin/dlq" => admin::dead_letters,
    get "/admin/schemas" => admin::schemas,
    put "/admin/schemas/{event_type}" => admin::put_schema,
    post "/admin/dlq/{id}/retry" => admin::retry_dead_letter,
    delete "/admin/dlq/{id}" => admin::discard_dead_letter,
    get "/admin/process-managers/{name}" => admin::process_manager_instances,
    get "/admin/process-managers/{name}/state" => admin::process_state,
    post "/admin/process-managers/{name}/state" => admin::import_process_state,
    get "/health/live" => health::live,
    get "/health/ready" => health::ready,
    get "/openapi.json" => openapi::serve,
}

/// The application router with its state.
pub fn router(state: AppState) -> Router {
    with_routes(Router::new())
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
