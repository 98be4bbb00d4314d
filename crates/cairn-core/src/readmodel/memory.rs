//! Read models in memory: the reference backend for tests and examples. Not durable.
//!
//! It behaves like a store shared by several processes: each [`MemoryReadModels`] handle
//! is one "process" (see [`MemoryReadModels::another_process`]), leadership of a consumer
//! is held by one handle at a time, and a handle writes under a consumer's name only
//! while it leads it. Dropping a handle is that process dying: its leases are released.
//! It passes the same conformance suite as SQLite and PostgreSQL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::write_behind::{TxnStorage, WriteBehind};
use super::{
    Checkpoints, DeadLetter, DeadLetters, Documents, Fence, Generations, LeaseIssuer, Leases,
    ListQuery, ReadModelError, SchemaStore, TableSpec, TxnFn, leadership_key, validate_identifier,
};
use crate::timestamp::Timestamp;

mod subject_keys;
mod tokens;

/// One logical table: its live generation and, during a rebuild, the next one.
#[derive(Debug, Clone, Default)]
struct Table {
    indexed: Vec<String>,
    live: BTreeMap<String, String>,
    shadow: Option<BTreeMap<String, String>>,
}

#[derive(Default)]
struct Db {
    tables: HashMap<String, Table>,
    checkpoints: BTreeMap<String, u64>,
    dead_letters: BTreeMap<i64, DeadLetter>,
    last_letter: i64,
    versions: HashMap<String, u32>,
    schemas: BTreeMap<(String, u32), String>,
    /// consumer -> the handle that leads it
    leases: HashMap<String, u64>,
    /// consumer -> its current leadership term (never reset: a term's number is not reused)
    epochs: HashMap<String, u64>,
    members: BTreeSet<u64>,
    last_member: u64,
    /// API tokens, in creation order.
    tokens: Vec<super::StoredToken>,
    /// Subject keys (crypto-shredding).
    subject_keys: HashMap<String, Vec<u8>>,
}

struct Shared {
    db: Mutex<Db>,
    /// Counts committed checkpoints, for followers.
    changes: watch::Sender<u64>,
}

/// Read models in memory; one handle per simulated process.
pub struct MemoryReadModels {
    shared: Arc<Shared>,
    member: u64,
}

impl Default for MemoryReadModels {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReadModels").field("member", &self.member).finish_non_exhaustive()
    }
}

impl MemoryReadModels {
    /// An empty store, and this process's handle on it.
    #[must_use]
    pub fn new() -> Self {
        Self::join(Arc::new(Shared {
            db: Mutex::new(Db::default()),
            changes: watch::Sender::new(0),
        }))
    }

    /// A handle on the same store for another process: it competes with this one for
    /// leadership and sees everything it commits.
    #[must_use]
    pub fn another_process(&self) -> Self {
        Self::join(Arc::clone(&self.shared))
    }

    fn join(shared: Arc<Shared>) -> Self {
        let member = {
            let mut db = shared.db.lock().unwrap_or_else(PoisonError::into_inner);
            db.last_member += 1;
            let member = db.last_member;
            db.members.insert(member);
            member
        };
        Self { shared, member }
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        // Every change is applied after its checks, or undone on failure, before the lock
        // is released: the data behind a poisoned lock is consistent.
        self.shared.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses a write under `consumer`'s name unless `fence` is the current term of its
    /// leadership and this handle still holds it. Called with the store's lock held, so
    /// the check and the write are one step.
    fn fence(&self, db: &Db, fence: &Fence, consumer: &str) -> Result<(), ReadModelError> {
        fence.covers(consumer)?;
        let key = leadership_key(consumer);
        if db.leases.get(key) != Some(&self.member) {
            return Err(ReadModelError::NotLeader(key.to_owned()));
        }
        fence.check(db.epochs.get(key).copied())
    }

    fn tick(&self) {
        self.shared.changes.send_modify(|n| *n += 1);
    }

    /// Runs `f` on the documents (the shadows, in `shadow_mode`), then `after` on the
    /// checkpoints and dead letters; a failure of either, or a panic, undoes every change
    /// (a panicking handler is caught by the engine, which goes on with this store).
    fn run(
        db: &mut Db,
        shadow_mode: bool,
        f: TxnFn<'_>,
        after: impl FnOnce(
            &mut BTreeMap<String, u64>,
            &mut BTreeMap<i64, DeadLetter>,
        ) -> Result<(), ReadModelError>,
    ) -> Result<(), ReadModelError> {
        let Db { tables, checkpoints, dead_letters, .. } = db;
        let mut txn = WriteBehind::new(MemTxn { tables, shadow_mode, undo: Some(Vec::new()) });
        f(&mut txn)?;
        txn.flush()?;
        after(checkpoints, dead_letters)?;
        txn.into_storage().commit();
        Ok(())
    }
}

impl Drop for MemoryReadModels {
    fn drop(&mut self) {
        // The process is gone, and its sessions with it.
        let member = self.member;
        let mut db = self.db();
        db.members.remove(&member);
        db.leases.retain(|_, holder| *holder != member);
    }
}

/// Which generation of a table a transaction writes, and how to put back what it wrote:
/// dropped before [`MemTxn::commit`] (an error, a panic), it undoes its writes.
struct MemTxn<'a> {
    tables: &'a mut HashMap<String, Table>,
    shadow_mode: bool,
    /// (table, key, previous document), in the order written; `None` once committed.
    undo: Option<Vec<(String, String, Option<String>)>>,
}

impl MemTxn<'_> {
    fn docs(&mut self, table: &str) -> Result<&mut BTreeMap<String, String>, ReadModelError> {
        let shadow_mode = self.shadow_mode;
        let t = self
            .tables
            .get_mut(table)
            .ok_or_else(|| ReadModelError::Unknown(format!("table {table}")))?;
        Ok(match &mut t.shadow {
            Some(shadow) if shadow_mode => shadow,
            _ => &mut t.live,
        })
    }

    fn commit(mut self) {
        self.undo = None;
    }
}

impl Drop for MemTxn<'_> {
    fn drop(&mut self) {
        let Some(undo) = self.undo.take() else { return };
        for (table, key, previous) in undo.into_iter().rev() {
            if let Ok(docs) = self.docs(&table) {
                match previous {
                    Some(doc) => docs.insert(key, doc),
                    None => docs.remove(&key),
                };
            }
        }
    }
}

/// Whether a document's top-level `field` equals `value` as PostgreSQL's `->>` compares
/// them: strings by their text, other scalars by their JSON text.
fn matches_field(json: &str, field: &str, value: &str) -> bool {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(json) else { return false };
    match doc.get(field) {
        Some(serde_json::Value::String(s)) => s == value,
        Some(serde_json::Value::Null) | None => false,
        Some(other) => serde_json::to_string(other).is_ok_and(|text| text == value),
    }
}

impl TxnStorage for MemTxn<'_> {
    fn indexed(&self, table: &str) -> Option<&[String]> {
        self.tables.get(table).map(|t| t.indexed.as_slice())
    }

    fn read(&mut self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        Ok(self.docs(table)?.get(key).cloned())
    }

    fn write(
        &mut self,
        table: &str,
        upserts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<(), ReadModelError> {
        let docs = self.docs(table)?;
        let mut undo = Vec::new();
        for (key, doc) in upserts {
            let previous = docs.insert(key.clone(), doc);
            undo.push((table.to_owned(), key, previous));
        }
        for key in deletes {
            let previous = docs.remove(&key);
            undo.push((table.to_owned(), key, previous));
        }
        if let Some(log) = &mut self.undo {
            log.extend(undo);
        }
        Ok(())
    }

    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError> {
        Ok(self
            .docs(table)?
            .iter()
            .filter(|(_, doc)| matches_field(doc, field, value))
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect())
    }
}

impl Documents for MemoryReadModels {
    fn ensure_tables(&self, tables: &[TableSpec]) -> Result<(), ReadModelError> {
        for spec in tables {
            validate_identifier(spec.name)?;
            for field in spec.indexed {
                validate_identifier(field)?;
            }
        }
        let mut db = self.db();
        for spec in tables {
            let table = db.tables.entry(spec.name.to_owned()).or_default();
            table.indexed = spec.indexed.iter().map(|f| (*f).to_owned()).collect();
        }
        Ok(())
    }

    fn transact(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, consumer)?;
        Self::run(&mut db, false, f, |checkpoints, _| {
            if let Some(position) = checkpoint {
                checkpoints.insert(consumer.to_owned(), position);
            }
            Ok(())
        })?;
        drop(db);
        if checkpoint.is_some() {
            self.tick();
        }
        Ok(())
    }

    fn get(&self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        let db = self.db();
        let t = db
            .tables
            .get(table)
            .ok_or_else(|| ReadModelError::Unknown(format!("table {table}")))?;
        Ok(t.live.get(key).cloned())
    }

    fn list(&self, query: &ListQuery) -> Result<Vec<(String, String)>, ReadModelError> {
        let db = self.db();
        let t = db
            .tables
            .get(&query.table)
            .ok_or_else(|| ReadModelError::Unknown(query.table.clone()))?;
        for (field, _) in &query.filters {
            if !t.indexed.contains(field) {
                return Err(ReadModelError::Unknown(format!(
                    "{}.{field} is not indexed",
                    query.table
                )));
            }
        }
        let after = query.after.as_deref();
        Ok(t.live
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .filter(|(_, doc)| query.filters.iter().all(|(f, v)| matches_field(doc, f, v)))
            .take(query.limit)
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect())
    }
}

impl Checkpoints for MemoryReadModels {
    fn checkpoint(&self, consumer: &str) -> Result<u64, ReadModelError> {
        Ok(self.db().checkpoints.get(consumer).copied().unwrap_or(0))
    }

    fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadModelError> {
        Ok(self.db().checkpoints.iter().map(|(c, p)| (c.clone(), *p)).collect())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        // Other handles ("processes") commit too: followers watch them.
        Some(self.shared.changes.subscribe())
    }
}

impl DeadLetters for MemoryReadModels {
    fn park(
        &self,
        fence: &Fence,
        checkpoint: u64,
        letter: &DeadLetter,
    ) -> Result<i64, ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, &letter.projection)?;
        db.last_letter += 1;
        let id = db.last_letter;
        db.dead_letters.insert(id, DeadLetter { id, ..letter.clone() });
        let saved = db.checkpoints.entry(letter.projection.clone()).or_insert(0);
        *saved = (*saved).max(checkpoint);
        drop(db);
        self.tick();
        Ok(id)
    }

    fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, ReadModelError> {
        let mut letters: Vec<DeadLetter> = self
            .db()
            .dead_letters
            .values()
            .filter(|l| consumer.is_none_or(|c| l.projection == c))
            .cloned()
            .collect();
        letters.sort_by(|a, b| {
            (&a.projection, a.position, a.id).cmp(&(&b.projection, b.position, b.id))
        });
        Ok(letters)
    }

    fn resolve_dead_letter(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, consumer)?;
        Self::run(&mut db, false, f, |_, letters| match letters.get(&id) {
            Some(l) if l.projection == consumer => {
                letters.remove(&id);
                Ok(())
            }
            _ => Err(ReadModelError::NoSuchDeadLetter(id)),
        })
    }

    fn dead_letter_failed(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        error: &str,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, consumer)?;
        match db.dead_letters.get_mut(&id) {
            Some(l) if l.projection == consumer => {
                l.attempts += 1;
                error.clone_into(&mut l.error);
                l.last_failed_at = Timestamp::now();
                Ok(())
            }
            _ => Err(ReadModelError::NoSuchDeadLetter(id)),
        }
    }
}

impl Generations for MemoryReadModels {
    fn create_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        tables: &[&str],
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, consumer)?;
        if let Some(name) = tables.iter().find(|t| !db.tables.contains_key(**t)) {
            return Err(ReadModelError::Unknown(format!("table {name}")));
        }
        for name in tables {
            if let Some(t) = db.tables.get_mut(*name) {
                t.shadow = Some(BTreeMap::new());
            }
        }
        Ok(())
    }

    fn transact_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, consumer)?;
        Self::run(&mut db, true, f, |checkpoints, _| {
            if let Some(position) = checkpoint {
                checkpoints.insert(consumer.to_owned(), position);
            }
            Ok(())
        })?;
        drop(db);
        if checkpoint.is_some() {
            self.tick();
        }
        Ok(())
    }

    fn swap_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        live: &str,
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, live)?;
        if let Some(name) =
            tables.iter().find(|t| db.tables.get(**t).is_none_or(|t| t.shadow.is_none()))
        {
            return Err(ReadModelError::Unknown(format!("shadow of table {name}")));
        }
        for name in tables {
            if let Some(t) = db.tables.get_mut(*name)
                && let Some(shadow) = t.shadow.take()
            {
                t.live = shadow;
            }
        }
        let position = db.checkpoints.remove(shadow_consumer).unwrap_or(0);
        db.checkpoints.insert(live.to_owned(), position);
        drop(db);
        self.tick();
        Ok(())
    }

    fn abort_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        let mut db = self.db();
        self.fence(&db, fence, shadow_consumer)?;
        for name in tables {
            if let Some(t) = db.tables.get_mut(*name) {
                t.shadow = None;
            }
        }
        db.checkpoints.remove(shadow_consumer);
        Ok(())
    }

    fn projection_version(&self, name: &str) -> Result<Option<u32>, ReadModelError> {
        Ok(self.db().versions.get(name).copied())
    }

    fn set_projection_version(&self, name: &str, version: u32) -> Result<(), ReadModelError> {
        self.db().versions.insert(name.to_owned(), version);
        Ok(())
    }
}

impl Leases for MemoryReadModels {
    fn begin_term(
        &self,
        consumer: &str,
        issuer: LeaseIssuer<'_>,
    ) -> Result<Option<Fence>, ReadModelError> {
        let mut db = self.db();
        match db.leases.get(consumer) {
            Some(holder) if *holder != self.member => return Ok(None),
            Some(_) => {}
            None => {
                // A new term: a greater epoch than any before it.
                db.leases.insert(consumer.to_owned(), self.member);
                *db.epochs.entry(consumer.to_owned()).or_insert(0) += 1;
            }
        }
        let epoch = db.epochs.get(consumer).copied().unwrap_or(0);
        Ok(Some(Fence::issued(consumer, epoch, issuer)))
    }

    fn leads(&self, consumer: &str) -> bool {
        self.db().leases.get(consumer) == Some(&self.member)
    }

    fn resign(&self, consumer: &str) {
        let mut db = self.db();
        if db.leases.get(consumer) == Some(&self.member) {
            db.leases.remove(consumer);
        }
    }

    fn live_members(&self) -> Result<usize, ReadModelError> {
        Ok(self.db().members.len().max(1))
    }
}

impl SchemaStore for MemoryReadModels {
    fn schemas(&self) -> Result<Vec<(String, u32, String)>, ReadModelError> {
        Ok(self.db().schemas.iter().map(|((t, v), s)| (t.clone(), *v, s.clone())).collect())
    }

    fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: &str,
    ) -> Result<bool, ReadModelError> {
        let mut db = self.db();
        let key = (event_type.to_owned(), version);
        if db.schemas.contains_key(&key) {
            return Ok(false);
        }
        db.schemas.insert(key, schema.to_owned());
        Ok(true)
    }
}
