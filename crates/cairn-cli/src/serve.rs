//! `cairn serve`: open the store, serve HTTP, shut down gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cairn_core::EventStore;
use cairn_server::{
    DomainConfig, HttpConfig, IntegrationRouter, Module, RunningServer, Server, Stores,
};
use cairn_sqlite::{SqliteEventStore, SqliteOptions, SqliteReadModels, Synchronous};
use clap::{Args, ValueEnum};
use tokio::sync::watch;

/// Flags of `cairn serve`; each can also come from the environment.
#[derive(Args, Debug)]
// Each bool is one independent on/off flag of the command line.
#[allow(clippy::struct_excessive_bools)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address of the gRPC listener speaking the `KurrentDB` (`EventStoreDB`) client
    /// protocol (e.g. `127.0.0.1:2113`; docs/grpc.md). Off when not set. It takes the same
    /// TLS certificate, token rules, connection cap and timeouts as HTTP.
    #[arg(long, env = "CAIRN_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Do not serve the operator's console at `/ui` (nor keep its index of correlation
    /// chains and process-manager histories, `cairn_console_index`).
    #[arg(long, env = "CAIRN_NO_CONSOLE")]
    no_console: bool,
    /// The base URL the other `cairn serve` processes sharing the database reach this one
    /// at (e.g. `http://10.0.0.7:7070`, or `https://` with `--tls-cert`): an admin request
    /// for a consumer this process leads, sent to another process, is forwarded here.
    /// Defaults to `http(s)://<--listen>` unless that address is unspecified (`0.0.0.0`,
    /// `::`); then, without it, such requests answer `409 not_leader` on the other processes.
    #[arg(long, env = "CAIRN_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Where events and read models live: `sqlite` (embedded, one directory) or
    /// `postgres` (one database shared by any number of `cairn serve` processes).
    #[arg(long, env = "CAIRN_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// PostgreSQL URL for `--store postgres`, e.g. `postgres://user@host:5432/cairn`.
    #[arg(long, env = "CAIRN_DATABASE_URL", required_if_eq("store", "postgres"))]
    database_url: Option<String>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "CAIRN_BODY_LIMIT_BYTES", default_value_t = cairn_server::BODY_LIMIT_BYTES_DEFAULT)]
    body_limit_bytes: usize,
    /// Most subscriptions open at once, `/all/subscribe` streams and gRPC subscriptions
    /// together (each may replay the whole log); one more is refused with `429
    /// too_many_subscribers` (gRPC: `RESOURCE_EXHAUSTED`).
    #[arg(long, env = "CAIRN_MAX_SUBSCRIBERS", default_value_t = cairn_server::SSE_SUBSCRIBERS_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_subscribers: u64,
    /// How long an HTTP `Idempotency-Key` is remembered, in seconds; a repeat after that
    /// is a new command. Process managers' keys never expire.
    #[arg(long, env = "CAIRN_IDEMPOTENCY_TTL_SECS", default_value_t = cairn_server::IDEMPOTENCY_TTL_SECS_DEFAULT)]
    idempotency_ttl_secs: u64,
    /// Commit durability: `full` fsyncs every commit (an acknowledged append survives power
    /// loss); `normal` survives a process crash only.
    #[arg(long, env = "CAIRN_SYNC", value_enum, default_value_t = SyncMode::Full)]
    sync: SyncMode,
    /// The embedded store's page caches, all connections together, in MiB (SQLite's soft
    /// heap limit; 0 = no limit): more keeps more of a large store's pages in memory.
    #[arg(long, env = "CAIRN_SQLITE_CACHE_MIB", default_value_t = cairn_sqlite::HEAP_SOFT_LIMIT_BYTES / (1024 * 1024))]
    sqlite_cache_mib: u64,
    /// A load that replays this many events or more takes a snapshot of the aggregate.
    #[arg(long, env = "CAIRN_SNAPSHOT_EVERY", default_value_t = cairn_cqrs::repository::SNAPSHOT_EVERY_DEFAULT)]
    snapshot_every: u64,
    /// Accept read-model state ahead of the event log for consumers whose effects left the
    /// read models (the process manager, the bus relay): move them back to the log's head.
    /// Without it such state stops the start-up, naming each (projections past the head
    /// are always rebuilt and snapshots past it always dropped). Not for an everyday start.
    #[arg(long)]
    repair: bool,
    /// Start the process managers paused: they issue no command until
    /// `cairn projections resume <name>`. For a store about to receive `cairn import`.
    #[arg(long, env = "CAIRN_PAUSE_PROCESS_MANAGERS")]
    pause_process_managers: bool,
    /// TLS and the connection-level limits of HTTP.
    #[command(flatten)]
    http: crate::listen::HttpArgs,
    /// Longest wait for in-flight requests after SIGTERM before closing anyway.
    #[arg(long, env = "CAIRN_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
    /// NATS server for the outbox relay (e.g. `nats://127.0.0.1:4222`): committed events are
    /// published, in `$all` order, to a JetStream stream. Off when not set.
    #[arg(long, env = "CAIRN_NATS_URL")]
    nats_url: Option<String>,
    /// The JetStream stream the relay publishes to (subjects `cairn.events.<type>.<id>`).
    #[arg(long, env = "CAIRN_NATS_STREAM", default_value = "CAIRN_EVENTS")]
    nats_stream: String,
    /// Subject prefix of the internal relay's stream (one prefix per stream).
    #[arg(long, env = "CAIRN_NATS_SUBJECT_PREFIX", default_value = "cairn.events")]
    nats_subject_prefix: String,
    /// Also publish every internal domain event (not only the public integration events)
    /// to `--nats-stream`. Internal events stay internal unless this is set.
    #[arg(long, env = "CAIRN_NATS_INTERNAL")]
    nats_internal: bool,
    /// The JetStream stream of the modules' public integration events (e.g. `public.orders.*`).
    #[arg(long, env = "CAIRN_NATS_PUBLIC_STREAM", default_value = "CAIRN_PUBLIC")]
    nats_public_stream: String,
    /// Replicas of the streams the relay creates (3 on a three-node JetStream cluster).
    #[arg(long, env = "CAIRN_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
    /// JetStream duplicate window of the relay's streams, in seconds (also applied to an
    /// existing stream). A second line of defence: the relay's resume scan is what keeps
    /// it from publishing an event twice.
    #[arg(long, env = "CAIRN_NATS_DUPLICATE_WINDOW_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    nats_duplicate_window_secs: u64,
    /// Subject prefix of commands over NATS (request/reply on `<prefix>.<command>[.<id>]`).
    #[arg(long, env = "CAIRN_NATS_COMMANDS", default_value = "cairn.commands")]
    nats_commands: String,
    /// Queue group of the servers taking commands over NATS (any client joining it takes
    /// commands too: give each deployment its own on a shared account).
    #[arg(long, env = "CAIRN_NATS_QUEUE_GROUP", default_value = "cairn")]
    nats_queue_group: String,
    /// Commands over NATS are answered only on reply subjects starting with this (the
    /// client library's inbox prefix); others are refused and logged.
    #[arg(long, env = "CAIRN_NATS_REPLY_PREFIX", default_value = "_INBOX.")]
    nats_reply_prefix: String,
    /// Put in front of every public subject (e.g. `staging.`), to share a NATS server.
    #[arg(long, env = "CAIRN_NATS_PUBLIC_NAMESPACE", default_value = "")]
    nats_public_namespace: String,
    #[command(flatten)]
    nats_auth: crate::nats_auth::NatsAuthArgs,
    /// A file holding the bootstrap admin token (`cairn_…`, e.g. from
    /// `cairn tokens generate`): with it every route but the probes and `/openapi.json`
    /// needs `Authorization: Bearer <token>`. Only the token's hash is kept in memory.
    #[arg(long, env = "CAIRN_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Serve without authentication on a non-loopback address (anyone who reaches the
    /// port can read, write and administer everything).
    #[arg(long, env = "CAIRN_INSECURE")]
    insecure: bool,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `cairn=debug`.
    #[arg(long, env = "CAIRN_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncMode {
    Full,
    Normal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    // Colour codes only where someone reads them as colour: a log file or a collector
    // would store them as noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs the server until a shutdown signal, then drains in-flight work and closes the store.
pub fn run(args: ServeArgs, modules: Vec<Module>) -> anyhow::Result<()> {
    init_logging(&args.log, args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args, modules))
}

async fn open_stores(args: &ServeArgs) -> anyhow::Result<Stores> {
    if args.store == StoreKind::Postgres {
        let url = args.database_url.as_deref().context("--store postgres needs --database-url")?;
        let (events, readmodels) =
            cairn_postgres::open(url, &cairn_postgres::PgOptions::from_env())
                .await
                .context("cannot open the PostgreSQL store")?;
        let readmodels = Arc::new(readmodels);
        return Ok(Stores {
            events: Arc::new(events),
            readmodels: readmodels.clone(),
            snapshots: readmodels,
        });
    }
    let options = SqliteOptions {
        synchronous: match args.sync {
            SyncMode::Full => Synchronous::Full,
            SyncMode::Normal => Synchronous::Normal,
        },
        heap_soft_limit_bytes: args.sqlite_cache_mib.saturating_mul(1024 * 1024),
        ..SqliteOptions::default()
    };
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&args.data_dir, &options).with_context(|| {
            format!("cannot open the embedded store in {}", args.data_dir.display())
        })?);
    // Read models live in their own file so projections never take the event log's write lock.
    let readmodels =
        Arc::new(SqliteReadModels::open(&args.data_dir).with_context(|| {
            format!("cannot open the read models in {}", args.data_dir.display())
        })?);
    Ok(Stores { events: store, readmodels: readmodels.clone(), snapshots: readmodels })
}

/// This process's base URL for the others (`--advertise-url`, or `http(s)://<--listen>`
/// when that names one host and port); `None` when it cannot know it.
fn advertise_url(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let tls = args.http.tls();
    if let Some(url) = &args.advertise_url {
        let url = url.trim_end_matches('/');
        // `https://` without `--tls-cert` is a proxy terminating TLS in front; `http://`
        // with it would send the others plain HTTP to a port that speaks only TLS.
        let rest = match url.split_once("://") {
            Some(("https", rest)) => rest,
            Some(("http", rest)) if !tls => rest,
            Some(("http", _)) => anyhow::bail!(
                "--advertise-url {url:?}: this server speaks HTTPS only (--tls-cert): an https:// URL is expected"
            ),
            _ => anyhow::bail!(
                "--advertise-url {url:?}: an http:// or https:// URL is expected (e.g. http://10.0.0.7:7070)"
            ),
        };
        anyhow::ensure!(
            !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']),
            "--advertise-url {url:?}: a base URL is expected, with no path (e.g. http://10.0.0.7:7070)"
        );
        return Ok(Some(url.to_owned()));
    }
    // An unspecified address names no host to reach, and port 0 no port (the one the system
    // picks is known only once bound).
    if args.listen.ip().is_unspecified() || args.listen.port() == 0 {
        if args.store == StoreKind::Postgres {
            tracing::warn!(
                listen = %args.listen,
                "no --advertise-url: admin requests sent to the other processes for the consumers this one leads answer 409 not_leader instead of being forwarded here"
            );
        }
        return Ok(None);
    }
    let scheme = if tls { "https" } else { "http" };
    Ok(Some(format!("{scheme}://{}", args.listen)))
}

async fn serve(args: ServeArgs, mut modules: Vec<Module>) -> anyhow::Result<()> {
    // Before any storage is opened: a server that must not start touches nothing.
    let auth =
        crate::tokens::auth_config(args.listen, args.admin_token_file.as_deref(), args.insecure)?;
    // The gRPC listener follows the same rule: no open non-loopback address.
    if let Some(grpc) = args.grpc_listen {
        crate::tokens::auth_config(grpc, args.admin_token_file.as_deref(), args.insecure)?;
    }
    let listen_config = args.http.listen_config()?;
    let grpc_listen_config = args.http.grpc_listen_config()?;
    let forward_client = args.http.forward_client()?;
    let advertise_url = advertise_url(&args)?;
    if !args.no_console {
        add_console_index(&mut modules);
    }
    let stores = open_stores(&args).await?;
    let store = Arc::clone(&stores.events);
    let (raw_events, readmodels) = (Arc::clone(&stores.events), Arc::clone(&stores.readmodels));
    let server = Server::builder(stores)
        .http(HttpConfig {
            body_limit_bytes: args.body_limit_bytes,
            idempotency_ttl_secs: args.idempotency_ttl_secs,
            advertise_url,
            auth,
            sse_subscribers_max: usize::try_from(args.max_subscribers).unwrap_or(usize::MAX),
            request_timeout_secs: args.http.request_timeout_secs,
            forward_client,
            ..HttpConfig::default()
        })
        .domain(DomainConfig {
            snapshot_every: args.snapshot_every,
            pause_process_managers: args.pause_process_managers,
        })
        .modules(modules)
        .build();
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            store.close().await;
            return Err(anyhow::Error::new(e).context("the modules do not fit together"));
        }
    };
    // Before any consumer starts: nothing may follow the log from past its end.
    if let Err(e) = server.check_against_log(args.repair).await {
        store.close().await;
        return Err(e.into());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let grpc_listener = match args.grpc_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for gRPC on {addr}"))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = server.start(stop_rx.clone()).context("cannot start the projections")?;
    let app = app(&args, &running);
    if let Some(url) = &args.nats_url {
        start_bus(&args, url, &running, &raw_events, &readmodels, &stop_rx).await?;
    }
    let tls = args.http.tls();
    match args.store {
        StoreKind::Sqlite => {
            tracing::info!(listen = %listener.local_addr()?, tls, data_dir = %args.data_dir.display(), "cairn serving (embedded store)");
        }
        StoreKind::Postgres => {
            tracing::info!(listen = %listener.local_addr()?, tls, "cairn serving (PostgreSQL store)");
        }
    }
    let grpc = grpc_listener
        .map(|listener| serve_grpc(&args, listener, grpc_listen_config, &running, &stop_rx));
    let mut stopping = stop_tx.subscribe();
    let http = crate::listen::serve(listener, app, listen_config, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let server = async move {
        match grpc {
            Some(grpc) => {
                tokio::join!(http, grpc);
            }
            None => http.await,
        }
    };
    // A client that never finishes its request must not hold the shutdown (and the data
    // directory's lock) forever: in-flight requests get a bounded drain.
    let drain_deadline = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(std::time::Duration::from_secs(args.drain_timeout_secs)).await;
    };
    tokio::select! {
        () = server => {}
        () = drain_deadline => tracing::warn!("drain deadline passed; closing with requests still open"),
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The console's index, following every process manager the modules run.
fn add_console_index(modules: &mut Vec<Module>) {
    let managers = modules.iter().flat_map(|m| m.process_managers().iter().cloned()).collect();
    modules.push(cairn_console::module(managers));
}

/// What the HTTP listener serves: the API, and beside it the console at `/ui` (unless
/// `--no-console`), whose actions call the API's router.
fn app(args: &ServeArgs, running: &cairn_server::RunningServer) -> axum::Router {
    if args.no_console {
        return running.router();
    }
    let config = cairn_console::ConsoleConfig { secure_cookies: args.http.tls() };
    let console = cairn_console::router(running.router(), running.state().clone(), config);
    running.router().merge(console)
}

/// The gRPC listener (`--grpc-listen`): the `KurrentDB` client protocol over the same
/// server state, until the stop signal.
fn serve_grpc(
    args: &ServeArgs,
    listener: tokio::net::TcpListener,
    config: crate::listen::ListenConfig,
    running: &RunningServer,
    stop_rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + use<> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, tls = args.http.tls(), "gRPC (KurrentDB client protocol) serving");
    }
    let grpc = cairn_grpc::GrpcConfig {
        append_bytes_max: args.body_limit_bytes,
        call_timeout: std::time::Duration::from_secs(args.http.request_timeout_secs),
    };
    let app = cairn_grpc::router(running.state().clone(), grpc);
    let mut stop = stop_rx.clone();
    crate::listen::serve(listener, app, config, async move {
        let _ = stop.wait_for(|stop| *stop).await;
    })
}

/// The event bus: commands over NATS (same router as HTTP) and the outbox relays.
async fn start_bus(
    args: &ServeArgs,
    url: &str,
    running: &RunningServer,
    raw_events: &Arc<dyn cairn_core::EventStore>,
    readmodels: &Arc<dyn cairn_core::readmodel::ReadModelStore>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let checkpoint_delay = std::time::Duration::from_millis(
        std::env::var("CAIRN_FAULT_RELAY_CHECKPOINT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let duplicate_window = std::time::Duration::from_secs(args.nats_duplicate_window_secs);
    let mut relays = Vec::new();
    // One public stream for every module's integration events, one subject tree each.
    if let Some(integration) = running.integration() {
        let namespace = &args.nats_public_namespace;
        let prefixes = integration.subject_prefixes();
        relays.push((
            cairn_nats::RelayConfig {
                stream: args.nats_public_stream.clone(),
                subject_prefix: format!("{namespace}{}", prefixes[0]),
                subjects: prefixes.iter().map(|p| format!("{namespace}{p}.>")).collect(),
                checkpoint_delay,
                replicas: args.nats_replicas,
                duplicate_window,
                ..cairn_nats::RelayConfig::default()
            },
            integration_events(integration, namespace.clone()),
        ));
    }
    if args.nats_internal {
        relays.push((
            cairn_nats::RelayConfig {
                stream: args.nats_stream.clone(),
                subject_prefix: args.nats_subject_prefix.clone(),
                checkpoint_delay,
                replicas: args.nats_replicas,
                duplicate_window,
                ..cairn_nats::RelayConfig::default()
            },
            cairn_nats::all_events(),
        ));
    }
    // Commands over NATS, served by the same router as HTTP.
    let options = crate::bus::CommandBusOptions {
        prefix: args.nats_commands.clone(),
        queue_group: args.nats_queue_group.clone(),
        reply_prefix: args.nats_reply_prefix.clone(),
    };
    let nats = args.nats_auth.options();
    let (url2, router, stop) = (url.to_owned(), running.router(), stop_rx.clone());
    let commands = running.nats_commands();
    let nats2 = nats.clone();
    tokio::spawn(async move {
        if let Err(e) =
            crate::bus::serve_commands(&url2, &nats2, options, commands, router, stop).await
        {
            tracing::error!(error = %e, "commands over NATS stopped");
        }
    });
    for (config, mapper) in relays {
        let stream = config.stream.clone();
        let relay = Arc::new(
            cairn_nats::Relay::with_options(
                url,
                &nats,
                Arc::clone(raw_events),
                Arc::clone(readmodels),
                config,
                mapper,
            )
            .await
            .with_context(|| {
                format!("cannot start the NATS relay on {}", cairn_nats::redact_url(url))
            })?,
        );
        running.consumers().add_outbox(Arc::new(RelayOutbox(Arc::clone(&relay))));
        tokio::spawn(relay.run(stop_rx.clone()));
        tracing::info!(nats = %cairn_nats::redact_url(url), %stream, "outbox relay started");
    }
    Ok(())
}

/// The modules' public events: each made by the module owning the event's aggregate, on
/// its module's subjects behind the namespace.
fn integration_events(integration: IntegrationRouter, namespace: String) -> cairn_nats::Mapper {
    Arc::new(move |event, _config| {
        let Some(public) = integration.translate(event).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        Ok(Some(cairn_nats::Outgoing {
            subject: format!("{namespace}{}", public.subject),
            id: public.event_id.to_string(),
            event_type: public.event_type,
            payload: bytes::Bytes::from(public.data.get().to_owned()),
        }))
    })
}

/// The relay as the server reports it.
struct RelayOutbox(Arc<cairn_nats::Relay>);

impl cairn_server::consumers::Outbox for RelayOutbox {
    fn name(&self) -> String {
        self.0.name()
    }
    fn position(&self) -> u64 {
        self.0.progress().borrow().position
    }
    fn published(&self) -> u64 {
        self.0.progress().borrow().published
    }
    fn leading(&self) -> bool {
        self.0.progress().borrow().leading
    }
    fn dlq_depth(&self) -> u64 {
        self.0.progress().borrow().dead_letters
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
