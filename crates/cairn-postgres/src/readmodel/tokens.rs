//! API tokens on PostgreSQL (table `api_tokens`, migration 4): every process on the
//! database sees the same tokens.

use cairn_core::readmodel::{ReadModelError, StoredToken, Tokens};
use cairn_core::timestamp::Timestamp;

use super::PgReadModels;

const COLUMNS: &str = "id, name, role, prefixes, hash, created_us, revoked_us";

fn from_row(r: &tokio_postgres::Row) -> StoredToken {
    let prefixes: String = r.get(3);
    StoredToken {
        id: r.get(0),
        name: r.get(1),
        role: r.get(2),
        // Written by `create_token` only, as a JSON array of strings.
        prefixes: serde_json::from_str(&prefixes).unwrap_or_default(),
        hash: r.get(4),
        created_at: Timestamp::from_micros(r.get(5)),
        revoked_at: r.get::<_, Option<i64>>(6).map(Timestamp::from_micros),
    }
}

impl Tokens for PgReadModels {
    fn create_token(&self, token: &StoredToken) -> Result<bool, ReadModelError> {
        let prefixes = serde_json::to_string(&token.prefixes)
            .map_err(|e| ReadModelError::Storage(e.to_string()))?;
        Ok(!self
            .query_rows(
                &format!(
                    "INSERT INTO api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT DO NOTHING RETURNING id"
                ),
                &[
                    &token.id,
                    &token.name,
                    &token.role,
                    &prefixes,
                    &token.hash,
                    &token.created_at.as_micros(),
                    &token.revoked_at.map(Timestamp::as_micros),
                ],
            )?
            .is_empty())
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, ReadModelError> {
        Ok(self
            .query_rows(&format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = $1"), &[&hash])?
            .first()
            .map(from_row))
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, ReadModelError> {
        Ok(self
            .query_rows(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY created_us, id"), &[])?
            .iter()
            .map(from_row)
            .collect())
    }

    fn revoke_token(&self, id: &str, at: Timestamp) -> Result<Option<StoredToken>, ReadModelError> {
        // Only an unset time is set: the first revocation stands even when two race.
        self.query_rows(
            "UPDATE api_tokens SET revoked_us = $2 WHERE id = $1 AND revoked_us IS NULL",
            &[&id, &at.as_micros()],
        )?;
        Ok(self
            .query_rows(&format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"), &[&id])?
            .first()
            .map(from_row))
    }
}
