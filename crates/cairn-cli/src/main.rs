//! The `cairn` binary. Thin: it parses flags, opens a store, and hands it to the server.

mod serve;

use clap::{Parser, Subcommand};

// Reads materialise many small strings per event and free them on another thread;
// mimalloc measured 1.2-1.4x faster than the system allocator on those paths
// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cairn: an event store and CQRS toolkit.
#[derive(Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server on the embedded store.
    Serve(serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}
