//! `cqrs-es-peer`: Cairn's benchmark workloads on cqrs-es 0.5 with sqlite-es or
//! postgres-es, run in-process as cqrs-es applications run (the callers are tokio tasks
//! calling `CqrsFramework::execute`, no HTTP). Prints one JSON line on stdout.
//!
//! Cairn's harness (`cairn-bench --only peer`) builds and runs it; by hand:
//! `cargo run --release -- --backend sqlite --workload create --clients 16 --ops 1200`.

mod order;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cqrs_es::persist::{
    GenericQuery, PersistedEventRepository, PersistedEventStore, SerializedEvent, ViewRepository,
};
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent, Query};
use postgres_es::{PostgresEventRepository, PostgresViewRepository};
use serde_json::{Value, json};
use sqlite_es::{SqliteEventRepository, SqliteViewRepository};
use sqlx::Row;

use crate::order::{Line, Order, OrderCommand, OrderEvent, OrderSummary};

/// Events appended to the one order of the `long` workload.
const LONG_EVENTS: usize = 10_000;
/// Events per bulk transaction while growing that order.
const LONG_APPEND_EVENTS: usize = 1_000;
/// Timed commands on the grown order.
const LONG_COMMANDS: usize = 5;
/// The view's table.
const VIEW_TABLE: &str = "order_summary";
/// Connections in a pool: what `default_sqlite_pool` and `default_postgress_pool` open.
const POOL_CONNECTIONS: u32 = 10;
/// Most callers (each is a tokio task).
const CLIENTS_MAX: u64 = 1_024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// Create orders (one item each).
    Create,
    /// Create (one item) → add an item → confirm; `ops` counts lifecycles.
    Lifecycle,
    /// Grow one order to 10,000 `ItemAdded`, then time single commands on it.
    Long,
}

/// Cairn's benchmark workloads on cqrs-es.
#[derive(Parser, Debug)]
#[command(name = "cqrs-es-peer", about)]
struct Args {
    #[arg(long, value_enum)]
    backend: Backend,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent callers (tokio tasks).
    #[arg(long, default_value_t = 1)]
    clients: u64,
    /// Operations in all (split evenly between the callers).
    #[arg(long, default_value_t = 1_000)]
    ops: u64,
    /// Directory for the SQLite database (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PostgreSQL server; the peer works in a fresh schema there and drops it at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// SQLite only: `full` opens the pool as `default_sqlite_pool` does but with
    /// `synchronous=FULL` (every commit fsynced, Cairn's event-log durability).
    #[arg(long)]
    synchronous_full: bool,
}

/// What a backend's run gives back.
struct Outcome {
    measured: Measured,
    durability: String,
    view_errors: u64,
    view_rows: i64,
}

/// What one workload measured.
struct Measured {
    ops: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

type Framework<R> = CqrsFramework<Order, PersistedEventStore<R, Order>>;

/// The framework over `repo` with the one inline view, and a counter of the view's errors
/// (cqrs-es hands them to an error handler and goes on). The plain event store, as
/// `sqlite_cqrs` / `postgres_cqrs` build it: every command replays its aggregate's events.
/// (cqrs-es's snapshot store would not change the long workload: it snapshots only when
/// a command's events reach the next multiple of its size, so the few commands after a
/// bulk append still replay everything.)
fn framework<R, V>(repo: R, view: V) -> (Framework<R>, Arc<AtomicU64>)
where
    R: PersistedEventRepository + 'static,
    V: ViewRepository<OrderSummary, Order> + 'static,
{
    let errors = Arc::new(AtomicU64::new(0));
    let mut query = GenericQuery::new(Arc::new(view));
    let counted = Arc::clone(&errors);
    query.use_error_handler(Box::new(move |e| {
        if counted.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("cqrs-es-peer: view error: {e}");
        }
    }));
    let queries: Vec<Box<dyn Query<Order>>> = vec![Box::new(query)];
    let store = PersistedEventStore::new_event_store(repo);
    (CqrsFramework::new(store, queries, ()), errors)
}

fn create_command(i: u64) -> OrderCommand {
    OrderCommand::Create {
        customer_id: format!("cust-{}", i % 100),
        items: vec![Line { product_id: format!("prod-{}", i % 10), quantity: 2, price: 2999 }],
    }
}

/// `clients` tasks each run `per_client` times `op`, timing each.
async fn load<F, Fut>(clients: u64, per_client: u64, op: F) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
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
    Ok(Measured { ops: clients * per_client, elapsed: start.elapsed(), latencies_ms: all })
}

/// Runs `workload`; `bulk` is a second repository over the same database, for growing
/// the long order in bulk.
async fn run<R>(cqrs: Framework<R>, bulk: R, args: &Args) -> anyhow::Result<Measured>
where
    R: PersistedEventRepository + 'static,
{
    let cqrs = Arc::new(cqrs);
    let per_client = (args.ops / args.clients).max(1);
    match args.workload {
        Workload::Create => {
            load(args.clients, per_client, move |i| {
                let cqrs = Arc::clone(&cqrs);
                async move {
                    cqrs.execute(&format!("order-{i}"), create_command(i)).await?;
                    Ok(())
                }
            })
            .await
        }
        Workload::Lifecycle => {
            load(args.clients, per_client, move |i| {
                let cqrs = Arc::clone(&cqrs);
                async move {
                    let id = format!("order-{i}");
                    cqrs.execute(&id, create_command(i)).await?;
                    let line = Line {
                        product_id: format!("prod-{}", (i + 1) % 10),
                        quantity: 1,
                        price: 500,
                    };
                    cqrs.execute(&id, OrderCommand::AddItem(line)).await?;
                    cqrs.execute(&id, OrderCommand::Confirm).await?;
                    Ok(())
                }
            })
            .await
        }
        Workload::Long => long(&cqrs, &bulk).await,
    }
}

/// Creates `order-long` by a command, appends 10,000 `ItemAdded` in bulk through the
/// repository (`PersistedEventRepository::persist`, 1,000 events a transaction: cqrs-es
/// has no append API above it), then times single `AddItem` commands on it.
async fn long<R>(cqrs: &Framework<R>, bulk: &R) -> anyhow::Result<Measured>
where
    R: PersistedEventRepository + 'static,
{
    const ORDER_ID: &str = "order-long";
    cqrs.execute(ORDER_ID, OrderCommand::Create { customer_id: "c".into(), items: vec![] }).await?;
    let mut sequence = 1;
    while sequence <= LONG_EVENTS {
        let events = (0..LONG_APPEND_EVENTS)
            .map(|_| {
                sequence += 1;
                let event =
                    OrderEvent::ItemAdded { product_id: "px".into(), quantity: 1, price: 100 };
                anyhow::Ok(SerializedEvent::new(
                    ORDER_ID.to_owned(),
                    sequence,
                    Order::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)?,
                    json!({}),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        bulk.persist::<Order>(&events, None).await?;
    }
    let mut latencies = Vec::with_capacity(LONG_COMMANDS);
    let start = Instant::now();
    for _ in 0..LONG_COMMANDS {
        let t = Instant::now();
        let line = Line { product_id: "py".into(), quantity: 1, price: 100 };
        cqrs.execute_with_metadata(ORDER_ID, OrderCommand::AddItem(line), HashMap::new()).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Measured { ops: LONG_COMMANDS as u64, elapsed: start.elapsed(), latencies_ms: latencies })
}

/// The SQLite side: sqlite-es's own pool (`default_sqlite_pool`), its schema.
async fn sqlite(args: &Args) -> anyhow::Result<Outcome> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("cqrs-es-peer-{}.db", std::process::id()));
    remove_database(&path);
    let path_text = path.to_str().context("the --dir path is not UTF-8")?;
    let url = format!("sqlite://{path_text}");
    let pool = if args.synchronous_full {
        // `default_sqlite_pool`'s options, but each commit fsynced.
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .foreign_keys(true);
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect_with(options)
            .await?
    } else {
        sqlite_es::default_sqlite_pool(&url).await
    };
    sqlx::raw_sql(&schema_sql(Backend::Sqlite)).execute(&pool).await?;
    let row = sqlx::query("PRAGMA journal_mode").fetch_one(&pool).await?;
    let journal: String = row.try_get(0)?;
    let row = sqlx::query("PRAGMA synchronous").fetch_one(&pool).await?;
    let synchronous = match row.try_get::<i64, _>(0)? {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "unknown",
    };
    let how = if args.synchronous_full {
        "default_sqlite_pool's options with synchronous=FULL: every commit fsynced"
    } else {
        "sqlite-es default_sqlite_pool; sqlx alone leaves journal_mode as the file has it and \
         synchronous=FULL: a WAL commit is not fsynced, a power loss can lose the last commits"
    };
    let durability = format!(
        "SQLite journal_mode={journal}, synchronous={synchronous} ({how}); events and view \
         written in separate transactions; pool of {POOL_CONNECTIONS} connections"
    );
    let (cqrs, errors) = framework(
        SqliteEventRepository::new(pool.clone()),
        SqliteViewRepository::<OrderSummary, Order>::new(VIEW_TABLE, pool.clone()),
    );
    let measured = run(cqrs, SqliteEventRepository::new(pool.clone()), args).await;
    let view_rows = view_rows(&pool).await;
    pool.close().await;
    remove_database(&path);
    Ok(Outcome {
        measured: measured?,
        durability,
        view_errors: errors.load(Ordering::Relaxed),
        view_rows: view_rows?,
    })
}

/// Rows of the view: one per order the workload created, if the view kept up.
async fn view_rows<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> anyhow::Result<i64>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let row = sqlx::query(&format!("SELECT count(*) FROM {VIEW_TABLE}")).fetch_one(pool).await?;
    Ok(row.try_get(0)?)
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The PostgreSQL side: a fresh schema (dropped at the end), a pool like
/// `default_postgress_pool`'s with that schema as its search path.
async fn postgres(args: &Args) -> anyhow::Result<Outcome> {
    let schema = format!(
        "cqrs_es_peer_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis()
    );
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await
        .context("connecting to --database-url")?;
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
    let result = postgres_in(args, &schema).await;
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
    admin.close().await;
    result
}

async fn postgres_in(args: &Args, schema: &str) -> anyhow::Result<Outcome> {
    let options = sqlx::postgres::PgConnectOptions::from_str(&args.database_url)?
        .options([("search_path", schema)]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS)
        .connect_with(options)
        .await?;
    sqlx::raw_sql(&schema_sql(Backend::Postgres)).execute(&pool).await?;
    let row = sqlx::query("SHOW synchronous_commit").fetch_one(&pool).await?;
    let synchronous_commit: String = row.try_get(0)?;
    let durability = format!(
        "PostgreSQL synchronous_commit={synchronous_commit} (server's setting): each commit \
         waits for its WAL flush; events and view written in separate transactions; pool of \
         {POOL_CONNECTIONS} connections"
    );
    let (cqrs, errors) = framework(
        PostgresEventRepository::new(pool.clone()),
        PostgresViewRepository::<OrderSummary, Order>::new(VIEW_TABLE, pool.clone()),
    );
    let measured = run(cqrs, PostgresEventRepository::new(pool.clone()), args).await;
    let view_rows = view_rows(&pool).await;
    pool.close().await;
    Ok(Outcome {
        measured: measured?,
        durability,
        view_errors: errors.load(Ordering::Relaxed),
        view_rows: view_rows?,
    })
}

/// The tables of the crates' own `init.sql` / migration, and the view's table.
fn schema_sql(backend: Backend) -> String {
    let (int, doc, strict) = match backend {
        Backend::Sqlite => ("integer", "text", " STRICT"),
        Backend::Postgres => ("bigint", "json", ""),
    };
    format!(
        "CREATE TABLE events (
            aggregate_type text NOT NULL, aggregate_id text NOT NULL,
            sequence {int} CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
            event_version text NOT NULL, payload {doc} NOT NULL, metadata {doc} NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id, sequence)){strict};
         CREATE TABLE snapshots (
            aggregate_type text NOT NULL, aggregate_id text NOT NULL,
            last_sequence {int} CHECK (last_sequence >= 0) NOT NULL,
            current_snapshot {int} CHECK (current_snapshot >= 0) NOT NULL,
            payload {doc} NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)){strict};
         CREATE TABLE {VIEW_TABLE} (
            view_id text NOT NULL, version {int} CHECK (version >= 0) NOT NULL,
            payload {doc} NOT NULL, PRIMARY KEY (view_id)){strict};"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=CLIENTS_MAX).contains(&args.clients),
        "--clients must be 1 to {CLIENTS_MAX}"
    );
    anyhow::ensure!(args.ops >= 1, "--ops must be at least 1");
    let Outcome { measured, durability, view_errors, view_rows } = match args.backend {
        Backend::Sqlite => sqlite(&args).await?,
        Backend::Postgres => postgres(&args).await?,
    };
    anyhow::ensure!(view_errors == 0, "the view failed {view_errors} times");
    let orders = if args.workload == Workload::Long { 1 } else { measured.ops };
    anyhow::ensure!(
        u64::try_from(view_rows).ok() == Some(orders),
        "the view has {view_rows} rows for {orders} orders"
    );
    let mut latencies = measured.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    let secs = measured.elapsed.as_secs_f64();
    let views = "1 inline view (order_summary: GenericQuery over the backend's \
                 ViewRepository), updated by the caller after the events commit";
    let setup = match args.workload {
        Workload::Long => Value::from(format!(
            "{LONG_EVENTS} ItemAdded appended in bulk through PersistedEventRepository::persist \
             ({LONG_APPEND_EVENTS} a transaction, bypassing the view); then {LONG_COMMANDS} \
             AddItem commands timed, each a full replay"
        )),
        _ => Value::Null,
    };
    let line = json!({
        "ops": measured.ops,
        "secs": secs,
        "ops_per_sec": measured.ops as f64 / secs,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or_default(),
        "durability": durability,
        "views": views,
        "setup": setup,
    });
    println!("{line}");
    Ok(())
}
