//! Test support: a fresh database per test, dropped afterwards.
//!
//! Tests that need PostgreSQL call [`TestDatabase::create`]. Without
//! `CAIRN_TEST_POSTGRES_URL` they are skipped, and say so on the terminal (once per test
//! binary, outside the test harness's output capture); with it, an unreachable server
//! fails them. `.ci/run` sets the variable, so CI never skips.

use std::io::Write as _;
use std::sync::Once;

use tokio_postgres::config::Host;

/// The variable naming the server tests use (any database on it; they create their own).
pub const URL_VAR: &str = "CAIRN_TEST_POSTGRES_URL";

static SKIP_NOTICE: Once = Once::new();

/// The admin URL, or `None` (after a loud notice) when PostgreSQL tests are not enabled.
#[must_use]
pub fn admin_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            SKIP_NOTICE.call_once(|| {
                let binary = std::env::args().next().unwrap_or_default();
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: the PostgreSQL tests of {binary} did not run. Set {URL_VAR}=postgres://postgres@127.0.0.1:5432/test to run them (.ci/run does). ***\n"
                );
            });
            None
        }
    }
}

/// A schema created for one test and dropped when this is dropped.
///
/// A schema, not a database: `DROP DATABASE` forces a checkpoint on PostgreSQL 15, and
/// tests dropping databases in parallel queue behind each other's checkpoints. Everything
/// Cairn names (tables, advisory-lock keys, `NOTIFY` channels) is namespaced by the
/// schema, so tests in separate schemas never see each other.
pub struct TestDatabase {
    /// URL whose sessions use the new schema (`search_path`).
    pub url: String,
    name: String,
    admin: String,
}

/// A URL for `config` whose sessions use `schema`, with the admin URL's TLS options
/// (`tls`, as query parameters).
fn url_for(config: &tokio_postgres::Config, schema: &str, tls: &str) -> String {
    let db = config.get_dbname().unwrap_or("postgres");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    match config.get_password() {
        Some(p) => format!(
            "postgres://{user}:{}@{host}:{port}/{db}?options=-csearch_path%3D{schema}{tls}",
            String::from_utf8_lossy(p)
        ),
        None => {
            format!("postgres://{user}@{host}:{port}/{db}?options=-csearch_path%3D{schema}{tls}")
        }
    }
}

impl TestDatabase {
    /// Creates an empty schema, or `None` when PostgreSQL tests are not enabled.
    ///
    /// # Panics
    /// When the variable is set but the server cannot be reached: an enabled backend test
    /// must fail, not skip.
    pub async fn create() -> Option<Self> {
        Some(Self::create_at(&admin_url()?).await)
    }

    /// Creates an empty schema on the server at `admin` (benchmarks).
    ///
    /// # Panics
    /// When the server cannot be reached or the schema cannot be created.
    pub async fn create_at(admin: &str) -> Self {
        let admin = admin.to_owned();
        let (config, tls) = crate::tls::parse(&admin)
            .unwrap_or_else(|e| panic!("{URL_VAR} is not a valid URL: {e}"));
        let tls_query =
            crate::tls::split_url(&admin).map(|(_, o)| o.to_query()).unwrap_or_default();
        let (client, connection) = config
            .connect(tls)
            .await
            .unwrap_or_else(|e| panic!("{URL_VAR} is set but PostgreSQL is unreachable: {e}"));
        tokio::spawn(connection);
        let name = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create a test schema: {e}"));
        Self { url: url_for(&config, &name, &tls_query), name, admin }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside or outside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let Ok((config, tls)) = crate::tls::parse(&admin) else { return };
                if let Ok((client, connection)) = config.connect(tls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}
