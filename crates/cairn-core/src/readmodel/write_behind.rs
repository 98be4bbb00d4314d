//! The write-behind buffer every backend's transaction uses: documents written during a
//! batch stay in memory and reach storage once, at the end (or before a `find`, which
//! needs the backend's index to see them), however many events touched them. A batch of
//! 500 events on 100 orders writes 100 rows, not 500.
//!
//! A backend supplies only the raw reads and writes ([`TxnStorage`]); the buffering, the
//! read-your-writes lookups and the checks of declared tables and fields live here once.

use std::collections::{BTreeMap, HashMap};

use super::{DocTxn, ReadModelError};

/// What a backend's transaction can do against its storage.
pub trait TxnStorage {
    /// The indexed fields of `table`, or `None` when it was never declared.
    fn indexed(&self, table: &str) -> Option<&[String]>;
    /// The stored document under `key`.
    fn read(&mut self, table: &str, key: &str) -> Result<Option<String>, ReadModelError>;
    /// The stored documents under `keys` (absent ones left out), or `None` when reading
    /// many at once costs no less than one by one (the prefetch hint is then ignored).
    fn read_many(
        &mut self,
        table: &str,
        keys: &[&str],
    ) -> Result<Option<Vec<(String, String)>>, ReadModelError> {
        let _ = (table, keys);
        Ok(None)
    }
    /// Stores `upserts` and removes `deletes`, in key order.
    fn write(
        &mut self,
        table: &str,
        upserts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<(), ReadModelError>;
    /// Every stored document whose indexed `field` equals `value`, by key.
    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError>;
}

/// Per table, per key: the document (`None`: deleted, or known to be absent).
type Docs = HashMap<String, HashMap<String, Option<String>>>;

/// A [`DocTxn`] that buffers writes in front of a backend's [`TxnStorage`].
pub struct WriteBehind<S> {
    storage: S,
    /// Written and not yet flushed; a `BTreeMap` so that rows are written in key order
    /// (two transactions touching the same rows then lock them in the same order).
    pending: HashMap<String, BTreeMap<String, Option<String>>>,
    /// What storage holds for the rest of the transaction, as far as it was read,
    /// prefetched or flushed.
    known: Docs,
}

impl<S: TxnStorage> WriteBehind<S> {
    /// An empty buffer in front of `storage`.
    pub fn new(storage: S) -> Self {
        Self { storage, pending: HashMap::new(), known: HashMap::new() }
    }

    /// Writes everything buffered to storage (before the commit).
    pub fn flush(&mut self) -> Result<(), ReadModelError> {
        self.flush_tables(None)
    }

    /// The storage, with whatever is still buffered thrown away.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Writes the buffered changes of `table` (or of every table) to storage.
    fn flush_tables(&mut self, only: Option<&str>) -> Result<(), ReadModelError> {
        let tables: Vec<String> = match only {
            Some(t) => vec![t.to_owned()],
            None => self.pending.keys().cloned().collect(),
        };
        for table in tables {
            let Some(docs) = self.pending.remove(&table) else { continue };
            let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
            for (key, doc) in &docs {
                match doc {
                    Some(json) => upserts.push((key.clone(), json.clone())),
                    None => deletes.push(key.clone()),
                }
            }
            self.storage.write(&table, upserts, deletes)?;
            self.known.entry(table).or_default().extend(docs);
        }
        Ok(())
    }

    fn check(&self, table: &str, field: Option<&str>) -> Result<(), ReadModelError> {
        let indexed = self
            .storage
            .indexed(table)
            .ok_or_else(|| ReadModelError::Unknown(format!("table {table}")))?;
        if let Some(f) = field
            && !indexed.iter().any(|x| x == f)
        {
            return Err(ReadModelError::Unknown(format!("{table}.{f} is not indexed")));
        }
        Ok(())
    }
}

impl<S: TxnStorage> DocTxn for WriteBehind<S> {
    fn get(&mut self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        self.check(table, None)?;
        if let Some(doc) = self.pending.get(table).and_then(|docs| docs.get(key)) {
            return Ok(doc.clone());
        }
        if let Some(doc) = self.known.get(table).and_then(|docs| docs.get(key)) {
            return Ok(doc.clone());
        }
        let doc = self.storage.read(table, key)?;
        self.known.entry(table.to_owned()).or_default().insert(key.to_owned(), doc.clone());
        Ok(doc)
    }

    fn prefetch(&mut self, table: &str, keys: &[&str]) -> Result<(), ReadModelError> {
        self.check(table, None)?;
        let known = self.known.entry(table.to_owned()).or_default();
        let missing: Vec<&str> = keys.iter().copied().filter(|k| !known.contains_key(*k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let Some(found) = self.storage.read_many(table, &missing)? else { return Ok(()) };
        let known = self.known.entry(table.to_owned()).or_default();
        for k in missing {
            known.insert(k.to_owned(), None);
        }
        for (k, doc) in found {
            known.insert(k, Some(doc));
        }
        Ok(())
    }

    fn put(&mut self, table: &str, key: &str, json: &str) -> Result<(), ReadModelError> {
        self.check(table, None)?;
        self.pending
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_owned(), Some(json.to_owned()));
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &str) -> Result<(), ReadModelError> {
        self.check(table, None)?;
        self.pending.entry(table.to_owned()).or_default().insert(key.to_owned(), None);
        Ok(())
    }

    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError> {
        self.check(table, Some(field))?;
        // The backend's index only sees what reached storage.
        self.flush_tables(Some(table))?;
        self.storage.find(table, field, value)
    }
}
