//! The real broker for the tests that drive it (`broker`, `broker_faults`,
//! `broker_fuzz`, `broker_hostile`, `broker_isolation`, `inject_e2e`, `secrecy`): a real `sandbox-secrets
//! serve` process in its own temp dirs, the real CLI, raw HTTP/1.1 over the unix sockets, and
//! readings of the daemon's memory and descriptors. Failures print the command, its output and
//! the daemon's log. It holds no test of its own and must not loosen what a test asserts.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sandbox-secrets");

/// One finished command with everything needed to explain a failure.
pub struct Run {
    pub cmd: String,
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn explain(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            self.cmd,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "expected success\n{}",
            self.explain()
        );
        self
    }
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Self {
        assert!(
            !self.out.status.success() && self.stderr().contains(needle),
            "expected failure mentioning {needle:?}\n{}",
            self.explain()
        );
        self
    }
}

pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    let shown = format!("{cmd:?}");
    let out = output(&mut cmd, stdin);
    Run { cmd: shown, out }
}

/// Runs `cmd` with `stdin` (bytes the command may refuse before reading) and returns its
/// output; `cmd` stays usable for a report.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        match child.stdin.take().unwrap().write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
    }
    child.wait_with_output().unwrap()
}

/// A daemon process with its own state and run directories; killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
    starts: usize,
    /// Put before the daemon's command line (e.g. `prlimit --nofile=...`).
    pub wrapper: Vec<String>,
    /// `SANDBOX_SECRETS_LOG` of the daemon; `traced()` raises it so a value grep sees every line.
    pub log_level: &'static str,
    /// When set, `cli` names the directories through `SANDBOX_SECRETS_RUN_DIR` and
    /// `SANDBOX_SECRETS_STATE_DIR` (as a host's profile would) instead of `--run-dir`.
    pub dirs_by_env: bool,
    /// Daemon and CLI run as `nobody` through `setpriv`, with a clean environment.
    pub nobody: bool,
    /// More arguments of `serve` (e.g. `--http 127.0.0.1:0`).
    pub serve_args: Vec<String>,
    /// Extra environment of the daemon (e.g. `SANDBOX_SECRETS_STORE` for a PostgreSQL store).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn admin(&self) -> PathBuf {
        self.run_dir().join("admin.sock")
    }

    /// A daemon not yet started; `state` defaults to `<tmp>/state`.
    pub fn unstarted(state: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Daemon {
            state: state.unwrap_or_else(|| dir.path().join("state")),
            log: dir.path().join("daemon-0.log"),
            dir,
            child: None,
            starts: 0,
            wrapper: Vec::new(),
            log_level: "debug",
            dirs_by_env: false,
            nobody: false,
            serve_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A started daemon running as `nobody` (uid and gid 65534, through `setpriv`) in
    /// directories owned by nobody, logging at trace; its CLI runs as nobody too (the CLI talks
    /// only to a daemon of root or its own uid). Needs root ([`nobody_unavailable`]).
    pub fn as_nobody() -> Self {
        let mut d = Self::unstarted(None);
        for (path, mode) in [(d.state.clone(), 0o700), (d.run_dir(), 0o755)] {
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        d.nobody = true;
        d.log_level = "trace";
        d.start().unwrap_or_else(|e| panic!("{e}"));
        d
    }

    /// Every log file of this daemon, one per start, oldest first.
    pub fn logs(&self) -> Vec<PathBuf> {
        (1..=self.starts)
            .map(|n| self.dir.path().join(format!("daemon-{n}.log")))
            .collect()
    }

    /// A started daemon logging at debug.
    pub fn new() -> Self {
        let mut d = Self::unstarted(None);
        d.start().unwrap_or_else(|e| panic!("{e}"));
        d
    }

    /// A started daemon logging at trace, for tests that grep its log for values.
    pub fn traced() -> Self {
        let mut d = Self::unstarted(None);
        d.log_level = "trace";
        d.start().unwrap_or_else(|e| panic!("{e}"));
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// Starts the daemon and waits until it listens; `Err` holds its status and log otherwise.
    pub fn start(&mut self) -> Result<(), String> {
        self.starts += 1;
        self.log = self.dir.path().join(format!("daemon-{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = match self.wrapper.split_first() {
            _ if self.nobody => {
                let mut c = as_nobody(&[BIN]);
                c.env_clear();
                c
            }
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.serve_args)
            .env("SANDBOX_SECRETS_LOG", self.log_level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "daemon exited with {status}\nlog:\n{}",
                    self.log_text()
                ));
            }
            if UnixStream::connect(self.admin()).is_ok() && self.log_text().contains("listening") {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("daemon did not come up\nlog:\n{}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `http://127.0.0.1:PORT` of the platform API of a daemon started with `--http`, from its
    /// log line.
    pub fn http_base(&self) -> String {
        let log = self.log_text();
        let at = log
            .find("platform API listening on ")
            .unwrap_or_else(|| panic!("no platform API in the log:\n{log}"));
        let rest = &log[at + "platform API listening on ".len()..];
        rest.split_whitespace().next().unwrap().to_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (hang guard 30 s); returns the log of this run.
    pub fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "daemon exit {status}\n{}",
                    self.log_text()
                );
                return self.log_text();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon ignored SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the daemon process is alive.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// `sandbox-secrets --run-dir R ARGS` (or with the directories in the environment, see
    /// `dirs_by_env`), value on stdin when given.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        run(self.cli_command(&self.run_dir(), args), stdin)
    }

    /// The command line of `sandbox-secrets ARGS` against `run_dir` (as nobody, at the daemon's
    /// log level, when the daemon runs as nobody).
    pub fn cli_command(&self, run_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = if self.nobody {
            let mut c = as_nobody(&[BIN]);
            c.env_clear().env("SANDBOX_SECRETS_LOG", self.log_level);
            c
        } else {
            Command::new(BIN)
        };
        if self.dirs_by_env {
            cmd.env("SANDBOX_SECRETS_RUN_DIR", run_dir)
                .env("SANDBOX_SECRETS_STATE_DIR", &self.state);
        } else {
            cmd.arg("--run-dir").arg(run_dir);
        }
        cmd.args(args);
        cmd
    }

    /// `set NAME --user U --repos R` with the value on stdin; panics unless it succeeds.
    pub fn set_user(&self, name: &str, user: &str, repos: &str, value: &str) {
        self.cli(
            &["set", name, "--user", user, "--repos", repos],
            Some(value.as_bytes()),
        )
        .ok();
    }

    /// `set NAME --repo R` with the value on stdin; panics unless it succeeds.
    pub fn set_repo(&self, name: &str, repo: &str, value: &str) {
        self.cli(&["set", name, "--repo", repo], Some(value.as_bytes()))
            .ok();
    }

    /// `list --json` of a scope, for before/after comparisons.
    pub fn list_json(&self, scope: &str, owner: &str) -> String {
        self.cli(&["list", scope, owner, "--json"], None)
            .ok()
            .stdout()
    }

    /// Creates a sandbox; returns (id, directory).
    pub fn sandbox(&self, user: &str, repo: &str) -> (String, PathBuf) {
        let out = self
            .cli(&["sandbox", "create", "--user", user, "--repo", repo], None)
            .ok();
        let line = out.stdout();
        let mut parts = line.trim().split(' ');
        let (Some(id), Some(dir), None) = (parts.next(), parts.next(), parts.next()) else {
            panic!("sandbox create printed {line:?}\n{}", out.explain());
        };
        (id.to_owned(), PathBuf::from(dir))
    }

    /// The daemon's peak resident memory (VmHWM), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Descriptors the daemon holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `raw` bytes (a whole request, maybe hostile) and reads the answer until the daemon
/// closes or `wait` passes; returns (status, body). Status 0: no HTTP answer at all. The write
/// happens on its own thread, so a daemon that answers before reading everything is seen.
pub fn exchange(socket: &Path, raw: Vec<u8>, wait: Duration) -> std::io::Result<(u16, String)> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&raw);
    });
    let mut raw_answer = Vec::new();
    let mut r = &s;
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw_answer.extend_from_slice(&buf[..n]),
            Err(e) if raw_answer.is_empty() => {
                let _ = s.shutdown(std::net::Shutdown::Both);
                let _ = writer.join();
                return Err(e);
            }
            Err(_) => break,
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    Ok(parse_answer(&raw_answer))
}

/// Splits a raw HTTP/1.1 answer into (status, body); handles Content-Length bodies.
pub fn parse_answer(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// A well-formed request with a body.
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `POST /v1/admin/<route>` with a JSON body; (status, body). Err: no answer (daemon gone).
pub fn admin_post(run_dir: &Path, route: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let (status, text) = exchange(
        &run_dir.join("admin.sock"),
        request("POST", &format!("/v1/admin/{route}"), body),
        Duration::from_secs(30),
    )?;
    if status == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no answer",
        ));
    }
    Ok((status, text))
}

/// `METHOD path` with an empty body over a unix socket; (status, body).
pub fn http(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    exchange(socket, request(method, path, b""), Duration::from_secs(30))
}

/// `GET /v1/secrets` through a sandbox directory; (status, body).
pub fn fetch(dir: &Path) -> (u16, String) {
    http(&dir.join("secrets.sock"), "GET", "/v1/secrets")
        .unwrap_or_else(|e| panic!("fetch via {}: {e}", dir.display()))
}

/// The (name, value) pairs a sandbox is served; panics unless 200.
pub fn served(dir: &Path) -> Vec<(String, String)> {
    let (status, body) = fetch(dir);
    assert_eq!(status, 200, "fetch via {}: {body}", dir.display());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Owned (name, value) pairs, to compare with `served`.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Fails naming `what` when `haystack` holds any of `values`.
#[track_caller]
pub fn assert_no_values(what: &str, haystack: &[u8], values: &[&str]) {
    for v in values {
        assert!(
            !haystack.windows(v.len()).any(|w| w == v.as_bytes()),
            "{what} holds the value {v:?}"
        );
    }
}

/// Permission bits of a path, not following a final symlink.
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Why commands cannot run as `nobody` here (not root, or no `setpriv`); `None` when they can.
pub fn nobody_unavailable() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root to act as another uid");
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv not installed");
    }
    None
}

/// `setpriv` running `args` as uid and gid 65534 with no supplementary groups.
pub fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args);
    c
}

/// `PRAGMA integrity_check` of the store; "ok" when sound.
pub fn integrity(state: &Path) -> String {
    let conn = rusqlite::Connection::open(state.join("secrets.db")).unwrap();
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("; ")
}

/// A small seeded generator (xorshift64*) so a failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `BROKER_TEST_SEED` when set, else from the OS; prints the seed.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("BROKER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::getrandom(&mut b).unwrap();
                u64::from_le_bytes(b) | 1
            });
        println!("{what}: seed {seed} (replay with BROKER_TEST_SEED={seed})");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// True when running as root (mounts, other uids).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One answer of [`tcp_http`].
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request over TCP to `base` (`http://host:port`), `Connection: close`, with the
/// extra header lines given; reads the whole answer.
pub fn tcp_http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    let host = base.strip_prefix("http://").expect("http:// base");
    let mut s = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("{host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    HttpAnswer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Creates sandboxes from `clients` threads until the daemon stops answering or `until`;
/// returns the ids whose create was acknowledged. `acked` counts them as they come (a killer
/// thread waits for the first before it strikes).
pub fn create_until(
    run_dir: &Path,
    clients: usize,
    until: std::time::Instant,
    acked: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let run_dir = run_dir.to_owned();
            let count = std::sync::Arc::clone(acked);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                let body = format!(r#"{{"user":"user{i}","repo":"octo/r{i}"}}"#);
                while std::time::Instant::now() < until {
                    match admin_post(&run_dir, "sandboxes/create", body.as_bytes()) {
                        Ok((200, text)) => {
                            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                            ids.push(v["id"].as_str().unwrap().to_owned());
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok((status, text)) => panic!("create answered {status}: {text}"),
                        Err(_) => break, // the daemon died with this create in flight
                    }
                }
                ids
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}
