//! Per-subject encryption keys for crypto-shredding (#19): a subject's personal fields are
//! stored encrypted under its key; deleting the key erases them everywhere at once. The
//! server does the cryptography (the core knows no cipher); backends only keep the keys,
//! beside the log, in the read-model store (so a copy of the log alone holds ciphertext).

use super::ReadModelError;

/// Length of a subject's key (AES-256).
pub const SUBJECT_KEY_LEN: usize = 32;

/// The subject keys of a deployment, shared by every process on the store.
pub trait SubjectKeys: Send + Sync {
    /// The subject's key, storing `candidate` as it when it has none yet (insert if
    /// absent: of two processes creating one at once, both get the one stored first).
    fn subject_key(
        &self,
        subject: &str,
        candidate: &[u8; SUBJECT_KEY_LEN],
    ) -> Result<Vec<u8>, ReadModelError>;
    /// The subject's key, if it has one (erased subjects have none).
    fn find_subject_key(&self, subject: &str) -> Result<Option<Vec<u8>>, ReadModelError>;
    /// Deletes the subject's key for good; `false` when it had none.
    fn delete_subject_key(&self, subject: &str) -> Result<bool, ReadModelError>;
}
