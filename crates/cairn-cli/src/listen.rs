//! The accept loop of `cairn serve`: TCP, optionally TLS, then HTTP/1.1 (the HTTP API) or
//! HTTP/2 (gRPC, `--grpc-listen`) through hyper with a timer, so that a client can hold a
//! connection only as long as the limits allow. Both listeners take the same limits.
//!
//! - `--max-connections`: beyond it a new connection is accepted and closed at once (the
//!   client sees the connection end before any answer); an existing connection is never
//!   dropped to make room. Accepting and closing, rather than leaving it in the kernel's
//!   backlog, tells the client at once instead of letting it wait for a timeout.
//! - `--header-read-timeout-secs`: a request's head (line and headers) must arrive within
//!   it, and an idle keep-alive connection waiting for its next request is closed after it.
//!   Over HTTP/2 (gRPC) it bounds the wait for a connection's first request (TLS or not);
//!   an open connection is then watched by HTTP/2 keep-alive pings instead.
//! - `--tls-handshake-timeout-secs`: the TLS handshake has its own deadline.
//! - The request deadline (body read plus handling, `408 request_timeout`) is the
//!   router's own ([`cairn_server::timeout`]), so embedded users get it too.
//!
//! Shutdown: the loop stops accepting, each connection finishes its in-flight request
//! and closes; `serve` returns when every connection is gone (the caller bounds that with
//! `--drain-timeout-secs`). Idle connections close at once; one halfway through sending
//! its request's head counts as in flight, so it holds the drain until the header-read
//! timeout at most.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Default of `--max-connections`.
pub const MAX_CONNECTIONS_DEFAULT: usize = 1024;
/// Default of `--header-read-timeout-secs`.
pub const HEADER_READ_TIMEOUT_SECS_DEFAULT: u64 = 10;
/// Default of `--tls-handshake-timeout-secs`.
pub const TLS_HANDSHAKE_TIMEOUT_SECS_DEFAULT: u64 = 10;
/// Pause after a failed `accept` (e.g. out of file descriptors): retrying at once would
/// spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// HTTP/2 streams (gRPC calls) open at once on one connection.
pub const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Interval of the HTTP/2 keep-alive pings that find dead gRPC connections.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may wait for its answer before the connection is closed.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one warning per this interval about connections refused at the cap: a flood
/// of connections must not become a flood of log lines.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The HTTP flags of `cairn serve` (TLS and the connection-level limits).
#[derive(clap::Args, Debug)]
pub struct HttpArgs {
    /// PEM file of the server's certificate chain (leaf first). With `--tls-key`, the
    /// server speaks HTTPS only.
    #[arg(long, env = "CAIRN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CAIRN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of extra root certificates trusted when forwarding an admin request to
    /// another process over `https://` (e.g. the private CA of the processes' certificates);
    /// the system's roots are trusted either way.
    #[arg(long, env = "CAIRN_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Most connections open at once, per listener (HTTP, and gRPC's own); beyond it a new
    /// connection is accepted and closed at once (an open connection is never dropped to
    /// make room).
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Longest wait, in seconds, for a request's line and headers; also how long an idle
    /// keep-alive connection stays open waiting for its next request.
    #[arg(long, env = "CAIRN_HEADER_READ_TIMEOUT_SECS", default_value_t = HEADER_READ_TIMEOUT_SECS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Longest time, in seconds, for reading a request's body and handling it; past it the
    /// client gets `408 request_timeout`. A live subscription (SSE) is exempt once its
    /// headers are sent. `0` turns the deadline off.
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT_SECS", default_value_t = cairn_server::REQUEST_TIMEOUT_SECS_DEFAULT)]
    pub request_timeout_secs: u64,
    /// Longest time, in seconds, for a client's TLS handshake.
    #[arg(long, env = "CAIRN_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = TLS_HANDSHAKE_TIMEOUT_SECS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_secs: u64,
}

impl HttpArgs {
    /// Whether the server speaks HTTPS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The accept loop's settings, certificate and key read and checked.
    pub fn listen_config(&self) -> anyhow::Result<ListenConfig> {
        self.config(Protocol::Http1)
    }

    /// The same for the gRPC listener: HTTP/2, the same certificate (offered as `h2`).
    pub fn grpc_listen_config(&self) -> anyhow::Result<ListenConfig> {
        self.config(Protocol::Http2)
    }

    fn config(&self, protocol: Protocol) -> anyhow::Result<ListenConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, protocol)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        Ok(ListenConfig {
            tls,
            protocol,
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
        })
    }

    /// The client forwarding admin requests to the leading process: `None` (the server's
    /// default) without `--tls-ca-file`.
    pub fn forward_client(&self) -> anyhow::Result<Option<reqwest::Client>> {
        let Some(path) = &self.tls_ca_file else { return Ok(None) };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --tls-ca-file {}", path.display()))?;
        let mut builder = reqwest::Client::builder();
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--tls-ca-file {}: not PEM certificates", path.display()))?
        {
            builder = builder.add_root_certificate(certificate);
        }
        Ok(Some(builder.build().context("building the forwarding client")?))
    }
}

/// Which HTTP a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the HTTP API.
    Http1,
    /// HTTP/2 only: gRPC.
    Http2,
}

/// How connections are accepted and served.
pub struct ListenConfig {
    /// `Some`: HTTPS only.
    pub tls: Option<TlsAcceptor>,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: Protocol,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Deadline of a request's head (and of an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// Deadline of the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

/// A TLS acceptor serving the chain in `cert` with the key in `key` (both PEM).
fn tls_acceptor(cert: &Path, key: &Path, protocol: Protocol) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| {
            format!("cannot read the certificates of --tls-cert {}", cert.display())
        })?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert {}: no certificate in it", cert.display());
    // The key's contents never reach an error message: only its path does.
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key of --tls-key {}", key.display()))?;
    // The provider named here, not the process default: nothing else can change it.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a usable certificate")?;
    config.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and returns
/// once every open connection has finished its in-flight request and closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ListenConfig,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let http = match config.protocol {
        Protocol::Http1 => {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
            Http::One(http)
        }
        Protocol::Http2 => {
            let mut http = http2::Builder::new(TokioExecutor::new());
            http.timer(TokioTimer::new())
                .max_concurrent_streams(HTTP2_STREAMS_PER_CONNECTION_MAX)
                .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
            Http::Two(http)
        }
    };
    let connection = Arc::new(Connection {
        http,
        first_bytes_timeout: config.header_read_timeout,
        app,
        tls: config.tls,
        tls_handshake_timeout: config.tls_handshake_timeout,
    });
    let mut last_cap_warning: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if last_cap_warning.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL) {
                last_cap_warning = Some(tokio::time::Instant::now());
                tracing::warn!(
                    max_connections = config.max_connections,
                    "connections refused: --max-connections are open"
                );
            }
            drop(stream);
            continue;
        };
        // Small answers go out at once rather than waiting for Nagle's timer.
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let connection = Arc::clone(&connection);
        tokio::spawn(async move {
            connection.run(stream, watcher).await;
            tracing::trace!(%peer, "connection closed");
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The connection builder of a listener's protocol.
enum Http {
    One(http1::Builder),
    Two(http2::Builder<TokioExecutor>),
}

/// What every connection is served with.
struct Connection {
    http: Http,
    /// HTTP/2: how long a new connection may go without sending a request.
    first_bytes_timeout: Duration,
    app: Router,
    tls: Option<TlsAcceptor>,
    tls_handshake_timeout: Duration,
}

impl Connection {
    async fn run(&self, stream: tokio::net::TcpStream, watcher: Watcher) {
        if matches!(self.http, Http::One(_)) {
            return self.secure(stream, watcher).await;
        }
        self.secure(crate::quickack::QuickAck(stream), watcher).await;
    }

    /// TLS first when configured, then HTTP.
    async fn secure<S>(&self, stream: S, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(tls) = &self.tls else {
            return self.http(stream, watcher).await;
        };
        match tokio::time::timeout(self.tls_handshake_timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.http(stream, watcher).await,
            // A port scanner, a plain-HTTP client or a wrong CA on the client: its
            // problem, not the server's.
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn http<I>(&self, io: I, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.app.clone());
        let result = match &self.http {
            Http::One(http) => {
                watcher.watch(http.serve_connection(TokioIo::new(io), service)).await
            }
            Http::Two(http) => {
                // HTTP/2 has no header-read deadline, and its keep-alive pings start only
                // after the client's preface: a connection (plain or TLS) that sends no
                // request within the deadline is closed, so that silent ones cannot fill
                // the connection cap.
                let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let seen = Arc::clone(&requested);
                let app = tower::ServiceExt::map_request(self.app.clone(), move |request| {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    request
                });
                let service = TowerToHyperService::new(app);
                let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service));
                tokio::pin!(connection);
                tokio::select! {
                    result = &mut connection => result,
                    () = tokio::time::sleep(self.first_bytes_timeout) => {
                        if !requested.load(std::sync::atomic::Ordering::Relaxed) {
                            tracing::debug!("HTTP/2 connection closed: no request within the deadline");
                            return;
                        }
                        connection.await
                    }
                }
            }
        };
        if let Err(e) = result {
            // Timeouts and clients that went away end here; nothing the operator can act on.
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
