//! The `sandbox-init` binary (also `tini`, `tini-static` and `dumb-init` by argv[0]): block
//! signals, harden, parse, then orchestrate the two rooms: `inject::prepare` (the secrets step)
//! for the user `init::setup` resolved, then `init::run` with its variables. One exit-code
//! policy: 2 for usage (a peer's own codes in its modes), 1 for a setup failure before the
//! child started, else the child's. Errors are printed once with their causes by
//! `inject::chain` (no `anyhow` here: the static init stays under its size budget).

use std::ffi::OsString;
use std::process::ExitCode;

use sandbox_init::cli::{self, Invocation};
use sandbox_init::{init, inject, logging, sys};

/// Every freed heap block is zeroed first: no copy of a secret outlives its buffer in the init's
/// memory while it supervises the child (see `sys::ZeroizingAlloc`).
#[global_allocator]
static ALLOC: sys::ZeroizingAlloc = sys::ZeroizingAlloc;

fn main() -> ExitCode {
    // First of all: no signal may be lost (or kill PID 1) before the supervisor waits for it.
    let masks = match init::block_signals() {
        Ok(m) => m,
        Err(e) => {
            logging::to_stderr(format_args!("sandbox-init: block signals: {e}\n"));
            return ExitCode::from(1);
        }
    };
    let core = match init::harden() {
        Ok(c) => c,
        Err(e) => return fail("", &e),
    };
    let invocation = match cli::parse_argv(std::env::args_os().collect(), &|k| std::env::var_os(k))
    {
        Ok(i) => i,
        Err(e) => {
            logging::to_stderr(format_args!(
                "sandbox-init: {e}\nTry 'sandbox-init --help' for more information.\n"
            ));
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Help => written(logging::to_stdout(format_args!("{}", cli::USAGE))),
        Invocation::Version => written(logging::to_stdout(format_args!(
            "sandbox-init {}\n",
            env!("CARGO_PKG_VERSION")
        ))),
        Invocation::Print { text, stderr, code } => {
            if stderr {
                logging::to_stderr(format_args!("{text}"));
            } else if logging::to_stdout(format_args!("{text}")).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::from(code)
        }
        Invocation::Env(opts) => {
            // A plain command, not an init: Ctrl-C must work.
            let _ = sys::set_mask(&masks.original);
            logging::install(init::log_level(opts.verbosity), opts.log_format);
            match inject::print_env(&opts.secrets, opts.env_format) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("secrets: ", &e),
            }
        }
        Invocation::CredentialHelper { action, secrets } => {
            let _ = sys::set_mask(&masks.original);
            logging::install(init::log_level(0), logging::LogFormat::Text);
            let code = inject::helper::run(
                &secrets,
                &action,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            );
            ExitCode::from(code)
        }
        Invocation::Run(opts) => start(opts, masks, core, false),
        Invocation::Exec(opts) => start(opts, masks, core, true),
    }
}

/// The init (`exec`: false) or `sandbox-init exec` (true), with one exit-code policy.
fn start(opts: cli::Options, masks: sys::Masks, core: init::CoreLimit, exec: bool) -> ExitCode {
    logging::install(init::log_level(opts.verbosity), opts.log_format);
    match run(opts, masks, core, exec) {
        Ok(code) => ExitCode::from(code),
        Err(Failed::Setup(e)) => fail_with(e.exit_code(), "", &e),
        Err(Failed::Secrets(e)) => fail("secrets: ", &e),
    }
}

/// Resolve the user, fetch and place the secrets for that user, then start and supervise the
/// command with them; with `exec`, for the user this process will run as
/// (`init::Identity::for_exec`), then become the command (returns only on failure).
fn run(
    opts: cli::Options,
    masks: sys::Masks,
    core: init::CoreLimit,
    exec: bool,
) -> Result<u8, Failed> {
    let mut who = init::setup(&opts.init).map_err(Failed::Setup)?;
    if exec {
        who = who.for_exec();
    }
    let inherited: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let target = inject::Target {
        uid: who.uid,
        gid: who.gid,
        home: who.home.clone(),
    };
    let mut prepared = inject::prepare_with(&opts.secrets, &opts.files, &target, &inherited)
        .map_err(Failed::Secrets)?;
    let etag = prepared.etag.take();
    let extra = extra_env(prepared);
    if exec {
        return Err(Failed::Setup(init::exec(
            &opts.init, who, &inherited, extra, masks, core,
        )));
    }
    let mut watch = watch(&opts, target, &inherited, etag);
    let changes = watch.as_mut().map(|w| w as &mut dyn init::Changes);
    init::run(&opts.init, who, &inherited, extra, masks, core, changes).map_err(Failed::Setup)
}

/// The `--on-change` watch, when asked for and there is an answer to watch (a start without
/// secrets has none: said at info level).
fn watch(
    opts: &cli::Options,
    target: inject::Target,
    inherited: &[(OsString, OsString)],
    etag: Option<String>,
) -> Option<Refresh> {
    let reaction = match opts.init.on_change {
        init::OnChange::None => return None,
        init::OnChange::Restart => inject::watch::Reaction::Restart,
        init::OnChange::Signal(_) => inject::watch::Reaction::Signal,
    };
    let Some(tag) = etag else {
        tracing::info!("--on-change: no answer from a broker to watch; the command starts once");
        return None;
    };
    match inject::watch::start(
        opts.secrets.clone(),
        opts.files.clone(),
        target,
        inherited.to_vec(),
        tag,
        reaction,
        init::wake,
    ) {
        Ok(w) => Some(Refresh(w)),
        Err(e) => {
            tracing::warn!("--on-change: cannot start the watch thread: {e}; changes are not seen");
            None
        }
    }
}

/// The watch as the supervisor's source of changes.
struct Refresh(inject::watch::Watch);

impl init::Changes for Refresh {
    fn take(&mut self) -> Option<init::ExtraEnv> {
        self.0.take().map(extra_env)
    }
}

/// The secrets step's variables as the init's extra environment: they move, uncopied.
fn extra_env(prepared: inject::Prepared) -> init::ExtraEnv {
    init::ExtraEnv {
        add: prepared.vars,
        remove: prepared.unset,
    }
}

/// Why the init stopped before its child started.
enum Failed {
    Setup(init::SetupError),
    Secrets(inject::Error),
}

/// Prints a setup failure once, with its chain of causes, and exits 1.
fn fail(step: &str, e: &dyn std::error::Error) -> ExitCode {
    fail_with(1, step, e)
}

/// As [`fail`], with the exit status `code`.
fn fail_with(code: u8, step: &str, e: &dyn std::error::Error) -> ExitCode {
    logging::to_stderr(format_args!("sandbox-init: {step}{}\n", inject::chain(e)));
    ExitCode::from(code)
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
