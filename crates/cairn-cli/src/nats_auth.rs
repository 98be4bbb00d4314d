//! NATS credentials and TLS flags, shared by everything `cairn serve` connects to NATS
//! (the relays, commands over NATS). Secrets are read from files only: a flag's value
//! shows in `ps`.

use std::path::PathBuf;

use clap::Args;

/// How `cairn serve` authenticates to NATS and whether it uses TLS. Without any of them
/// it connects anonymously in plain text (unless the URL is `tls://`, or carries
/// `user:password@` or `token@`).
#[derive(Args, Debug, Clone, Default)]
// The field names are the flags' names (`--nats-…`, beside `serve`'s other NATS flags).
#[allow(clippy::struct_field_names)]
pub struct NatsAuthArgs {
    /// A NATS `.creds` file (user JWT and nkey seed, as `nsc` writes it).
    #[arg(long, env = "CAIRN_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// A file holding a NATS user nkey seed (`SU…`).
    #[arg(long, env = "CAIRN_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// A file holding the NATS server's authorization token.
    #[arg(long, env = "CAIRN_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the NATS server's certificate must chain to (instead of the
    /// system trust store); turns TLS on.
    #[arg(long, env = "CAIRN_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// PEM client certificate for a NATS server that verifies clients; turns TLS on.
    #[arg(long, env = "CAIRN_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's PEM key.
    #[arg(long, env = "CAIRN_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsAuthArgs {
    /// The connection options every NATS client of `cairn serve` uses.
    #[must_use]
    pub fn options(&self) -> cairn_nats::NatsConnectOptions {
        cairn_nats::NatsConnectOptions {
            credentials_file: self.nats_creds_file.clone(),
            nkey_file: self.nats_nkey_file.clone(),
            token_file: self.nats_token_file.clone(),
            ca_file: self.nats_ca_file.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            require_tls: false,
        }
    }
}
