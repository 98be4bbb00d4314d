//! A request id on every request: in the `X-Request-Id` response header, in every error
//! body (`request_id`), and on every log line written while serving it, so that an
//! operator finds the internal detail a 5xx body leaves out.
//!
//! An incoming `X-Request-Id` is kept when it is sane (what a proxy or a client tracing
//! a call would send: [`REQUEST_ID_MAX_LEN`] visible characters at most, no spaces), so
//! one id follows a call across hops; anything else is replaced by a fresh UUID v7.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The header carrying the id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest incoming id kept.
pub const REQUEST_ID_MAX_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, if any (outside a request: `None`).
#[must_use]
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

fn sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// The middleware: picks the id, serves the request under it, echoes it.
pub async fn layer(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request).instrument(span)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::sane;

    #[test]
    fn only_short_visible_ids_are_kept() {
        assert!(sane("0192f0c4-1c2b-7cc3-9d5e-5a1b2c3d4e5f"));
        assert!(sane("gw:abc/1"));
        assert!(!sane(""));
        assert!(!sane("a b"));
        assert!(!sane("a\u{7f}"));
        assert!(!sane(&"a".repeat(129)));
    }
}
