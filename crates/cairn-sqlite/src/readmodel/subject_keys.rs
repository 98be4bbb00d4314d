//! Subject keys on SQLite (table `subject_keys` of `readmodels.db`, beside the log: a copy
//! of `events.db` alone holds only ciphertext).

use cairn_core::readmodel::{ReadModelError, SUBJECT_KEY_LEN, SubjectKeys};
use rusqlite::OptionalExtension;

use super::{SqliteReadModels, storage};

impl SubjectKeys for SqliteReadModels {
    fn subject_key(
        &self,
        subject: &str,
        candidate: &[u8; SUBJECT_KEY_LEN],
    ) -> Result<Vec<u8>, ReadModelError> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO subject_keys (subject, key) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            rusqlite::params![subject, &candidate[..]],
        )
        .map_err(storage)?;
        conn.query_row("SELECT key FROM subject_keys WHERE subject = ?1", [subject], |r| r.get(0))
            .map_err(storage)
    }

    fn find_subject_key(&self, subject: &str) -> Result<Option<Vec<u8>>, ReadModelError> {
        self.writer()
            .query_row("SELECT key FROM subject_keys WHERE subject = ?1", [subject], |r| r.get(0))
            .optional()
            .map_err(storage)
    }

    fn delete_subject_key(&self, subject: &str) -> Result<bool, ReadModelError> {
        self.writer()
            .execute("DELETE FROM subject_keys WHERE subject = ?1", [subject])
            .map(|n| n == 1)
            .map_err(storage)
    }
}
