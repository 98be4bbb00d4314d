//! `--only wrk`: create-order commands from outside, by `wrk`, against the release `cairn`
//! binary with authentication on, beside the store's own single-event append rate at 16
//! writers on the same backend, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use cairn_core::EventStore;
use cairn_postgres::testing::TestDatabase;
use cairn_sqlite::{SqliteEventStore, SqliteOptions};

use crate::Backend;
use crate::external::{CairnProcess, Storage};
use crate::report::{Table, rate};

/// wrk threads and connections (`-t2 -c16`): 16 connections, like the 16 writers beside.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 16;
/// Length of one wrk run.
const WRK_SECS: u32 = 10;
/// Writers and appends of the store's append rate beside it.
const APPEND_WRITERS: u64 = 16;
const APPEND_TOTAL: u64 = 20_000;

/// What one wrk run reported (its `done` line).
struct WrkResult {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn script() -> PathBuf {
    crate::external::workspace_root().join("bench").join("wrk").join("create-order.lua")
}

/// Installs wrk with `bench/wrk/install.sh` when it is not on the PATH (the Debian
/// package; the script says what to do elsewhere).
fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    let install = crate::external::workspace_root().join("bench").join("wrk").join("install.sh");
    eprintln!("  wrk is missing: running {}", install.display());
    let status = Command::new("sh").arg(&install).status().context("cannot run sh")?;
    anyhow::ensure!(status.success(), "{} failed: install wrk yourself", install.display());
    Ok(())
}

/// Runs wrk against `base` with `token`; an error on any non-2xx answer or socket error.
fn run_wrk(base: &str, token: &str) -> anyhow::Result<WrkResult> {
    ensure_wrk()?;
    let script = script();
    anyhow::ensure!(script.is_file(), "no wrk script at {}", script.display());
    let output = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{WRK_SECS}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(base)
        // The token in the environment, not on a command line anyone can list.
        .env("CAIRN_TOKEN", token)
        .output()
        .context("cannot run wrk: install it with bench/wrk/install.sh")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("cairn-wrk "))
        .with_context(|| format!("no result line in wrk's output:\n{stdout}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse()
            .with_context(|| format!("unreadable {name} in {line:?}"))
    };
    let errors: Vec<(&str, f64)> = ["non2xx", "connect", "read", "write", "timeout"]
        .into_iter()
        .map(|k| field(k).map(|v| (k, v)))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        errors.iter().all(|(_, v)| *v == 0.0),
        "wrk saw failed requests ({errors:?}):\n{stdout}"
    );
    let requests = field("requests")?;
    anyhow::ensure!(requests > 0.0, "wrk made no request:\n{stdout}");
    Ok(WrkResult {
        requests_per_sec: requests / (field("duration_us")? / 1e6),
        p50_ms: field("p50_us")? / 1000.0,
        p99_ms: field("p99_us")? / 1000.0,
    })
}

/// Starts the server on `storage`, makes a writer token as an operator would, runs wrk.
async fn wrk_against(bin: &Path, storage: &Storage) -> anyhow::Result<WrkResult> {
    let server = CairnProcess::start(bin, storage).await?;
    let token = server.create_token("bench-wrk", "writer").await?;
    let base = server.base.clone();
    let result = tokio::task::spawn_blocking(move || run_wrk(&base, &token)).await?;
    let result = result.map_err(|e| e.context(format!("server log:\n{}", server.log_tail())))?;
    server.stop().await?;
    Ok(result)
}

fn record(table: &mut Table, prefix: &str, r: &WrkResult) {
    let name = format!("{prefix}wrk create order, {WRK_CONNECTIONS} connections");
    table.sample(&name, "ops/s", r.requests_per_sec);
    table.sample(&format!("{name} p50"), "ms", r.p50_ms);
    table.sample(&format!("{name} p99"), "ms", r.p99_ms);
}

/// `runs` runs of wrk and of the append rate, back to back, on `backend`.
pub async fn run(
    table: &mut Table,
    backend: Backend,
    bin: &Path,
    dir: &Path,
    database_url: &str,
    runs: usize,
) -> anyhow::Result<()> {
    for run in 0..runs {
        match backend {
            Backend::Sqlite => {
                let data = dir.join(format!("wrk-{run}"));
                let r = wrk_against(bin, &Storage::Sqlite(data.clone())).await?;
                record(table, "", &r);
                let _ = std::fs::remove_dir_all(&data);
                let path = dir.join(format!("wrk-appends-{run}"));
                let store = Arc::new(SqliteEventStore::open(&path, &SqliteOptions::default())?);
                let elapsed =
                    crate::store::concurrent_single(&store, APPEND_WRITERS, APPEND_TOTAL).await?;
                table.sample(
                    &format!("append 1 event, {APPEND_WRITERS} writers"),
                    "events/s",
                    rate(APPEND_TOTAL / APPEND_WRITERS * APPEND_WRITERS, elapsed),
                );
                store.close().await;
                drop(store);
                let _ = std::fs::remove_dir_all(path);
            }
            Backend::Postgres => {
                // A fresh schema for the server (its URL's search_path), dropped after.
                let db = TestDatabase::create_at(database_url).await;
                let r = wrk_against(bin, &Storage::Postgres(db.url.clone())).await?;
                record(table, "pg: ", &r);
                drop(db);
                let db = TestDatabase::create_at(database_url).await;
                let (store, _rm) =
                    cairn_postgres::open(&db.url, &cairn_postgres::PgOptions::from_env()).await?;
                let store = Arc::new(store);
                let elapsed =
                    crate::store::concurrent_single(&store, APPEND_WRITERS, APPEND_TOTAL).await?;
                table.sample(
                    &format!("pg: append 1 event, {APPEND_WRITERS} writers"),
                    "events/s",
                    rate(APPEND_TOTAL / APPEND_WRITERS * APPEND_WRITERS, elapsed),
                );
                store.close().await;
            }
        }
    }
    let prefix = if backend == Backend::Postgres { "pg: " } else { "" };
    table.ratio(
        &format!("{prefix}wrk create order, {WRK_CONNECTIONS} connections"),
        &format!("{prefix}append 1 event, {APPEND_WRITERS} writers"),
        "target >= 0.40",
    );
    Ok(())
}
