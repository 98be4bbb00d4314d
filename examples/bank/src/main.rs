//! `bank`: the `cairn` command line serving the bank module (`bank serve`, `bank health`, ...).

fn main() -> std::process::ExitCode {
    cairn_cli::run(vec![bank::module()])
}
