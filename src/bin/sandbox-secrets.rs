//! The `sandbox-secrets` binary: clap subcommands to the daemon or the admin client.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
