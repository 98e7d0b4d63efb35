//! Drop-in checks for the multi-call modes: the same behavioural check runs against the real
//! peer (`/usr/bin/tini`, `/usr/bin/dumb-init`) and against `sandbox-init` under that name (a
//! symlink named `tini` or `dumb-init`, as the images install it), as real PID 1
//! (`unshare -pf --mount-proc`) and as a plain child, and asserts the same observable result:
//! exit code, the stream and shape of every message (pids and numbers masked), what happens to
//! the command's process group, job-control stops, the init's working directory. Then the
//! sandbox-init mode's own flags for the same behaviours, and the secrets step in each mode.
//! A failure prints the command, stdout and stderr. Timeouts are hang guards only.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
/// Hang guard for one run or one awaited event.
const GUARD: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `unshare -pf --mount-proc INIT ...`: the init is PID 1 of a new namespace.
    Pid1,
    /// Plain spawn: the init is an ordinary child.
    Plain,
}

/// Which binary plays the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// The peer itself, from Debian's package.
    Real,
    /// sandbox-init through a symlink with the peer's name.
    Ours,
}

fn modes(test: &str) -> Vec<Mode> {
    match support::pid1_unavailable() {
        None => vec![Mode::Pid1, Mode::Plain],
        Some(why) => {
            support::skip(&format!("{test} as PID 1: {why}"));
            vec![Mode::Plain]
        }
    }
}

/// The real peers, or why the test cannot compare against them.
fn peers_present(test: &str) -> bool {
    for p in ["/usr/bin/tini", "/usr/bin/dumb-init"] {
        if !Path::new(p).exists() {
            support::skip(&format!("{test}: {p} is not installed (scripts/setup.sh)"));
            return false;
        }
    }
    true
}

/// A directory holding `tini`, `tini-static` and `dumb-init` symlinks to the built binary.
fn links() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("compat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in ["tini", "tini-static", "dumb-init"] {
            let link = dir.join(name);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(INIT, &link).unwrap();
        }
        dir
    })
}

/// The peer's bare name, found through `PATH` (so argv[0], which the peers print, is the
/// same), and the `PATH` that finds the real one or ours.
fn program(who: Who, name: &str) -> PathBuf {
    let _ = who;
    PathBuf::from(name)
}

fn path_for(who: Who) -> String {
    match who {
        Who::Real => "/usr/bin:/bin".to_string(),
        Who::Ours => format!("{}:/usr/bin:/bin", links().display()),
    }
}

/// A command line to run: the init (`program`), its arguments, extra environment, directory.
struct Run<'a> {
    /// Whose binary a bare peer name finds.
    who: Who,
    program: PathBuf,
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    dir: &'a Path,
    mode: Mode,
}

impl Run<'_> {
    fn argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.mode == Mode::Pid1 {
            v.extend(["unshare", "-pf", "--mount-proc"].map(String::from));
        }
        v.push(self.program.display().to_string());
        v.extend(self.args.iter().map(|s| s.to_string()));
        v
    }

    fn spawn(&self) -> (Child, PathBuf, PathBuf) {
        let n = unique();
        let (out, err) = (
            self.dir.join(format!("out-{n}")),
            self.dir.join(format!("err-{n}")),
        );
        let argv = self.argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.dir)
            .env("D", self.dir)
            .env("PATH", path_for(self.who))
            .env("SANDBOX_SECRETS_SOCKET", self.dir.join("no-broker.sock"));
        for k in [
            "SANDBOX_INIT_USER",
            "SANDBOX_INIT_LOG",
            "TINI_SUBREAPER",
            "TINI_VERBOSITY",
            "TINI_KILL_PROCESS_GROUP",
            "DUMB_INIT_SETSID",
            "DUMB_INIT_DEBUG",
            "POSIXLY_CORRECT",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        (child, out, err)
    }

    /// Runs to the end: (exit code, stdout, stderr).
    fn output(&self) -> Outcome {
        let (mut child, out, err) = self.spawn();
        let code = wait(&mut child, &self.argv());
        Outcome {
            code,
            stdout: fs::read_to_string(out).unwrap(),
            stderr: fs::read_to_string(err).unwrap(),
            argv: self.argv(),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    /// Shown by `Debug` in every failure message.
    #[allow(dead_code)]
    argv: Vec<String>,
}

impl Outcome {
    /// What a script can observe, with pids and other numbers masked.
    fn shape(&self) -> (i32, String, String) {
        (self.code, mask(&self.stdout), mask(&self.stderr))
    }
}

fn wait(child: &mut Child, argv: &[String]) -> i32 {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{argv:?} did not end within {GUARD:?}");
        }
        sleep(Duration::from_millis(5));
    }
}

/// Every run of digits becomes `N`: pids differ from run to run.
fn mask(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `args` under the real peer and under ours, in `mode`; asserts the same shape.
fn same_shape(name: &str, mode: Mode, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let run = |who| {
        Run {
            who,
            program: program(who, name),
            args,
            env,
            dir: dir.path(),
            mode,
        }
        .output()
    };
    let (real, ours) = (run(Who::Real), run(Who::Ours));
    assert_eq!(
        real.shape(),
        ours.shape(),
        "{mode:?}: the peer and sandbox-init as {name} differ\nreal: {real:#?}\nours: {ours:#?}"
    );
    ours
}

// ---------------------------------------------------------------------------------------------
// Process helpers (host /proc)

/// `(state, ppid)` from `/proc/<pid>/stat`; `None` when the process is gone.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let r = s.rfind(')')?;
    let mut rest = s[r + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// For a failure message: a process's state, its signal masks and its process group and
/// session (fields 5 and 6 of `stat`).
fn signal_state(pid: i32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut out: Vec<String> = status
        .lines()
        .filter(|l| {
            [
                "State:", "SigQ:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some(r) = s.rfind(')') {
            let f: Vec<&str> = s[r + 2..].split(' ').collect();
            if f.len() > 3 {
                out.push(format!("ppid {} pgid {} sid {}", f[1], f[2], f[3]));
            }
        }
    }
    out.join(", ")
}

fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits for `f` to give a value, or panics naming `what`.
fn await_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        sleep(Duration::from_millis(10));
    }
}

/// The init's host pid: the spawned process, or unshare's child as PID 1.
fn init_pid(child: &Child, mode: Mode) -> i32 {
    let pid = child.id() as i32;
    match mode {
        Mode::Plain => pid,
        Mode::Pid1 => await_some("unshare's child", || children(pid).first().copied()),
    }
}

/// The command's host pid: the init's only child.
fn command_pid(init: i32) -> i32 {
    await_some("the init's child", || children(init).first().copied())
}

/// Waits until `pid` has exec'd `comm`. A signal for the command is only sent after this: the
/// real dumb-init forwards to the group `-child` as soon as it has forked, and a signal that
/// arrives before its child's `setsid()` finds no such group (ESRCH) and is lost for good
/// (seen under load: `dumb-init sleep 1000` never ended after SIGTERM). Ours waits for the
/// exec before it takes any signal, so it has no such window.
fn await_exec(pid: i32, comm: &str) {
    await_some(&format!("{pid} runs {comm}"), || {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .filter(|c| c.trim() == comm)
    });
}

fn gone_or_zombie(pid: i32) -> bool {
    match stat(pid) {
        None => true,
        Some((state, _)) => state == 'Z' || state == 'X',
    }
}

fn kill(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

// ---------------------------------------------------------------------------------------------
// Messages, streams and exit codes

#[test]
fn tini_messages_streams_and_exit_codes_match_the_real_tini() {
    if !peers_present("tini messages") {
        return;
    }
    let orphan = "(sleep 0.1 &); sleep 0.6";
    for mode in modes("tini messages") {
        for args in [
            &[][..],
            &["-h"],
            &["-x"],
            &["--help"],
            &["--version", "true"],
            &["-e"],
            &["cmd", "-c", "x"],
            &["-e", "300", "--", "true"],
            &["-e", "x", "--", "true"],
            &["-p", "FOO", "--", "true"],
            &["--", "/nonexistent"],
            &["--", "/etc/passwd"],
            &["true"],
            &["-s", "--", "sh", "-c", "exit 3"],
            &["-s", "-e", "3", "--", "sh", "-c", "exit 3"],
            &["-s", "--", "sh", "-c", "kill -TERM $$"],
            &["-s", "-e", "143", "--", "sh", "-c", "kill -TERM $$"],
            &["-s", "-w", "--", "sh", "-c", orphan],
            &["-w", "--", "sh", "-c", orphan],
            &["-s", "-vv", "--", "true"],
        ] {
            same_shape("tini", mode, args, &[]);
        }
        // tini's environment: subreaper, verbosity (each SIGCHLD traced at 3).
        let o = same_shape("tini", mode, &["--", "true"], &[("TINI_SUBREAPER", "")]);
        assert!(!o.stderr.contains("zombie reaping won't work"), "{o:#?}");
        let o = same_shape(
            "tini",
            mode,
            &["-s", "--", "true"],
            &[("TINI_VERBOSITY", "3")],
        );
        assert!(o.stdout.contains("] Received SIGCHLD\n"), "{o:#?}");
        // The warning: only when neither PID 1 nor a subreaper.
        let o = same_shape("tini", mode, &["--", "true"], &[]);
        let warned = o.stderr.contains("zombie reaping won't work");
        assert_eq!(warned, mode == Mode::Plain, "{o:#?}");
        let o = same_shape("tini", mode, &["-s", "-w", "--", "sh", "-c", orphan], &[]);
        assert!(
            o.stderr.contains("] Reaped zombie process with pid="),
            "{o:#?}"
        );
    }
}

#[test]
fn tini_version_and_license_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tini", "tini-static"] {
        let run = |args: &'static [&'static str]| {
            Run {
                who: Who::Ours,
                program: program(Who::Ours, name),
                args,
                env: &[],
                dir: dir.path(),
                mode: Mode::Plain,
            }
            .output()
        };
        let o = run(&["--version"]);
        assert_eq!(o.code, 0, "{o:#?}");
        assert!(
            o.stdout.starts_with("tini version 0.19.0 - sandbox-init "),
            "{o:#?}"
        );
        let o = run(&["-l"]);
        assert_eq!(o.code, 0, "{o:#?}");
        assert!(
            o.stdout.contains("MIT License") && o.stderr.is_empty(),
            "{o:#?}"
        );
        let o = run(&["-h"]);
        assert!(o
            .stdout
            .starts_with(&format!("{name} (tini version 0.19.0)\n")));
    }
    if peers_present("tini --version") {
        let real = Command::new("/usr/bin/tini")
            .arg("--version")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&real.stdout).starts_with("tini version 0.19.0"));
    }
}

#[test]
fn dumb_init_messages_streams_and_exit_codes_match_the_real_dumb_init() {
    if !peers_present("dumb-init messages") {
        return;
    }
    for mode in modes("dumb-init messages") {
        for args in [
            &[][..],
            &["--help"],
            &["-h"],
            &["-x"],
            &["--bogus"],
            &["-r"],
            &["--rewrite"],
            &["--help=1"],
            &["-r", "32:1", "true"],
            &["-r", "TERM:1", "true"],
            &["-r", "15", "true"],
            &["-r", "31:0", "true"],
            &["/nonexistent"],
            &["--", "/etc/passwd"],
            &["sh", "-c", "exit 3"],
            &["sh", "-c", "kill -TERM $$"],
            &["-c", "sh", "-c", "exit 4"],
            &["-c", "-v", "true"],
            &["-c", "-v", "-r", "15:0", "sh", "-c", "exit 5"],
            &["true", "-v", "--help"],
        ] {
            same_shape("dumb-init", mode, args, &[]);
        }
        let o = same_shape(
            "dumb-init",
            mode,
            &["-v", "true"],
            &[("DUMB_INIT_SETSID", "0")],
        );
        assert!(
            o.stderr.contains("[dumb-init] Child spawned with PID "),
            "{o:#?}"
        );
        same_shape(
            "dumb-init",
            mode,
            &["true"],
            &[("DUMB_INIT_DEBUG", "1"), ("DUMB_INIT_SETSID", "0")],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let o = Run {
        who: Who::Ours,
        program: program(Who::Ours, "dumb-init"),
        args: &["--version"],
        env: &[],
        dir: dir.path(),
        mode: Mode::Plain,
    }
    .output();
    assert!(o.code == 0 && o.stdout.is_empty(), "{o:#?}");
    assert!(o.stderr.starts_with("dumb-init v1.2.5"), "{o:#?}");
}

// ---------------------------------------------------------------------------------------------
// Behaviours

/// Host pids of processes whose command line holds `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            v.push(pid);
        }
    }
    v
}

/// Runs `program args` (found as `who`'s) whose command backgrounds a `sleep` and exits 0;
/// returns whether that sleep still runs once the init has ended. The sleep is found by a
/// unique argument: its pid inside a PID namespace means nothing on the host.
fn background_job_survives(who: Who, program: PathBuf, args: &[&str], mode: Mode) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("1000.{}{}", std::process::id(), unique());
    let script = format!("sleep {marker} & exit 0");
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["sh", "-c", &script]);
    let o = Run {
        who,
        program,
        args: &argv,
        env: &[],
        dir: dir.path(),
        mode,
    }
    .output();
    assert_eq!(o.code, 0, "{o:#?}");
    // The SIGTERM is sent before the init exits; give the kernel a moment to end the sleep.
    let running = || {
        pids_with(&marker)
            .into_iter()
            .filter(|&p| !gone_or_zombie(p))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !running().is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(10));
    }
    let left = running();
    for &pid in &left {
        kill(pid, "KILL");
    }
    !left.is_empty()
}

#[test]
fn when_the_command_exits_its_group_gets_sigterm_in_dumb_init_mode_and_with_g() {
    let compare = peers_present("group SIGTERM on exit");
    for mode in modes("group SIGTERM on exit") {
        // As PID 1 everything ends with the namespace; as a plain child only the SIGTERM does.
        let plain = mode == Mode::Plain;
        for (args, survives) in [(&[][..], false), (&["-c"], plain)] {
            let dumb = program(Who::Ours, "dumb-init");
            let ours = background_job_survives(Who::Ours, dumb.clone(), args, mode);
            assert_eq!(ours, survives, "{mode:?} dumb-init {args:?}");
            if compare {
                let real = background_job_survives(Who::Real, dumb.clone(), args, mode);
                assert_eq!(
                    real, ours,
                    "{mode:?} dumb-init {args:?}: real and ours differ"
                );
            }
        }
        let ours_g = background_job_survives(Who::Ours, INIT.into(), &["-g", "--"], mode);
        assert!(
            !ours_g,
            "{mode:?}: sandbox-init -g left the command's group running"
        );
        let ours = background_job_survives(Who::Ours, INIT.into(), &["--"], mode);
        assert_eq!(ours, plain, "{mode:?}: sandbox-init without -g");
    }
}

/// The command traps SIGUSR1 and starts a grandchild (same process group) that traps it too;
/// SIGUSR1 goes to the init; returns who wrote that they got it ("child", "grandchild").
fn who_gets_usr1(who: Who, program: PathBuf, args: &[&str], mode: Mode) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
( trap 'echo grandchild >> "$D/got"; exit 0' USR1; echo > "$D/g-ready"; while :; do sleep 0.05; done ) &
GP=$!
trap 'echo child >> "$D/got"; sleep 0.3; kill $GP 2>/dev/null; exit 0' USR1
echo > "$D/c-ready"
while :; do sleep 0.05; done
"#;
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["sh", "-c", script]);
    let run = Run {
        who,
        program,
        args: &argv,
        env: &[],
        dir: dir.path(),
        mode,
    };
    let (mut child, _, err) = run.spawn();
    let init = init_pid(&child, mode);
    for f in ["c-ready", "g-ready"] {
        await_some(f, || dir.path().join(f).exists().then_some(()));
    }
    kill(init, "USR1");
    let code = wait(&mut child, &run.argv());
    let stderr = fs::read_to_string(err).unwrap_or_default();
    assert_eq!(code, 0, "{:?}\n{stderr}", run.argv());
    let mut got: Vec<String> = fs::read_to_string(dir.path().join("got"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    got
}

#[test]
fn signals_reach_the_command_or_its_group_as_each_peer_sends_them() {
    let compare = peers_present("signal targets");
    let (child, both) = (vec!["child"], vec!["child", "grandchild"]);
    for mode in modes("signal targets") {
        for (name, args, want) in [
            ("dumb-init", &[][..], &both),
            ("dumb-init", &["-c"], &child),
            ("tini", &["-s", "--"], &child),
            ("tini", &["-s", "-g", "--"], &both),
        ] {
            let ours = who_gets_usr1(Who::Ours, name.into(), args, mode);
            assert_eq!(&ours, want, "{mode:?} {name} {args:?}");
            if compare {
                let real = who_gets_usr1(Who::Real, name.into(), args, mode);
                assert_eq!(real, ours, "{mode:?} {name} {args:?}: real and ours differ");
            }
        }
        let ours = who_gets_usr1(Who::Ours, INIT.into(), &["-g", "--"], mode);
        assert_eq!(ours, both, "{mode:?} sandbox-init -g");
        let ours = who_gets_usr1(Who::Ours, INIT.into(), &["--"], mode);
        assert_eq!(ours, child, "{mode:?} sandbox-init");
    }
}

/// Starts `program args sleep 1000`, sends SIGTSTP to the init, and reports
/// `(init stopped, command stopped)` once the command has stopped; then SIGCONT to the init and
/// checks both run again; then SIGTERM ends it.
fn tstp_then_cont(who: Who, program: PathBuf, args: &[&str], mode: Mode) -> (bool, bool) {
    try_tstp_then_cont(who, program, args, mode).unwrap_or_else(|e| panic!("{e}"))
}

/// [`tstp_then_cont`], with the case where the command never stops given back as an error: the
/// real dumb-init was seen (once, on a loaded machine) to leave its command running after the
/// SIGTSTP it forwarded; that is the peer's behaviour, not ours, so the comparison reports it.
fn try_tstp_then_cont(
    who: Who,
    program: PathBuf,
    args: &[&str],
    mode: Mode,
) -> Result<(bool, bool), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["sleep", "1000"]);
    let run = Run {
        who,
        program,
        args: &argv,
        env: &[],
        dir: dir.path(),
        mode,
    };
    let (mut child, _, _) = run.spawn();
    let init = init_pid(&child, mode);
    let cmd = command_pid(init);
    // The command must have exec'd sleep before it is stopped.
    await_exec(cmd, "sleep");
    kill(init, "TSTP");
    let stopped = |pid| stat(pid).is_some_and(|(s, _)| s == 'T');
    // Not `await_some`: a failure names the run and shows where the signal went (pending,
    // blocked, ignored, or gone) and the process groups (a stop signal to an orphaned group
    // is discarded by the kernel).
    let deadline = Instant::now() + GUARD;
    while !stopped(cmd) {
        if Instant::now() >= deadline {
            let why = format!(
                "never happened: the command stops: {who:?} {:?}\ninit {init}: {}\ncommand {cmd}: {}",
                run.argv(),
                signal_state(init),
                signal_state(cmd)
            );
            kill(init, "KILL");
            let _ = child.wait();
            return Err(why);
        }
        sleep(Duration::from_millis(10));
    }
    sleep(Duration::from_millis(200));
    let seen = (stopped(init), stopped(cmd));
    kill(init, "CONT");
    await_some("both run again", || {
        (!stopped(init) && !stopped(cmd)).then_some(())
    });
    kill(init, "TERM");
    let code = wait(&mut child, &run.argv());
    assert_eq!(code, 143, "{:?}", run.argv());
    Ok(seen)
}

#[test]
fn job_control_stop_suspends_the_pair_and_sigcont_resumes_it() {
    let compare = peers_present("job control");
    for mode in modes("job control") {
        // PID 1 cannot stop itself (the kernel drops its own SIGSTOP), for dumb-init too.
        let init_stops = mode == Mode::Plain;
        for args in [&[][..], &["-c"]] {
            let ours = tstp_then_cont(Who::Ours, "dumb-init".into(), args, mode);
            assert_eq!(ours, (init_stops, true), "{mode:?} dumb-init {args:?}");
            if compare {
                match try_tstp_then_cont(Who::Real, "dumb-init".into(), args, mode) {
                    Ok(real) => assert_eq!(
                        real, ours,
                        "{mode:?} dumb-init {args:?}: real and ours differ"
                    ),
                    Err(e) => println!("not compared, the real dumb-init misbehaved: {e}"),
                }
            }
        }
        let ours = tstp_then_cont(Who::Ours, INIT.into(), &["--job-control", "--"], mode);
        assert_eq!(
            ours,
            (init_stops, true),
            "{mode:?} sandbox-init --job-control"
        );
        let ours = tstp_then_cont(Who::Ours, INIT.into(), &["--"], mode);
        assert_eq!(
            ours,
            (false, true),
            "{mode:?} sandbox-init without --job-control"
        );
    }
}

/// On a pty made by `script`: is the command a session leader, does it have a controlling
/// terminal, is its group the terminal's foreground group.
fn terminal_of_the_command(who: Who, args: &str, mode: Mode) -> String {
    let probe = r#"sh -c 'set -- $(cut -d" " -f5-8 /proc/$$/stat); [ "$2" = "$$" ] && echo leader; [ "$3" != 0 ] && echo has-tty; [ "$4" = "$1" ] && echo foreground; echo end'"#;
    let unshare = if mode == Mode::Pid1 {
        "unshare -pf --mount-proc "
    } else {
        ""
    };
    let line = format!("exec {unshare}dumb-init {args} {probe}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(dir.path())
        .env("PATH", path_for(who))
        .env("SHELL", "/bin/sh")
        .env("SANDBOX_SECRETS_SOCKET", dir.path().join("no-broker.sock"))
        .env_remove("DUMB_INIT_SETSID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let code = wait(&mut child, std::slice::from_ref(&line));
    assert_eq!(code, 0, "{line}: {out}");
    out.replace('\r', "")
}

#[test]
fn on_a_terminal_the_command_gets_its_session_and_foreground_as_under_dumb_init() {
    let compare = peers_present("terminal");
    for mode in modes("terminal") {
        for (args, want) in [
            // As PID 1 under unshare the init is no session leader: the terminal stays with
            // the outer session, for the real dumb-init too.
            (
                "",
                if mode == Mode::Plain {
                    "leader\nhas-tty\nforeground\nend\n"
                } else {
                    "leader\nend\n"
                },
            ),
            ("-c", "has-tty\nforeground\nend\n"),
        ] {
            let ours = terminal_of_the_command(Who::Ours, args, mode);
            assert_eq!(ours, want, "{mode:?} dumb-init {args}");
            if compare {
                let real = terminal_of_the_command(Who::Real, args, mode);
                assert_eq!(
                    real, ours,
                    "{mode:?} dumb-init {args}: real and ours differ"
                );
            }
        }
    }
}

#[test]
fn the_init_leaves_its_directory_and_the_command_keeps_it() {
    let compare = peers_present("chdir");
    for mode in modes("chdir") {
        let mut cases = vec![
            (Who::Ours, "dumb-init", vec![]),
            (Who::Ours, "tini", vec!["-s", "--"]),
            (Who::Ours, INIT, vec!["--"]),
        ];
        if compare {
            cases.push((Who::Real, "dumb-init", vec![]));
        }
        for (who, program, args) in cases {
            let program = PathBuf::from(program);
            let dir = tempfile::tempdir().unwrap();
            let mut argv = args.clone();
            argv.extend(["sleep", "1000"]);
            let run = Run {
                who,
                program: program.clone(),
                args: &argv,
                env: &[],
                dir: dir.path(),
                mode,
            };
            let (mut child, _, _) = run.spawn();
            let init = init_pid(&child, mode);
            let cmd = command_pid(init);
            let cwd = |pid: i32| fs::read_link(format!("/proc/{pid}/cwd")).ok();
            await_some("the init changes to /", || {
                (cwd(init).as_deref() == Some(Path::new("/"))).then_some(())
            });
            let want = dir.path().canonicalize().unwrap();
            assert_eq!(
                cwd(cmd),
                Some(want),
                "{mode:?} {who:?} {program:?}: the command's directory"
            );
            await_exec(cmd, "sleep");
            kill(init, "TERM");
            wait(&mut child, &run.argv());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The secrets step in every mode

/// A broker socket answering every request with `body` (status 200).
fn fake_broker(dir: &Path, body: &'static str) -> PathBuf {
    let socket = dir.join("secrets.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    socket
}

#[test]
fn every_mode_fetches_the_sandboxs_secrets_and_fails_closed() {
    let good = r#"{"sandbox":"sb1","repository":"o/r","secrets":[{"name":"API_TOKEN","value":"compat-value-1"}]}"#;
    let check = "test \"$API_TOKEN\" = compat-value-1 && touch \"$D/ran\"";
    for mode in modes("secrets in every mode") {
        for (program, args) in [
            ("dumb-init", vec![]),
            ("tini", vec!["-s", "--"]),
            (INIT, vec!["--compat", "dumb-init"]),
            (INIT, vec!["--"]),
        ] {
            let program = PathBuf::from(program);
            for (body, want_code) in [(good, 0), ("not json", 1)] {
                let dir = tempfile::tempdir().unwrap();
                let socket = fake_broker(dir.path(), body);
                let mut argv = args.clone();
                argv.extend(["sh", "-c", check]);
                let env = [("SANDBOX_SECRETS_SOCKET", socket.to_str().unwrap())];
                let o = Run {
                    who: Who::Ours,
                    program: program.clone(),
                    args: &argv,
                    env: &env,
                    dir: dir.path(),
                    mode,
                }
                .output();
                assert_eq!(o.code, want_code, "{o:#?}");
                assert_eq!(dir.path().join("ran").exists(), want_code == 0, "{o:#?}");
                if want_code != 0 {
                    assert!(o.stderr.starts_with("sandbox-init: secrets: "), "{o:#?}");
                }
                assert!(
                    !o.stderr.contains("compat-value-1") && !o.stdout.contains("compat-value-1")
                );
            }
        }
    }
}
