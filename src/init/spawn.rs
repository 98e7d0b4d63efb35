//! Starting the child: its environment (inherited, user, extra variables), its argv, and the
//! fork. In the child: own process group (or session), terminal, default dispositions for every signal,
//! the original mask, the core limit, the privilege drop, exec. Failures before exec travel
//! back to the parent through a close-on-exec pipe so they are logged once. In the init, right
//! after the fork: `chdir("/")` (the child keeps the directory it was started in). Nothing here
//! decides where signals go.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{self, Pid};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::privdrop;
use super::signals;
use super::stage::{Failure, Stage};
use super::voice::{Level, Voice};
use crate::sys::{self, ExecSpec, Forked, Masks};

/// Errors of starting the child, before it runs.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command argument {index} holds a NUL byte")]
    NulInArgument { index: usize },
    #[error("create the exec-status pipe")]
    Pipe(#[source] Errno),
    #[error("fork the child")]
    Fork(#[source] Errno),
}

/// Builds the child's environment: the init's own (inherited) variables, replaced or extended
/// by `user_vars` (HOME, USER, ... from `--user`), replaced or extended by `added` (the
/// binary's extra variables); inherited variables named in `removed` are left out.
/// Precedence added > user vars > inherited; a later duplicate added name wins. Each entry is
/// `NAME=value\0` in a zeroizing buffer; an entry holding NUL is left out with a warning
/// naming the variable.
pub fn compose_env<'a>(
    inherited: &[(OsString, OsString)],
    user_vars: &'a [(&str, OsString)],
    added: &'a [(String, SecretString)],
    removed: &'a [String],
) -> Vec<Zeroizing<Vec<u8>>> {
    fn entry(name: &[u8], value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if name.is_empty() || name.contains(&0) || name.contains(&b'=') || value.contains(&0) {
            return None;
        }
        let mut e = Zeroizing::new(Vec::with_capacity(name.len() + value.len() + 2));
        e.extend_from_slice(name);
        e.push(b'=');
        e.extend_from_slice(value);
        e.push(0);
        Some(e)
    }
    // Sorted name lists, so each membership test is a binary search: with hundreds of added
    // variables the linear scans were the init's largest CPU cost before exec. The binary
    // passes `added` sorted by name, each once: then it is its own list, and every entry is the
    // last of its name.
    let sorted = |names: Vec<&'a [u8]>| {
        let mut names = names;
        names.sort_unstable();
        names
    };
    let unique = added
        .windows(2)
        .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes());
    let added_names = if unique {
        added.iter().map(|(s, _)| s.as_bytes()).collect()
    } else {
        sorted(added.iter().map(|(s, _)| s.as_bytes()).collect())
    };
    let user_names = sorted(user_vars.iter().map(|(u, _)| u.as_bytes()).collect());
    let removed_names = sorted(removed.iter().map(|u| u.as_bytes()).collect());
    let added_named = |n: &[u8]| added_names.binary_search(&n).is_ok();
    let user_named = |n: &[u8]| user_names.binary_search(&n).is_ok();
    let removed_named = |n: &[u8]| removed_names.binary_search(&n).is_ok();
    let mut out = Vec::with_capacity(inherited.len() + user_vars.len() + added.len());
    let mut push = |name: &[u8], value: &[u8]| match entry(name, value) {
        Some(e) => out.push(e),
        None => tracing::warn!(
            variable = %String::from_utf8_lossy(name),
            "variable left out of the child's environment: its name or value cannot be passed"
        ),
    };
    for (k, v) in inherited {
        let k = k.as_bytes();
        if !added_named(k) && !user_named(k) && !removed_named(k) {
            push(k, v.as_bytes());
        }
    }
    for (k, v) in user_vars {
        if !added_named(k.as_bytes()) {
            push(k.as_bytes(), v.as_bytes());
        }
    }
    if unique {
        for (k, v) in added {
            push(k.as_bytes(), v.expose_secret().as_bytes());
        }
        return out;
    }
    // A later duplicate wins: keep the last occurrence of each name, in input order.
    let mut last: Vec<(&[u8], usize)> = added
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_bytes(), i))
        .collect();
    last.sort_unstable();
    for (i, (k, v)) in added.iter().enumerate() {
        let at = last.partition_point(|(n, _)| *n <= k.as_bytes());
        if at > 0 && last[at - 1].1 == i {
            push(k.as_bytes(), v.expose_secret().as_bytes());
        }
    }
    out
}

/// What to exec: the command as given, or, with none, `shell` as a login shell (`argv[0]` is
/// `-` plus its file name, as login(1) does).
pub fn exec_spec(
    command: &[OsString],
    shell: &Path,
    env: Vec<Zeroizing<Vec<u8>>>,
) -> Result<ExecSpec, SpawnError> {
    let cstr = |i: usize, s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| SpawnError::NulInArgument { index: i })
    };
    if command.is_empty() {
        let file = cstr(0, shell.as_os_str())?;
        let base = shell.file_name().unwrap_or(shell.as_os_str()).as_bytes();
        let mut argv0 = Vec::with_capacity(base.len() + 1);
        argv0.push(b'-');
        argv0.extend_from_slice(base);
        let argv0 = CString::new(argv0).map_err(|_| SpawnError::NulInArgument { index: 0 })?;
        return Ok(ExecSpec::new(file, vec![argv0], env));
    }
    let argv = command
        .iter()
        .enumerate()
        .map(|(i, a)| cstr(i, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ExecSpec::new(argv[0].clone(), argv, env))
}

/// The terminal, session and core-limit state the child sets up.
#[derive(Clone, Copy, Debug)]
pub struct ChildSetup {
    /// Give the child's process group the terminal on fd 0.
    pub take_terminal: bool,
    /// Start a new session (dumb-init) instead of a new process group; the terminal on fd 0,
    /// when the init gave it up ([`release_terminal`]), becomes the session's.
    pub setsid: bool,
    /// Whose words an exec failure is reported in, and with which exit code.
    pub voice: Voice,
    /// The init's original `RLIMIT_CORE` (soft, hard), restored in the child.
    pub core_limit: Option<(libc::rlim_t, libc::rlim_t)>,
}

/// Whether the init should hand the terminal on fd 0 to its child: fd 0 is a terminal and the
/// init's group is its foreground group (an init started in the background leaves it alone).
pub fn owns_terminal() -> bool {
    if !sys::stdin_is_tty() {
        return false;
    }
    let stdin = std::io::stdin();
    matches!(unistd::tcgetpgrp(stdin.as_fd()), Ok(pg) if pg == unistd::getpgrp())
}

/// dumb-init's setsid mode, before the fork: the init gives up its controlling terminal so the
/// child's new session can take it. True when the init was the session leader, so the kernel
/// sends it one SIGHUP and one SIGCONT for this, which the supervisor ignores once.
pub fn release_terminal(voice: Voice) -> bool {
    if let Err(e) = sys::release_stdin_tty() {
        voice.dumb_debug(format_args!(
            "Unable to detach from controlling tty (errno={} {}).",
            e as i32,
            e.desc()
        ));
        return false;
    }
    let leader = unistd::getsid(None).is_ok_and(|sid| sid == unistd::getpid());
    if leader {
        voice.dumb_debug(format_args!(
            "Detached from controlling tty, ignoring the first SIGHUP and SIGCONT we receive."
        ));
    } else {
        voice.dumb_debug(format_args!(
            "Detached from controlling tty, but was not session leader."
        ));
    }
    leader
}

/// Forks and execs the child; returns its pid once it has exec'd or failed. In the parent the
/// spec's environment (which may hold sensitive values) is wiped right after the fork. A failure
/// in the child is logged here; the child then exits with [`Failure::exit_code_for`], which the
/// supervisor reaps like any other end.
pub fn spawn(
    spec: &mut ExecSpec,
    plan: &privdrop::Plan,
    masks: &Masks,
    setup: ChildSetup,
) -> Result<i32, SpawnError> {
    let (read_end, write_end) = unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    // SAFETY: the child branch (`child`) only makes async-signal-safe calls and does not
    // allocate until it execs or `_exit`s, so a fork while the `--on-change` watcher thread runs
    // (a restart) is as safe as the first one, made single-threaded.
    let forked = unsafe { sys::fork() };
    match forked {
        Ok(Forked::Child) => {
            drop(read_end);
            child(spec, plan, masks, setup, &write_end)
        }
        Ok(Forked::Parent { child }) => {
            spec.wipe_env();
            drop(write_end);
            // The init keeps no directory busy (a mount under it stays unmountable otherwise);
            // the child already has its own working directory.
            if let Err(e) = std::env::set_current_dir("/") {
                tracing::debug!("chdir(\"/\"): {e}");
            }
            if let Some(f) = read_failure(read_end) {
                log_failure(spec, f, child, setup.voice);
            } else {
                tracing::info!(pid = child, command = ?spec.argv(), "child started");
                let file = spec.file().to_string_lossy();
                setup.voice.tini(
                    Level::Info,
                    format_args!("Spawned child process '{file}' with pid '{child}'"),
                );
                setup
                    .voice
                    .dumb_debug(format_args!("Child spawned with PID {child}."));
            }
            Ok(child)
        }
        Err(e) => {
            spec.wipe_env();
            Err(SpawnError::Fork(e))
        }
    }
}

fn log_failure(spec: &ExecSpec, f: Failure, child: i32, voice: Voice) {
    let file = spec.file().to_string_lossy();
    match (voice, f.stage) {
        (Voice::Tini { .. }, Stage::Exec) => {
            let msg = format_args!("exec {file} failed: {}", f.errno.desc());
            return voice.tini_as(child as u32, Level::Fatal, msg);
        }
        (Voice::DumbInit { .. }, Stage::Exec) => {
            return voice.dumb_error(format_args!("{file}: {}", f.errno.desc()));
        }
        _ => {}
    }
    match f.stage {
        Stage::Exec => tracing::error!("exec {file:?}: {}", f.errno),
        Stage::Verify | Stage::RegainedRoot => {
            tracing::error!("before exec {file:?}: {}", f.stage.describe())
        }
        other => tracing::error!("before exec {file:?}: {}: {}", other.describe(), f.errno),
    }
}

/// Blocks until the child execs (EOF: the close-on-exec write end vanished) or reports a
/// failure.
fn read_failure(fd: OwnedFd) -> Option<Failure> {
    use std::io::Read;
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| Failure::decode(buf)).flatten()
}

/// The last steps before the command runs, in the forked child and for `sandbox-init exec` in
/// this process: default dispositions, the core limit, the privilege drop, the original mask,
/// then `execve`. Async-signal-safe, no allocation. Returns the step that failed.
pub fn exec_here(
    spec: &ExecSpec,
    plan: &privdrop::Plan,
    masks: &Masks,
    core: Option<(libc::rlim_t, libc::rlim_t)>,
) -> Failure {
    for sig in 1..=signals::max_signal() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // Numbers libc reserves for itself are refused (EINVAL): nothing to reset there.
            let _ = sys::default_disposition(sig);
        }
    }
    if let Some((soft, hard)) = core {
        let _ = setrlimit(Resource::RLIMIT_CORE, soft, hard);
    }
    if let Err(f) = privdrop::apply(plan) {
        return f;
    }
    if let Err(e) = sys::set_mask(&masks.original) {
        return Failure::new(Stage::RestoreMask, e);
    }
    Failure::new(Stage::Exec, spec.exec())
}

/// The forked child. Only async-signal-safe calls and no allocation on the success path.
fn child(
    spec: &ExecSpec,
    plan: &privdrop::Plan,
    masks: &Masks,
    setup: ChildSetup,
    report: &OwnedFd,
) -> ! {
    let fail = |f: Failure| -> ! {
        let _ = unistd::write(report, &f.encode());
        sys::exit_now(f.exit_code_for(setup.voice))
    };
    if setup.setsid {
        if let Err(e) = unistd::setsid() {
            fail(Failure::new(Stage::SetSid, e));
        }
        // Fails (ENOTTY, EPERM) when there is no terminal or it still belongs to another
        // session: the command then runs without one, as under dumb-init.
        let _ = sys::take_stdin_tty();
    } else if let Err(e) = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        fail(Failure::new(Stage::SetPgid, e));
    }
    if setup.take_terminal {
        // Signals are still blocked, so no SIGTTOU stops us. A terminal that is not our
        // controlling one (ENOTTY) is simply not handed over.
        let _ = sys::tcsetpgrp_stdin(unistd::getpid().as_raw());
    }
    fail(exec_here(spec, plan, masks, setup.core_limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    fn zs(s: &str) -> SecretString {
        SecretString::from(s)
    }

    fn show(env: &[Zeroizing<Vec<u8>>]) -> Vec<String> {
        env.iter()
            .map(|e| String::from_utf8(e[..e.len() - 1].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn env_precedence_added_over_user_over_inherited() {
        let inherited = vec![
            (os("PATH"), os("/bin")),
            (os("HOME"), os("/root")),
            (os("TOKEN"), os("inherited")),
            (os("KEEP"), os("a=b")),
        ];
        let user = [("HOME", os("/home/u")), ("USER", os("u"))];
        let added = vec![
            ("TOKEN".to_string(), zs("s1")),
            ("NEW".to_string(), zs("line1\nline2 'q' $x")),
        ];
        assert_eq!(
            show(&compose_env(&inherited, &user, &added, &[])),
            vec![
                "PATH=/bin",
                "KEEP=a=b",
                "HOME=/home/u",
                "USER=u",
                "TOKEN=s1",
                "NEW=line1\nline2 'q' $x"
            ]
        );
        let added = vec![("HOME".to_string(), zs("/s"))];
        assert_eq!(
            show(&compose_env(&inherited, &user, &added, &[])),
            vec![
                "PATH=/bin",
                "TOKEN=inherited",
                "KEEP=a=b",
                "USER=u",
                "HOME=/s"
            ]
        );
    }

    #[test]
    fn env_edge_cases() {
        assert!(compose_env(&[], &[], &[], &[]).is_empty());
        let added = vec![
            ("A".to_string(), zs("1")),
            ("A".to_string(), zs("2")),
            ("B".to_string(), zs("nul\0inside")),
            ("C=D".to_string(), zs("x")),
            (String::new(), zs("x")),
            ("E".to_string(), zs("")),
        ];
        assert_eq!(show(&compose_env(&[], &[], &added, &[])), vec!["A=2", "E="]);
        let env = compose_env(&[(os("X"), os("1"))], &[], &[], &[]);
        assert_eq!(env[0].as_slice(), b"X=1\0");
    }

    #[test]
    fn a_removed_name_leaves_out_the_stale_inherited_variable() {
        let inherited = vec![(os("BIG"), os("stale")), (os("KEEP"), os("1"))];
        let added = vec![("BIG_FILE".to_string(), zs("/run/x/BIG"))];
        let env = compose_env(&inherited, &[], &added, &["BIG".to_string()]);
        assert_eq!(show(&env), vec!["KEEP=1", "BIG_FILE=/run/x/BIG"]);
    }

    #[test]
    fn exec_spec_for_command_and_login_shell() {
        let spec = exec_spec(&[os("ls"), os("-l")], Path::new("/bin/sh"), vec![]).unwrap();
        assert_eq!(spec.file().to_str().unwrap(), "ls");
        assert_eq!(spec.argv().len(), 2);
        let spec = exec_spec(&[], &PathBuf::from("/usr/bin/zsh"), vec![]).unwrap();
        assert_eq!(spec.file().to_str().unwrap(), "/usr/bin/zsh");
        assert_eq!(spec.argv()[0].to_str().unwrap(), "-zsh");
        assert!(matches!(
            exec_spec(
                &[os("a"), OsString::from_vec(b"b\0c".to_vec())],
                Path::new("/bin/sh"),
                vec![]
            ),
            Err(SpawnError::NulInArgument { index: 1 })
        ));
    }

    use std::os::unix::ffi::OsStringExt;
}
