//! Calls into the server's own API router as the session's caller: the console acts
//! exactly as the API would for that token (its permission check, forwarding to the
//! leading process, the JSON errors), without a network hop.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::Console;
use crate::session::Viewer;

/// Largest API answer the console reads (a page of dead letters, a stream page).
const ANSWER_BYTES_MAX: usize = 32 * 1024 * 1024;

/// An API answer: its status and its JSON body (`Value::Null` when it had none).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The error's message, as the API words it (contract §7's `message`).
    pub fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| format!("the API answered {}", self.status), str::to_owned)
    }
}

/// `method path_and_query` on the API, with `body` as JSON, as `viewer`.
pub async fn call(
    console: &Console,
    viewer: &Viewer,
    method: Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path_and_query);
    if let Some(token) = &viewer.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let Ok(request) = request.body(body) else {
        return Answer {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({"message": format!("not a valid request: {path_and_query}")}),
        };
    };
    let Ok(response) = console.api.clone().oneshot(request).await;
    let status = response.status();
    let bytes = match http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Answer {
                status: StatusCode::BAD_GATEWAY,
                body: serde_json::json!({"message": format!("the API's answer could not be read: {e}")}),
            };
        }
    };
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, body }
}

/// `GET path_and_query` as `viewer`.
pub async fn get(console: &Console, viewer: &Viewer, path_and_query: &str) -> Answer {
    call(console, viewer, Method::GET, path_and_query, None).await
}

/// The raw response of `GET path_and_query` (a stream of Server-Sent Events).
pub async fn stream(
    console: &Console,
    viewer: &Viewer,
    path_and_query: &str,
) -> axum::response::Response {
    let mut request = Request::builder().method(Method::GET).uri(path_and_query);
    if let Some(token) = &viewer.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let Ok(request) = request.body(Body::empty()) else {
        return crate::render::error(StatusCode::BAD_REQUEST, "not a valid filter");
    };
    let Ok(response) = console.api.clone().oneshot(request).await;
    response
}
