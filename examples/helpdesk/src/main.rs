fn main() -> std::process::ExitCode {
    cairn_cli::run(vec![helpdesk::module()])
}
