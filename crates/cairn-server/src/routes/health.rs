//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// Liveness: the process is serving HTTP.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = crate::routes::openapi::Health))
)]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the store is reachable and every projection and process manager started.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = crate::routes::openapi::Health),
        (status = 503, description = "Not ready: the store is unreachable, or a consumer is starting or has failed", body = crate::routes::openapi::Health),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let checked = match state.store.check_health().await {
        Ok(()) => state.domain.ready(),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "not_ready", "message": e})),
        )
            .into_response(),
    }
}
