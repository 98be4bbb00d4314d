//! `/admin/tokens` (contract §5): create, list and revoke API tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::readmodel::{ReadModelError, StoredToken};
use cairn_core::timestamp::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Role, TOKEN_PREFIXES_MAX, TokenHash, new_token, valid_name};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::openapi::ErrorBody;

/// The body of `POST /admin/tokens`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who holds it; becomes `metadata.user_id` of its commands.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,64}$", min_length = 1, max_length = 64)]
    name: String,
    /// What it may do.
    role: Role,
    /// The stream-id prefixes its raw appends are limited to (absent or empty: any); only
    /// `appender` and `admin` tokens append at all.
    #[serde(default)]
    #[schema(max_items = 32)]
    prefixes: Vec<String>,
}

/// A token as listed: everything but the secret, which is never stored.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Its id (to revoke it).
    id: String,
    /// Its name.
    name: String,
    /// Its role.
    role: String,
    /// The stream-id prefixes it may append to (empty: any).
    prefixes: Vec<String>,
    /// When it was created (RFC 3339).
    created_at: String,
    /// When it was revoked (RFC 3339); `null` while it is valid.
    revoked_at: Option<String>,
}

impl From<StoredToken> for TokenInfo {
    fn from(t: StoredToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role,
            prefixes: t.prefixes,
            created_at: t.created_at.to_rfc3339(),
            revoked_at: t.revoked_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// The answer to `POST /admin/tokens`: the token itself, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The token (`cairn_…`): send it as `Authorization: Bearer <token>`. Only its hash is
    /// kept; it cannot be shown again.
    token: String,
    /// The token as listed.
    #[serde(flatten)]
    info: TokenInfo,
}

/// The answer to `GET /admin/tokens`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Every token, revoked ones too, oldest first.
    tokens: Vec<TokenInfo>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReadModelError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?.map_err(ApiError::from)
}

fn check(body: &NewToken) -> Result<(), ApiError> {
    if !valid_name(&body.name) {
        return Err(ApiError::bad_request(
            "name must be 1 to 64 of the characters A-Z a-z 0-9 . _ : @ -",
        ));
    }
    if body.prefixes.len() > TOKEN_PREFIXES_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {TOKEN_PREFIXES_MAX} prefixes per token"
        )));
    }
    Ok(())
}

/// Creates an API token.
///
/// The answer holds the token itself, shown this once: only its SHA-256 is stored.
#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "admin",
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = CreatedToken),
        (status = 400, description = "`bad_request`: a malformed name, role or prefix", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    check(&body)?;
    let token = new_token().map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let stored = StoredToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: body.name,
        role: body.role.as_str().to_owned(),
        prefixes: body.prefixes,
        hash: TokenHash::of(&token).hex(),
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    let rm = Arc::clone(&state.readmodels);
    let copy = stored.clone();
    // A fresh v7 id and 256 random bits: a clash is not a thing to retry.
    if !blocking(move || rm.create_token(&copy)).await? {
        return Err(ApiError::internal("token clash"));
    }
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info: stored.into() })).into_response())
}

/// Lists the API tokens (never the tokens themselves).
#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "admin",
    responses(
        (status = 200, description = "Every token, revoked ones too", body = TokenList),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let rm = Arc::clone(&state.readmodels);
    let tokens = blocking(move || rm.tokens()).await?;
    Ok(Json(TokenList { tokens: tokens.into_iter().map(TokenInfo::from).collect() }))
}

/// Revokes an API token.
///
/// It authenticates nothing from then on, on every process sharing the store. Revoking a
/// revoked token answers it as it is.
#[utoipa::path(
    delete,
    path = "/admin/tokens/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 200, description = "Revoked", body = TokenInfo),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let rm = Arc::clone(&state.readmodels);
    let key = id.clone();
    blocking(move || rm.revoke_token(&key, Timestamp::now()))
        .await?
        .map(|t| Json(t.into()))
        .ok_or_else(|| ApiError::not_found(format!("no token with id {id}")))
}
