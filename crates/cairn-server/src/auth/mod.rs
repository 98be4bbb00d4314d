//! Authentication and authorization (#16): API tokens, their roles, and the one check
//! every route passes through ([`middleware`]).
//!
//! A token is `cairn_` and 32 bytes from the operating system's CSPRNG (base64url). Only
//! its SHA-256 is stored: a fast unsalted hash is right for a secret with 256 bits of
//! entropy (nothing to brute-force; salts and slow hashes defend low-entropy passwords).
//! A presented token is hashed and looked up *by hash*, so no stored secret is ever
//! compared with it; the one in-memory comparison (the bootstrap admin token) runs in
//! constant time all the same.

pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod routes;

pub use middleware::{authenticate, check_raw_append};

use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::module::Permission;

/// What every token starts with (so a leaked one is recognisable, e.g. by secret scanners).
pub const TOKEN_PREFIX: &str = "cairn_";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Longest token name (it becomes `metadata.user_id`, an id header's value).
pub const TOKEN_NAME_MAX_LEN: usize = 64;
/// Most stream-id prefixes on one token.
pub const TOKEN_PREFIXES_MAX: usize = 32;
/// The id and name of the caller holding the bootstrap admin token.
pub const BOOTSTRAP_ID: &str = "bootstrap";

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read routes.
    Reader,
    /// Read routes and commands.
    Writer,
    /// Read routes and raw appends, never to the streams of a registered module's
    /// aggregates.
    Appender,
    /// Everything.
    Admin,
    /// A writer that may say on whose behalf it calls (`X-User-Id`).
    Gateway,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] =
        [Role::Reader, Role::Writer, Role::Appender, Role::Admin, Role::Gateway];

    /// Whether this role may call a route that needs `permission`.
    #[must_use]
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::Public | Permission::Read => true,
            Permission::Write => matches!(self, Role::Writer | Role::Gateway | Role::Admin),
            Permission::Append => matches!(self, Role::Appender | Role::Admin),
            Permission::Admin => self == Role::Admin,
        }
    }

    /// Its name as stored and sent.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Appender => "appender",
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }

    /// The role named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of a token, as stored and looked up.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    #[must_use]
    pub fn of(token: &str) -> Self {
        Self(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, the stored form.
    #[must_use]
    pub fn hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A new random token, `cairn_<43 base64url characters>`.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether and how callers authenticate ([`crate::HttpConfig::auth`]).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `false`: every route is open to anyone who reaches the port (loopback only, or
    /// `cairn serve --insecure`). `true`: every route but the public ones needs a token.
    pub required: bool,
    /// The bootstrap admin token's hash (`cairn serve --admin-token-file`); kept in
    /// memory only, never stored.
    pub bootstrap_admin: Option<TokenHash>,
}

impl AuthConfig {
    /// Tokens required; `bootstrap_admin` (the token itself) is an admin besides the
    /// stored tokens.
    #[must_use]
    pub fn required(bootstrap_admin: Option<&str>) -> Self {
        Self { required: true, bootstrap_admin: bootstrap_admin.map(TokenHash::of) }
    }
}

/// Who is calling, once authenticated: a request extension of every authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its token's id.
    pub id: String,
    /// Its token's name (`metadata.user_id` of its commands).
    pub name: String,
    /// Its token's role.
    pub role: Role,
    /// The stream-id prefixes it may append to (empty: any).
    pub prefixes: Vec<String>,
}

impl Caller {
    /// Whether it may append to stream `aggregate_id`: its token's prefixes, if any, limit
    /// its raw appends whatever its role.
    #[must_use]
    pub fn may_append_to(&self, aggregate_id: &str) -> bool {
        self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| aggregate_id.starts_with(p.as_str()))
    }
}

/// A token name: 1 to [`TOKEN_NAME_MAX_LEN`] of `[A-Za-z0-9._:@-]` (it is sent as a header).
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOKEN_NAME_MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_@-".contains(&b))
}
