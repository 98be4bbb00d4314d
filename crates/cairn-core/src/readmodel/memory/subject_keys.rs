//! Subject keys in memory.

use super::MemoryReadModels;
use crate::readmodel::{ReadModelError, SUBJECT_KEY_LEN, SubjectKeys};

impl SubjectKeys for MemoryReadModels {
    fn subject_key(
        &self,
        subject: &str,
        candidate: &[u8; SUBJECT_KEY_LEN],
    ) -> Result<Vec<u8>, ReadModelError> {
        Ok(self
            .db()
            .subject_keys
            .entry(subject.to_owned())
            .or_insert_with(|| candidate.to_vec())
            .clone())
    }

    fn find_subject_key(&self, subject: &str) -> Result<Option<Vec<u8>>, ReadModelError> {
        Ok(self.db().subject_keys.get(subject).cloned())
    }

    fn delete_subject_key(&self, subject: &str) -> Result<bool, ReadModelError> {
        Ok(self.db().subject_keys.remove(subject).is_some())
    }
}
