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
/// A `Content-Length` over the limit is refused before a byte of the body is read.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.body_limit_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        let body = http_body_util::Limited::new(req.into_body(), limit);
        let bytes = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::payload_too_large(limit));
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!("could not read the request body: {e}")));
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; a JSON object was expected",
            ));
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
    /// An optional non-negative integer parameter.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter {name} must be a non-negative integer, got {v:?}"
                ))
            }),
        }
    }

    /// An optional string parameter (empty = absent).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
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
