//! `cairn`: the command line of `cairn-cli` serving the Order Management module.

// Reads materialise many small strings per event and free them on another thread;
// mimalloc measured 1.2-1.4x faster than the system allocator there (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cairn_cli::run(vec![cairn_orders_http::module()])
}
