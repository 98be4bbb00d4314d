//! API tokens on SQLite (table `api_tokens`, created with the others at open).

use cairn_core::readmodel::{ReadModelError, StoredToken, Tokens};
use cairn_core::timestamp::Timestamp;
use rusqlite::OptionalExtension;

use super::{SqliteReadModels, storage};

const COLUMNS: &str = "id, name, role, prefixes, hash, created_us, revoked_us";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredToken> {
    let prefixes: String = r.get(3)?;
    Ok(StoredToken {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        // Written by `create_token` only, as a JSON array of strings.
        prefixes: serde_json::from_str(&prefixes).unwrap_or_default(),
        hash: r.get(4)?,
        created_at: Timestamp::from_micros(r.get(5)?),
        revoked_at: r.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
    })
}

impl Tokens for SqliteReadModels {
    fn create_token(&self, token: &StoredToken) -> Result<bool, ReadModelError> {
        let prefixes = serde_json::to_string(&token.prefixes).map_err(storage)?;
        self.writer()
            .execute(
                &format!(
                    "INSERT INTO api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT DO NOTHING"
                ),
                rusqlite::params![
                    token.id,
                    token.name,
                    token.role,
                    prefixes,
                    token.hash,
                    token.created_at.as_micros(),
                    token.revoked_at.map(Timestamp::as_micros),
                ],
            )
            .map(|n| n == 1)
            .map_err(storage)
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, ReadModelError> {
        self.writer()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = ?1"),
                [hash],
                from_row,
            )
            .optional()
            .map_err(storage)
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, ReadModelError> {
        let conn = self.writer();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY created_us, id"))
            .map_err(storage)?;
        let rows = stmt.query_map([], from_row).map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn revoke_token(&self, id: &str, at: Timestamp) -> Result<Option<StoredToken>, ReadModelError> {
        let conn = self.writer();
        conn.execute(
            "UPDATE api_tokens SET revoked_us = ?2 WHERE id = ?1 AND revoked_us IS NULL",
            rusqlite::params![id, at.as_micros()],
        )
        .map_err(storage)?;
        conn.query_row(&format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"), [id], from_row)
            .optional()
            .map_err(storage)
    }
}
