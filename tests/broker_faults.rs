//! Fault tests of the broker against a real daemon: `kill -9` during concurrent writes, a full
//! disk under the state directory, and slow or never-finishing clients. Each test runs in its own
//! temp dirs, cleans up its processes and mounts on failure, and is bounded by hang guards only.
#![cfg(feature = "broker")]

mod support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::*;

// ------------------------------------------------------------------------------------------
// kill -9 during concurrent sets and deletes

/// What a client knows of one secret: the last acknowledged state, and an op sent but not
/// acknowledged when the daemon died (it may or may not have landed).
#[derive(Clone, Debug, Default)]
struct Known {
    acked: Option<String>,
    pending: Option<Option<String>>,
}

/// One writer: owns the repository secrets K0..K{KEYS} of `repo`, read back through `dir`.
struct Writer {
    repo: String,
    dir: PathBuf,
    keys: BTreeMap<String, Known>,
    /// Uses the real CLI instead of raw admin requests.
    cli: bool,
}

const WRITERS: usize = 6;
const KEYS: usize = 16;
const OPS_PER_CYCLE: usize = 1000;

fn value(rng: &mut Rng, writer: usize, cycle: usize, op: usize) -> String {
    // Distinctive head and tail, random length up to 40 KiB so a torn write would show.
    let len = 16 + rng.below(40 * 1024) as usize;
    let head = format!("w{writer}-c{cycle}-o{op}-");
    let fill = (b'a' + (op % 26) as u8) as char;
    let mut v = head.clone();
    while v.len() + head.len() < len {
        v.push(fill);
    }
    v.push_str(&head);
    v
}

enum Outcome {
    Acked,
    /// No answer: the daemon died with this op in flight.
    Lost,
}

/// Runs one set (`Some`) or delete (`None`) and says whether it was acknowledged.
fn apply(d: &DaemonRef, w: &Writer, name: &str, v: Option<&str>) -> Outcome {
    if w.cli {
        let r = match v {
            Some(v) => run_cli(d, &["set", name, "--repo", &w.repo], Some(v.as_bytes())),
            None => run_cli(d, &["delete", name, "--repo", &w.repo, "--yes"], None),
        };
        if r.out.status.success() {
            return Outcome::Acked;
        }
        let err = r.stderr();
        if v.is_none() && err.contains("no repository secret") {
            return Outcome::Acked; // deleting an absent secret: acknowledged no-op
        }
        assert!(
            err.contains("cannot connect")
                || err.contains("HTTP exchange")
                || err.contains("did not answer"),
            "unexpected refusal\n{}",
            r.explain()
        );
        return Outcome::Lost;
    }
    let (route, body) = match v {
        Some(v) => (
            "secrets/set",
            serde_json::json!({"name": name, "repo": w.repo, "value": v}),
        ),
        None => (
            "secrets/delete",
            serde_json::json!({"name": name, "repo": w.repo}),
        ),
    };
    match admin_post(&d.run_dir, route, body.to_string().as_bytes()) {
        Ok((200, _)) => Outcome::Acked,
        Ok((404, _)) if v.is_none() => Outcome::Acked,
        Ok((status, body)) => panic!("{route} {name} answered {status}: {body}"),
        Err(_) => Outcome::Lost,
    }
}

/// What the writer threads need of the daemon (the daemon itself stays with the killer).
#[derive(Clone)]
struct DaemonRef {
    run_dir: PathBuf,
}

fn run_cli(d: &DaemonRef, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("--run-dir").arg(&d.run_dir).args(args);
    run(cmd, stdin)
}

/// Checks what a restarted daemon serves against what the writers know, resolving each pending
/// op to what landed. Returns (acknowledged states checked, acknowledged states lost).
fn verify(writers: &mut [Writer]) -> (usize, usize) {
    let (mut checked, mut lost) = (0, 0);
    for w in writers.iter_mut() {
        let got: BTreeMap<String, String> = served(&w.dir).into_iter().collect();
        for name in got.keys() {
            assert!(
                w.keys.contains_key(name),
                "{} serves unknown {name}",
                w.repo
            );
        }
        for (name, k) in w.keys.iter_mut() {
            let now = got.get(name).cloned();
            checked += 1;
            let ok = now == k.acked || k.pending.as_ref().is_some_and(|p| *p == now);
            if !ok {
                lost += 1;
                eprintln!(
                    "LOST: {} {name}: serves {:?}, acknowledged {:?}, pending {:?}",
                    w.repo,
                    now.as_deref().map(short),
                    k.acked.as_deref().map(short),
                    k.pending.as_ref().map(|p| p.as_deref().map(short))
                );
            }
            k.acked = now;
            k.pending = None;
        }
    }
    (checked, lost)
}

fn short(v: &str) -> String {
    format!("{}..({} bytes)", &v[..v.len().min(24)], v.len())
}

#[test]
fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    let cycles: usize = std::env::var("BROKER_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut rng = Rng::from_env("kill -9");
    let mut d = Daemon::new();
    let dref = DaemonRef {
        run_dir: d.run_dir(),
    };
    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|i| {
            let repo = format!("fault/w{i}");
            let (_, dir) = d.sandbox("mona", &repo);
            Writer {
                repo,
                dir,
                keys: (0..KEYS)
                    .map(|k| (format!("K{k}"), Known::default()))
                    .collect(),
                cli: i == 0,
            }
        })
        .collect();

    let started = Instant::now();
    let (mut acked_total, mut checked_total, mut lost_total) = (0usize, 0usize, 0usize);
    for cycle in 0..cycles {
        // Kill after a random number of acknowledged ops (0 = right after the start), plus a
        // random few hundred microseconds so the kill lands inside a request or a commit.
        let kill_after = rng.below(OPS_PER_CYCLE as u64) as usize;
        let jitter = Duration::from_micros(rng.below(3000));
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let seeds: Vec<u64> = (0..WRITERS).map(|_| rng.next() | 1).collect();
        let shared: Vec<Arc<Mutex<Writer>>> =
            writers.drain(..).map(|w| Arc::new(Mutex::new(w))).collect();
        let threads: Vec<_> = shared
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (w, acked, stop, dref) = (
                    Arc::clone(w),
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                    dref.clone(),
                );
                let mut rng = Rng(seeds[i]);
                std::thread::spawn(move || {
                    let mut w = w.lock().unwrap();
                    for op in 0..OPS_PER_CYCLE / WRITERS {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let name = format!("K{}", rng.below(KEYS as u64));
                        let v = (rng.below(10) < 7).then(|| value(&mut rng, i, cycle, op));
                        match apply(&dref, &w, &name, v.as_deref()) {
                            Outcome::Acked => {
                                w.keys.get_mut(&name).unwrap().acked = v;
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Outcome::Lost => {
                                w.keys.get_mut(&name).unwrap().pending = Some(v);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < kill_after && !threads.iter().all(|t| t.is_finished())
        {
            assert!(
                Instant::now() < deadline,
                "writers stalled\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(jitter);
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("writer thread");
        }
        writers = shared
            .into_iter()
            .map(|w| Arc::try_unwrap(w).ok().unwrap().into_inner().unwrap())
            .collect();
        let n = acked.load(Ordering::SeqCst);
        acked_total += n;

        let check = integrity(&d.state);
        assert_eq!(check, "ok", "integrity_check after kill in cycle {cycle}");
        d.start()
            .unwrap_or_else(|e| panic!("restart after cycle {cycle}: {e}"));
        let log = d.log_text();
        assert!(
            !log.contains("does not open"),
            "a half-written secret after cycle {cycle}:\n{log}"
        );
        let (checked, lost) = verify(&mut writers);
        checked_total += checked;
        lost_total += lost;
        println!(
            "cycle {cycle}: killed after {n} acknowledged ops (target {kill_after}), {checked} secrets checked, {lost} lost"
        );
        assert_eq!(lost, 0, "acknowledged writes lost in cycle {cycle}");
    }
    d.stop();
    println!(
        "kill -9: {cycles} cycles survived, {acked_total} acknowledged ops, {checked_total} states checked, {lost_total} acknowledged writes lost, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------------------------------
// a full disk

/// A tmpfs mounted on a fresh directory, unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes filler files until the file system refuses; returns them.
fn fill(dir: &Path) -> Vec<PathBuf> {
    use std::io::Write;
    let mut files = Vec::new();
    let chunk = vec![0x5au8; 64 * 1024];
    'outer: for i in 0.. {
        let path = dir.join(format!("filler-{i}"));
        let mut f = match std::fs::File::create(&path) {
            Ok(f) => f,
            Err(_) => break,
        };
        files.push(path);
        loop {
            if f.write_all(&chunk).is_err() || f.sync_all().is_err() {
                break;
            }
            if i > 0 {
                continue;
            }
            // One big file first, then small ones to use up the last blocks.
            if f.metadata().map(|m| m.len()).unwrap_or(0) > 64 * 1024 * 1024 {
                continue 'outer;
            }
        }
        if i > 64 {
            break 'outer;
        }
    }
    // Last bytes one at a time.
    if let Ok(mut f) = std::fs::File::create(dir.join("filler-last")) {
        files.push(dir.join("filler-last"));
        while f.write_all(b"x").is_ok() && f.sync_all().is_ok() {}
    }
    files
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    if !is_root() {
        support::skip("needs root to mount a tmpfs");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let mnt = match Tmpfs::mount(&base.path().join("state"), "4m") {
        Ok(m) => m,
        Err(e) => {
            support::skip(&format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    let mut d = Daemon::unstarted(Some(mnt.0.clone()));
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let (_, dir) = d.sandbox("mona", "disk/full");
    let before = "before-full-VALUE";
    d.cli(
        &["set", "KEPT", "--repo", "disk/full"],
        Some(before.as_bytes()),
    )
    .ok();
    d.cli(
        &["set", "GONE", "--repo", "disk/full"],
        Some(b"to-delete-VALUE"),
    )
    .ok();

    let fillers = fill(&mnt.0);
    assert!(!fillers.is_empty());
    // Every change is refused with a message naming the store step and the disk; nothing
    // acknowledged changes. Try a few sizes: a small value can fit a page still free in the WAL.
    let mut refused = 0;
    for (i, len) in [40_000usize, 20_000, 8_000, 1_000, 48 * 1024 - 64]
        .iter()
        .enumerate()
    {
        let v = format!("during-full-{i}-{}", "y".repeat(*len));
        let r = d.cli(
            &["set", &format!("NEW{i}"), "--repo", "disk/full"],
            Some(v.as_bytes()),
        );
        if r.out.status.success() {
            continue;
        }
        refused += 1;
        let err = r.stderr();
        assert!(
            err.contains("disk is full") && err.contains("write secret"),
            "unclear full-disk error\n{}",
            r.explain()
        );
        assert!(
            !err.contains("during-full"),
            "error quotes the value\n{}",
            r.explain()
        );
        // The same refusal over the admin API is 507 Insufficient Storage, not a generic 500.
        let body = serde_json::json!({"name": format!("RAW{i}"), "repo": "disk/full", "value": v});
        let (status, answer) = admin_post(&d.run_dir(), "secrets/set", body.to_string().as_bytes())
            .expect("admin answer during a full disk");
        assert_eq!(status, 507, "{answer}");
        assert!(
            answer.contains("disk is full") && !answer.contains("during-full"),
            "{answer}"
        );
    }
    assert!(
        refused > 0,
        "no write was refused on a full disk\n{}",
        d.log_text()
    );
    let r = d.cli(
        &["set", "KEPT", "--repo", "disk/full"],
        Some("x".repeat(40_000).as_bytes()),
    );
    assert!(!r.out.status.success(), "{}", r.explain());
    // Whatever was acknowledged is served, the refused update is not.
    let now: BTreeMap<String, String> = served(&dir).into_iter().collect();
    assert_eq!(now.get("KEPT").map(String::as_str), Some(before));
    assert!(d.alive(), "daemon died on a full disk\n{}", d.log_text());

    // Space back: the same daemon works again, and a restart keeps everything acknowledged.
    for f in &fillers {
        let _ = std::fs::remove_file(f);
    }
    d.cli(
        &["set", "AFTER", "--repo", "disk/full"],
        Some(b"after-free-VALUE"),
    )
    .ok();
    d.cli(&["delete", "GONE", "--repo", "disk/full", "--yes"], None)
        .ok();
    let expect = served(&dir);
    d.stop();
    assert_eq!(integrity(&mnt.0), "ok");
    d.start().unwrap();
    assert_eq!(served(&dir), expect);
    let got: BTreeMap<String, String> = expect.into_iter().collect();
    assert_eq!(got.get("KEPT").map(String::as_str), Some(before));
    assert_eq!(
        got.get("AFTER").map(String::as_str),
        Some("after-free-VALUE")
    );
    assert!(!got.contains_key("GONE"));
    d.stop();
    drop(d);
    drop(mnt);
}

// ------------------------------------------------------------------------------------------
// slow and never-finishing clients

/// Connects without blocking (a full backlog answers EAGAIN instead of blocking the test).
fn connect_nonblocking(path: &Path) -> Option<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new(path).ok()?;
    use std::os::fd::AsRawFd;
    connect(fd.as_raw_fd(), &addr).ok()?;
    Some(UnixStream::from(fd))
}

/// Still open from the daemon's side: no EOF and no error waiting.
fn still_open(s: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    matches!(
        recv(
            s.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Sandbox connections served at once per socket (daemon::Config's default).
const SANDBOX_LIMIT: usize = 32;

#[test]
fn a_flooded_sandbox_socket_does_not_starve_another_sandbox() {
    // A soft descriptor limit of 1024, as systemd gives a service: the daemon must raise it, or
    // one sandbox at its connection limit runs the whole daemon out of descriptors.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 4096 {
        support::skip(&format!(
            "hard descriptor limit {hard} is too low for a flood of 1024"
        ));
        return;
    }
    let mut d = Daemon::unstarted(None);
    d.wrapper = vec![
        "prlimit".into(),
        format!("--nofile=1024:{hard}"),
        "--".into(),
    ];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    d.cli(
        &["set", "A_ONLY", "--repo", "flood/a"],
        Some(b"flood-a-VALUE"),
    )
    .ok();
    d.cli(
        &["set", "B_ONLY", "--repo", "flood/b"],
        Some(b"flood-b-VALUE"),
    )
    .ok();
    let (_, a) = d.sandbox("mona", "flood/a");
    let (_, b) = d.sandbox("mona", "flood/b");
    // Descriptors at rest: the lowest of a few readings (a CLI connection may still be closing).
    let baseline = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            d.open_fds()
        })
        .min()
        .unwrap();

    // The test itself needs more than 1024 descriptors.
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    // Flood A past its limit with connections that send half a request and then nothing.
    let extra = 200;
    let mut flood = Vec::new();
    for _ in 0..SANDBOX_LIMIT + extra {
        if let Some(mut s) = connect_nonblocking(&a.join("secrets.sock")) {
            use std::io::Write;
            let _ = s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n");
            flood.push(s);
        }
    }
    assert!(
        flood.len() >= SANDBOX_LIMIT + 32,
        "only {} flood connections",
        flood.len()
    );
    // The daemon takes up to its limit; the rest wait in the backlog. (A few of slack: a
    // connection can be closing while another is accepted.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.open_fds() < baseline + SANDBOX_LIMIT - 8 {
        assert!(
            Instant::now() < deadline,
            "daemon holds {} descriptors, wanted {} + {SANDBOX_LIMIT}\n{}",
            d.open_fds(),
            baseline,
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // B is served while A is at its limit, and A's flood is still held open afterwards (it was
    // not a timeout that freed the daemon).
    assert_eq!(served(&b), vec![("B_ONLY".into(), "flood-b-VALUE".into())]);
    d.cli(&["list", "--repo", "flood/a"], None).ok();
    let held = d.open_fds().saturating_sub(baseline);
    let open = flood.iter().filter(|s| still_open(s)).count();
    assert!(
        held <= SANDBOX_LIMIT + 4,
        "per-socket limit not kept: {held} connections held"
    );
    assert!(
        open >= SANDBOX_LIMIT - 8,
        "flood was dropped before B was checked ({open} open)"
    );
    assert!(!d.log_text().contains("accept failed"), "{}", d.log_text());
    drop(flood);
    // A serves again once the flood is gone.
    assert_eq!(served(&a), vec![("A_ONLY".into(), "flood-a-VALUE".into())]);
}

#[test]
fn half_sent_requests_are_cut_off_and_do_not_block_the_admin_socket() {
    use std::io::Write;
    let d = Daemon::new();
    let (_, dir) = d.sandbox("mona", "slow/a");
    // More stuck admin clients than the admin connection limit (16): headers sent, body
    // promised but never finished.
    let stuck: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(d.admin()).unwrap();
            s.write_all(
                b"POST /v1/admin/secrets/list HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"re",
            )
            .unwrap();
            s
        })
        .collect();
    // Headers never finished, on the sandbox socket and the admin socket.
    let mut half_headers = Vec::new();
    for path in [dir.join("secrets.sock"), d.admin()] {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        half_headers.push(s);
    }
    // Idle after a complete request (keep-alive).
    let mut idle = UnixStream::connect(dir.join("secrets.sock")).unwrap();
    idle.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    // The sandbox is served at once; the admin CLI gets through once the body deadline frees a
    // slot (its own 30 s timeout is the hang guard).
    assert_eq!(fetch(&dir).0, 200);
    d.cli(&["sandbox", "list"], None).ok();

    // Each stuck body gets a 408 with a JSON error; half headers and idle connections are
    // closed by the daemon. Reads are bounded (hang guards).
    for mut s in stuck {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut raw);
        let (status, body) = parse_answer(&raw);
        assert_eq!(status, 408, "{}", String::from_utf8_lossy(&raw));
        assert!(
            body.contains("\"error\"") && body.contains("not received"),
            "{body}"
        );
    }
    for mut s in half_headers.into_iter().chain([idle]) {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Vec::new();
        let r = std::io::Read::read_to_end(&mut s, &mut raw);
        assert!(r.is_ok(), "connection not closed by the daemon: {r:?}");
    }
    assert_eq!(fetch(&dir).0, 200);
}
