//! PID 1: command line, signal handling, spawning the child, reaping, privilege drop. Nothing here
//! speaks HTTP or knows what a secret is beyond handing `inject`'s variables to the child; all
//! `unsafe` lives in [`sys`].
//!
//! Order of events (see `src/bin/sandbox-init.rs` for the first two):
//! 1. block every forwardable signal ([`sys::block_forwardable`]), before anything else;
//! 2. [`harden`]: non-dumpable, core limit 0 (no core dump or ptrace-style read of the init's
//!    memory, which briefly holds the secrets);
//! 3. parse ([`cli`]), install logging;
//! 4. [`run`]: subreaper/pdeathsig, resolve `--user` ([`user`]), the secrets step
//!    (`inject::prepare`), build the child's environment and argv, fork ([`spawn`]), drop
//!    privileges in the child ([`privdrop`]), then [`supervise`] until the child ends.

pub mod cli;
pub mod privdrop;
pub mod reap;
pub mod signals;
pub mod spawn;
pub mod sys;
pub mod user;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd;

use crate::inject;
use signals::SigName;

/// Why the init stopped before its child started (exit status 1). Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("mark the init non-dumpable")]
    Dumpable(#[source] Errno),
    #[error("set the init's core size limit to 0")]
    CoreLimit(#[source] Errno),
    #[error("become a child subreaper")]
    Subreaper(#[source] Errno),
    #[error("set the parent-death signal {}", SigName(*.sig))]
    Pdeathsig {
        sig: i32,
        #[source]
        source: Errno,
    },
    #[error("read {path}")]
    ReadDb {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("resolve the user")]
    User(#[source] user::UserError),
    #[error("secrets")]
    Secrets(#[source] inject::Error),
    #[error("start the child")]
    Spawn(#[source] spawn::SpawnError),
}

/// The init's original core limit, restored in the child.
pub type CoreLimit = (libc::rlim_t, libc::rlim_t);

/// Marks the init non-dumpable (its `/proc/<pid>/` files become root-owned, so a process of the
/// same non-root user can neither read its `environ`/`mem` nor ptrace it, and no core is
/// written) and sets its soft core limit to 0. Returns the original limit for the child.
pub fn harden() -> Result<CoreLimit, SetupError> {
    nix::sys::prctl::set_dumpable(false).map_err(SetupError::Dumpable)?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_CORE).map_err(SetupError::CoreLimit)?;
    setrlimit(Resource::RLIMIT_CORE, 0, hard).map_err(SetupError::CoreLimit)?;
    Ok((soft, hard))
}

/// The log level: `SANDBOX_INIT_LOG` (default warn), raised one step per `-v`.
pub fn log_level(verbosity: u8) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    raise_level(
        crate::logging::level_from_env("SANDBOX_INIT_LOG", LevelFilter::WARN),
        verbosity,
    )
}

/// `base` raised `steps` levels (towards trace), saturating.
pub fn raise_level(
    base: tracing::level_filters::LevelFilter,
    steps: u8,
) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    let order = [
        LevelFilter::OFF,
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
        LevelFilter::TRACE,
    ];
    let at = order.iter().position(|l| *l == base).unwrap_or(2);
    order[(at + usize::from(steps)).min(order.len() - 1)]
}

fn read_db(path: &'static str) -> Result<String, SetupError> {
    user::read_db(Path::new(path)).map_err(|source| SetupError::ReadDb { path, source })
}

/// Runs the init after parsing: everything up to the fork can fail (exit 1); after the fork
/// the init never fails and returns the child's exit code.
pub fn run(opts: cli::Options, masks: sys::Masks, core: CoreLimit) -> Result<u8, SetupError> {
    if let Some(sig) = opts.pdeathsig {
        sys::set_pdeathsig(sig).map_err(|source| SetupError::Pdeathsig { sig, source })?;
    }
    if std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(SetupError::Subreaper)?;
    }

    // The target user: `--user`, or the init's own ids.
    let account = match &opts.user {
        Some(spec) => {
            let passwd = read_db(user::PASSWD_PATH)?;
            let group = read_db(user::GROUP_PATH)?;
            Some(user::resolve(spec, &passwd, &group).map_err(SetupError::User)?)
        }
        None => None,
    };
    let (uid, gid) = match &account {
        Some(a) => (a.uid, a.gid),
        None => (unistd::getuid().as_raw(), unistd::getgid().as_raw()),
    };
    // Only read passwd without --user when it is needed: no command (login shell) or no HOME.
    let own_entry =
        if account.is_none() && (opts.command.is_empty() || std::env::var_os("HOME").is_none()) {
            user::lookup_uid(&read_db(user::PASSWD_PATH)?, uid)
        } else {
            None
        };
    let home = match (&account, std::env::var_os("HOME"), &own_entry) {
        (Some(a), _, _) => a.home.clone(),
        (None, Some(h), _) if !h.is_empty() => PathBuf::from(h),
        (None, _, Some(e)) if !e.home.is_empty() => PathBuf::from(&e.home),
        _ => PathBuf::from("/"),
    };
    let shell = match (&account, &own_entry) {
        (Some(a), _) => a.shell.clone(),
        (None, Some(e)) if !e.shell.is_empty() => PathBuf::from(&e.shell),
        _ => PathBuf::from(user::DEFAULT_SHELL),
    };

    let inherited: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let target = inject::Target { uid, gid, home };
    let prepared =
        inject::prepare(&opts.secrets, &target, &inherited).map_err(SetupError::Secrets)?;

    let user_vars: Vec<(&str, OsString)> = match &account {
        Some(a) => vec![
            ("HOME", a.home.clone().into_os_string()),
            ("USER", a.login_name().into()),
            ("LOGNAME", a.login_name().into()),
            ("SHELL", a.shell.clone().into_os_string()),
        ],
        None => Vec::new(),
    };
    let env = spawn::compose_env(&inherited, &user_vars, &prepared.vars, &prepared.unset);
    // The composed environment now holds the only copy the init needs; wipe the rest.
    drop(prepared);
    let mut spec = spawn::exec_spec(&opts.command, &shell, env).map_err(SetupError::Spawn)?;
    let plan = privdrop::Plan::new(account.as_ref(), opts.no_new_privs, opts.drop_caps);
    let setup = spawn::ChildSetup {
        take_terminal: spawn::owns_terminal(),
        core_limit: Some(core),
    };
    let child = spawn::spawn(&mut spec, &plan, &masks, setup).map_err(SetupError::Spawn)?;
    drop(spec);
    Ok(supervise(child, &opts, &masks.blocked))
}

/// The supervision loop: waits for signals (all blocked, so nothing is lost between waits),
/// reaps on SIGCHLD, forwards everything else. Returns the exit code once the child has been
/// reaped. Errors are logged and the loop goes on.
pub fn supervise(child: i32, opts: &cli::Options, blocked: &sys::SigSet) -> u8 {
    loop {
        let got = match sys::sigwaitinfo(blocked) {
            Ok(got) => got,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("sigwaitinfo: {e}");
                continue;
            }
        };
        if got.sig == libc::SIGCHLD {
            if let Some(ended) = reap::reap_all(child, opts.warn_zombies) {
                let code = reap::exit_code(ended, &opts.remaps);
                tracing::info!(code, "exiting: child {ended}");
                return code;
            }
            continue;
        }
        forward(got, child, opts);
    }
}

/// Forwards one received signal per `-r`, `-g` and the interactive-shell rule in [`signals`].
fn forward(got: sys::Received, child: i32, opts: &cli::Options) {
    let Some(sig) = signals::rewrite(got.sig, &opts.rewrites) else {
        tracing::debug!(from = got.pid, "{} dropped by --rewrite", SigName(got.sig));
        return;
    };
    let ignores_term = sig == libc::SIGTERM && child_ignores(child, libc::SIGTERM);
    for d in signals::deliveries(sig, opts.group, ignores_term) {
        let (pid, to) = match d.target {
            signals::Target::Child => (child, "child"),
            signals::Target::Group => (-child, "child's process group"),
        };
        tracing::debug!(
            from = got.pid,
            "received {}, sending {} to the {to}",
            SigName(got.sig),
            SigName(d.sig)
        );
        match sys::kill(pid, d.sig) {
            Ok(()) => {}
            Err(Errno::ESRCH) => tracing::debug!("{} to {pid}: already gone", SigName(d.sig)),
            Err(e) => tracing::warn!("send {} to {pid}: {e}", SigName(d.sig)),
        }
    }
}

/// Whether the child currently ignores `sig`, from `/proc/<child>/status` (false when unreadable).
fn child_ignores(child: i32, sig: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{child}/status"))
        .ok()
        .and_then(|s| signals::ignored_in_status(&s, sig))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_raises_level() {
        use tracing::level_filters::LevelFilter as L;
        assert_eq!(raise_level(L::WARN, 0), L::WARN);
        assert_eq!(raise_level(L::WARN, 1), L::INFO);
        assert_eq!(raise_level(L::WARN, 2), L::DEBUG);
        assert_eq!(raise_level(L::WARN, 200), L::TRACE);
        assert_eq!(raise_level(L::OFF, 1), L::ERROR);
        assert_eq!(raise_level(L::TRACE, 1), L::TRACE);
    }

    #[test]
    fn setup_errors_name_the_step() {
        let e = SetupError::Pdeathsig {
            sig: libc::SIGKILL,
            source: Errno::EINVAL,
        };
        assert_eq!(e.to_string(), "set the parent-death signal SIGKILL");
        let e = SetupError::ReadDb {
            path: user::PASSWD_PATH,
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(e.to_string(), "read /etc/passwd");
    }
}
