//! Raw SQLite ceilings: the same schema and pragmas as the store, driven directly.

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, params};

use crate::Sizes;
use crate::report::{Table, rate};
use crate::store::{DATA, METADATA};

fn fresh(path: &Path) -> anyhow::Result<Connection> {
    let _ = std::fs::remove_file(path);
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536;",
    )?;
    cairn_sqlite::schema::migrate(&conn).map_err(anyhow::Error::msg)?;
    Ok(conn)
}

/// How the raw workload picks each row's stream, mirroring the store scenario it is the
/// ceiling of (the key spread decides how many index pages a commit dirties).
#[derive(Clone, Copy)]
enum Keys {
    /// Row `p` goes where the `p % 64`-th of 64 concurrent writers would append.
    LikeWriters,
    /// A whole transaction goes to one stream, like one batch append.
    OneStreamPerTxn,
}

fn stream_of(keys: Keys, position: i64, txn: u64) -> String {
    match keys {
        Keys::LikeWriters => format!("order-{}-{}", position % 64, (position / 64) % 16),
        Keys::OneStreamPerTxn => format!("order-{}", txn % 16),
    }
}

/// Inserts `total` events, `per_txn` per transaction; returns events/s.
fn insert(path: &Path, per_txn: u64, total: u64, keys: Keys) -> anyhow::Result<f64> {
    let mut conn = fresh(path)?;
    let start = Instant::now();
    let mut position = 0i64;
    for txn in 0..total / per_txn {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata)
                 VALUES (?1, ?2, ?3, 'Order', 'OrderCreated', ?4, ?5, ?6, ?7)",
            )?;
            for _ in 0..per_txn {
                position += 1;
                stmt.execute(params![
                    position,
                    uuid::Uuid::now_v7().as_bytes(),
                    stream_of(keys, position, txn),
                    // Versions only need to be unique per stream; the position is.
                    position,
                    position,
                    DATA,
                    METADATA
                ])?;
            }
        }
        tx.commit()?;
    }
    let r = rate(total / per_txn * per_txn, start.elapsed());
    drop(conn);
    let _ = std::fs::remove_file(path);
    Ok(r)
}

/// One run of the raw insert ceilings at 1, 64, 100 and 1000 events per transaction.
pub fn inserts(table: &mut Table, dir: &Path, sizes: Sizes) -> anyhow::Result<()> {
    let path = dir.join("raw.db");
    for (per_txn, total, keys) in [
        (1, sizes.single_appends / 4, Keys::LikeWriters),
        (64, sizes.single_appends, Keys::LikeWriters),
        (100, sizes.batches * 100, Keys::OneStreamPerTxn),
        (1000, sizes.batches * 100, Keys::LikeWriters),
    ] {
        let plural = if per_txn == 1 { "event" } else { "events" };
        table.sample(
            &format!("raw insert, {per_txn} {plural}/txn"),
            "events/s",
            insert(&path, per_txn, total, keys)?,
        );
    }
    Ok(())
}

fn read_only(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("PRAGMA cache_size = -32768; PRAGMA mmap_size = 268435456;")?;
    Ok(conn)
}

/// Pages through every event by position, touching every column; returns events/s.
pub fn scan_all(path: &Path) -> anyhow::Result<f64> {
    let conn = read_only(path)?;
    let start = Instant::now();
    let mut stmt = conn.prepare(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata
         FROM events WHERE position > ?1 ORDER BY position LIMIT 10000",
    )?;
    let (mut from, mut count, mut bytes) = (0i64, 0u64, 0usize);
    loop {
        let mut rows = stmt.query([from])?;
        let mut page = 0;
        while let Some(row) = rows.next()? {
            from = row.get(0)?;
            bytes += row.get_ref(1)?.as_blob()?.len()
                + row.get_ref(2)?.as_str()?.len()
                + row.get_ref(3)?.as_str()?.len()
                + row.get_ref(4)?.as_str()?.len()
                + row.get_ref(7)?.as_str()?.len()
                + row.get_ref(8)?.as_str()?.len();
            let _: (i64, i64) = (row.get(5)?, row.get(6)?);
            page += 1;
        }
        if page == 0 {
            break;
        }
        count += page;
    }
    std::hint::black_box(bytes);
    Ok(rate(count, start.elapsed()))
}

/// Reads one stream by the `(aggregate_id, version)` index, touching every column.
pub fn query_stream(path: &Path, stream: &str) -> anyhow::Result<f64> {
    let conn = read_only(path)?;
    let start = Instant::now();
    let mut stmt = conn.prepare(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata
         FROM events WHERE aggregate_id = ?1 AND version >= 1 ORDER BY version LIMIT 10000",
    )?;
    let mut rows = stmt.query([stream])?;
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next()? {
        bytes += row.get_ref(1)?.as_blob()?.len()
            + row.get_ref(2)?.as_str()?.len()
            + row.get_ref(3)?.as_str()?.len()
            + row.get_ref(4)?.as_str()?.len()
            + row.get_ref(7)?.as_str()?.len()
            + row.get_ref(8)?.as_str()?.len();
        let _: (i64, i64, i64) = (row.get(0)?, row.get(5)?, row.get(6)?);
        count += 1;
    }
    std::hint::black_box(bytes);
    Ok(rate(count, start.elapsed()))
}

/// `writers` threads, each with its own connection, inserting one event per transaction
/// (SQLite serialises them on its write lock); returns events/s.
pub fn insert_concurrent(path: &Path, writers: u64, total: u64) -> anyhow::Result<f64> {
    drop(fresh(path)?);
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let path = path.to_owned();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let conn = Connection::open(&path)?;
                conn.execute_batch("PRAGMA synchronous = FULL;")?;
                conn.busy_timeout(std::time::Duration::from_secs(30))?;
                for i in 0..total / writers {
                    let position = (i * writers + w + 1) as i64;
                    conn.execute("BEGIN IMMEDIATE", [])?;
                    conn.prepare_cached(
                        "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version, timestamp_us, data, metadata)
                         VALUES (?1, ?2, ?3, 'Order', 'OrderCreated', ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        position,
                        uuid::Uuid::now_v7().as_bytes(),
                        format!("order-{w}-{}", i % 16),
                        position,
                        position,
                        DATA,
                        METADATA
                    ])?;
                    conn.execute("COMMIT", [])?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    let r = rate(total / writers * writers, start.elapsed());
    let _ = std::fs::remove_file(path);
    Ok(r)
}

/// A document of the size and shape of an `order_summary` row.
const SUMMARY_DOC: &str = r#"{"order_id":"order-123456","customer_id":"cust-456","status":"confirmed","item_count":3,"total":179.94,"tracking_number":null,"carrier":null,"created_at":"2026-11-27T10:00:00.123456Z","confirmed_at":"2026-11-27T10:00:01.123456Z","shipped_at":null,"updated_at":"2026-11-27T10:00:01.123456Z","version":4}"#;

/// Upserts `rows` documents into a read-model-shaped table, `batch` per transaction,
/// with the read-model file's pragmas; returns rows/s.
pub fn upsert_batched(path: &Path, rows: u64, batch: u64, keys: u64) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(path);
    let mut conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;
         CREATE TABLE rm (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
         CREATE INDEX rm_status ON rm (json_extract(doc, '$.status'), key);
         CREATE INDEX rm_customer ON rm (json_extract(doc, '$.customer_id'), key);",
    )?;
    let start = Instant::now();
    let mut n = 0;
    while n < rows {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO rm (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            )?;
            for _ in 0..batch {
                stmt.execute(params![format!("order-{}", n % keys), SUMMARY_DOC])?;
                n += 1;
            }
        }
        tx.commit()?;
    }
    let r = rate(n, start.elapsed());
    drop(conn);
    let _ = std::fs::remove_file(path);
    Ok(r)
}
