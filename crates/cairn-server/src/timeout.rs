//! The request deadline: a request whose body read and handling together take longer than
//! [`crate::HttpConfig::request_timeout_secs`] gets `408 request_timeout`.
//!
//! The deadline covers the handler's future, and the body is read inside it, so a client
//! that trickles its body is cut off too (the header read has its own deadline, in the
//! accept loop). A streaming response (the SSE subscription) is exempt once its headers
//! are out: the handler has returned by then, and what follows is the body's stream.
//!
//! It lives in the router rather than in `cairn serve`'s accept loop so that an
//! application serving [`crate::RunningServer::router`] its own way gets it too.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Default request deadline, in seconds: past the longest read-your-writes wait
/// (`wait_ms` up to 30 s, answered `504 projection_lagging`) and PostgreSQL's append lock
/// wait (30 s, `503`), so that those keep their own, more telling answers.
pub const REQUEST_TIMEOUT_SECS_DEFAULT: u64 = 40;

/// The middleware: the request's handling under `deadline` (`None`: no deadline).
pub async fn layer(
    State(deadline): State<Option<Duration>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(deadline) = deadline else { return next.run(request).await };
    if let Ok(response) = tokio::time::timeout(deadline, next.run(request)).await {
        return response;
    }
    tracing::info!(
        request_id = crate::request_id::current().as_deref().unwrap_or("-"),
        deadline_secs = deadline.as_secs(),
        "request timed out"
    );
    ApiError::request_timeout(deadline).into_response()
}

/// The deadline of `secs` seconds; `0` turns it off.
#[must_use]
pub fn deadline(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}
