//! Admin requests for a consumer another process leads: forwarded to that process.
//!
//! The leader's advertised URL comes from the leader registry ([`crate::leaders`]). A
//! forwarded request carries `Cairn-Forwarded: 1`; a process that receives one and does
//! not lead the consumer either answers `409 not_leader` (with the leader's URL when it
//! knows it) instead of forwarding again, so a stale registry can never make requests go
//! round in circles.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::leaders::LeaderRegistry;

/// Marks a request one process forwarded to another (the loop guard).
pub const FORWARDED_HEADER: HeaderName = HeaderName::from_static("cairn-forwarded");
/// On a forwarded answer: the base URL of the process that carried the request out.
pub const HANDLED_BY_HEADER: HeaderName = HeaderName::from_static("cairn-handled-by");
/// Longest wait for the leader's answer before `503 leader_unreachable`. An admin action
/// is quick on its leader (a pause, a rebuild's start, a dead letter's re-run is bounded
/// by the consumer's own 2 s gate), so anything longer means the leader is unwell.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest forwarded answer read back (an admin answer is a row or a small outcome).
const FORWARDED_ANSWER_MAX_BYTES: usize = 1024 * 1024;

/// The request headers passed on to the leader: what it needs to read the request the
/// same way (credentials a proxy in front checks, the body's type, tracing).
const PASSED_ON: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("x-request-id"),
];

/// What an admin handler needs to send its own request on to the leader.
pub struct Forwarding {
    method: Method,
    /// Path and query, as received.
    path_and_query: String,
    headers: HeaderMap,
    /// The request was forwarded already: never forward it again.
    forwarded: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Forwarding {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let mut headers = HeaderMap::new();
        for name in PASSED_ON {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        Ok(Self {
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers,
            forwarded: parts.headers.contains_key(FORWARDED_HEADER),
        })
    }
}

/// The leader's answer to a forwarded request, or why there is none.
pub type Forwarded = Result<LeaderAnswer, ApiError>;

impl Forwarding {
    /// Whether this request was forwarded to this process by another one.
    pub fn was_forwarded(&self) -> bool {
        self.forwarded
    }

    /// Sends this very request to the leader of `consumer`; `refused` is this process's
    /// own answer (`409 not_leader`), given when the request cannot be forwarded.
    pub async fn to_leader(&self, state: &AppState, consumer: &str, refused: ApiError) -> Response {
        self.send(state, consumer, self.method.clone(), &self.path_and_query, refused)
            .await
            .map_or_else(IntoResponse::into_response, IntoResponse::into_response)
    }

    /// Sends `method path` (with this request's headers, no body) to the leader of
    /// `consumer`: `Err(refused)` with its URL added when there is no one to send it to,
    /// `Err(503 leader_unreachable)` when it does not answer in time.
    pub async fn send(
        &self,
        state: &AppState,
        consumer: &str,
        method: Method,
        path: &str,
        refused: ApiError,
    ) -> Forwarded {
        let own = state.leaders.advertise_url();
        // A row naming this very process is stale (it no longer leads): no one to ask.
        let url = LeaderRegistry::lookup(&state.readmodels, consumer)
            .await
            .and_then(|r| r.url)
            .filter(|url| Some(url.as_str()) != own);
        let url = match url {
            Some(url) if !self.forwarded => url,
            known => return Err(refused.with("leader", known.map_or(Value::Null, Value::from))),
        };
        let mut request = state
            .leaders
            .client()
            .request(method, format!("{url}{path}"))
            .timeout(FORWARD_TIMEOUT)
            .header(FORWARDED_HEADER, "1");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            tracing::warn!(consumer, leader = %url, error = %e, "cannot forward an admin request to the leader");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_unreachable",
                format!(
                    "{consumer} is led by the process at {url}, which did not answer within {} s: {e}",
                    FORWARD_TIMEOUT.as_secs()
                ),
            )
            .with("leader", url.clone())
        };
        let answer = request.send().await.map_err(|e| unreachable(&e))?;
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        if answer.content_length().is_some_and(|n| n > FORWARDED_ANSWER_MAX_BYTES as u64) {
            return Err(unreachable(&"its answer is too large"));
        }
        let body = answer.bytes().await.map_err(|e| unreachable(&e))?;
        Ok(LeaderAnswer { status, content_type, body, url })
    }
}

/// What the leader answered to a forwarded request.
pub struct LeaderAnswer {
    /// Its status.
    pub status: StatusCode,
    content_type: Option<HeaderValue>,
    /// Its body.
    pub body: axum::body::Bytes,
    /// The leader's advertised URL.
    pub url: String,
}

impl IntoResponse for LeaderAnswer {
    /// The leader's answer as it came, with `Cairn-Handled-By: <its URL>`.
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        if let Some(content_type) = self.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        if let Ok(handled_by) = HeaderValue::from_str(&self.url) {
            response.headers_mut().insert(HANDLED_BY_HEADER, handled_by);
        }
        response
    }
}

/// `name` as one path segment (a partition's name holds a `#`).
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '#' => out.push_str("%23"),
            '/' => out.push_str("%2F"),
            '?' => out.push_str("%3F"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn a_partition_name_is_one_path_segment() {
        assert_eq!(path_segment("tallies#p2of4"), "tallies%23p2of4");
        assert_eq!(path_segment("a/b?c d%"), "a%2Fb%3Fc%20d%25");
        assert_eq!(path_segment("order-fulfillment"), "order-fulfillment");
    }
}
