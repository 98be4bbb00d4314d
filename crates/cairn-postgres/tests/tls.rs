//! TLS to PostgreSQL with libpq's `sslmode` semantics: `require` encrypts against the
//! shared server, and the verifying modes against a private cluster whose certificate
//! comes from a CA made here (the shared server's certificate is not ours to choose).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cairn_conformance::fixtures::{append_of, event};
use cairn_core::{AllFilter, EventStore, ExpectedVersion};
use cairn_postgres::testing::admin_url;
use cairn_postgres::{OpenError, PgOptions, open, session};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Whether the session `url` opens (the way Cairn opens every session) is encrypted.
async fn encrypted(url: &str) -> Result<bool, OpenError> {
    let (config, tls) = session(url, &PgOptions::default())?;
    let (client, connection) =
        config.connect(tls).await.map_err(|e| OpenError::Connect(chain(&e)))?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| OpenError::Connect(e.to_string()))?;
    Ok(row.get(0))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[tokio::test]
async fn require_encrypts_and_disable_does_not() {
    let Some(admin) = admin_url() else { return };
    assert!(encrypted(&with_params(&admin, "sslmode=require")).await.expect("require"));
    assert!(!encrypted(&with_params(&admin, "sslmode=disable")).await.expect("disable"));
    // No sslmode: libpq's default, `prefer` (the shared server has ssl=on).
    assert!(encrypted(&admin).await.expect("default"));
    let unknown = encrypted(&with_params(&admin, "sslmode=always")).await;
    assert!(matches!(unknown, Err(OpenError::Tls(_))), "{unknown:?}");
}

/// A CA, a server certificate it signed, and a client certificate for the role
/// `certuser`.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    client_cert: String,
    client_key: String,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "cairn test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap().pem();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    // PostgreSQL's `cert` authentication maps the common name to the role.
    client.distinguished_name.push(DnType::CommonName, "certuser");
    let client_cert = client.signed_by(&client_key, &issuer).unwrap().pem();
    Pki { ca, cert, key: key.serialize_pem(), client_cert, client_key: client_key.serialize_pem() }
}

/// The directory holding `initdb` and `pg_ctl`.
fn bindir() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/local/bin")])
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A private cluster with `ssl=on` and the given server certificate; stopped on drop.
struct TlsCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl TlsCluster {
    fn start(pki: &Pki) -> Self {
        let bindir = bindir().expect("initdb and pg_ctl");
        // initdb refuses to run as root; the server's own user does it.
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("cairn-pg-tls").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { dir, bindir, port, as_postgres };
        let path = cluster.dir.path();
        std::fs::create_dir(path.join("sock")).unwrap();
        std::fs::write(path.join("server.crt"), &pki.cert).unwrap();
        std::fs::write(path.join("server.key"), &pki.key).unwrap();
        std::fs::write(path.join("ca.crt"), &pki.ca).unwrap();
        // The server refuses a key others can read.
        std::fs::set_permissions(
            path.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        if as_postgres {
            let chown = Command::new("chown").args(["-R", "postgres:"]).arg(path).status();
            assert!(chown.is_ok_and(|s| s.success()), "chown to postgres");
        }
        let data = path.join("data");
        cluster.run(
            "initdb",
            &["-D".as_ref(), data.as_os_str(), "-U postgres -A trust -E UTF8 --no-sync".as_ref()],
        );
        // `certuser` only over TLS with a client certificate; everyone else trusted.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all certuser 127.0.0.1/32 cert\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let options = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=20 -c fsync=off \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key -c ssl_ca_file={dir}/ca.crt",
            sock = path.join("sock").display(),
            dir = path.display(),
        );
        let log = path.join("server.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        cluster
    }

    fn command(&self, tool: &str) -> Command {
        let tool = self.bindir.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        };
        // The postmaster would otherwise hold our pipes and `output()` wait for its exit.
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let mut c = self.command(tool);
        for a in args {
            // initdb's fixed flags come as one string: split them.
            match a.to_str() {
                Some(s) if s.starts_with("-U ") => {
                    c.args(s.split(' '));
                }
                _ => {
                    c.arg(a);
                }
            }
        }
        let out = c.output().expect("run");
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{tool}: {}\n{}\n{}\nserver log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_chain_and_the_host_name_verify_ca_the_chain_only() {
    if bindir().is_none() {
        eprintln!("*** SKIPPED: no initdb/pg_ctl on PATH or in /usr/local/bin ***");
        return;
    }
    // The certificate names `localhost` only, so that `127.0.0.1` reaches the same server
    // under a name the certificate does not hold.
    let good = pki(&["localhost"]);
    let cluster = TlsCluster::start(&good);
    let files = tempfile::tempdir().unwrap();
    let ca = write(files.path(), "ca.pem", &good.ca);
    let other_ca = write(files.path(), "other-ca.pem", &pki(&["localhost"]).ca);

    // verify-full with the right CA: the real store opens, stores and reads an event, and
    // every one of its sessions (pool, LISTEN) is encrypted.
    let url = cluster.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let options = PgOptions { pool_size: 2, ..PgOptions::default() };
    let (store, _readmodels) = open(&url, &options).await.expect("verify-full with the right CA");
    store
        .append(append_of("tls-1", ExpectedVersion::NoStream, vec![event("Opened", 1)]))
        .await
        .expect("append over TLS");
    let all = store.read_all(0, 10, &AllFilter::default()).await.expect("read over TLS");
    assert_eq!(all.events.len(), 1);
    assert_eq!(all.events[0].aggregate_id, "tls-1");
    let (config, tls) = session(&url, &options).unwrap();
    let (client, connection) = config.connect(tls).await.unwrap();
    tokio::spawn(connection);
    let (plain, total): (i64, i64) = client
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(total >= 2, "the store's sessions and this one: {total}");
    assert_eq!(plain, 0, "every session of the store is encrypted");
    drop(client);
    Arc::new(store).close().await;

    // A certificate from another CA (of the same name, so the signature is what fails):
    // refused, saying why.
    let wrong = cluster.url("localhost", &format!("sslmode=verify-full&sslrootcert={other_ca}"));
    let err = open(&wrong, &options).await.err().expect("another CA is refused");
    let message = err.to_string();
    assert!(message.contains("invalid peer certificate: BadSignature"), "{message}");

    // A host name the certificate does not hold: verify-full refuses, verify-ca (the
    // chain only) accepts.
    let other_name = "127.0.0.1";
    let full = cluster.url(other_name, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let err = encrypted(&full).await.expect_err("verify-full checks the name");
    assert!(err.to_string().contains("certificate not valid for name"), "{err}");
    let chain_only = cluster.url(other_name, &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert!(encrypted(&chain_only).await.expect("verify-ca ignores the name"));
    // require with a root certificate is verify-ca (libpq): another CA is refused.
    let require = cluster.url("127.0.0.1", &format!("sslmode=require&sslrootcert={other_ca}"));
    assert!(encrypted(&require).await.is_err(), "require + sslrootcert checks the chain");
    // require alone encrypts without checking anything.
    assert!(encrypted(&cluster.url("127.0.0.1", "sslmode=require")).await.unwrap());

    // A client certificate (sslcert/sslkey) authenticates a role that needs one.
    let (config, tls) = session(&url, &options).unwrap();
    let (admin, connection) = config.connect(tls).await.unwrap();
    tokio::spawn(connection);
    admin.batch_execute("CREATE ROLE certuser LOGIN").await.unwrap();
    let cert = write(files.path(), "client.crt", &good.client_cert);
    let key = write(files.path(), "client.key", &good.client_key);
    let as_certuser = |params: String| {
        format!("postgres://certuser@localhost:{}/postgres?{params}", cluster.port)
    };
    let with_cert =
        as_certuser(format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"));
    assert!(encrypted(&with_cert).await.expect("the client certificate is accepted"));
    let err = encrypted(&as_certuser(format!("sslmode=verify-full&sslrootcert={ca}")))
        .await
        .expect_err("no client certificate, no session");
    assert!(err.to_string().contains("certificate"), "{err}");
}
