//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::AppState;
use crate::consumers::Readiness;

/// Liveness: the process is serving HTTP.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Health))
)]
pub async fn live() -> Json<Health> {
    Json(Health::ok())
}

/// Readiness: the store is reachable and every projection and process manager started.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready; a consumer whose storage keeps failing is named in `stalled`", body = Health),
        (status = 503, description = "Not ready: the store is unreachable, or a consumer is starting or has `failed` (named in `starting` / `failed`)", body = Health),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    if let Err(e) = state.store.check_health().await {
        // The store's error (host names, SQL, paths) is for the operator's log only.
        tracing::warn!(error = %e, "readiness: the event store is unreachable");
        return not_ready("the event store is unreachable", None);
    }
    let readiness = state.consumers.readiness();
    if !readiness.is_ready() {
        return not_ready(&readiness.message(), Some(&readiness));
    }
    let mut body = Health::ok();
    if !readiness.stalled.is_empty() {
        body.message = Some(readiness.message());
        body.stalled = Some(readiness.stalled);
    }
    Json(body).into_response()
}

fn not_ready(message: &str, readiness: Option<&Readiness>) -> Response {
    let named = |names: &[String]| (!names.is_empty()).then(|| names.to_vec());
    let body = Health {
        status: "unavailable",
        error: Some("not_ready"),
        message: Some(message.to_owned()),
        stalled: readiness.and_then(|r| named(&r.stalled)),
        starting: readiness.and_then(|r| named(&r.starting)),
        failed: readiness.and_then(|r| named(&r.failed)),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The body of the health probes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` (with `error` and `message`).
    status: &'static str,
    /// `not_ready` when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// Why it is not ready, or which consumers are stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// Consumers retrying their storage (ready, but lagging).
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled: Option<Vec<String>>,
    /// Consumers still starting (not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    starting: Option<Vec<String>>,
    /// Consumers stopped for good (not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<Vec<String>>,
}

impl Health {
    /// `{"status": "ok"}`.
    fn ok() -> Self {
        Self {
            status: "ok",
            error: None,
            message: None,
            stalled: None,
            starting: None,
            failed: None,
        }
    }
}
