//! Issue 10, the init's side: a hostile repository or image against the real binaries. Secret
//! names that run code in other users' sandboxes are refused at `set` by the real daemon and on
//! arrival by the real init (and the attacks are shown to work when forced); `DOCKER_CONFIG`
//! never makes the init (root) read or hand over what the target user could not; oversized
//! values are spilled only to memory-backed storage; and no closed or full stderr or stdout makes
//! either binary panic.
#![cfg(feature = "broker")]

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::daemon::{is_root, Daemon};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
const SECRETS: &str = env!("CARGO_BIN_EXE_sandbox-secrets");

/// Runs `cmd` to completion (hang guard 60 s) and returns its output; the command line is kept
/// for the failure report.
fn finish(mut cmd: Command) -> (String, Output) {
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (shown, child.wait_with_output().unwrap())
}

fn explain(shown: &str, out: &Output) -> String {
    format!(
        "command: {shown}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dev_full() -> Stdio {
    Stdio::from(File::options().write(true).open("/dev/full").unwrap())
}

/// A fake broker: answers every `GET` on a fresh socket with `body` (200) until dropped.
struct Peer {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Peer {
    fn serving(secrets: &[(&str, &str)]) -> Peer {
        let list: Vec<serde_json::Value> = secrets
            .iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
            .collect();
        let body =
            serde_json::json!({"sandbox": "s", "repository": "o/r", "secrets": list}).to_string();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("secrets.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Peer { dir, socket }
    }
}

/// The init against `socket` with a clean environment plus `env`, running `args`.
fn init_cmd(socket: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(INIT);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SANDBOX_SECRETS_SOCKET", socket)
        .env("SANDBOX_INIT_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

// ---------------------------------------------------------------------------------------------
// Item 6: dangerous names

/// Each attack of issue 10 item 6: the secrets a repository would set, and a command a victim
/// runs in its sandbox that the attack turns into running `touch $PWNED`.
type Attack = (&'static str, Vec<(&'static str, String)>, String);

fn attacks(pwned: &Path) -> Vec<Attack> {
    let p = pwned.display();
    vec![
        (
            "SHELLOPTS+PS4 in bash",
            vec![
                ("SHELLOPTS", "xtrace".to_owned()),
                ("PS4", format!("$(touch {p})")),
            ],
            "bash -c true".to_owned(),
        ),
        (
            "PYTHONWARNINGS+BROWSER in python3",
            vec![
                ("PYTHONWARNINGS", "ignore::antigravity.Foo::0".to_owned()),
                ("BROWSER", format!("sh -c 'touch {p}' #%s")),
            ],
            "python3 -c pass".to_owned(),
        ),
        (
            "GIT_CONFIG_* core.fsmonitor with git status",
            vec![
                ("GIT_CONFIG_COUNT", "1".to_owned()),
                ("GIT_CONFIG_KEY_0", "core.fsmonitor".to_owned()),
                ("GIT_CONFIG_VALUE_0", format!("touch {p}; false")),
            ],
            format!(
                "git init -q {0}.repo && cd {0}.repo && git status >/dev/null 2>&1; true",
                p
            ),
        ),
        (
            "HTTPS_PROXY",
            vec![("https_proxy", "http://127.0.0.1:9".to_owned())],
            "true".to_owned(),
        ),
    ]
}

/// The attacks are real: forced into a victim's environment (bash as a non-root user: bash does
/// not take PS4 from the environment as root), each runs the attacker's command, and the proxy
/// variable sends curl's traffic to the attacker's listener.
#[test]
fn each_dangerous_name_attack_works_when_forced() {
    for tool in ["bash", "python3", "git", "setpriv", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return support::skip(&format!("{tool} is not installed"));
        }
    }
    if !is_root() {
        return support::skip("needs root to run bash as another user");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    for (i, (what, vars, victim)) in attacks(&dir.path().join("pwned")).into_iter().enumerate() {
        if what == "HTTPS_PROXY" {
            continue;
        }
        let pwned = dir.path().join("pwned");
        let _ = std::fs::remove_file(&pwned);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["sh", "-c", &victim])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (shown, out) = finish(cmd);
        assert!(
            pwned.exists(),
            "attack {i} ({what}) did not run its command\n{}",
            explain(&shown, &out)
        );
    }
    // HTTPS_PROXY: curl asks the attacker's listener to CONNECT to the real host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "https://victim.example/"])
        .env("https_proxy", format!("http://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = finish(cmd);
    let first = seen.join().unwrap();
    assert!(first.starts_with("CONNECT victim.example:443"), "{first:?}");
}

/// Every attack's names are refused at `set` by the real daemon through the real CLI, naming
/// the family and its reason, and nothing is stored; the CLI hints at `--allow-dangerous`.
#[test]
fn each_dangerous_name_attack_is_refused_at_set() {
    let d = Daemon::new();
    let dir = tempfile::tempdir().unwrap();
    for (what, vars, _) in attacks(&dir.path().join("pwned")) {
        for (name, value) in &vars {
            for scope in [
                &["--repo", "octo/victim"][..],
                &["--user", "mona", "--repos", "octo/victim"][..],
            ] {
                let mut args = vec!["set", name];
                args.extend_from_slice(scope);
                let r = d
                    .cli(&args, Some(value.as_bytes()))
                    .fails_with("is dangerous");
                let err = r.stderr();
                let rule = sandbox_init::protocol::dangerous(&name.to_ascii_uppercase())
                    .unwrap_or_else(|| panic!("{what}: {name} is not in the table"));
                assert!(
                    err.contains(&rule.pattern.to_string())
                        && err.contains(rule.reason)
                        && err.contains("--allow-dangerous"),
                    "{what}: {}",
                    r.explain()
                );
                if !rule.reason.contains(value.as_str()) {
                    assert!(!err.contains(value.as_str()), "{}", r.explain());
                }
            }
        }
    }
    // Nothing of it was stored.
    for scope in [["--repo", "octo/victim"], ["--user", "mona"]] {
        let listed = d
            .cli(&["list", scope[0], scope[1], "--json"], None)
            .ok()
            .stdout();
        let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let names = v.to_string();
        for bad in ["SHELLOPTS", "PS4", "PYTHONWARNINGS", "GIT_CONFIG", "PROXY"] {
            assert!(!names.contains(bad), "{listed}");
        }
    }
}

/// A broker (a platform's own, or one that stored the names before the policy grew) that serves
/// an attack's names anyway: the real init refuses the answer before starting anything, names
/// the secret and the family, echoes no value, and the victim's command never runs.
#[test]
fn each_dangerous_name_attack_is_refused_by_the_init_on_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let started = dir.path().join("started");
    for (what, vars, victim) in attacks(&pwned) {
        let mut secrets: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
        secrets.push(("INNOCENT", "innocent-value"));
        let peer = Peer::serving(&secrets);
        let script = format!("touch {}; {victim}", started.display());
        let (shown, out) = finish(init_cmd(&peer.socket, &[], &["--", "sh", "-c", &script]));
        let text = explain(&shown, &out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}\n{text}");
        assert!(!started.exists() && !pwned.exists(), "{what}\n{text}");
        assert!(
            err.contains("garbage") && err.contains("is dangerous"),
            "{what}\n{text}"
        );
        let named = vars.iter().any(|(n, _)| {
            let up = n.to_ascii_uppercase();
            err.contains(&format!("{up:?}"))
                && err.contains(
                    &sandbox_init::protocol::dangerous(&up)
                        .unwrap()
                        .pattern
                        .to_string(),
                )
        });
        assert!(named, "{what}: no refused name in the error\n{text}");
        // Short values ("1", in a temp path too) and ones that occur in the rules' reasons
        // ("core.fsmonitor") prove nothing.
        let distinct = vars
            .iter()
            .map(|(_, v)| v.as_str())
            .filter(|v| {
                v.len() >= 8
                    && !sandbox_init::protocol::DANGEROUS
                        .iter()
                        .any(|d| d.reason.contains(v))
            })
            .chain(["innocent-value"]);
        for v in distinct {
            assert!(!err.contains(v), "{what}: value {v:?} echoed\n{text}");
        }
        drop(peer.dir);
    }
}

/// README's table of dangerous names is the table the code enforces: the same families, each
/// with its reason, nothing more.
#[test]
fn readme_lists_every_dangerous_family_with_its_reason() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Dangerous secret names")
        .nth(1)
        .expect("README has a Dangerous secret names section");
    let rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| names |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().replace('`', ""))
                .collect();
            (cells[0].clone(), cells[1].clone())
        })
        .collect();
    let code: Vec<(String, String)> = sandbox_init::protocol::DANGEROUS
        .iter()
        .map(|d| (d.pattern.to_string(), d.reason.to_owned()))
        .collect();
    assert_eq!(rows, code);
}

// ---------------------------------------------------------------------------------------------
// Item 10: an unwritable stderr or stdout

/// `2>/dev/full` never turns an exit code into a panic (134 under `panic=abort`), in either
/// binary, on usage errors, setup failures, a command's own code with every log line failing,
/// and the daemon keeps serving with its log lines failing; `--help`/`--version` into
/// `>/dev/full` exit 1 (the text is lost) rather than 0 or a panic, and so does an admin
/// command whose output is lost.
#[test]
fn a_full_stderr_or_stdout_keeps_every_exit_code() {
    let run =
        |bin: &str, args: &[&str], env: &[(&str, &str)], full_out: bool| -> (String, Output) {
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stderr(dev_full())
                .stdout(if full_out { dev_full() } else { Stdio::piped() });
            finish(cmd)
        };
    let missing = "/nonexistent/secrets.sock";
    let peer = Peer::serving(&[("API_TOKEN", "env-full-value")]);
    let served = peer.socket.to_str().unwrap();
    // (binary, arguments, environment, stdout full too, expected exit code)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, bool, i32);
    let cases: Vec<Case> = vec![
        (INIT, vec!["--bogus"], vec![], false, 2),
        (INIT, vec!["--help"], vec![], true, 1),
        (INIT, vec!["--version"], vec![], true, 1),
        (
            INIT,
            vec!["--secrets", "required", "--", "true"],
            vec![
                ("SANDBOX_SECRETS_SOCKET", missing),
                ("SANDBOX_INIT_LOG", "trace"),
            ],
            false,
            1,
        ),
        (
            INIT,
            vec!["--", "sh", "-c", "exit 7"],
            vec![
                ("SANDBOX_SECRETS_SOCKET", missing),
                ("SANDBOX_INIT_LOG", "trace"),
            ],
            false,
            7,
        ),
        // `sandbox-init env` whose export lines are lost, and one whose stderr is full.
        (
            INIT,
            vec!["env"],
            vec![("SANDBOX_SECRETS_SOCKET", served)],
            true,
            1,
        ),
        (
            INIT,
            vec!["env"],
            vec![
                ("SANDBOX_SECRETS_SOCKET", served),
                ("SANDBOX_INIT_LOG", "trace"),
            ],
            false,
            0,
        ),
        (SECRETS, vec!["--bogus"], vec![], false, 2),
        (SECRETS, vec!["--help"], vec![], true, 1),
        (SECRETS, vec!["--version"], vec![], true, 1),
        (
            SECRETS,
            vec!["list", "--user", "mona", "--run-dir", "/nonexistent"],
            vec![],
            false,
            1,
        ),
    ];
    for (bin, args, env, full_out, want) in cases {
        let (shown, out) = run(bin, &args, &env, full_out);
        assert_eq!(out.status.code(), Some(want), "{}", explain(&shown, &out));
    }

    // The daemon, its stderr full and logging at trace: it starts, stores and serves.
    let state = tempfile::tempdir().unwrap();
    let run_dir = state.path().join("run");
    let mut daemon = Command::new(SECRETS);
    daemon
        .args(["serve", "--state-dir"])
        .arg(state.path().join("state"))
        .arg("--run-dir")
        .arg(&run_dir)
        .env("SANDBOX_SECRETS_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(dev_full())
        .stderr(dev_full());
    // Killed on drop: a failed assertion must not leave the daemon behind.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut daemon = KillOnDrop(daemon.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(run_dir.join("admin.sock")).is_err() {
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "the daemon died with a full stderr"
        );
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut cmd = Command::new(SECRETS);
        cmd.arg("--run-dir").arg(&run_dir).args(args);
        support::daemon::run(cmd, stdin)
    };
    let full = |args: &[&str], stdin: &str| {
        let value = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(value.path(), stdin).unwrap();
        let mut cmd = Command::new(SECRETS);
        cmd.arg("--run-dir")
            .arg(&run_dir)
            .args(args)
            .stdin(File::open(value.path()).unwrap())
            .stdout(dev_full())
            .stderr(dev_full());
        finish(cmd)
    };
    cli(
        &["set", "API_TOKEN", "--user", "mona", "--repos", "o/r"],
        Some(b"full-stderr-value"),
    )
    .ok();
    // A refused set with both streams full: still exit 1.
    let (shown, out) = full(&["set", "PATH", "--repo", "o/r"], "x");
    assert_eq!(out.status.code(), Some(1), "{}", explain(&shown, &out));
    // Output lost into a full stdout: exit 1, not 0.
    let (shown, out) = full(&["list", "--user", "mona"], "");
    assert_eq!(out.status.code(), Some(1), "{}", explain(&shown, &out));
    let out = cli(
        &["sandbox", "create", "--user", "mona", "--repo", "o/r"],
        None,
    )
    .ok();
    let sandbox_dir = out.stdout().split(' ').nth(1).unwrap().trim().to_owned();
    let served = support::daemon::served(Path::new(&sandbox_dir));
    assert_eq!(
        served,
        vec![("API_TOKEN".to_owned(), "full-stderr-value".to_owned())]
    );
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon died");
}

// ---------------------------------------------------------------------------------------------
// Item 9: spill files only on memory-backed storage

/// A value over `MAX_ARG_STRLEN` (128 KiB): it must go to a file.
fn big_value() -> String {
    "spillVal-Zq81-".repeat(200 * 1024 / 14)
}

/// Every regular file under `root` (not following symlinks).
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn assert_nothing_holds(root: &Path, value: &str, what: &str) {
    for f in files_under(root) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(64).any(|w| w == &value.as_bytes()[..64]),
            "{what}: {} holds the value",
            f.display()
        );
    }
}

/// The real init in a private mount namespace after `setup` (shell commands, run as root): a
/// fake broker serves `BIG` (spilled) and `SMALL`; the child records where `BIG_FILE` points,
/// that file's filesystem type and contents in `out`.
fn spill_run(setup: &str, env: &[(&str, &str)], out: &Path) -> (String, Output) {
    let peer = Peer::serving(&[("BIG", &big_value()), ("SMALL", "small")]);
    let o = out.display();
    let child = format!(
        "echo \"$BIG_FILE\" > {o}/path; stat -f -c %T \"$(dirname \"$BIG_FILE\")\" > {o}/fstype; \
         cat \"$BIG_FILE\" > {o}/big"
    );
    // The init's environment, behind the namespace wrapper.
    let cmd = init_cmd(&peer.socket, env, &[]);
    let script = format!("set -e; {setup}; exec \"$@\"");
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            INIT,
        ])
        .args(["--", "sh", "-c", &child])
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = finish(wrapped);
    drop(peer);
    r
}

fn can_unshare_mounts() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

/// `/run/sandbox-init` on the container's disk (a disk directory bound there, a stale spill file
/// of an older version in it): the value goes to a tmpfs under `/dev/shm` instead, the stale
/// file is removed, and nothing on the disk holds the value. With `/dev/shm` on disk too the
/// init refuses before starting anything, naming the fix; a tmpfs at `/run/sandbox-init` is used
/// as before; a `SANDBOX_INIT_SECRETS_DIR` on disk is refused naming the variable.
#[test]
fn spill_files_only_land_on_memory_backed_storage() {
    if !can_unshare_mounts() {
        return support::skip("needs root and mount namespaces (unshare -m)");
    }
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs_of = |p: &Path| {
        let out = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    if fs_of(disk.path()) == "tmpfs" {
        return support::skip("the target directory is on a tmpfs: no disk to try");
    }
    let big = big_value();
    let d = disk.path().display();
    // A private /run (so nothing is made on the host's), the disk bound at /run/sandbox-init.
    let disk_run = format!(
        "mount -t tmpfs tmpfs /run; mkdir -p /run/sandbox-init {d}/run/secrets {d}/shm; \
         mount --bind {d}/run /run/sandbox-init; mount -t tmpfs tmpfs /dev/shm"
    );
    std::fs::create_dir_all(disk.path().join("run/secrets")).unwrap();
    std::fs::write(disk.path().join("run/secrets/OLD"), &big[..4096]).unwrap();

    // 1. Disk at /run/sandbox-init, tmpfs at /dev/shm: the fallback.
    let out = tempfile::tempdir().unwrap();
    let (shown, o) = spill_run(&disk_run, &[], out.path());
    let text = explain(&shown, &o);
    assert!(o.status.success(), "{text}");
    let read = |out: &tempfile::TempDir, f: &str| {
        std::fs::read_to_string(out.path().join(f)).unwrap_or_default()
    };
    assert_eq!(
        read(&out, "path").trim(),
        "/dev/shm/sandbox-init/secrets/BIG",
        "{text}"
    );
    assert_eq!(read(&out, "fstype").trim(), "tmpfs", "{text}");
    assert!(
        read(&out, "big") == big,
        "BIG_FILE does not hold the value\n{text}"
    );
    assert!(
        !disk.path().join("run/secrets/OLD").exists(),
        "the stale spill file on disk was kept\n{text}"
    );
    assert_nothing_holds(disk.path(), &big, "fallback");

    // 2. Disk at both: refused before the child, naming the fix; nothing written.
    let out = tempfile::tempdir().unwrap();
    let both_disk = format!("{disk_run}; mount --bind {d}/shm /dev/shm");
    let (shown, o) = spill_run(&both_disk, &[], out.path());
    let text = explain(&shown, &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        !out.path().join("path").exists(),
        "the child started\n{text}"
    );
    assert!(
        err.contains("oversized secrets")
            && err.contains("not on memory-backed storage")
            && err.contains("--tmpfs /run/sandbox-init"),
        "{text}"
    );
    assert_nothing_holds(disk.path(), &big, "both on disk");

    // 3. A tmpfs at /run/sandbox-init: used as before.
    let out = tempfile::tempdir().unwrap();
    let tmpfs_run = "mount -t tmpfs tmpfs /run; mkdir -p /run/sandbox-init; \
                     mount -t tmpfs tmpfs /run/sandbox-init";
    let (shown, o) = spill_run(tmpfs_run, &[], out.path());
    let text = explain(&shown, &o);
    assert!(o.status.success(), "{text}");
    assert_eq!(
        read(&out, "path").trim(),
        "/run/sandbox-init/secrets/BIG",
        "{text}"
    );
    assert_eq!(read(&out, "fstype").trim(), "tmpfs", "{text}");

    // 4. SANDBOX_INIT_SECRETS_DIR on disk: refused naming the variable, no fallback.
    let out = tempfile::tempdir().unwrap();
    let explicit = disk.path().join("explicit");
    let (shown, o) = spill_run(
        "true",
        &[("SANDBOX_INIT_SECRETS_DIR", explicit.to_str().unwrap())],
        out.path(),
    );
    let text = explain(&shown, &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        err.contains("SANDBOX_INIT_SECRETS_DIR") && err.contains("not on memory-backed"),
        "{text}"
    );
    assert!(!explicit.exists(), "{text}");
    assert_nothing_holds(disk.path(), &big, "explicit on disk");
}

/// `SANDBOX_INIT_SECRETS_DIR` at a directory holding root's files (`/dev/shm` itself, say), or
/// at another user's: the init (root, `--user nobody`) does not chmod and chown it to the
/// target; it stops before the child, naming the owner, and the directory stays as it was.
#[test]
fn a_spill_directory_of_someone_else_is_not_taken_over() {
    if !is_root() {
        return support::skip("needs root to act for another user");
    }
    use std::os::unix::fs::MetadataExt;
    let peer = Peer::serving(&[("BIG", &big_value())]);
    for (owner, file) in [(0, Some("roots-file")), (OTHER, None)] {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        set_mode(dir.path(), 0o755);
        std::os::unix::fs::chown(dir.path(), Some(owner), Some(owner)).unwrap();
        if let Some(f) = file {
            std::fs::write(dir.path().join(f), b"root's").unwrap();
        }
        let (shown, out) = finish(init_cmd(
            &peer.socket,
            &[("SANDBOX_INIT_SECRETS_DIR", dir.path().to_str().unwrap())],
            &["--user", "nobody", "--", "sh", "-c", "echo child-started"],
        ));
        let text = explain(&shown, &out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("child-started"),
            "{text}"
        );
        let want = format!("belongs to uid {owner}, not to the target uid 65534");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&want),
            "{text}"
        );
        let m = std::fs::metadata(dir.path()).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (owner, 0o755), "{text}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), usize::from(file.is_some()), "{left:?}\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 8: DOCKER_CONFIG as a confused deputy

/// base64("root:root-secret-7Qx"): root's own registry login, which must never reach `dev`.
const ROOT_AUTH: &str = "cm9vdDpyb290LXNlY3JldC03UXg=";
/// base64("other:other-secret-3Kp"): another user's registry login.
const OTHER_AUTH: &str = "b3RoZXI6b3RoZXItc2VjcmV0LTNLcA==";
const DEV: u32 = 1000;
const OTHER: u32 = 1001;

/// A world for the init as root with `--user dev`: a private copy of `/etc` (with `dev` and
/// `other` in passwd, root's 0600 `/etc/docker/config.json`) and a `/home` with `dev`'s home
/// and `other`'s 0700 `.docker`, bound over the real ones in a mount namespace.
struct World {
    root: tempfile::TempDir,
    /// What the host's `/etc/docker` held, plus root's `config.json`.
    etc_docker: Vec<String>,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let r = root.path();
        let status = Command::new("cp")
            .args(["-a", "/etc"])
            .arg(r.join("etc"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut passwd = std::fs::OpenOptions::new()
            .append(true)
            .open(r.join("etc/passwd"))
            .unwrap();
        writeln!(passwd, "dev:x:{DEV}:{DEV}::/home/dev:/bin/sh").unwrap();
        writeln!(passwd, "other:x:{OTHER}:{OTHER}::/home/other:/bin/sh").unwrap();
        let put = |path: &str, text: &str, mode: u32, owner: u32| {
            let p = r.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            set_mode(&p, mode);
            std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
        };
        put(
            "etc/docker/config.json",
            &format!(r#"{{"auths":{{"root.example":{{"auth":"{ROOT_AUTH}"}}}}}}"#),
            0o600,
            0,
        );
        set_mode(&r.join("etc/docker"), 0o755);
        put(
            "home/other/.docker/config.json",
            &format!(r#"{{"auths":{{"other.example":{{"auth":"{OTHER_AUTH}"}}}}}}"#),
            0o600,
            OTHER,
        );
        for (d, mode, owner) in [
            ("home", 0o755, 0),
            ("home/other", 0o755, OTHER),
            ("home/other/.docker", 0o700, OTHER),
        ] {
            set_mode(&r.join(d), mode);
            std::os::unix::fs::chown(r.join(d), Some(owner), Some(owner)).unwrap();
        }
        std::fs::create_dir(r.join("home/dev")).unwrap();
        std::os::unix::fs::chown(r.join("home/dev"), Some(DEV), Some(DEV)).unwrap();
        set_mode(r, 0o755);
        let mut w = World {
            root,
            etc_docker: Vec::new(),
        };
        w.etc_docker = w.listing("etc/docker");
        w
    }

    fn listing(&self, p: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    /// Runs the real init (root, `--user dev`) in the world with `DOCKER_CONFIG` (when given),
    /// served a registry triplet; its child marks `/home/dev/started`.
    fn run(&self, docker_config: Option<&str>, extra: &[&str]) -> (String, Output) {
        let peer = Peer::serving(&[
            ("R_CONTAINER_REGISTRY_SERVER", "reg.example"),
            ("R_CONTAINER_REGISTRY_USER", "u"),
            ("R_CONTAINER_REGISTRY_PASSWORD", "dev-pw-distinct-5Wq"),
        ]);
        let r = self.root.path().display();
        let script =
            format!("set -e; mount --bind {r}/etc /etc; mount --bind {r}/home /home; exec \"$@\"");
        let _ = std::fs::remove_file(self.path("home/dev/started"));
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            INIT,
        ])
        .args(["--user", "dev"])
        .args(extra)
        .args(["--", "sh", "-c", "touch /home/dev/started"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SANDBOX_SECRETS_SOCKET", &peer.socket)
        .env("SANDBOX_INIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(d) = docker_config {
            cmd.env("DOCKER_CONFIG", d);
        }
        let r = finish(cmd);
        drop(peer);
        r
    }

    /// Every file and directory of the world `dev` owns, relative to the world.
    fn owned_by_dev(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.path().to_owned()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                if std::os::unix::fs::MetadataExt::uid(&m) == DEV {
                    out.push(
                        e.path()
                            .strip_prefix(self.root.path())
                            .unwrap()
                            .display()
                            .to_string(),
                    );
                }
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// Fails unless root's and other's files are exactly as made, and nothing of theirs is
    /// readable in anything `dev` owns.
    fn assert_untouched(&self, text: &str) {
        let meta = |p: &str| std::fs::symlink_metadata(self.path(p)).unwrap();
        use std::os::unix::fs::MetadataExt;
        for (p, auth, owner) in [
            ("etc/docker/config.json", ROOT_AUTH, 0),
            ("home/other/.docker/config.json", OTHER_AUTH, OTHER),
        ] {
            let m = meta(p);
            assert_eq!((m.uid(), m.mode() & 0o7777), (owner, 0o600), "{p}\n{text}");
            let body = std::fs::read_to_string(self.path(p)).unwrap();
            assert!(
                body.contains(auth) && !body.contains("reg.example"),
                "{p}\n{text}"
            );
        }
        let m = meta("etc/docker");
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{text}");
        let m = meta("home/other/.docker");
        assert_eq!((m.uid(), m.mode() & 0o7777), (OTHER, 0o700), "{text}");
        assert_eq!(self.listing("etc/docker"), self.etc_docker, "{text}");
        assert_eq!(
            self.listing("home/other/.docker"),
            ["config.json"],
            "{text}"
        );
        assert!(!self.path("etc/config.json").exists(), "{text}");
        for f in self.owned_by_dev() {
            let p = self.path(&f);
            if p.is_file() {
                let body = std::fs::read_to_string(&p).unwrap_or_default();
                assert!(
                    !body.contains(ROOT_AUTH) && !body.contains(OTHER_AUTH),
                    "{f} of dev holds another user's credentials\n{text}"
                );
            }
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Issue 10 item 8: the init (root) with `--user dev` and `DOCKER_CONFIG` at root's
/// `/etc/docker` (root's 0600 `config.json`), at another user's `.docker`, or at `/etc`: each
/// fails closed before the child starts, naming the directory and why, and leaves root's and
/// other's files as they were, with nothing handed to `dev`. `--secrets optional` starts the
/// child but still writes nothing there. `dev`'s own home works, parents created as `dev`; a
/// `~/.docker` root left in dev's home is not taken over.
#[test]
fn docker_config_never_reads_or_hands_over_what_the_target_could_not() {
    if !can_unshare_mounts() {
        return support::skip("needs root and mount namespaces (unshare -m)");
    }
    let w = World::new();
    let started = w.path("home/dev/started");
    let not_dev = "belongs to uid 0, not to the target uid 1000";
    let denied = "as uid 1000: Permission denied";
    let cases = [
        ("/etc/docker", not_dev),
        ("/home/other/.docker", denied),
        ("/etc", not_dev),
        ("/etc/new/docker", denied),
    ];
    for (dir, why) in cases {
        let (shown, out) = w.run(Some(dir), &[]);
        let text = explain(&shown, &out);
        assert_eq!(out.status.code(), Some(1), "{dir}\n{text}");
        assert!(!started.exists(), "{dir}: the child started\n{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        let why = format!("docker config directory {dir} {why}");
        assert!(
            err.contains("cannot write registry credentials") && err.contains(&why),
            "{dir}: expected {why:?}\n{text}"
        );
        assert!(!err.contains("dev-pw-distinct"), "{text}");
        w.assert_untouched(&text);
        assert!(!w.path("etc/new").exists(), "{text}");
        assert_eq!(w.owned_by_dev(), ["home/dev"], "{dir}\n{text}");
    }
    // other's .docker open to everyone: still another user's directory.
    set_mode(&w.path("home/other/.docker"), 0o755);
    let (shown, out) = w.run(Some("/home/other/.docker"), &[]);
    let text = explain(&shown, &out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to uid 1001, not to the target"),
        "{text}"
    );
    set_mode(&w.path("home/other/.docker"), 0o700);
    w.assert_untouched(&text);

    // --secrets optional: a warning, the child starts, nothing written there.
    let (shown, out) = w.run(Some("/etc/docker"), &["--secrets", "optional"]);
    let text = explain(&shown, &out);
    assert!(out.status.success() && started.exists(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to uid 0"),
        "{text}"
    );
    w.assert_untouched(&text);

    // dev's own: ~/.docker, and DOCKER_CONFIG under its home with parents to make.
    for (dc, file) in [
        (None, "home/dev/.docker/config.json"),
        (
            Some("/home/dev/.config/docker"),
            "home/dev/.config/docker/config.json",
        ),
    ] {
        let (shown, out) = w.run(dc, &[]);
        let text = explain(&shown, &out);
        assert!(out.status.success() && started.exists(), "{text}");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(w.path(file)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (DEV, 0o600), "{text}");
        let body = std::fs::read_to_string(w.path(file)).unwrap();
        assert!(body.contains("reg.example"), "{body}");
        w.assert_untouched(&text);
    }

    // A ~/.docker root made in dev's home (an image built as root): not taken over.
    let root_docker = w.path("home/dev/.docker");
    std::fs::remove_dir_all(&root_docker).unwrap();
    std::fs::create_dir(&root_docker).unwrap();
    set_mode(&root_docker, 0o755);
    let (shown, out) = w.run(None, &[]);
    let text = explain(&shown, &out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/home/dev/.docker belongs to uid 0, not to the target uid 1000"),
        "{text}"
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&root_docker).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{text}");
    assert_eq!(
        std::fs::read_dir(&root_docker).unwrap().count(),
        0,
        "{text}"
    );
}
