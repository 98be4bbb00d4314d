//! `cairn-bench`: measures the embedded store and, in the same run, the raw SQLite ceilings
//! with the same schema and durability, so every figure is also a ratio.
//!
//! Run: `cargo run --release -p cairn-bench` (add `--quick` for a smoke run).

mod bus;
mod console;
mod cqrs;
mod external;
mod grpc;
mod long;
mod memory;
mod peer;
mod pg;
mod raw;
mod report;
mod soak;
mod store;
mod wrk;

use clap::Parser;

// The same allocator as the `cairn` binary, so the store is measured as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn_sqlite::SqliteOptions;

use crate::report::Table;

/// Benchmark the embedded store against raw SQLite ceilings.
#[derive(Parser, Debug)]
#[command(name = "cairn-bench", about)]
pub struct Args {
    /// Runs per scenario (median and min–max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Events in the `$all` read scenario.
    #[arg(long, default_value_t = 1_000_000)]
    all_events: u64,
    /// Smaller workloads for a quick smoke run (numbers not comparable to the full run).
    #[arg(long)]
    quick: bool,
    /// Run only these groups of scenarios (default: every group but `bus`, which needs
    /// NATS, `soak`, which runs once on its own, and the parts of `cqrs` that are also
    /// groups for profiles: `lifecycle`, `create`, `catchup`).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["appends", "raw", "reads", "cqrs", "long", "peer", "wrk", "memory"])]
    only: Vec<Group>,
    /// Directory for the benchmark databases (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Which backend to measure.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    store: Backend,
    /// NATS server for `--only bus`.
    #[arg(long, env = "CAIRN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// PostgreSQL server for `--store postgres` (each scenario uses its own schema there).
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
    /// The `cairn` binary for `--only wrk,memory,soak` (default:
    /// `<workspace>/target/release/cairn`; build it with `cargo build --release -p cairn`).
    #[arg(long)]
    cairn_bin: Option<std::path::PathBuf>,
    /// Events in the store of `--only memory` (built once, cached under target/bench-cache;
    /// default 10M, 100k with `--quick`).
    #[arg(long)]
    memory_events: Option<u64>,
    /// Length of `--only soak`, in seconds.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// An extra argument for `cairn serve` in `--only wrk,memory,soak` (repeatable), e.g.
    /// `--serve-arg=--sqlite-cache-mib=32`.
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
}

/// The backend `--store` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The embedded store and raw SQLite.
    Sqlite,
    /// PostgreSQL and raw PostgreSQL.
    Postgres,
}

/// Groups of scenarios that `--only` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Store appends.
    Appends,
    /// Raw SQLite inserts.
    Raw,
    /// Store and raw reads.
    Reads,
    /// Commands over HTTP, visibility, projection catch-up.
    Cqrs,
    /// The NATS relay (`--nats-url`); only when asked for.
    Bus,
    /// One long stream: consumers' catch-up and the next command after a bulk append;
    /// only when asked for.
    Long,
    /// The full order lifecycle alone (also part of `cqrs`); only when asked for.
    Lifecycle,
    /// Create-order commands at 16 clients alone (also part of `cqrs`), for a profile; only
    /// when asked for.
    Create,
    /// The projection catch-up and rebuild over the order log beside the raw batched upsert
    /// (also part of `cqrs`); only when asked for.
    Catchup,
    /// The cqrs-es peer (`bench/cqrs-es-peer`) beside Cairn, on `--store`'s backend; only
    /// when asked for, since it builds a separate Cargo project (sqlx) first.
    Peer,
    /// Create-order commands by `wrk` against the `cairn` binary, beside the append rate;
    /// only when asked for.
    Wrk,
    /// The `cairn` binary's memory serving a large cached store; only when asked for.
    Memory,
    /// Appends and reads over gRPC (the official `KurrentDB` client) beside HTTP, against
    /// the `cairn` binary; only when asked for.
    Grpc,
    /// Mixed load with SSE subscribers for `--soak-secs`, memory sampled; only when asked for.
    Soak,
    /// The console: its index's cost on appends, and each page's first-byte time on a
    /// 1M-event store; only when asked for.
    Console,
}

/// Repetitions of the long-stream scenario (its targets are about the worst of them).
const LONG_STREAM_REPETITIONS: usize = 5;

/// Workload sizes, scaled down by `--quick`.
#[derive(Clone, Copy)]
pub struct Sizes {
    /// Single-event appends per writer count: total appends.
    pub single_appends: u64,
    /// 100-event batches.
    pub batches: u64,
    /// Events in the one long stream.
    pub stream_events: u64,
    /// Events in `$all`.
    pub all_events: u64,
}

/// The ratios the embedded store's issues set targets for.
fn sqlite_ratios(table: &mut Table, sizes: Sizes) {
    table.ratio("append 1 event, 64 writers", "raw insert, 1 event/txn", "target >= 10x");
    table.ratio("append 1 event, 64 writers", "raw insert, 64 events/txn", "target >= 0.70");
    table.ratio("append 1 event, 16 writers", "raw insert, 1 event/txn", "");
    table.ratio("append 100-event batches, 1 writer", "raw insert, 100 events/txn", "");
    table.ratio("read $all (1M events)", "raw scan of events", "target >= 0.50");
    table.ratio("read one 10k-event stream", "raw query of one 10k stream", "target >= 0.50");
    table.ratio(
        "HTTP create order, 16 clients",
        "raw insert, 1 event/txn, 16 writers",
        "target >= 2x",
    );
    let catch_up =
        if sizes.all_events == 1_000_000 { "1M".to_owned() } else { sizes.all_events.to_string() };
    table.ratio(
        &format!("projection catch-up, order_summary over {catch_up} events"),
        "raw batched upsert, read-model-shaped table",
        "target >= 1.0 (#18)",
    );
    table.ratio(
        &format!("projection catch-up, order_summary over {catch_up} events, no SQLite heap limit"),
        "raw batched upsert, read-model-shaped table",
        "",
    );
    table.ratio(
        &format!("projection rebuild, order_summary over {catch_up} events"),
        "raw batched upsert, read-model-shaped table",
        "",
    );
}

/// `--only bus`: the relay beside raw JetStream.
fn bus(
    runtime: &tokio::runtime::Runtime,
    table: &mut Table,
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<()> {
    let events = if args.quick { 20_000 } else { 200_000 };
    runtime.block_on(bus::run(table, dir, &args.nats_url, events, args.runs))?;
    table.ratio(
        "relay $all -> JetStream",
        "raw JetStream acked publish, 256 in flight",
        "target >= 0.70",
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes { single_appends: 2_000, batches: 50, stream_events: 10_000, all_events: 100_000 }
    } else {
        Sizes {
            single_appends: 20_000,
            batches: 300,
            stream_events: 10_000,
            all_events: args.all_events,
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("cairn-bench")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut table = Table::default();
    eprintln!("cairn-bench: {} runs per scenario, data in {}", args.runs, tmp.path().display());
    // In-process scenarios first, then the peer, then the `cairn` binary from outside; one
    // table at the end, printed even when a later group fails.
    let mut peer_sides = None;
    let result = (|| {
        if args.only.contains(&Group::Bus) {
            bus(&runtime, &mut table, tmp.path(), &args)?;
        }
        if args.store == Backend::Postgres {
            runtime.block_on(pg::run(
                &mut table,
                &args.database_url,
                sizes,
                args.runs,
                &args.only,
            ))?;
            pg::ratios(&mut table, sizes);
        } else {
            in_process(&runtime, &mut table, tmp.path(), sizes, &args)?;
        }
        if args.only.contains(&Group::Peer) {
            peer_sides = Some(peer::run(&runtime, &mut table, tmp.path(), &args)?);
        }
        if args.only.iter().any(|g| {
            matches!(g, Group::Wrk | Group::Memory | Group::Soak | Group::Grpc | Group::Console)
        }) {
            external::run_outside(&runtime, &mut table, tmp.path(), &args)?;
        }
        anyhow::Ok(())
    })();
    table.print();
    if let Some(sides) = peer_sides {
        peer::print_sides(&sides);
    }
    result
}

/// The in-process SQLite groups.
fn in_process(
    runtime: &tokio::runtime::Runtime,
    table: &mut Table,
    dir: &std::path::Path,
    sizes: Sizes,
    args: &Args,
) -> anyhow::Result<()> {
    runtime.block_on(async {
        // Each run measures the store and its raw ceilings back to back, so that a slow
        // period of the disk (fsync times vary 40x here) hits both sides of a ratio.
        for run in 0..args.runs {
            if args.only.contains(&Group::Appends) {
                store::appends(table, dir, sizes, run).await?;
            }
            if args.only.contains(&Group::Raw) {
                raw::inserts(table, dir, sizes)?;
            }
        }
        if args.only.contains(&Group::Long) {
            long::run(table, dir, LONG_STREAM_REPETITIONS).await?;
        }
        if args.only.contains(&Group::Lifecycle) {
            for _ in 0..args.runs {
                cqrs::lifecycles(table, dir, if args.quick { 1 } else { 4 }).await?;
            }
        }
        if args.only.contains(&Group::Reads) {
            store::reads(table, dir, sizes, args.runs).await?;
        }
        if args.only.contains(&Group::Create) {
            for _ in 0..args.runs {
                cqrs::create_orders_at(table, dir, 16, if args.quick { 1 } else { 4 }).await?;
            }
        }
        if args.only.contains(&Group::Cqrs) {
            for _ in 0..args.runs {
                cqrs::run(table, dir, args.quick).await?;
            }
        }
        if args.only.iter().any(|g| matches!(g, Group::Cqrs | Group::Catchup)) {
            catch_up(table, dir, sizes, args.runs).await?;
        }
        anyhow::Ok(())
    })?;
    sqlite_ratios(table, sizes);
    Ok(())
}

/// Catch-up: one log, replayed into a fresh read model each run, beside the raw batched
/// upsert into a table of the same shape.
async fn catch_up(
    table: &mut Table,
    dir: &std::path::Path,
    sizes: Sizes,
    runs: usize,
) -> anyhow::Result<()> {
    let log = dir.join("catchup-log");
    eprintln!("  building a log of {} order events for the catch-up scenario", sizes.all_events);
    cqrs::build_order_log(&log, sizes.all_events).await?;
    let events_name =
        if sizes.all_events == 1_000_000 { "1M".to_owned() } else { sizes.all_events.to_string() };
    for _ in 0..runs {
        let r = cqrs::catch_up(&log, &dir.join("catchup-rm"), &SqliteOptions::default()).await?;
        table.sample(
            &format!("projection catch-up, order_summary over {events_name} events"),
            "events/s",
            r,
        );
        // What SQLite's process-wide heap limit (HEAP_SOFT_LIMIT_BYTES) costs here.
        let unlimited = SqliteOptions { heap_soft_limit_bytes: 0, ..SqliteOptions::default() };
        let r = cqrs::catch_up(&log, &dir.join("catchup-rm"), &unlimited).await?;
        table.sample(
            &format!(
                "projection catch-up, order_summary over {events_name} events, no SQLite heap limit"
            ),
            "events/s",
            r,
        );
        // The same read-model file, now rebuilt beside itself and swapped in.
        let r = cqrs::rebuild(&log, &dir.join("catchup-rm")).await?;
        table.sample(
            &format!("projection rebuild, order_summary over {events_name} events"),
            "events/s",
            r,
        );
        let raw = raw::upsert_batched(
            &dir.join("upsert.db"),
            sizes.all_events / 4,
            500,
            sizes.all_events / 4 / 4,
        )?;
        table.sample("raw batched upsert, read-model-shaped table", "rows/s", raw);
    }
    Ok(())
}
