//! `--only memory`: the resident memory of `cairn serve` (release binary, authentication
//! on) serving a large store (10M events by default), under a light query and command
//! load, from `/proc/<pid>/status`.
//!
//! The store is built once and cached between runs: on SQLite a directory under
//! `<workspace>/target/bench-cache/`, with a marker file holding the number of events the
//! build wrote (written last, so an interrupted build is rebuilt); on PostgreSQL a schema
//! `cairn_bench_<count>` kept in the database (built when it holds fewer events). The read
//! models are cached with it: only the first run pays the consumers' catch-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_sqlite::{SqliteEventStore, SqliteOptions, Synchronous};
use reqwest::Method;
use serde_json::json;
use serde_json::value::RawValue;

use crate::Backend;
use crate::external::{CairnProcess, Storage};
use crate::report::Table;

/// Concurrent writers of the build (the store batches them into group commits).
const BUILD_WRITERS: u64 = 64;
/// Events per order in the built store (one append each).
const EVENTS_PER_ORDER: u64 = 4;
/// Longest wait for every consumer to catch up with the store (the first run over 10M
/// events replays them all into every projection).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// The light load: clients, and one request per client every `LOAD_INTERVAL` (4 clients
/// at 20 ms: 200 requests/s), for `LOAD_DURATION`.
const LOAD_CLIENTS: u64 = 4;
const LOAD_INTERVAL: Duration = Duration::from_millis(20);
const LOAD_DURATION: Duration = Duration::from_secs(20);

/// `10M`, `1M`, or the number itself.
pub fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else {
        n.to_string()
    }
}

fn raw(s: String) -> Box<RawValue> {
    RawValue::from_string(s).expect("valid JSON")
}

/// Metadata as the command path writes it, with the event's schema version.
fn metadata(o: u64, schema_version: u32) -> Box<RawValue> {
    raw(format!(
        r#"{{"correlation_id":"bench-{o}","causation_id":null,"user_id":"bench","schema_version":{schema_version}}}"#
    ))
}

/// One order's events: created with one line, two lines added, one removed. No
/// confirmation: an `OrderConfirmed` makes the fulfillment process manager issue
/// commands on its first catch-up (reservations, cancellations: millions of commands on
/// 10M events), which is a different measurement from the memory of serving the store.
fn order_events(o: u64) -> Vec<NewEvent> {
    let line = |p: u64| format!(r#"{{"product_id":"prod-{p}","quantity":2,"price":29.99}}"#);
    let event = |t: &str, data: String, v: u32| NewEvent {
        metadata: metadata(o, v),
        ..NewEvent::new(t, raw(data))
    };
    vec![
        event(
            "OrderCreated",
            format!(
                r#"{{"customer_id":"cust-{}","items":[{}],"total":59.98}}"#,
                o % 1000,
                line(o % 10)
            ),
            2,
        ),
        event("ItemAdded", line(o % 10 + 10), 1),
        event("ItemAdded", line(o % 10 + 20), 1),
        event("ItemRemoved", line(o % 10 + 20), 1),
    ]
}

/// Appends `events` events (`EVENTS_PER_ORDER` per order) from `BUILD_WRITERS` writers,
/// printing progress.
async fn fill(store: &Arc<dyn EventStore>, events: u64) -> anyhow::Result<()> {
    let orders = events / EVENTS_PER_ORDER;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..BUILD_WRITERS {
        let (store, done) = (Arc::clone(store), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut o = w;
            while o < orders {
                store
                    .append(Append {
                        aggregate_id: format!("order-{o}"),
                        aggregate_type: "Order".into(),
                        expected: ExpectedVersion::NoStream,
                        events: order_events(o),
                        idempotency: None,
                    })
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
                o += BUILD_WRITERS;
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    let progress = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let n = done.load(Ordering::Relaxed) * EVENTS_PER_ORDER;
                eprintln!(
                    "    built {n} of {events} events ({:.0} events/s)",
                    n as f64 / start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    for t in tasks {
        if let Err(e) = t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(e);
        }
    }
    progress.abort();
    result
}

/// The cached SQLite store of `events` events: `(data dir, seconds the build took, or
/// `None` when it was cached)`.
pub(crate) async fn sqlite_store(events: u64) -> anyhow::Result<(PathBuf, Option<Duration>)> {
    let cache = crate::external::workspace_root()
        .join("target")
        .join("bench-cache")
        .join(format!("{}-sqlite", count_label(events).to_lowercase()));
    let (data, marker) = (cache.join("data"), cache.join("built-events"));
    let built = std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if built == Some(events) {
        eprintln!("  reusing the {events}-event store in {}", cache.display());
        return Ok((data, None));
    }
    eprintln!("  building a {events}-event store in {} (cached for later runs)", cache.display());
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let start = Instant::now();
    // Set-up, not a measurement: no fsync per commit.
    let options = SqliteOptions { synchronous: Synchronous::Off, ..SqliteOptions::default() };
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&data, &options)?);
    let filled = fill(&store, events).await;
    store.close().await;
    filled?;
    let took = start.elapsed();
    // Last: only a finished build is ever reused.
    std::fs::write(&marker, format!("{events}\n"))?;
    Ok((data, Some(took)))
}

/// `admin` with its sessions in `schema` (and `extra` server options).
fn schema_url(admin: &str, schema: &str, extra: &str) -> String {
    let sep = if admin.contains('?') { '&' } else { '?' };
    format!("{admin}{sep}options=-csearch_path%3D{schema}{extra}")
}

/// The cached PostgreSQL schema of `events` events: `(URL, seconds the build took, or
/// `None` when it was cached)`.
async fn postgres_store(admin: &str, events: u64) -> anyhow::Result<(String, Option<Duration>)> {
    let schema = format!("cairn_bench_{}", count_label(events).to_lowercase());
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let count = client
        .query_one(format!("SELECT count(*) FROM {schema}.events").as_str(), &[])
        .await
        .map_or(0, |r| r.get::<_, i64>(0));
    let url = schema_url(admin, &schema, "");
    if u64::try_from(count).unwrap_or(0) >= events {
        eprintln!("  reusing the schema {schema} ({count} events)");
        return Ok((url, None));
    }
    eprintln!("  building a {events}-event store in the schema {schema} (kept for later runs)");
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
        .await?;
    let start = Instant::now();
    // Set-up, not a measurement: commits do not wait for the WAL flush.
    let build_url = schema_url(admin, &schema, "%20-csynchronous_commit%3Doff");
    let (store, _rm) = cairn_postgres::open(&build_url, &cairn_postgres::PgOptions::from_env())
        .await
        .context("cannot open the PostgreSQL store")?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let filled = fill(&store, events).await;
    store.close().await;
    filled?;
    Ok((url, Some(start.elapsed())))
}

/// A small deterministic generator (no dependency for a benchmark's choice of ids).
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

/// `LOAD_CLIENTS` clients, each one request every `LOAD_INTERVAL`: a create order, a read
/// of an order's summary, a list by customer, an order's state from its events. Requests
/// made.
async fn light_load(server: &Arc<CairnProcess>, token: &str, orders: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + LOAD_DURATION;
    let mut tasks = Vec::new();
    for c in 0..LOAD_CLIENTS {
        let (server, token) = (Arc::clone(server), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(LOAD_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seed = c + 1;
            let mut made = 0u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                let o = next(&mut seed) % orders.max(1);
                let request = match made % 4 {
                    0 => server.request(Method::POST, "/orders", &token).json(&json!({
                        "customer_id": format!("cust-{}", o % 1000),
                        "items": [{"product_id": format!("prod-{}", o % 10), "quantity": 2, "price": 29.99}]
                    })),
                    1 => server.request(Method::GET, &format!("/orders/order-{o}"), &token),
                    2 => server.request(
                        Method::GET,
                        &format!("/orders?customer_id=cust-{}&limit=20", o % 1000),
                        &token,
                    ),
                    _ => server.request(Method::GET, &format!("/orders/order-{o}/state"), &token),
                };
                let r = request.send().await?;
                let status = r.status();
                anyhow::ensure!(
                    status.is_success(),
                    "light load: {status} {}",
                    r.text().await.unwrap_or_default()
                );
                made += 1;
            }
            anyhow::Ok(made)
        }));
    }
    let mut made = 0;
    for t in tasks {
        made += t.await??;
    }
    Ok(made)
}

/// Builds (or reuses) the store, serves it, waits for the consumers, loads it lightly and
/// records the server's memory.
pub async fn run(
    table: &mut Table,
    backend: Backend,
    bin: &Path,
    database_url: &str,
    events: u64,
) -> anyhow::Result<()> {
    let (storage, built, prefix) = match backend {
        Backend::Sqlite => {
            let (dir, built) = sqlite_store(events).await?;
            (Storage::Sqlite(dir), built, "")
        }
        Backend::Postgres => {
            let (url, built) = postgres_store(database_url, events).await?;
            (Storage::Postgres(url), built, "pg: ")
        }
    };
    let label = count_label(events);
    if let Some(took) = built {
        eprintln!("  built {events} events in {:.0} s", took.as_secs_f64());
        table.sample(&format!("{prefix}build of the {label}-event store"), "s", took.as_secs_f64());
    }
    let mut server = CairnProcess::start(bin, &storage).await?;
    let caught_up = server.wait_caught_up(CATCH_UP_TIMEOUT).await?;
    eprintln!("  consumers caught up in {:.1} s", caught_up.as_secs_f64());
    let before = crate::external::memory(server.pid())?;
    eprintln!(
        "  after catch-up: anon {:.1} MiB, file {:.1} MiB, peak {:.1} MiB",
        before.anon, before.file, before.hwm
    );
    let token = server.create_token("bench-memory", "writer").await?;
    let server = Arc::new(server);
    let made = light_load(&server, &token, events / EVENTS_PER_ORDER).await;
    let mem = crate::external::memory(server.pid());
    let server = Arc::into_inner(server).context("load tasks still hold the server")?;
    let made = made.map_err(|e| e.context(format!("server log:\n{}", server.log_tail())))?;
    let mem = mem?;
    eprintln!("  light load: {made} requests in {} s", LOAD_DURATION.as_secs());
    let name = format!("{prefix}memory, serving a {label}-event store");
    table.sample(&format!("{name}: anonymous RSS"), "MiB", mem.anon);
    table.sample(&format!("{name}: file-backed RSS"), "MiB", mem.file);
    table.sample(&format!("{name}: peak RSS (VmHWM)"), "MiB", mem.hwm);
    table.sample(&format!("{name}: anonymous RSS before the load"), "MiB", before.anon);
    table.sample(&format!("{name}: file-backed RSS before the load"), "MiB", before.file);
    table.sample(
        &format!("{prefix}memory: consumers' catch-up at start"),
        "s",
        caught_up.as_secs_f64(),
    );
    server.stop().await?;
    Ok(())
}
