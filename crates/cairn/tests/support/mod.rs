//! Starts the `cairn` debug binary as a child process on a free loopback port, through
//! `cairn_testkit::serve` (which any binary built on `cairn_cli::run` can use the same way).

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

pub use cairn_testkit::serve::{ServeProcess, free_port};
use tokio::process::Command;

/// The binary under test.
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// `cairn serve`, started in the ways these tests need.
pub struct Server;

impl Server {
    /// Starts `cairn serve` on `data_dir` with extra environment variables and waits until ready.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> ServeProcess {
        Self::start_on_port(data_dir, free_port(), env).await
    }

    /// Starts `cairn serve` on a test place of either backend.
    pub async fn start_on(place: &cairn_testkit::Place, env: &[(&str, &str)]) -> ServeProcess {
        ServeProcess::start(CAIRN, place, &[], env).await
    }

    /// Starts `cairn serve` on a test place of either backend, with extra flags.
    pub async fn start_on_args(
        place: &cairn_testkit::Place,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> ServeProcess {
        ServeProcess::start(CAIRN, place, flags, env).await
    }

    /// Starts `cairn serve` on a test place with extra `serve` arguments.
    pub async fn start_on_with(place: &cairn_testkit::Place, extra: &[&str]) -> ServeProcess {
        ServeProcess::start(CAIRN, place, extra, &[]).await
    }

    /// Starts `cairn serve` on `data_dir` listening on a given `port` (to restart a server
    /// where clients expect it) and waits until ready.
    pub async fn start_on_port(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> ServeProcess {
        let args: [OsString; 2] = ["--data-dir".into(), data_dir.into()];
        ServeProcess::start_at(CAIRN, port, &args, env).await
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
    let output = Command::new(CAIRN)
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

/// A CA, and a certificate it signed for `localhost` and `127.0.0.1`, as PEM files in `dir`:
/// `(ca.pem, cert.pem, key.pem)`.
pub fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cairn test CA");
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server_cert.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}
