//! API tokens in memory.

use super::MemoryReadModels;
use crate::readmodel::{ReadModelError, StoredToken, Tokens};
use crate::timestamp::Timestamp;

impl Tokens for MemoryReadModels {
    fn create_token(&self, token: &StoredToken) -> Result<bool, ReadModelError> {
        let mut db = self.db();
        if db.tokens.iter().any(|t| t.id == token.id || t.hash == token.hash) {
            return Ok(false);
        }
        db.tokens.push(token.clone());
        Ok(true)
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, ReadModelError> {
        Ok(self.db().tokens.iter().find(|t| t.hash == hash).cloned())
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, ReadModelError> {
        let mut tokens = self.db().tokens.clone();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    fn revoke_token(&self, id: &str, at: Timestamp) -> Result<Option<StoredToken>, ReadModelError> {
        let mut db = self.db();
        let Some(token) = db.tokens.iter_mut().find(|t| t.id == id) else { return Ok(None) };
        token.revoked_at.get_or_insert(at);
        Ok(Some(token.clone()))
    }
}
