//! Starting the child: its environment (inherited, user, secrets), its argv, and the fork. In
//! the child: own process group, terminal foreground, default dispositions for every signal,
//! the original mask, the core limit, the privilege drop, exec. Failures before exec travel
//! back to the parent through a close-on-exec pipe so they are logged once. Nothing here
//! decides where signals go or reads the broker.

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
use super::sys::{self, ExecSpec, Forked, Masks};

/// The step of the child's setup that failed (sent through the status pipe as one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    SetPgid = 1,
    SetGroups,
    SetGid,
    DropBounding,
    ClearAmbient,
    ClearInheritable,
    SetUid,
    Verify,
    RegainedRoot,
    NoNewPrivs,
    RestoreMask,
    Exec,
}

impl Stage {
    const ALL: [Stage; 12] = [
        Stage::SetPgid,
        Stage::SetGroups,
        Stage::SetGid,
        Stage::DropBounding,
        Stage::ClearAmbient,
        Stage::ClearInheritable,
        Stage::SetUid,
        Stage::Verify,
        Stage::RegainedRoot,
        Stage::NoNewPrivs,
        Stage::RestoreMask,
        Stage::Exec,
    ];

    fn from_u8(b: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// What the step does, for the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::SetPgid => "setpgid(0, 0)",
            Stage::SetGroups => "setgroups",
            Stage::SetGid => "setgid",
            Stage::DropBounding => "drop the capability bounding set",
            Stage::ClearAmbient => "clear the ambient capabilities",
            Stage::ClearInheritable => "clear the inheritable capabilities",
            Stage::SetUid => "setuid",
            Stage::Verify => "verify the new ids (they differ from the requested ones)",
            Stage::RegainedRoot => "verify the new ids (setuid(0) still succeeds)",
            Stage::NoNewPrivs => "set no_new_privs",
            Stage::RestoreMask => "restore the signal mask",
            Stage::Exec => "exec",
        }
    }
}

/// A failed step in the child and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub errno: Errno,
}

impl Failure {
    pub fn new(stage: Stage, errno: Errno) -> Failure {
        Failure { stage, errno }
    }

    /// The child's exit status for this failure: 127 when exec found no such file, 126 when it
    /// could not execute what it found, 1 for a setup step before exec.
    pub fn exit_code(self) -> i32 {
        match (self.stage, self.errno) {
            (Stage::Exec, Errno::ENOENT) => 127,
            (Stage::Exec, _) => 126,
            _ => 1,
        }
    }

    fn encode(self) -> [u8; 5] {
        let e = (self.errno as i32).to_le_bytes();
        [self.stage as u8, e[0], e[1], e[2], e[3]]
    }

    fn decode(b: [u8; 5]) -> Option<Failure> {
        Some(Failure {
            stage: Stage::from_u8(b[0])?,
            errno: Errno::from_raw(i32::from_le_bytes([b[1], b[2], b[3], b[4]])),
        })
    }
}

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
/// by `user_vars` (HOME, USER, ... from `--user`), replaced or extended by `secrets`; inherited
/// variables named in `unset` (secrets that went to a file as `NAME_FILE`) are left out.
/// Precedence secrets > user vars > inherited; a later duplicate secret wins. Each entry is
/// `NAME=value\0` in a zeroizing buffer; an entry holding NUL is left out with a warning
/// naming the variable.
pub fn compose_env<'a>(
    inherited: &[(OsString, OsString)],
    user_vars: &'a [(&str, OsString)],
    secrets: &'a [(String, SecretString)],
    unset: &'a [String],
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
    // Sorted name lists, so each membership test is a binary search: with hundreds of secrets
    // the linear scans were the init's largest CPU cost before exec.
    let sorted = |names: Vec<&'a [u8]>| {
        let mut names = names;
        names.sort_unstable();
        names
    };
    let secret_names = sorted(secrets.iter().map(|(s, _)| s.as_bytes()).collect());
    let user_names = sorted(user_vars.iter().map(|(u, _)| u.as_bytes()).collect());
    let unset_names = sorted(unset.iter().map(|u| u.as_bytes()).collect());
    let secret_named = |n: &[u8]| secret_names.binary_search(&n).is_ok();
    let user_named = |n: &[u8]| user_names.binary_search(&n).is_ok();
    let unset_named = |n: &[u8]| unset_names.binary_search(&n).is_ok();
    let mut out = Vec::with_capacity(inherited.len() + user_vars.len() + secrets.len());
    let mut push = |name: &[u8], value: &[u8]| match entry(name, value) {
        Some(e) => out.push(e),
        None => tracing::warn!(
            variable = %String::from_utf8_lossy(name),
            "variable left out of the child's environment: its name or value cannot be passed"
        ),
    };
    for (k, v) in inherited {
        let k = k.as_bytes();
        if !secret_named(k) && !user_named(k) && !unset_named(k) {
            push(k, v.as_bytes());
        }
    }
    for (k, v) in user_vars {
        if !secret_named(k.as_bytes()) {
            push(k.as_bytes(), v.as_bytes());
        }
    }
    // A later duplicate wins: keep the last occurrence of each name, in input order.
    let mut last: Vec<(&[u8], usize)> = secrets
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_bytes(), i))
        .collect();
    last.sort_unstable();
    for (i, (k, v)) in secrets.iter().enumerate() {
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

/// The terminal and core-limit state the child restores.
#[derive(Clone, Copy, Debug)]
pub struct ChildSetup {
    /// Give the child's process group the terminal on fd 0.
    pub take_terminal: bool,
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

/// Forks and execs the child; returns its pid once it has exec'd or failed. In the parent the
/// spec's environment (which may hold secret values) is wiped right after the fork. A failure
/// in the child is logged here; the child then exits with [`Failure::exit_code`], which the
/// supervisor reaps like any other end.
pub fn spawn(
    spec: &mut ExecSpec,
    plan: &privdrop::Plan,
    masks: &Masks,
    setup: ChildSetup,
) -> Result<i32, SpawnError> {
    let (read_end, write_end) = unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let forked = sys::fork();
    match forked {
        Ok(Forked::Child) => {
            drop(read_end);
            child(spec, plan, masks, setup, &write_end)
        }
        Ok(Forked::Parent { child }) => {
            spec.wipe_env();
            drop(write_end);
            if let Some(f) = read_failure(read_end) {
                log_failure(spec, f);
            } else {
                tracing::info!(pid = child, command = ?spec.argv(), "child started");
            }
            Ok(child)
        }
        Err(e) => {
            spec.wipe_env();
            Err(SpawnError::Fork(e))
        }
    }
}

fn log_failure(spec: &ExecSpec, f: Failure) {
    let file = spec.file().to_string_lossy();
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
        sys::exit_now(f.exit_code())
    };
    if let Err(e) = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        fail(Failure::new(Stage::SetPgid, e));
    }
    if setup.take_terminal {
        // Signals are still blocked, so no SIGTTOU stops us. A terminal that is not our
        // controlling one (ENOTTY) is simply not handed over.
        let _ = sys::tcsetpgrp_stdin(unistd::getpid().as_raw());
    }
    for sig in 1..=signals::max_signal() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // Numbers libc reserves for itself are refused (EINVAL): nothing to reset there.
            let _ = sys::default_disposition(sig);
        }
    }
    if let Some((soft, hard)) = setup.core_limit {
        let _ = setrlimit(Resource::RLIMIT_CORE, soft, hard);
    }
    if let Err(f) = privdrop::apply(plan) {
        fail(f);
    }
    if let Err(e) = sys::set_mask(&masks.original) {
        fail(Failure::new(Stage::RestoreMask, e));
    }
    let errno = spec.exec();
    fail(Failure::new(Stage::Exec, errno))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    fn show(env: &[Zeroizing<Vec<u8>>]) -> Vec<String> {
        env.iter()
            .map(|e| String::from_utf8(e[..e.len() - 1].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn env_precedence_secrets_over_user_over_inherited() {
        let inherited = vec![
            (os("PATH"), os("/bin")),
            (os("HOME"), os("/root")),
            (os("TOKEN"), os("inherited")),
            (os("KEEP"), os("a=b")),
        ];
        let user = [("HOME", os("/home/u")), ("USER", os("u"))];
        let secrets = vec![
            ("TOKEN".to_string(), SecretString::from("s1")),
            ("NEW".to_string(), SecretString::from("line1\nline2 'q' $x")),
        ];
        assert_eq!(
            show(&compose_env(&inherited, &user, &secrets, &[])),
            vec![
                "PATH=/bin",
                "KEEP=a=b",
                "HOME=/home/u",
                "USER=u",
                "TOKEN=s1",
                "NEW=line1\nline2 'q' $x"
            ]
        );
        let secrets = vec![("HOME".to_string(), SecretString::from("/s"))];
        assert_eq!(
            show(&compose_env(&inherited, &user, &secrets, &[])),
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
        let secrets = vec![
            ("A".to_string(), SecretString::from("1")),
            ("A".to_string(), SecretString::from("2")),
            ("B".to_string(), SecretString::from("nul\0inside")),
            ("C=D".to_string(), SecretString::from("x")),
            (String::new(), SecretString::from("x")),
            ("E".to_string(), SecretString::from("")),
        ];
        assert_eq!(
            show(&compose_env(&[], &[], &secrets, &[])),
            vec!["A=2", "E="]
        );
        let env = compose_env(&[(os("X"), os("1"))], &[], &[], &[]);
        assert_eq!(env[0].as_slice(), b"X=1\0");
    }

    #[test]
    fn a_spilled_secret_removes_the_stale_inherited_variable() {
        let inherited = vec![(os("BIG"), os("stale")), (os("KEEP"), os("1"))];
        let secrets = vec![("BIG_FILE".to_string(), SecretString::from("/run/x/BIG"))];
        let env = compose_env(&inherited, &[], &secrets, &["BIG".to_string()]);
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

    #[test]
    fn failure_codes_and_wire_round_trip() {
        assert_eq!(Failure::new(Stage::Exec, Errno::ENOENT).exit_code(), 127);
        for e in [Errno::EACCES, Errno::ENOEXEC, Errno::ENOTDIR, Errno::E2BIG] {
            assert_eq!(Failure::new(Stage::Exec, e).exit_code(), 126);
        }
        for s in Stage::ALL {
            if s != Stage::Exec {
                assert_eq!(Failure::new(s, Errno::EPERM).exit_code(), 1);
            }
            let f = Failure::new(s, Errno::EACCES);
            assert_eq!(Failure::decode(f.encode()), Some(f));
            assert!(!s.describe().is_empty());
        }
        assert_eq!(Failure::decode([0, 0, 0, 0, 0]), None);
        assert_eq!(Failure::decode([200, 0, 0, 0, 0]), None);
    }

    use std::os::unix::ffi::OsStringExt;
}
