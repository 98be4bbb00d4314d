//! Subject keys on PostgreSQL (table `subject_keys`, migration 7): every process on the
//! database uses the same key for a subject, and a deleted key is gone for all of them.

use cairn_core::readmodel::{ReadModelError, SUBJECT_KEY_LEN, SubjectKeys};

use super::PgReadModels;

impl SubjectKeys for PgReadModels {
    fn subject_key(
        &self,
        subject: &str,
        candidate: &[u8; SUBJECT_KEY_LEN],
    ) -> Result<Vec<u8>, ReadModelError> {
        let candidate: &[u8] = candidate;
        // Insert if absent, then read whichever is stored (ours or a racing process's).
        self.query_rows(
            "INSERT INTO subject_keys (subject, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&subject, &candidate],
        )?;
        self.find_subject_key(subject)?.ok_or_else(|| {
            ReadModelError::Storage(format!(
                "the key of {subject} was deleted while it was created"
            ))
        })
    }

    fn find_subject_key(&self, subject: &str) -> Result<Option<Vec<u8>>, ReadModelError> {
        Ok(self
            .query_rows("SELECT key FROM subject_keys WHERE subject = $1", &[&subject])?
            .first()
            .map(|r| r.get(0)))
    }

    fn delete_subject_key(&self, subject: &str) -> Result<bool, ReadModelError> {
        Ok(!self
            .query_rows(
                "DELETE FROM subject_keys WHERE subject = $1 RETURNING subject",
                &[&subject],
            )?
            .is_empty())
    }
}
