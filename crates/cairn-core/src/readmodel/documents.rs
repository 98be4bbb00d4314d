//! Tables of JSON documents: declared, read by queries, changed in transactions.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Fence, ReadModelError};

/// A table of documents and the fields it can be filtered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// `[a-z0-9_]+`; the backend may prefix it.
    pub name: &'static str,
    /// Top-level document fields with an index, usable in [`ListQuery::filters`] and
    /// [`DocTxn::find`].
    pub indexed: &'static [&'static str],
}

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
    /// Every document whose indexed `field` equals `value`, as `(key, json)`, by key.
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

/// The function a consumer runs inside one read-model transaction.
pub type TxnFn<'a> = &'a mut dyn FnMut(&mut dyn DocTxn) -> Result<(), ReadModelError>;

/// The documents themselves.
///
/// A consumer's document changes and its checkpoint commit in one transaction, which is
/// what makes an event's effect happen exactly once across crashes.
pub trait Documents: Send + Sync {
    /// Creates the tables and indexes if they do not exist.
    fn ensure_tables(&self, tables: &[TableSpec]) -> Result<(), ReadModelError>;
    /// Runs `f` in one transaction; when `checkpoint` is given, the consumer's checkpoint
    /// is set to it in the same transaction. An error from `f` rolls everything back.
    /// Written only under `fence`, the live term of `consumer`'s leadership, checked in
    /// the same transaction ([`ReadModelError::Fenced`] or [`ReadModelError::NotLeader`]
    /// otherwise, and nothing is written).
    fn transact(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// [`Self::transact`] for work that is re-derived from the log: a projection's batch
    /// together with its checkpoint. A backend may commit it without waiting for it to be
    /// durable, since a crash that loses it loses the checkpoint with it and the consumer
    /// handles those events again. Never for state that the log cannot give back (process
    /// manager instances, imports, leadership). The default is [`Self::transact`].
    fn transact_derived(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: u64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        self.transact(fence, consumer, Some(checkpoint), f)
    }
    /// One document, outside any transaction (queries).
    fn get(&self, table: &str, key: &str) -> Result<Option<String>, ReadModelError>;
    /// A page of documents ordered by key (queries).
    fn list(&self, query: &ListQuery) -> Result<Vec<(String, String)>, ReadModelError>;
}
