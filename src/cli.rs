//! The `sandbox-init` command line, the floor above `init` and `inject` (it fills both rooms'
//! options). Multi-call: invoked as `tini`/`tini-static` or `dumb-init` (argv[0]'s file name),
//! or with `--compat tini|dumb-init` first, it parses that peer's flags with its getopt rules,
//! applies its defaults and environment variables, and answers help, version and usage errors
//! on the peer's streams with its exit codes ([`parse_argv`]); as `sandbox-init` it accepts
//! both peers' flags plus ours (lexopt, not clap: the static binary stays small). Parsing only:
//! nothing here reads files, changes the process or talks to the broker.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::init::signals::{self, Rewrite};
use crate::init::user::{self, UserSpec};
use crate::init::voice::Voice;
use crate::init::{self};
use crate::inject::{self, SecretsPolicy};
use crate::logging::LogFormat;
use crate::protocol::DEFAULT_SANDBOX_SOCKET;

/// Environment variable naming the target user when `--user` is absent.
pub const ENV_USER: &str = "SANDBOX_INIT_USER";
/// tini's variable for `-g`: any non-empty value signals the child's process group.
pub const ENV_TINI_GROUP: &str = "TINI_KILL_PROCESS_GROUP";
/// tini's variable for its verbosity (1 = warnings, the default; 2 = info; 3 = debug).
pub const ENV_TINI_VERBOSITY: &str = "TINI_VERBOSITY";
/// Environment variable naming the broker socket when `--socket` is absent.
pub const ENV_SOCKET: &str = "SANDBOX_SECRETS_SOCKET";
/// Environment variable for `--on-change`.
pub const ENV_ON_CHANGE: &str = "SANDBOX_INIT_ON_CHANGE";
/// Environment variable for `--restart-grace`.
pub const ENV_RESTART_GRACE: &str = "SANDBOX_INIT_RESTART_GRACE";
/// Environment variable for `--registry-credentials`.
pub const ENV_REGISTRY_CREDENTIALS: &str = "SANDBOX_INIT_REGISTRY_CREDENTIALS";
/// argv[0] that makes this binary docker's credential helper `sandbox`.
pub const CREDENTIAL_HELPER: &str = "docker-credential-sandbox";
/// Default `--secrets-timeout`.
pub const DEFAULT_SECRETS_TIMEOUT: Duration = Duration::from_secs(5);

/// A command line that cannot be acted on; the binary prints it and exits 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<lexopt::Error> for UsageError {
    fn from(e: lexopt::Error) -> Self {
        UsageError(e.to_string())
    }
}

/// What the invocation asks for.
#[derive(Debug)]
pub enum Invocation {
    Help,
    Version,
    /// Print `text` on stdout (or stderr) and exit with `code`: a peer's help, version,
    /// license or usage error, in its words.
    Print {
        text: String,
        stderr: bool,
        code: u8,
    },
    /// `sandbox-init env`: print the secrets as `export` lines (or `--format dotenv|json`).
    Env(Options),
    /// `sandbox-init exec [OPTIONS] [--] CMD...`: fetch, write credentials, `execve` CMD in
    /// this process (no fork, no supervision).
    Exec(Options),
    /// Supervise a command (or the login shell).
    Run(Options),
    /// Invoked as `docker-credential-sandbox ACTION`: docker's credential-helper protocol.
    CredentialHelper {
        action: String,
        secrets: inject::Options,
    },
}

/// Every option, parsed and validated.
#[derive(Debug)]
pub struct Options {
    /// Supervision: what `init` does.
    pub init: init::Options,
    /// The secrets step: what `inject` does.
    pub secrets: inject::Options,
    /// `-v` count as sandbox-init: each raises the log level one step from `SANDBOX_INIT_LOG`
    /// (a peer's verbosity drives its voice instead, `init::voice`).
    pub verbosity: u8,
    pub log_format: LogFormat,
    /// `sandbox-init env --format`.
    pub env_format: inject::EnvFormat,
    /// `--registry-credentials`, `--secrets-dir`.
    pub files: inject::Files,
}

pub const USAGE: &str = "\
sandbox-init: a container init (PID 1) that injects a sandbox's secrets

Usage: sandbox-init [OPTIONS] [--] [COMMAND [ARGS...]]
       sandbox-init [OPTIONS] env [--format sh|dotenv|json]
       sandbox-init exec [OPTIONS] [--] COMMAND [ARGS...]

Without COMMAND the target user's login shell from /etc/passwd is started (or /bin/sh).
`sandbox-init env` prints the sandbox's secrets as shell `export` lines (for docker exec
sessions; `--format dotenv` or `json` for other consumers); `sandbox-init -- env` runs the env
program instead. `sandbox-init exec` fetches the secrets, writes registry credentials and
replaces itself with COMMAND (no fork: for `docker exec`, agent harnesses, IDE servers); it
drops privileges only as root with --user or SANDBOX_INIT_USER and not already that user.

Supervision (tini and dumb-init compatible):
  -s                  become a child subreaper (done anyway whenever not PID 1)
  -g                  forward signals to the child's process group, not just the child;
                      when the command exits, the rest of its group gets SIGTERM
  -c, --single-child  forward signals to the child only (the default)
  -e CODE             exit with 0 when the child's code is CODE (repeatable, 0-255;
                      128+n for death by signal n)
  -p SIG              signal the init receives when its parent dies (PR_SET_PDEATHSIG)
  -r, --rewrite S:R   forward signal S as R; R=0 drops S (repeatable; numbers or names)
  -w                  warn when reaping zombies that are not the child
                      (tini's TINI_KILL_PROCESS_GROUP and TINI_VERBOSITY are honoured
                      when no flag says otherwise)
  -v, --verbose       more log output (repeatable)
      --job-control   on SIGTSTP/SIGTTIN/SIGTTOU forward, then stop the init too until
                      SIGCONT (so `init cmd &` suspends and resumes as one job)
      --compat tini|dumb-init
                      (first argument only) behave exactly as that peer: its flags,
                      defaults, environment, messages and exit codes; the same as
                      invoking this binary as `tini`, `tini-static` or `dumb-init`

User and privileges:
      --user NAME|UID[:GID|:GROUP]
                      run the command as this user (env SANDBOX_INIT_USER); groups,
                      gid, uid set in that order; HOME, USER, LOGNAME, SHELL set
      --no-new-privs  set no_new_privs on the command
      --drop-caps     clear the bounding, ambient and inheritable capability sets

Secrets:
      --socket PATH   broker socket (env SANDBOX_SECRETS_SOCKET,
                      default /run/sandbox/secrets.sock)
      --secrets MODE  auto: no socket, no secrets; a failed fetch stops (default)
                      required: a missing socket stops too
                      optional: any failure only warns
      --secrets-timeout SECS
                      connect and fetch deadline (default 5)
      --registry-credentials file|helper
                      file (default): registry triplets as auths in config.json;
                      helper: credHelpers entries naming `sandbox`, so docker runs
                      docker-credential-sandbox (this binary by that name), which
                      asks the socket on every pull: no password in any file
                      (env SANDBOX_INIT_REGISTRY_CREDENTIALS)
      --secrets-dir DIR
                      also keep one file per secret in DIR (0400, owned by the
                      target user, replaced atomically, removed when the secret is)
      --on-change none|restart|signal:SIG
                      when the sandbox's secrets change while the command runs
                      (env SANDBOX_INIT_ON_CHANGE): none (default, no watch);
                      restart: SIGTERM to the command's group, SIGKILL after the
                      grace, then the command again with the new values (at most
                      one restart a second); signal:SIG (e.g. signal:HUP): SIG to
                      the command's group, which reads the refreshed files
      --restart-grace SECS
                      restart: wait this long after SIGTERM (default 10; env
                      SANDBOX_INIT_RESTART_GRACE)

Output:
      --log-format text|json
                      log line format on stderr (level from SANDBOX_INIT_LOG, default warn)
  -h, --help          print this help
  -V, --version       print the version

Signals: every catchable signal is forwarded. SIGTERM to a child that ignores it (an
interactive shell) is followed by SIGHUP and SIGCONT to the child's process group, as a
terminal hang-up would do, so `docker stop` ends it at once; a child that handles SIGTERM
gets SIGTERM only.

The init changes its own directory to / once the child runs (the child keeps its own).

Exit status: the child's, or 128+n when killed by signal n; 127 command not found, 126 not
executable; 1 when setup failed before the child started; 2 usage error.
";

fn value_str(parser: &mut lexopt::Parser, flag: &str) -> Result<String, UsageError> {
    let v = parser.value()?;
    v.into_string()
        .map_err(|v| UsageError(format!("{flag}: {v:?} is not valid UTF-8")))
}

/// `SECS` as a decimal number of seconds (`5`, `0.25`), to the millisecond, more than 0 and at
/// most 3600. Parsed by hand: float parsing and printing would add 15 KB to the static init.
fn parse_timeout(s: &str) -> Result<Duration, UsageError> {
    parse_seconds(s, "--secrets-timeout", false)
}

/// `SECS` as [`parse_timeout`] reads it, for `flag`; `zero`: 0 is allowed too.
fn parse_seconds(s: &str, flag: &str, zero: bool) -> Result<Duration, UsageError> {
    let not_a_number = || UsageError(format!("{flag}: {s:?} is not a number of seconds"));
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(not_a_number());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_number())?
    };
    // Milliseconds from the first three fraction digits; finer digits are dropped.
    let millis = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |m, b| m * 10 + u64::from(b - b'0'));
    let total = whole.saturating_mul(1000).saturating_add(millis);
    if (total == 0 && !zero) || total > 3_600_000 {
        let least = if zero { "at least 0" } else { "more than 0" };
        return Err(UsageError(format!(
            "{flag}: {s:?} must be {least} and at most 3600 seconds"
        )));
    }
    Ok(Duration::from_millis(total))
}

fn parse_policy(s: &str) -> Result<SecretsPolicy, UsageError> {
    match s {
        "auto" => Ok(SecretsPolicy::Auto),
        "required" => Ok(SecretsPolicy::Required),
        "optional" => Ok(SecretsPolicy::Optional),
        other => Err(UsageError(format!(
            "--secrets: {other:?} is not one of auto, required, optional"
        ))),
    }
}

/// `none`, `restart` or `signal:SIG` (a name with or without `SIG`, or a number), for `from`
/// (the flag or the variable).
fn parse_on_change(s: &str, from: &str) -> Result<init::OnChange, UsageError> {
    match s {
        "none" => Ok(init::OnChange::None),
        "restart" => Ok(init::OnChange::Restart),
        other => match other.strip_prefix("signal:") {
            Some(sig) => match signals::parse_signal(sig) {
                Some(n) if n != libc::SIGKILL && n != libc::SIGSTOP => {
                    Ok(init::OnChange::Signal(n))
                }
                Some(_) => Err(UsageError(format!(
                    "{from}: {sig:?} cannot be caught; use restart to replace the command"
                ))),
                None => Err(UsageError(format!("{from}: {sig:?} is not a signal"))),
            },
            None => Err(UsageError(format!(
                "{from}: {other:?} is not one of none, restart, signal:SIG"
            ))),
        },
    }
}

/// A flag's value, else its environment variable's (an empty value counts as unset), parsed
/// by `parse` and named by where it came from.
fn flag_or_env<T>(
    flag: Option<String>,
    name: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
    parse: impl Fn(&str, &str) -> Result<T, UsageError>,
) -> Result<Option<T>, UsageError> {
    if let Some(v) = flag {
        return parse(&v, name).map(Some);
    }
    match env(var).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => {
            let v = v
                .into_string()
                .map_err(|v| UsageError(format!("{var}: {v:?} is not valid UTF-8")))?;
            parse(&v, var).map(Some)
        }
    }
}

fn parse_user(s: &str, from: &str) -> Result<UserSpec, UsageError> {
    user::parse_user_spec(s).map_err(|e| UsageError(format!("{from}: {e}")))
}

/// Parses the arguments after the program name. `env` looks up environment variables
/// (`SANDBOX_INIT_USER`, `SANDBOX_SECRETS_SOCKET`); an empty value counts as unset.
pub fn parse<I>(args: I, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Invocation, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::Arg::{Long, Short, Value};

    let mut parser = lexopt::Parser::from_args(args);
    let mut group = false;
    let mut single_child = false;
    let mut remaps = Vec::new();
    let mut pdeathsig = None;
    let mut verbosity: u8 = 0;
    let mut warn_zombies = false;
    let mut job_control = false;
    let mut rewrites = Vec::new();
    let mut user_flag = None;
    let mut no_new_privs = false;
    let mut drop_caps = false;
    let mut socket = None;
    let mut policy = SecretsPolicy::Auto;
    let mut timeout = DEFAULT_SECRETS_TIMEOUT;
    let mut log_format = LogFormat::Text;
    let mut command = Vec::new();
    let mut env_subcommand = false;
    let mut exec_subcommand = false;
    let mut env_format = None;
    let mut on_change = None;
    let mut restart_grace = None;
    let mut registry = None;
    let mut secrets_dir = None;

    loop {
        // An explicit `--` ends the options: everything after it is the command, even `env`.
        if let Some(mut raw) = parser.try_raw_args() {
            if raw.peek() == Some(OsStr::new("--")) {
                raw.next();
                command = raw.collect();
                break;
            }
        }
        let Some(arg) = parser.next()? else { break };
        match arg {
            Short('h') | Long("help") | Short('V') | Long("version") => {
                let help = matches!(arg, Short('h') | Long("help"));
                if let Some(v) = parser.optional_value() {
                    let flag = if help { "--help" } else { "--version" };
                    return Err(UsageError(format!("{flag} takes no value (got {v:?})")));
                }
                return Ok(if help {
                    Invocation::Help
                } else {
                    Invocation::Version
                });
            }
            // tini's -s: the init becomes a subreaper whenever it is not PID 1 anyway.
            Short('s') => {}
            Short('g') => group = true,
            Short('c') | Long("single-child") => single_child = true,
            Short('w') => warn_zombies = true,
            Short('v') | Long("verbose") => verbosity = verbosity.saturating_add(1),
            Long("job-control") => job_control = true,
            Short('e') => {
                let v = value_str(&mut parser, "-e")?;
                let code = v
                    .trim()
                    .parse::<u8>()
                    .map_err(|_| UsageError(format!("-e: {v:?} is not an exit code (0-255)")))?;
                remaps.push(code);
            }
            Short('p') => {
                let v = value_str(&mut parser, "-p")?;
                pdeathsig = Some(
                    signals::parse_signal(&v)
                        .ok_or_else(|| UsageError(format!("-p: {v:?} is not a signal")))?,
                );
            }
            Short('r') | Long("rewrite") => {
                let v = value_str(&mut parser, "--rewrite")?;
                rewrites.push(
                    signals::parse_rewrite(&v)
                        .map_err(|e| UsageError(format!("--rewrite: {e}")))?,
                );
            }
            Long("user") => {
                let v = value_str(&mut parser, "--user")?;
                user_flag = Some(parse_user(&v, "--user")?);
            }
            Long("no-new-privs") => no_new_privs = true,
            Long("drop-caps") => drop_caps = true,
            Long("socket") => {
                let v = parser.value()?;
                if v.is_empty() {
                    return Err(UsageError("--socket: the path is empty".into()));
                }
                socket = Some(PathBuf::from(v));
            }
            Long("secrets") => policy = parse_policy(&value_str(&mut parser, "--secrets")?)?,
            Long("secrets-timeout") => {
                timeout = parse_timeout(&value_str(&mut parser, "--secrets-timeout")?)?
            }
            Long("registry-credentials") => {
                registry = Some(value_str(&mut parser, "--registry-credentials")?)
            }
            Long("secrets-dir") => {
                let v = parser.value()?;
                if v.is_empty() {
                    return Err(UsageError("--secrets-dir: the path is empty".into()));
                }
                secrets_dir = Some(PathBuf::from(v));
            }
            Long("on-change") => on_change = Some(value_str(&mut parser, "--on-change")?),
            Long("restart-grace") => {
                restart_grace = Some(value_str(&mut parser, "--restart-grace")?)
            }
            Long("log-format") => {
                let v = value_str(&mut parser, "--log-format")?;
                log_format = v
                    .parse()
                    .map_err(|e: String| UsageError(format!("--log-format: {e}")))?;
            }
            Long("format") => {
                let v = value_str(&mut parser, "--format")?;
                env_format = Some(
                    v.parse()
                        .map_err(|e: String| UsageError(format!("--format: {e}")))?,
                );
            }
            // The subcommands come first among the values; their options may follow them.
            Value(first) if first == "env" && !env_subcommand && !exec_subcommand => {
                env_subcommand = true;
            }
            Value(first) if first == "exec" && !env_subcommand && !exec_subcommand => {
                exec_subcommand = true;
            }
            Value(first) => {
                let rest: Vec<OsString> = parser.raw_args()?.collect();
                if env_subcommand {
                    return Err(UsageError(format!(
                        "env takes no arguments (got {first:?}); to run the env program use \
                         `sandbox-init -- env ...`"
                    )));
                } else {
                    command.push(first);
                    command.extend(rest);
                }
                break;
            }
            other => return Err(other.unexpected().into()),
        }
    }

    if group && single_child {
        return Err(UsageError(
            "-g (signal the process group) and -c (signal the child only) contradict".into(),
        ));
    }
    // tini's environment, for images that configured tini that way; flags win.
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if !group && !single_child && set(ENV_TINI_GROUP) {
        group = true;
    }
    if verbosity == 0 {
        if let Some(v) = env(ENV_TINI_VERBOSITY).filter(|v| !v.is_empty()) {
            // tini's default verbosity is 1 (warnings, our default too); each step above adds one
            // level, as each -v does.
            verbosity = v
                .to_str()
                .and_then(|v| v.trim().parse::<u8>().ok())
                .ok_or_else(|| {
                    UsageError(format!(
                        "{ENV_TINI_VERBOSITY}: {v:?} is not a number (0-255)"
                    ))
                })?
                .saturating_sub(1);
        }
    }
    let user = match user_flag {
        Some(u) => Some(u),
        None => user_from_env(env)?,
    };
    let on_change = flag_or_env(
        on_change,
        "--on-change",
        ENV_ON_CHANGE,
        env,
        parse_on_change,
    )?
    .unwrap_or_default();
    let restart_grace = flag_or_env(
        restart_grace,
        "--restart-grace",
        ENV_RESTART_GRACE,
        env,
        |s, from| parse_seconds(s, from, true),
    )?
    .unwrap_or(init::DEFAULT_RESTART_GRACE);
    let registry = flag_or_env(
        registry,
        "--registry-credentials",
        ENV_REGISTRY_CREDENTIALS,
        env,
        |s, from| {
            s.parse()
                .map_err(|e: String| UsageError(format!("{from}: {e}")))
        },
    )?
    .unwrap_or_default();
    let opts = Options {
        init: init::Options {
            voice: Voice::Ours,
            subreaper: true,
            setsid: false,
            group,
            term_group_on_exit: group,
            job_control,
            remaps,
            pdeathsig,
            warn_zombies,
            rewrites,
            user,
            no_new_privs,
            drop_caps,
            command,
            notes: Vec::new(),
            on_change,
            restart_grace,
        },
        secrets: inject::Options {
            socket: socket_from(socket, env),
            policy,
            timeout,
        },
        verbosity,
        log_format,
        env_format: env_format.unwrap_or_default(),
        files: inject::Files {
            registry,
            secrets_dir,
        },
    };
    if env_format.is_some() && !env_subcommand {
        return Err(UsageError(
            "--format is an option of `sandbox-init env`".into(),
        ));
    }
    if env_subcommand && !opts.init.command.is_empty() {
        return Err(UsageError(
            "env takes no arguments; to run the env program use `sandbox-init -- env ...`".into(),
        ));
    }
    Ok(if env_subcommand {
        Invocation::Env(opts)
    } else if exec_subcommand {
        if opts.init.command.is_empty() {
            return Err(UsageError(
                "exec needs a command: sandbox-init exec -- CMD".into(),
            ));
        }
        // Not an init: no subreaper, nothing to supervise, nothing to watch.
        let mut opts = opts;
        opts.init.subreaper = false;
        opts.init.on_change = init::OnChange::None;
        Invocation::Exec(opts)
    } else {
        Invocation::Run(opts)
    })
}

/// `SANDBOX_INIT_USER`, when set and not empty.
fn user_from_env(env: &dyn Fn(&str) -> Option<OsString>) -> Result<Option<UserSpec>, UsageError> {
    match env(ENV_USER).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .into_string()
                .map_err(|v| UsageError(format!("{ENV_USER}: {v:?} is not valid UTF-8")))?;
            Ok(Some(parse_user(&s, ENV_USER)?))
        }
    }
}

/// `--socket`, else `SANDBOX_SECRETS_SOCKET`, else the default path.
fn socket_from(flag: Option<PathBuf>, env: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    flag.or_else(|| env(ENV_SOCKET).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SANDBOX_SOCKET))
}

/// Which interface the binary presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    SandboxInit,
    Tini,
    DumbInit,
    /// `docker-credential-sandbox`.
    CredentialHelper,
}

/// The mode argv[0]'s file name selects: `tini` and `tini-static` are tini, `dumb-init` is
/// dumb-init, anything else is sandbox-init.
pub fn mode_of(argv0: &OsStr) -> Mode {
    let base = argv0
        .as_bytes()
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or(b"");
    match base {
        b"tini" | b"tini-static" => Mode::Tini,
        b"dumb-init" => Mode::DumbInit,
        b"docker-credential-sandbox" => Mode::CredentialHelper,
        _ => Mode::SandboxInit,
    }
}

/// Parses a whole argv: the mode from `argv[0]` (or a leading `--compat tini|dumb-init`),
/// then that mode's flags. A peer's usage errors come back as [`Invocation::Print`] in its
/// words; only sandbox-init's own are `Err` (exit 2).
pub fn parse_argv(
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Invocation, UsageError> {
    let mut args = argv.into_iter();
    let argv0 = args.next().unwrap_or_default();
    let mut rest: Vec<OsString> = args.collect();
    let mut mode = mode_of(&argv0);
    let mut name = argv0.to_string_lossy().into_owned();
    if mode == Mode::SandboxInit {
        let first = rest
            .first()
            .map(|a| a.as_bytes().to_vec())
            .unwrap_or_default();
        let (value, used) = if first == b"--compat" {
            (rest.get(1).map(|v| v.as_bytes().to_vec()), 2)
        } else if let Some(v) = first.strip_prefix(b"--compat=") {
            (Some(v.to_vec()), 1)
        } else {
            (None, 0)
        };
        if used > 0 {
            mode = match value.as_deref() {
                Some(b"tini") => Mode::Tini,
                Some(b"dumb-init") => Mode::DumbInit,
                Some(other) => {
                    return Err(UsageError(format!(
                        "--compat: {:?} is not tini or dumb-init",
                        String::from_utf8_lossy(other)
                    )))
                }
                None => return Err(UsageError("--compat: tini or dumb-init expected".into())),
            };
            name = if mode == Mode::Tini {
                "tini"
            } else {
                "dumb-init"
            }
            .into();
            rest.drain(..used);
        }
    }
    match mode {
        Mode::SandboxInit => parse(rest, env),
        Mode::Tini => Ok(parse_tini(&name, rest, env)),
        Mode::DumbInit => Ok(parse_dumb_init(&name, rest, env)),
        // One action, else the helper's usage (an empty action).
        Mode::CredentialHelper => Ok(Invocation::CredentialHelper {
            action: match rest.as_slice() {
                [one] => one.to_string_lossy().into_owned(),
                _ => String::new(),
            },
            secrets: inject::Options {
                socket: socket_from(None, env),
                policy: SecretsPolicy::Auto,
                timeout: DEFAULT_SECRETS_TIMEOUT,
            },
        }),
    }
}

/// The version of tini whose interface the tini mode reproduces.
pub const TINI_VERSION: &str = "0.19.0";
/// The version of dumb-init whose interface the dumb-init mode reproduces.
pub const DUMB_INIT_VERSION: &str = "1.2.5";

/// tini's usage text (0.19.0), for `name` (argv[0]'s file name).
fn tini_usage(name: &str) -> String {
    format!(
        "{name} (tini version {TINI_VERSION})\n\
Usage: {name} [OPTIONS] PROGRAM -- [ARGS] | --version\n\n\
Execute a program under the supervision of a valid init process ({name})\n\n\
Command line options:\n\n\
\x20 --version: Show version and exit.\n\
\x20 -h: Show this help message and exit.\n\
\x20 -s: Register as a process subreaper (requires Linux >= 3.4).\n\
\x20 -p SIGNAL: Trigger SIGNAL when parent dies, e.g. \"-p SIGKILL\".\n\
\x20 -v: Generate more verbose output. Repeat up to 3 times.\n\
\x20 -w: Print a warning when processes are getting reaped.\n\
\x20 -g: Send signals to the child's process group.\n\
\x20 -e EXIT_CODE: Remap EXIT_CODE (from 0 to 255) to 0.\n\
\x20 -l: Show license and exit.\n\n\
Environment variables:\n\n\
\x20 TINI_SUBREAPER: Register as a process subreaper (requires Linux >= 3.4).\n\
\x20 TINI_VERBOSITY: Set the verbosity level (default: 1).\n\
\x20 TINI_KILL_PROCESS_GROUP: Send signals to the child's process group.\n\n"
    )
}

/// What `tini -l` prints: this binary's license, and whose interface it reproduces.
const TINI_LICENSE: &str = "\
sandbox-init is licensed under the MIT License or the Apache License 2.0, at your option.
Invoked as tini it reproduces the interface of tini (MIT License, Copyright (c) 2015 Thomas
Orozco); it contains none of tini's code.
";

fn print(text: String, stderr: bool, code: u8) -> Invocation {
    Invocation::Print { text, stderr, code }
}

/// C's `atoi`: leading blanks, a sign, digits; anything else ends the number (0 if none).
fn atoi(s: &[u8]) -> i64 {
    let s = s.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |n, b| {
            n.saturating_mul(10).saturating_add(i64::from(b - b'0'))
        });
    if neg {
        -n
    } else {
        n
    }
}

/// tini's command line: getopt `p:hvwgle:s` with GNU argument permutation (options may follow
/// the program unless `POSIXLY_CORRECT` is set, so `tini cmd -x` is an error: use `--`),
/// `--version` only as the sole argument; then `TINI_SUBREAPER`, `TINI_KILL_PROCESS_GROUP`
/// (set at all, even empty) and `TINI_VERBOSITY` (replaces `-v`).
fn parse_tini(
    name: &str,
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Invocation {
    let base = name.rsplit('/').next().unwrap_or(name).to_string();
    if args.len() == 1 && args[0] == "--version" {
        let v = env!("CARGO_PKG_VERSION");
        return print(
            format!("tini version {TINI_VERSION} - sandbox-init {v}\n"),
            false,
            0,
        );
    }
    let fatal = |what: &str, v: &OsStr| {
        let pid = std::process::id();
        let v = v.to_string_lossy();
        print(
            format!("[FATAL tini ({pid})] Not a valid option for {what}: {v}\n"),
            true,
            1,
        )
    };
    let spec = Getopt {
        shorts: b"p:hvwgle:s",
        longs: &[],
        permute: env("POSIXLY_CORRECT").is_none(),
    };
    let (opts, command) = getopt(name, &args, &spec);
    let mut o = init::Options {
        voice: Voice::Tini { verbosity: 1 },
        ..init::Options::default()
    };
    let mut verbosity: u8 = 1;
    for got in opts {
        let (c, value) = match got {
            Got::Opt(c, v) => (c, v.unwrap_or_default()),
            Got::Error(msg) => return print(format!("{msg}\n{}", tini_usage(&base)), true, 1),
        };
        match c {
            b'h' => return print(tini_usage(&base), false, 0),
            b'l' => return print(TINI_LICENSE.into(), false, 0),
            b's' => o.subreaper = true,
            b'v' => verbosity = verbosity.saturating_add(1),
            b'w' => o.warn_zombies = true,
            b'g' => o.group = true,
            b'p' => match value.to_str().and_then(tini_signal) {
                Some(sig) => o.pdeathsig = Some(sig),
                None => return fatal("-p", &value),
            },
            _ => {
                // 'e': strtol over the whole value, 0 to 255.
                let t = value.as_bytes().trim_ascii_start();
                let digits = t
                    .strip_prefix(b"+")
                    .or_else(|| t.strip_prefix(b"-"))
                    .unwrap_or(t);
                let whole = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
                match u8::try_from(atoi(t)) {
                    Ok(code) if whole => o.remaps.push(code),
                    _ => return fatal("-e", &value),
                }
            }
        }
    }
    if command.is_empty() {
        return print(tini_usage(&base), true, 1);
    }
    if env("TINI_SUBREAPER").is_some() {
        o.subreaper = true;
    }
    if env(ENV_TINI_GROUP).is_some() {
        o.group = true;
    }
    if let Some(v) = env(ENV_TINI_VERBOSITY) {
        verbosity = atoi(v.as_bytes()).clamp(0, 255) as u8;
    }
    o.voice = Voice::Tini { verbosity };
    o.command = command;
    peer_run(o, env)
}

/// tini's `-p` names: `SIGKILL`, `SIGTERM`, ... (the classic signals, with the prefix).
fn tini_signal(v: &str) -> Option<i32> {
    let bare = v.strip_prefix("SIG")?;
    if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_uppercase()) || bare.starts_with("RT") {
        return None;
    }
    signals::parse_signal(bare)
}

/// dumb-init's help text (1.2.5), for `name` (argv[0] as given).
fn dumb_init_help(name: &str) -> String {
    format!(
        "dumb-init v{DUMB_INIT_VERSION}\n\
Usage: {name} [option] command [[arg] ...]\n\n\
dumb-init is a simple process supervisor that forwards signals to children.\n\
It is designed to run as PID1 in minimal container environments.\n\n\
Optional arguments:\n\
\x20  -c, --single-child   Run in single-child mode.\n\
\x20                       In this mode, signals are only proxied to the\n\
\x20                       direct child and not any of its descendants.\n\
\x20  -r, --rewrite s:r    Rewrite received signal s to new signal r before proxying.\n\
\x20                       To ignore (not proxy) a signal, rewrite it to 0.\n\
\x20                       This option can be specified multiple times.\n\
\x20  -v, --verbose        Print debugging information to stderr.\n\
\x20  -h, --help           Print this help message and exit.\n\
\x20  -V, --version        Print the current version and exit.\n\n\
Full help is available online at https://github.com/Yelp/dumb-init\n"
    )
}

/// dumb-init's `-r s:r`: C's `%d:%d`, `s` from 1 to 31, `r` from 0 (drop) to 31.
fn dumb_init_rewrite(v: &[u8]) -> Option<Rewrite> {
    let colon = v.iter().position(|&b| b == b':')?;
    let number = |t: &[u8]| {
        let t = t.trim_ascii_start();
        let digits = t
            .strip_prefix(b"+")
            .or_else(|| t.strip_prefix(b"-"))
            .unwrap_or(t);
        digits
            .first()
            .is_some_and(u8::is_ascii_digit)
            .then(|| atoi(t))
    };
    let from = number(&v[..colon])?;
    let to = number(&v[colon + 1..])?;
    ((1..=31).contains(&from) && (0..=31).contains(&to)).then_some(Rewrite {
        from: from as i32,
        to: to as i32,
    })
}

/// dumb-init's command line: getopt_long `+hvVcr:` (options stop at the program), help and
/// version on stderr, usage errors exit 1; then `DUMB_INIT_DEBUG=1` and `DUMB_INIT_SETSID=0`.
/// In setsid mode (the default) signals go to the command's process group, SIGTSTP, SIGTTIN
/// and SIGTTOU are rewritten to SIGSTOP unless `-r` says otherwise, and the group gets SIGTERM
/// when the command exits.
fn parse_dumb_init(
    name: &str,
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Invocation {
    let spec = Getopt {
        shorts: b"hvVcr:",
        longs: &[
            ("help", b'h', false),
            ("single-child", b'c', false),
            ("rewrite", b'r', true),
            ("verbose", b'v', false),
            ("version", b'V', false),
        ],
        permute: false,
    };
    let (opts, command) = getopt(name, &args, &spec);
    let mut debug = false;
    let mut setsid = true;
    let mut rewrites = Vec::new();
    for got in opts {
        match got {
            Got::Error(msg) => return print(format!("{msg}\n"), true, 1),
            Got::Opt(b'h', _) => return print(dumb_init_help(name), true, 0),
            Got::Opt(b'V', _) => {
                let v = env!("CARGO_PKG_VERSION");
                return print(
                    format!("dumb-init v{DUMB_INIT_VERSION} (sandbox-init {v})\n"),
                    true,
                    0,
                );
            }
            Got::Opt(b'v', _) => debug = true,
            Got::Opt(b'c', _) => setsid = false,
            Got::Opt(_, v) => {
                match dumb_init_rewrite(v.unwrap_or_default().as_bytes()) {
                    Some(r) => rewrites.push(r),
                    None => return print(
                        "Usage: -r option takes <signum>:<signum>, where <signum> is between 1 \
                         and 31.\nThis option can be specified multiple times.\nUse --help for \
                         full usage.\n"
                            .into(),
                        true,
                        1,
                    ),
                }
            }
        }
    }
    if command.is_empty() {
        return print(
            format!("Usage: {name} [option] program [args]\nTry {name} --help for full usage.\n"),
            true,
            1,
        );
    }
    let mut notes = Vec::new();
    if env("DUMB_INIT_DEBUG").is_some_and(|v| v == "1") {
        debug = true;
        notes.push("Running in debug mode.");
    }
    if env("DUMB_INIT_SETSID").is_some_and(|v| v == "0") {
        setsid = false;
        notes.push("Not running in setsid mode.");
    }
    if setsid {
        // Defaults first: the last rule for a signal wins, so the user's -r override them.
        let stop = |from| Rewrite {
            from,
            to: libc::SIGSTOP,
        };
        let mut all: Vec<Rewrite> = [libc::SIGTSTP, libc::SIGTTOU, libc::SIGTTIN]
            .map(stop)
            .into();
        all.append(&mut rewrites);
        rewrites = all;
    }
    let o = init::Options {
        voice: Voice::DumbInit { debug },
        subreaper: true,
        setsid,
        group: setsid,
        term_group_on_exit: setsid,
        job_control: true,
        rewrites,
        command,
        notes,
        ..init::Options::default()
    };
    peer_run(o, env)
}

/// A peer mode's run: the secrets step and the user from our environment variables
/// (`SANDBOX_SECRETS_SOCKET`, `SANDBOX_INIT_USER`), defaults otherwise. A bad
/// `SANDBOX_INIT_USER` is said in sandbox-init's words (exit 2): no peer has it.
fn peer_run(mut o: init::Options, env: &dyn Fn(&str) -> Option<OsString>) -> Invocation {
    match user_from_env(env) {
        Ok(u) => o.user = u,
        Err(e) => return print(format!("sandbox-init: {e}\n"), true, 2),
    }
    Invocation::Run(Options {
        init: o,
        secrets: inject::Options {
            socket: socket_from(None, env),
            policy: SecretsPolicy::Auto,
            timeout: DEFAULT_SECRETS_TIMEOUT,
        },
        verbosity: 0,
        log_format: LogFormat::Text,
        env_format: inject::EnvFormat::Sh,
        files: inject::Files::default(),
    })
}

/// A getopt option string (`shorts`, `x:` takes a value), long options (name, short letter,
/// takes a value) and whether non-options may come before options (GNU permutation).
struct Getopt<'a> {
    shorts: &'a [u8],
    longs: &'a [(&'a str, u8, bool)],
    permute: bool,
}

/// One getopt result, in order; an error ends the list (both peers stop at the first).
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Opt(u8, Option<OsString>),
    /// glibc's message, e.g. `tini: invalid option -- 'x'`.
    Error(String),
}

/// glibc's getopt/getopt_long as the peers call it: returns the options in order and the
/// operands (the command). `prog` prefixes the error messages, as glibc uses argv[0].
fn getopt(prog: &str, args: &[OsString], spec: &Getopt) -> (Vec<Got>, Vec<OsString>) {
    let mut got = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if arg == b"--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let (Some(long), false) = (arg.strip_prefix(b"--"), spec.longs.is_empty()) {
            let (name, value) = match long.iter().position(|&b| b == b'=') {
                Some(at) => (&long[..at], Some(OsStr::from_bytes(&long[at + 1..]).into())),
                None => (long, None),
            };
            let shown = String::from_utf8_lossy(arg);
            let exact = spec.longs.iter().find(|l| l.0.as_bytes() == name);
            let prefixed: Vec<_> = spec
                .longs
                .iter()
                .filter(|l| l.0.as_bytes().starts_with(name))
                .collect();
            let found = match (exact, prefixed.as_slice()) {
                (Some(l), _) => *l,
                (None, [l]) => **l,
                (None, []) => {
                    got.push(Got::Error(format!("{prog}: unrecognized option '{shown}'")));
                    break;
                }
                (None, many) => {
                    let list: Vec<String> = many.iter().map(|l| format!("'--{}'", l.0)).collect();
                    let list = list.join(" ");
                    got.push(Got::Error(format!(
                        "{prog}: option '{shown}' is ambiguous; possibilities: {list}"
                    )));
                    break;
                }
            };
            let (full, letter, takes) = found;
            match (takes, value) {
                (false, Some(_)) => {
                    got.push(Got::Error(format!(
                        "{prog}: option '--{full}' doesn't allow an argument"
                    )));
                    break;
                }
                (false, None) => got.push(Got::Opt(letter, None)),
                (true, Some(v)) => got.push(Got::Opt(letter, Some(v))),
                (true, None) if i < args.len() => {
                    got.push(Got::Opt(letter, Some(args[i].clone())));
                    i += 1;
                }
                (true, None) => {
                    got.push(Got::Error(format!(
                        "{prog}: option '--{full}' requires an argument"
                    )));
                    break;
                }
            }
            continue;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            if spec.permute {
                operands.push(args[i - 1].clone());
                continue;
            }
            operands.extend(args[i - 1..].iter().cloned());
            break;
        }
        let mut j = 1;
        while j < arg.len() {
            let c = arg[j];
            j += 1;
            let at = spec.shorts.iter().position(|&s| s == c && c != b':');
            let Some(at) = at else {
                let c = char::from(c);
                got.push(Got::Error(format!("{prog}: invalid option -- '{c}'")));
                return (got, operands);
            };
            if spec.shorts.get(at + 1) != Some(&b':') {
                got.push(Got::Opt(c, None));
                continue;
            }
            if j < arg.len() {
                got.push(Got::Opt(c, Some(OsStr::from_bytes(&arg[j..]).into())));
            } else if i < args.len() {
                got.push(Got::Opt(c, Some(args[i].clone())));
                i += 1;
            } else {
                let c = char::from(c);
                got.push(Got::Error(format!(
                    "{prog}: option requires an argument -- '{c}'"
                )));
                return (got, operands);
            }
            break;
        }
        if matches!(got.last(), Some(Got::Error(_))) {
            break;
        }
    }
    (got, operands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::user::{GroupRef, UserRef};
    use crate::init::voice::Voice;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied(), &no_env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args.iter().copied(), &no_env) {
            Err(e) => e.0,
            Ok(other) => panic!("{args:?} parsed: {other:?}"),
        }
    }

    fn cmd(o: &Options) -> Vec<&str> {
        o.init.command.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert!(
            o.init.subreaper
                && !o.init.group
                && !o.init.warn_zombies
                && !o.init.no_new_privs
                && !o.init.drop_caps
        );
        assert!(
            o.init.remaps.is_empty() && o.init.rewrites.is_empty() && o.init.command.is_empty()
        );
        assert_eq!(o.init.pdeathsig, None);
        assert_eq!(o.verbosity, 0);
        assert_eq!(o.init.user, None);
        assert_eq!(o.secrets.socket, PathBuf::from(DEFAULT_SANDBOX_SOCKET));
        assert_eq!(o.secrets.policy, SecretsPolicy::Auto);
        assert_eq!(o.secrets.timeout, Duration::from_secs(5));
        assert_eq!(o.log_format, LogFormat::Text);
    }

    #[test]
    fn tini_flags() {
        let o = run(&[
            "-s", "-g", "-e", "3", "-e143", "-p", "SIGKILL", "-vvv", "-w", "--", "cmd",
        ]);
        assert!(o.init.group && o.init.warn_zombies);
        assert_eq!(o.init.remaps, vec![3, 143]);
        assert_eq!(o.init.pdeathsig, Some(libc::SIGKILL));
        assert_eq!(o.verbosity, 3);
        assert_eq!(cmd(&o), vec!["cmd"]);
        let o = run(&["-sgw", "-p", "9", "x"]);
        assert!(o.init.group && o.init.warn_zombies);
        assert_eq!(o.init.pdeathsig, Some(9));
    }

    #[test]
    fn dumb_init_flags() {
        let o = run(&[
            "-c",
            "-r",
            "15:2",
            "--rewrite",
            "10:0",
            "--rewrite=SIGHUP:TERM",
            "--verbose",
            "-v",
            "x",
        ]);
        assert!(!o.init.group);
        assert_eq!(
            o.init.rewrites,
            vec![
                Rewrite { from: 15, to: 2 },
                Rewrite { from: 10, to: 0 },
                Rewrite { from: 1, to: 15 }
            ]
        );
        assert_eq!(o.verbosity, 2);
        assert!(run(&["--single-child", "x"]).init.command.len() == 1);
    }

    #[test]
    fn our_flags() {
        let o = run(&[
            "--user",
            "nobody:65534",
            "--no-new-privs",
            "--drop-caps",
            "--socket",
            "/tmp/s.sock",
            "--secrets",
            "required",
            "--secrets-timeout",
            "0.5",
            "--log-format",
            "json",
            "x",
        ]);
        assert_eq!(
            o.init.user,
            Some(UserSpec {
                user: UserRef::Name("nobody".into()),
                group: Some(GroupRef::Id(65534))
            })
        );
        assert!(o.init.no_new_privs && o.init.drop_caps);
        assert_eq!(o.secrets.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(o.secrets.policy, SecretsPolicy::Required);
        assert_eq!(o.secrets.timeout, Duration::from_millis(500));
        assert_eq!(o.log_format, LogFormat::Json);
        assert_eq!(
            run(&["--secrets=optional"]).secrets.policy,
            SecretsPolicy::Optional
        );
        assert_eq!(
            run(&["--secrets", "auto"]).secrets.policy,
            SecretsPolicy::Auto
        );
    }

    #[test]
    fn command_stops_option_parsing() {
        let o = run(&["ls", "-l", "--user", "x"]);
        assert_eq!(cmd(&o), vec!["ls", "-l", "--user", "x"]);
        let o = run(&["-v", "--", "-weird", "-v"]);
        assert_eq!(o.verbosity, 1);
        assert_eq!(cmd(&o), vec!["-weird", "-v"]);
        let o = run(&["--"]);
        assert!(o.init.command.is_empty());
        let o = run(&["--", "--"]);
        assert_eq!(cmd(&o), vec!["--"]);
    }

    #[test]
    fn env_subcommand_only_without_dashdash() {
        match parse(["-v", "env"], &no_env) {
            Ok(Invocation::Env(o)) => assert_eq!(o.verbosity, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(cmd(&run(&["--", "env"])), vec!["env"]);
        assert_eq!(cmd(&run(&["--", "env", "-i"])), vec!["env", "-i"]);
        assert!(err(&["env", "FOO=1"]).contains("env takes no arguments"));
        assert_eq!(cmd(&run(&["envx"])), vec!["envx"]);
    }

    #[test]
    fn env_formats_and_exec_take_their_options_after_the_subcommand() {
        match parse(["env", "--format", "json"], &no_env) {
            Ok(Invocation::Env(o)) => assert_eq!(o.env_format, inject::EnvFormat::Json),
            other => panic!("{other:?}"),
        }
        match parse(["--socket", "/s", "env", "--format=dotenv"], &no_env) {
            Ok(Invocation::Env(o)) => {
                assert_eq!(o.env_format, inject::EnvFormat::Dotenv);
                assert_eq!(o.secrets.socket, PathBuf::from("/s"));
            }
            other => panic!("{other:?}"),
        }
        match parse(["env"], &no_env) {
            Ok(Invocation::Env(o)) => assert_eq!(o.env_format, inject::EnvFormat::Sh),
            other => panic!("{other:?}"),
        }
        assert!(err(&["env", "--format", "yaml"]).contains("not one of sh, dotenv, json"));
        assert!(err(&["--format", "json", "--", "x"]).contains("option of `sandbox-init env`"));
        assert!(err(&["env", "--", "x"]).contains("env takes no arguments"));
        assert!(err(&["env", "env"]).contains("env takes no arguments"));

        match parse(["exec", "--user", "dev", "--", "npm", "test"], &no_env) {
            Ok(Invocation::Exec(o)) => {
                assert_eq!(cmd(&o), vec!["npm", "test"]);
                assert!(o.init.user.is_some());
                assert!(!o.init.subreaper, "exec is not an init");
            }
            other => panic!("{other:?}"),
        }
        match parse(["exec", "sh", "-c", "--user"], &no_env) {
            Ok(Invocation::Exec(o)) => assert_eq!(cmd(&o), vec!["sh", "-c", "--user"]),
            other => panic!("{other:?}"),
        }
        assert!(err(&["exec"]).contains("exec needs a command"));
        assert!(err(&["exec", "--"]).contains("exec needs a command"));
        assert_eq!(cmd(&run(&["--", "exec", "x"])), vec!["exec", "x"]);
    }

    #[test]
    fn help_and_version_win() {
        assert!(matches!(parse(["-h"], &no_env), Ok(Invocation::Help)));
        assert!(matches!(
            parse(["-v", "--help"], &no_env),
            Ok(Invocation::Help)
        ));
        assert!(matches!(parse(["-V"], &no_env), Ok(Invocation::Version)));
        assert!(matches!(
            parse(["--version"], &no_env),
            Ok(Invocation::Version)
        ));
        assert!(USAGE.contains("--single-child") && USAGE.contains("SIGHUP"));
    }

    #[test]
    fn timeouts_are_decimal_seconds_to_the_millisecond() {
        for (text, millis) in [
            ("5", 5000),
            ("0.25", 250),
            (".5", 500),
            ("5.", 5000),
            (" 2.0015 ", 2001),
            ("3600", 3_600_000),
            ("0.001", 1),
        ] {
            assert_eq!(
                parse_timeout(text).unwrap(),
                Duration::from_millis(millis),
                "{text:?}"
            );
        }
    }

    #[test]
    fn usage_errors_name_the_problem() {
        for (args, needle) in [
            (&["-x"][..], "invalid option '-x'"),
            (&["--bogus"], "invalid option '--bogus'"),
            (&["-e"], "missing argument for option '-e'"),
            (&["-e", "256"], "-e: \"256\" is not an exit code"),
            (&["-e", "x"], "-e: \"x\" is not an exit code"),
            (&["-p", "NOPE"], "-p: \"NOPE\" is not a signal"),
            (&["-r", "15"], "s:r"),
            (&["-r", "15:99"], "not a signal or 0"),
            (&["--user", "a:b:c"], "--user: invalid user \"a:b:c\""),
            (&["--user", ""], "user part is empty"),
            (&["--secrets", "maybe"], "--secrets: \"maybe\""),
            (&["--secrets-timeout", "0"], "more than 0"),
            (&["--secrets-timeout", "-1"], "not a number"),
            (&["--secrets-timeout", "3600.001"], "at most 3600"),
            (&["--secrets-timeout", "0.0004"], "more than 0"),
            (&["--secrets-timeout", "."], "not a number"),
            (&["--secrets-timeout", "1e3"], "not a number"),
            (&["--secrets-timeout", "abc"], "not a number"),
            (&["--secrets-timeout", "inf"], "not a number"),
            (&["--log-format", "xml"], "--log-format: unknown log format"),
            (&["--socket", ""], "--socket: the path is empty"),
            (&["-g", "-c"], "contradict"),
            (&["--help=yes"], "--help takes no value"),
            (
                &["--verbose=2"],
                "unexpected argument for option '--verbose'",
            ),
        ] {
            let e = err(args);
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn environment_fallbacks() {
        let env = |k: &str| match k {
            ENV_USER => Some(OsString::from("1000:1000")),
            ENV_SOCKET => Some(OsString::from("/env/s.sock")),
            _ => None,
        };
        let o = match parse(["x"], &env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.init.user.unwrap().user, UserRef::Id(1000));
        assert_eq!(o.secrets.socket, PathBuf::from("/env/s.sock"));
        // Flags win over the environment.
        let o = match parse(["--user", "root", "--socket", "/flag", "x"], &env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.init.user.unwrap().user, UserRef::Name("root".into()));
        assert_eq!(o.secrets.socket, PathBuf::from("/flag"));
        // Empty means unset; a bad value is a usage error naming the variable.
        let empty = |_: &str| Some(OsString::new());
        let o = match parse(["x"], &empty) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.init.user, None);
        assert_eq!(o.secrets.socket, PathBuf::from(DEFAULT_SANDBOX_SOCKET));
        let bad = |k: &str| (k == ENV_USER).then(|| OsString::from("a:"));
        let e = parse(["x"], &bad).unwrap_err();
        assert!(e.0.starts_with("SANDBOX_INIT_USER: invalid user"), "{e}");
    }

    #[test]
    fn on_change_and_restart_grace_from_flags_or_environment() {
        let o = run(&["x"]);
        assert_eq!(o.init.on_change, init::OnChange::None);
        assert_eq!(o.init.restart_grace, init::DEFAULT_RESTART_GRACE);
        let o = run(&["--on-change", "restart", "--restart-grace", "0.5", "x"]);
        assert_eq!(o.init.on_change, init::OnChange::Restart);
        assert_eq!(o.init.restart_grace, Duration::from_millis(500));
        for (v, sig) in [
            ("signal:HUP", libc::SIGHUP),
            ("signal:sigusr1", libc::SIGUSR1),
        ] {
            assert_eq!(
                run(&["--on-change", v, "x"]).init.on_change,
                init::OnChange::Signal(sig)
            );
        }
        assert_eq!(
            run(&["--restart-grace", "0", "x"]).init.restart_grace,
            Duration::ZERO
        );
        let env = |k: &str| match k {
            ENV_ON_CHANGE => Some(OsString::from("signal:TERM")),
            ENV_RESTART_GRACE => Some(OsString::from("3")),
            _ => None,
        };
        let o = match parse(["x"], &env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.init.on_change, init::OnChange::Signal(libc::SIGTERM));
        assert_eq!(o.init.restart_grace, Duration::from_secs(3));
        let o = match parse(["--on-change", "none", "x"], &env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.init.on_change, init::OnChange::None, "the flag wins");
        for (args, want) in [
            (
                &["--on-change", "sometimes", "x"][..],
                "not one of none, restart, signal:SIG",
            ),
            (
                &["--on-change", "signal:NOPE", "x"][..],
                "\"NOPE\" is not a signal",
            ),
            (&["--on-change", "signal:KILL", "x"][..], "cannot be caught"),
            (&["--restart-grace", "-1", "x"][..], "--restart-grace"),
            (&["--restart-grace", "4000", "x"][..], "at most 3600"),
        ] {
            let e = err(args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let bad = |k: &str| (k == ENV_ON_CHANGE).then(|| OsString::from("later"));
        let e = parse(["x"], &bad).unwrap_err();
        assert!(e.0.starts_with("SANDBOX_INIT_ON_CHANGE: "), "{e}");
        // `exec` is not an init: nothing to watch.
        match parse(["--on-change", "restart", "exec", "x"], &no_env) {
            Ok(Invocation::Exec(o)) => assert_eq!(o.init.on_change, init::OnChange::None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tini_environment_variables_apply_unless_a_flag_says_otherwise() {
        let tini = |k: &str| match k {
            ENV_TINI_GROUP => Some(OsString::from("1")),
            ENV_TINI_VERBOSITY => Some(OsString::from("3")),
            _ => None,
        };
        let parsed = |args: &[&str]| match parse(args.iter().copied(), &tini) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        let o = parsed(&["x"]);
        assert!(o.init.group);
        assert_eq!(o.verbosity, 2);
        let o = parsed(&["-c", "-v", "x"]);
        assert!(!o.init.group, "-c wins over TINI_KILL_PROCESS_GROUP");
        assert_eq!(o.verbosity, 1, "-v wins over TINI_VERBOSITY");
        let bad = |k: &str| (k == ENV_TINI_VERBOSITY).then(|| OsString::from("loud"));
        let e = parse(["x"], &bad).unwrap_err();
        assert!(
            e.0.starts_with("TINI_VERBOSITY: \"loud\" is not a number"),
            "{e}"
        );
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn peer(args: &[&str], env: &dyn Fn(&str) -> Option<OsString>) -> Invocation {
        parse_argv(argv(args), env).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn peer_run(args: &[&str], env: &dyn Fn(&str) -> Option<OsString>) -> init::Options {
        match peer(args, env) {
            Invocation::Run(o) => o.init,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// (stderr?, code, text) of a peer's printed answer.
    fn printed(args: &[&str], env: &dyn Fn(&str) -> Option<OsString>) -> (bool, u8, String) {
        match peer(args, env) {
            Invocation::Print { text, stderr, code } => (stderr, code, text),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn argv0_and_compat_select_the_mode() {
        assert_eq!(mode_of(OsStr::new("/usr/bin/tini")), Mode::Tini);
        assert_eq!(mode_of(OsStr::new("tini-static")), Mode::Tini);
        assert_eq!(mode_of(OsStr::new("/sbin/dumb-init")), Mode::DumbInit);
        assert_eq!(mode_of(OsStr::new("sandbox-init")), Mode::SandboxInit);
        assert_eq!(mode_of(OsStr::new("/x/tini.sh")), Mode::SandboxInit);
        let o = peer_run(&["sandbox-init", "--compat", "tini", "--", "x"], &no_env);
        assert!(matches!(o.voice, Voice::Tini { verbosity: 1 }));
        let o = peer_run(&["sandbox-init", "--compat=dumb-init", "x"], &no_env);
        assert!(matches!(o.voice, Voice::DumbInit { debug: false }));
        let o = peer_run(&["sandbox-init", "x"], &no_env);
        assert_eq!(o.voice, Voice::Ours);
        let e = parse_argv(argv(&["sandbox-init", "--compat", "runit"]), &no_env).unwrap_err();
        assert_eq!(e.0, "--compat: \"runit\" is not tini or dumb-init");
        assert!(parse_argv(argv(&["sandbox-init", "--compat"]), &no_env).is_err());
        // Only as the first argument.
        assert!(parse_argv(argv(&["sandbox-init", "-v", "--compat", "tini"]), &no_env).is_err());
    }

    #[test]
    fn sandbox_init_mode_keeps_its_defaults_and_adds_job_control() {
        let o = run(&["-g", "--job-control", "x"]);
        assert!(o.init.group && o.init.term_group_on_exit && o.init.job_control);
        assert!(!o.init.setsid && o.init.subreaper);
        let o = run(&["x"]);
        assert!(!o.init.group && !o.init.term_group_on_exit && !o.init.job_control);
    }

    #[test]
    fn tini_defaults_flags_and_environment() {
        let o = peer_run(&["tini", "--", "cmd", "-x"], &no_env);
        assert!(!o.subreaper && !o.group && !o.setsid && !o.job_control);
        assert!(!o.term_group_on_exit);
        assert_eq!(cmd_of(&o), ["cmd", "-x"]);
        // GNU permutation: options after the program are tini's.
        let o = peer_run(
            &[
                "tini", "cmd", "-s", "-vv", "-e", "3", "-e143", "-gw", "-p", "SIGKILL",
            ],
            &no_env,
        );
        assert!(o.subreaper && o.group && o.warn_zombies);
        assert_eq!(o.voice, Voice::Tini { verbosity: 3 });
        assert_eq!(o.remaps, vec![3, 143]);
        assert_eq!(o.pdeathsig, Some(libc::SIGKILL));
        assert_eq!(cmd_of(&o), ["cmd"]);
        // POSIXLY_CORRECT stops at the program.
        let posix = |k: &str| (k == "POSIXLY_CORRECT").then(OsString::new);
        assert_eq!(
            cmd_of(&peer_run(&["tini", "cmd", "-s"], &posix)),
            ["cmd", "-s"]
        );
        // Set at all (even empty) counts; TINI_VERBOSITY replaces -v (atoi).
        let env = |k: &str| match k {
            "TINI_SUBREAPER" | "TINI_KILL_PROCESS_GROUP" => Some(OsString::new()),
            "TINI_VERBOSITY" => Some(OsString::from("3x")),
            _ => None,
        };
        let o = peer_run(&["tini", "-vvvv", "x"], &env);
        assert!(o.subreaper && o.group);
        assert_eq!(o.voice, Voice::Tini { verbosity: 3 });
    }

    #[test]
    fn tini_help_version_license_and_usage_errors() {
        let (stderr, code, text) = printed(&["tini"], &no_env);
        assert!(stderr && code == 1, "no command: usage on stderr, exit 1");
        assert!(text.starts_with(
            "tini (tini version 0.19.0)\nUsage: tini [OPTIONS] PROGRAM -- [ARGS] | --version\n"
        ));
        assert!(text
            .ends_with("TINI_KILL_PROCESS_GROUP: Send signals to the child's process group.\n\n"));
        let (stderr, code, text) = printed(&["/usr/bin/tini-static", "-h"], &no_env);
        assert!(!stderr && code == 0);
        assert!(text.starts_with("tini-static (tini version 0.19.0)\n"));
        let (stderr, code, text) = printed(&["tini", "--version"], &no_env);
        assert!(!stderr && code == 0);
        assert!(text.starts_with("tini version 0.19.0"));
        let (stderr, code, text) = printed(&["tini", "-l"], &no_env);
        assert!(!stderr && code == 0 && text.contains("License"));
        for (args, first) in [
            (
                &["tini", "--version", "x"][..],
                "tini: invalid option -- '-'",
            ),
            (&["tini", "-x", "y"], "tini: invalid option -- 'x'"),
            (&["tini", "y", "-c", "z"], "tini: invalid option -- 'c'"),
            (
                &["/bin/tini", "-e"],
                "/bin/tini: option requires an argument -- 'e'",
            ),
        ] {
            let (stderr, code, text) = printed(args, &no_env);
            assert!(stderr && code == 1, "{args:?}");
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some(first), "{args:?}");
            assert!(
                lines.next().unwrap().contains("(tini version 0.19.0)"),
                "{args:?}"
            );
        }
        for (args, tail) in [
            (
                &["tini", "-e", "256", "x"][..],
                "Not a valid option for -e: 256\n",
            ),
            (
                &["tini", "-e", "3x", "x"],
                "Not a valid option for -e: 3x\n",
            ),
            (
                &["tini", "-p", "KILL", "x"],
                "Not a valid option for -p: KILL\n",
            ),
            (&["tini", "-p", "9", "x"], "Not a valid option for -p: 9\n"),
        ] {
            let (stderr, code, text) = printed(args, &no_env);
            assert!(stderr && code == 1, "{args:?}");
            assert!(
                text.starts_with("[FATAL tini (") && text.ends_with(tail),
                "{text}"
            );
        }
        // -h wins when it comes before a bad option, as getopt reads in order.
        assert_eq!(printed(&["tini", "-h", "-x"], &no_env).1, 0);
    }

    #[test]
    fn dumb_init_defaults_flags_and_environment() {
        let o = peer_run(&["dumb-init", "cmd", "-c", "-v"], &no_env);
        assert_eq!(
            cmd_of(&o),
            ["cmd", "-c", "-v"],
            "options stop at the program"
        );
        assert!(o.setsid && o.group && o.term_group_on_exit && o.job_control && o.subreaper);
        assert_eq!(o.voice, Voice::DumbInit { debug: false });
        let stop = |from| Rewrite {
            from,
            to: libc::SIGSTOP,
        };
        assert_eq!(
            o.rewrites,
            vec![
                stop(libc::SIGTSTP),
                stop(libc::SIGTTOU),
                stop(libc::SIGTTIN)
            ]
        );
        let o = peer_run(
            &[
                "dumb-init",
                "--single-child",
                "-v",
                "-r",
                "15:2",
                "--rewrite=20:0",
                "x",
            ],
            &no_env,
        );
        assert!(!o.setsid && !o.group && !o.term_group_on_exit && o.job_control);
        assert_eq!(o.voice, Voice::DumbInit { debug: true });
        assert_eq!(
            o.rewrites,
            vec![Rewrite { from: 15, to: 2 }, Rewrite { from: 20, to: 0 }]
        );
        // The user's rule comes after the defaults, so it wins.
        let o = peer_run(&["dumb-init", "--rew", "20:0", "x"], &no_env);
        assert_eq!(signals::rewrite(libc::SIGTSTP, &o.rewrites), None);
        assert_eq!(
            signals::rewrite(libc::SIGTTIN, &o.rewrites),
            Some(libc::SIGSTOP)
        );
        let env = |k: &str| match k {
            "DUMB_INIT_SETSID" => Some(OsString::from("0")),
            "DUMB_INIT_DEBUG" => Some(OsString::from("1")),
            _ => None,
        };
        let o = peer_run(&["dumb-init", "x"], &env);
        assert!(!o.setsid && !o.group && o.rewrites.is_empty());
        assert_eq!(o.voice, Voice::DumbInit { debug: true });
    }

    #[test]
    fn dumb_init_help_version_and_usage_errors() {
        let (stderr, code, text) = printed(&["dumb-init", "--help"], &no_env);
        assert!(stderr && code == 0);
        assert!(
            text.starts_with("dumb-init v1.2.5\nUsage: dumb-init [option] command [[arg] ...]\n")
        );
        let (stderr, code, text) = printed(&["dumb-init", "-V"], &no_env);
        assert!(stderr && code == 0 && text.starts_with("dumb-init v1.2.5"));
        let (stderr, code, text) = printed(&["/usr/bin/dumb-init"], &no_env);
        assert!(stderr && code == 1);
        assert_eq!(text, "Usage: /usr/bin/dumb-init [option] program [args]\nTry /usr/bin/dumb-init --help for full usage.\n");
        for (args, want) in [
            (
                &["dumb-init", "-x"][..],
                "dumb-init: invalid option -- 'x'\n",
            ),
            (
                &["dumb-init", "--bogus"],
                "dumb-init: unrecognized option '--bogus'\n",
            ),
            (
                &["dumb-init", "-r"],
                "dumb-init: option requires an argument -- 'r'\n",
            ),
            (
                &["dumb-init", "--rewrite"],
                "dumb-init: option '--rewrite' requires an argument\n",
            ),
            (
                &["dumb-init", "--help=1"],
                "dumb-init: option '--help' doesn't allow an argument\n",
            ),
            (
                &["dumb-init", "--ver", "x"],
                "dumb-init: option '--ver' is ambiguous; possibilities: '--verbose' '--version'\n",
            ),
        ] {
            assert_eq!(
                printed(args, &no_env),
                (true, 1, want.to_string()),
                "{args:?}"
            );
        }
        for bad in ["32:1", "15", "0:1", "TERM:1", "1:32", "15:-1", ":1"] {
            let (stderr, code, text) = printed(&["dumb-init", "-r", bad, "x"], &no_env);
            assert!(stderr && code == 1, "{bad}");
            assert!(text.starts_with("Usage: -r option takes <signum>:<signum>, where <signum> is between 1 and 31.\n"), "{bad}: {text}");
        }
        for good in ["31:0", "1:31", " 15:2", "15: 2"] {
            assert!(
                matches!(
                    peer(&["dumb-init", "-r", good, "x"], &no_env),
                    Invocation::Run(_)
                ),
                "{good}"
            );
        }
    }

    fn cmd_of(o: &init::Options) -> Vec<&str> {
        o.command.iter().map(|s| s.to_str().unwrap()).collect()
    }
}
