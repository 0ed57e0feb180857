//! `fsm`: see the `fsm_cli` library for the commands.

fn main() -> std::process::ExitCode {
    fsm_cli::run_untyped()
}
