//! `--only peer` (issue #18 item 2): cqrs-es 0.5 with sqlite-es / postgres-es beside Cairn,
//! the same workloads in the same run.
//!
//! cqrs-es cannot live in this workspace (its sqlx links a second libsqlite3-sys, and both
//! it and rusqlite's declare `links = "sqlite3"`), so the peer is its own Cargo project
//! under `bench/cqrs-es-peer` with its own lockfile: this module builds it with cargo and
//! runs it as a subprocess per workload, reading the one JSON line it prints. It is not in
//! the default groups because that build compiles a second dependency tree (sqlx).
//!
//! Cairn is measured as a client sees it: commands over HTTP on loopback. The peer runs
//! in-process, as cqrs-es applications are written (no HTTP in the framework): its
//! callers are tokio tasks calling `CqrsFramework::execute`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use cairn_core::{Append, ExpectedVersion, NewEvent};
use cairn_cqrs::consumer::ConsumerHandle;
use cairn_server::DomainConfig;
use serde_json::{Value, json};

use crate::cqrs::{Server, load, order_body};
use crate::report::Table;
use crate::{Args, Backend};

/// Creates by one caller, per run.
const CREATE_1_OPS: u64 = 400;
/// Creates by 16 callers, per run.
const CREATE_16_OPS: u64 = 1_600;
/// Lifecycles (create → add item → confirm) by 16 callers, per run.
const LIFECYCLE_OPS: u64 = 480;
/// Concurrent callers of the 16-caller workloads.
const CALLERS: u64 = 16;
/// `--quick` divides the workloads by this.
const QUICK_DIVISOR: u64 = 4;
/// Events the long order grows to (besides its creation).
const LONG_EVENTS: u64 = 10_000;
/// Events per store append while growing it.
const LONG_APPEND_EVENTS: u64 = 1_000;
/// Timed commands on the long order.
const LONG_COMMANDS: usize = 5;
/// The long order's id (both sides).
const LONG_ORDER: &str = "order-long";

/// Where the peer project lives: `bench/` at the repository's root.
fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/cqrs-es-peer")
}

/// Builds the peer (release, its committed lockfile) and returns its binary.
fn build() -> anyhow::Result<PathBuf> {
    let dir = peer_dir();
    let target = dir.join("target");
    eprintln!("  building the cqrs-es peer ({})", dir.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        // Its own target even if CARGO_TARGET_DIR points elsewhere: the binary is found
        // there, and two dependency trees do not mix.
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    anyhow::ensure!(status.success(), "building the cqrs-es peer failed: {status}");
    Ok(target.join("release").join("cqrs-es-peer"))
}

/// What one peer run printed.
struct PeerRun {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    durability: String,
    views: String,
}

/// Runs the peer once.
async fn peer(
    binary: &Path,
    args: &Args,
    dir: &Path,
    workload: &str,
    clients: u64,
    ops: u64,
    extra: &[&str],
) -> anyhow::Result<PeerRun> {
    let backend = match args.store {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let mut command = Command::new(binary);
    command
        .args(["--backend", backend, "--workload", workload])
        .args(["--clients", &clients.to_string(), "--ops", &ops.to_string()])
        .arg("--dir")
        .arg(dir)
        .args(["--database-url", &args.database_url])
        .args(extra);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "cqrs-es-peer {workload}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line: Value = serde_json::from_slice(&output.stdout)?;
    let number = |key: &str| {
        line[key].as_f64().ok_or_else(|| anyhow::anyhow!("cqrs-es-peer printed no {key}"))
    };
    Ok(PeerRun {
        ops_per_sec: number("ops_per_sec")?,
        p50_ms: number("p50_ms")?,
        p99_ms: number("p99_ms")?,
        max_ms: number("max_ms")?,
        durability: line["durability"].as_str().unwrap_or_default().to_owned(),
        views: line["views"].as_str().unwrap_or_default().to_owned(),
    })
}

/// A Cairn server on the backend `--store` selects: over a fresh data directory, or in a
/// fresh PostgreSQL database (kept alive by the returned guard).
async fn cairn(
    args: &Args,
    dir: &Path,
    domain: &DomainConfig,
) -> anyhow::Result<(Server, Option<cairn_postgres::testing::TestDatabase>)> {
    match args.store {
        Backend::Sqlite => Ok((Server::start_with(dir, domain).await?, None)),
        Backend::Postgres => {
            let db = cairn_postgres::testing::TestDatabase::create_at(&args.database_url).await;
            let (events, readmodels) = crate::pg::stores(&db).await?;
            let stores = cairn_server::Stores {
                events,
                readmodels: readmodels.clone(),
                snapshots: readmodels,
            };
            Ok((Server::serve(stores, domain).await?, Some(db)))
        }
    }
}

/// Cairn's durability and views, as its server runs here.
async fn cairn_sides(args: &Args, server: &Server) -> anyhow::Result<(String, String)> {
    let durability = match args.store {
        Backend::Sqlite => "SQLite WAL, synchronous=FULL for the event log: every (group) \
                           commit is fsynced before its callers are answered; read models \
                           synchronous=NORMAL (derived, rebuilt from the log)"
            .to_owned(),
        Backend::Postgres => {
            let (client, connection) =
                tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client.query_one("SHOW synchronous_commit", &[]).await?;
            let setting: String = row.get(0);
            format!(
                "PostgreSQL synchronous_commit={setting}: every (group) commit of events waits \
                 for its WAL flush; projection batches commit with synchronous_commit=off \
                 (derived, rebuilt from the log)"
            )
        }
    };
    let projections: Vec<&str> = server.consumers.projections().map(ConsumerHandle::name).collect();
    let managers: Vec<&str> = server.consumers.process_managers().map(|(c, _)| c.name()).collect();
    let views = format!(
        "{} asynchronous projections ({}) and {} process manager(s) ({}), off the command path; \
         the lifecycle runs with the process managers paused",
        projections.len(),
        projections.join(", "),
        managers.len(),
        managers.join(", ")
    );
    Ok((durability, views))
}

/// Records the peer's throughput row and its latency rows.
fn record_peer(table: &mut Table, name: &str, r: &PeerRun) {
    table.sample(name, "ops/s", r.ops_per_sec);
    table.sample(&format!("{name} p50"), "ms", r.p50_ms);
    table.sample(&format!("{name} p99"), "ms", r.p99_ms);
}

/// Cairn's create-order over HTTP from `clients` callers.
async fn cairn_create(
    table: &mut Table,
    args: &Args,
    dir: &Path,
    name: &str,
    clients: u64,
    ops: u64,
) -> anyhow::Result<(String, String)> {
    let (server, db) = cairn(args, dir, &DomainConfig::default()).await?;
    let sides = cairn_sides(args, &server).await?;
    let server = Arc::new(server);
    let s = Arc::clone(&server);
    let (elapsed, latencies) = load(clients, ops / clients, move |i| {
        let s = Arc::clone(&s);
        async move { s.post("/orders", &order_body(i)).await.map(|_| ()) }
    })
    .await?;
    crate::cqrs::record(table, name, ops / clients * clients, elapsed, latencies);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    drop(db);
    Ok(sides)
}

/// Cairn's create → add item → confirm over HTTP, process managers paused (the peer has
/// none; Cairn's `ship` needs the fulfillment process manager's reservation, so neither
/// side ships).
async fn cairn_lifecycle(
    table: &mut Table,
    args: &Args,
    dir: &Path,
    name: &str,
    ops: u64,
) -> anyhow::Result<()> {
    let domain = DomainConfig { pause_process_managers: true, ..DomainConfig::default() };
    let (server, db) = cairn(args, dir, &domain).await?;
    let server = Arc::new(server);
    let s = Arc::clone(&server);
    let (elapsed, latencies) = load(CALLERS, ops / CALLERS, move |i| {
        let s = Arc::clone(&s);
        async move { crate::cqrs::create_add_confirm(&s, i).await.map(|_| ()) }
    })
    .await?;
    crate::cqrs::record(table, name, ops / CALLERS * CALLERS, elapsed, latencies);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    drop(db);
    Ok(())
}

/// Cairn's command on a 10k-event order: created over HTTP, grown by store appends of
/// [`LONG_APPEND_EVENTS`] `ItemAdded`, then [`LONG_COMMANDS`] add-item commands timed;
/// (median ms, worst ms).
async fn cairn_long(args: &Args, dir: &Path, snapshots: bool) -> anyhow::Result<(f64, f64)> {
    let every = if snapshots { cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT } else { u64::MAX };
    let domain = DomainConfig { snapshot_every: every, ..DomainConfig::default() };
    let (server, db) = cairn(args, dir, &domain).await?;
    server
        .post("/orders", &json!({"order_id": LONG_ORDER, "customer_id": "c", "items": []}))
        .await?;
    let mut version = 1;
    while version < LONG_EVENTS + 1 {
        let data = r#"{"product_id":"px","quantity":1,"price":1}"#;
        let events = (0..LONG_APPEND_EVENTS)
            .map(|_| {
                NewEvent::new(
                    "ItemAdded",
                    serde_json::value::RawValue::from_string(data.to_owned()).expect("valid"),
                )
            })
            .collect();
        let append = Append {
            aggregate_id: LONG_ORDER.into(),
            aggregate_type: "Order".into(),
            expected: ExpectedVersion::Exact(version),
            events,
            idempotency: None,
        };
        version = server.store.append(append).await?.last_version;
    }
    let mut latencies = Vec::with_capacity(LONG_COMMANDS);
    for _ in 0..LONG_COMMANDS {
        let t = Instant::now();
        server
            .post(
                &format!("/orders/{LONG_ORDER}/items"),
                &json!({"product_id": "py", "quantity": 1, "price": 1}),
            )
            .await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    server.stop().await;
    drop(db);
    latencies.sort_by(f64::total_cmp);
    Ok((latencies[latencies.len() / 2], latencies.last().copied().unwrap_or_default()))
}

/// One run of every workload, Cairn then the peer back to back (a slow period of the
/// disk hits both sides of a ratio); returns the sides' (durability, views).
async fn run_once(
    table: &mut Table,
    args: &Args,
    dir: &Path,
    binary: &Path,
    names: &Names,
) -> anyhow::Result<[(String, String); 2]> {
    let divisor = if args.quick { QUICK_DIVISOR } else { 1 };
    let mut cairn_sides = (String::new(), String::new());
    let mut peer_sides = (String::new(), String::new());
    for (clients, ops) in [(1, CREATE_1_OPS / divisor), (CALLERS, CREATE_16_OPS / divisor)] {
        let (cairn_name, peer_name) = names.create(clients);
        cairn_sides =
            cairn_create(table, args, &dir.join("cairn"), &cairn_name, clients, ops).await?;
        let r = peer(binary, args, dir, "create", clients, ops, &[]).await?;
        record_peer(table, &peer_name, &r);
        peer_sides = (r.durability, r.views);
    }
    if args.store == Backend::Sqlite {
        // The peer at Cairn's durability too: only the fsync per commit differs.
        let ops = CREATE_16_OPS / divisor;
        let r = peer(binary, args, dir, "create", CALLERS, ops, &["--synchronous-full"]).await?;
        record_peer(table, &names.peer_create_full, &r);
    }
    let ops = LIFECYCLE_OPS / divisor;
    cairn_lifecycle(table, args, &dir.join("cairn"), &names.cairn_lifecycle, ops).await?;
    let r = peer(binary, args, dir, "lifecycle", CALLERS, ops, &[]).await?;
    record_peer(table, &names.peer_lifecycle, &r);
    for (snapshots, name) in [(true, &names.cairn_long_snapshots), (false, &names.cairn_long)] {
        let (median, worst) = cairn_long(args, &dir.join("cairn"), snapshots).await?;
        table.sample(&format!("{name}, median"), "ms", median);
        table.sample(&format!("{name}, worst of {LONG_COMMANDS}"), "ms", worst);
    }
    let r = peer(binary, args, dir, "long", 1, LONG_COMMANDS as u64, &[]).await?;
    table.sample(&format!("{}, median", names.peer_long), "ms", r.p50_ms);
    table.sample(&format!("{}, worst of {LONG_COMMANDS}", names.peer_long), "ms", r.max_ms);
    Ok([cairn_sides, peer_sides])
}

/// The rows' names, prefixed `pg: ` on PostgreSQL as the harness's other rows are.
struct Names {
    prefix: &'static str,
    peer_create_full: String,
    cairn_lifecycle: String,
    peer_lifecycle: String,
    cairn_long: String,
    cairn_long_snapshots: String,
    peer_long: String,
}

impl Names {
    fn new(backend: Backend) -> Self {
        let prefix = if backend == Backend::Postgres { "pg: " } else { "" };
        Self {
            prefix,
            peer_create_full: format!(
                "{prefix}peer cqrs-es create order, {CALLERS} callers, synchronous=FULL"
            ),
            cairn_lifecycle: format!(
                "{prefix}Cairn lifecycle create→add→confirm (HTTP, no PM), {CALLERS} callers"
            ),
            peer_lifecycle: format!(
                "{prefix}peer cqrs-es lifecycle create→add→confirm (no PM), {CALLERS} callers"
            ),
            cairn_long: format!("{prefix}Cairn command on a 10k-event aggregate (full replay)"),
            cairn_long_snapshots: format!(
                "{prefix}Cairn command on a 10k-event aggregate (snapshot every {}, default)",
                cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT
            ),
            peer_long: format!(
                "{prefix}peer cqrs-es command on a 10k-event aggregate (full replay, default)"
            ),
        }
    }

    /// (Cairn's row, the peer's row) of create-order by `clients` callers.
    fn create(&self, clients: u64) -> (String, String) {
        let callers =
            if clients == 1 { "1 caller".to_owned() } else { format!("{clients} callers") };
        (
            format!("{}Cairn create order (HTTP), {callers}", self.prefix),
            format!("{}peer cqrs-es create order, {callers}", self.prefix),
        )
    }
}

/// Each side's (durability, views), as the harness prints them.
pub type Sides = [(String, String); 2];

/// `--only peer`: builds the peer, runs both sides `--runs` times on `--store`'s backend,
/// adds the rows and ratios; returns each side's durability and views ([`print_sides`]).
pub fn run(
    runtime: &tokio::runtime::Runtime,
    table: &mut Table,
    dir: &Path,
    args: &Args,
) -> anyhow::Result<Sides> {
    anyhow::ensure!(args.runs > 0, "--runs 0: nothing to measure");
    let binary = build()?;
    let names = Names::new(args.store);
    let mut sides = None;
    for run in 0..args.runs {
        eprintln!("  peer run {} of {}", run + 1, args.runs);
        sides = Some(runtime.block_on(run_once(table, args, dir, &binary, &names))?);
    }
    for clients in [1, CALLERS] {
        let (cairn_row, peer_row) = names.create(clients);
        let target = if clients == CALLERS { "target >= 2x" } else { "" };
        table.ratio(&cairn_row, &peer_row, target);
    }
    let (cairn_create_16, _) = names.create(CALLERS);
    table.ratio(&cairn_create_16, &names.peer_create_full, "same durability");
    table.ratio(&names.cairn_lifecycle, &names.peer_lifecycle, "");
    // Latencies: the peer's over Cairn's, so that above 1 means Cairn is faster.
    let worst = format!(", worst of {LONG_COMMANDS}");
    table.ratio(
        &format!("{}{worst}", names.peer_long),
        &format!("{}{worst}", names.cairn_long_snapshots),
        "peer ms / Cairn ms",
    );
    table.ratio(
        &format!("{}{worst}", names.peer_long),
        &format!("{}{worst}", names.cairn_long),
        "peer ms / Cairn ms",
    );
    sides.ok_or_else(|| anyhow::anyhow!("no peer run"))
}

/// Prints each side's durability and views after the table.
pub fn print_sides(sides: &Sides) {
    let [(cairn_durability, cairn_views), (peer_durability, peer_views)] = sides;
    println!();
    println!("| side | durability | views |");
    println!("|---|---|---|");
    println!("| Cairn (HTTP) | {cairn_durability} | {cairn_views} |");
    println!("| cqrs-es 0.5 peer (in-process) | {peer_durability} | {peer_views} |");
}
