//! The `cairn` command line as a library: a binary is `cairn_cli::run(modules)` (the
//! `cairn` package's `main.rs` is one line of it), so an application built from its own
//! modules gets the same `serve` and operator commands. `cairn serve` parses flags, opens
//! a store, and serves the given modules; every other subcommand is an operator command
//! talking to a running server over HTTP (`--url`, or `CAIRN_URL`).
//!
//! The binary chooses the allocator (`#[global_allocator]`), not this library: the
//! `cairn` binary uses mimalloc, measured 1.2-1.4x faster than the system allocator on
//! reads (docs/benchmarks.md).

/// `println!` that returns the write's error instead of panicking: with stdout a pipe
/// that closed (`cairn read s | head -1`), the command stops quietly (see `run_from`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod admin;
mod bus;
mod client;
mod lifecycle;
mod listen;
mod nats_auth;
mod progress;
mod quickack;
mod serve;
mod tail;
mod tokens;
mod transfer;

use std::ffi::OsString;
use std::process::ExitCode;

use cairn_server::Module;
use clap::{Parser, Subcommand};

/// Cairn: an event store and CQRS toolkit.
///
/// `cairn serve` runs the server; the other commands talk to a running server over HTTP
/// (`--url`, default `http://127.0.0.1:7070`, or `CAIRN_URL`) and print readable text, or the
/// server's JSON with `--json`.
#[derive(Parser)]
#[command(name = "cairn", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (embedded store by default, or PostgreSQL with `--store postgres`).
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<serve::ServeArgs>),
    /// Check that the server is ready (store reachable, every consumer started).
    Health(admin::HealthArgs),
    /// List projections; rebuild, pause or resume one.
    Projections(admin::ProjectionsArgs),
    /// List, retry or discard dead letters.
    Dlq(admin::DlqArgs),
    /// Statistics of the streams; delete, tombstone or truncate one, or set its metadata.
    Streams(admin::StreamsArgs),
    /// Erase for real every event that deletes, truncation and retention hide (admin).
    Scavenge(lifecycle::ScavengeArgs),
    /// Read one stream's events, forward or backward.
    Read(admin::ReadArgs),
    /// Follow `$all` live (Server-Sent Events), reconnecting where it stopped.
    Tail(tail::TailArgs),
    /// List event schemas, or register a new version of one.
    Schemas(admin::SchemasArgs),
    /// Write every event of `$all` (or a filter) as newline-delimited JSON.
    Export(transfer::ExportArgs),
    /// Append the events of an export to a server, keeping ids, versions and metadata.
    Import(transfer::ImportArgs),
    /// Create, list and revoke API tokens; generate the bootstrap admin token.
    Tokens(tokens::TokensArgs),
}

/// Runs the command line of the process (`std::env::args_os`); `serve` serves `modules`.
/// Exits as `cairn` always has: 0 on success, 1 with one line `cairn: error: ...` on
/// standard error otherwise, clap's codes for usage errors, `--help` and `--version`.
#[must_use]
pub fn run(modules: Vec<Module>) -> ExitCode {
    run_from(modules, std::env::args_os())
}

/// Like [`run`], on `args` (the program name first, as clap's `parse_from` takes them).
#[must_use]
pub fn run_from<I, T>(modules: Vec<Module>, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Once, before anything speaks TLS: with two providers linked in (a dependency's
    // features can add one), rustls would panic on first use instead of choosing.
    // Already installed (an embedding application did): that one stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = match Cli::parse_from(args).command {
        Command::Serve(args) => {
            return match serve::run(*args, modules) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // As `main` returning the error printed it: every cause on its own
                    // line, which a start-up refusal (the guard's list) needs.
                    eprintln!("Error: {e:?}");
                    ExitCode::FAILURE
                }
            };
        }
        other => other,
    };
    match operator(command) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head -1`): it has what it wanted, as
        // `cat` does, nothing is wrong.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("cairn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An operator command: one request (or stream) to a running server.
fn operator(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        match command {
            Command::Serve(_) => unreachable!("served by run_from"),
            Command::Health(args) => admin::health(args).await,
            Command::Projections(args) => admin::projections(args).await,
            Command::Dlq(args) => admin::dlq(args).await,
            Command::Streams(args) => admin::streams(args).await,
            Command::Scavenge(args) => lifecycle::scavenge(args).await,
            Command::Read(args) => admin::read(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Schemas(args) => admin::schemas(args).await,
            Command::Export(args) => transfer::export(args).await,
            Command::Import(args) => transfer::import(args).await,
            Command::Tokens(args) => tokens::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::run_from;

    #[test]
    fn an_operator_command_that_fails_exits_with_failure() {
        // A port nobody listens on: the command fails to reach the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let code = run_from(Vec::new(), ["cairn", "health", "--url", url.as_str()]);
        assert_eq!(code, ExitCode::FAILURE);
    }
}
