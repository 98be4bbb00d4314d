//! Starts the `cairn` debug binary as a child process on a free loopback port.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A free loopback port (the listener is closed before the child binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `cairn serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `cairn serve` on `data_dir` with extra environment variables and waits until ready.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_args(&["--data-dir".as_ref(), data_dir.as_os_str()], env).await
    }

    /// Starts `cairn serve` on a test place of either backend.
    pub async fn start_on(place: &cairn_testkit::Place, env: &[(&str, &str)]) -> Self {
        Self::start_on_args(place, &[], env).await
    }

    /// Starts `cairn serve` on a test place of either backend, with extra flags.
    pub async fn start_on_args(
        place: &cairn_testkit::Place,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<&std::ffi::OsStr> = match (place.dir(), place.database_url()) {
            (Some(dir), _) => vec!["--data-dir".as_ref(), dir.as_os_str()],
            (None, Some(url)) => {
                vec![
                    "--store".as_ref(),
                    "postgres".as_ref(),
                    "--database-url".as_ref(),
                    url.as_ref(),
                ]
            }
            (None, None) => unreachable!("a place is a directory or a database"),
        };
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        Self::start_args(&args, env).await
    }

    /// Starts `cairn serve` on a test place with extra `serve` arguments.
    pub async fn start_on_with(place: &cairn_testkit::Place, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = match (place.dir(), place.database_url()) {
            (Some(dir), _) => vec!["--data-dir".into(), dir.into()],
            (None, Some(url)) => {
                vec!["--store".into(), "postgres".into(), "--database-url".into(), url.into()]
            }
            (None, None) => unreachable!("a place is a directory or a database"),
        };
        args.extend(extra.iter().map(Into::into));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
        Self::start_args(&args, &[]).await
    }

    async fn start_args(store_args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Self {
        Self::start_at(free_port(), store_args, env).await
    }

    async fn start_at(port: u16, store_args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(store_args)
            .args(["--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("cairn binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
                && r.status() == 200
            {
                return Self { child, base };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("cairn serve did not become ready on port {port}");
    }

    /// `kill -9`, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

impl Server {
    /// Starts `cairn serve` on `data_dir` listening on a given `port` (to restart a server
    /// where clients expect it) and waits until ready.
    pub async fn start_on_port(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        Self::start_at(port, &["--data-dir".as_ref(), data_dir.as_os_str()], env).await
    }
}

/// What one run of a `cairn` operator command printed, and how it ended.
pub struct Run {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Whether it exited with status 0.
    pub ok: bool,
}

/// Runs `cairn ARGS` against the server at `url` (through `CAIRN_URL`), stdin closed.
pub async fn cairn(url: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_URL", url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cairn binary runs");
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        ok: output.status.success(),
    }
}
