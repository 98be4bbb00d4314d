//! Read models, checkpoints, dead letters, snapshots and leadership on PostgreSQL.
//!
//! Each logical table `t` is `rm_t (key text PRIMARY KEY, doc text)` with an expression
//! index per declared field; a rebuild writes `rm_t__shadow` and the swap renames it into
//! place in one transaction (DDL is transactional here), so every process sees the new
//! model at once. A consumer this process leads writes through the dedicated connection
//! that holds its leadership lock: if that session is gone, so is the lock, and the write
//! fails instead of racing the new leader.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_core::readmodel::write_behind::{TxnStorage, WriteBehind};
use cairn_core::readmodel::{
    Checkpoints, DeadLetter, DeadLetterCursor, DeadLetters, Documents, Fence, Generations,
    LeaseIssuer, Leases, ListQuery, ReadModelError, SchemaStore, TableSpec, TxnFn, leadership_key,
    validate_identifier,
};
use cairn_core::snapshot::{Snapshot, SnapshotStore};
use cairn_core::timestamp::Timestamp;
use deadpool_postgres::{ClientWrapper, Transaction};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

use crate::pool::{Shared, db_error};

/// A failure of the database is the storage's (retried); a document or value the
/// database refuses (SQLSTATE class 22, data exception, e.g. `\u0000` in a document of an
/// indexed table; class 23, integrity) is the event's: retried, it would fail forever.
fn storage(e: &tokio_postgres::Error) -> ReadModelError {
    match e.as_db_error().map(|d| d.code().code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => {
            ReadModelError::Rejected(db_error(e))
        }
        _ => ReadModelError::Storage(db_error(e)),
    }
}

fn live(name: &str) -> String {
    format!("rm_{name}")
}

fn shadow(name: &str) -> String {
    format!("rm_{name}__shadow")
}

fn create_table_sql(table: &str, indexed: &[String]) -> String {
    let mut ddl =
        format!("CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, doc text NOT NULL);");
    for field in indexed {
        let _ = write!(
            ddl,
            "CREATE INDEX IF NOT EXISTS {table}_{field} ON {table} (((doc::jsonb) ->> '{field}'), key);"
        );
    }
    ddl
}

#[derive(Debug, Clone)]
struct TableState {
    indexed: Vec<String>,
    shadow: bool,
}

/// A consumer this process leads: the session holding its advisory lock, and the term it
/// began when it took it.
struct Leader {
    client: ClientWrapper,
    fence: Fence,
}

/// Read models on PostgreSQL (every read-model trait, and [`SnapshotStore`]).
pub struct PgReadModels {
    shared: Arc<Shared>,
    tables: Mutex<HashMap<String, TableState>>,
    leaders: Mutex<HashMap<String, Arc<Mutex<Leader>>>>,
    /// Sessions that tried to lead and may try again (one connection per waiting consumer,
    /// not one per attempt).
    candidates: Mutex<HashMap<String, ClientWrapper>>,
}

/// Either a pooled connection (writes no consumer owns) or a leader's session.
enum Conn {
    Pooled(Box<deadpool_postgres::Object>),
    Leader(Arc<Mutex<Leader>>),
}

impl PgReadModels {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            tables: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            candidates: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the shadows of `tables` (swapped in or abandoned).
    fn shadows_done(&self, tables: &[&str]) {
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for name in tables {
            if let Some(state) = declared.get_mut(*name) {
                state.shadow = false;
            }
        }
    }

    fn declared(&self) -> HashMap<String, TableState> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn pooled(&self) -> Result<deadpool_postgres::Object, ReadModelError> {
        self.shared.wait(self.shared.pool.get()).map_err(|e| ReadModelError::Storage(e.to_string()))
    }

    /// The session a consumer's writes go through: the one holding its leadership lock,
    /// and never a pooled connection. Without that session the write could land after
    /// another process took the consumer over (two leaders applying the same events).
    fn conn_for(&self, fence: &Fence, consumer: &str) -> Result<Conn, ReadModelError> {
        fence.covers(consumer)?;
        let key = leadership_key(consumer);
        let leader = self.leaders.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        match leader {
            Some(l) if !l.lock().unwrap_or_else(PoisonError::into_inner).client.is_closed() => {
                Ok(Conn::Leader(l))
            }
            Some(_) => {
                self.leaders.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
                Err(ReadModelError::NotLeader(key.to_owned()))
            }
            None => Err(ReadModelError::NotLeader(key.to_owned())),
        }
    }

    /// Runs `body` in a transaction on `conn`.
    fn in_transaction<R>(
        &self,
        conn: Conn,
        body: impl FnOnce(&Self, &Transaction<'_>) -> Result<R, ReadModelError>,
    ) -> Result<R, ReadModelError> {
        match conn {
            Conn::Pooled(mut obj) => {
                let client: &mut ClientWrapper = &mut obj;
                self.run_tx(client, body)
            }
            Conn::Leader(l) => {
                let mut guard = l.lock().unwrap_or_else(PoisonError::into_inner);
                self.run_tx(&mut guard.client, body)
            }
        }
    }

    fn run_tx<R>(
        &self,
        client: &mut ClientWrapper,
        body: impl FnOnce(&Self, &Transaction<'_>) -> Result<R, ReadModelError>,
    ) -> Result<R, ReadModelError> {
        // READ COMMITTED whatever the database's default: the checkpoint `greatest(...)`
        // and the leader's read-modify-write of documents must see the latest commits.
        let tx = self
            .shared
            .wait(
                client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
                    .start(),
            )
            .map_err(|e| storage(&e))?;
        let result = body(self, &tx)?;
        self.shared.wait(tx.commit()).map_err(|e| storage(&e))?;
        Ok(result)
    }

    fn exec(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ReadModelError> {
        self.shared
            .wait(async {
                let stmt = tx.prepare_cached(sql).await?;
                tx.execute(&stmt, args).await
            })
            .map_err(|e| storage(&e))
    }

    /// Refuses the transaction unless `fence` is the consumer's current term. `FOR SHARE`
    /// holds the lease row until the commit: a new term's `UPDATE` of the epoch waits for
    /// this write to end, so no write of an old term lands after a new term began.
    fn check_fence(&self, tx: &Transaction<'_>, fence: &Fence) -> Result<(), ReadModelError> {
        let current: Option<i64> = self
            .shared
            .wait(async {
                let stmt = tx
                    .prepare_cached("SELECT epoch FROM leases WHERE consumer = $1 FOR SHARE")
                    .await?;
                tx.query_opt(&stmt, &[&fence.consumer()]).await
            })
            .map_err(|e| storage(&e))?
            .map(|r| r.get(0));
        fence.check(current.map(|e| e as u64))
    }

    fn set_checkpoint(
        &self,
        tx: &Transaction<'_>,
        consumer: &str,
        position: u64,
    ) -> Result<(), ReadModelError> {
        // The checkpoint and its notification (delivered at commit) in one statement.
        let payload = format!("{consumer}\t{position}");
        self.exec(
            tx,
            "WITH saved AS (INSERT INTO checkpoints (consumer, position) VALUES ($1, $2)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position RETURNING 1)
             SELECT pg_notify($3, $4) FROM saved",
            &[&consumer, &(position as i64), &self.shared.checkpoints_channel, &payload],
        )?;
        Ok(())
    }

    fn run_transaction(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: Option<u64>,
        (shadow_mode, derived): (bool, bool),
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let tables = self.declared();
        let conn = self.conn_for(fence, consumer)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            if derived {
                // Re-derived from the log if a server crash loses it: its effects and its
                // checkpoint go together, and the log (committed synchronously) still holds
                // the events. So it need not wait for its own WAL flush; WAL order keeps it
                // behind every synchronous commit (leadership terms, dead letters, process
                // manager state) that follows it. docs/design/consumers.md, "Durability of
                // projection batches".
                this.shared
                    .wait(tx.batch_execute("SET LOCAL synchronous_commit = off"))
                    .map_err(|e| storage(&e))?;
            }
            let mut txn = WriteBehind::new(Txn { rm: this, tx, tables: &tables, shadow_mode });
            f(&mut txn)?;
            txn.flush()?;
            if let Some(position) = checkpoint {
                this.set_checkpoint(tx, consumer, position)?;
            }
            Ok(())
        })
    }

    fn query_rows(
        &self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, ReadModelError> {
        let client = self.pooled()?;
        self.shared
            .wait(async {
                let stmt = client.prepare_cached(sql).await?;
                client.query(&stmt, args).await
            })
            .map_err(|e| storage(&e))
    }

    /// Wakes on every checkpoint another process (or this one) commits.
    #[must_use]
    pub fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        self.shared.checkpoints.subscribe()
    }
}

/// What a transaction reads and writes on PostgreSQL, behind the shared write-behind
/// buffer: each table's buffered changes in one multi-row statement.
struct Txn<'a> {
    rm: &'a PgReadModels,
    tx: &'a Transaction<'a>,
    tables: &'a HashMap<String, TableState>,
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
        let sql = format!("SELECT doc FROM {} WHERE key = $1", self.physical(table));
        let tx = self.tx;
        self.rm
            .shared
            .wait(async {
                let stmt = tx.prepare_cached(&sql).await?;
                tx.query_opt(&stmt, &[&key]).await
            })
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| storage(&e))
    }

    fn read_many(
        &mut self,
        table: &str,
        keys: &[&str],
    ) -> Result<Option<Vec<(String, String)>>, ReadModelError> {
        let sql = format!("SELECT key, doc FROM {} WHERE key = ANY($1)", self.physical(table));
        let tx = self.tx;
        let rows = self
            .rm
            .shared
            .wait(async {
                let stmt = tx.prepare_cached(&sql).await?;
                tx.query(&stmt, &[&keys]).await
            })
            .map_err(|e| storage(&e))?;
        Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    fn write(
        &mut self,
        table: &str,
        upserts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<(), ReadModelError> {
        let target = self.physical(table);
        let (keys, values): (Vec<String>, Vec<String>) = upserts.into_iter().unzip();
        let tx = self.tx;
        self.rm
            .shared
            .wait(async {
                if !keys.is_empty() {
                    let stmt = tx
                        .prepare_cached(&format!(
                            "INSERT INTO {target} (key, doc) SELECT * FROM unnest($1::text[], $2::text[])
                             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
                        ))
                        .await?;
                    tx.execute(&stmt, &[&keys, &values]).await?;
                }
                if !deletes.is_empty() {
                    let stmt =
                        tx.prepare_cached(&format!("DELETE FROM {target} WHERE key = ANY($1)")).await?;
                    tx.execute(&stmt, &[&deletes]).await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            })
            .map_err(|e| storage(&e))
    }

    fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<(String, String)>, ReadModelError> {
        let sql = format!(
            "SELECT key, doc FROM {} WHERE ((doc::jsonb) ->> '{field}') = $1 ORDER BY key",
            self.physical(table)
        );
        let tx = self.tx;
        self.rm
            .shared
            .wait(async {
                let stmt = tx.prepare_cached(&sql).await?;
                tx.query(&stmt, &[&value]).await
            })
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .map_err(|e| storage(&e))
    }
}

impl Documents for PgReadModels {
    fn ensure_tables(&self, tables: &[TableSpec]) -> Result<(), ReadModelError> {
        for spec in tables {
            validate_identifier(spec.name)?;
            for field in spec.indexed {
                validate_identifier(field)?;
            }
        }
        let conn = Conn::Pooled(Box::new(self.pooled()?));
        self.in_transaction(conn, |this, tx| {
            // Concurrent CREATE TABLE IF NOT EXISTS can still clash in the catalog.
            this.exec(
                tx,
                "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/cairn/ddl', 0))",
                &[],
            )?;
            for spec in tables {
                let indexed: Vec<String> = spec.indexed.iter().map(|f| (*f).to_owned()).collect();
                this.shared
                    .wait(tx.batch_execute(&create_table_sql(&live(spec.name), &indexed)))
                    .map_err(|e| storage(&e))?;
            }
            Ok(())
        })?;
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for spec in tables {
            declared.insert(
                spec.name.to_owned(),
                TableState {
                    indexed: spec.indexed.iter().map(|f| (*f).to_owned()).collect(),
                    shadow: false,
                },
            );
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
        self.run_transaction(fence, consumer, checkpoint, (false, false), f)
    }

    fn transact_derived(
        &self,
        fence: &Fence,
        consumer: &str,
        checkpoint: u64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        self.run_transaction(fence, consumer, Some(checkpoint), (false, true), f)
    }

    fn get(&self, table: &str, key: &str) -> Result<Option<String>, ReadModelError> {
        validate_identifier(table)?;
        let sql = format!("SELECT doc FROM {} WHERE key = $1", live(table));
        Ok(self.query_rows(&sql, &[&key])?.first().map(|r| r.get(0)))
    }

    fn list(&self, query: &ListQuery) -> Result<Vec<(String, String)>, ReadModelError> {
        validate_identifier(&query.table)?;
        let declared = self.declared();
        let fields = &declared
            .get(&query.table)
            .ok_or_else(|| ReadModelError::Unknown(query.table.clone()))?
            .indexed;
        let mut sql = format!("SELECT key, doc FROM {} WHERE true", live(&query.table));
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (field, value) in &query.filters {
            if !fields.contains(field) {
                return Err(ReadModelError::Unknown(format!(
                    "{}.{field} is not indexed",
                    query.table
                )));
            }
            args.push(value);
            let _ = write!(sql, " AND ((doc::jsonb) ->> '{field}') = ${}", args.len());
        }
        if let Some(after) = &query.after {
            args.push(after);
            let _ = write!(sql, " AND key > ${}", args.len());
        }
        let _ = write!(sql, " ORDER BY key LIMIT {}", query.limit);
        Ok(self.query_rows(&sql, &args)?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl Checkpoints for PgReadModels {
    fn checkpoint(&self, consumer: &str) -> Result<u64, ReadModelError> {
        Ok(self
            .query_rows("SELECT position FROM checkpoints WHERE consumer = $1", &[&consumer])?
            .first()
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadModelError> {
        Ok(self
            .query_rows("SELECT consumer, position FROM checkpoints ORDER BY consumer", &[])?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.checkpoint_changes())
    }
}

impl DeadLetters for PgReadModels {
    fn park(
        &self,
        fence: &Fence,
        checkpoint: u64,
        letter: &DeadLetter,
    ) -> Result<i64, ReadModelError> {
        let conn = self.conn_for(fence, &letter.projection)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            let id: i64 = this
                .shared
                .wait(tx.query_one(
                    "INSERT INTO dead_letters (consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &letter.projection,
                        &(letter.position as i64),
                        &letter.aggregate_id,
                        &letter.event_type,
                        &letter.error,
                        &(letter.attempts as i32),
                        &letter.first_failed_at.as_micros(),
                        &letter.last_failed_at.as_micros(),
                    ],
                ))
                .map_err(|e| storage(&e))?
                .get(0);
            this.exec(
                tx,
                "INSERT INTO checkpoints (consumer, position) VALUES ($1, $2)
                 ON CONFLICT (consumer) DO UPDATE SET position = greatest(checkpoints.position, excluded.position)",
                &[&letter.projection, &(checkpoint as i64)],
            )?;
            Ok(id)
        })
    }

    fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, ReadModelError> {
        let rows = self.query_rows(
            "SELECT id, consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us
             FROM dead_letters WHERE $1::text IS NULL OR consumer = $1 ORDER BY consumer, position",
            &[&consumer],
        )?;
        Ok(rows.iter().map(letter_from_row).collect())
    }

    fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<&DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        // No cursor is the cursor before everything ("" and -1 sort first).
        let (after_consumer, after_position, after_id) = after
            .map_or((String::new(), -1, -1), |c| (c.consumer.clone(), c.position as i64, c.id));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query_rows(
            "SELECT id, consumer, position, aggregate_id, event_type, error, attempts, first_failed_us, last_failed_us
             FROM dead_letters WHERE ($1::text IS NULL OR consumer = $1)
               AND (consumer COLLATE \"C\", position, id) > ($2::text COLLATE \"C\", $3::bigint, $4::bigint)
             ORDER BY consumer COLLATE \"C\", position, id LIMIT $5",
            &[&consumer, &after_consumer, &after_position, &after_id, &limit],
        )?;
        Ok(rows.iter().map(letter_from_row).collect())
    }

    fn resolve_dead_letter(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError> {
        let tables = self.declared();
        let conn = self.conn_for(fence, consumer)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            let mut txn =
                WriteBehind::new(Txn { rm: this, tx, tables: &tables, shadow_mode: false });
            f(&mut txn)?;
            txn.flush()?;
            let deleted = this.exec(
                tx,
                "DELETE FROM dead_letters WHERE id = $1 AND consumer = $2",
                &[&id, &consumer],
            )?;
            if deleted == 0 {
                // Returning an error rolls `f`'s changes back: the letter was resolved meanwhile.
                return Err(ReadModelError::NoSuchDeadLetter(id));
            }
            Ok(())
        })
    }

    fn dead_letter_failed(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        error: &str,
    ) -> Result<(), ReadModelError> {
        let conn = self.conn_for(fence, consumer)?;
        let updated = self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            this.exec(
                tx,
                "UPDATE dead_letters SET attempts = attempts + 1, error = $2, last_failed_us = $3
                 WHERE id = $1 AND consumer = $4",
                &[&id, &error, &Timestamp::now().as_micros(), &consumer],
            )
        })?;
        if updated == 0 { Err(ReadModelError::NoSuchDeadLetter(id)) } else { Ok(()) }
    }
}

impl Generations for PgReadModels {
    fn create_shadow(
        &self,
        fence: &Fence,
        consumer: &str,
        tables: &[&str],
    ) -> Result<(), ReadModelError> {
        let declared = self.declared();
        let conn = self.conn_for(fence, consumer)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            for name in tables {
                let state = declared
                    .get(*name)
                    .ok_or_else(|| ReadModelError::Unknown(format!("table {name}")))?;
                let ddl = format!(
                    "DROP TABLE IF EXISTS {}; {}",
                    shadow(name),
                    create_table_sql(&shadow(name), &state.indexed)
                );
                this.shared.wait(tx.batch_execute(&ddl)).map_err(|e| storage(&e))?;
            }
            Ok(())
        })?;
        let mut declared = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
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
        self.run_transaction(fence, consumer, checkpoint, (true, false), f)
    }

    fn swap_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        live_consumer: &str,
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        let declared = self.declared();
        let conn = self.conn_for(fence, live_consumer)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            for name in tables {
                let state = declared
                    .get(*name)
                    .ok_or_else(|| ReadModelError::Unknown(format!("table {name}")))?;
                let (old, new) = (live(name), shadow(name));
                let mut ddl = format!(
                    "DROP TABLE IF EXISTS {old}; ALTER TABLE {new} RENAME TO {old};
                     ALTER INDEX IF EXISTS {new}_pkey RENAME TO {old}_pkey;"
                );
                for field in &state.indexed {
                    let _ =
                        write!(ddl, "ALTER INDEX IF EXISTS {new}_{field} RENAME TO {old}_{field};");
                }
                this.shared.wait(tx.batch_execute(&ddl)).map_err(|e| storage(&e))?;
            }
            let position: i64 = this
                .shared
                .wait(tx.query_opt(
                    "SELECT position FROM checkpoints WHERE consumer = $1",
                    &[&shadow_consumer],
                ))
                .map_err(|e| storage(&e))?
                .map_or(0, |r| r.get(0));
            this.set_checkpoint(tx, live_consumer, position as u64)?;
            this.exec(tx, "DELETE FROM checkpoints WHERE consumer = $1", &[&shadow_consumer])?;
            Ok(())
        })?;
        self.shadows_done(tables);
        Ok(())
    }

    fn abort_shadow(
        &self,
        fence: &Fence,
        tables: &[&str],
        shadow_consumer: &str,
    ) -> Result<(), ReadModelError> {
        // A deposed leader must not drop the shadow its successor may be writing.
        let conn = self.conn_for(fence, shadow_consumer)?;
        self.in_transaction(conn, |this, tx| {
            this.check_fence(tx, fence)?;
            for name in tables {
                this.shared
                    .wait(tx.batch_execute(&format!("DROP TABLE IF EXISTS {};", shadow(name))))
                    .map_err(|e| storage(&e))?;
            }
            this.exec(tx, "DELETE FROM checkpoints WHERE consumer = $1", &[&shadow_consumer])?;
            Ok(())
        })?;
        self.shadows_done(tables);
        Ok(())
    }

    fn projection_version(&self, name: &str) -> Result<Option<u32>, ReadModelError> {
        Ok(self
            .query_rows("SELECT version FROM projection_versions WHERE name = $1", &[&name])?
            .first()
            .map(|r| r.get::<_, i32>(0) as u32))
    }

    fn set_projection_version(&self, name: &str, version: u32) -> Result<(), ReadModelError> {
        self.query_rows(
            "INSERT INTO projection_versions (name, version) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version RETURNING version",
            &[&name, &(version as i32)],
        )
        .map(|_| ())
    }
}

impl Leases for PgReadModels {
    fn begin_term(
        &self,
        consumer: &str,
        issuer: LeaseIssuer<'_>,
    ) -> Result<Option<Fence>, ReadModelError> {
        // The map's lock is released before the session's: `leads()` takes the map's lock
        // from async code and must not wait for a transaction on the session.
        let held =
            self.leaders.lock().unwrap_or_else(PoisonError::into_inner).get(consumer).cloned();
        if let Some(l) = held {
            let leader = l.lock().unwrap_or_else(PoisonError::into_inner);
            if !leader.client.is_closed() {
                return Ok(Some(leader.fence.clone()));
            }
        }
        let reused = self
            .candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(consumer)
            .filter(|c| !c.is_closed());
        let client = match reused {
            Some(c) => c,
            None => self.shared.wait(self.shared.dedicated()).map_err(|e| storage(&e))?,
        };
        let name = format!("lead/{consumer}");
        let acquired: bool = self
            .shared
            .wait(client.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/cairn/' || $1, 0))",
                &[&name],
            ))
            .map_err(|e| storage(&e))?
            .get(0);
        if !acquired {
            self.candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(consumer.to_owned(), client);
            return Ok(None);
        }
        // A new term, begun while holding the lock: every write of an earlier term (this
        // process's or another's) now fails its fence check.
        let begun = self.shared.wait(client.query_one(
            "INSERT INTO leases (consumer, epoch) VALUES ($1, 1)
             ON CONFLICT (consumer) DO UPDATE SET epoch = leases.epoch + 1 RETURNING epoch",
            &[&consumer],
        ));
        let epoch: i64 = match begun {
            Ok(row) => row.get(0),
            Err(e) => {
                // Without a recorded term there is no fence: give the lock back.
                let _ = self.shared.wait(client.query_one(
                    "SELECT pg_advisory_unlock(hashtextextended(current_schema() || '/cairn/' || $1, 0))",
                    &[&name],
                ));
                return Err(storage(&e));
            }
        };
        let fence = Fence::issued(consumer, epoch as u64, issuer);
        self.leaders.lock().unwrap_or_else(PoisonError::into_inner).insert(
            consumer.to_owned(),
            Arc::new(Mutex::new(Leader { client, fence: fence.clone() })),
        );
        Ok(Some(fence))
    }

    fn leads(&self, consumer: &str) -> bool {
        let leader =
            self.leaders.lock().unwrap_or_else(PoisonError::into_inner).get(consumer).cloned();
        leader.is_some_and(|l| match l.try_lock() {
            Ok(guard) => !guard.client.is_closed(),
            Err(std::sync::TryLockError::Poisoned(p)) => !p.into_inner().client.is_closed(),
            // A transaction is running on the session (e.g. a rebuild's shadow batch): it
            // is its own fence — it fails if the session is gone. Waiting here would block
            // an async worker for the length of that transaction.
            Err(std::sync::TryLockError::WouldBlock) => true,
        })
    }

    fn resign(&self, consumer: &str) {
        let leader = self.leaders.lock().unwrap_or_else(PoisonError::into_inner).remove(consumer);
        let Some(leader) = leader else { return };
        // Unlocked explicitly: dropping the session releases the lock only once the server
        // notices the closed connection, and until then nobody (this process included)
        // could take the consumer. Waits for a transaction running on the session.
        let guard = leader.lock().unwrap_or_else(PoisonError::into_inner);
        if !guard.client.is_closed() {
            let name = format!("lead/{consumer}");
            let unlocked = self.shared.wait(guard.client.query_one(
                "SELECT pg_advisory_unlock(hashtextextended(current_schema() || '/cairn/' || $1, 0))",
                &[&name],
            ));
            if let Err(e) = unlocked {
                // The session is dropped below: the server releases the lock when it sees.
                tracing::debug!(consumer, error = %db_error(&e), "cannot unlock; dropping the session");
            }
        }
    }

    fn live_members(&self) -> Result<usize, ReadModelError> {
        // Alive = refreshed within three poll intervals (and at least 3 s).
        let window = (self.shared.options.poll_interval * 3).max(std::time::Duration::from_secs(3));
        let since = Timestamp::now().as_micros() - window.as_micros() as i64;
        let rows = self.query_rows("SELECT count(*) FROM members WHERE seen_us > $1", &[&since])?;
        Ok(rows.first().map_or(1, |r| r.get::<_, i64>(0) as usize).max(1))
    }
}

impl SchemaStore for PgReadModels {
    fn schemas(&self) -> Result<Vec<(String, u32, String)>, ReadModelError> {
        Ok(self
            .query_rows(
                "SELECT event_type, version, schema FROM event_schemas ORDER BY event_type, version",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i32>(1) as u32, r.get(2)))
            .collect())
    }

    fn put_schema(
        &self,
        event_type: &str,
        version: u32,
        schema: &str,
    ) -> Result<bool, ReadModelError> {
        Ok(!self
            .query_rows(
                "INSERT INTO event_schemas (event_type, version, schema) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING version",
                &[&event_type, &(version as i32), &schema],
            )?
            .is_empty())
    }
}

impl SnapshotStore for PgReadModels {
    fn load(&self, aggregate_id: &str) -> Result<Option<Snapshot>, ReadModelError> {
        Ok(self
            .query_rows(
                "SELECT aggregate_type, snapshot_version, version, position, timestamp_us, state
                 FROM snapshots WHERE aggregate_id = $1",
                &[&aggregate_id],
            )?
            .first()
            .map(|r| Snapshot {
                aggregate_id: aggregate_id.to_owned(),
                aggregate_type: r.get(0),
                snapshot_version: r.get::<_, i32>(1) as u32,
                version: r.get::<_, i64>(2) as u64,
                position: r.get::<_, i64>(3) as u64,
                timestamp: Timestamp::from_micros(r.get(4)),
                state: r.get(5),
            }))
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), ReadModelError> {
        // Never replace a newer snapshot with an older one (two loads may race).
        self.query_rows(
            "INSERT INTO snapshots (aggregate_id, aggregate_type, snapshot_version, version, position, timestamp_us, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (aggregate_id) DO UPDATE SET
                 aggregate_type = excluded.aggregate_type, snapshot_version = excluded.snapshot_version,
                 version = excluded.version, position = excluded.position,
                 timestamp_us = excluded.timestamp_us, state = excluded.state
             WHERE excluded.version >= snapshots.version OR excluded.snapshot_version <> snapshots.snapshot_version
             RETURNING 1",
            &[
                &snapshot.aggregate_id,
                &snapshot.aggregate_type,
                &(snapshot.snapshot_version as i32),
                &(snapshot.version as i64),
                &(snapshot.position as i64),
                &snapshot.timestamp.as_micros(),
                &snapshot.state,
            ],
        )
        .map(|_| ())
    }

    fn drop_past(&self, head: u64) -> Result<Vec<String>, ReadModelError> {
        Ok(self
            .query_rows(
                "DELETE FROM snapshots WHERE position > $1 RETURNING aggregate_id",
                &[&(head.min(i64::MAX as u64) as i64)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn forget(&self, aggregate_id: &str) -> Result<(), ReadModelError> {
        self.query_rows("DELETE FROM snapshots WHERE aggregate_id = $1", &[&aggregate_id])?;
        Ok(())
    }
}

mod subject_keys;
mod tokens;

/// A `dead_letters` row, in the column order every query of it selects.
fn letter_from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        projection: r.get(1),
        position: r.get::<_, i64>(2) as u64,
        aggregate_id: r.get(3),
        event_type: r.get(4),
        error: r.get(5),
        attempts: r.get::<_, i32>(6) as u32,
        first_failed_at: Timestamp::from_micros(r.get(7)),
        last_failed_at: Timestamp::from_micros(r.get(8)),
    }
}
