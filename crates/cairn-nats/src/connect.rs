//! Connecting to NATS with credentials and TLS: one [`connect`] for everything Cairn
//! opens (the relays, the bus consumers, commands over NATS).
//!
//! Secrets come from files (never flags, which `ps` shows) or from the URL's userinfo
//! (`nats://user:pass@host`, `nats://token@host`, as the NATS clients read it; async-nats
//! itself ignores it). Nothing here logs a secret; log URLs through [`crate::redact_url`].

use cairn_core::error::error_chain;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to authenticate to NATS and whether (and how) to use TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsConnectOptions {
    /// A `.creds` file (a user JWT and its nkey seed, as `nsc` writes them).
    pub credentials_file: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU…`).
    pub nkey_file: Option<PathBuf>,
    /// A file holding the server's `authorization { token }`.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates the server's certificate must chain to (instead of the
    /// system's trust store).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify: true`).
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's PEM key.
    pub tls_key: Option<PathBuf>,
    /// Refuse a server that does not speak TLS (implied by any TLS option and by
    /// `tls://` URLs).
    pub require_tls: bool,
}

/// Longest wait for one server to accept the connection and the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Cairn could not connect to NATS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsConnectError {
    /// A secret or certificate file cannot be read.
    #[error("cannot read the NATS {what} file {path}: {source}")]
    File {
        /// Which option named it.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A secret file is empty.
    #[error("the NATS {what} file {path} is empty")]
    Empty {
        /// Which option named it.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Two ways to authenticate were given; the server would see only one.
    #[error("more than one NATS authentication given ({0}): give one")]
    AmbiguousAuth(String),
    /// A client certificate without its key, or a key without its certificate.
    #[error("the NATS client certificate and key go together")]
    ClientCertHalf,
    /// The URL lists no server.
    #[error("no NATS server in the URL")]
    NoServer,
    /// NATS refused (authorization, TLS, unreachable): async-nats's reason and cause.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// Userinfo from a server URL: `user:password` or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// `server` without its userinfo, and that userinfo.
fn split_userinfo(server: &str) -> (String, Option<UrlAuth>) {
    let (scheme, rest) = match server.find("://") {
        Some(i) => server.split_at(i + 3),
        None => ("", server),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (server.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let auth = match userinfo.split_once(':') {
        Some((user, password)) => UrlAuth::UserPassword(decode(user), decode(password)),
        None => UrlAuth::Token(decode(userinfo)),
    };
    (format!("{scheme}{}", &rest[at + 1..]), Some(auth))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A secret file's content, trimmed (editors add a final newline).
fn read_secret(what: &'static str, path: &Path) -> Result<String, NatsConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| NatsConnectError::File {
        what,
        path: path.to_owned(),
        source,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(NatsConnectError::Empty { what, path: path.to_owned() });
    }
    Ok(text.to_owned())
}

/// Fails early, naming the option, for a file async-nats would only read while connecting.
fn readable(what: &'static str, path: &Path) -> Result<(), NatsConnectError> {
    std::fs::File::open(path).map(drop).map_err(|source| NatsConnectError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

impl NatsConnectOptions {
    /// Whether TLS is to be required for `url`.
    #[must_use]
    pub fn requires_tls(&self, url: &str) -> bool {
        self.require_tls
            || self.ca_file.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || url.split(',').any(|s| s.trim().starts_with("tls://"))
    }

    /// async-nats's options for `url`, and the servers to give it (without userinfo).
    async fn build(
        &self,
        url: &str,
    ) -> Result<(async_nats::ConnectOptions, Vec<String>), NatsConnectError> {
        let mut servers = Vec::new();
        let mut url_auth = None;
        for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (server, auth) = split_userinfo(server);
            servers.push(server);
            url_auth = url_auth.or(auth);
        }
        if servers.is_empty() {
            return Err(NatsConnectError::NoServer);
        }
        let given: Vec<&str> = [
            ("credentials file", self.credentials_file.is_some()),
            ("nkey file", self.nkey_file.is_some()),
            ("token file", self.token_file.is_some()),
            ("URL credentials", url_auth.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if given.len() > 1 {
            return Err(NatsConnectError::AmbiguousAuth(given.join(", ")));
        }
        let mut options = async_nats::ConnectOptions::new().connection_timeout(CONNECT_TIMEOUT);
        if let Some(path) = &self.credentials_file {
            options = options.credentials_file(path).await.map_err(|source| {
                NatsConnectError::File { what: "credentials", path: path.clone(), source }
            })?;
        }
        if let Some(path) = &self.nkey_file {
            options = options.nkey(read_secret("nkey", path)?);
        }
        if let Some(path) = &self.token_file {
            options = options.token(read_secret("token", path)?);
        }
        match url_auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlAuth::Token(token)) => options = options.token(token),
            None => {}
        }
        if let Some(path) = &self.ca_file {
            readable("CA", path)?;
            options = options.add_root_certificates(path.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                readable("client certificate", cert)?;
                readable("client key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => return Err(NatsConnectError::ClientCertHalf),
        }
        if self.requires_tls(url) {
            options = options.require_tls(true);
        }
        Ok((options, servers))
    }
}

/// Connects to `url` (one server or a comma-separated list of a cluster's) with
/// `options`.
///
/// # Errors
/// Unreadable files, ambiguous options, or NATS refusing (authorization, TLS) or
/// unreachable within [`CONNECT_TIMEOUT`] per server.
pub async fn connect(
    url: &str,
    options: &NatsConnectOptions,
) -> Result<async_nats::Client, NatsConnectError> {
    // async-nats builds its TLS configuration from rustls' process-wide provider; in a
    // process whose dependencies enable two (ring and aws-lc-rs, e.g. beside the official
    // KurrentDB client) rustls cannot pick one and panics. Cairn's is ring; a provider the
    // embedding process installed first stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (nats_options, servers) = options.build(url).await?;
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    nats_options.connect(servers).await.map_err(|e| NatsConnectError::Connect(error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_taken_out_of_the_url() {
        assert_eq!(
            split_userinfo("nats://u%40x:p%3Aw@h:4222"),
            ("nats://h:4222".to_owned(), Some(UrlAuth::UserPassword("u@x".into(), "p:w".into())))
        );
        assert_eq!(
            split_userinfo("tls://s3cret@h"),
            ("tls://h".to_owned(), Some(UrlAuth::Token("s3cret".into())))
        );
        assert_eq!(split_userinfo("nats://h:4222"), ("nats://h:4222".to_owned(), None));
    }

    #[tokio::test]
    async fn two_ways_to_authenticate_are_refused() {
        let options = NatsConnectOptions {
            token_file: Some(PathBuf::from("/nonexistent")),
            ..NatsConnectOptions::default()
        };
        let err = options.build("nats://u:p@127.0.0.1:1").await.expect_err("ambiguous");
        assert!(matches!(err, NatsConnectError::AmbiguousAuth(_)), "{err}");
        let half = NatsConnectOptions {
            tls_cert: Some(PathBuf::from("/c.pem")),
            ..NatsConnectOptions::default()
        };
        assert!(matches!(
            half.build("nats://h").await.err(),
            Some(NatsConnectError::ClientCertHalf)
        ));
        assert!(half.requires_tls("nats://h"));
        assert!(NatsConnectOptions::default().requires_tls("nats://a, tls://b"));
        assert!(!NatsConnectOptions::default().requires_tls("nats://a"));
    }
}
