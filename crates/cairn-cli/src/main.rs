//! The `cairn` binary. Thin: `cairn serve` parses flags, opens a store, and hands it to the
//! server; every other subcommand is an operator command talking to a running server over
//! HTTP (`--url`, or `CAIRN_URL`).

mod admin;
mod bus;
mod client;
mod progress;
mod serve;
mod tail;
mod transfer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Reads materialise many small strings per event and free them on another thread;
// mimalloc measured 1.2-1.4x faster than the system allocator on those paths
// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(serve::ServeArgs),
    /// Check that the server is ready (store reachable, every consumer started).
    Health(admin::HealthArgs),
    /// List projections; rebuild, pause or resume one.
    Projections(admin::ProjectionsArgs),
    /// List, retry or discard dead letters.
    Dlq(admin::DlqArgs),
    /// Statistics of the streams.
    Streams(admin::StreamsArgs),
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
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Serve(args) => {
            return serve::run(args, vec![cairn_server::orders::module()])
                .map(|()| ExitCode::SUCCESS);
        }
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(_) => unreachable!("handled above"),
            Command::Health(args) => admin::health(args).await,
            Command::Projections(args) => admin::projections(args).await,
            Command::Dlq(args) => admin::dlq(args).await,
            Command::Streams(args) => admin::streams(args).await,
            Command::Read(args) => admin::read(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Schemas(args) => admin::schemas(args).await,
            Command::Export(args) => transfer::export(args).await,
            Command::Import(args) => transfer::import(args).await,
        }
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("cairn: error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
