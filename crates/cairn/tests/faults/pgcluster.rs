//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory, started
//! on a free loopback port, restartable mid-test, stopped and deleted on drop. The shared
//! server is never restarted: other tests (and other engineers) use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running private cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// Where it listens (127.0.0.1).
    pub port: u16,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, else `initdb` on PATH.
fn bindir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config").arg("--bindir").output().ok().and_then(|o| {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        (o.status.success() && dir.join("initdb").is_file()).then_some(dir)
    });
    from_pg_config.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgCluster {
    /// Creates and starts a cluster, or says why it cannot (the caller skips loudly).
    pub fn start() -> Result<Self, String> {
        let bindir = bindir().ok_or("no initdb: neither `pg_config --bindir` nor PATH has it")?;
        // initdb refuses to run as root; the server's own user does it.
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("cairn-faults-pg")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("running as root and cannot hand a directory to `postgres`".into());
            }
        }
        let port = cairn_testkit::serve::free_port();
        let cluster = Self { dir, bindir, port, as_postgres };
        std::fs::create_dir_all(cluster.sockets()).map_err(|e| e.to_string())?;
        if as_postgres {
            let _ = Command::new("chown").arg("postgres:").arg(cluster.sockets()).status();
        }
        cluster.run(
            "initdb",
            &["-D", &cluster.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            cluster.sockets().display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &cluster.data(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: through a proxy at `port`, or direct.
    pub fn url_at(port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// Restarts the server (`fast`: clean shutdown; `immediate`: crash and WAL recovery).
    pub async fn restart(&self, mode: &str) -> Result<(), String> {
        // pg_ctl remembers the start options (postmaster.opts) but not the log file, and
        // a server writing to our pipe would keep `output()` waiting forever.
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        let args = ["-D", data.as_str(), "-l", &log, "-w", "-t", "30", "-m", mode, "restart"];
        let mut c = tokio::process::Command::from(self.command(&self.bindir.join("pg_ctl"), &args));
        let out = c.kill_on_drop(true).output().await.map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!("pg_ctl restart: {}: {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn sockets(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out =
            self.command(&self.bindir.join(tool), args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        Err(format!(
            "{tool} {args:?}: {}\n{}\n{}\nserver log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn command(&self, tool: &Path, args: &[&str]) -> Command {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        };
        c.args(args).stdin(Stdio::null());
        // pg_ctl start leaves the postmaster holding inherited pipes otherwise, and
        // `output()` would wait for the server to exit.
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command(
                &self.bindir.join("pg_ctl"),
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
