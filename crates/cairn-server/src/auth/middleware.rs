//! The one check every route passes through: its [`Permission`] against the caller's
//! token. Public routes and a server without auth let everyone in.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{BOOTSTRAP_ID, Caller, Role, TokenHash};
use crate::AppState;
use crate::error::ApiError;
use crate::module::Permission;

/// The header whose value a gateway may set (and nobody else).
const USER_ID_HEADER: &str = "x-user-id";
/// Longest `X-User-Id` (that of every id header, `extract.rs`).
const USER_ID_MAX_LEN: usize = 200;

/// `401 unauthorized`, with the challenge RFC 6750 asks for.
fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `403 forbidden`.
pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The token of `Authorization: Bearer <token>`, if the header has that shape.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The caller holding `token`; `None` for an unknown or revoked token. Every protocol
/// authenticates through it (HTTP's middleware, gRPC's interceptor).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Option<Caller>, ApiError> {
    let hash = TokenHash::of(token);
    if state.config.auth.bootstrap_admin.as_ref().is_some_and(|b| b.matches(&hash)) {
        return Ok(Some(Caller {
            id: BOOTSTRAP_ID.to_owned(),
            name: BOOTSTRAP_ID.to_owned(),
            role: Role::Admin,
            prefixes: Vec::new(),
        }));
    }
    let readmodels = Arc::clone(&state.readmodels);
    let hex = hash.hex();
    // Looked up by hash: the database compares hashes, never the secret itself.
    let stored = tokio::task::spawn_blocking(move || readmodels.token_by_hash(&hex))
        .await
        .map_err(ApiError::internal)??;
    Ok(stored.filter(|t| t.revoked_at.is_none()).and_then(|t| {
        Some(Caller { role: Role::parse(&t.role)?, id: t.id, name: t.name, prefixes: t.prefixes })
    }))
}

/// Lets the request through if its token's role allows `permission`: `401` without a
/// (valid) token, `403` with one whose role does not. The caller's token name becomes
/// `X-User-Id` (so `metadata.user_id` of its commands) unless it is a gateway that sent
/// one; the [`Caller`] travels on as a request extension.
pub(crate) async fn require(
    State((state, permission)): State<(AppState, Permission)>,
    request: Request,
    next: Next,
) -> Response {
    if permission == Permission::Public || !state.config.auth.required {
        return next.run(request).await;
    }
    let Some(token) = bearer(&request) else {
        return unauthorized("this route needs an `Authorization: Bearer <token>` header");
    };
    let caller = match authenticate(&state, token).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return unauthorized("unknown or revoked token"),
        Err(e) => return e.into_response(),
    };
    if !caller.role.allows(permission) {
        return forbidden(format!(
            "the {} role of token {:?} cannot call this route (it needs {})",
            caller.role,
            caller.name,
            permission_name(permission)
        ))
        .into_response();
    }
    let (mut parts, body) = request.into_parts();
    if permission == Permission::Write
        && let Some(claimed) = parts.headers.get(USER_ID_HEADER)
    {
        // Replaced below unless a gateway sent it, but malformed it is a 400 for anyone,
        // as it was before tokens (contract §3).
        let text = claimed.to_str().map_or("", str::trim);
        if text.is_empty() || text.len() > USER_ID_MAX_LEN {
            return ApiError::bad_request(format!(
                "header X-User-Id must have 1 to {USER_ID_MAX_LEN} visible characters"
            ))
            .into_response();
        }
    }
    if permission == Permission::Append {
        let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
        let stream = params.as_ref().and_then(|p| p.iter().find(|(k, _)| *k == "aggregate_id"));
        if let Some((_, stream)) = stream
            && !caller.may_append_to(stream)
        {
            return forbidden(format!(
                "token {:?} may append only to streams starting with {}",
                caller.name,
                caller.prefixes.join(", ")
            ))
            .into_response();
        }
    }
    if caller.role != Role::Gateway || !parts.headers.contains_key(USER_ID_HEADER) {
        // A token name is a valid header value (checked when the token is created).
        match HeaderValue::from_str(&caller.name) {
            Ok(name) => {
                parts.headers.insert(USER_ID_HEADER, name);
            }
            Err(_) => {
                parts.headers.remove(USER_ID_HEADER);
            }
        }
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Public => "no token",
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::Append => "append",
        Permission::Admin => "admin",
    }
}

/// A raw append to a stream whose aggregate type a module registered is the admin's only:
/// such events bypass the aggregate's rules (a forged `OrderPaid`), so only an operator
/// repairing or importing history may write them.
pub fn check_raw_append(
    caller: Option<&Caller>,
    state: &AppState,
    aggregate_type: &str,
) -> Result<(), ApiError> {
    match caller {
        Some(c) if c.role != Role::Admin && state.aggregate(aggregate_type).is_some() => {
            Err(forbidden(format!(
                "aggregate type {aggregate_type} belongs to a registered module: raw appends to \
                 its streams need an admin token (send a command instead)"
            )))
        }
        _ => Ok(()),
    }
}
