//! Connections, options and the state every part of the backend shares.

use cairn_core::error::error_chain;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::schema;
use crate::tls::{PgTls, TlsError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;

/// How the backend behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Pooled connections (queries, reads, consumers that do not lead).
    pub pool_size: usize,
    /// Appends queued for the writer before callers wait.
    pub queue_appends_max: usize,
    /// Bytes of events queued for (or being committed by) the writer before callers wait.
    pub queue_bytes_max: usize,
    /// Most appends in one group commit.
    pub batch_appends_max: usize,
    /// Most events in one group commit.
    pub batch_events_max: usize,
    /// How long the append lock may be held before it is reported as a stall.
    pub stall_threshold: Duration,
    /// How long an append waits for the append lock before it fails as unavailable.
    pub lock_timeout: Duration,
    /// Polling fallback for `LISTEN/NOTIFY` (head position, other processes' checkpoints).
    pub poll_interval: Duration,
    /// Test hook: sleep this long holding the append lock before each commit.
    pub commit_delay: Duration,
    /// Longest wait for the writers of the previous group to append again (group commit).
    pub gather_wait: Duration,
    /// Longest wait for a pooled connection (or for a new one to connect); past it the
    /// request fails as unavailable (`503 store_unavailable`) instead of queueing forever.
    pub pool_wait: Duration,
    /// TCP keepalive: idle time before the first probe, on both ends of every session, so
    /// that a half-open session (a vanished peer) is noticed in about
    /// `keepalive_idle + 3 × keepalive_interval`, not the OS default of two hours. It
    /// matters most for leadership: the server releases a dead leader's advisory lock only
    /// when it notices the session is gone.
    pub keepalive_idle: Duration,
    /// TCP keepalive: time between probes.
    pub keepalive_interval: Duration,
}

/// Unanswered keepalive probes before a session is declared dead.
pub const KEEPALIVE_PROBES: u32 = 3;

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            queue_appends_max: 4096,
            queue_bytes_max: cairn_core::append_budget::QUEUED_APPEND_BYTES_MAX,
            batch_appends_max: 1024,
            batch_events_max: 20_000,
            stall_threshold: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            commit_delay: Duration::ZERO,
            gather_wait: Duration::from_micros(500),
            pool_wait: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
        }
    }
}

impl PgOptions {
    /// The defaults, with the tuning variables `CAIRN_PG_POOL_SIZE`,
    /// `CAIRN_PG_STALL_SECS`, `CAIRN_PG_LOCK_TIMEOUT_SECS`, `CAIRN_PG_POLL_MS`,
    /// `CAIRN_PG_GATHER_US`, `CAIRN_PG_POOL_WAIT_MS`, `CAIRN_PG_KEEPALIVE_SECS` and the fault
    /// hook `CAIRN_FAULT_PG_COMMIT_DELAY_MS` applied.
    #[must_use]
    pub fn from_env() -> Self {
        fn var(name: &str) -> Option<u64> {
            std::env::var(name).ok().and_then(|v| v.parse().ok())
        }
        let mut o = Self::default();
        if let Some(v) = var("CAIRN_PG_POOL_SIZE") {
            o.pool_size = v as usize;
        }
        if let Some(v) = var("CAIRN_PG_STALL_SECS") {
            o.stall_threshold = Duration::from_secs(v);
        }
        if let Some(v) = var("CAIRN_PG_LOCK_TIMEOUT_SECS") {
            o.lock_timeout = Duration::from_secs(v);
        }
        if let Some(v) = var("CAIRN_PG_POLL_MS") {
            o.poll_interval = Duration::from_millis(v);
        }
        if let Some(v) = var("CAIRN_PG_GATHER_US") {
            o.gather_wait = Duration::from_micros(v);
        }
        if let Some(v) = var("CAIRN_PG_POOL_WAIT_MS") {
            o.pool_wait = Duration::from_millis(v.max(1));
        }
        if let Some(v) = var("CAIRN_PG_KEEPALIVE_SECS") {
            o.keepalive_idle = Duration::from_secs(v.max(1));
            o.keepalive_interval = Duration::from_secs((v / 2).max(1));
        }
        if let Some(v) = var("CAIRN_FAULT_PG_COMMIT_DELAY_MS") {
            o.commit_delay = Duration::from_millis(v);
        }
        o
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// The URL's TLS options (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) cannot be used.
    #[error("database TLS: {0}")]
    Tls(#[from] TlsError),
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(String),
    /// The database was written by a newer Cairn.
    #[error("the database has schema version {0}, this build knows up to {1}: use a newer cairn")]
    TooNew(i32, i32),
}

/// Who holds the append lock too long (the stall diagnostic).
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// The blocking backend's process id.
    pub pid: i32,
    /// How long its transaction has been open, in seconds.
    pub age_secs: f64,
    /// Appenders waiting for it.
    pub waiting: i64,
}

/// State shared by the event store, the read models and the background tasks.
pub(crate) struct Shared {
    pub pool: Pool,
    pub config: tokio_postgres::Config,
    /// The TLS connector of every session (pool, leadership, `LISTEN`).
    pub tls: PgTls,
    pub options: PgOptions,
    /// Advisory-lock key that serialises appends (positions in commit order).
    pub append_lock: i64,
    /// `NOTIFY` channels, namespaced by schema.
    pub events_channel: String,
    pub checkpoints_channel: String,
    /// Highest `$all` position known to be committed.
    pub head: watch::Sender<u64>,
    /// Bumped whenever a checkpoint notification arrives from any process.
    pub checkpoints: watch::Sender<u64>,
    pub stall: Mutex<Option<Stall>>,
    /// Database size in bytes, as last measured by the monitor.
    pub size: std::sync::atomic::AtomicU64,
    pub runtime: tokio::runtime::Handle,
    /// Background tasks stop when this turns true.
    pub stop: watch::Sender<bool>,
    /// This process's row in `members`.
    pub member_id: String,
}

/// The configuration every session Cairn opens uses (pooled, leadership, `LISTEN`): the
/// URL's, plus keepalives on both ends and a connect timeout. Connect it with the
/// [`PgTls`] of [`session`], or with `NoTls` when the URL asks for no TLS.
pub fn session_config(url: &str, options: &PgOptions) -> Result<tokio_postgres::Config, OpenError> {
    session(url, options).map(|(config, _)| config)
}

/// [`session_config`] and the TLS connector for the URL's `sslmode` (libpq's values),
/// `sslrootcert`, `sslcert` and `sslkey`.
pub fn session(
    url: &str,
    options: &PgOptions,
) -> Result<(tokio_postgres::Config, PgTls), OpenError> {
    let (mut config, tls) = crate::tls::parse(url)?;
    session_settings(&mut config, options);
    Ok((config, tls))
}

/// Client-side keepalives on every session Cairn opens (it notices a peer that vanished)
/// and a connect timeout.
fn session_settings(config: &mut tokio_postgres::Config, options: &PgOptions) {
    config
        .keepalives(true)
        .keepalives_idle(options.keepalive_idle)
        .keepalives_interval(options.keepalive_interval)
        .keepalives_retries(KEEPALIVE_PROBES)
        .connect_timeout(options.pool_wait);
}

/// Server-side keepalives for a session that holds locks (leadership): the server then
/// releases the session — and its advisory locks — once the client is gone. Set after
/// connecting rather than as a startup option, which poolers such as `PgBouncer` refuse;
/// a server that refuses the `SET` (e.g. behind such a pooler) keeps its own defaults.
pub async fn server_keepalives(client: &tokio_postgres::Client, options: &PgOptions) {
    let sql = format!(
        "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}",
        options.keepalive_idle.as_secs().max(1),
        options.keepalive_interval.as_secs().max(1),
        KEEPALIVE_PROBES
    );
    if let Err(e) = client.batch_execute(&sql).await {
        tracing::warn!(error = %db_error(&e), "server-side TCP keepalives not set on a leadership session");
    }
}

pub(crate) fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error_chain(e),
    }
}

impl Shared {
    pub async fn connect(url: &str, options: &PgOptions) -> Result<Arc<Self>, OpenError> {
        let (config, tls) = session(url, options)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(options.pool_wait))
            .create_timeout(Some(options.pool_wait))
            .recycle_timeout(Some(options.pool_wait))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| OpenError::Connect(error_chain(&e)))?;
        let applied =
            schema::migrate(&mut client).await.map_err(|e| OpenError::Migrate(db_error(&e)))?;
        let known = schema::MIGRATIONS.last().map_or(0, |m| m.0);
        if applied > known {
            return Err(OpenError::TooNew(applied, known));
        }
        let append_lock: i64 = client
            .query_one(schema::LOCK_KEY_SQL, &[&"append"])
            .await
            .map_err(|e| OpenError::Connect(db_error(&e)))?
            .get(0);
        let (schema_name, head): (String, i64) = client
            .query_one("SELECT current_schema(), coalesce(max(position), 0) FROM events", &[])
            .await
            .map(|r| (r.get(0), r.get(1)))
            .map_err(|e| OpenError::Connect(db_error(&e)))?;
        drop(client);
        Ok(Arc::new(Self {
            pool,
            config,
            tls,
            options: options.clone(),
            append_lock,
            events_channel: format!("cairn_events:{schema_name}"),
            checkpoints_channel: format!("cairn_checkpoints:{schema_name}"),
            head: watch::Sender::new(head as u64),
            checkpoints: watch::Sender::new(0),
            stall: Mutex::new(None),
            size: std::sync::atomic::AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            stop: watch::Sender::new(false),
            member_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// Publishes a head position if it is newer than the known one.
    pub fn advance_head(&self, position: u64) {
        self.head.send_if_modified(|h| {
            let newer = position > *h;
            if newer {
                *h = position;
            }
            newer
        });
    }

    pub fn size_bytes(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stall(&self) -> Option<Stall> {
        self.stall.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs a future to completion from blocking code (the read-model traits are blocking).
    pub fn wait<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }

    /// A connection outside the pool, for a session that must not be shared (leadership
    /// locks, `LISTEN`).
    pub async fn dedicated(
        &self,
    ) -> Result<deadpool_postgres::ClientWrapper, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        });
        server_keepalives(&client, &self.options).await;
        Ok(deadpool_postgres::ClientWrapper::new(client, task))
    }
}
