//! The on-disk schema of the event log, versioned with `PRAGMA user_version`.

use rusqlite::Connection;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 3;

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

/// A stream's type and version: one seek to its last event.
pub const STREAM_HEAD_SQL: &str = "SELECT aggregate_type, version FROM events WHERE aggregate_id = ?1 ORDER BY version DESC LIMIT 1";

/// Creates or upgrades the schema; refuses a file written by a newer Cairn.
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let current: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "the database has schema version {current}, this build knows up to {SCHEMA_VERSION}: use a newer cairn"
        ));
    }
    for (version, ddl) in [(1, V1), (2, V2), (3, V3)] {
        if current < version {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {ddl} PRAGMA user_version = {version}; COMMIT;"
            ))
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
