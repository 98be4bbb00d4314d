//! API tokens (#16): who may call the server. Only a token's hash is stored; the server
//! computes it (the core knows no hash function) and looks tokens up by it.

use super::ReadModelError;
use crate::timestamp::Timestamp;

/// One API token as stored: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Its id (shown by `cairn tokens list`, used to revoke it).
    pub id: String,
    /// Who or what holds it; becomes `metadata.user_id` of the commands it sends.
    pub name: String,
    /// Its role, as the server spells it (`reader`, `writer`, ...).
    pub role: String,
    /// The stream-id prefixes it may append to (empty: no limit).
    pub prefixes: Vec<String>,
    /// The token's hash, lower-case hex (the lookup key).
    pub hash: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<Timestamp>,
}

/// The API tokens of a deployment, shared by every process on the store.
pub trait Tokens: Send + Sync {
    /// Stores a new token; `false` (and nothing changes) when its id or hash is taken.
    fn create_token(&self, token: &StoredToken) -> Result<bool, ReadModelError>;
    /// The token whose hash is `hash`, revoked or not.
    fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, ReadModelError>;
    /// Every token, revoked ones too, ordered by creation time then id.
    fn tokens(&self) -> Result<Vec<StoredToken>, ReadModelError>;
    /// Revokes token `id` at `at`: the token as it now is, `None` when there is no such
    /// token. Revoking a revoked token keeps its first revocation time.
    fn revoke_token(&self, id: &str, at: Timestamp) -> Result<Option<StoredToken>, ReadModelError>;
}
