//! The `sandbox-init` binary: block signals, harden, parse, run, map the error to an exit code
//! once. Exit 2 for usage, 1 for a setup failure before the child started, else the child's.

use std::process::ExitCode;

use sandbox_init::init::{self, cli, sys};
use sandbox_init::{inject, logging};

/// Every freed heap block is zeroed first: no copy of a secret outlives its buffer in the init's
/// memory while it supervises the child (see `sys::ZeroizingAlloc`).
#[global_allocator]
static ALLOC: sys::ZeroizingAlloc = sys::ZeroizingAlloc;

fn main() -> ExitCode {
    // First of all: no signal may be lost (or kill PID 1) before the supervisor waits for it.
    let masks = match sys::block_forwardable() {
        Ok(m) => m,
        Err(e) => {
            logging::to_stderr(format_args!("sandbox-init: block signals: {e}\n"));
            return ExitCode::from(1);
        }
    };
    let core = match init::harden() {
        Ok(c) => c,
        Err(e) => return fail(anyhow::Error::from(e)),
    };
    let invocation = match cli::parse(std::env::args_os().skip(1), &|k| std::env::var_os(k)) {
        Ok(i) => i,
        Err(e) => {
            logging::to_stderr(format_args!(
                "sandbox-init: {e}\nTry 'sandbox-init --help' for more information.\n"
            ));
            return ExitCode::from(2);
        }
    };
    match invocation {
        cli::Invocation::Help => written(logging::to_stdout(format_args!("{}", cli::USAGE))),
        cli::Invocation::Version => written(logging::to_stdout(format_args!(
            "sandbox-init {}\n",
            env!("CARGO_PKG_VERSION")
        ))),
        cli::Invocation::Env(opts) => {
            // A plain command, not an init: Ctrl-C must work.
            let _ = sys::set_mask(&masks.original);
            logging::install(init::log_level(opts.verbosity), opts.log_format);
            match inject::print_env(&opts.secrets) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(anyhow::Error::from(e).context("secrets")),
            }
        }
        cli::Invocation::Run(opts) => {
            logging::install(init::log_level(opts.verbosity), opts.log_format);
            match init::run(opts, masks, core) {
                Ok(code) => ExitCode::from(code),
                Err(e) => fail(anyhow::Error::from(e)),
            }
        }
    }
}

/// Prints a setup failure once, with its chain of causes, and exits 1.
fn fail(e: anyhow::Error) -> ExitCode {
    logging::to_stderr(format_args!("sandbox-init: {e:#}\n"));
    ExitCode::from(1)
}

/// `--help` and `--version`: 0 when the text was written, else 1 (the text is lost).
fn written(out: std::io::Result<()>) -> ExitCode {
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::to_stderr(format_args!("sandbox-init: cannot write to stdout: {e}\n"));
            ExitCode::from(1)
        }
    }
}
