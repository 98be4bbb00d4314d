//! The server's own routes (store API, admin, health, OpenAPI), the router assembled from
//! them and the modules' routes, the JSON fallback, and panic containment.

mod admin;
mod forward;
mod health;
mod lifecycle;
pub mod openapi;
pub mod streams;

use std::any::Any;

use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::auth::routes as tokens;
use crate::error::ApiError;
use crate::module::{Permission, Route};

/// Declares every route of the server itself (store API, admin, health, OpenAPI) exactly
/// once, with its permission and its handler, whose `#[utoipa::path]` documents it. Modules
/// add theirs; [`crate::server`] builds the router from both, `RunningServer::routes` lists
/// them, and [`openapi::ApiDoc`] documents the same handlers ([`CorePaths`]), so that a
/// route and its documentation cannot part.
macro_rules! route_table {
    ($($method:ident $path:literal => $module:ident :: $handler:ident, $permission:ident);+ $(;)?) => {
        /// The server's own routes as `(method, path, permission)`, the method in lower
        /// case as OpenAPI writes it, the path in axum's syntax (`{param}`, OpenAPI's too).
        pub const CORE_ROUTES: &[(&str, &str, Permission)] =
            &[$((stringify!($method), $path, Permission::$permission)),+];

        /// The server's own routes, to be served beside the modules' ones.
        pub(crate) fn core_routes() -> Vec<Route> {
            vec![$(Route::new(
                axum::http::Method::from_bytes(stringify!($method).to_uppercase().as_bytes())
                    .expect("an HTTP method"),
                $path,
                $module::$handler,
                Permission::$permission,
            )),+]
        }

        /// The documentation of [`CORE_ROUTES`]: their handlers' `#[utoipa::path]`s, with
        /// the schemas they name.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($module::$handler),+))]
        pub struct CorePaths;
    };
}

route_table! {
    post "/streams/{aggregate_id}" => streams::append, Append;
    get "/streams/{aggregate_id}" => streams::read_stream, Read;
    delete "/streams/{aggregate_id}" => lifecycle::delete_stream, Append;
    get "/streams/{aggregate_id}/metadata" => lifecycle::get_metadata, Read;
    put "/streams/{aggregate_id}/metadata" => lifecycle::put_metadata, Append;
    post "/streams/{aggregate_id}/truncate" => lifecycle::truncate, Append;
    post "/admin/scavenge" => lifecycle::scavenge, Admin;
    delete "/admin/subjects/{subject}" => lifecycle::erase_subject, Admin;
    get "/all" => streams::read_all, Read;
    get "/all/subscribe" => streams::subscribe, Read;
    get "/admin/projections" => admin::projections, Admin;
    post "/admin/projections/{name}/rebuild" => admin::rebuild_projection, Admin;
    post "/admin/projections/{name}/pause" => admin::pause_projection, Admin;
    post "/admin/projections/{name}/resume" => admin::resume_projection, Admin;
    get "/admin/streams/stats" => admin::stream_stats, Admin;
    get "/metrics" => admin::metrics, Read;
    get "/admin/dlq" => admin::dead_letters, Admin;
    get "/admin/schemas" => admin::schemas, Admin;
    put "/admin/schemas/{event_type}" => admin::put_schema, Admin;
    post "/admin/dlq/{id}/retry" => admin::retry_dead_letter, Admin;
    delete "/admin/dlq/{id}" => admin::discard_dead_letter, Admin;
    get "/admin/process-managers/{name}" => admin::process_manager_instances, Admin;
    get "/admin/process-managers/{name}/state" => admin::process_state, Admin;
    post "/admin/process-managers/{name}/state" => admin::import_process_state, Admin;
    post "/admin/tokens" => tokens::create_token, Admin;
    get "/admin/tokens" => tokens::list_tokens, Admin;
    delete "/admin/tokens/{id}" => tokens::revoke_token, Admin;
    get "/health/live" => health::live, Public;
    get "/health/ready" => health::ready, Public;
    get "/openapi.json" => openapi::serve, Public;
}

/// Serves `routes` with the JSON fallbacks and panic containment: the one place a router
/// is assembled, so no route can escape [`crate::server::RunningServer::routes`].
pub(crate) fn router(routes: Vec<Route>, state: AppState) -> Router {
    let mut app = empty();
    for route in routes {
        // The permission travels with the request, and is checked against the caller's
        // token (#16) before the handler runs.
        // Build refuses a route without a handler (a method axum cannot route).
        let Some(handler) = route.handler else { continue };
        let check = axum::middleware::from_fn_with_state(
            (state.clone(), route.permission),
            crate::auth::middleware::require,
        );
        // The caller is checked before the body is read for the idempotency fingerprint.
        let handler = handler
            .layer(axum::middleware::from_fn_with_state(state.clone(), crate::command::digest_body))
            .route_layer(check)
            .layer(Extension(route.permission));
        app = add(app, route.path, handler);
    }
    let deadline = crate::timeout::deadline(state.config.request_timeout_secs);
    app.fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
        // Inside the request id's scope: the `408` body carries the id like any error.
        .layer(axum::middleware::from_fn_with_state(deadline, crate::timeout::layer))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
}

/// The rows of `GET /admin/projections`, as JSON values.
pub(crate) async fn admin_rows(state: &AppState) -> Vec<serde_json::Value> {
    let axum::Json(rows) = admin::projections(axum::extract::State(state.clone())).await;
    rows.iter().filter_map(|row| serde_json::to_value(row).ok()).collect()
}

/// A router without routes.
pub(crate) fn empty<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}

/// `app` with `handler` on `path`: the only place a path enters a router (the build check
/// adds the same paths through it, so it refuses exactly what this would panic on).
pub(crate) fn add<S: Clone + Send + Sync + 'static>(
    app: Router<S>,
    path: &str,
    handler: MethodRouter<S>,
) -> Router<S> {
    app.route(path, handler)
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
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}
