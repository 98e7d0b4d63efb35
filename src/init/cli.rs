//! The `sandbox-init` command line (lexopt, not clap: the static binary stays small). Accepts
//! tini's and dumb-init's flags with their meanings plus ours. Parsing only: nothing here reads
//! files, changes the process or talks to the broker.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use crate::inject::{self, SecretsPolicy};
use crate::logging::LogFormat;
use crate::protocol::DEFAULT_SANDBOX_SOCKET;

use super::signals::{self, Rewrite};
use super::user::{self, UserSpec};

/// Environment variable naming the target user when `--user` is absent.
pub const ENV_USER: &str = "SANDBOX_INIT_USER";
/// tini's variable for `-g`: any non-empty value signals the child's process group.
pub const ENV_TINI_GROUP: &str = "TINI_KILL_PROCESS_GROUP";
/// tini's variable for its verbosity (1 = warnings, the default; 2 = info; 3 = debug).
pub const ENV_TINI_VERBOSITY: &str = "TINI_VERBOSITY";
/// Environment variable naming the broker socket when `--socket` is absent.
pub const ENV_SOCKET: &str = "SANDBOX_SECRETS_SOCKET";
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
    /// `sandbox-init env`: print the secrets as `export` lines.
    Env(Options),
    /// Supervise a command (or the login shell).
    Run(Options),
}

/// Every option, parsed and validated.
#[derive(Debug)]
pub struct Options {
    /// tini `-s`. The init becomes a child subreaper whenever it is not PID 1 anyway.
    pub subreaper: bool,
    /// tini `-g`: forward signals to the child's process group instead of the child.
    pub group: bool,
    /// tini `-e CODE`: exit codes turned into 0.
    pub remaps: Vec<u8>,
    /// tini `-p SIG`: `PR_SET_PDEATHSIG` on the init.
    pub pdeathsig: Option<i32>,
    /// `-v` count: each raises the log level one step from `SANDBOX_INIT_LOG`.
    pub verbosity: u8,
    /// tini `-w`: warn when reaping a zombie that is not the child.
    pub warn_zombies: bool,
    /// dumb-init `-r s:r` rules, in order.
    pub rewrites: Vec<Rewrite>,
    /// `--user` (or `SANDBOX_INIT_USER`).
    pub user: Option<UserSpec>,
    pub no_new_privs: bool,
    pub drop_caps: bool,
    pub secrets: inject::Options,
    pub log_format: LogFormat,
    /// The command and its arguments; empty means the target user's login shell.
    pub command: Vec<OsString>,
}

pub const USAGE: &str = "\
sandbox-init: a container init (PID 1) that injects a sandbox's secrets

Usage: sandbox-init [OPTIONS] [--] [COMMAND [ARGS...]]
       sandbox-init [OPTIONS] env

Without COMMAND the target user's login shell from /etc/passwd is started (or /bin/sh).
`sandbox-init env` prints the sandbox's secrets as shell `export` lines (for docker exec
sessions); `sandbox-init -- env` runs the env program instead.

Supervision (tini and dumb-init compatible):
  -s                  become a child subreaper (done anyway whenever not PID 1)
  -g                  forward signals to the child's process group, not just the child
  -c, --single-child  forward signals to the child only (the default)
  -e CODE             exit with 0 when the child's code is CODE (repeatable, 0-255;
                      128+n for death by signal n)
  -p SIG              signal the init receives when its parent dies (PR_SET_PDEATHSIG)
  -r, --rewrite S:R   forward signal S as R; R=0 drops S (repeatable; numbers or names)
  -w                  warn when reaping zombies that are not the child
                      (tini's TINI_KILL_PROCESS_GROUP and TINI_VERBOSITY are honoured
                      when no flag says otherwise)
  -v, --verbose       more log output (repeatable)

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

Output:
      --log-format text|json
                      log line format on stderr (level from SANDBOX_INIT_LOG, default warn)
  -h, --help          print this help
  -V, --version       print the version

Signals: every catchable signal is forwarded. SIGTERM to a child that ignores it (an
interactive shell) is followed by SIGHUP and SIGCONT to the child's process group, as a
terminal hang-up would do, so `docker stop` ends it at once; a child that handles SIGTERM
gets SIGTERM only.

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
    let not_a_number = || {
        UsageError(format!(
            "--secrets-timeout: {s:?} is not a number of seconds"
        ))
    };
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
    if total == 0 || total > 3_600_000 {
        return Err(UsageError(format!(
            "--secrets-timeout: {s:?} must be more than 0 and at most 3600 seconds"
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
    let mut subreaper = false;
    let mut group = false;
    let mut single_child = false;
    let mut remaps = Vec::new();
    let mut pdeathsig = None;
    let mut verbosity: u8 = 0;
    let mut warn_zombies = false;
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
            Short('s') => subreaper = true,
            Short('g') => group = true,
            Short('c') | Long("single-child") => single_child = true,
            Short('w') => warn_zombies = true,
            Short('v') | Long("verbose") => verbosity = verbosity.saturating_add(1),
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
            Long("log-format") => {
                let v = value_str(&mut parser, "--log-format")?;
                log_format = v
                    .parse()
                    .map_err(|e: String| UsageError(format!("--log-format: {e}")))?;
            }
            Value(first) => {
                let rest: Vec<OsString> = parser.raw_args()?.collect();
                if first == "env" {
                    if let Some(extra) = rest.first() {
                        return Err(UsageError(format!(
                            "env takes no arguments (got {extra:?}); to run the env program \
                             use `sandbox-init -- env ...`"
                        )));
                    }
                    env_subcommand = true;
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
        None => match env(ENV_USER).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => {
                let s = v
                    .into_string()
                    .map_err(|v| UsageError(format!("{ENV_USER}: {v:?} is not valid UTF-8")))?;
                Some(parse_user(&s, ENV_USER)?)
            }
        },
    };
    let socket = socket
        .or_else(|| env(ENV_SOCKET).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SANDBOX_SOCKET));
    let opts = Options {
        subreaper,
        group,
        remaps,
        pdeathsig,
        verbosity,
        warn_zombies,
        rewrites,
        user,
        no_new_privs,
        drop_caps,
        secrets: inject::Options {
            socket,
            policy,
            timeout,
        },
        log_format,
        command,
    };
    Ok(if env_subcommand {
        Invocation::Env(opts)
    } else {
        Invocation::Run(opts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::user::{GroupRef, UserRef};

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
        o.command.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert!(!o.subreaper && !o.group && !o.warn_zombies && !o.no_new_privs && !o.drop_caps);
        assert!(o.remaps.is_empty() && o.rewrites.is_empty() && o.command.is_empty());
        assert_eq!(o.pdeathsig, None);
        assert_eq!(o.verbosity, 0);
        assert_eq!(o.user, None);
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
        assert!(o.subreaper && o.group && o.warn_zombies);
        assert_eq!(o.remaps, vec![3, 143]);
        assert_eq!(o.pdeathsig, Some(libc::SIGKILL));
        assert_eq!(o.verbosity, 3);
        assert_eq!(cmd(&o), vec!["cmd"]);
        let o = run(&["-sgw", "-p", "9", "x"]);
        assert!(o.subreaper && o.group && o.warn_zombies);
        assert_eq!(o.pdeathsig, Some(9));
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
        assert!(!o.group);
        assert_eq!(
            o.rewrites,
            vec![
                Rewrite { from: 15, to: 2 },
                Rewrite { from: 10, to: 0 },
                Rewrite { from: 1, to: 15 }
            ]
        );
        assert_eq!(o.verbosity, 2);
        assert!(run(&["--single-child", "x"]).command.len() == 1);
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
            o.user,
            Some(UserSpec {
                user: UserRef::Name("nobody".into()),
                group: Some(GroupRef::Id(65534))
            })
        );
        assert!(o.no_new_privs && o.drop_caps);
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
        assert!(o.command.is_empty());
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
        assert_eq!(o.user.unwrap().user, UserRef::Id(1000));
        assert_eq!(o.secrets.socket, PathBuf::from("/env/s.sock"));
        // Flags win over the environment.
        let o = match parse(["--user", "root", "--socket", "/flag", "x"], &env) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.user.unwrap().user, UserRef::Name("root".into()));
        assert_eq!(o.secrets.socket, PathBuf::from("/flag"));
        // Empty means unset; a bad value is a usage error naming the variable.
        let empty = |_: &str| Some(OsString::new());
        let o = match parse(["x"], &empty) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o.user, None);
        assert_eq!(o.secrets.socket, PathBuf::from(DEFAULT_SANDBOX_SOCKET));
        let bad = |k: &str| (k == ENV_USER).then(|| OsString::from("a:"));
        let e = parse(["x"], &bad).unwrap_err();
        assert!(e.0.starts_with("SANDBOX_INIT_USER: invalid user"), "{e}");
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
        assert!(o.group);
        assert_eq!(o.verbosity, 2);
        let o = parsed(&["-c", "-v", "x"]);
        assert!(!o.group, "-c wins over TINI_KILL_PROCESS_GROUP");
        assert_eq!(o.verbosity, 1, "-v wins over TINI_VERBOSITY");
        let bad = |k: &str| (k == ENV_TINI_VERBOSITY).then(|| OsString::from("loud"));
        let e = parse(["x"], &bad).unwrap_err();
        assert!(
            e.0.starts_with("TINI_VERBOSITY: \"loud\" is not a number"),
            "{e}"
        );
    }
}
