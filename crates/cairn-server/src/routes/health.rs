//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// `GET /health/live`: the process is serving HTTP.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /health/ready`: the store can serve reads and take writes.
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
