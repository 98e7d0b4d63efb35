//! PID 1: signal handling, spawning the child, reaping, privilege drop, and the voices of the
//! peers it stands in for (tini, dumb-init). Nothing here speaks HTTP or knows where the extra
//! variables it hands the child come from; the only `unsafe` is the call of `sys::fork`.
//!
//! Order of events (driven by `src/bin/sandbox-init.rs`):
//! 1. block every forwardable signal ([`block_signals`]), before anything else;
//! 2. [`harden`]: non-dumpable, core limit 0 (no core dump or ptrace-style read of the init's
//!    memory, which briefly holds the variables it hands the child);
//! 3. parse (`crate::cli`), install logging;
//! 4. [`setup`]: pdeathsig, subreaper (or tini's warning), resolve `--user` ([`user`]);
//! 5. the binary's extra step (which writes files for the resolved [`Identity`]);
//! 6. [`run`]: build the child's environment and argv, fork ([`spawn`]), drop privileges in
//!    the child ([`privdrop`]), `chdir("/")` in the init, then [`supervise`] until the child
//!    ends.

pub mod privdrop;
pub mod reap;
pub mod signals;
pub mod spawn;
pub mod stage;
pub mod user;
pub mod voice;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd;
use secrecy::SecretString;

use crate::sys;
use signals::{Rewrite, SigName};
use user::{Account, UserSpec};
use voice::{Level, Voice};

/// What the init does, parsed and validated by `crate::cli` (each peer's defaults already
/// applied there).
#[derive(Debug, Default)]
pub struct Options {
    /// Whose messages and exec-failure codes the init uses.
    pub voice: Voice,
    /// Become a child subreaper when not PID 1 (always as sandbox-init and dumb-init; tini's
    /// `-s` or `TINI_SUBREAPER`, else tini's warning).
    pub subreaper: bool,
    /// Start the command in a new session (dumb-init's default) rather than a new process
    /// group of the init's session.
    pub setsid: bool,
    /// Forward signals to the child's process group instead of the child (`-g`; dumb-init's
    /// default).
    pub group: bool,
    /// When the command exits, send SIGTERM (after `-r`) to the rest of its process group
    /// (`-g` as sandbox-init; dumb-init in setsid mode).
    pub term_group_on_exit: bool,
    /// On SIGTSTP/SIGTTIN/SIGTTOU, forward, then stop the init itself until SIGCONT
    /// (`--job-control`; dumb-init always).
    pub job_control: bool,
    /// tini `-e CODE`: exit codes turned into 0.
    pub remaps: Vec<u8>,
    /// tini `-p SIG`: `PR_SET_PDEATHSIG` on the init.
    pub pdeathsig: Option<i32>,
    /// tini `-w`: warn when reaping a zombie that is not the child.
    pub warn_zombies: bool,
    /// dumb-init `-r s:r` rules, in order (the last rule for a signal wins).
    pub rewrites: Vec<Rewrite>,
    /// `--user` (or `SANDBOX_INIT_USER`).
    pub user: Option<UserSpec>,
    pub no_new_privs: bool,
    pub drop_caps: bool,
    /// The command and its arguments; empty means the target user's login shell.
    pub command: Vec<OsString>,
    /// `--on-change`: what a change of the secrets does to the running command.
    pub on_change: OnChange,
    /// `--restart-grace`: how long a restart waits after SIGTERM before SIGKILL.
    pub restart_grace: Duration,
    /// Debug lines the peer prints about its own parsing (dumb-init's "Running in debug
    /// mode."), said by [`setup`] in the peer's voice.
    pub notes: Vec<&'static str>,
}

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
    #[error("start the child")]
    Spawn(#[source] spawn::SpawnError),
    /// `sandbox-init exec`: a step before `execve`, or `execve` itself, failed.
    #[error("{} {file}", failure.stage.describe())]
    Exec {
        file: String,
        failure: stage::Failure,
        #[source]
        source: Errno,
    },
}

impl SetupError {
    /// The init's exit status for this failure: 1, except an `exec` that failed (127 command
    /// not found, 126 not executable, as for the child of PID 1).
    pub fn exit_code(&self) -> u8 {
        match self {
            SetupError::Exec { failure, .. } => failure.exit_code_for(Voice::Ours) as u8,
            _ => 1,
        }
    }
}

/// Step one of `main`: blocks every forwardable signal (all but the synchronous ones and
/// KILL/STOP, realtime ones included) and resets SIGCHLD to its default action.
pub fn block_signals() -> Result<sys::Masks, Errno> {
    let mut blocked = sys::SigSet::empty();
    for sig in 1..=signals::max_signal() {
        if signals::is_forwardable(sig) {
            // libc refuses the few numbers it reserves for itself; those stay unblocked.
            blocked.add(sig);
        }
    }
    sys::block(blocked)
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

/// Who the child runs as, resolved before the fork (and before the binary's extra step, which
/// writes files for this user).
#[derive(Debug)]
pub struct Identity {
    account: Option<Account>,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    shell: PathBuf,
}

/// Variables the binary adds to the child's environment on top of the init's own (replacing
/// any of the same name; values zeroized on drop, redacted in `Debug`), and inherited names it
/// removes.
#[derive(Debug, Default)]
pub struct ExtraEnv {
    pub add: Vec<(String, SecretString)>,
    pub remove: Vec<String>,
}

/// Everything before the binary's extra step that can fail (exit 1): the parent-death signal,
/// the subreaper (or tini's warning), and the target user.
pub fn setup(opts: &Options) -> Result<Identity, SetupError> {
    for note in &opts.notes {
        opts.voice.dumb_debug(format_args!("{note}"));
    }
    if let Some(sig) = opts.pdeathsig {
        sys::set_pdeathsig(sig).map_err(|source| SetupError::Pdeathsig { sig, source })?;
    }
    if std::process::id() != 1 {
        if opts.subreaper {
            nix::sys::prctl::set_child_subreaper(true).map_err(SetupError::Subreaper)?;
            opts.voice
                .tini(Level::Trace, format_args!("Registered as child subreaper"));
        } else {
            opts.voice
                .tini(Level::Warn, format_args!("{}", voice::TINI_REAPER_WARNING));
        }
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
    Ok(Identity {
        account,
        uid,
        gid,
        home,
        shell,
    })
}

/// Whether `sandbox-init exec` switches to the target (`target` uid, gid): only as root, and
/// only when not already running as it. Not root, it cannot (`setgroups` would fail with
/// EPERM): it runs the command as it is, as `docker exec -u dev` asked.
pub fn changes_identity(euid: u32, current: (u32, u32), target: Option<(u32, u32)>) -> bool {
    match target {
        Some(t) => euid == 0 && t != current,
        None => false,
    }
}

impl Identity {
    /// For `sandbox-init exec`: the identity the command runs as. When [`changes_identity`]
    /// says no, the process's own ids (and HOME from its environment), and no account (so no
    /// privilege drop and no HOME/USER/LOGNAME/SHELL of the target).
    pub fn for_exec(mut self) -> Identity {
        let current = (unistd::getuid().as_raw(), unistd::getgid().as_raw());
        let target = self.account.as_ref().map(|a| (a.uid, a.gid));
        if self.account.is_some() && !changes_identity(unistd::geteuid().as_raw(), current, target)
        {
            if target.map(|t| t.0) != Some(current.0) {
                self.home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map_or_else(|| PathBuf::from("/"), PathBuf::from);
            }
            (self.uid, self.gid) = current;
            self.account = None;
        }
        self
    }

    /// HOME, USER, LOGNAME and SHELL of the target account, when there is one.
    fn user_vars(&self) -> Vec<(&'static str, OsString)> {
        match &self.account {
            Some(a) => vec![
                ("HOME", a.home.clone().into_os_string()),
                ("USER", a.login_name().into()),
                ("LOGNAME", a.login_name().into()),
                ("SHELL", a.shell.clone().into_os_string()),
            ],
            None => Vec::new(),
        }
    }
}

/// `sandbox-init exec`: replaces this process with the command (no fork, no supervision: it is
/// not PID 1), with `inherited` plus `extra`, as `who` (privileges dropped as PID 1 drops them
/// in its child when [`Identity::for_exec`] kept an account). Dispositions, mask and core limit
/// are restored first. Returns only on failure.
pub fn exec(
    opts: &Options,
    who: Identity,
    inherited: &[(OsString, OsString)],
    extra: ExtraEnv,
    masks: sys::Masks,
    core: CoreLimit,
) -> SetupError {
    let user_vars = who.user_vars();
    let env = spawn::compose_env(inherited, &user_vars, &extra.add, &extra.remove);
    drop(extra);
    let mut spec = match spawn::exec_spec(&opts.command, &who.shell, env) {
        Ok(s) => s,
        Err(e) => return SetupError::Spawn(e),
    };
    let plan = privdrop::Plan::new(who.account.as_ref(), opts.no_new_privs, opts.drop_caps);
    let failure = spawn::exec_here(&spec, &plan, &masks, Some(core));
    spec.wipe_env();
    SetupError::Exec {
        file: spec.file().to_string_lossy().into_owned(),
        failure,
        source: failure.errno,
    }
}

/// Starts the child as `who` with `inherited` (the init's own environment) plus `extra`, then
/// supervises it; with `changes` (the binary's `--on-change` watch) it restarts or signals the
/// command when a change is reported ([`OnChange`]). Everything up to the first fork can fail
/// (exit 1); after it the init never fails and returns the child's exit code.
pub fn run(
    opts: &Options,
    who: Identity,
    inherited: &[(OsString, OsString)],
    extra: ExtraEnv,
    masks: sys::Masks,
    core: CoreLimit,
    changes: Option<&mut dyn Changes>,
) -> Result<u8, SetupError> {
    let launcher = Launcher {
        opts,
        user_vars: who.user_vars(),
        plan: privdrop::Plan::new(who.account.as_ref(), opts.no_new_privs, opts.drop_caps),
        who: &who,
        inherited,
        masks: &masks,
        setup: spawn::ChildSetup {
            take_terminal: !opts.setsid && spawn::owns_terminal(),
            setsid: opts.setsid,
            core_limit: Some(core),
            voice: opts.voice,
        },
    };
    // dumb-init's hand-off: a session leader that gives up its terminal gets one SIGHUP and
    // one SIGCONT from the kernel for it; those are not the user's and are not forwarded.
    let handoff = opts.setsid && spawn::release_terminal(opts.voice);
    let child = launcher.launch(extra)?;
    let live = changes.map(|changes| Live {
        changes,
        launcher: &launcher,
        pending: None,
        stopping: None,
        ended: false,
        last_start: Instant::now(),
    });
    Ok(supervise(child, opts, &masks.blocked, handoff, live))
}

/// What the init does when the binary reports a change of the command's variables
/// (`--on-change`, env `SANDBOX_INIT_ON_CHANGE`). The files are current in every mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnChange {
    /// Nothing: no watch is kept (the default).
    #[default]
    None,
    /// SIGTERM to the command's group, SIGKILL after `--restart-grace`, then the command again
    /// with the new variables. Restarts are at least [`MIN_RESTART_INTERVAL`] apart.
    Restart,
    /// The signal to the command's group; the command keeps running (and reads the files).
    Signal(i32),
}

/// Default `--restart-grace`.
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(10);
/// Two restarts are at least this far apart: a burst of changes gives one restart, with the
/// last values.
pub const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// The binary's source of changes while the command runs (the `--on-change` watch). The watch
/// calls [`wake`] (from its own thread) when it has one.
pub trait Changes {
    /// The latest change not yet taken, if any: the variables the command gets when it is
    /// started again (the files are already current when a change is reported).
    fn take(&mut self) -> Option<ExtraEnv>;
}

/// Wakes the supervisor from another thread: SIGCHLD to the init itself, on which it reaps
/// (finding nothing) and asks [`Changes::take`]. Standard signals coalesce, so a burst of
/// wakes is one.
pub fn wake() {
    let _ = sys::kill(std::process::id() as i32, libc::SIGCHLD);
}

/// Everything needed to start the command again, kept for the restarts.
struct Launcher<'a> {
    opts: &'a Options,
    who: &'a Identity,
    user_vars: Vec<(&'static str, OsString)>,
    plan: privdrop::Plan,
    inherited: &'a [(OsString, OsString)],
    masks: &'a sys::Masks,
    setup: spawn::ChildSetup,
}

impl Launcher<'_> {
    /// Forks and execs the command with `extra` on top of the inherited environment.
    fn launch(&self, extra: ExtraEnv) -> Result<i32, SetupError> {
        let env = spawn::compose_env(self.inherited, &self.user_vars, &extra.add, &extra.remove);
        // The composed environment now holds the only copy the init needs; wipe the rest.
        drop(extra);
        let mut spec = spawn::exec_spec(&self.opts.command, &self.who.shell, env)
            .map_err(SetupError::Spawn)?;
        let child = spawn::spawn(&mut spec, &self.plan, self.masks, self.setup)
            .map_err(SetupError::Spawn)?;
        Ok(child)
    }
}

/// The restart's clock, as [`Live`] holds it: a restart under way (when SIGTERM went, whether
/// SIGKILL followed), a change waiting for its restart, and when the command last started.
#[derive(Clone, Copy, Debug)]
struct Restart {
    stopping: Option<(Instant, bool)>,
    pending: bool,
    last_start: Instant,
}

/// What a restart does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Wait,
    /// Begin: SIGTERM to the command's group.
    Terminate,
    /// The grace is over: SIGKILL to the command's group.
    Kill,
}

impl Restart {
    /// When the supervisor must wake up without a signal: the end of a restart's grace, or the
    /// end of the rate limit that holds a pending restart back. `None`: only signals. Pure.
    fn deadline(&self, grace: Duration) -> Option<Instant> {
        match self.stopping {
            Some((since, false)) => Some(since + grace),
            Some((_, true)) => None,
            None if self.pending => Some(self.last_start + MIN_RESTART_INTERVAL),
            None => None,
        }
    }

    /// What to do at `now`: begin a pending restart once [`MIN_RESTART_INTERVAL`] has passed
    /// since the last start, SIGKILL once `grace` has passed since SIGTERM, else wait. Pure.
    fn action(&self, now: Instant, grace: Duration) -> Action {
        match self.stopping {
            None if self.pending && now >= self.last_start + MIN_RESTART_INTERVAL => {
                Action::Terminate
            }
            Some((since, false)) if now >= since + grace => Action::Kill,
            _ => Action::Wait,
        }
    }
}

/// The `--on-change` state of the supervisor.
struct Live<'a> {
    changes: &'a mut dyn Changes,
    launcher: &'a Launcher<'a>,
    /// Variables of a change not yet applied by a restart (the latest wins).
    pending: Option<ExtraEnv>,
    /// A restart under way: when SIGTERM was sent, and whether SIGKILL followed.
    stopping: Option<(Instant, bool)>,
    /// Asked to stop from outside ([`Live::on_signal`]): no more restarts or change signals.
    ended: bool,
    last_start: Instant,
}

impl Live<'_> {
    /// When the supervisor must wake up without a signal ([`Restart::deadline`]).
    fn deadline(&self, grace: Duration) -> Option<Instant> {
        self.state().deadline(grace)
    }

    fn state(&self) -> Restart {
        Restart {
            stopping: self.stopping,
            pending: self.pending.is_some(),
            last_start: self.last_start,
        }
    }

    /// Takes a reported change, and acts on it and on the clock: signal, or begin the restart
    /// (SIGTERM), or SIGKILL at the end of the grace.
    fn step(&mut self, child: i32, opts: &Options) {
        if self.ended {
            // Going down: changes are no longer acted on (the files stay current).
            drop(self.changes.take());
            return;
        }
        if let Some(extra) = self.changes.take() {
            match opts.on_change {
                OnChange::Signal(sig) => {
                    tracing::info!("secrets changed: {} to the command's group", SigName(sig));
                    send(-child, sig, "the child's process group");
                }
                OnChange::Restart => self.pending = Some(extra),
                OnChange::None => {}
            }
        }
        let now = Instant::now();
        match self.state().action(now, opts.restart_grace) {
            Action::Terminate => {
                tracing::info!(
                    grace_ms = opts.restart_grace.as_millis() as u64,
                    "secrets changed: restarting the command (SIGTERM to its group)"
                );
                send(-child, libc::SIGTERM, "the child's process group");
                self.stopping = Some((now, false));
            }
            Action::Kill => {
                tracing::warn!(
                    "the command did not end within the restart grace: SIGKILL to its group"
                );
                send(-child, libc::SIGKILL, "the child's process group");
                self.stopping = self.stopping.map(|(since, _)| (since, true));
            }
            Action::Wait => {}
        }
    }

    /// A signal from outside: SIGTERM, SIGINT or SIGQUIT (`docker stop`, Ctrl-C) ends the
    /// restarts. A restart under way or pending is abandoned, so the command's end is the init's
    /// end, with its status, and no timer is left.
    fn on_signal(&mut self, sig: i32) {
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
            if self.stopping.is_some() || self.pending.is_some() {
                tracing::info!("{}: the pending restart is abandoned", SigName(sig));
            }
            self.stopping = None;
            self.pending = None;
            self.ended = true;
        }
    }

    /// The command ended during a restart: start it again with the pending variables. `None`
    /// when it ended by itself (the init exits with its status) or the new start failed.
    fn restarted(&mut self) -> Option<Result<i32, SetupError>> {
        self.stopping.take()?;
        let extra = self.pending.take().unwrap_or_default();
        self.last_start = Instant::now();
        Some(self.launcher.launch(extra))
    }
}

/// `kill(pid, sig)`, an already-gone target ignored, other failures logged.
fn send(pid: i32, sig: i32, to: &str) {
    match sys::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("send {} to the {to}: {e}", SigName(sig)),
    }
}

/// The supervision loop: waits for signals (all blocked, so nothing is lost between waits),
/// reaps on SIGCHLD, forwards everything else. Returns the exit code once the child has been
/// reaped (and, with `live`, not during a restart). Errors are logged and the loop goes on.
/// `handoff`: ignore the first SIGHUP and SIGCONT (dumb-init's terminal hand-off, see [`run`]).
fn supervise(
    mut child: i32,
    opts: &Options,
    blocked: &sys::SigSet,
    handoff: bool,
    mut live: Option<Live<'_>>,
) -> u8 {
    let voice = opts.voice;
    let mut ignore_once = if handoff {
        vec![libc::SIGHUP, libc::SIGCONT]
    } else {
        Vec::new()
    };
    loop {
        let deadline = live.as_ref().and_then(|l| l.deadline(opts.restart_grace));
        let waited = match deadline {
            None => sys::sigwaitinfo(blocked).map(Some),
            Some(at) => sys::sigtimedwait(blocked, at.saturating_duration_since(Instant::now())),
        };
        let got = match waited {
            Ok(Some(got)) => got,
            Ok(None) => {
                // A deadline of the restart passed.
                if let Some(l) = live.as_mut() {
                    l.step(child, opts);
                }
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("sigwaitinfo: {e}");
                continue;
            }
        };
        voice.dumb_debug(format_args!("Received signal {}.", got.sig));
        if let Some(at) = ignore_once.iter().position(|&s| s == got.sig) {
            ignore_once.swap_remove(at);
            voice.dumb_debug(format_args!("Ignoring tty hand-off signal {}.", got.sig));
            continue;
        }
        if got.sig == libc::SIGCHLD {
            voice.tini(Level::Debug, format_args!("Received SIGCHLD"));
            if let Some(ended) = reap::reap_all(child, opts.warn_zombies, voice) {
                match live.as_mut().and_then(Live::restarted) {
                    Some(Ok(next)) => {
                        tracing::info!(pid = next, "command restarted (the last one {ended})");
                        child = next;
                        continue;
                    }
                    Some(Err(e)) => {
                        let cause = std::error::Error::source(&e)
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default();
                        tracing::error!("restart the command: {e}{cause}");
                    }
                    None => {}
                }
                let code = reap::exit_code(ended, &opts.remaps);
                if opts.term_group_on_exit || matches!(voice, Voice::DumbInit { .. }) {
                    end_group(child, opts);
                }
                voice.dumb_debug(format_args!("Child exited with status {code}. Goodbye."));
                voice.tini(Level::Trace, format_args!("Exiting: child has exited"));
                tracing::info!(code, "exiting: child {ended}");
                return code;
            }
            if let Some(l) = live.as_mut() {
                l.step(child, opts);
            }
            continue;
        }
        if let Some(l) = live.as_mut() {
            l.on_signal(got.sig);
        }
        forward(got, child, opts);
        if opts.job_control && signals::is_job_control_stop(got.sig) {
            voice.dumb_debug(format_args!("Suspending self due to TTY signal."));
            tracing::debug!(
                "{} received: the init stops until SIGCONT",
                SigName(got.sig)
            );
            let _ = sys::kill(std::process::id() as i32, libc::SIGSTOP);
        }
    }
}

/// The command has exited: SIGTERM (after `-r`) to what is left of its process group, so
/// `sh -c 'sleep 100 & exit 0'` leaves no `sleep` (dumb-init's behaviour; `-g` as sandbox-init).
/// dumb-init with `-c` says it too but sends nothing (the child is gone, its pid may be reused).
fn end_group(child: i32, opts: &Options) {
    let Some(sig) = translate(libc::SIGTERM, opts) else {
        return;
    };
    if opts.term_group_on_exit {
        match sys::kill(-child, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!("send {} to the child's process group: {e}", SigName(sig)),
        }
    }
    opts.voice
        .dumb_debug(format_args!("Forwarded signal {sig} to children."));
    tracing::debug!(
        "the command exited: {} sent to its process group",
        SigName(sig)
    );
}

/// `-r` applied to `sig`, said in dumb-init's words; `None` when the rule drops it.
fn translate(sig: i32, opts: &Options) -> Option<i32> {
    let to = signals::rewrite(sig, &opts.rewrites);
    if to != Some(sig) {
        let shown = to.unwrap_or(0);
        opts.voice
            .dumb_debug(format_args!("Translating signal {sig} to {shown}."));
    }
    if to.is_none() {
        opts.voice.dumb_debug(format_args!(
            "Not forwarding signal 0 to children (ignored)."
        ));
    }
    to
}

/// Forwards one received signal per `-r`, `-g` and the interactive-shell rule in [`signals`].
fn forward(got: sys::Received, child: i32, opts: &Options) {
    let Some(sig) = translate(got.sig, opts) else {
        tracing::debug!(from = got.pid, "{} dropped by --rewrite", SigName(got.sig));
        return;
    };
    opts.voice.tini(
        Level::Debug,
        format_args!("Passing signal: '{}'", SigName(sig)),
    );
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
    opts.voice
        .dumb_debug(format_args!("Forwarded signal {sig} to children."));
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
    fn exec_changes_identity_only_as_root_and_only_when_not_already_the_target() {
        for euid in [0u32, 1000] {
            for current in [(0u32, 0u32), (1000, 1000), (1000, 0)] {
                for target in [None, Some((0, 0)), Some((1000, 1000)), Some((1001, 1001))] {
                    let want = euid == 0 && target.is_some_and(|t| t != current);
                    assert_eq!(
                        changes_identity(euid, current, target),
                        want,
                        "{euid} {current:?} {target:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_restart_waits_for_its_turn_then_terms_then_kills_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let ms = Duration::from_millis;
        let idle = Restart {
            stopping: None,
            pending: false,
            last_start: t0,
        };
        assert_eq!(
            idle.deadline(grace),
            None,
            "nothing pending: no timer at all"
        );
        assert_eq!(idle.action(t0 + ms(5000), grace), Action::Wait);
        // A change 200 ms after a start waits out the rest of the second.
        let pending = Restart {
            pending: true,
            ..idle
        };
        assert_eq!(pending.deadline(grace), Some(t0 + MIN_RESTART_INTERVAL));
        assert_eq!(pending.action(t0 + ms(200), grace), Action::Wait);
        assert_eq!(pending.action(t0 + ms(1000), grace), Action::Terminate);
        // SIGTERM sent at 1 s: nothing until the grace is over, then SIGKILL once.
        let stopping = Restart {
            stopping: Some((t0 + ms(1000), false)),
            ..pending
        };
        assert_eq!(stopping.deadline(grace), Some(t0 + ms(11_000)));
        assert_eq!(stopping.action(t0 + ms(10_999), grace), Action::Wait);
        assert_eq!(stopping.action(t0 + ms(11_000), grace), Action::Kill);
        let killed = Restart {
            stopping: Some((t0 + ms(1000), true)),
            ..pending
        };
        assert_eq!(
            killed.deadline(grace),
            None,
            "after SIGKILL only the reap wakes it"
        );
        assert_eq!(killed.action(t0 + ms(60_000), grace), Action::Wait);
        // A zero grace kills at once.
        assert_eq!(stopping.action(t0 + ms(1000), Duration::ZERO), Action::Kill);
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
