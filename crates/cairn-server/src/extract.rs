//! Request extractors whose every rejection is a contract-shaped JSON error.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// A JSON body, read under the configured size limit.
///
/// An oversized body (by `Content-Length`, or found while reading a chunked one) is never
/// parsed; it is read and thrown away up to [`DRAIN_BYTES_MAX`] (for at most
/// [`DRAIN_TIME_MAX`]) before the `413` goes out, because closing a connection with unread
/// bytes makes the kernel send a reset, and the client would see a broken connection
/// instead of the error.
pub struct JsonBody<T>(pub T);

/// Most bytes of an oversized body read (and dropped) before answering `413`.
pub const DRAIN_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Longest time spent draining an oversized body.
pub const DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.body_limit_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut over = declared.is_some_and(|n| n > limit as u64);
        if over && declared.is_some_and(|n| n > DRAIN_BYTES_MAX) {
            return Err(ApiError::payload_too_large(limit));
        }
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        let mut seen: u64 = 0;
        let deadline = tokio::time::Instant::now() + DRAIN_TIME_MAX;
        loop {
            let frame = if over {
                match tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut body))
                    .await
                {
                    Ok(f) => f,
                    Err(_) => break,
                }
            } else {
                http_body_util::BodyExt::frame(&mut body).await
            };
            let Some(frame) = frame else { break };
            let frame = match frame {
                Ok(f) => f,
                Err(_) if over => break,
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "could not read the request body: {e}"
                    )));
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            seen += data.len() as u64;
            if !over && bytes.len() + data.len() > limit {
                over = true;
                bytes = Vec::new();
            }
            if over {
                if seen > DRAIN_BYTES_MAX {
                    break;
                }
            } else {
                bytes.extend_from_slice(&data);
            }
        }
        if over {
            return Err(ApiError::payload_too_large(limit));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; a JSON object was expected",
            ));
        }
        if crate::json_depth::exceeds(&bytes, crate::json_depth::JSON_DEPTH_MAX) {
            return Err(ApiError::json_too_deep());
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Query-string parameters as plain strings, checked by the handler.
pub struct QueryMap(pub HashMap<String, String>);

impl FromRequestParts<AppState> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| QueryMap(q.0.into_iter().collect()))
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
    }
}

impl QueryMap {
    /// An optional non-negative integer parameter. Digits only (an empty value, a sign or
    /// a fraction is a 400); values too large for 64 bits saturate, so a huge `limit` is
    /// simply clamped like any limit above the maximum.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Some(v.parse::<u64>().unwrap_or(u64::MAX)))
            }
            Some(v) => Err(ApiError::bad_request(format!(
                "query parameter {name} must be a non-negative integer, got {v:?}"
            ))),
        }
    }

    /// An optional string parameter (empty = absent).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// An optional parameter as sent, empty included (for values that must not be empty,
    /// such as a page cursor: `after=` is malformed, not absent).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The `{aggregate_id}` path segment, checked against the id rules.
pub struct AggregateIdPath(pub String);

impl FromRequestParts<AppState> for AggregateIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))?;
        cairn_core::id::validate_aggregate_id(&id)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(AggregateIdPath(id))
    }
}

/// The `{aggregate_id}` of the store API's append and read: a stream id, or a metadata
/// stream's `$$<id>` (contract §2, "Stream lifecycle": an import replays its `$metadata`
/// events, and a reader may page its history).
pub struct StreamIdPath(pub String);

impl FromRequestParts<AppState> for StreamIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))?;
        cairn_core::id::validate_aggregate_id(id.strip_prefix("$$").unwrap_or(&id))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(StreamIdPath(id))
    }
}

/// The headers that shape a command (contract §3).
pub struct CommandHeaders {
    /// `If-Match: <version>` (quotes and a weak `W/` prefix are tolerated).
    pub if_match: Option<u64>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `X-Correlation-Id`.
    pub correlation_id: Option<String>,
    /// `X-User-Id`.
    pub user_id: Option<String>,
    /// The request's method.
    pub method: axum::http::Method,
    /// SHA-256 (hex) of the body as canonical JSON, when the request carries an
    /// `Idempotency-Key` (set by [`crate::command::digest_body`]).
    pub body_digest: Option<String>,
}

/// Longest accepted header value for ids and keys.
const HEADER_ID_MAX_LEN: usize = 200;

fn header_text(parts: &Parts, name: &str) -> Result<Option<String>, ApiError> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} must be visible ASCII")))?
                .trim();
            if text.is_empty() || text.len() > HEADER_ID_MAX_LEN {
                return Err(ApiError::bad_request(format!(
                    "header {name} must have 1 to {HEADER_ID_MAX_LEN} characters"
                )));
            }
            Ok(Some(text.to_owned()))
        }
    }
}

impl FromRequestParts<AppState> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let if_match = header_text(parts, "if-match")?
            .map(|v| {
                let bare = v.trim_start_matches("W/").trim_matches('"');
                bare.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "If-Match must be the aggregate's version (an integer), got {v:?}"
                    ))
                })
            })
            .transpose()?;
        Ok(CommandHeaders {
            if_match,
            idempotency_key: header_text(parts, "idempotency-key")?,
            correlation_id: header_text(parts, "x-correlation-id")?,
            user_id: header_text(parts, "x-user-id")?,
            method: parts.method.clone(),
            body_digest: parts.extensions.get::<crate::command::BodyDigest>().map(|d| d.0.clone()),
        })
    }
}

/// A path segment that names an aggregate id, by position (for routes with two ids).
pub fn check_id(id: &str) -> Result<(), ApiError> {
    cairn_core::id::validate_aggregate_id(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The id of an aggregate a command creates: the client's, checked like a path id, or
/// `<prefix>-<uuid v7>` minted here (time-ordered, so new ids sort last).
pub fn id_or_mint(given: Option<String>, prefix: &str) -> Result<String, ApiError> {
    match given {
        Some(id) => {
            check_id(&id)?;
            Ok(id)
        }
        None => Ok(format!("{prefix}-{}", uuid::Uuid::now_v7())),
    }
}
