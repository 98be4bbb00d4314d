//! `--only soak`: mixed load for `--soak-secs` (10 minutes by default) against `cairn serve`
//! (release binary, authentication on): order lifecycles (create, add item, confirm) from
//! a few clients, queries, and `SSE_SUBSCRIBERS` subscribers of `GET /all/subscribe`
//! reading all along. The server's anonymous RSS is sampled every `SAMPLE_EVERY`; its
//! growth after the warm-up (the first fifth of the run) is what a leak would show.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_postgres::testing::TestDatabase;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Backend;
use crate::external::{CairnProcess, Storage};
use crate::report::Table;

/// Subscribers of `GET /all/subscribe`, each from position 0.
const SSE_SUBSCRIBERS: usize = 50;
/// Clients running order lifecycles, each one lifecycle (3 commands) per
/// `LIFECYCLE_INTERVAL`: 4 clients at 100 ms offer 120 commands/s.
const COMMAND_CLIENTS: u64 = 4;
const LIFECYCLE_INTERVAL: Duration = Duration::from_millis(100);
/// Query clients, each one query per `QUERY_INTERVAL` (2 at 20 ms: 100 queries/s).
const QUERY_CLIENTS: u64 = 2;
const QUERY_INTERVAL: Duration = Duration::from_millis(20);
/// How often the server's memory is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The warm-up: this fraction of the run (2 minutes of 10).
const WARM_UP_FRACTION: f64 = 0.2;
/// Recently created orders the query clients read (a bounded ring).
const RECENT_ORDERS_MAX: usize = 1000;
/// Stock given to every product first, so that confirmations are fulfilled.
const RESTOCK: u64 = 1_000_000_000;
const PRODUCTS: u64 = 10;

/// What the load clients share.
struct Shared {
    server: CairnProcess,
    writer: String,
    reader: String,
    commands: AtomicU64,
    queries: AtomicU64,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    recent: Mutex<VecDeque<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first =
            self.first_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(what);
    }

    /// A command as the writer; its answer, or `None` (a failure, counted).
    async fn command(&self, path: &str, body: &Value) -> Option<Value> {
        let r = self.server.request(Method::POST, path, &self.writer).json(body).send().await;
        self.commands.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            Ok(r) => {
                let status = r.status();
                self.fail(format!("POST {path}: {status} {}", r.text().await.unwrap_or_default()));
                None
            }
            Err(e) => {
                self.fail(format!("POST {path}: {e}"));
                None
            }
        }
    }

    async fn query(&self, path: &str) {
        let r = self.server.request(Method::GET, path, &self.reader).send().await;
        self.queries.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
            }
            Ok(r) => self.fail(format!("GET {path}: {}", r.status())),
            Err(e) => self.fail(format!("GET {path}: {e}")),
        }
    }
}

/// create (one item) → add item → confirm, one lifecycle per `LIFECYCLE_INTERVAL`.
async fn command_client(shared: Arc<Shared>, c: u64, stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(LIFECYCLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0u64;
    while !*stop.borrow() {
        ticker.tick().await;
        i += 1;
        let body = json!({"customer_id": format!("cust-{}", (c * 7919 + i) % 1000),
            "items": [{"product_id": format!("prod-{}", i % PRODUCTS), "quantity": 1, "price": 29.99}]});
        let Some(created) = shared.command("/orders", &body).await else { continue };
        let Some(id) = created["aggregate_id"].as_str().map(str::to_owned) else {
            shared.fail("POST /orders: no aggregate_id".to_owned());
            continue;
        };
        let item = json!({"product_id": format!("prod-{}", (i + 1) % PRODUCTS), "quantity": 1, "price": 5});
        if shared.command(&format!("/orders/{id}/items"), &item).await.is_none() {
            continue;
        }
        let _ = shared.command(&format!("/orders/{id}/confirm"), &json!({})).await;
        let mut recent = shared.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= RECENT_ORDERS_MAX {
            recent.pop_front();
        }
        recent.push_back(id);
    }
}

/// A recent order's summary, a list by status, an order's events, in turn.
async fn query_client(shared: Arc<Shared>, c: u64, stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(QUERY_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = c;
    while !*stop.borrow() {
        ticker.tick().await;
        i += 1;
        let id = {
            let recent = shared.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.is_empty() { None } else { recent.get(i as usize % recent.len()).cloned() }
        };
        match (i % 3, id) {
            (0, Some(id)) => shared.query(&format!("/orders/{id}")).await,
            (1, Some(id)) => shared.query(&format!("/orders/{id}/events")).await,
            _ => shared.query("/orders?status=ready_to_ship&limit=20").await,
        }
    }
}

/// One subscriber: `GET /all/subscribe` from position 0, counting the events (`id:` lines)
/// it reads until `stop`; it resumes (`Last-Event-ID`) if the stream ends early.
async fn subscriber(
    shared: Arc<Shared>,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_id: Option<String> = None;
    while !*stop.borrow() {
        let mut request =
            shared.server.request(Method::GET, "/all/subscribe?from_position=0", &shared.reader);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                shared.fail(format!("GET /all/subscribe: {}", r.status()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                shared.fail(format!("GET /all/subscribe: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = std::pin::pin!(response.bytes_stream());
        // Bytes of an unfinished line (a chunk may end anywhere).
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = stop.changed() => return,
            };
            let chunk = match chunk {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    shared.fail(format!("subscription broke: {e}"));
                    break;
                }
                None => {
                    shared.fail("subscription ended".to_owned());
                    break;
                }
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(id) = line.strip_prefix(b"id:") {
                    received.fetch_add(1, Ordering::Relaxed);
                    last_id = Some(String::from_utf8_lossy(id).trim().to_owned());
                }
            }
        }
    }
}

/// The soak on `backend`, `secs` seconds.
pub async fn run(
    table: &mut Table,
    backend: Backend,
    bin: &Path,
    dir: &Path,
    database_url: &str,
    secs: u64,
) -> anyhow::Result<()> {
    let data = dir.join("soak");
    // Held for the run: the schema is dropped when it goes.
    let pg = match backend {
        Backend::Postgres => Some(TestDatabase::create_at(database_url).await),
        Backend::Sqlite => None,
    };
    let storage = match &pg {
        Some(db) => Storage::Postgres(db.url.clone()),
        None => Storage::Sqlite(data.clone()),
    };
    let server = CairnProcess::start(bin, &storage).await?;
    let writer = server.create_token("bench-soak-writer", "writer").await?;
    let reader = server.create_token("bench-soak-reader", "reader").await?;
    for p in 0..PRODUCTS {
        let r = server
            .request(Method::POST, &format!("/inventory/prod-{p}/restock"), &writer)
            .json(&json!({"quantity": RESTOCK}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "restock: {}", r.status());
    }
    let pid = server.pid();
    let shared = Arc::new(Shared {
        server,
        writer,
        reader,
        commands: AtomicU64::new(0),
        queries: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        first_failure: Mutex::new(None),
        recent: Mutex::new(VecDeque::new()),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let counts: Vec<Arc<AtomicU64>> =
        (0..SSE_SUBSCRIBERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for received in &counts {
        tasks.push(tokio::spawn(subscriber(
            Arc::clone(&shared),
            Arc::clone(received),
            stop_rx.clone(),
        )));
    }
    for c in 0..COMMAND_CLIENTS {
        tasks.push(tokio::spawn(command_client(Arc::clone(&shared), c, stop_rx.clone())));
    }
    for c in 0..QUERY_CLIENTS {
        tasks.push(tokio::spawn(query_client(Arc::clone(&shared), c, stop_rx.clone())));
    }
    let duration = Duration::from_secs(secs);
    let warm_up = duration.mul_f64(WARM_UP_FRACTION);
    eprintln!(
        "  soak: {secs} s ({:.0} s warm-up), {SSE_SUBSCRIBERS} subscribers, {COMMAND_CLIENTS} command clients, {QUERY_CLIENTS} query clients",
        warm_up.as_secs_f64()
    );
    let start = Instant::now();
    let (samples, at_warm_up, outcome) = sample(pid, duration, warm_up, &shared, &counts).await;
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let shared = Arc::into_inner(shared).context("load tasks still hold the server")?;
    let log = shared.server.log_tail();
    let head = shared
        .server
        .admin_get("/admin/projections")
        .await
        .ok()
        .and_then(|rows| rows.as_array()?.first()?["head_position"].as_u64());
    shared.server.stop().await?;
    drop(pg);
    outcome?;
    let (Some(warm), Some(&(_, end))) = (at_warm_up, samples.last()) else {
        anyhow::bail!("the soak was too short for a sample after the warm-up");
    };
    let growth = (end - warm) / warm * 100.0;
    let per_subscriber: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let made = (shared.commands.load(Ordering::Relaxed), shared.queries.load(Ordering::Relaxed));
    report(table, backend, made, elapsed, (warm, end, growth), &per_subscriber, head);
    let _ = std::fs::remove_dir_all(&data);
    let failures = shared.failures.load(Ordering::Relaxed);
    if failures > 0 {
        let first =
            shared.first_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        anyhow::bail!(
            "{failures} failed requests; the first: {}\nserver log:\n{log}",
            first.unwrap_or_default()
        );
    }
    anyhow::ensure!(per_subscriber.iter().all(|n| *n > 0), "a subscriber received no event");
    Ok(())
}

/// The server's anonymous RSS every `SAMPLE_EVERY` until `duration` has passed, with
/// progress: (samples, the first at or after the warm-up, an error if the server went).
async fn sample(
    pid: u32,
    duration: Duration,
    warm_up: Duration,
    shared: &Shared,
    counts: &[Arc<AtomicU64>],
) -> (Vec<(Duration, f64)>, Option<f64>, anyhow::Result<()>) {
    let start = Instant::now();
    let mut samples: Vec<(Duration, f64)> = Vec::new();
    let mut at_warm_up: Option<f64> = None;
    let mut outcome = Ok(());
    while start.elapsed() < duration {
        tokio::time::sleep(SAMPLE_EVERY.min(duration.saturating_sub(start.elapsed()))).await;
        let mem = match crate::external::memory(pid) {
            Ok(m) => m,
            Err(e) => {
                outcome = Err(e.context("cairn serve gone?"));
                break;
            }
        };
        let t = start.elapsed();
        samples.push((t, mem.anon));
        if at_warm_up.is_none() && t >= warm_up {
            at_warm_up = Some(mem.anon);
        }
        let received: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        eprintln!(
            "    {:>4.0} s: anon {:.1} MiB, file {:.1} MiB; {} commands, {} queries, {received} SSE events, {} failures",
            t.as_secs_f64(),
            mem.anon,
            mem.file,
            shared.commands.load(Ordering::Relaxed),
            shared.queries.load(Ordering::Relaxed),
            shared.failures.load(Ordering::Relaxed)
        );
    }
    (samples, at_warm_up, outcome)
}

/// The soak's rows.
fn report(
    table: &mut Table,
    backend: Backend,
    (commands, queries): (u64, u64),
    elapsed: Duration,
    (warm, end, growth): (f64, f64, f64),
    per_subscriber: &[u64],
    head: Option<u64>,
) {
    let received: u64 = per_subscriber.iter().sum();
    let least = per_subscriber.iter().copied().min().unwrap_or(0);
    let prefix = if backend == Backend::Postgres { "pg: " } else { "" };
    table.sample(&format!("{prefix}soak: anonymous RSS at end of warm-up"), "MiB", warm);
    table.sample(&format!("{prefix}soak: anonymous RSS at end"), "MiB", end);
    table.sample(&format!("{prefix}soak: anonymous RSS growth after warm-up"), "%", growth);
    table.sample(
        &format!("{prefix}soak: commands"),
        "ops/s",
        commands as f64 / elapsed.as_secs_f64(),
    );
    table.sample(
        &format!("{prefix}soak: queries"),
        "ops/s",
        queries as f64 / elapsed.as_secs_f64(),
    );
    table.sample(
        &format!("{prefix}soak: SSE events received, {SSE_SUBSCRIBERS} subscribers"),
        "events/s",
        received as f64 / elapsed.as_secs_f64(),
    );
    table.sample(
        &format!("{prefix}soak: SSE events received, least subscriber"),
        "events",
        least as f64,
    );
    if let Some(head) = head {
        table.sample(&format!("{prefix}soak: events in the store at end"), "events", head as f64);
    }
    table.ratio(
        &format!("{prefix}soak: anonymous RSS at end"),
        &format!("{prefix}soak: anonymous RSS at end of warm-up"),
        "target <= 1.05",
    );
    eprintln!(
        "  soak: {commands} commands, {queries} queries, {received} SSE events ({least} for the least served subscriber)"
    );
}
