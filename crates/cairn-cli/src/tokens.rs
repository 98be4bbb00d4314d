//! `cairn tokens`: API tokens (#16) — created, listed and revoked through the admin API;
//! `generate` makes the bootstrap admin token locally, for `cairn serve --admin-token-file`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::{array, print_table, text};
use crate::client::{Client, Conn};
use cairn_server::auth::{AuthConfig, TOKEN_PREFIX};

/// `cairn tokens`.
#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    action: TokensAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum TokensAction {
    /// Create a token; it is printed this once (only its hash is stored).
    Create {
        /// Who holds it (`[A-Za-z0-9._:@-]{1,64}`): the `user_id` of its commands.
        #[arg(long)]
        name: String,
        /// `reader`, `writer`, `appender`, `admin` or `gateway`.
        #[arg(long)]
        role: String,
        /// A stream-id prefix its raw appends are limited to (repeatable; none: any).
        #[arg(long = "prefix", value_name = "PREFIX")]
        prefixes: Vec<String>,
    },
    /// List every token (never the secrets), revoked ones too.
    List,
    /// Revoke a token by id: it authenticates nothing from then on.
    Revoke {
        /// The token's id (`cairn tokens list`).
        id: String,
    },
    /// Print a new random token without a server (for `cairn serve --admin-token-file`).
    Generate,
}

/// Runs `cairn tokens`.
pub async fn run(args: TokensArgs) -> anyhow::Result<()> {
    if matches!(args.action, TokensAction::Generate) {
        let token = cairn_server::auth::new_token().context("no randomness from the system")?;
        outln!("{token}")?;
        return Ok(());
    }
    let client = Client::new(&args.conn)?;
    let body = match args.action {
        TokensAction::Create { name, role, prefixes } => {
            let body = json!({"name": name, "role": role, "prefixes": prefixes});
            client.call(Method::POST, &["admin", "tokens"], Some(&body)).await?
        }
        TokensAction::List => client.get_json(&["admin", "tokens"], &[]).await?,
        TokensAction::Revoke { id } => {
            client.call(Method::DELETE, &["admin", "tokens", &id], None).await?
        }
        TokensAction::Generate => unreachable!("answered above"),
    };
    if args.conn.json {
        outln!("{body}")?;
        return Ok(());
    }
    if let Some(token) = body.get("token").and_then(Value::as_str) {
        outln!("{token}")?;
        eprintln!(
            "token {} ({}, role {}): shown this once; send it as `Authorization: Bearer <token>` \
             (CAIRN_TOKEN for this CLI)",
            text(&body["id"]),
            text(&body["name"]),
            text(&body["role"])
        );
        return Ok(());
    }
    let rows: Vec<&Value> = match body.get("tokens") {
        Some(tokens) => array(tokens)?.iter().collect(),
        None => vec![&body],
    };
    let rows = rows
        .into_iter()
        .map(|t| {
            let prefixes: Vec<String> =
                t["prefixes"].as_array().map(|p| p.iter().map(text).collect()).unwrap_or_default();
            vec![
                text(&t["id"]),
                text(&t["name"]),
                text(&t["role"]),
                prefixes.join(","),
                text(&t["created_at"]),
                text(&t["revoked_at"]),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "ROLE", "PREFIXES", "CREATED", "REVOKED"], rows)?;
    Ok(())
}

/// The token in `path`: its content, trimmed (a trailing newline is usual).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("the token file {} must hold one token and nothing else", path.display());
    }
    Ok(token.to_owned())
}

/// Shortest bootstrap token accepted: a guessable admin token is no protection.
const BOOTSTRAP_TOKEN_MIN_LEN: usize = 32;

/// How `cairn serve` authenticates: tokens required with `--admin-token-file`; otherwise
/// open, which only a loopback address or `--insecure` allows.
pub fn auth_config(
    listen: SocketAddr,
    admin_token_file: Option<&Path>,
    insecure: bool,
) -> anyhow::Result<AuthConfig> {
    if let Some(path) = admin_token_file {
        let token = read_token_file(path)?;
        if token.len() < BOOTSTRAP_TOKEN_MIN_LEN {
            bail!(
                "the admin token in {} is shorter than {BOOTSTRAP_TOKEN_MIN_LEN} characters; \
                 make one with `cairn tokens generate` (it starts with {TOKEN_PREFIX:?})",
                path.display()
            );
        }
        return Ok(AuthConfig::required(Some(&token)));
    }
    if !listen.ip().is_loopback() && !insecure {
        bail!(
            "refusing to listen on {listen} without authentication: anyone who reaches that \
             address could read, write and administer everything. Give an admin token with \
             --admin-token-file PATH (make one with `cairn tokens generate > PATH`), listen on \
             a loopback address (127.0.0.1), or pass --insecure to serve it open anyway"
        );
    }
    if insecure && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "serving WITHOUT authentication on a non-loopback address (--insecure)");
    }
    Ok(AuthConfig::default())
}
