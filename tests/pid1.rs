//! Integration tests of `sandbox-init` as a real init: each scenario runs both as real PID 1
//! (`unshare -pf --mount-proc`) and as a child subreaper (plain spawn), driving the real binary
//! in its own temp dir. A failure prints the command, stdout and stderr. Timeouts are hang
//! guards only.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
/// Hang guard for a whole scenario.
const GUARD: Duration = Duration::from_secs(60);
/// Hang guard for one awaited event (a file line, a process appearing).
const STEP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `unshare -pf --mount-proc sandbox-init ...`: the init is PID 1 of a new namespace.
    Pid1,
    /// Plain spawn: the init is not PID 1 and becomes a child subreaper.
    Subreaper,
}

/// The modes a scenario runs in; PID-1 mode is skipped (with a `skipped:` line) only when
/// `unshare` cannot make a PID namespace here.
fn modes(test: &str) -> Vec<Mode> {
    match support::pid1_unavailable() {
        None => vec![Mode::Pid1, Mode::Subreaper],
        Some(why) => {
            support::skip(&format!("{test} as PID 1: {why}"));
            vec![Mode::Subreaper]
        }
    }
}

/// The argv that starts the init in `mode`: `outer` wraps everything (it must exec its
/// arguments), `inner` goes between unshare and the init (it must exec too), then the init's
/// own arguments.
fn init_argv(mode: Mode, outer: &[&str], inner: &[&str], args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = outer.iter().map(|s| s.to_string()).collect();
    if mode == Mode::Pid1 {
        v.extend(["unshare", "-pf", "--mount-proc"].map(String::from));
    }
    v.extend(inner.iter().map(|s| s.to_string()));
    v.push(INIT.to_string());
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

struct Running {
    argv: Vec<String>,
    mode: Mode,
    child: Child,
    stdin: Option<ChildStdin>,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    desc: String,
}

impl Outcome {
    fn expect_code(&self, want: i32) -> &Self {
        assert_eq!(self.code, Some(want), "wrong exit code\n{}", self.desc);
        self
    }
}

fn start_in(dir: &Path, argv: Vec<String>, mode: Mode, stdin: bool) -> Running {
    let out = dir.join(format!("stdout-{}", unique()));
    let err = dir.join(format!("stderr-{}", unique()));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env("D", dir)
        .env("SANDBOX_SECRETS_SOCKET", dir.join("no-broker.sock"))
        .env_remove("SANDBOX_INIT_USER")
        .env_remove("SANDBOX_INIT_LOG")
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    let stdin = child.stdin.take();
    Running {
        argv,
        mode,
        child,
        stdin,
        out,
        err,
        started: Instant::now(),
    }
}

fn start(dir: &Path, mode: Mode, args: &[&str]) -> Running {
    start_in(dir, init_argv(mode, &[], &[], args), mode, false)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `(pid, ppid, state, comm)` of every process in this (host) /proc.
fn processes() -> Vec<(i32, i32, char, String)> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[l + 1..r].to_string();
        let mut rest = stat[r + 2..].split(' ');
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        v.push((pid, ppid, state, comm));
    }
    v
}

fn is_descendant(procs: &[(i32, i32, char, String)], mut pid: i32, root: i32) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        match procs.iter().find(|p| p.0 == pid) {
            Some(p) if p.1 > 0 => pid = p.1,
            _ => return false,
        }
    }
    false
}

impl Running {
    fn desc(&self) -> String {
        format!(
            "mode: {:?}\ncommand: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.mode,
            self.argv,
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The init's pid in this namespace: the spawned process or its descendant named
    /// `sandbox-init` (under unshare and wrappers).
    fn init_pid(&self) -> i32 {
        let root = self.child.id() as i32;
        let deadline = Instant::now() + STEP;
        loop {
            let procs = processes();
            if let Some(p) = procs
                .iter()
                .find(|p| p.3 == "sandbox-init" && is_descendant(&procs, p.0, root))
            {
                return p.0;
            }
            if Instant::now() > deadline {
                self.abort("the init process never appeared");
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.init_pid();
        let st = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {pid}\n{}", self.desc());
    }

    fn write(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("started with stdin");
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until `f` holds for the stdout text.
    fn await_stdout(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let s = self.stdout();
            if f(&s) {
                return s;
            }
            if Instant::now() > deadline {
                self.abort(&format!("stdout never showed {what}"));
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn abort(&self, why: &str) -> ! {
        let desc = self.desc();
        self.kill_tree();
        panic!("{why}\n{desc}");
    }

    /// SIGKILLs the spawned process and every descendant (by pid, never by name).
    fn kill_tree(&self) {
        let root = self.child.id() as i32;
        let procs = processes();
        for p in procs.iter().filter(|p| is_descendant(&procs, p.0, root)) {
            let _ = Command::new("kill")
                .args(["-KILL", &p.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn wait(mut self) -> Outcome {
        self.wait_within(GUARD)
    }

    fn wait_within(&mut self, guard: Duration) -> Outcome {
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                drop(self.stdin.take());
                return Outcome {
                    code: st.code(),
                    stdout: self.stdout(),
                    stderr: fs::read_to_string(&self.err).unwrap_or_default(),
                    desc: self.desc(),
                };
            }
            if self.started.elapsed() > guard {
                self.abort(&format!("still running after the {guard:?} hang guard"));
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    /// A failed assertion must not leave the scenario's processes behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_tree();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `path` contains `needle`.
fn await_file(run: &Running, path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let s = fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        if Instant::now() > deadline {
            run.abort(&format!(
                "{} never contained {needle:?} (has {s:?})",
                path.display()
            ));
        }
        sleep(Duration::from_millis(10));
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sandbox-init-pid1-")
        .tempdir()
        .unwrap()
}

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn exit_codes_are_the_childs_or_128_plus_signal() {
    for mode in modes("exit codes") {
        let dir = tempdir();
        for (script, want) in [
            ("exit 0", 0),
            ("exit 1", 1),
            ("exit 3", 3),
            ("exit 255", 255),
            ("kill -TERM $$", 143),
            ("kill -KILL $$", 137),
            ("kill -SEGV $$", 139),
        ] {
            start(dir.path(), mode, &["--", "sh", "-c", script])
                .wait()
                .expect_code(want);
        }
    }
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    for mode in modes("127/126") {
        let dir = tempdir();
        let plain = dir.path().join("plain-file");
        fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        let plain = plain.to_string_lossy().into_owned();
        let d = dir.path().to_string_lossy().into_owned();
        for (cmd, want, message) in [
            ("no-such-command-3f9a", 127, "No such file or directory"),
            ("/nonexistent/bin/x", 127, "No such file or directory"),
            (plain.as_str(), 126, "Permission denied"),
            (d.as_str(), 126, "Permission denied"),
        ] {
            let out = start(dir.path(), mode, &["--", cmd, "arg"]).wait();
            out.expect_code(want);
            assert!(
                out.stderr.contains("exec") && out.stderr.contains(message),
                "the reason is on stderr\n{}",
                out.desc
            );
            assert_eq!(
                out.stderr.matches(message).count(),
                1,
                "logged once\n{}",
                out.desc
            );
        }
    }
}

#[test]
fn remap_turns_listed_codes_into_zero() {
    for mode in modes("-e remap") {
        let dir = tempdir();
        let d = dir.path();
        start(d, mode, &["-e", "3", "--", "sh", "-c", "exit 3"])
            .wait()
            .expect_code(0);
        start(d, mode, &["-e", "3", "--", "sh", "-c", "exit 4"])
            .wait()
            .expect_code(4);
        start(
            d,
            mode,
            &["-e", "1", "-e", "143", "--", "sh", "-c", "kill $$"],
        )
        .wait()
        .expect_code(0);
    }
}

/// 1000 orphans (their parent subshell exits at once) block on a FIFO, are counted as the
/// init's children, then all exit together; the child counts what is left before it exits.
#[test]
fn thousand_orphans_leave_no_zombie() {
    let script = r#"
F="$D/fifo.$$"; mkfifo "$F"; exec 3<>"$F"
i=0
while [ $i -lt 1000 ]; do (cat "$F" >/dev/null 3>&- &); i=$((i+1)); done
count() {
  a=0; z=0
  for f in /proc/[0-9]*/stat; do
    read -r pid comm st ppid rest 2>/dev/null <"$f" || continue
    [ "$ppid" = "$PPID" ] || continue
    [ "$pid" = "$$" ] && continue
    a=$((a+1)); [ "$st" = Z ] && z=$((z+1))
  done
}
n=0; count
while [ $a -lt 1000 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); count; done
echo "orphans=$a"
exec 3>&-
n=0; count
while [ $a -gt 0 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); count; done
echo "left=$a zombies=$z"
rm -f "$F"
"#;
    for mode in modes("1000 orphans") {
        let dir = tempdir();
        let s = write_script(dir.path(), "orphans.sh", script);
        let out = start(dir.path(), mode, &["--", "sh", &s]).wait();
        out.expect_code(0);
        assert!(
            out.stdout.contains("orphans=1000\n"),
            "all 1000 orphans were reparented to the init\n{}",
            out.desc
        );
        assert!(
            out.stdout.contains("left=0 zombies=0\n"),
            "every orphan was reaped\n{}",
            out.desc
        );
    }
}

const TRAP_ALL: &str = r#"
for s in TERM INT HUP USR1 USR2 WINCH 40; do trap "echo $s >> \"$D/got\"" $s; done
trap 'exit 42' QUIT
echo ready > "$D/ready"
while :; do sleep 1 & wait $!; done
"#;

#[test]
fn signals_reach_the_child() {
    for mode in modes("signal forwarding") {
        let dir = tempdir();
        let s = write_script(dir.path(), "trap.sh", TRAP_ALL);
        let run = start(dir.path(), mode, &["--", "sh", &s]);
        await_file(&run, &dir.path().join("ready"), "ready");
        let got = dir.path().join("got");
        for sig in ["TERM", "INT", "HUP", "USR1", "USR2", "WINCH", "40"] {
            run.signal(sig);
            await_file(&run, &got, &format!("{sig}\n"));
        }
        run.signal("QUIT");
        let out = run.wait();
        out.expect_code(42);
        assert_eq!(
            fs::read_to_string(&got).unwrap(),
            "TERM\nINT\nHUP\nUSR1\nUSR2\nWINCH\n40\n",
            "each signal arrived once, in order\n{}",
            out.desc
        );
    }
}

/// Every standard signal a process can catch (1 to 31 but KILL, STOP, and CHLD, which tells the
/// init to reap) and two real-time ones, each trapped by number in the child.
const EVERY_SIGNAL: [i32; 30] = [
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 40, 64,
];

#[test]
fn all_31_standard_signals_and_two_realtime_ones_are_forwarded_or_act_as_documented() {
    let mut traps = String::new();
    for s in EVERY_SIGNAL {
        traps.push_str(&format!("trap 'echo {s} >> \"$D/got\"' {s}\n"));
    }
    let script = format!(
        "{traps}echo ready > \"$D/ready\"\n\
         while :; do sleep 1 & wait $!; done\n"
    );
    for mode in modes("every signal") {
        let dir = tempdir();
        let s = write_script(dir.path(), "every.sh", &script);
        let run = start(dir.path(), mode, &["--", "sh", &s]);
        await_file(&run, &dir.path().join("ready"), "ready");
        let got = dir.path().join("got");
        let mut want = String::new();
        for sig in EVERY_SIGNAL {
            run.signal(&sig.to_string());
            want.push_str(&format!("{sig}\n"));
            await_file(&run, &got, &want);
        }
        // CHLD from outside makes the init reap (nothing to reap): the child goes on. STOP and
        // KILL cannot be caught: they act on the init itself (KILL ends it, and as PID 1 its
        // namespace with the child).
        run.signal("17");
        run.signal("STOP");
        run.signal("CONT");
        await_file(&run, &got, &format!("{want}18\n"));
        run.signal("KILL");
        let out = run.wait();
        assert_eq!(
            fs::read_to_string(&got).unwrap(),
            format!("{want}18\n"),
            "each signal arrived once, in order\n{}",
            out.desc
        );
        // Killed (as PID 1, `unshare` reports its child's SIGKILL its own way).
        assert!(out.code != Some(0), "{}", out.desc);
    }
}

#[test]
fn rewrite_maps_and_drops_signals() {
    for mode in modes("-r rewrite") {
        let dir = tempdir();
        let s = write_script(dir.path(), "trap.sh", TRAP_ALL);
        let run = start(
            dir.path(),
            mode,
            &["-r", "15:2", "--rewrite", "10:0", "--", "sh", &s],
        );
        await_file(&run, &dir.path().join("ready"), "ready");
        let got = dir.path().join("got");
        run.signal("TERM");
        await_file(&run, &got, "INT\n");
        // USR1 (10) is dropped; USR2 (12) is forwarded after it, so its arrival proves USR1
        // was handled (and not sent) first.
        run.signal("USR1");
        run.signal("USR2");
        await_file(&run, &got, "USR2\n");
        run.signal("QUIT");
        let out = run.wait();
        out.expect_code(42);
        assert_eq!(
            fs::read_to_string(&got).unwrap(),
            "INT\nUSR2\n",
            "\n{}",
            out.desc
        );
    }
}

#[test]
fn group_flag_reaches_a_grandchild() {
    let script = r#"
trap 'echo child >> "$D/got"' USR1
sh -c 'trap "echo grandchild >> \"$D/got\"; exit 0" USR1; echo $$ > "$D/gc"; while :; do sleep 1 & wait $!; done' &
gc=$!
while :; do
  wait $gc; st=$?
  [ $st -lt 128 ] && break
  # wait was cut short by our own trap; if the grandchild has ended meanwhile, its status is
  # still there for one more wait (the shell keeps it until it is waited for).
  [ -e /proc/$gc ] || { wait $gc; st=$?; break; }
done
exit $st
"#;
    for mode in modes("-g") {
        for group in [true, false] {
            let dir = tempdir();
            let s = write_script(dir.path(), "group.sh", script);
            let args: Vec<&str> = if group {
                vec!["-g", "--", "sh", &s]
            } else {
                vec!["--", "sh", &s]
            };
            let run = start(dir.path(), mode, &args);
            let gc_file = dir.path().join("gc");
            await_file(&run, &gc_file, "\n");
            let got = dir.path().join("got");
            run.signal("USR1");
            if group {
                await_file(&run, &got, "grandchild\n");
                let out = run.wait();
                out.expect_code(0);
                let got = fs::read_to_string(&got).unwrap();
                assert!(got.contains("child\n"), "{got:?}\n{}", out.desc);
            } else {
                await_file(&run, &got, "child\n");
                // Without -g only the child got it: the grandchild is still looping. End it.
                let gc = fs::read_to_string(&gc_file).unwrap().trim().to_string();
                let gc_host = if mode == Mode::Pid1 {
                    // Its pid in the namespace differs; find it as the init's grandchild.
                    let init = run.init_pid();
                    let procs = processes();
                    procs
                        .iter()
                        .find(|p| {
                            p.3 == "sh" && is_descendant(&procs, p.0, init) && {
                                let pp = procs.iter().find(|q| q.0 == p.1);
                                pp.is_some_and(|q| q.1 == init)
                            }
                        })
                        .map(|p| p.0.to_string())
                        .unwrap_or_else(|| run.abort("grandchild not found"))
                } else {
                    gc
                };
                let _ = Command::new("kill").args(["-KILL", &gc_host]).status();
                let out = run.wait();
                out.expect_code(137);
                assert_eq!(fs::read_to_string(&got).unwrap(), "child\n", "{}", out.desc);
            }
        }
    }
}

#[test]
fn ignored_signals_are_reset_in_the_child_and_still_forwarded() {
    // Sanity: the wrapper really makes USR1 ignored across exec.
    let probe = Command::new("bash")
        .args(["-c", r#"trap "" USR1; exec grep SigIgn /proc/self/status"#])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&probe.stdout).to_string();
    let mask = u64::from_str_radix(shown.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_ne!(mask & (1 << (libc::SIGUSR1 - 1)), 0, "{shown}");

    let wrap = ["bash", "-c", r#"trap "" USR1 TERM HUP; exec "$0" "$@""#];
    let script = r#"
grep SigIgn /proc/self/status > "$D/sigign"
trap 'echo USR1 >> "$D/got"; exit 0' USR1
echo ready > "$D/ready"
while :; do sleep 1 & wait $!; done
"#;
    for mode in modes("ignored-signal reset") {
        let dir = tempdir();
        let s = write_script(dir.path(), "ign.sh", script);
        let argv = init_argv(mode, &wrap, &[], &["--", "sh", &s]);
        let run = start_in(dir.path(), argv, mode, false);
        await_file(&run, &dir.path().join("ready"), "ready");
        let sigign = fs::read_to_string(dir.path().join("sigign")).unwrap();
        assert_eq!(
            sigign.trim(),
            "SigIgn:\t0000000000000000",
            "the child starts with no ignored signal\n{}",
            run.desc()
        );
        run.signal("USR1");
        let out = run.wait();
        out.expect_code(0);
    }
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn user_flag_switches_ids_and_environment() {
    let script =
        r#"id; echo "HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL"; cat /proc/self/status"#;
    for mode in modes("--user") {
        let dir = tempdir();
        let out = start(
            dir.path(),
            mode,
            &["--user", "nobody", "--", "sh", "-c", script],
        )
        .wait();
        out.expect_code(0);
        assert!(
            out.stdout
                .starts_with("uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n"),
            "{}",
            out.desc
        );
        assert!(
            out.stdout
                .contains("HOME=/nonexistent USER=nobody LOGNAME=nobody SHELL=/usr/sbin/nologin\n"),
            "{}",
            out.desc
        );
        assert_eq!(status_field(&out.stdout, "NoNewPrivs"), "0", "{}", out.desc);
        assert_ne!(
            status_field(&out.stdout, "CapBnd"),
            "0000000000000000",
            "{}",
            out.desc
        );

        let out = start(
            dir.path(),
            mode,
            &[
                "--user",
                "65534:65534",
                "--no-new-privs",
                "--drop-caps",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .wait();
        out.expect_code(0);
        assert!(out
            .stdout
            .starts_with("uid=65534(nobody) gid=65534(nogroup)"));
        assert_eq!(status_field(&out.stdout, "NoNewPrivs"), "1", "{}", out.desc);
        for set in ["CapBnd", "CapAmb", "CapInh", "CapPrm", "CapEff"] {
            assert_eq!(
                status_field(&out.stdout, set),
                "0000000000000000",
                "{set}\n{}",
                out.desc
            );
        }

        // --drop-caps as root without --user: still uid 0, but no capability left.
        let out = start(dir.path(), mode, &["--drop-caps", "--", "sh", "-c", script]).wait();
        out.expect_code(0);
        assert!(out.stdout.starts_with("uid=0(root)"), "{}", out.desc);
        assert_eq!(
            status_field(&out.stdout, "CapEff"),
            "0000000000000000",
            "{}",
            out.desc
        );

        // SANDBOX_INIT_USER is the flag's fallback; unknown users stop before the child.
        let argv = init_argv(
            mode,
            &["env", "SANDBOX_INIT_USER=nobody"],
            &[],
            &["--", "id", "-u"],
        );
        let out = start_in(dir.path(), argv, mode, false).wait();
        out.expect_code(0);
        assert_eq!(out.stdout, "65534\n", "{}", out.desc);
        let out = start(
            dir.path(),
            mode,
            &["--user", "no-such-user-x1", "--", "true"],
        )
        .wait();
        out.expect_code(1);
        assert!(
            out.stderr
                .contains("resolve the user: user \"no-such-user-x1\" not found in /etc/passwd"),
            "{}",
            out.desc
        );
    }
}

/// A temporary account with a supplementary group, removed on drop.
struct TempAccount {
    user: String,
    group: String,
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

#[test]
fn user_flag_sets_supplementary_groups_from_etc_group() {
    let which = Command::new("sh")
        .args(["-c", "command -v useradd groupadd userdel groupdel"])
        .output();
    if !matches!(which, Ok(ref o) if o.status.success()) || !nix_is_root() {
        support::skip("supplementary groups: needs root and useradd/groupadd");
        return;
    }
    let tag = std::process::id();
    let acct = TempAccount {
        user: format!("sbxu{tag}"),
        group: format!("sbxg{tag}"),
    };
    let ok = Command::new("groupadd").arg(&acct.group).status().unwrap();
    assert!(ok.success());
    let ok = Command::new("useradd")
        .args(["-M", "-N", "-g", "nogroup", "-G", &acct.group, "-d", "/tmp"])
        .args(["-s", "/bin/sh", &acct.user])
        .status()
        .unwrap();
    assert!(ok.success());
    for mode in modes("supplementary groups") {
        let dir = tempdir();
        let out = start(dir.path(), mode, &["--user", &acct.user, "--", "id"]).wait();
        out.expect_code(0);
        let want = "gid=65534(nogroup) groups=65534(nogroup),";
        assert!(
            out.stdout.contains(want) && out.stdout.contains(&format!("({})", acct.group)),
            "{}",
            out.desc
        );
        // An explicit group replaces the primary one; memberships stay.
        let spec = format!("{}:{}", acct.user, acct.group);
        let out = start(dir.path(), mode, &["--user", &spec, "--", "id", "-G"]).wait();
        out.expect_code(0);
        assert_eq!(out.stdout.split_whitespace().count(), 1, "{}", out.desc);
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

#[test]
fn the_init_survives_unrelated_children_dying() {
    let script = r#"
(sh -c 'echo $$ > "$D/o1"; kill -KILL $$' &)
(sh -c 'echo $$ > "$D/o2"; exit 9' &)
(sh -c 'echo $$ > "$D/o3"; kill -SEGV $$' &)
n=0
while [ $n -lt 400 ]; do
  gone=0
  for o in o1 o2 o3; do p=$(cat "$D/$o" 2>/dev/null) && [ -n "$p" ] && [ ! -e /proc/$p ] && gone=$((gone+1)); done
  [ $gone -eq 3 ] && break
  sleep 0.05; n=$((n+1))
done
echo "gone=$gone"
"#;
    for mode in modes("unrelated children") {
        let dir = tempdir();
        let s = write_script(dir.path(), "orphans.sh", script);
        let out = start(dir.path(), mode, &["-w", "--", "sh", &s]).wait();
        out.expect_code(0);
        assert!(out.stdout.contains("gone=3"), "{}", out.desc);
        assert_eq!(
            out.stderr
                .matches("reaped zombie that is not the child")
                .count(),
            3,
            "-w warns once per foreign zombie\n{}",
            out.desc
        );
        for end in ["killed by SIGKILL", "exited with 9", "killed by SIGSEGV"] {
            assert!(out.stderr.contains(end), "{end}\n{}", out.desc);
        }
    }
}

/// In every mode (`what` names the test in a skip line): starts `body` as script `name`, which
/// writes `$D/ready` and then appends to `$D/got` what it receives; sends the init SIGTERM and
/// expects exit `code` and exactly `got` in `$D/got`.
fn sigterm_to(what: &str, name: &str, body: &str, code: i32, got: &str) {
    for mode in modes(what) {
        let dir = tempdir();
        let s = write_script(dir.path(), name, body);
        let run = start(dir.path(), mode, &["--", "sh", &s]);
        await_file(&run, &dir.path().join("ready"), "ready");
        run.signal("TERM");
        let out = run.wait();
        out.expect_code(code);
        assert_eq!(
            fs::read_to_string(dir.path().join("got")).unwrap(),
            got,
            "{}",
            out.desc
        );
    }
}

/// A server that handles SIGTERM gets SIGTERM only and exits with its own code.
#[test]
fn sigterm_handling_server_keeps_its_exit_code_and_gets_no_hup() {
    let script = r#"
trap 'echo HUP >> "$D/got"' HUP
trap 'echo TERM >> "$D/got"; exit 7' TERM
echo ready > "$D/ready"
while :; do sleep 1 & wait $!; done
"#;
    sigterm_to("SIGTERM server", "server.sh", script, 7, "TERM\n");
}

/// A child that ignores SIGTERM (as interactive shells do) is hung up: SIGHUP to its group.
#[test]
fn sigterm_to_a_child_ignoring_it_hangs_it_up() {
    let script = r#"
trap '' TERM
trap 'echo HUP >> "$D/got"; exit 9' HUP
echo ready > "$D/ready"
while :; do sleep 1 & wait $!; done
"#;
    sigterm_to("SIGTERM ignored", "ignorer.sh", script, 9, "HUP\n");
}

fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `script` gives the command a pty as its controlling terminal; stdin feeds keystrokes.
fn start_on_pty(dir: &Path, mode: Mode, init_args: &[&str]) -> Running {
    let inner = init_argv(mode, &[], &[], init_args).join(" ");
    let argv = vec![
        "script".to_string(),
        "-qec".to_string(),
        inner,
        "/dev/null".to_string(),
    ];
    start_in(dir, argv, mode, true)
}

/// Finds `SELF=<n> PGRP=<n> TPGID=<n>` in the pty output (the echoed command line has `$$`).
fn self_line(s: &str) -> Option<[u32; 3]> {
    s.lines().find_map(|l| {
        let at = l.find("SELF=")?;
        let mut nums = l[at..]
            .split_whitespace()
            .map(|kv| kv.split_once('=')?.1.parse().ok());
        let v = [nums.next()??, nums.next()??, nums.next()??];
        Some(v)
    })
}

#[test]
fn interactive_shell_on_a_pty_gets_the_foreground_and_job_control() {
    if !script_available() {
        support::skip("pty job control: util-linux script is not installed");
        return;
    }
    for mode in modes("pty job control") {
        let dir = tempdir();
        let mut run = start_on_pty(dir.path(), mode, &["--", "bash", "--norc", "-i"]);
        run.write("read -a f < /proc/$$/stat; echo \"SELF=$$ PGRP=${f[4]} TPGID=${f[7]}\"\n");
        let s = run.await_stdout("the process group line", |s| self_line(s).is_some());
        let [pid, pgrp, tpgid] = self_line(&s).unwrap();
        assert_eq!(
            pid,
            pgrp,
            "the child leads its own process group\n{}",
            run.desc()
        );
        assert_eq!(
            pgrp,
            tpgid,
            "the child's group owns the terminal\n{}",
            run.desc()
        );

        run.write("sleep 100 &\n");
        run.write("jobs; echo JOBS-$((1+1))\n");
        run.await_stdout("jobs output", |s| s.contains("JOBS-2"));
        run.write("kill %1; wait $!; echo KILLED-$?\n");
        let s = run.await_stdout("the job killed", |s| s.contains("KILLED-143"));
        assert!(
            s.contains("Running") && s.contains("sleep 100"),
            "jobs lists the background job\n{}",
            run.desc()
        );
        assert!(
            !s.contains("no job control") && !s.contains("cannot set terminal process group"),
            "bash has job control\n{}",
            run.desc()
        );
        run.write("exit 5\n");
        run.wait().expect_code(5);
    }
}

#[test]
fn docker_stop_of_interactive_bash_ends_it() {
    if !script_available() {
        support::skip("docker stop of bash -i: util-linux script is not installed");
        return;
    }
    for mode in modes("SIGTERM to bash -i") {
        for shell in [&["bash", "--norc", "-i"][..], &["busybox", "sh", "-i"]] {
            if shell[0] == "busybox" && Command::new("busybox").output().is_err() {
                support::skip("busybox sh -i: busybox is not installed");
                continue;
            }
            let dir = tempdir();
            let mut args = vec!["--"];
            args.extend_from_slice(shell);
            let mut run = start_on_pty(dir.path(), mode, &args);
            run.write("sleep 100 &\n");
            run.write("echo UP-$((2+3))\n");
            run.await_stdout("the shell up", |s| s.contains("UP-5"));
            let init = run.init_pid();
            let st = Command::new("kill")
                .args(["-TERM", &init.to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            // Hang guard only: docker would SIGKILL after 10 s.
            let out = run.wait_within(run.started.elapsed() + Duration::from_secs(8));
            out.expect_code(128 + libc::SIGHUP);
        }
    }
}

#[test]
fn no_command_starts_the_login_shell() {
    for mode in modes("login shell") {
        let dir = tempdir();
        let argv = init_argv(mode, &[], &[], &[]);
        let mut run = start_in(dir.path(), argv, mode, true);
        run.write("echo \"ARG0=$0\"; shopt -q login_shell && echo LOGIN-yes; exit 4\n");
        drop(run.stdin.take());
        let out = run.wait();
        out.expect_code(4);
        let root_shell = fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("root:"))
            .and_then(|l| l.rsplit(':').next())
            .unwrap()
            .to_string();
        if root_shell.ends_with("/bash") {
            assert!(
                out.stdout.contains("ARG0=-bash\nLOGIN-yes\n"),
                "{}",
                out.desc
            );
        } else {
            assert!(out.stdout.contains("ARG0=-"), "{}", out.desc);
        }
    }
}

/// The init is non-dumpable: observable when it runs as a non-root user, whose own processes
/// have `/proc/<pid>/` owned by that user, while the init's stays root-owned and its environ
/// unreadable to the child (same uid). Its soft core limit is 0; the child gets the original.
#[test]
fn the_init_is_not_dumpable_and_has_no_core_limit() {
    let script = r#"
echo "init-status-owner=$(stat -c %u /proc/$PPID/status)"
echo "self-status-owner=$(stat -c %u /proc/$$/status)"
if cat /proc/$PPID/environ >/dev/null 2>&1; then echo init-environ=readable; else echo init-environ=denied; fi
grep 'Max core file size' /proc/$PPID/limits | awk '{print "init-core-soft=" $5}'
grep 'Max core file size' /proc/self/limits | awk '{print "child-core-soft=" $5}'
"#;
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    if Command::new("setpriv").arg("--version").output().is_err() {
        support::skip("non-dumpable: setpriv is not installed");
        return;
    }
    for mode in modes("non-dumpable") {
        let dir = tempdir();
        let s = write_script(dir.path(), "dump.sh", script);
        let wrap = ["sh", "-c", r#"ulimit -c 1234; exec "$0" "$@""#];
        let argv = init_argv(mode, &wrap, &setpriv, &["--", "sh", &s]);
        let out = start_in(dir.path(), argv, mode, false).wait();
        out.expect_code(0);
        for want in [
            "init-status-owner=0\n",
            "self-status-owner=65534\n",
            "init-environ=denied\n",
            "init-core-soft=0\n",
            "child-core-soft=631808\n", // dash counts 512-byte blocks
        ] {
            assert!(out.stdout.contains(want), "{want}\n{}", out.desc);
        }
    }
}

#[test]
fn parent_death_signal_flag() {
    for mode in modes("-p") {
        let dir = tempdir();
        // The init's parent is a shell (subreaper mode) or unshare (PID-1 mode); killing it
        // must deliver SIGKILL to the init.
        let argv = init_argv(
            mode,
            &["sh", "-c", r#""$@"; :"#, "sh"],
            &[],
            &["-p", "SIGKILL", "--", "sleep", "1000"],
        );
        let mut run = start_in(dir.path(), argv, mode, false);
        let init = run.init_pid();
        let deadline = Instant::now() + STEP;
        let (parent, child) = loop {
            let procs = processes();
            let parent = procs.iter().find(|p| p.0 == init).map(|p| p.1);
            let child = procs.iter().find(|p| p.1 == init && p.3 == "sleep");
            if let (Some(parent), Some(child)) = (parent, child) {
                break (parent, child.0);
            }
            if Instant::now() > deadline {
                run.abort("the init's child never appeared");
            }
            sleep(Duration::from_millis(10));
        };
        let _ = Command::new("kill")
            .args(["-KILL", &parent.to_string()])
            .status();
        let deadline = Instant::now() + STEP;
        while Path::new(&format!("/proc/{init}")).exists()
            && !fs::read_to_string(format!("/proc/{init}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            if Instant::now() > deadline {
                run.abort("the init outlived its parent despite -p SIGKILL");
            }
            sleep(Duration::from_millis(10));
        }
        let _ = Command::new("kill")
            .args(["-KILL", &child.to_string()])
            .status();
        let _ = run.wait_within(GUARD);
    }
}

#[test]
fn help_version_and_usage_errors() {
    let out = Command::new(INIT).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-g",
        "-e CODE",
        "--rewrite",
        "--user",
        "--drop-caps",
        "--secrets-timeout",
    ] {
        assert!(help.contains(flag), "{flag}\n{help}");
    }
    let out = Command::new(INIT).arg("-V").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("sandbox-init {}\n", env!("CARGO_PKG_VERSION"))
    );
    for (args, needle) in [
        (&["--no-such-flag"][..], "invalid option '--no-such-flag'"),
        (&["-e", "300", "true"], "-e: \"300\" is not an exit code"),
        (&["--user", "a:b:c", "true"], "invalid user"),
        (&["env", "x"], "env takes no arguments"),
    ] {
        let out = Command::new(INIT).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn dashdash_env_runs_the_env_program_with_the_inherited_environment() {
    for mode in modes("-- env") {
        let dir = tempdir();
        let argv = init_argv(mode, &["env", "MARKER_X=42"], &[], &["--", "env"]);
        let out = start_in(dir.path(), argv, mode, false).wait();
        out.expect_code(0);
        assert!(
            out.stdout.lines().any(|l| l == "MARKER_X=42"),
            "{}",
            out.desc
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("PATH=")),
            "{}",
            out.desc
        );
    }
}

#[test]
fn json_log_lines_on_stderr() {
    let dir = tempdir();
    let argv = init_argv(
        Mode::Subreaper,
        &[],
        &[],
        &["--log-format", "json", "-v", "--", "sh", "-c", "exit 3"],
    );
    let out = start_in(dir.path(), argv, Mode::Subreaper, false).wait();
    out.expect_code(3);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{}", out.desc)))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["message"] == "exiting: child exited with 3"),
        "{}",
        out.desc
    );
}

#[test]
fn drop_caps_as_non_root_skips_the_bounding_set_with_a_warning() {
    if !nix_is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        support::skip("needs root and setpriv to start the init as uid 65534");
        return;
    }
    // The binary must be reachable by uid 65534 along its whole path.
    if Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "test",
            "-x",
            INIT,
        ])
        .status()
        .map_or(true, |s| !s.success())
    {
        support::skip("the test binary is not executable by uid 65534");
        return;
    }
    let mut cmd = Command::new("timeout");
    cmd.args([
        "60",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ])
    .arg(INIT)
    .args([
        "--drop-caps",
        "--",
        "sh",
        "-c",
        "grep CapInh /proc/self/status",
    ])
    .env_remove("SANDBOX_INIT_SOCKET");
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let ctx = format!("{cmd:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    assert!(stdout.contains("CapInh:\t0000000000000000"), "{ctx}");
    assert!(
        stderr.contains("lacks CAP_SETPCAP") && stderr.contains("bounding set is left as is"),
        "{ctx}"
    );
}
