//! A `serve` binary as a child process: `cairn serve`, or any binary built on
//! `cairn_cli::run` (an example's own, through `env!("CARGO_BIN_EXE_<name>")`), started on
//! a [`Place`] of either backend on a loopback port, ready once `/health/ready` says 200,
//! and killed with `kill -9` for crash tests.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::Place;

/// Ports [`free_port`] handed out in this process. The kernel may give a just-closed port
/// to the next caller, so without this two tests starting servers at once, or one test
/// restarting its server on its port while another asks, could share a port, and one
/// test's readiness check answer for another test's server (seen in CI).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free loopback port, never one this process was given before (the listener is
/// closed before the child binds it).
#[must_use]
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The `serve` flags that put a server's storage on `place`: `--data-dir <dir>`, or
/// `--store postgres --database-url <url>`.
#[must_use]
pub fn place_args(place: &Place) -> Vec<OsString> {
    match (place.dir(), place.database_url()) {
        (Some(dir), _) => vec!["--data-dir".into(), dir.into()],
        (None, Some(url)) => {
            vec!["--store".into(), "postgres".into(), "--database-url".into(), url.into()]
        }
        (None, None) => unreachable!("a place is a directory or a database"),
    }
}

/// A running `<binary> serve`, killed when dropped.
pub struct ServeProcess {
    /// The child process (for a test that signals or waits for it itself).
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    binary: PathBuf,
    port: u16,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl ServeProcess {
    /// Starts `binary serve` on `place` with extra `flags` and environment, on a free
    /// port, and waits until it is ready.
    pub async fn start(
        binary: impl AsRef<Path>,
        place: &Place,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = place_args(place);
        args.extend(flags.iter().map(OsString::from));
        Self::start_at(binary, free_port(), &args, env).await
    }

    /// Starts `binary serve --listen 127.0.0.1:<port> <args>` (storage flags included)
    /// with extra environment, and waits until it is ready. A given port lets a test
    /// restart a server where its clients expect it.
    pub async fn start_at(
        binary: impl AsRef<Path>,
        port: u16,
        args: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
    ) -> Self {
        let binary = binary.as_ref().to_owned();
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let child = launch(&binary, port, &args, &env).await;
        Self { child, base: format!("http://127.0.0.1:{port}"), binary, port, args, env }
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `kill -9`, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.kill_9().await;
    }

    /// `kill -9`, then the same binary with the same arguments on the same port, ready.
    pub async fn restart(&mut self) {
        self.kill_9().await;
        self.relaunch().await;
    }

    /// `kill -9` and wait for the process to be gone, keeping this handle for
    /// [`ServeProcess::relaunch`]: what a test sends in between finds nobody listening.
    pub async fn kill_in_place(&mut self) {
        self.kill_9().await;
    }

    /// The same binary with the same arguments on the same port, ready (after
    /// [`ServeProcess::kill_in_place`]).
    pub async fn relaunch(&mut self) {
        self.child = launch(&self.binary, self.port, &self.args, &self.env).await;
    }

    async fn kill_9(&mut self) {
        // An already exited child cannot be killed; waiting is what matters.
        let _ = self.child.start_kill();
        self.child.wait().await.expect("the child is reaped");
    }
}

/// Starts `binary serve` on `port` and waits until it is ready.
async fn launch(binary: &Path, port: u16, args: &[OsString], env: &[(String, String)]) -> Child {
    let mut child = Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .args(["--log", "warn"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
    for _ in 0..400 {
        if ready(port).await {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} serve exited before it was ready: {status}", binary.display());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} serve did not become ready on port {port}", binary.display());
}

/// Whether `GET /health/ready` answers 200. Plain HTTP/1.1 over a socket: one request
/// does not justify an HTTP client in every test's dependencies.
async fn ready(port: u16) -> bool {
    let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!(
        "GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200")
}
