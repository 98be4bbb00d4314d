//! The interface projections and process managers use to keep their state: tables of
//! JSON documents keyed by id, with a few declared indexed fields, changed only inside a
//! transaction that also moves the consumer's checkpoint.
//!
//! Written once against this trait, a projection runs on every backend; the domain crate
//! depends on no database driver. Documents are JSON *text*, so money keeps its digits.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// A table of documents and the fields it can be filtered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// `[a-z0-9_]+`; the backend may prefix it.
    pub name: &'static str,
    /// Top-level document fields with an index, usable in [`ListQuery::filters`] and
    /// [`DocTxn::find`].
    pub indexed: &'static [&'static str],
}

/// Why a read-model operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The backend failed (I/O, connection).
    #[error("read model storage failed: {0}")]
    Storage(String),
    /// A stored document does not match the type it is read as.
    #[error("read model document is not valid: {0}")]
    Decode(String),
    /// A projection or process-manager handler refused the event.
    #[error("handler failed: {0}")]
    Handler(String),
    /// A table or field that was never declared.
    #[error("unknown table or field: {0}")]
    Unknown(String),
    /// This process no longer leads the consumer (another may): nothing was written.
    #[error("this process does not lead {0}")]
    NotLeader(String),
    /// The dead letter is not there any more (resolved by another call): nothing was written.
    #[error("dead letter {0} not found")]
    NoSuchDeadLetter(i64),
    /// The backend refused a value or document (not a failure of the backend: trying again
    /// fails again), e.g. text PostgreSQL cannot index.
    #[error("read model storage refused the data: {0}")]
    Rejected(String),
}

impl ReadModelError {
    /// Whether the failure is the storage's or the engine's (retried, with leadership
    /// re-checked), not the event's: a handler's refusal or a bad document is the event's.
    #[must_use]
    pub fn is_storage(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::NotLeader(_) | Self::NoSuchDeadLetter(_))
    }
}

/// Suffix of the checkpoint a rebuild's shadow tables are written under; its writes run
/// under the leadership of the consumer it rebuilds (`<name>#rebuild` → `<name>`).
pub const REBUILD_SUFFIX: &str = "#rebuild";

/// The consumer whose leadership covers writes made under `consumer`'s name.
#[must_use]
pub fn leadership_key(consumer: &str) -> &str {
    consumer.strip_suffix(REBUILD_SUFFIX).unwrap_or(consumer)
}

/// Changes to documents inside one transaction.
pub trait DocTxn {
    /// The document stored under `key`, as JSON text.
    fn get(&mut self, table: &str, key: &str) -> Result<Option<String>, ReadModelError>;
    /// Stores (inserts or replaces) a document.
    fn put(&mut self, table: &str, key: &str, json: &str) -> Result<(), ReadModelError>;
    /// Removes a document (no error when absent).
    fn delete(&mut self, table: &str, key: &str) -> Result<(), ReadModelError>;
    /// Loads the documents under `keys` ahead of the `get`s that will ask for them: one
    /// round trip instead of one per key on a networked backend. Only a hint; the default
    /// does nothing.
    fn prefetch(&mut self, _table: &str, _keys: &[&str]) -> Result<(), ReadModelError> {
        Ok(())
    }
    /// Every document whose indexed `field` equals `value`, as `(key, json)`.
    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError>;
}

/// Typed helpers over [`DocTxn`].
pub trait DocTxnExt: DocTxn {
    /// Loads and decodes a document.
    fn load<T: DeserializeOwned>(
        &mut self,
        table: &str,
        key: &str,
    ) -> Result<Option<T>, ReadModelError> {
        self.get(table, key)?
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| ReadModelError::Decode(format!("{table}/{key}: {e}")))
            })
            .transpose()
    }

    /// Encodes and stores a document.
    fn save<T: Serialize>(
        &mut self,
        table: &str,
        key: &str,
        doc: &T,
    ) -> Result<(), ReadModelError> {
        let json = serde_json::to_string(doc).map_err(|e| ReadModelError::Decode(e.to_string()))?;
        self.put(table, key, &json)
    }

    /// Every document whose indexed field matches, decoded.
    fn find_as<T: DeserializeOwned>(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, T)>, ReadModelError> {
        self.find(table, field, value)?
            .into_iter()
            .map(|(k, json)| {
                serde_json::from_str(&json)
                    .map(|d| (k, d))
                    .map_err(|e| ReadModelError::Decode(e.to_string()))
            })
            .collect()
    }
}

impl<T: DocTxn + ?Sized> DocTxnExt for T {}

/// A page request over one table: equality filters on indexed fields, keyset pagination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The table.
    pub table: String,
    /// `(indexed field, value)` pairs, all of which must match.
    pub filters: Vec<(String, String)>,
    /// Only keys strictly greater than this (the previous page's last key).
    pub after: Option<String>,
    /// Most documents to return.
    pub limit: usize,
}

/// An event a consumer could not handle, parked so that processing goes on.
///
/// Rows of one (consumer, aggregate) form a chain in position order: the first is the
/// failed event, the rest were parked behind it so that the aggregate's events are never
/// applied out of order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its id (for retry and discard).
    pub id: i64,
    /// The projection or process manager.
    pub projection: String,
    /// The event's `$all` position.
    pub position: u64,
    /// The event's stream.
    pub aggregate_id: String,
    /// The event's type.
    pub event_type: String,
    /// The last error (for a parked event: which dead letter it waits behind).
    pub error: String,
    /// Times it was tried.
    pub attempts: u32,
    /// First failure (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub first_failed_at: crate::timestamp::Timestamp,
    /// Latest failure (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_failed_at: crate::timestamp::Timestamp,
}

/// The function a consumer runs inside one read-model transaction.
pub type TxnFn<'a> = &'a mut dyn FnMut(&mut dyn DocTxn) -> Result<(), ReadModelError>;

/// Where read models, checkpoints and process-manager state live.
///
/// Blocking by design: callers run it on blocking threads. A consumer's document changes
/// and its checkpoint commit in one transaction, which is what makes an event's effect
/// happen exactly once across crashes.
pub trait ReadModelStore: Send + Sync + 'static {
    /// Creates the tables and indexes if they do not exist.
    fn ensure_tables(&self, tables: &[TableSpec]) -> Result<(), ReadModelError>;
    /// The last `$all` position the consumer committed (0 when it never ran).
    fn checkpoint(&self, consumer: &str) -> Result<u64, ReadModelError>;
    /// Every consumer's checkpoint, by name (the start-up check against the log's head).
    fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadModelError>;
    /// Runs `f` in one transaction; when `checkpoint` is given, the consumer's checkpoint
    /// is set to it in the same transaction. An error from `f` rolls everything back.
    fn transact(
        &self,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// One document, outside any transaction (queries).
    fn get(&self, table: &str, key: &str) -> Result<Option<String>, ReadModelError>;
    /// A page of documents ordered by key (queries).
    fn list(&self, query: &ListQuery) -> Result<Vec<(String, String)>, ReadModelError>;

    /// Parks an event in the dead letter queue and moves the consumer's checkpoint past
    /// it, in one transaction. `letter.id` is ignored; the new id is returned.
    fn park(&self, checkpoint: u64, letter: &DeadLetter) -> Result<i64, ReadModelError>;
    /// Dead letters in position order, of one consumer or of all.
    fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, ReadModelError>;
    /// Runs `f` and removes `consumer`'s dead letter `id`, in one transaction (a successful
    /// retry, or a discard with a no-op `f`). Written only while this process leads
    /// `consumer` ([`ReadModelError::NotLeader`] otherwise); a letter that is gone fails
    /// with [`ReadModelError::NoSuchDeadLetter`] and rolls `f`'s changes back.
    fn resolve_dead_letter(
        &self,
        consumer: &str,
        id: i64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// Records one more failed attempt of `consumer`'s dead letter `id` (leader only).
    fn dead_letter_failed(
        &self,
        consumer: &str,
        id: i64,
        error: &str,
    ) -> Result<(), ReadModelError>;

    /// Creates empty shadow copies (the next generation) of declared tables, for a rebuild
    /// of `consumer` (written only while this process leads it).
    fn create_shadow(&self, consumer: &str, tables: &[&str]) -> Result<(), ReadModelError>;
    /// Like [`ReadModelStore::transact`], but the tables with a shadow are written in it.
    fn transact_shadow(
        &self,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// Atomically makes the shadows the live tables (dropping the old ones) and gives the
    /// live consumer the shadow consumer's checkpoint.
    fn swap_shadow(
        &self,
        tables: &[&str],
        live: &str,
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError>;
    /// Drops the shadows of an abandoned rebuild.
    fn abort_shadow(&self, tables: &[&str], shadow_consumer: &str) -> Result<(), ReadModelError>;
    /// The projection version the stored read model was built with.
    fn projection_version(&self, name: &str) -> Result<Option<u32>, ReadModelError>;
    /// Records the projection version the read model is built with.
    fn set_projection_version(&self, name: &str, version: u32) -> Result<(), ReadModelError>;

    /// Every registered event schema as `(event_type, version, schema JSON)`.
    fn schemas(&self) -> Result<Vec<(String, u32, String)>, ReadModelError>;
    /// Registers a schema version; `false` when that version already exists.
    fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: &str,
    ) -> Result<bool, ReadModelError>;

    /// Tries to make this process the one that runs `consumer`: `true` when it now leads
    /// it. Backends shared by several processes grant each consumer to one at a time; an
    /// embedded backend (one process) always grants it.
    fn try_lead(&self, _consumer: &str) -> Result<bool, ReadModelError> {
        Ok(true)
    }
    /// Whether this process still leads `consumer` (its leadership can be lost with its
    /// database session).
    fn leads(&self, _consumer: &str) -> bool {
        true
    }
    /// Gives up leadership of `consumer`, so that another process may take it.
    fn resign(&self, _consumer: &str) {}
    /// How many processes share this store right now (for spreading partitions fairly).
    fn live_members(&self) -> Result<usize, ReadModelError> {
        Ok(1)
    }
    /// Ticks whenever any process commits a checkpoint (`None`: only this process writes,
    /// so there is nothing to watch).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Checks a table or field name against `[a-z0-9_]{1,64}` (they become SQL identifiers).
pub fn validate_identifier(name: &str) -> Result<(), ReadModelError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(()) } else { Err(ReadModelError::Unknown(format!("invalid identifier {name:?}"))) }
}
