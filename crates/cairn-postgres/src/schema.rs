//! Versioned migrations, embedded in the binary and applied at start under an advisory lock.

use tokio_postgres::Client;

/// Each migration runs once, in order, in its own transaction.
pub const MIGRATIONS: &[(i32, &str)] =
    &[(1, V1), (2, V2), (3, V3), (4, V4), (5, V5), (6, V6), (7, V7)];

/// Version 1: the event log, idempotency keys, and everything consumers keep.
///
/// `position` is assigned by the writer under the append lock, in commit order. Event
/// data and metadata are `text`, not `jsonb`: the store returns them byte for byte.
const V1: &str = "
CREATE TABLE events (
    position       bigint PRIMARY KEY,
    event_id       uuid   NOT NULL UNIQUE,
    aggregate_id   text   NOT NULL,
    aggregate_type text   NOT NULL,
    event_type     text   NOT NULL,
    version        bigint NOT NULL,
    timestamp_us   bigint NOT NULL,
    data           text   NOT NULL,
    metadata       text   NOT NULL,
    UNIQUE (aggregate_id, version)
);
CREATE TABLE idempotency_keys (
    key            text   PRIMARY KEY,
    aggregate_id   text   NOT NULL,
    first_version  bigint NOT NULL,
    last_version   bigint NOT NULL,
    position       bigint NOT NULL,
    created_us     bigint NOT NULL
);
CREATE TABLE checkpoints (
    consumer text   PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE event_schemas (
    event_type text    NOT NULL,
    version    integer NOT NULL,
    schema     text    NOT NULL,
    PRIMARY KEY (event_type, version)
);
CREATE TABLE projection_versions (
    name    text    PRIMARY KEY,
    version integer NOT NULL
);
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    consumer        text    NOT NULL,
    position        bigint  NOT NULL,
    aggregate_id    text    NOT NULL,
    event_type      text    NOT NULL,
    error           text    NOT NULL,
    attempts        integer NOT NULL,
    first_failed_us bigint  NOT NULL,
    last_failed_us  bigint  NOT NULL
);
CREATE INDEX dead_letters_by_consumer ON dead_letters (consumer, position);
CREATE TABLE snapshots (
    aggregate_id     text    PRIMARY KEY,
    aggregate_type   text    NOT NULL,
    snapshot_version integer NOT NULL,
    version          bigint  NOT NULL,
    position         bigint  NOT NULL,
    timestamp_us     bigint  NOT NULL,
    state            text    NOT NULL
);
";

/// Version 2: the processes sharing the database, each refreshing its row every poll
/// interval (partitions are spread over the live ones).
const V2: &str = "
CREATE TABLE members (
    id      text   PRIMARY KEY,
    seen_us bigint NOT NULL
);
";

/// Version 3: each consumer's leadership term. A process that takes a consumer's advisory
/// lock bumps its epoch; every consumer write compares its fence with it in the write's
/// transaction, so a deposed leader's writes are refused.
const V3: &str = "
CREATE TABLE leases (
    consumer text   PRIMARY KEY,
    epoch    bigint NOT NULL
);
";

/// Version 4: an idempotency record also holds the request's fingerprint, its expiry and,
/// for a refused command, the refusal (JSON; the version columns are then 0). Rows of
/// version 3 become appended records that never expire.
const V4: &str = "
ALTER TABLE idempotency_keys
    ADD COLUMN fingerprint text,
    ADD COLUMN expires_us  bigint,
    ADD COLUMN refusal     text;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_us) WHERE expires_us IS NOT NULL;
";

/// Version 7: per-subject encryption keys (crypto-shredding, #19). Deleting a row erases
/// that subject's personal fields for every process at once.
const V7: &str = "
CREATE TABLE subject_keys (
    subject text  PRIMARY KEY,
    key     bytea NOT NULL
);
";
/// Version 6: the stream lifecycle (`cairn_core::lifecycle`). A soft delete or tombstone
/// is a marker event in the stream; this partial index finds a stream's last marker in
/// one seek and holds nothing else. Metadata streams (`$$<id>`) are ordinary streams.
const V6: &str = "
CREATE INDEX events_markers ON events (aggregate_id, version)
    WHERE event_type IN ('$streamDeleted', '$streamTombstoned');
";
/// Version 5: API tokens (#16), shared by every process on the database. Only a token's
/// hash is kept; lookups go by it.
const V5: &str = "
CREATE TABLE api_tokens (
    id         text   PRIMARY KEY,
    name       text   NOT NULL,
    role       text   NOT NULL,
    prefixes   text   NOT NULL,
    hash       text   NOT NULL UNIQUE,
    created_us bigint NOT NULL,
    revoked_us bigint
);
";

/// The advisory-lock key of `name` in the current schema (two Cairn schemas in one database
/// never share a lock).
pub const LOCK_KEY_SQL: &str = "SELECT hashtextextended(current_schema() || '/cairn/' || $1, 0)";

/// Applies the migrations this database lacks. Two processes starting at once serialise on
/// the migration lock; the second finds nothing left to do.
pub async fn migrate(client: &mut Client) -> Result<i32, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    let key: i64 = tx.query_one(LOCK_KEY_SQL, &[&"migrate"]).await?.get(0);
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM cairn_migrations", &[]).await?.get(0);
    let mut applied = current;
    for (version, ddl) in MIGRATIONS {
        if *version > current {
            tx.batch_execute(ddl).await?;
            tx.execute("INSERT INTO cairn_migrations (version) VALUES ($1)", &[version]).await?;
            applied = *version;
        }
    }
    tx.commit().await?;
    Ok(applied)
}
