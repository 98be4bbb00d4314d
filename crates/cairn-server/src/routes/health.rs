//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::consumers::Readiness;

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
        (status = 200, description = "Ready; a consumer whose storage keeps failing is named in `stalled`", body = crate::routes::openapi::Health),
        (status = 503, description = "Not ready: the store is unreachable, or a consumer is starting or has `failed` (named in `starting` / `failed`)", body = crate::routes::openapi::Health),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    if let Err(e) = state.store.check_health().await {
        return not_ready(&e.to_string(), None);
    }
    let readiness = state.consumers.readiness();
    if !readiness.is_ready() {
        return not_ready(&readiness.message(), Some(&readiness));
    }
    let mut body = json!({"status": "ok"});
    if !readiness.stalled.is_empty() {
        body["stalled"] = json!(readiness.stalled);
        body["message"] = json!(readiness.message());
    }
    Json(body).into_response()
}

fn not_ready(message: &str, readiness: Option<&Readiness>) -> Response {
    let mut body = json!({"status": "unavailable", "error": "not_ready", "message": message});
    if let Some(r) = readiness {
        for (key, names) in
            [("failed", &r.failed), ("starting", &r.starting), ("stalled", &r.stalled)]
        {
            if !names.is_empty() {
                body[key] = json!(names);
            }
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
