//! The CQRS path end to end: commands over HTTP, read-model visibility, projection
//! catch-up, beside raw SQLite ceilings measured in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_server::HttpConfig;
use cairn_server::consumers::Consumers;
use cairn_sqlite::{SqliteEventStore, SqliteOptions, SqliteReadModels, Synchronous};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::report::{Table, rate};

/// A running server over a fresh data directory.
pub struct Server {
    base: String,
    client: reqwest::Client,
    pub consumers: Arc<Consumers>,
    pub(crate) store: Arc<dyn EventStore>,
    stop: watch::Sender<bool>,
}

impl Server {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &cairn_server::DomainConfig::default()).await
    }

    pub(crate) async fn start_with(
        dir: &Path,
        snapshots: &cairn_server::DomainConfig,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteEventStore::open(dir, &SqliteOptions::default())?);
        let readmodels = Arc::new(SqliteReadModels::open(dir).map_err(anyhow::Error::msg)?);
        let stores = cairn_server::Stores {
            events: Arc::clone(&store),
            readmodels: readmodels.clone(),
            snapshots: readmodels,
        };
        Self::serve(stores, snapshots).await
    }

    /// Serves the router over `stores` on a loopback port.
    pub(crate) async fn serve(
        stores: cairn_server::Stores,
        snapshots: &cairn_server::DomainConfig,
    ) -> anyhow::Result<Self> {
        let store = Arc::clone(&stores.events);
        let (stop, stop_rx) = watch::channel(false);
        let running = cairn_server::Server::builder(stores)
            .http(HttpConfig::default())
            .domain(snapshots.clone())
            .module(cairn_orders_http::module())
            .build()?
            .start(stop_rx.clone())?;
        let (app, consumers) = (running.router(), Arc::clone(running.consumers()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut shutdown = stop_rx;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
        });
        let client = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
        Ok(Self { base, client, consumers, store, stop })
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self.client.post(format!("{}{path}", self.base)).json(body).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "{path}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(r.json().await?)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.store.close().await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Records throughput and p50/p99 of a set of latencies (ms).
pub(crate) fn record(
    table: &mut Table,
    name: &str,
    count: u64,
    elapsed: Duration,
    mut latencies_ms: Vec<f64>,
) {
    latencies_ms.sort_by(f64::total_cmp);
    table.sample(name, "ops/s", rate(count, elapsed));
    table.sample(&format!("{name} p50"), "ms", percentile(&latencies_ms, 0.5));
    table.sample(&format!("{name} p99"), "ms", percentile(&latencies_ms, 0.99));
}

pub(crate) fn order_body(i: u64) -> Value {
    json!({"customer_id": format!("cust-{}", i % 100), "items": [{"product_id": format!("prod-{}", i % 10), "quantity": 2, "price": 29.99}]})
}

/// `clients` tasks each run `per_client` times `op`, timing each.
pub(crate) async fn load<F, Fut>(
    clients: u64,
    per_client: u64,
    op: F,
) -> anyhow::Result<(Duration, Vec<f64>)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client as usize);
            for i in 0..per_client {
                let t = Instant::now();
                op(c * 1_000_000 + i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((start.elapsed(), all))
}

/// One run of every CQRS scenario.
pub async fn run(table: &mut Table, dir: &Path, quick: bool) -> anyhow::Result<()> {
    let scale = if quick { 1 } else { 4 };
    for clients in [1u64, 16, 64] {
        create_orders_at(table, dir, clients, scale).await?;
    }
    lifecycles(table, dir, scale).await?;
    long_aggregate(table, &dir.join("long"), false).await?;
    long_aggregate(table, &dir.join("long-snap"), true).await?;
    visibility(table, &dir.join("visibility"), if quick { 1 } else { 3 }).await?;
    raw_inserts_16(table, dir)
}

/// Create-order commands from `clients` concurrent clients on a fresh server; also
/// `--only create` (16 clients).
pub async fn create_orders_at(
    table: &mut Table,
    dir: &Path,
    clients: u64,
    scale: u64,
) -> anyhow::Result<()> {
    let server = Arc::new(Server::start(&dir.join("http")).await?);
    let per_client = (if clients == 1 { 150 } else { 1200 / clients }) * scale;
    let name = format!("HTTP create order, {clients} clients");
    load_on(table, server, &name, clients, per_client, |s, i| async move {
        s.post("/orders", &order_body(i)).await.map(|_| ())
    })
    .await
}

/// `op` from `clients` clients, `per_client` times each, against `server`: the row `name`;
/// then stops the server.
async fn load_on<F, Fut>(
    table: &mut Table,
    server: Arc<Server>,
    name: &str,
    clients: u64,
    per_client: u64,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Server>, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let s = Arc::clone(&server);
    let (elapsed, latencies) = load(clients, per_client, move |i| op(Arc::clone(&s), i)).await?;
    record(table, name, clients * per_client, elapsed, latencies);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    Ok(())
}

/// The full order lifecycle (the process manager on its path) at 1, 16 and 64 clients;
/// also `--only lifecycle`.
pub async fn lifecycles(table: &mut Table, dir: &Path, scale: u64) -> anyhow::Result<()> {
    for clients in [1u64, 16, 64] {
        let server = Arc::new(Server::start(&dir.join("life")).await?);
        for p in 0..10 {
            server
                .post(&format!("/inventory/prod-{p}/restock"), &json!({"quantity": 1_000_000}))
                .await?;
        }
        let per_client = (if clients == 1 { 30 } else { 320 / clients }.max(2)) * scale;
        let name = format!("HTTP full order lifecycle, {clients} clients");
        load_on(
            table,
            server,
            &name,
            clients,
            per_client,
            |s, i| async move { lifecycle(&s, i).await },
        )
        .await?;
    }
    Ok(())
}

/// The raw 16-writer insert ceiling the create-order row is set beside.
fn raw_inserts_16(table: &mut Table, dir: &Path) -> anyhow::Result<()> {
    table.sample(
        "raw insert, 1 event/txn, 16 writers",
        "events/s",
        crate::raw::insert_concurrent(&dir.join("raw16.db"), 16, 1600)?,
    );
    Ok(())
}

/// create (1 item) → add item → confirm: the order's id and the confirmation's position.
pub(crate) async fn create_add_confirm(s: &Server, i: u64) -> anyhow::Result<(String, u64)> {
    let created = s.post("/orders", &order_body(i)).await?;
    let id = created["aggregate_id"].as_str().unwrap_or_default().to_owned();
    s.post(
        &format!("/orders/{id}/items"),
        &json!({"product_id": format!("prod-{}", (i + 1) % 10), "quantity": 1, "price": "5.00"}),
    )
    .await?;
    let confirmed = s.post(&format!("/orders/{id}/confirm"), &json!({})).await?;
    Ok((id, confirmed["position"].as_u64().unwrap_or_default()))
}

/// create (1 item) → add item → confirm → (fulfillment reserves) → ship.
async fn lifecycle(s: &Server, i: u64) -> anyhow::Result<()> {
    let (id, position) = create_add_confirm(s, i).await?;
    // The process manager has handled everything up to the confirmation.
    s.consumers
        .process_manager("order-fulfillment")
        .ok_or_else(|| anyhow::anyhow!("no order-fulfillment process manager"))?
        .0
        .wait_for(position, Duration::from_secs(30))
        .await
        .map_err(|p| anyhow::anyhow!("fulfillment stuck at {p}"))?;
    s.post(&format!("/orders/{id}/ship"), &json!({"tracking_number": "TRK", "carrier": "DHL"}))
        .await?;
    Ok(())
}

/// A command on an order with 10,000 events: with snapshots off every command replays
/// them all; with snapshots on (every 100 events) the first load takes one.
async fn long_aggregate(table: &mut Table, dir: &Path, snapshots: bool) -> anyhow::Result<()> {
    let every = if snapshots { cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT } else { u64::MAX };
    let server = Server::start_with(
        dir,
        &cairn_server::DomainConfig { snapshot_every: every, ..Default::default() },
    )
    .await?;
    server
        .post("/orders", &json!({"order_id": "order-long", "customer_id": "c", "items": []}))
        .await?;
    let mut version = 1;
    while version < 10_000 {
        let events = (0..1000u64)
            .map(|k| {
                let (t, data) = if k % 2 == 0 {
                    ("ItemAdded", r#"{"product_id":"px","quantity":1,"price":1}"#)
                } else {
                    ("ItemRemoved", r#"{"product_id":"px","quantity":1,"price":1}"#)
                };
                NewEvent::new(
                    t,
                    serde_json::value::RawValue::from_string(data.to_owned()).expect("valid"),
                )
            })
            .collect();
        let append = Append {
            aggregate_id: "order-long".into(),
            aggregate_type: "Order".into(),
            expected: ExpectedVersion::Exact(version),
            events,
            idempotency: None,
        };
        version = server.store.append(append).await?.last_version;
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    for k in 0..40 {
        let t = Instant::now();
        if k % 2 == 0 {
            server
                .post(
                    "/orders/order-long/items",
                    &json!({"product_id": "py", "quantity": 1, "price": 1}),
                )
                .await?;
        } else {
            let r = server
                .client
                .delete(format!("{}/orders/order-long/items/py", server.base))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "remove item: {}", r.status());
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let name = if snapshots {
        "command on a 10k-event order (snapshot + tail)"
    } else {
        "command on a 10k-event order (full replay)"
    };
    if snapshots {
        // The first command replays everything and takes the snapshot; measure the steady state.
        latencies.remove(0);
    }
    record(table, name, latencies.len() as u64, start.elapsed(), latencies);
    // The load alone, through the repository: full replay vs latest snapshot + tail.
    let repository = if snapshots {
        cairn_cqrs::Repository::with_snapshots(
            Arc::clone(&server.store),
            Arc::new(SqliteReadModels::open(dir).map_err(anyhow::Error::msg)?),
            cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT,
        )
    } else {
        cairn_cqrs::Repository::new(Arc::clone(&server.store))
    };
    let mut loads = Vec::new();
    let start = Instant::now();
    for _ in 0..30 {
        let t = Instant::now();
        let loaded = repository.load::<cairn_orders::Order>("order-long").await?;
        anyhow::ensure!(loaded.version >= 10_000, "short load");
        loads.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let what = if snapshots {
        "load a 10k-event order (snapshot + tail)"
    } else {
        "load a 10k-event order (full replay)"
    };
    record(table, what, 30, start.elapsed(), loads);
    server.stop().await;
    Ok(())
}

/// Write → read-model visibility at a steady 1,000 commands/s.
async fn visibility(table: &mut Table, dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let server = Arc::new(Server::start(dir).await?);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = seconds * 1000;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let s = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let r = s.post("/orders", &order_body(i)).await?;
            let answered = Instant::now();
            let position = r["position"].as_u64().unwrap_or_default();
            s.consumers
                .projection("order_summary")
                .ok_or_else(|| anyhow::anyhow!("no order_summary projection"))?
                .wait_for(position, Duration::from_secs(30))
                .await
                .map_err(|p| anyhow::anyhow!("projection stuck at {p}"))?;
            anyhow::Ok(answered.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort_by(f64::total_cmp);
    table.sample("commands/s offered for visibility", "ops/s", rate(total, elapsed));
    table.sample("write → order_summary visible, p50", "ms", percentile(&latencies, 0.5));
    table.sample("write → order_summary visible, p99", "ms", percentile(&latencies, 0.99));
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    Ok(())
}

/// HTTP create-order commands from `clients` concurrent clients against a server over
/// `stores` (the PostgreSQL scenarios use it with their own stores).
pub async fn create_orders(
    table: &mut Table,
    name: &str,
    stores: cairn_server::Stores,
    clients: u64,
    per_client: u64,
) -> anyhow::Result<()> {
    let server = Arc::new(Server::serve(stores, &cairn_server::DomainConfig::default()).await?);
    let s = Arc::clone(&server);
    let (elapsed, latencies) = load(clients, per_client, move |i| {
        let s = Arc::clone(&s);
        async move { s.post("/orders", &order_body(i)).await.map(|_| ()) }
    })
    .await?;
    record(table, name, clients * per_client, elapsed, latencies);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    Ok(())
}

/// Builds a store of `events` order events (4 per order), fast (no fsync: it is set-up).
pub async fn build_order_log(dir: &Path, events: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let options = SqliteOptions { synchronous: Synchronous::Off, ..SqliteOptions::default() };
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir, &options)?);
    fill_orders(&store, events).await?;
    store.close().await;
    Ok(())
}

/// Appends `events` order events (4 per order) from 32 concurrent writers.
pub async fn fill_orders(store: &Arc<dyn EventStore>, events: u64) -> anyhow::Result<()> {
    let orders = events / 4;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut o = w;
            while o < orders {
                let raw = |s: String| serde_json::value::RawValue::from_string(s).expect("valid");
                let line =
                    |p: u64| format!(r#"{{"product_id":"prod-{p}","quantity":2,"price":29.99}}"#);
                let events = vec![
                    NewEvent::new(
                        "OrderCreated",
                        raw(format!(
                            r#"{{"customer_id":"cust-{}","items":[{}],"total":59.98}}"#,
                            o % 1000,
                            line(o % 10)
                        )),
                    ),
                    NewEvent::new("ItemAdded", raw(line(o % 10 + 10))),
                    NewEvent::new("ItemAdded", raw(line(o % 10 + 20))),
                    NewEvent::new(
                        "OrderConfirmed",
                        raw(format!(
                            r#"{{"items":[{},{},{}],"total":179.94}}"#,
                            line(o % 10),
                            line(o % 10 + 10),
                            line(o % 10 + 20)
                        )),
                    ),
                ];
                let append = Append {
                    aggregate_id: format!("order-{o}"),
                    aggregate_type: "Order".into(),
                    expected: ExpectedVersion::NoStream,
                    events,
                    idempotency: None,
                };
                store.append(append).await?;
                o += 32;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `order_summary` over `store` into `readmodels`, caught up to the head: (handle, stop
/// switch, head, seconds taken).
pub async fn order_summary_over(
    store: &Arc<dyn EventStore>,
    readmodels: Arc<dyn ReadModelStore>,
) -> anyhow::Result<(ConsumerHandle, watch::Sender<bool>, u64, Duration)> {
    let head = *store.head().borrow();
    let (stop, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let handle = cairn_cqrs::projection::spawn_projection(
        Arc::clone(store),
        readmodels,
        Arc::new(cairn_orders::projections::order_summary::OrderSummaryProjection),
        stop_rx,
    )
    .map_err(anyhow::Error::msg)?;
    handle
        .wait_for(head, Duration::from_secs(1200))
        .await
        .map_err(|p| anyhow::anyhow!("catch-up stuck at {p}"))?;
    Ok((handle, stop, head, start.elapsed()))
}

/// `order_summary` running over the log in `log_dir` into the read models in `rm_dir`,
/// caught up to the log's head: (store, projection, its stop switch, head, seconds taken).
async fn order_summary_caught_up(
    log_dir: &Path,
    rm_dir: &Path,
    options: &SqliteOptions,
) -> anyhow::Result<(Arc<dyn EventStore>, ConsumerHandle, watch::Sender<bool>, u64, Duration)> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(log_dir, options)?);
    let readmodels: Arc<dyn ReadModelStore> =
        Arc::new(SqliteReadModels::open(rm_dir).map_err(anyhow::Error::msg)?);
    let (handle, stop, head, elapsed) = order_summary_over(&store, readmodels).await?;
    Ok((store, handle, stop, head, elapsed))
}

/// Replays `order_summary` from position 0 into an empty read model; events/s. `options`
/// are the log's (its heap limit is SQLite's, process-wide, so the read models' too).
pub async fn catch_up(
    log_dir: &Path,
    rm_dir: &Path,
    options: &SqliteOptions,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(rm_dir);
    let (store, _handle, stop, head, elapsed) =
        order_summary_caught_up(log_dir, rm_dir, options).await?;
    let _ = stop.send(true);
    store.close().await;
    Ok(rate(head, elapsed))
}

/// Rebuilds a caught-up `order_summary` (shadow tables, then swap); events/s of the rebuild.
pub async fn rebuild(log_dir: &Path, rm_dir: &Path) -> anyhow::Result<f64> {
    let (store, handle, stop, head, _) =
        order_summary_caught_up(log_dir, rm_dir, &SqliteOptions::default()).await?;
    let start = Instant::now();
    handle.start_rebuild()?;
    while handle.rebuild_progress().is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = rate(head, start.elapsed());
    let _ = stop.send(true);
    store.close().await;
    Ok(r)
}
