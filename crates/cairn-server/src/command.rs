//! Running a command over HTTP, for module handlers: the contract's command headers
//! (`If-Match`, `Idempotency-Key`, `X-Correlation-Id`, `X-User-Id`) applied, the outcome
//! answered as `{aggregate_id, version, position}`, errors in the contract's shape, and
//! `cairn_commands_total` / `cairn_command_duration_seconds` recorded.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::IdempotencyKey;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::{Aggregate, CommandMetadata, CommandOptions, Existence};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::CommandHeaders;

/// Runs `command` on aggregate `id` of type `A`. Answers `201` when the command creates
/// the aggregate ([`Existence::MustNotExist`]), `200` otherwise. `name` labels the
/// command metrics (e.g. `ship_order`).
pub async fn run<A: Aggregate>(
    state: &AppState,
    name: &'static str,
    id: &str,
    command: A::Command,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    // A creating command is decided on the default state whenever it runs: one that this
    // state refuses is refused before its key is looked up, so a key never makes a request
    // that is invalid on its own look accepted.
    if headers.idempotency_key.is_some()
        && A::existence(&command) == Existence::MustNotExist
        && let Err(refused) = A::default().handle(&command)
    {
        let error = ApiError::from(cairn_cqrs::CommandError::from(refused));
        crate::metrics::command_done(name, "refused", started);
        return Err(error);
    }
    let result = execute::<A>(state, name, id, command, headers).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.status().is_client_error() => "refused",
        Err(_) => "error",
    };
    crate::metrics::command_done(name, outcome, started);
    result
}

/// [`run`] without the metrics.
pub async fn execute<A: Aggregate>(
    state: &AppState,
    name: &'static str,
    id: &str,
    command: A::Command,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    let status = match A::existence(&command) {
        Existence::MustNotExist => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    // A key names one command on one aggregate: the same key sent to another route or
    // another aggregate, or by another caller, is a new command, never a replay of the
    // first one's outcome. A creating command's id may be minted afresh on each retry, so
    // the caller and the route alone scope it (an id the client names in the body is
    // covered by the fingerprint).
    let aggregate = match A::existence(&command) {
        Existence::MustNotExist => None,
        _ => Some(id),
    };
    // The route is named by its command name (`ship_order`): one per route, and stable
    // when a path is renamed.
    let route = name;
    let command_id = uuid::Uuid::now_v7().to_string();
    let metadata = CommandMetadata {
        correlation_id: Some(headers.correlation_id.unwrap_or_else(|| command_id.clone())),
        causation_id: Some(command_id),
        user_id: headers.user_id,
    };
    let ttl_us = i64::try_from(state.config.idempotency_ttl_secs.saturating_mul(1_000_000))
        .unwrap_or(i64::MAX);
    let idempotency = headers.idempotency_key.as_deref().map(|client_key| IdempotencyKey {
        key: idempotency_scope(&metadata, route, aggregate, client_key),
        fingerprint: Some(fingerprint(
            headers.method.as_str(),
            route,
            aggregate,
            headers.body_digest.as_deref(),
        )),
        expires_at: Some(Timestamp::from_micros(
            Timestamp::now().as_micros().saturating_add(ttl_us),
        )),
    });
    let options = CommandOptions { expected_version: headers.if_match, idempotency, metadata };
    let outcome = state.repository.execute::<A>(id, &command, &options).await?;
    let body = json!({
        "aggregate_id": outcome.aggregate_id,
        "version": outcome.version,
        "position": outcome.position,
    });
    Ok((status, Json(body)).into_response())
}

/// Prefix of every key the HTTP edge stores, so that HTTP keys can never collide with
/// process managers' derived keys (`<manager>:<event id>:<step>`).
pub const HTTP_KEY_PREFIX: &str = "http:";

/// The stored key of a client's `Idempotency-Key`: `http:` + SHA-256 of (caller, route
/// template, aggregate id or none, client key). The caller is `X-User-Id` until
/// authentication sets it; this is the one place that decides who the caller is.
#[must_use]
pub fn idempotency_scope(
    metadata: &CommandMetadata,
    route: &str,
    aggregate_id: Option<&str>,
    client_key: &str,
) -> String {
    let caller = metadata.user_id.as_deref().unwrap_or("anonymous");
    format!("{HTTP_KEY_PREFIX}{}", digest(&[caller, route, aggregate_id.unwrap_or(""), client_key]))
}

/// What the request looked like: SHA-256 of (method, route template, aggregate id or
/// none, the body's canonical-JSON digest). The same key with another fingerprint is
/// refused `422 idempotency_key_reused`.
#[must_use]
pub fn fingerprint(
    method: &str,
    route: &str,
    aggregate_id: Option<&str>,
    body_digest: Option<&str>,
) -> String {
    digest(&[method, route, aggregate_id.unwrap_or(""), body_digest.unwrap_or("")])
}

/// SHA-256 (hex) of the parts, each length-prefixed so that no two lists share a digest.
fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The body digest a keyed request carries to its handler.
#[derive(Debug, Clone)]
pub struct BodyDigest(pub String);

/// Middleware on every route: a request with an `Idempotency-Key` has its body read
/// (under the body limit) and digested as canonical JSON — object keys sorted, no
/// whitespace — so that a retry re-serialised by another client library still matches;
/// a body that is not JSON is digested as its bytes. Requests without a key pass untouched.
pub async fn digest_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.headers().contains_key("idempotency-key") {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let limit = state.config.body_limit_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return ApiError::payload_too_large(limit).into_response();
    };
    let canonical = match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => {
            let mut out = String::with_capacity(bytes.len());
            canonical_json(&value, &mut out);
            out.into_bytes()
        }
        Err(_) => bytes.to_vec(),
    };
    parts.extensions.insert(BodyDigest(hex(&Sha256::digest(&canonical))));
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// Writes `value` with object keys sorted and no whitespace.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let (mut a, mut b) = (String::new(), String::new());
        canonical_json(
            &serde_json::from_str(r#"{"b": [1, {"y":1,"x":2}], "a": "q"}"#).unwrap(),
            &mut a,
        );
        canonical_json(
            &serde_json::from_str(r#"{"a":"q","b":[1,{"x":2,"y":1}]}"#).unwrap(),
            &mut b,
        );
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":"q","b":[1,{"x":2,"y":1}]}"#);
    }

    #[test]
    fn scopes_differ_by_caller_route_aggregate_and_key() {
        let anon = CommandMetadata::default();
        let alice = CommandMetadata { user_id: Some("alice".into()), ..CommandMetadata::default() };
        let base = idempotency_scope(&anon, "/o/{id}/ship", Some("o1"), "k");
        assert!(base.starts_with(HTTP_KEY_PREFIX));
        for other in [
            idempotency_scope(&alice, "/o/{id}/ship", Some("o1"), "k"),
            idempotency_scope(&anon, "/o/{id}/cancel", Some("o1"), "k"),
            idempotency_scope(&anon, "/o/{id}/ship", Some("o2"), "k"),
            idempotency_scope(&anon, "/o/{id}/ship", None, "k"),
            idempotency_scope(&anon, "/o/{id}/ship", Some("o1"), "k2"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, idempotency_scope(&anon, "/o/{id}/ship", Some("o1"), "k"));
    }
}
