//! Secrecy end to end: distinctive values seeded into a real broker daemon (running as `nobody`),
//! every `sandbox-secrets` subcommand and every `sandbox-init` mode run at trace log level, each
//! error path forced that can be, then everything they produced (stdout, stderr, daemon log, the
//! SQLite files, every file under the test's directories, `/proc/<pid>/environ` and `cmdline`
//! of the init, its parent chain and the daemon, and the init's whole readable memory while its
//! child runs) is grepped for the values: zero hits. Files meant to hold values (`config.json`,
//! spill files) are the only hits and have the modes and owners SPEC gives them.
#![cfg(feature = "broker")]

mod support;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
const SECRETS: &str = env!("CARGO_BIN_EXE_sandbox-secrets");
const NOBODY: u32 = 65534;

/// Needs root (PID namespaces, a daemon as `nobody`, reading another process's memory),
/// `unshare` and `setpriv`.
fn missing_prerequisite() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    for tool in ["unshare", "setpriv"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some("unshare or setpriv not installed");
        }
    }
    None
}

fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// The seeded values and the search for them.

/// A value searched for: the whole value and each distinctive alphanumeric run of it (so an
/// escaped or partial copy is found too).
struct Needle {
    what: String,
    patterns: Vec<Vec<u8>>,
}

impl Needle {
    fn of(what: &str, value: &str) -> Needle {
        let mut patterns = vec![value.as_bytes().to_vec()];
        for run in value.split(|c: char| !c.is_ascii_alphanumeric()) {
            if run.len() >= 10 && !patterns.iter().any(|p| p == run.as_bytes()) {
                patterns.push(run.as_bytes().to_vec());
            }
        }
        Needle {
            what: what.to_owned(),
            patterns,
        }
    }

    fn found_in(&self, haystack: &[u8]) -> Option<usize> {
        self.patterns.iter().find_map(|p| find(haystack, p))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Everything a run produced, by label.
#[derive(Default)]
struct Evidence {
    items: Vec<(String, Vec<u8>)>,
}

impl Evidence {
    fn add(&mut self, label: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((label.into(), bytes.into()));
    }

    fn output(&mut self, cmd: &Command, out: &Output) {
        let label = format!("{cmd:?}");
        self.add(format!("stdout of {label}"), out.stdout.clone());
        self.add(format!("stderr of {label}"), out.stderr.clone());
    }

    /// Panics listing every item holding any needle, with some context around the hit.
    fn assert_clean(&self, needles: &[Needle]) {
        let mut hits = Vec::new();
        for (label, bytes) in &self.items {
            for n in needles {
                if let Some(at) = n.found_in(bytes) {
                    let from = at.saturating_sub(60);
                    let to = (at + 80).min(bytes.len());
                    hits.push(format!(
                        "{} in {label} at {at}: ...{}...",
                        n.what,
                        String::from_utf8_lossy(&bytes[from..to])
                    ));
                }
            }
        }
        assert!(hits.is_empty(), "values found:\n{}", hits.join("\n"));
    }

    fn bytes(&self) -> usize {
        self.items.iter().map(|(_, b)| b.len()).sum()
    }
}

/// `base64(s)`, standard alphabet, padded (the `auth` form of `config.json`).
fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const REG_SERVER: &str = "https://Registry.Secrecy.TEST:5000/";
/// `REG_SERVER` as `config.json` keys it: the only place it may appear in that form.
const REG_SERVER_KEY: &str = "registry.secrecy.test:5000";
const REG_USER: &str = "reguPz8sK2mmQ";
const REG_PASSWORD: &str = "regpwHn5vB3xQ9 'with' \"quotes\"";

/// (name, user secret?, value). Every value has a distinctive run of 10+ alphanumerics.
fn seeds() -> Vec<(&'static str, bool, String)> {
    let mut v = vec![
        ("USER_TOKEN", true, "usrTokQ7f3kZ9xWw-user-secret".to_owned()),
        (
            "MULTI_LINE",
            true,
            "first line MLv8Hq2pAa\nsecond 'single' \"double\" $HOME `id` \\x\n\ttab MLtail7ZrQq ✓\n"
                .to_owned(),
        ),
        ("REPO_TOKEN", false, "repoTokXw4m9TtLk-repo-secret".to_owned()),
        ("PRIV_CONTAINER_REGISTRY_SERVER", true, REG_SERVER.to_owned()),
        ("PRIV_CONTAINER_REGISTRY_USER", true, REG_USER.to_owned()),
        ("PRIV_CONTAINER_REGISTRY_PASSWORD", true, REG_PASSWORD.to_owned()),
    ];
    // Three 40 KiB values: over the 96 KiB budget of a 512 KiB stack, so some go to files.
    for (i, name) in ["BIG_A", "BIG_B", "BIG_C"].into_iter().enumerate() {
        v.push((
            name,
            false,
            format!("bigV{i}Qz7Kp3mN-").repeat(40 * 1024 / 15),
        ));
    }
    v
}

/// The needles: every seeded value (the registry server too: it is a secret's value, so no log
/// line names it), and `base64(user:password)`, which only `config.json` may hold.
fn needles() -> Vec<Needle> {
    let mut out: Vec<Needle> = seeds()
        .into_iter()
        .map(|(n, _, v)| Needle::of(n, &v))
        .collect();
    out.push(Needle {
        what: "the registry server as config.json keys it".into(),
        patterns: vec![REG_SERVER_KEY.as_bytes().to_vec()],
    });
    out.push(auth_needle());
    out
}

fn auth_needle() -> Needle {
    let auth = b64(&format!("{REG_USER}:{REG_PASSWORD}"));
    Needle {
        what: "base64(user:password)".into(),
        patterns: vec![auth.into_bytes()],
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon, as `nobody`.

/// The harness's daemon (`support::daemon`) as nobody, with every CLI output recorded as
/// evidence.
struct Daemon {
    inner: support::daemon::Daemon,
}

impl Daemon {
    fn new() -> Daemon {
        Daemon {
            inner: support::daemon::Daemon::as_nobody(),
        }
    }

    fn state(&self) -> PathBuf {
        self.inner.state.clone()
    }

    fn run_dir(&self) -> PathBuf {
        self.inner.run_dir()
    }

    fn pid(&self) -> u32 {
        self.inner.pid() as u32
    }

    fn log_text(&self) -> String {
        self.inner.log_text()
    }

    fn start(&mut self) -> Result<(), String> {
        self.inner.start()
    }

    fn stop(&mut self) {
        self.inner.stop();
    }

    /// `sandbox-secrets ARGS` as root at trace level; output recorded in `ev`.
    fn cli(&self, ev: &mut Evidence, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.cli_in(ev, &self.run_dir(), args, stdin)
    }

    fn cli_in(
        &self,
        ev: &mut Evidence,
        run_dir: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Output {
        // As the daemon's own user: the CLI talks only to a daemon of root or its own uid.
        let mut cmd = self.inner.cli_command(run_dir, args);
        let out = support::daemon::output(&mut cmd, stdin);
        ev.output(&cmd, &out);
        out
    }

    #[track_caller]
    fn ok(&self, ev: &mut Evidence, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut cmd = Command::new(SECRETS);
        cmd.arg("--run-dir").arg(self.run_dir()).args(args);
        let out = self.cli(ev, args, stdin);
        assert!(
            out.status.success(),
            "{}\n{}",
            show(&cmd, &out),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    fn refused(&self, ev: &mut Evidence, args: &[&str], stdin: Option<&[u8]>, why: &str) {
        let mut cmd = Command::new(SECRETS);
        cmd.arg("--run-dir").arg(self.run_dir()).args(args);
        let out = self.cli(ev, args, stdin);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(why),
            "expected a refusal naming {why:?}\n{}",
            show(&cmd, &out)
        );
    }

    /// Seeds every value for mona / octo/hello; returns the sandbox directory.
    fn seed(&self, ev: &mut Evidence) -> PathBuf {
        for (name, user, value) in seeds() {
            let args: Vec<&str> = if user {
                vec!["set", name, "--user", "mona", "--repos", "octo/hello"]
            } else {
                vec!["set", name, "--repo", "octo/hello"]
            };
            self.ok(ev, &args, Some(value.as_bytes()));
        }
        let line = self.ok(
            ev,
            &[
                "sandbox",
                "create",
                "--user",
                "mona",
                "--repo",
                "octo/hello",
            ],
            None,
        );
        let dir = line.split_whitespace().nth(1).expect("id and directory");
        PathBuf::from(dir)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and their /proc files.

/// A running init (or `unshare` around it) killed with its process tree on drop.
struct Running {
    child: Child,
    pids: Vec<i32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Every readable mapping of `pid`'s memory, labelled by address range and path.
fn memory(pid: i32) -> Vec<(String, Vec<u8>)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("open /proc/{pid}/mem: {e}"));
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let path = parts.nth(3).unwrap_or("[anon]");
        if !perms.starts_with('r') || path == "[vvar]" || path == "[vsyscall]" {
            continue;
        }
        let (from, to) = range.split_once('-').unwrap();
        let from = u64::from_str_radix(from, 16).unwrap();
        let to = u64::from_str_radix(to, 16).unwrap();
        let mut buf = vec![0u8; (to - from) as usize];
        if mem.read_exact_at(&mut buf, from).is_ok() {
            out.push((format!("memory of pid {pid} {range} {perms} {path}"), buf));
        }
    }
    out
}

/// Soft core limit of `pid` from `/proc/<pid>/limits`.
fn core_limit(pid: i32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().to_owned()
}

/// (real uid of `pid`, owner of its `/proc/<pid>/status`): a non-dumpable process's proc files
/// belong to root whatever its uid.
fn uid_and_proc_owner(pid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    (uid, owner)
}

fn proc_files(ev: &mut Evidence, what: &str, pid: i32) {
    for f in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{f}"))
            .unwrap_or_else(|e| panic!("{f} of {what}: {e}"));
        ev.add(format!("/proc/{pid}/{f} of {what}"), bytes);
    }
}

fn wait_for(path: &Path, running: &mut Running, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("{what} ended early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no {} in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a run: creates the `go` file the child waits for and collects the output.
fn finish(mut running: Running, go: &Path, what: &str) -> Output {
    std::fs::write(go, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = std::mem::replace(&mut running.child, Command::new("true").spawn().unwrap());
    running.pids.clear();
    child.wait_with_output().unwrap()
}

/// Starts `cmd` (which ends in the init and its child script) with only what the init needs in
/// its environment, at trace level, and returns it with its process handle.
fn start_traced(
    mut cmd: Command,
    sandbox: &Path,
    docker: &Path,
    spill: &Path,
    home: Option<&Path>,
) -> (Command, Running) {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SANDBOX_SECRETS_SOCKET", sandbox.join("secrets.sock"))
        .env("SANDBOX_INIT_LOG", "trace")
        .env("DOCKER_CONFIG", docker)
        .env("SANDBOX_INIT_SECRETS_DIR", spill)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(home) = home {
        cmd.env("HOME", home);
    }
    let child = cmd.spawn().unwrap();
    let running = Running {
        pids: Vec::new(),
        child,
    };
    (cmd, running)
}

/// The child script: saves its environment, says it is ready, waits for `go`.
fn child_script(out: &Path) -> String {
    format!(
        "cat /proc/self/environ > {d}/child.env && touch {d}/ready && \
         while [ ! -e {d}/go ]; do sleep 0.05; done",
        d = out.display()
    )
}

/// A directory the target user (`nobody`) can write.
fn nobody_dir(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    std::fs::create_dir(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    p
}

fn parse_environ(raw: &[u8]) -> std::collections::BTreeMap<String, String> {
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let e = String::from_utf8(e.to_vec()).ok()?;
            let (k, v) = e.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Every regular file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// What the child saw must be the seeded values (a positive control of the run).
fn assert_child_got_secrets(child_env: &[u8], spill: &Path) {
    let env = parse_environ(child_env);
    let mut spilled = 0;
    for (name, _, value) in seeds() {
        match (env.get(name), env.get(&format!("{name}_FILE"))) {
            (Some(got), None) => assert_eq!(got, &value, "{name}"),
            (None, Some(path)) => {
                assert_eq!(Path::new(path), spill.join(name), "{name}");
                spilled += 1;
            }
            other => panic!("{name} in the child: {other:?}"),
        }
    }
    assert!(spilled > 0, "nothing was spilled");
}

/// Files that may hold values: `config.json` (only base64(user:password), 0600 in a 0700
/// directory, owned by the target) and spill files (only their own value, 0400 in a 0700
/// directory, owned by the target). Every other file under `roots` must hold none.
fn check_files(ev: &mut Evidence, roots: &[&Path], owner: u32) -> (usize, usize) {
    let values = seeds();
    let (mut config_files, mut spill_files) = (0, 0);
    for root in roots {
        for path in files_under(root) {
            let bytes = std::fs::read(&path).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let in_spill = path.parent().unwrap().file_name().unwrap() == "spill";
            if name == "config.json" {
                config_files += 1;
                assert_eq!(meta.mode() & 0o7777, 0o600, "{}", path.display());
                assert_eq!(parent.mode() & 0o7777, 0o700, "{}", path.display());
                assert_eq!(
                    (meta.uid(), parent.uid()),
                    (owner, owner),
                    "{}",
                    path.display()
                );
                let text = String::from_utf8(bytes.clone()).unwrap();
                assert!(
                    text.contains(&b64(&format!("{REG_USER}:{REG_PASSWORD}"))),
                    "{text}"
                );
                assert!(text.contains(REG_SERVER_KEY), "{text}");
                let rest = text
                    .replace(&b64(&format!("{REG_USER}:{REG_PASSWORD}")), "")
                    .replace(REG_SERVER_KEY, "");
                ev.add(format!("{} without its auth", path.display()), rest);
            } else if in_spill {
                spill_files += 1;
                assert_eq!(meta.mode() & 0o7777, 0o400, "{}", path.display());
                assert_eq!(parent.mode() & 0o7777, 0o700, "{}", path.display());
                assert_eq!(
                    (meta.uid(), parent.uid()),
                    (owner, owner),
                    "{}",
                    path.display()
                );
                let (_, _, own) = values
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .unwrap_or_else(|| panic!("unexpected spill file {}", path.display()));
                assert_eq!(bytes, own.as_bytes(), "{}", path.display());
                // Only its own value: every other needle must be absent.
                for n in needles().iter().filter(|n| n.what != name) {
                    assert!(
                        n.found_in(&bytes).is_none(),
                        "{} in {}",
                        n.what,
                        path.display()
                    );
                }
            } else if name == "child.env" || name.starts_with("env-out") {
                // The child's own environment and the `env` output: meant to hold values.
            } else {
                ev.add(path.display().to_string(), bytes);
            }
        }
    }
    (config_files, spill_files)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Runs the init as PID 1 of a new PID namespace, as root, the child as nobody, with a 512 KiB
/// stack (some values spill) and the registry triplet written for nobody. While the child
/// waits: the init's environ, cmdline, core limit and memory, its parent's, the daemon's.
#[test]
fn pid1_init_and_daemon_hold_no_value_in_proc_files_or_init_memory() {
    if let Some(why) = missing_prerequisite() {
        support::skip(why);
        return;
    }
    let mut ev = Evidence::default();
    let daemon = Daemon::new();
    let sandbox = daemon.seed(&mut ev);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = nobody_dir(work.path(), "out");
    // The init writes config.json as the target: into a directory nobody owns.
    let docker = nobody_dir(work.path(), "docker");
    let spill = work.path().join("spill");

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -s 512 && exec \"$@\"", "sh"])
        .args(["unshare", "-pf", "--mount-proc", "--kill-child", INIT])
        .args(["--user", "nobody", "--", "sh", "-c", &child_script(&out)]);
    let (cmd, mut running) = start_traced(cmd, &sandbox, &docker, &spill, None);
    wait_for(&out.join("ready"), &mut running, "the PID-1 run");
    let unshare = running.child.id() as i32;
    let init = *children(unshare).first().expect("the init under unshare");
    running.pids.push(init);
    assert_eq!(comm(init), "sandbox-init");
    let script = *children(init).first().expect("the init's child");
    running.pids.push(script);

    // The init: environ and cmdline, core limit 0, and its whole memory.
    proc_files(&mut ev, "the init (PID 1)", init);
    proc_files(&mut ev, "unshare (the init's parent)", unshare);
    assert_eq!(core_limit(init), "0", "the init's core limit");
    let init_memory = memory(init);
    let scanned: usize = init_memory.iter().map(|(_, b)| b.len()).sum();
    assert!(
        scanned > 100_000,
        "too little of the init's memory read: {scanned}"
    );
    for (label, bytes) in init_memory {
        ev.add(label, bytes);
    }
    // Positive control: the same scan finds the values in the child's memory.
    let child_memory: Vec<u8> = memory(script).into_iter().flat_map(|(_, b)| b).collect();
    assert!(Needle::of("USER_TOKEN", &seeds()[0].2)
        .found_in(&child_memory)
        .is_some());

    // The daemon: environ, cmdline, core limit 0, not dumpable (proc files root's, uid nobody).
    let dpid = daemon.pid() as i32;
    proc_files(&mut ev, "the daemon", dpid);
    assert_eq!(core_limit(dpid), "0", "the daemon's core limit");
    assert_eq!(
        uid_and_proc_owner(dpid),
        (NOBODY, 0),
        "the daemon is dumpable"
    );
    // The SQLite files while the daemon runs (WAL live).
    for f in files_under(&daemon.state()) {
        ev.add(
            format!("{} (daemon running)", f.display()),
            std::fs::read(&f).unwrap(),
        );
    }

    let output = finish(running, &out.join("go"), "the PID-1 run");
    assert!(output.status.success(), "{}", show(&cmd, &output));
    ev.output(&cmd, &output);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("USER_TOKEN"),
        "no trace log?"
    );
    assert_child_got_secrets(&std::fs::read(out.join("child.env")).unwrap(), &spill);
    let (configs, spills) = check_files(&mut ev, &[work.path()], NOBODY);
    assert_eq!(configs, 1);
    assert!(spills > 0);

    ev.add("daemon log", daemon.log_text());
    ev.assert_clean(&needles());
    eprintln!(
        "secrecy: pid1 run: {} items, {} bytes searched",
        ev.items.len(),
        ev.bytes()
    );
}

/// The init as a subreaper running as `nobody` (non-root): it is not dumpable (its proc files
/// belong to root), its core limit is 0, and its memory holds no value while the child runs.
#[test]
fn non_root_init_is_not_dumpable_and_its_memory_holds_no_value() {
    if let Some(why) = missing_prerequisite() {
        support::skip(why);
        return;
    }
    let mut ev = Evidence::default();
    let daemon = Daemon::new();
    let sandbox = daemon.seed(&mut ev);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let own = nobody_dir(work.path(), "own");
    let out = nobody_dir(&own, "out");
    let spill = own.join("spill");
    let docker = own.join("docker");

    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
    ])
    .arg("ulimit -s 512 && exec \"$@\"")
    .args(["sh", INIT, "--", "sh", "-c", &child_script(&out)]);
    let (cmd, mut running) = start_traced(cmd, &sandbox, &docker, &spill, Some(&own));
    wait_for(&out.join("ready"), &mut running, "the non-root run");
    let init = running.child.id() as i32;
    assert_eq!(comm(init), "sandbox-init");
    running.pids.extend(children(init));
    assert_eq!(
        uid_and_proc_owner(init),
        (NOBODY, 0),
        "the init is dumpable"
    );
    // Control: its child, an ordinary process of the same uid, owns its proc files.
    let script = *running.pids.first().expect("the init's child");
    assert_eq!(uid_and_proc_owner(script), (NOBODY, NOBODY));
    assert_eq!(core_limit(init), "0", "the init's core limit");
    proc_files(&mut ev, "the non-root init", init);
    for (label, bytes) in memory(init) {
        ev.add(label, bytes);
    }
    let output = finish(running, &out.join("go"), "the non-root run");
    assert!(output.status.success(), "{}", show(&cmd, &output));
    ev.output(&cmd, &output);
    assert_child_got_secrets(&std::fs::read(out.join("child.env")).unwrap(), &spill);
    check_files(&mut ev, &[work.path()], NOBODY);
    ev.assert_clean(&needles());
}

use support::peer::{http, scripted as fake_peer};

/// `sandbox-init ARGS` (not PID 1: the fetch and setup steps are the same) at trace level.
fn init_run(ev: &mut Evidence, env: &[(&str, &Path)], args: &[&str], stack_kib: u32) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -s {stack_kib} && exec \"$@\""))
        .args(["sh", INIT])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("SANDBOX_INIT_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = support::daemon::output(&mut cmd, None);
    ev.output(&cmd, &out);
    out
}

#[track_caller]
fn assert_init_failed(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains(why),
        "expected exit 1 naming {why:?}: {}\n{stderr}",
        out.status
    );
}

/// Every `sandbox-secrets` subcommand and `sandbox-init` mode at trace level, with each error
/// path that can be forced: refused sets (oversized, invalid or dangerous name, NUL, not UTF-8,
/// bad repository), a dead admin socket, a fake admin peer answering garbage that echoes the
/// request, a tampered store, key file problems; for the init a dead socket, fake sandbox peers
/// answering garbage holding values, a corrupt `config.json`, unusable docker-config and spill
/// directories, `--secrets required` without a socket. Then every output, log, SQLite file and
/// file under the test directories is grepped: zero hits.
#[test]
fn every_command_and_error_path_at_trace_level_leaks_no_value() {
    if let Some(why) = missing_prerequisite() {
        support::skip(why);
        return;
    }
    let mut ev = Evidence::default();
    let mut daemon = Daemon::new();
    let sandbox = daemon.seed(&mut ev);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let w = work.path();
    // Values only ever given to refused or faulty paths: they must not appear anywhere.
    let refused_values = [
        ("oversized", "ovrSzVal8Kq1Lm-".repeat(48 * 1024 / 15 + 2)),
        ("invalid name", "badNameVal7Yt2Pq".to_owned()),
        ("dangerous name", "dangerVal3Rp8WqZ".to_owned()),
        ("bad repository", "badRepoVal4Nc6Xx".to_owned()),
        ("dead socket", "deadSockVal8Jm3Qa".to_owned()),
        ("fake admin peer", "fakeAdmVal2Hs5Ty".to_owned()),
        ("deleted", "deletedVal9Qx2LmB".to_owned()),
        ("fake sandbox peer", "fakeSbxVal6Wd1Rk".to_owned()),
    ];
    let mut needles = needles();
    for (what, v) in &refused_values {
        needles.push(Needle::of(what, v));
    }
    needles.push(Needle::of("NUL value", "nulValue5Tg7Hj"));
    needles.push(Needle::of("non-UTF-8 value", "nonUtf8Val2Kd9"));

    // Every subcommand, successful.
    for args in [
        &["list", "--user", "mona"][..],
        &["list", "--user", "mona", "--json"],
        &["list", "--repo", "octo/hello"],
        &["list", "--repo", "octo/hello", "--json"],
        &["plan", "--user", "mona", "--repo", "octo/hello"],
        &["plan", "--user", "mona", "--repo", "octo/hello", "--json"],
        &[
            "access",
            "USER_TOKEN",
            "--user",
            "mona",
            "--repos",
            "octo/hello,octo/other",
        ],
        &["sandbox", "list"],
    ] {
        daemon.ok(&mut ev, args, None);
    }
    let deleted = &refused_values[6].1;
    daemon.ok(
        &mut ev,
        &["set", "GONE", "--user", "mona", "--repos", "octo/hello"],
        Some(deleted.as_bytes()),
    );
    daemon.ok(
        &mut ev,
        &["delete", "GONE", "--user", "mona", "--yes"],
        None,
    );
    let line = daemon.ok(
        &mut ev,
        &["sandbox", "create", "--user", "hubot", "--repo", "octo/x"],
        None,
    );
    let id = line.split_whitespace().next().unwrap().to_owned();
    daemon.ok(&mut ev, &["sandbox", "delete", &id], None);
    // An update from a file (the input file lives outside the scanned directories).
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), &seeds()[0].2).unwrap();
    // The CLI runs as nobody (the daemon's user): the value file is its to read.
    nix::unistd::chown(input.path(), Some(NOBODY.into()), None).unwrap();
    daemon.ok(
        &mut ev,
        &[
            "set",
            "USER_TOKEN",
            "--user",
            "mona",
            "--from-file",
            input.path().to_str().unwrap(),
        ],
        None,
    );

    // Refused sets: nothing of the value in any output.
    let user_set =
        |name: &'static str| vec!["set", name, "--user", "mona", "--repos", "octo/hello"];
    daemon.refused(
        &mut ev,
        &user_set("BIG"),
        Some(refused_values[0].1.as_bytes()),
        "limit",
    );
    daemon.refused(
        &mut ev,
        &user_set("BAD-NAME"),
        Some(refused_values[1].1.as_bytes()),
        "letters",
    );
    daemon.refused(
        &mut ev,
        &user_set("LD_PRELOAD"),
        Some(refused_values[2].1.as_bytes()),
        "dangerous",
    );
    daemon.refused(
        &mut ev,
        &["set", "X", "--user", "mona", "--repos", "not a repo"],
        Some(refused_values[3].1.as_bytes()),
        "repository",
    );
    daemon.refused(
        &mut ev,
        &user_set("NUL"),
        Some(b"nulValue5Tg7Hj\0tail"),
        "NUL",
    );
    daemon.refused(
        &mut ev,
        &user_set("BYTES"),
        Some(b"nonUtf8Val2Kd9\xff\xfe"),
        "UTF-8",
    );
    daemon.refused(
        &mut ev,
        &[
            "set",
            "X",
            "--user",
            "mona",
            "--from-file",
            "/nonexistent/value",
        ],
        None,
        "/nonexistent/value",
    );
    // A dead admin socket, and a fake admin peer answering garbage that echoes the request.
    let dead = w.join("dead-run");
    std::fs::create_dir(&dead).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dead.join("admin.sock")).unwrap());
    let out = daemon.cli_in(
        &mut ev,
        &dead,
        &user_set("X"),
        Some(refused_values[4].1.as_bytes()),
    );
    assert!(!out.status.success());
    let fake = w.join("fake-run");
    std::fs::create_dir(&fake).unwrap();
    let peer = fake_peer(
        &fake.join("admin.sock"),
        vec![
            http("200 OK", b"garbage {body} garbage"),
            http("200 OK", b"{\"echo\": {body}}"),
            http("500 Internal Server Error", b"<html>{body}</html>"),
        ],
    );
    // The CLI runs as nobody: it must reach the fake peer's socket (served by root, whom the
    // CLI trusts) to send it the value.
    std::fs::set_permissions(
        fake.join("admin.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    for _ in 0..3 {
        let out = daemon.cli_in(
            &mut ev,
            &fake,
            &user_set("X"),
            Some(refused_values[5].1.as_bytes()),
        );
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    peer.join().unwrap();

    // sandbox-init env: the export lines read back exactly (some values through files).
    let env_dir = w.join("env");
    std::fs::create_dir(&env_dir).unwrap();
    let spill = env_dir.join("spill");
    let socket = sandbox.join("secrets.sock");
    let out = init_run(
        &mut ev,
        &[
            ("SANDBOX_SECRETS_SOCKET", &socket),
            ("SANDBOX_INIT_SECRETS_DIR", &spill),
        ],
        &["env"],
        512,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Meant to hold values: kept out of the evidence, checked by reading it back.
    ev.items
        .retain(|(label, _)| !(label.starts_with("stdout of") && label.contains("\"env\"")));
    std::fs::write(env_dir.join("env-out"), &out.stdout).unwrap();
    let mut printer = String::from("eval \"$(cat \"$1\")\"\n");
    for (name, _, _) in seeds() {
        printer.push_str(&format!(
            "if [ -n \"${{{name}_FILE+x}}\" ]; then cat \"${name}_FILE\"; else printf %s \"${name}\"; fi; printf '\\000'\n"
        ));
    }
    let mut sh = Command::new("bash");
    sh.args(["-c", &printer, "bash"])
        .arg(env_dir.join("env-out"));
    let back = support::daemon::output(&mut sh, None);
    let want: Vec<u8> = seeds()
        .iter()
        .flat_map(|(_, _, v)| v.bytes().chain([0]))
        .collect();
    assert!(
        back.stdout == want,
        "env lines did not read back: {}",
        show(&sh, &back)
    );

    // sandbox-init exec, and its failures after the fetch (not found, not executable): its
    // trace log and errors hold no value.
    for (command, code) in [("true", 0), ("no-such-command-x", 127), ("/", 126)] {
        let out = init_run(
            &mut ev,
            &[
                ("SANDBOX_SECRETS_SOCKET", &socket),
                ("SANDBOX_INIT_SECRETS_DIR", &spill),
            ],
            &["exec", "--", command],
            512,
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `env --format json` and `dotenv` hold values by design: read back, kept out of the
    // evidence.
    let out = init_run(
        &mut ev,
        &[
            ("SANDBOX_SECRETS_SOCKET", &socket),
            ("SANDBOX_INIT_SECRETS_DIR", &spill),
        ],
        &["env", "--format", "json"],
        8192,
    );
    ev.items
        .retain(|(label, _)| !(label.starts_with("stdout of") && label.contains("\"env\"")));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, _, v) in seeds() {
        let file = format!("{name}_FILE");
        match (json.get(name), json.get(&file)) {
            (Some(got), _) => assert!(
                got.as_str() == Some(v.as_str()),
                "{name} did not read back from JSON"
            ),
            (None, Some(path)) => assert!(
                std::fs::read_to_string(path.as_str().unwrap()).unwrap() == v,
                "{name} did not read back from its file"
            ),
            (None, None) => panic!("{name} missing from env --format json"),
        }
    }

    // The init as PID 1's setup steps with faults. A dead sandbox socket:
    let dead_socket = w.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead_socket).unwrap());
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &dead_socket)],
        &["--", "true"],
        8192,
    );
    assert_init_failed(&out, "cannot connect");
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &dead_socket)],
        &["env"],
        8192,
    );
    assert_init_failed(&out, "cannot connect");
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &w.join("absent.sock"))],
        &["--secrets", "required", "--", "true"],
        8192,
    );
    assert_init_failed(&out, "does not exist");
    // Fake sandbox peers answering garbage that holds a value.
    let v = &refused_values[7].1;
    let garbage: Vec<(Vec<u8>, &str)> = vec![
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":["TOKEN={v}"]}}"#).into_bytes(), "secrets"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":{{"TOKEN":"{v}"}}}}"#).into_bytes(), "secrets"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":"{v}"}}"#).into_bytes(), "secrets"),
        (format!(r#"{{"sandbox":"{v}","repository":["{v}"],"secrets":[]}}"#).into_bytes(), "repository"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"A","value":["{v}"]}}]}}"#).into_bytes(), "value"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"A","value":"{v}","extra":"{v}"}}]}}"#).into_bytes(), "field"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","{v}":1,"secrets":[]}}"#).into_bytes(), "field"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"BAD-NAME","value":"{v}"}}]}}"#).into_bytes(), "letters"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"LD_PRELOAD","value":"{v}"}}]}}"#).into_bytes(), "dangerous"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"A","value":"{v}\u0000"}}]}}"#).into_bytes(), "NUL"),
        (format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"A","value":"{v}"}}"#).into_bytes(), "not a secrets answer"),
        (
            [
                format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{{"name":"A","value":"{v}"#).as_bytes(),
                b"\xff\"}]}",
            ]
            .concat(),
            "not a secrets answer",
        ),
    ];
    for (i, (body, why)) in garbage.iter().enumerate() {
        let socket = w.join(format!("fake-{i}.sock"));
        let peer = fake_peer(&socket, vec![http("200 OK", body)]);
        let out = init_run(
            &mut ev,
            &[("SANDBOX_SECRETS_SOCKET", &socket)],
            &["--", "true"],
            8192,
        );
        assert_init_failed(&out, why);
        peer.join().unwrap();
    }
    let socket = w.join("fake-html.sock");
    let peer = fake_peer(
        &socket,
        vec![http(
            "502 Bad Gateway",
            format!("<html>{v}</html>").as_bytes(),
        )],
    );
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &socket)],
        &["--", "true"],
        8192,
    );
    assert_init_failed(&out, "no JSON error body");
    peer.join().unwrap();

    // A corrupt config.json is kept aside (the init goes on), unusable directories stop it.
    let docker = w.join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        b"{\"auths\": {\"other.example\": {\"auth\": \"b3RoZXI6eA==\"}",
    )
    .unwrap();
    let out = init_run(
        &mut ev,
        &[
            ("SANDBOX_SECRETS_SOCKET", &sandbox.join("secrets.sock")),
            ("DOCKER_CONFIG", &docker),
        ],
        &["--", "true"],
        8192,
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = std::fs::read_dir(&docker)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("config.json.corrupt-")
        })
        .count();
    assert_eq!(kept, 1, "corrupt config.json not kept aside");
    let file = w.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = init_run(
        &mut ev,
        &[
            ("SANDBOX_SECRETS_SOCKET", &sandbox.join("secrets.sock")),
            ("DOCKER_CONFIG", &file.join("docker")),
        ],
        &["--", "true"],
        8192,
    );
    assert_init_failed(&out, "docker config directory");
    let out = init_run(
        &mut ev,
        &[
            ("SANDBOX_SECRETS_SOCKET", &sandbox.join("secrets.sock")),
            ("SANDBOX_INIT_SECRETS_DIR", &file.join("spill")),
        ],
        &["--", "true"],
        512,
    );
    assert_init_failed(&out, "oversized secrets");
    // Optional mode: garbage only warns, the child still starts (without secrets).
    let socket = w.join("fake-optional.sock");
    let peer = fake_peer(&socket, vec![http("200 OK", &garbage[0].0)]);
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &socket)],
        &["--secrets", "optional", "--", "true"],
        8192,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    peer.join().unwrap();

    // A tampered store: one ciphertext bit flipped while the daemon is stopped.
    daemon.stop();
    {
        let db = rusqlite::Connection::open(daemon.state().join("secrets.db")).unwrap();
        let mut ct: Vec<u8> = db
            .query_row(
                "SELECT ciphertext FROM secrets WHERE kind = 'repo' AND name = 'REPO_TOKEN'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        ct[3] ^= 0x01;
        db.execute(
            "UPDATE secrets SET ciphertext = ?1 WHERE kind = 'repo' AND name = 'REPO_TOKEN'",
            [ct],
        )
        .unwrap();
    }
    daemon.start().unwrap();
    let out = init_run(
        &mut ev,
        &[("SANDBOX_SECRETS_SOCKET", &sandbox.join("secrets.sock"))],
        &["--", "true"],
        8192,
    );
    assert_init_failed(&out, "REPO_TOKEN");
    for args in [
        &["list", "--repo", "octo/hello", "--json"][..],
        &["plan", "--user", "mona", "--repo", "octo/hello"],
    ] {
        daemon.cli(&mut ev, args, None);
    }
    daemon.stop();
    // Key file problems: a loose mode, a wrong key, no key.
    let key = daemon.state().join("key");
    let original = std::fs::read(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = daemon.start().unwrap_err();
    assert!(e.contains("0644"), "{e}");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(daemon.start().is_err());
    std::fs::remove_file(&key).unwrap();
    assert!(daemon.start().is_err());
    std::fs::write(&key, &original).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(NOBODY), Some(NOBODY)).unwrap();
    daemon.start().unwrap();
    daemon.stop();

    // Everything: every daemon log, the SQLite files, every file under the test's directories.
    for log in &daemon.inner.logs() {
        ev.add(log.display().to_string(), std::fs::read(log).unwrap());
    }
    check_files(&mut ev, &[daemon.inner.dir.path()], NOBODY);
    let (configs, spills) = check_files(&mut ev, &[w], 0);
    assert_eq!(configs, 1, "the config.json of the corrupt-file run");
    assert!(spills > 0, "the env run spilled nothing");
    let sqlite = ev
        .items
        .iter()
        .filter(|(l, _)| l.contains("secrets.db"))
        .count();
    assert!(sqlite >= 1, "no SQLite file searched");
    ev.assert_clean(&needles);
    eprintln!(
        "secrecy: every command: {} items, {} bytes searched for {} values",
        ev.items.len(),
        ev.bytes(),
        needles.len()
    );
}
