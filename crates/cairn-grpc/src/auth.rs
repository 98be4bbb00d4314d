//! Authentication as the protocol's clients send it: `authorization: Basic
//! base64(user:password)` from the connection string's user info (the token is the
//! password; the user name is not checked), or `authorization: Bearer <token>` per call.
//! The token's role is checked against the call's [`Permission`], as over HTTP.

use base64::Engine as _;
use cairn_server::AppState;
use cairn_server::auth::{Caller, Role};
use cairn_server::module::Permission;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::status;

/// The token an `authorization` value carries; `None` when there is none or it is
/// malformed.
fn token(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_owned());
    }
    None
}

/// The caller of a call that needs `permission`: `None` when the server runs without
/// authentication; `Unauthenticated` without a valid token, `PermissionDenied` when its
/// role does not allow the call.
pub async fn authorize(
    state: &AppState,
    metadata: &MetadataMap,
    permission: Permission,
) -> Result<Option<Caller>, Status> {
    if !state.config.auth.required {
        return Ok(None);
    }
    let Some(token) = token(metadata) else {
        return Err(Status::unauthenticated(
            "this server needs a token: put it as the password of the connection string \
             (esdb://user:<token>@host:port) or send `authorization: Bearer <token>`",
        ));
    };
    let caller = cairn_server::auth::authenticate(state, &token)
        .await
        .map_err(|e| status::from_api(&e))?
        .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
    if !caller.role.allows(permission) {
        return Err(Status::permission_denied(format!(
            "the {} role of token {:?} cannot make this call (it needs {})",
            caller.role,
            caller.name,
            match permission {
                Permission::Append => "the appender or admin role",
                Permission::Admin => "the admin role",
                _ => "a role that can read",
            }
        )));
    }
    Ok(Some(caller))
}

/// The caller may write stream `id` (append, delete, metadata): its token's prefixes, and
/// a module's streams are the admin's, as over HTTP.
pub fn check_stream(
    state: &AppState,
    caller: Option<&Caller>,
    id: &str,
    aggregate_type: Option<&str>,
) -> Result<(), Status> {
    if let Some(caller) = caller {
        if !caller.may_append_to(id) {
            return Err(Status::permission_denied(format!(
                "token {:?} may write only to streams starting with {}",
                caller.name,
                caller.prefixes.join(", ")
            )));
        }
        if let Some(aggregate_type) = aggregate_type
            && caller.role != Role::Admin
        {
            cairn_server::auth::check_raw_append(Some(caller), state, aggregate_type)
                .map_err(|e| status::from_api(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    #[test]
    fn the_token_is_the_basic_password_or_the_bearer() {
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:cairn_abc");
        assert_eq!(token(&with(&format!("Basic {basic}"))).as_deref(), Some("cairn_abc"));
        assert_eq!(token(&with("Bearer cairn_xyz")).as_deref(), Some("cairn_xyz"));
        assert_eq!(token(&with("Basic !!!")), None);
        assert_eq!(token(&with("Digest x")), None);
        assert_eq!(token(&MetadataMap::new()), None);
    }
}
