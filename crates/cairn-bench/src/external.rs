//! `cairn serve` as a separate process, as it is deployed: the release binary, a token
//! file (authentication on), the default limits. Shared by the scenarios that measure the
//! server from outside (`--only wrk`, `memory`, `soak`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// Longest wait for `/health/ready` after the process starts (opening a 10M-event store
/// included).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the server to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server's log shown when it fails.
const LOG_TAIL_LINES: usize = 30;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// `--cairn-bin`, or `<workspace>/target/release/cairn`, built first (`cargo build
/// --release -p cairn`, a no-op when it is up to date) so that a plain run measures this
/// tree.
pub fn cairn_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if given.is_none() {
        eprintln!("  building the cairn binary: cargo build --release -p cairn");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "cairn", "--manifest-path"])
            .arg(workspace_root().join("Cargo.toml"))
            .status()
            .context("cannot run cargo")?;
        anyhow::ensure!(status.success(), "cargo build --release -p cairn failed");
    }
    let bin = given.map_or_else(
        || workspace_root().join("target").join("release").join("cairn"),
        Path::to_path_buf,
    );
    anyhow::ensure!(
        bin.is_file(),
        "no cairn binary at {}: build it with `cargo build --release -p cairn` (or pass --cairn-bin)",
        bin.display()
    );
    Ok(bin)
}

/// `--serve-arg`s, set once by [`run_outside`]: every server a scenario starts gets them,
/// without threading them through each scenario.
static SERVE_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Where `cairn serve` keeps its data.
pub enum Storage {
    /// The embedded store in this directory.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (its `search_path` names the schema).
    Postgres(String),
}

/// A running `cairn serve`; killed when dropped, whatever the path out.
pub struct CairnProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The bootstrap admin token (from the token file).
    pub admin_token: String,
    /// Holds the token file and the server's log.
    dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// A loopback port free at the time of asking.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl CairnProcess {
    /// Starts `cairn serve` on `storage` and waits until it is ready.
    pub async fn start(bin: &Path, storage: &Storage) -> anyhow::Result<Self> {
        Self::start_with(bin, storage, &[]).await
    }

    /// The same, with extra `serve` arguments.
    pub async fn start_with(bin: &Path, storage: &Storage, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cairn-serve").tempdir()?;
        let admin_token =
            cairn_server::auth::new_token().context("no randomness from the system")?;
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{admin_token}\n"))?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("cairn.log"))?;
        let mut command = Command::new(bin);
        command.arg("serve").arg("--listen").arg(format!("127.0.0.1:{port}"));
        command.arg("--admin-token-file").arg(&token_file);
        command.args(SERVE_ARGS.get().into_iter().flatten());
        command.args(extra);
        match storage {
            Storage::Sqlite(data) => {
                command.arg("--data-dir").arg(data);
            }
            Storage::Postgres(url) => {
                command.args(["--store", "postgres", "--database-url", url]);
            }
        }
        // The default limits and settings: nothing from this shell's CAIRN_* variables
        // (a CAIRN_NATS_URL would start the relay, for one).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAIRN_") {
                command.env_remove(key);
            }
        }
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("cannot run {}", bin.display()))?;
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        let mut process = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            admin_token,
            dir,
            client,
        };
        process.wait_ready().await?;
        Ok(process)
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The end of the server's log, for an error message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("cairn.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// An error unless the process is still running.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("cairn serve exited ({status}); its log ends with:\n{}", self.log_tail());
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            let ready = self.client.get(format!("{}/health/ready", self.base)).send().await;
            if matches!(&ready, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < READY_TIMEOUT,
                "cairn serve not ready after {READY_TIMEOUT:?}; its log ends with:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request with `token` as its bearer.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token)
    }

    /// `GET path` as the admin, as JSON.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.request(reqwest::Method::GET, path, &self.admin_token).send().await?;
        anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
        Ok(r.json().await?)
    }

    /// A new token of `role` made through the admin API, as an operator would.
    pub async fn create_token(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let r = self
            .request(reqwest::Method::POST, "/admin/tokens", &self.admin_token)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "POST /admin/tokens: {}", r.status());
        let body: Value = r.json().await?;
        body["token"].as_str().map(str::to_owned).context("no token in the answer")
    }

    /// Waits until every projection and process manager has reached the log's head
    /// (`GET /admin/projections`: lag 0), printing progress; `timeout` at most.
    pub async fn wait_caught_up(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last_print = Instant::now();
        loop {
            self.ensure_running()?;
            let rows = self.admin_get("/admin/projections").await?;
            let rows = rows.as_array().context("/admin/projections: not an array")?;
            let behind: Vec<(&str, u64, u64)> = rows
                .iter()
                .filter(|r| r["lag"].as_u64() != Some(0))
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or("?"),
                        r["position"].as_u64().unwrap_or(0),
                        r["head_position"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if let Some(failed) = rows.iter().find(|r| r["status"] == "failed") {
                anyhow::bail!("consumer {} failed; log:\n{}", failed["name"], self.log_tail());
            }
            if behind.is_empty() {
                return Ok(start.elapsed());
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                let list: Vec<String> =
                    behind.iter().map(|(n, p, h)| format!("{n} {p}/{h}")).collect();
                eprintln!(
                    "    catching up ({:.0} s): {}",
                    start.elapsed().as_secs_f64(),
                    list.join(", ")
                );
            }
            anyhow::ensure!(start.elapsed() < timeout, "consumers not caught up after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGTERM, then the wait for a graceful exit (the store closed), then SIGKILL.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("cairn serve did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed")
    }
}

impl Drop for CairnProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Memory of a process from `/proc/<pid>/status`, each in MiB (the kernel's `kB` are KiB).
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `RssAnon`: heap, stacks; what a leak grows.
    pub anon: f64,
    /// `RssFile`: mapped files (the binary, SQLite's memory-mapped pages).
    pub file: f64,
    /// `VmHWM`: the peak resident set since the process started.
    pub hwm: f64,
}

/// Reads `/proc/<pid>/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("unreadable {line:?}"))?;
        Ok(kib / 1024.0)
    };
    Ok(Memory { anon: field("RssAnon:")?, file: field("RssFile:")?, hwm: field("VmHWM:")? })
}

/// `--only wrk,memory,soak`: the scenarios against the `cairn` binary, on `--store`; the
/// table is printed even when one fails (what was measured stays visible).
pub fn run_outside(
    runtime: &tokio::runtime::Runtime,
    table: &mut crate::report::Table,
    dir: &Path,
    args: &crate::Args,
) -> anyhow::Result<()> {
    use crate::Group;
    let bin = cairn_bin(args.cairn_bin.as_deref())?;
    let _ = SERVE_ARGS.set(args.serve_arg.clone());
    runtime.block_on(async {
        if args.only.contains(&Group::Grpc) {
            crate::grpc::run(
                table,
                args.store,
                &bin,
                dir,
                &args.database_url,
                args.runs,
                args.quick,
            )
            .await?;
        }
        if args.only.contains(&Group::Wrk) {
            crate::wrk::run(table, args.store, &bin, dir, &args.database_url, args.runs).await?;
        }
        if args.only.contains(&Group::Memory) {
            let events =
                args.memory_events.unwrap_or(if args.quick { 100_000 } else { 10_000_000 });
            crate::memory::run(table, args.store, &bin, &args.database_url, events).await?;
        }
        if args.only.contains(&Group::Console) {
            crate::console::run(table, &bin, dir, args.runs, args.quick).await?;
        }
        if args.only.contains(&Group::Soak) {
            crate::soak::run(table, args.store, &bin, dir, &args.database_url, args.soak_secs)
                .await?;
        }
        anyhow::Ok(())
    })
}
