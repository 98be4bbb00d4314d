//! The on-disk schemas of the event log and of the read-model file, each versioned with
//! its own `PRAGMA user_version`.

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Version 1: the event log, and nothing else.
///
/// `position` is the rowid: the writer assigns it in commit order. A stream's version and
/// type are read from its last event through the `(aggregate_id, version)` index; there
/// is deliberately no separate stream table, which would cost a random page write per
/// append and could disagree with the log.
const V1: &str = "
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    aggregate_id   TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    timestamp_us   INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    UNIQUE (aggregate_id, version)
);
";

/// Version 2: command idempotency keys, written by the writer in the same transaction as
/// the events they produced (so a crash can never keep one without the other).
const V2: &str = "
CREATE TABLE idempotency_keys (
    key            TEXT    PRIMARY KEY,
    aggregate_id   TEXT    NOT NULL,
    first_version  INTEGER NOT NULL,
    last_version   INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    created_us     INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 3: an idempotency record also holds the request's fingerprint, its expiry and,
/// for a refused command, the refusal (JSON; the version columns are then 0). Rows of
/// version 2 become appended records that never expire.
const V3: &str = "
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
ALTER TABLE idempotency_keys ADD COLUMN expires_us INTEGER;
ALTER TABLE idempotency_keys ADD COLUMN refusal TEXT;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_us) WHERE expires_us IS NOT NULL;
";

/// Version 4: the stream lifecycle (`cairn_core::lifecycle`). A soft delete or tombstone
/// is a marker event in the stream; this partial index finds a stream's last marker in
/// one seek (it holds only markers, so it costs nothing on ordinary appends). Metadata
/// streams (`$$<id>`) are ordinary streams: nothing else is needed.
const V4: &str = "
CREATE INDEX events_markers ON events (aggregate_id, version)
    WHERE event_type IN ('$streamDeleted', '$streamTombstoned');
";

/// A stream's type, version and last event type: one seek to its last event.
pub const STREAM_HEAD_SQL: &str = "SELECT aggregate_type, version, event_type FROM events WHERE aggregate_id = ?1 ORDER BY version DESC LIMIT 1";

/// A stream's last delete or tombstone marker (through `events_markers`).
pub const STREAM_MARKER_SQL: &str = "SELECT max(version) FROM events WHERE aggregate_id = ?1 AND event_type IN ('$streamDeleted', '$streamTombstoned')";

/// The last event of a stream: its version and data (a metadata stream's metadata).
pub const STREAM_LAST_DATA_SQL: &str =
    "SELECT version, data FROM events WHERE aggregate_id = ?1 ORDER BY version DESC LIMIT 1";

/// Creates or upgrades the schema; refuses a file written by a newer Cairn.
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let current: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "the database has schema version {current}, this build knows up to {SCHEMA_VERSION}: use a newer cairn"
        ));
    }
    for (version, ddl) in [(1, V1), (2, V2), (3, V3), (4, V4)] {
        if current < version {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {ddl} PRAGMA user_version = {version}; COMMIT;"
            ))
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The read-model file's (`readmodels.db`) schema version this build writes.
pub const READ_MODEL_SCHEMA_VERSION: i64 = 4;

/// Read models, version 1: what every `readmodels.db` had before it was versioned (its
/// `user_version` was 0), so each statement is `IF NOT EXISTS`. It includes
/// `table_generations`, which version 2 folds away.
const RM_V1: &str = "
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    consumer TEXT PRIMARY KEY,
    epoch    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_schemas (
    event_type TEXT NOT NULL,
    version    INTEGER NOT NULL,
    schema     TEXT NOT NULL,
    PRIMARY KEY (event_type, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS table_generations (
    name       TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projection_versions (
    name    TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY,
    consumer        TEXT NOT NULL,
    position        INTEGER NOT NULL,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    error           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_us INTEGER NOT NULL,
    last_failed_us  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_consumer ON dead_letters (consumer, position);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id     TEXT PRIMARY KEY,
    aggregate_type   TEXT NOT NULL,
    snapshot_version INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    position         INTEGER NOT NULL,
    timestamp_us     INTEGER NOT NULL,
    state            TEXT NOT NULL
) WITHOUT ROWID;
";

/// Read models, version 3: API tokens (#16). Only a token's hash is kept; lookups go by it.
const RM_V3: &str = "
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    prefixes   TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_us INTEGER NOT NULL,
    revoked_us INTEGER
) WITHOUT ROWID;
";

/// Read models, version 4: per-subject encryption keys (crypto-shredding, #19).
const RM_V4: &str = "
CREATE TABLE subject_keys (
    subject TEXT PRIMARY KEY,
    key     BLOB NOT NULL
) WITHOUT ROWID;
";

/// Read models, version 2: one rebuild scheme with PostgreSQL. A logical table `t` is
/// always `rm_t`, and a rebuild fills `rm_t__shadow`, renamed to `rm_t` at the swap.
/// Before, a rebuild filled generation `N + 1` (`rm_t__g<N+1>`) and the swap moved
/// `table_generations` to it; here the current generation of each table takes the live
/// name, and a next generation left by a rebuild that never swapped (its shadow) is
/// dropped, as the next rebuild's `create_shadow` would have. Its indexes keep their
/// names: they are found by what they index, not by name.
fn rm_v2(conn: &Connection) -> rusqlite::Result<()> {
    let generations: Vec<(String, i64)> = conn
        .prepare("SELECT name, generation FROM table_generations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let exists = |table: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [table],
            |r| r.get(0),
        )
    };
    for (name, generation) in &generations {
        let current = format!("rm_{name}__g{generation}");
        if *generation > 0 && exists(&current)? {
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS rm_{name}; ALTER TABLE {current} RENAME TO rm_{name};"
            ))?;
        }
    }
    // The only generation the old scheme could leave behind is the one after the
    // current: its swap dropped the generation before, its abort the one after. Only
    // tables with a live table are looked at, so that a logical table whose own name
    // ends in `__g<digits>` is not mistaken for a generation.
    let mut candidates: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rm\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    candidates.retain(|t: &String| !t.contains("__g"));
    for table in candidates {
        let Some(name) = table.strip_prefix("rm_") else { continue };
        let generation = generations.iter().find(|(n, _)| n == name).map_or(0, |(_, g)| *g);
        let next = format!("rm_{name}__g{}", generation + 1);
        if exists(&next)? {
            conn.execute_batch(&format!("DROP TABLE {next};"))?;
        }
    }
    conn.execute_batch("DROP TABLE table_generations;")
}

/// One version's change of `readmodels.db`, run inside its transaction.
type MigrationStep = fn(&Connection) -> rusqlite::Result<()>;

/// Creates or upgrades `readmodels.db`'s schema, each version in one transaction;
/// refuses a file written by a newer Cairn.
pub fn migrate_read_models(conn: &mut Connection) -> Result<(), String> {
    let current: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if current > READ_MODEL_SCHEMA_VERSION {
        return Err(format!(
            "the read-model file has schema version {current}, this build knows up to {READ_MODEL_SCHEMA_VERSION}: use a newer cairn"
        ));
    }
    let steps: [(i64, MigrationStep); 4] = [
        (1, |c| c.execute_batch(RM_V1)),
        (2, rm_v2),
        (3, |c| c.execute_batch(RM_V3)),
        (4, |c| c.execute_batch(RM_V4)),
    ];
    for (version, step) in steps {
        if current < version {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| e.to_string())?;
            step(&tx).map_err(|e| format!("read-model schema version {version}: {e}"))?;
            tx.pragma_update(None, "user_version", version).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
