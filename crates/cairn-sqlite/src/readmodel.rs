//! Read models, checkpoints and process-manager state in their own SQLite file.
//!
//! `readmodels.db` sits beside the event log, never inside it: the event log has one
//! writer (the group-commit thread) and projections must never compete with it for the
//! write lock. A consumer's document changes and its checkpoint commit in one
//! transaction of this file. `synchronous=NORMAL` is enough here: a crash can lose the
//! last commits, but never one without the other, and the lost events are re-applied
//! from the checkpoint.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cairn_core::readmodel::write_behind::{TxnStorage, WriteBehind};
use cairn_core::readmodel::{
    Checkpoints, DeadLetter, DeadLetterCursor, DeadLetters, Documents, Fence, Generations,
    LeaseIssuer, Leases, ListQuery, ReadModelError, SchemaStore, TableSpec, TxnFn,
    validate_identifier,
};
use cairn_core::snapshot::{Snapshot, SnapshotStore};
use cairn_core::timestamp::Timestamp;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::reader::ReadPool;

/// The read-model file's name inside the data directory.
pub const READ_MODEL_FILE: &str = "readmodels.db";

/// Read models on SQLite.
pub struct SqliteReadModels {
    write: Mutex<Connection>,
    readers: Arc<ReadPool>,
    /// Declared tables: indexed fields, and whether a shadow is being rebuilt.
    tables: Mutex<HashMap<String, TableState>>,
    /// Consumers this process leads, and the epoch of its term for each.
    held: Mutex<HashMap<String, u64>>,
    path: PathBuf,
}

fn storage(e: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Storage(e.to_string())
}

/// What the store knows of one logical table.
#[derive(Debug, Clone)]
struct TableState {
    indexed: Vec<String>,
    /// A rebuild of this process created the table's shadow, which shadow writes go to.
    shadow: bool,
}

/// The live table of logical table `name`.
fn live(name: &str) -> String {
    format!("rm_{name}")
}

/// The table a rebuild of `name` fills; the swap renames it to [`live`].
fn shadow(name: &str) -> String {
    format!("rm_{name}__shadow")
}

/// Names tried for a new index before giving up (two are ever in use for one field:
/// the live table's and its shadow's).
const INDEX_NAME_TRIES: u32 = 16;

/// Creates `table` (a physical name) if missing, and an index for each of `indexed` it
/// lacks.
///
/// SQLite index names are global to the file and cannot be renamed (there is no `ALTER
/// INDEX ... RENAME`), and `ALTER TABLE ... RENAME` keeps a table's index names. So a
/// shadow's indexes, renamed with it into the live table, keep the names they were
/// created under, and the next shadow's indexes need other names: an index is looked
/// for by what it indexes (its table and its `'$.field'` expression in `sqlite_master`),
/// never by name, and a new one takes the first free name of `<table>_<field>`,
/// `<table>_<field>__2`, ... The live and shadow tables of a field alternate between two
/// of them; rebuilding the index at the swap instead would hold the write lock for a
/// full index build.
fn create_table(conn: &Connection, table: &str, indexed: &[String]) -> Result<(), ReadModelError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;"
    ))
    .map_err(storage)?;
    for field in indexed {
        let has_index: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master
                 WHERE type = 'index' AND tbl_name = ?1 AND instr(sql, ?2) > 0)",
                rusqlite::params![table, format!("'$.{field}'")],
                |r| r.get(0),
            )
            .map_err(storage)?;
        if has_index {
            continue;
        }
        let mut chosen = None;
        for attempt in 1..=INDEX_NAME_TRIES {
            let name = if attempt == 1 {
                format!("{table}_{field}")
            } else {
                format!("{table}_{field}__{attempt}")
            };
            let taken: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            if !taken {
                chosen = Some(name);
                break;
            }
        }
        let name = chosen.ok_or_else(|| {
            ReadModelError::Storage(format!("no free index name for {table}.{field}"))
        })?;
        conn.execute_batch(&format!(
            "CREATE INDEX {name} ON {table} (json_extract(doc, '$.{field}'), key);"
        ))
        .map_err(storage)?;
    }
    Ok(())
}

/// The condition on indexed `field` for the text `value`, appended to `sql` with its
/// arguments. `json_extract` gives a JSON number as an SQL number, which never equals
/// text: an integer field must also match its digits, as it does on PostgreSQL (where
/// `->>` gives text). Only digits get the two-value `IN`: it costs a sort of the matches
/// (the index no longer yields them in key order), which a text filter need not pay.
fn field_condition(
    sql: &mut String,
    args: &mut Vec<rusqlite::types::Value>,
    field: &str,
    value: &str,
) {
    use rusqlite::types::Value;
    args.push(Value::Text(value.to_owned()));
    let text = args.len();
    match value.parse::<i64>().ok().filter(|i| i.to_string() == value) {
        Some(integer) => {
            args.push(Value::Integer(integer));
            let _ = write!(sql, "json_extract(doc, '$.{field}') IN (?{text}, ?{})", args.len());
        }
        None => {
            let _ = write!(sql, "json_extract(doc, '$.{field}') = ?{text}");
        }
    }
}

impl SqliteReadModels {
    /// Opens (creating if needed) `readmodels.db` in `dir`. The caller holds the data
    /// directory's lock (it opened the event store first).
    pub fn open(dir: &Path) -> Result<Self, ReadModelError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let path = dir.join(READ_MODEL_FILE);
        let mut conn = Connection::open(&path).map_err(storage)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(storage)?;
        crate::schema::migrate_read_models(&mut conn).map_err(ReadModelError::Storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(storage)?;
        // Every table has its own statements (get, upsert, delete, find): keep them all.
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Self {
            write: Mutex::new(conn),
            readers: Arc::new(ReadPool::new(path.clone(), 8)),
            tables: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            path,
        })
    }

    /// The file path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction drops it (rolled back), so the connection is sound.
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn declared(&self) -> HashMap<String, TableState> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The live table of a declared logical table (readers never see a shadow).
    fn current_physical(&self, table: &str) -> Result<String, ReadModelError> {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if tables.contains_key(table) {
            Ok(live(table))
        } else {
            Err(ReadModelError::Unknown(format!("table {table}")))
        }
    }

    fn run_transaction(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        shadow_mode: bool,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let tables = self.declared();
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, consumer)?;
        let mut txn = WriteBehind::new(Txn { conn: &tx, tables: &tables, shadow_mode });
        f(&mut txn)?;
        txn.flush()?;
        if let Some(position) = checkpoint {
            tx.prepare_cached(
                "INSERT INTO checkpoints (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
            )
            .and_then(|mut s| s.execute(rusqlite::params![consumer, position as i64]))
            .map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }
}

/// Refuses the transaction unless `fence` is the current term of `consumer`'s leadership.
/// One process owns the directory, but a term it gave up (a handed-over partition, a
/// rebuild task outliving its term) must not write into the next one: checked inside
/// the write's own IMMEDIATE transaction, which no new term can interleave with.
fn check_fence(conn: &Connection, fence: &Fence, consumer: &str) -> Result<(), ReadModelError> {
    fence.covers(consumer)?;
    let current: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM leases WHERE consumer = ?1")
        .and_then(|mut s| s.query_row([fence.consumer()], |r| r.get(0)).optional())
        .map_err(storage)?;
    fence.check(current.map(|e| e as u64))
}

/// What a transaction reads and writes on SQLite, behind the shared write-behind buffer.
struct Txn<'a> {
    conn: &'a Connection,
    tables: &'a HashMap<String, TableState>,
    /// Writes go to the shadow of tables being rebuilt.
    shadow_mode: bool,
}

impl Txn<'_> {
    fn physical(&self, table: &str) -> String {
        match self.tables.get(table) {
            Some(st) if self.shadow_mode && st.shadow => shadow(table),
            _ => live(table),
        }
    }
}

impl TxnStorage for Txn<'_> {
    fn indexed(&self, table: &str) -> Option<&[String]> {
        self.tables.get(table).map(|t| t.indexed.as_slice())
    }

    fn read(&mut self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        self.conn
            .prepare_cached(&format!("SELECT doc FROM {} WHERE key = ?1", self.physical(table)))
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(storage)
    }

    fn write(
        &mut self,
        table: &str,
        upserts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<(), ReadModelError> {
        let target = self.physical(table);
        let upsert = format!(
            "INSERT INTO {target} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
        );
        for (key, json) in upserts {
            self.conn
                .prepare_cached(&upsert)
                .and_then(|mut s| s.execute([&key, &json]))
                .map_err(storage)?;
        }
        let delete = format!("DELETE FROM {target} WHERE key = ?1");
        for key in deletes {
            self.conn
                .prepare_cached(&delete)
                .and_then(|mut s| s.execute([&key]))
                .map_err(storage)?;
        }
        Ok(())
    }

    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError> {
        let mut sql = format!("SELECT key, doc FROM {} WHERE ", self.physical(table));
        let mut args = Vec::new();
        field_condition(&mut sql, &mut args, field, value);
        sql.push_str(" ORDER BY key");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            })
            .map_err(storage)
    }
}

impl Documents for SqliteReadModels {
    fn ensure_tables(&self, tables: &[TableSpec]) -> Result<(), ReadModelError> {
        let conn = self.writer();
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for spec in tables {
            validate_identifier(spec.name)?;
            for field in spec.indexed {
                validate_identifier(field)?;
            }
            let indexed: Vec<String> = spec.indexed.iter().map(|f| (*f).to_owned()).collect();
            create_table(&conn, &live(spec.name), &indexed)?;
            let shadow = declared.get(spec.name).is_some_and(|t| t.shadow);
            declared.insert(spec.name.to_owned(), TableState { indexed, shadow });
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
        self.run_transaction(fence, consumer, checkpoint, false, f)
    }

    fn get(&self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        validate_identifier(table)?;
        let sql = format!("SELECT doc FROM {} WHERE key = ?1", self.current_physical(table)?);
        let key = key.to_owned();
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached(&sql)
                    .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
                    .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }

    fn list(&self, query: &ListQuery) -> Result<Vec<(String, String)>, ReadModelError> {
        validate_identifier(&query.table)?;
        let declared = self.declared();
        let fields = &declared
            .get(&query.table)
            .ok_or_else(|| ReadModelError::Unknown(query.table.clone()))?
            .indexed;
        let mut sql =
            format!("SELECT key, doc FROM {} WHERE 1 = 1", self.current_physical(&query.table)?);
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        for (field, value) in &query.filters {
            if !fields.contains(field) {
                return Err(ReadModelError::Unknown(format!(
                    "{}.{field} is not indexed",
                    query.table
                )));
            }
            sql.push_str(" AND ");
            field_condition(&mut sql, &mut args, field, value);
        }
        if let Some(after) = &query.after {
            args.push(rusqlite::types::Value::Text(after.clone()));
            let _ = write!(sql, " AND key > ?{}", args.len());
        }
        let _ = write!(sql, " ORDER BY key LIMIT {}", query.limit);
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached(&sql)
                    .and_then(|mut s| {
                        s.query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect()
                    })
                    .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }
}

impl Checkpoints for SqliteReadModels {
    fn checkpoint(&self, consumer: &str) -> Result<u64, ReadModelError> {
        let consumer = consumer.to_owned();
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached("SELECT position FROM checkpoints WHERE consumer = ?1")
                    .and_then(|mut s| s.query_row([&consumer], |r| r.get::<_, i64>(0)).optional())
                    .map(|p| p.unwrap_or(0) as u64)
                    .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }

    fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadModelError> {
        let conn = self.writer();
        let mut statement = conn
            .prepare("SELECT consumer, position FROM checkpoints ORDER BY consumer")
            .map_err(storage)?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // The directory's lock admits one process, and it is this one: no other writer
        // to watch.
        None
    }
}

impl DeadLetters for SqliteReadModels {
    fn park(
        &self,
        fence: &Fence,
        checkpoint: u64,
        letter: &DeadLetter,
    ) -> Result<i64, ReadModelError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, &letter.projection)?;
        tx.prepare_cached(
            "INSERT INTO dead_letters (consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                letter.projection,
                letter.position as i64,
                letter.aggregate_id,
                letter.event_type,
                letter.error,
                letter.attempts,
                letter.first_failed_at.as_micros(),
                letter.last_failed_at.as_micros()
            ])
        })
        .map_err(storage)?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO checkpoints (consumer, position) VALUES (?1, ?2)
             ON CONFLICT (consumer) DO UPDATE SET position = max(position, excluded.position)",
        )
        .and_then(|mut s| s.execute(rusqlite::params![letter.projection, checkpoint as i64]))
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(id)
    }

    fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, ReadModelError> {
        let consumer = consumer.map(str::to_owned);
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached(
                    "SELECT id, consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us
                     FROM dead_letters WHERE ?1 IS NULL OR consumer = ?1 ORDER BY consumer, position",
                )
                .and_then(|mut s| s.query_map([&consumer], dead_letter_from_row)?.collect())
                .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }

    fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<&DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let consumer = consumer.map(str::to_owned);
        // A consumer name sorts after "" and every position and id after -1: no cursor is
        // the cursor before everything.
        let (after_consumer, after_position, after_id) = after
            .map_or((String::new(), -1, -1), |c| (c.consumer.clone(), c.position as i64, c.id));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached(
                    "SELECT id, consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us
                     FROM dead_letters WHERE (?1 IS NULL OR consumer = ?1) AND (consumer, position, id) > (?2, ?3, ?4)
                     ORDER BY consumer, position, id LIMIT ?5",
                )
                .and_then(|mut s| {
                    s.query_map(
                        rusqlite::params![consumer, after_consumer, after_position, after_id, limit],
                        dead_letter_from_row,
                    )?
                    .collect()
                })
                .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }

    fn resolve_dead_letter(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let tables = self.declared();
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, consumer)?;
        let mut txn = WriteBehind::new(Txn { conn: &tx, tables: &tables, shadow_mode: false });
        f(&mut txn)?;
        txn.flush()?;
        let deleted = tx
            .execute(
                "DELETE FROM dead_letters WHERE id = ?1 AND consumer = ?2",
                rusqlite::params![id, consumer],
            )
            .map_err(storage)?;
        if deleted == 0 {
            // Dropping `tx` rolls `f`'s changes back: the letter was resolved meanwhile.
            return Err(ReadModelError::NoSuchDeadLetter(id));
        }
        tx.commit().map_err(storage)
    }

    fn dead_letter_failed(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        error: &str,
    ) -> Result<(), ReadModelError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, consumer)?;
        let updated = tx
            .execute(
                "UPDATE dead_letters SET attempts = attempts + 1, error = ?2, last_failed_us = ?3
                 WHERE id = ?1 AND consumer = ?4",
                rusqlite::params![id, error, Timestamp::now().as_micros(), consumer],
            )
            .map_err(storage)?;
        if updated == 0 {
            return Err(ReadModelError::NoSuchDeadLetter(id));
        }
        tx.commit().map_err(storage)
    }
}

impl Generations for SqliteReadModels {
    fn create_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        tables: &[&str],
    ) -> Result<(), ReadModelError> {
        let mut conn = self.writer();
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // All the shadows or none: a rebuild never swaps in half a read model.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, consumer)?;
        for name in tables {
            let state = declared
                .get(*name)
                .ok_or_else(|| ReadModelError::Unknown(format!("table {name}")))?;
            // A leftover of an interrupted rebuild (this process's, or one that crashed
            // before its swap) is dropped: the rebuild starts from 0.
            tx.execute_batch(&format!("DROP TABLE IF EXISTS {};", shadow(name)))
                .map_err(storage)?;
            create_table(&tx, &shadow(name), &state.indexed)?;
        }
        tx.commit().map_err(storage)?;
        for name in tables {
            if let Some(state) = declared.get_mut(*name) {
                state.shadow = true;
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
        self.run_transaction(fence, consumer, checkpoint, true, f)
    }

    fn swap_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        live_consumer: &str,
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        let mut conn = self.writer();
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, live_consumer)?;
        for name in tables {
            let state = declared
                .get(*name)
                .ok_or_else(|| ReadModelError::Unknown(format!("table {name}")))?;
            // Without a shadow of this process's rebuild, there is no table to make live (or
            // only a crashed rebuild's leftover, which is not this rebuild's).
            if !state.shadow {
                return Err(ReadModelError::Unknown(format!("shadow of table {name}")));
            }
            // DDL is transactional in SQLite: readers see the old table or the new one,
            // and a crash leaves the old one live with its checkpoint.
            let (old, new) = (live(name), shadow(name));
            tx.execute_batch(&format!(
                "DROP TABLE IF EXISTS {old}; ALTER TABLE {new} RENAME TO {old};"
            ))
            .map_err(storage)?;
        }
        // A rebuild that never committed a checkpoint rebuilt nothing: the live consumer
        // starts from 0, as the tables it now reads are empty.
        tx.execute(
            "INSERT INTO checkpoints (consumer, position)
             VALUES (?1, coalesce((SELECT position FROM checkpoints WHERE consumer = ?2), 0))
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
            [live_consumer, shadow_consumer],
        )
        .map_err(storage)?;
        tx.execute("DELETE FROM checkpoints WHERE consumer = ?1", [shadow_consumer])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        for name in tables {
            if let Some(state) = declared.get_mut(*name) {
                state.shadow = false;
            }
        }
        Ok(())
    }

    fn abort_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        let mut conn = self.writer();
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        check_fence(&tx, fence, shadow_consumer)?;
        for name in tables {
            if declared.contains_key(*name) {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {};", shadow(name)))
                    .map_err(storage)?;
            }
        }
        tx.execute("DELETE FROM checkpoints WHERE consumer = ?1", [shadow_consumer])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        for name in tables {
            if let Some(state) = declared.get_mut(*name) {
                state.shadow = false;
            }
        }
        Ok(())
    }

    fn projection_version(&self, name: &str) -> Result<Option<u32>, ReadModelError> {
        self.writer()
            .query_row("SELECT version FROM projection_versions WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(storage)
    }

    fn set_projection_version(&self, name: &str, version: u32) -> Result<(), ReadModelError> {
        self.writer()
            .execute(
                "INSERT INTO projection_versions (name, version) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                rusqlite::params![name, version],
            )
            .map(|_| ())
            .map_err(storage)
    }
}

/// One process owns the data directory (its lock refuses a second), so that process
/// leads every consumer: there is no one to hand a consumer over to. Terms still count
/// (the `leases` table), so that a write of a term this process gave up is refused.
impl Leases for SqliteReadModels {
    fn begin_term(
        &self,
        consumer: &str,
        issuer: LeaseIssuer<'_>,
    ) -> Result<Option<Fence>, ReadModelError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(epoch) = held.get(consumer) {
            return Ok(Some(Fence::issued(consumer, *epoch, issuer)));
        }
        let epoch: i64 = self
            .writer()
            .query_row(
                "INSERT INTO leases (consumer, epoch) VALUES (?1, 1)
                 ON CONFLICT (consumer) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                [consumer],
                |r| r.get(0),
            )
            .map_err(storage)?;
        held.insert(consumer.to_owned(), epoch as u64);
        Ok(Some(Fence::issued(consumer, epoch as u64, issuer)))
    }

    fn leads(&self, _consumer: &str) -> bool {
        true
    }

    fn resign(&self, consumer: &str) {
        // The term ends now, not at the next `try_lead`: a write of it still in flight (a
        // cancelled rebuild's batch) is refused from here on.
        // Only this term: a newer one (another handle on the directory took the consumer
        // since) is not this handle's to end.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(epoch) = held.remove(consumer) {
            let ended = self.writer().execute(
                "UPDATE leases SET epoch = epoch + 1 WHERE consumer = ?1 AND epoch = ?2",
                rusqlite::params![consumer, epoch as i64],
            );
            if let Err(e) = ended {
                tracing::warn!(consumer, error = %e, "cannot end the leadership term");
            }
        }
    }

    fn live_members(&self) -> Result<usize, ReadModelError> {
        Ok(1)
    }
}

impl SchemaStore for SqliteReadModels {
    fn schemas(&self) -> Result<Vec<(String, u32, String)>, ReadModelError> {
        let conn = self.writer();
        let mut stmt = conn
            .prepare("SELECT event_type, version, schema FROM event_schemas ORDER BY event_type, version")
            .map_err(storage)?;
        let rows =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: &str,
    ) -> Result<bool, ReadModelError> {
        self.writer()
            .execute(
                "INSERT INTO event_schemas (event_type, version, schema) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                rusqlite::params![event_type, version, schema],
            )
            .map(|n| n == 1)
            .map_err(storage)
    }
}

fn dead_letter_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        projection: r.get(1)?,
        position: r.get::<_, i64>(2)? as u64,
        aggregate_id: r.get(3)?,
        event_type: r.get(4)?,
        error: r.get(5)?,
        attempts: r.get(6)?,
        first_failed_at: Timestamp::from_micros(r.get(7)?),
        last_failed_at: Timestamp::from_micros(r.get(8)?),
    })
}

/// Snapshots live beside the read models: derived data, never the event log's write lock.
impl SnapshotStore for SqliteReadModels {
    fn load(&self, aggregate_id: &str) -> Result<Option<Snapshot>, ReadModelError> {
        let id = aggregate_id.to_owned();
        self.readers.run_here(
            move |conn| {
                conn.prepare_cached(
                    "SELECT aggregate_type, snapshot_version, version, position, timestamp_us, state
                     FROM snapshots WHERE aggregate_id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&id], |r| {
                        Ok(Snapshot {
                            aggregate_id: id.clone(),
                            aggregate_type: r.get(0)?,
                            snapshot_version: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                            position: r.get::<_, i64>(3)? as u64,
                            timestamp: Timestamp::from_micros(r.get(4)?),
                            state: r.get(5)?,
                        })
                    })
                    .optional()
                })
                .map_err(storage)
            },
            ReadModelError::Storage,
        )
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), ReadModelError> {
        let conn = self.writer();
        // Never replace a newer snapshot with an older one (two loads may race).
        conn.prepare_cached(
            "INSERT INTO snapshots (aggregate_id, aggregate_type, snapshot_version, version, position, timestamp_us, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (aggregate_id) DO UPDATE SET
                 aggregate_type = excluded.aggregate_type, snapshot_version = excluded.snapshot_version,
                 version = excluded.version, position = excluded.position,
                 timestamp_us = excluded.timestamp_us, state = excluded.state
             WHERE excluded.version >= snapshots.version OR excluded.snapshot_version != snapshots.snapshot_version",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                snapshot.aggregate_id,
                snapshot.aggregate_type,
                snapshot.snapshot_version,
                snapshot.version as i64,
                snapshot.position as i64,
                snapshot.timestamp.as_micros(),
                snapshot.state
            ])
        })
        .map(|_| ())
        .map_err(storage)
    }

    fn forget(&self, aggregate_id: &str) -> Result<(), ReadModelError> {
        self.writer()
            .execute("DELETE FROM snapshots WHERE aggregate_id = ?1", [aggregate_id])
            .map(|_| ())
            .map_err(storage)
    }

    fn drop_past(&self, head: u64) -> Result<Vec<String>, ReadModelError> {
        let conn = self.writer();
        let mut statement = conn
            .prepare("DELETE FROM snapshots WHERE position > ?1 RETURNING aggregate_id")
            .map_err(storage)?;
        let rows = statement
            .query_map([head.min(i64::MAX as u64) as i64], |r| r.get(0))
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)
    }
}

mod subject_keys;
mod tokens;
