//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls.
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require` and no certificate options,
//! and verifies nothing itself: the URL's TLS options are taken out here
//! ([`split_url`]), tokio-postgres gets the closest mode, and [`PgTls`] (the
//! `MakeTlsConnect` every session uses: pool, writer, leadership, `LISTEN`) does what
//! libpq would do with them.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// libpq tries plain text first; tokio-postgres cannot, so this behaves as `prefer`
    /// (TLS when the server offers it, unverified), which connects wherever `allow` does.
    Allow,
    /// TLS when the server offers it, unverified; plain text otherwise.
    Prefer,
    /// TLS, the certificate not verified (unless `sslrootcert` is given: then as `verify-ca`).
    Require,
    /// TLS, the certificate chain verified, the host name not.
    VerifyCa,
    /// TLS, the certificate chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// The mode when the URL names none: libpq's. Measured on the test suite (every test
    /// then runs over TLS to a local server with `ssl=on`): within the run-to-run noise.
    pub const DEFAULT: Self = Self::Prefer;

    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsError::SslMode(other.to_owned())),
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it only decides whether to ask for TLS.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            Self::Disable => T::Disable,
            Self::Allow | Self::Prefer => T::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => T::Require,
        }
    }
}

/// Why the TLS options of a database URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `sslmode` is not one of libpq's values.
    #[error(
        "unknown sslmode {0:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    /// A certificate or key file cannot be read or holds no PEM object of the right kind.
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reason.
        source: rustls_pki_types::pem::Error,
    },
    /// `sslrootcert` holds no certificate rustls accepts as a trust anchor.
    #[error("no usable CA certificate in {0}")]
    NoRoots(PathBuf),
    /// The system's trust store (for `verify-*` without `sslrootcert`) is empty.
    #[error("no CA certificate in the system trust store (give sslrootcert)")]
    NoSystemRoots,
    /// `sslcert` without `sslkey` or the other way round.
    #[error("sslcert and sslkey go together")]
    ClientCertHalf,
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The chain verifier could not be built from the roots.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The TLS options taken out of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`, or [`SslMode::DEFAULT`] when absent.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CA certificates (`system`: the system trust store).
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: the client certificate chain (PEM).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { mode: SslMode::DEFAULT, root_cert: None, client_cert: None, client_key: None }
    }
}

impl TlsOptions {
    /// Whether the server's certificate chain is checked (libpq: `require` with a root
    /// certificate behaves as `verify-ca`).
    fn verifies_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (self.mode == SslMode::Require && self.root_cert.is_some())
    }

    /// The options as URL query parameters (`&k=v…`, empty when all are defaults), to put
    /// back on a URL built from a parsed configuration.
    #[must_use]
    pub fn to_query(&self) -> String {
        let mut q = String::new();
        if self.mode != SslMode::DEFAULT {
            q.push_str("&sslmode=");
            q.push_str(self.mode.as_str());
        }
        for (key, path) in [
            ("sslrootcert", &self.root_cert),
            ("sslcert", &self.client_cert),
            ("sslkey", &self.client_key),
        ] {
            if let Some(p) = path {
                q.push('&');
                q.push_str(key);
                q.push('=');
                q.push_str(&percent_encode(&p.to_string_lossy()));
            }
        }
        q
    }
}

/// The keys taken out of the URL (tokio-postgres refuses the last three, and accepts only
/// half of `sslmode`'s values).
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits `url` (URL form `postgres://…?k=v` or key=value form `host=… k=v`) into the
/// URL without its TLS options and those options. The rest is left byte for byte.
///
/// # Errors
/// An unknown `sslmode`.
pub fn split_url(url: &str) -> Result<(String, TlsOptions), TlsError> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url_form(url, &mut found)
    } else {
        split_key_value_form(url, &mut found)
    };
    let mut options = TlsOptions::default();
    for (key, value) in found {
        match key.as_str() {
            "sslmode" => options.mode = SslMode::parse(&value)?,
            "sslrootcert" => options.root_cert = Some(PathBuf::from(value)),
            "sslcert" => options.client_cert = Some(PathBuf::from(value)),
            _ => options.client_key = Some(PathBuf::from(value)),
        }
    }
    Ok((rest, options))
}

fn split_url_form(url: &str, found: &mut Vec<(String, String)>) -> String {
    // As tokio-postgres: the credentials end at the first '@', the query starts at the
    // first '?' after them.
    let after_credentials = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_credentials..].find('?').map(|i| i + after_credentials) else {
        return url.to_owned();
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        if TLS_KEYS.contains(&key.as_str()) {
            found.push((key, percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    if kept.is_empty() { url[..q].to_owned() } else { format!("{}?{}", &url[..q], kept.join("&")) }
}

fn split_key_value_form(s: &str, found: &mut Vec<(String, String)>) -> String {
    // libpq's grammar (as tokio-postgres parses it): `key = value`, the value either bare
    // (backslash escapes) or in single quotes (backslash escapes).
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let byte = |i: usize| chars.get(i).map_or(s.len(), |&(b, _)| b);
    let mut removed: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        if i == start {
            break;
        }
        let key = &s[byte(start)..byte(i)];
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            // Malformed: tokio-postgres reports it.
            break;
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let quoted = at(i) == Some('\'');
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        while let Some(c) = at(i) {
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                break;
            }
            i += 1;
            if c == '\\' {
                if let Some(c2) = at(i) {
                    value.push(c2);
                    i += 1;
                }
            } else {
                value.push(c);
            }
        }
        if quoted && at(i) == Some('\'') {
            i += 1;
        }
        if TLS_KEYS.contains(&key) {
            found.push((key.to_owned(), value));
            removed.push((byte(start), byte(i)));
        }
    }
    let mut rest = String::with_capacity(s.len());
    let mut from = 0;
    for (a, b) in removed {
        rest.push_str(&s[from..a]);
        from = b;
    }
    rest.push_str(&s[from..]);
    rest.trim().to_owned()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Parses `url` for tokio-postgres with its TLS options applied: the configuration and
/// the connector every session uses.
///
/// # Errors
/// An unknown `sslmode`, unreadable certificate files, or a URL tokio-postgres refuses
/// (its message; never the URL itself, which may hold a password).
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, PgTls), crate::OpenError> {
    let (rest, options) = split_url(url)?;
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|e: tokio_postgres::Error| crate::OpenError::Url(e.to_string()))?;
    config.ssl_mode(options.mode.negotiation());
    Ok((config, PgTls::new(&options)?))
}

/// The `MakeTlsConnect` of every session Cairn opens.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls").finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(options: &TlsOptions) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match &options.root_cert {
        Some(path) if path != Path::new("system") => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| TlsError::Pem {
                    what: "sslrootcert",
                    path: path.clone(),
                    source,
                })?;
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots(path.clone()));
            }
        }
        _ => {
            // Unreadable system certificates are skipped, as curl and libpq do.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

impl PgTls {
    /// The connector for `options` (files are read now, once).
    ///
    /// # Errors
    /// Unreadable or unusable certificate and key files.
    pub fn new(options: &TlsOptions) -> Result<Self, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = if options.mode == SslMode::Disable {
            // Never used: tokio-postgres does not ask for TLS.
            Arc::new(NoVerification(Arc::clone(&provider)))
        } else if options.verifies_chain() {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(options)?),
                Arc::clone(&provider),
            )
            .build()?;
            if options.mode == SslMode::VerifyFull { chain } else { Arc::new(ChainOnly(chain)) }
        } else {
            Arc::new(NoVerification(Arc::clone(&provider)))
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let config = match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => {
                fn pem<'a>(
                    what: &'static str,
                    path: &'a Path,
                ) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError + 'a {
                    move |source| TlsError::Pem { what, path: path.to_owned(), source }
                }
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(pem("sslcert", cert))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(pem("sslkey", key))?;
                builder.with_client_auth_cert(chain, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::ClientCertHalf),
        };
        Ok(Self { config: Arc::new(config) })
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked. Name
/// checks come after the chain's in webpki, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, the peer unauthenticated
/// (libpq's meaning; it stops passive eavesdropping only). The handshake signatures are
/// still checked, so the session key belongs to whoever holds the presented certificate.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(PgTlsConnect { config: Arc::clone(&self.config), name })
    }
}

/// One session's handshake.
pub struct PgTlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { connector.connect(self.name, stream).await.map(PgTlsStream) })
    }
}

/// A session's TLS stream.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then authenticates without channel binding (tokio-postgres's default
        // `channel_binding=prefer` accepts that), as it does over plain text.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_leave_both_url_forms() {
        let (rest, o) = split_url(
            "postgres://u:p%3F@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%3F@h:5432/db?application_name=x");
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert_eq!(o.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        let (rest, o) = split_url("postgres://h/db?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), o.mode), ("postgres://h/db", SslMode::Require));
        let (rest, o) =
            split_url("host=h sslmode = verify-ca  user=u sslcert='/a b.pem' sslkey=/k\\ x")
                .unwrap();
        assert_eq!(rest, "host=h   user=u");
        assert_eq!(o.mode, SslMode::VerifyCa);
        assert_eq!(o.client_cert.as_deref(), Some(Path::new("/a b.pem")));
        assert_eq!(o.client_key.as_deref(), Some(Path::new("/k x")));
        assert_eq!(split_url("postgres://h/db").unwrap().1, TlsOptions::default());
        assert!(matches!(split_url("host=h sslmode=always"), Err(TlsError::SslMode(_))));
        let o = split_url("postgres://h/db?sslmode=verify-ca&sslrootcert=/c%20a").unwrap().1;
        assert_eq!(o.to_query(), "&sslmode=verify-ca&sslrootcert=/c%20a");
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let mut o = TlsOptions { mode: SslMode::Require, ..TlsOptions::default() };
        assert!(!o.verifies_chain());
        o.root_cert = Some(PathBuf::from("/ca.pem"));
        assert!(o.verifies_chain());
    }
}
