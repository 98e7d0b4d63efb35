//! Many broker hosts on one PostgreSQL store: real daemons, each with its own state directory,
//! run directory and `--host-id`, sharing a fresh database of the test cluster
//! (`scripts/postgres.sh`). A change made through one broker reaches the sandboxes and watchers
//! of the others; each broker serves and deletes only its own host's sandboxes; a broker cut
//! off from the store (a TCP relay between it and PostgreSQL, closed) keeps serving its answers,
//! refuses admin changes with a 503 and converges when the connection is back; PostgreSQL
//! restarted under two brokers loses no acknowledged write; `kill -9` during writes through two
//! hosts loses no acknowledged write; a key rotated on one host is refused by another, naming
//! the key id, until the key is provisioned there.
//!
//! The `containers_*` tests run the five cases of issue 12 with each host a docker container on
//! a private network (`pg-net-<pid>-<case>`, an image `pg-multihost:<pid>` `FROM scratch` with
//! this build's binaries, nothing pulled; all removed on drop) and the real init in containers
//! mounting their sandbox directory: a change shared and a host cut off (cases 1 and 4), a host
//! killed and started again (2), PostgreSQL restarted under them (3), `docker kill` during 1,024
//! writes (5).
#![cfg(feature = "postgres")]

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::postgres::{parts, TestDb};

const VALUES: [&str; 4] = ["v1-VALUE", "v2-VALUE", "v3-VALUE", "from-b-VALUE"];

/// A broker "host" on `url`, not started; its state directory holds `key` when given (every
/// broker of one store needs the same key set: docs/operations.md).
fn host(url: &str, id: &str, key: Option<&Path>) -> Daemon {
    let mut d = Daemon::unstarted(None);
    d.log_level = "trace";
    d.env.push(("SANDBOX_SECRETS_STORE".into(), url.to_owned()));
    d.env
        .push(("SANDBOX_SECRETS_HOST_ID".into(), id.to_owned()));
    if let Some(key) = key {
        std::fs::create_dir(&d.state).unwrap();
        std::fs::set_permissions(&d.state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(key, d.state.join("key")).unwrap();
    }
    d
}

/// Host A started on a new store, and host B (not started) holding A's key.
fn two_hosts(db: &TestDb, b_url: &str) -> (Daemon, Daemon) {
    two_hosts_at(&db.url, b_url)
}

fn two_hosts_on(url: &str) -> (Daemon, Daemon) {
    two_hosts_at(url, url)
}

fn two_hosts_at(a_url: &str, b_url: &str) -> (Daemon, Daemon) {
    let mut a = host(a_url, "host-a", None);
    a.start().unwrap_or_else(|e| panic!("{e}"));
    let b = host(b_url, "host-b", Some(&a.state.join("key")));
    (a, b)
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.cli(&["status", "--json"], None).ok().stdout()).unwrap()
}

/// `GET /v1/secrets` with extra header lines: (status, head, body).
fn get(socket: &Path, extra: &str) -> (u16, String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(
        s,
        "GET /v1/secrets HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

fn etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag in {head}"))
}

fn logs_hold_no_value(hosts: &[&Daemon]) {
    for d in hosts {
        for log in d.logs() {
            let text = std::fs::read(&log).unwrap_or_default();
            assert_no_values(&log.display().to_string(), &text, &VALUES);
        }
    }
}

#[test]
fn a_change_on_one_host_reaches_the_sandboxes_and_watchers_of_another() {
    let Some(db) = TestDb::new() else { return };
    let (a, mut b) = two_hosts(&db, &db.url);
    a.set_repo("DB", "octo/a", "v1-VALUE");
    b.start().unwrap_or_else(|e| panic!("{e}"));
    let (_, on_b) = b.sandbox("mona", "octo/a");
    let (_, on_a) = a.sandbox("mona", "octo/a");
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));

    // A watcher on B holds the current answer; a set through A wakes it with the new one.
    let socket = on_b.join("secrets.sock");
    let (code, head, _) = get(&socket, "");
    assert_eq!(code, 200);
    let tag = etag(&head);
    let watcher = std::thread::spawn(move || {
        let started = Instant::now();
        let r = get(
            &socket,
            &format!("If-None-Match: {tag}\r\nPrefer: wait=30\r\n"),
        );
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let set = Instant::now();
    a.set_repo("DB", "octo/a", "v2-VALUE");
    let ((code, _, body), waited) = watcher.join().unwrap();
    assert_eq!(
        code, 200,
        "the watch on host B ended without the change: {body}"
    );
    assert!(body.contains("v2-VALUE"), "{body}");
    eprintln!(
        "change on host A seen by a watcher on host B {:?} after the set began (watch open {waited:?})",
        set.elapsed()
    );
    // B caught up from the rows written since it last read, not by reading everything.
    assert!(
        b.log_text().contains("only the rows written since"),
        "{}",
        b.log_text()
    );
    // And the other way: a set through B reaches A's sandbox.
    b.set_user("TOKEN", "mona", "octo/a", "from-b-VALUE");
    assert!(
        eventually(Duration::from_secs(10), || served(&on_a)
            == pairs(&[("DB", "v2-VALUE"), ("TOKEN", "from-b-VALUE")])),
        "host A still serves {:?}",
        served(&on_a)
    );
    logs_hold_no_value(&[&a, &b]);
}

#[test]
fn a_broker_serves_only_its_hosts_sandboxes_and_refuses_deleting_anothers() {
    let Some(db) = TestDb::new() else { return };
    let (mut a, mut b) = two_hosts(&db, &db.url);
    b.start().unwrap_or_else(|e| panic!("{e}"));
    a.set_repo("DB", "octo/a", "v1-VALUE");
    let (sa, dir_a) = a.sandbox("mona", "octo/a");
    let (sb, dir_b) = b.sandbox("mona", "octo/a");
    // Each socket lives on its own host only.
    assert!(dir_a.join("secrets.sock").exists());
    assert!(!b.run_dir().join("sandboxes").join(&sa).exists());
    assert!(!a.run_dir().join("sandboxes").join(&sb).exists());
    assert!(
        eventually(Duration::from_secs(10), || {
            b.cli(&["sandbox", "list"], None)
                .ok()
                .stdout()
                .contains(&sa)
        }),
        "host B never listed host A's sandbox"
    );
    let table = b.cli(&["sandbox", "list"], None).ok().stdout();
    assert!(table.lines().next().unwrap().contains("HOST"), "{table}");
    let line_a = table.lines().find(|l| l.contains(&sa)).unwrap();
    assert!(line_a.contains("host-a"), "{table}");
    let line_b = table.lines().find(|l| l.contains(&sb)).unwrap();
    assert!(line_b.contains("host-b"), "{table}");

    // Deleting A's sandbox through B is refused naming host A; nothing changes.
    b.cli(&["sandbox", "delete", &sa], None)
        .fails_with("belongs to host host-a");
    assert_eq!(served(&dir_a), pairs(&[("DB", "v1-VALUE")]));

    let st = status(&b);
    assert_eq!(st["store"], "postgres", "{st}");
    assert_eq!(st["connection"], "connected", "{st}");
    assert_eq!(st["schema_version"], 4, "{st}");
    assert_eq!(st["host_id"], "host-b", "{st}");
    assert_eq!(st["sandboxes_here"], 1, "{st}");
    assert_eq!(st["sandboxes_total"], 2, "{st}");
    let held: Vec<&str> = st["keys"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(held.contains(&status(&a)["keys"]["active"].as_str().unwrap()));
    assert!(
        !st["location"]
            .as_str()
            .unwrap()
            .contains(&parts(&db.url).password),
        "the store's password shown in status: {st}"
    );
    let text = b.cli(&["status"], None).ok().stdout();
    for word in ["postgres", "connected", "host-b", "1 on this host"] {
        assert!(text.contains(word), "{word} not in:\n{text}");
    }

    // A restart of B brings its own socket back, not A's.
    b.stop();
    b.start().unwrap();
    assert_eq!(served(&dir_b), pairs(&[("DB", "v1-VALUE")]));
    assert!(!b.run_dir().join("sandboxes").join(&sa).exists());
    // B deletes its own sandbox; A sees it gone.
    b.cli(&["sandbox", "delete", &sb], None).ok();
    assert!(eventually(Duration::from_secs(10), || {
        !a.cli(&["sandbox", "list"], None)
            .ok()
            .stdout()
            .contains(&sb)
    }));
    assert!(
        a.log_text().contains("removed=1"),
        "the deletion did not reach A incrementally:\n{}",
        a.log_text()
    );

    let log = a.stop();
    assert!(
        !log.contains(&parts(&db.url).password),
        "password in the log"
    );
    logs_hold_no_value(&[&a, &b]);
}

/// A TCP relay to PostgreSQL that can be cut (every connection shut, new ones dropped) and
/// restored: the network between one broker and the store.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(target: (String, u16)) -> Self {
        Self::to_from("127.0.0.1".into(), target)
    }

    /// A relay listening on `addr` (any port).
    fn to_from(addr: String, target: (String, u16)) -> Self {
        let listener = TcpListener::bind((addr.as_str(), 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, c) = (Arc::clone(&open), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, open, conns }
    }
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[test]
fn cut_off_from_the_store_a_broker_serves_its_answers_refuses_changes_and_converges() {
    let Some(db) = TestDb::new() else { return };
    let p = parts(&db.url);
    let relay = Relay::to((p.host.clone(), p.port));
    let mut via = parts(&db.url);
    via.host = "127.0.0.1".into();
    via.port = relay.port;
    let (a, mut b) = two_hosts(&db, &via.url());
    a.set_repo("DB", "octo/a", "v1-VALUE");
    b.start().unwrap_or_else(|e| panic!("{e}"));
    let (_, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));

    relay.cut();
    assert!(
        eventually(Duration::from_secs(20), || status(&b)["connection"]
            .as_str()
            .unwrap()
            .starts_with("disconnected")),
        "host B never noticed: {}",
        status(&b)
    );
    // Its sandboxes keep their answers; an admin change through it fails clearly, 503.
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));
    b.cli(&["set", "DB", "--repo", "octo/a"], Some(b"v3-VALUE"))
        .fails_with("store unavailable");
    let (code, body) = admin_post(
        &b.run_dir(),
        "secrets/set",
        br#"{"name":"DB","repo":"octo/a","value":"v3-VALUE"}"#,
    )
    .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    // Meanwhile a change through A.
    a.set_repo("DB", "octo/a", "v2-VALUE");
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));

    relay.restore();
    assert!(
        eventually(Duration::from_secs(30), || served(&on_b)
            == pairs(&[("DB", "v2-VALUE")])),
        "host B did not converge: {:?}\n{}",
        served(&on_b),
        b.log_text()
    );
    assert_eq!(status(&b)["connection"], "connected");
    // Nothing of the refused change was applied anywhere; B writes again.
    assert_eq!(a.list_json("--repo", "octo/a").matches("\"DB\"").count(), 1);
    b.set_repo("DB", "octo/a", "v3-VALUE");
    let (_, on_a) = a.sandbox("mona", "octo/a");
    assert!(eventually(Duration::from_secs(10), || served(&on_a)
        == pairs(&[("DB", "v3-VALUE")])));
    let log = b.log_text();
    assert!(log.contains("store connection lost"), "{log}");
    assert!(log.contains("store connection back"), "{log}");
    logs_hold_no_value(&[&a, &b]);
}

#[test]
fn a_key_rotated_on_one_host_is_refused_by_another_naming_it_until_provisioned() {
    let Some(db) = TestDb::new() else { return };
    let (a, mut b) = two_hosts(&db, &db.url);
    a.set_repo("DB", "octo/a", "v1-VALUE");
    b.start().unwrap_or_else(|e| panic!("{e}"));
    let (_, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));

    let out = a.cli(&["key", "rotate"], None).ok().stdout();
    let new = status(&a)["keys"]["active"].as_str().unwrap().to_owned();
    assert!(out.contains(&new), "{out}");
    a.set_repo("DB", "octo/a", "v2-VALUE");
    // B does not hold the new key: it says which, keeps serving what it had, and refuses
    // changes rather than sealing over rows it cannot read.
    assert!(
        eventually(Duration::from_secs(15), || b.log_text().contains(&new)),
        "host B never named key id {new}:\n{}",
        b.log_text()
    );
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));
    let refused = b.cli(&["set", "X", "--repo", "octo/a"], Some(b"v3-VALUE"));
    assert!(!refused.out.status.success(), "{}", refused.explain());
    assert!(refused.stderr().contains(&new), "{}", refused.explain());

    // Provisioned (docs/operations.md): the new key copied to B as a retired key file. B
    // converges without a restart and seals with the new key from then on.
    std::fs::copy(
        a.state.join("key"),
        b.state.join(format!("key.retired-{new}")),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || served(&on_b)
            == pairs(&[("DB", "v2-VALUE")])),
        "host B did not converge after the key arrived: {:?}",
        served(&on_b)
    );
    assert_eq!(status(&b)["keys"]["active"], new.as_str());
    b.set_repo("DB", "octo/a", "v3-VALUE");
    let (_, on_a) = a.sandbox("mona", "octo/a");
    assert!(eventually(Duration::from_secs(10), || served(&on_a)
        == pairs(&[("DB", "v3-VALUE")])));
    let st = status(&a);
    assert_eq!(
        st["keys"]["rows"][&new],
        st["keys"]["rows"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        "{st}"
    );
    logs_hold_no_value(&[&a, &b]);
}

/// Runs `strike` on a thread once `acked` reaches `n` (or after 60 s): mid-run, whatever the
/// machine's speed.
fn after_acks(
    acked: &Arc<std::sync::atomic::AtomicUsize>,
    n: usize,
    strike: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let acked = Arc::clone(acked);
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        strike();
    })
}

/// 16 clients, 8 per host (`runs`: the admin run directories of A and B), each writing its own
/// names (64 each: 1,024 writes) on 16 repositories (the limit is 100 per repository), until
/// its host dies. Returns the acknowledged (client, index) pairs; `acked_on_a` counts A's.
fn write_through_two_hosts(
    runs: &[PathBuf; 2],
    acked_on_a: &Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<(usize, i32)> {
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let run = runs[c % 2].clone();
            let acked_on_a = Arc::clone(acked_on_a);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..64 {
                    let body =
                        format!(r#"{{"name":"N{i}","repo":"octo/w{c}","value":"w{c}-{i}-VALUE"}}"#);
                    match admin_post(&run, "secrets/set", body.as_bytes()) {
                        Ok((200, _)) => {
                            acked.push((c, i));
                            if c % 2 == 0 {
                                acked_on_a.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok((code, text)) => panic!("set answered {code}: {text}"),
                        Err(_) => break, // this host died with the write in flight
                    }
                }
                acked
            })
        })
        .collect();
    clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Admin writes spread over two hosts from 16 clients while one host is killed with SIGKILL:
/// every write acknowledged (by either host) is in the store afterwards, with its value.
#[test]
fn kill_9_of_a_host_during_concurrent_writes_on_two_hosts_loses_no_acknowledged_write() {
    let Some(db) = TestDb::new() else { return };
    let (mut a, mut b) = two_hosts(&db, &db.url);
    b.start().unwrap_or_else(|e| panic!("{e}"));
    let runs = [a.run_dir(), b.run_dir()];
    let pid_a = a.pid();
    // A is killed once it has acknowledged 40 writes: mid-run, whatever the machine's speed.
    let acked_on_a = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = after_acks(&acked_on_a, 40, move || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid_a),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let acked = write_through_two_hosts(&runs, &acked_on_a);
    killer.join().unwrap();
    a.kill9();
    let on_a = acked.iter().filter(|(c, _)| c % 2 == 0).count();
    assert!(
        on_a > 0 && on_a < 512,
        "the kill must land mid-run: {on_a} acked on A"
    );
    // Read back through B, and through A restarted.
    a.start().unwrap();
    for d in [&a, &b] {
        for c in 0..16 {
            let (_, dir) = d.sandbox("mona", &format!("octo/w{c}"));
            let got: std::collections::HashMap<String, String> = served(&dir).into_iter().collect();
            for (_, i) in acked.iter().filter(|(cc, _)| *cc == c) {
                assert_eq!(
                    got.get(&format!("N{i}")).map(String::as_str),
                    Some(format!("w{c}-{i}-VALUE").as_str()),
                    "acknowledged write N{i} of octo/w{c} lost"
                );
            }
        }
    }
    eprintln!(
        "kill -9 of host A during writes: {} acknowledged writes over two hosts, all present",
        acked.len()
    );
    assert!(!a.log_text().contains("row refused"), "{}", a.log_text());
}

// ------------------------------------------------------------------------------------------
// The same, with each broker host a docker container on a private network

/// Docker resources of one test, all named `pg-...-<pid>-<case>` (so neither two runs nor two
/// tests of one run clash), removed on drop, failed or not; the image `pg-multihost:<pid>` is
/// shared by the tests of one run and removed when the last one using it ends.
struct Docker {
    tag: String,
    image: String,
    network: String,
    containers: Mutex<Vec<String>>,
}

/// How many tests of this run use the image now.
static IMAGE_USERS: Mutex<usize> = Mutex::new(0);

fn docker(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    out
}

#[track_caller]
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Builds `image` (no pull: `FROM scratch` with this build's binaries, the libraries they link
/// and Debian's static busybox).
fn build_image(image: &str) {
    let ctx = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, String)> = vec![
        (
            env!("CARGO_BIN_EXE_sandbox-secrets").into(),
            "/bin/sandbox-secrets".into(),
        ),
        (
            env!("CARGO_BIN_EXE_sandbox-init").into(),
            "/bin/sandbox-init".into(),
        ),
        ("/bin/busybox".into(), "/bin/busybox".into()),
    ];
    for bin in [
        env!("CARGO_BIN_EXE_sandbox-secrets"),
        env!("CARGO_BIN_EXE_sandbox-init"),
    ] {
        let ldd = std::process::Command::new("ldd").arg(bin).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                let real = std::fs::canonicalize(p).unwrap();
                files.push((real.display().to_string(), p.to_owned()));
            }
        }
    }
    // One tree, one layer.
    let root = ctx.path().join("root");
    for (from, to) in &files {
        let dest = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from, &dest).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY root/ /\n",
    )
    .unwrap();
    docker_ok(&[
        "build",
        "-q",
        "-t",
        image,
        &ctx.path().display().to_string(),
    ]);
}

impl Docker {
    /// The image (built by the first test of the run that needs it) and a private network for
    /// the test `case`; `None` (after `skip`) without docker.
    fn new(case: &str) -> Option<Self> {
        if !docker(&["info"]).status.success() {
            support::skip("docker is not available");
            return None;
        }
        if !Path::new("/bin/busybox").exists() {
            support::skip("busybox-static is not installed");
            return None;
        }
        let dk = Docker {
            tag: format!("{}-{case}", std::process::id()),
            image: format!("pg-multihost:{}", std::process::id()),
            network: format!("pg-net-{}-{case}", std::process::id()),
            containers: Mutex::new(Vec::new()),
        };
        {
            // Counted before the build, so a failed build is cleaned up by the drop.
            let mut users = IMAGE_USERS.lock().unwrap_or_else(|e| e.into_inner());
            *users += 1;
            if *users == 1 {
                build_image(&dk.image);
            }
        }
        docker_ok(&["network", "create", &dk.network]);
        Some(dk)
    }

    fn gateway(&self) -> String {
        docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &self.network,
        ])
    }

    /// Hosts A and B as containers on the store at `url` (reachable from this machine), through
    /// a relay on the network's gateway (the test clusters listen on 127.0.0.1 only); B holds
    /// A's key (docs/operations.md).
    fn hosts(&self, url: &str) -> Hosts {
        let p = parts(url);
        let relay = Relay::to_from(self.gateway(), (p.host.clone(), p.port));
        let mut via = parts(url);
        via.host = self.gateway();
        via.port = relay.port;
        let tmp = tempfile::tempdir().unwrap();
        let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
        let a = self.broker("host-a", &via.url(), &dir_a);
        std::fs::create_dir_all(dir_b.join("state")).unwrap();
        std::fs::copy(dir_a.join("state/key"), dir_b.join("state/key")).unwrap();
        let b = self.broker("host-b", &via.url(), &dir_b);
        Hosts {
            a: Host {
                container: a,
                dir: dir_a,
            },
            b: Host {
                container: b,
                dir: dir_b,
            },
            _relay: relay,
            _tmp: tmp,
        }
    }

    /// A broker host: a container on the network, its state and run directories from `dir`.
    fn broker(&self, id: &str, url: &str, dir: &Path) -> String {
        let name = format!("pg-{id}-{}", self.tag);
        for sub in ["state", "run"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(dir.join("state"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        self.containers.lock().unwrap().push(name.clone());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            id,
            "--network",
            &self.network,
            "-v",
            &format!("{}:/var/lib/sandbox-secrets", dir.join("state").display()),
            "-v",
            &format!("{}:/run/sandbox-secrets", dir.join("run").display()),
            "-e",
            &format!("SANDBOX_SECRETS_STORE={url}"),
            "-e",
            "SANDBOX_SECRETS_LOG=debug",
            &self.image,
            "/bin/sandbox-secrets",
            "serve",
        ]);
        self.wait_up(&name, dir);
        name
    }

    /// Waits until the broker of container `name` answers on its admin socket under `dir`.
    fn wait_up(&self, name: &str, dir: &Path) {
        let admin = dir.join("run/admin.sock");
        assert!(
            eventually(Duration::from_secs(30), || {
                std::os::unix::net::UnixStream::connect(&admin).is_ok()
            }),
            "broker {name} did not come up:\n{}",
            self.logs(name)
        );
    }

    /// Runs the real init (`args` before its command) in a container that mounts the sandbox
    /// directory `dir` at `/run/sandbox` (no network), the command `sh -c script`.
    fn init(&self, dir: &Path, args: &[&str], script: &str) -> std::process::Output {
        let name = format!("pg-init-{}", self.tag);
        let mount = format!("{}:/run/sandbox", dir.display());
        let mut argv = vec![
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "none",
            "-v",
            &mount,
            &self.image,
            "/bin/sandbox-init",
        ];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--", "/bin/busybox", "sh", "-c", script]);
        docker(&argv)
    }

    /// What `sh -c script` printed, run by the real init in a container of the sandbox `dir`.
    fn sandbox(&self, dir: &Path, script: &str) -> String {
        let out = self.init(dir, &[], script);
        assert!(
            out.status.success(),
            "init container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn logs(&self, container: &str) -> String {
        let out = docker(&["logs", container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for c in self.containers.lock().unwrap().drain(..) {
            // A paused container is removed too (`rm -f` kills it first).
            let _ = docker(&["rm", "-f", &c]);
        }
        let _ = docker(&["rm", "-f", &format!("pg-init-{}", self.tag)]);
        let _ = docker(&["network", "rm", &self.network]);
        let mut users = IMAGE_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let _ = docker(&["rmi", "-f", &self.image]);
        }
    }
}

/// The two broker hosts of a container test.
struct Hosts {
    a: Host,
    b: Host,
    _relay: Relay,
    _tmp: tempfile::TempDir,
}

/// A broker host in a container: its name, and the directory holding the `state` and `run`
/// directories mounted in it.
struct Host {
    container: String,
    dir: PathBuf,
}

impl Host {
    fn run(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The CLI on this machine against the host's admin socket (bind-mounted).
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        cli_at(&self.run(), args, stdin)
    }

    fn set_repo(&self, name: &str, repo: &str, value: &str) {
        self.cli(&["set", name, "--repo", repo], Some(value.as_bytes()))
            .ok();
    }

    /// A sandbox created on this host: its id and its directory as seen from this machine.
    fn sandbox(&self, user: &str, repo: &str) -> (String, PathBuf) {
        let out = self
            .cli(&["sandbox", "create", "--user", user, "--repo", repo], None)
            .ok()
            .stdout();
        let id = out.split_whitespace().next().unwrap().to_owned();
        let dir = self.run().join("sandboxes").join(&id);
        (id, dir)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["status", "--json"], None).ok().stdout()).unwrap()
    }
}

/// The CLI on the host against a containerised broker's admin socket (bind-mounted).
fn cli_at(run: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--run-dir").arg(run).args(args);
    support::daemon::run(cmd, stdin)
}

/// The broker logs of `hosts`: no value in them, nor the store's password.
fn container_logs_hold_no_value(dk: &Docker, hosts: &Hosts, url: &str) -> String {
    let logs = format!(
        "{}{}",
        dk.logs(&hosts.a.container),
        dk.logs(&hosts.b.container)
    );
    assert_no_values("broker logs", logs.as_bytes(), &VALUES);
    assert!(
        !logs.contains(&parts(url).password),
        "the store's password in a log"
    );
    logs
}

/// Cases 1 and 4 of the issue with broker hosts as containers on a private docker network and
/// the real init in containers that mount their sandbox directory: a secret set on host A is
/// fetched by a sandbox on host B and seen by a watch there; host B disconnected from the
/// network keeps its sandboxes' last answers, refuses admin changes, and converges once
/// reconnected with a change made on A meanwhile.
#[test]
fn containers_on_a_private_network_share_changes_and_survive_a_disconnect() {
    let Some(dk) = Docker::new("share") else {
        return;
    };
    let Some(db) = TestDb::new() else { return };
    let hosts = dk.hosts(&db.url);
    let (a, b) = (&hosts.a, &hosts.b);

    // Case 1.
    a.set_repo("DB", "octo/a", "v1-VALUE");
    let (id, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(dk.sandbox(&on_b, "echo \"DB=$DB\""), "DB=v1-VALUE");
    let listed = a.cli(&["sandbox", "list"], None).ok().stdout();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&id) && l.contains("host-b")),
        "{listed}"
    );
    let socket = on_b.join("secrets.sock");
    let (_, head, _) = get(&socket, "");
    let tag = etag(&head);
    let watcher = std::thread::spawn(move || {
        get(
            &socket,
            &format!("If-None-Match: {tag}\r\nPrefer: wait=30\r\n"),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    a.set_repo("DB", "octo/a", "v2-VALUE");
    let (code, _, body) = watcher.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("v2-VALUE"), "{body}");
    assert_eq!(dk.sandbox(&on_b, "echo \"DB=$DB\""), "DB=v2-VALUE");

    // Case 4.
    docker_ok(&["network", "disconnect", &dk.network, &b.container]);
    assert!(
        eventually(Duration::from_secs(30), || {
            b.status()["connection"]
                .as_str()
                .unwrap()
                .starts_with("disconnected")
        }),
        "host B never noticed the disconnect:\n{}",
        dk.logs(&b.container)
    );
    assert_eq!(dk.sandbox(&on_b, "echo \"DB=$DB\""), "DB=v2-VALUE");
    b.cli(&["set", "DB", "--repo", "octo/a"], Some(b"v3-VALUE"))
        .fails_with("store unavailable");
    a.set_repo("DB", "octo/a", "v1-VALUE");
    assert_eq!(dk.sandbox(&on_b, "echo \"DB=$DB\""), "DB=v2-VALUE");
    docker_ok(&["network", "connect", &dk.network, &b.container]);
    assert!(
        eventually(Duration::from_secs(30), || served(&on_b)
            == pairs(&[("DB", "v1-VALUE")])),
        "host B did not converge:\n{}",
        dk.logs(&b.container)
    );
    assert_eq!(dk.sandbox(&on_b, "echo \"DB=$DB\""), "DB=v1-VALUE");
    let logs = container_logs_hold_no_value(&dk, &hosts, &db.url);
    assert!(logs.contains("store connection lost"), "{logs}");
}

/// Case 2 with containers: host A's container killed (`docker kill`, SIGKILL): the real init in
/// a sandbox of host B still fetches, changes through B still work, and a sandbox of A fails
/// closed rather than start without its secrets; A's container started again (same volumes):
/// its sandbox's socket is back in the same directory and the real init there fetches what B
/// wrote meanwhile.
#[test]
fn containers_a_killed_host_leaves_the_others_served_and_comes_back_with_its_sockets() {
    let Some(dk) = Docker::new("kill") else {
        return;
    };
    let Some(db) = TestDb::new() else { return };
    let hosts = dk.hosts(&db.url);
    let (a, b) = (&hosts.a, &hosts.b);
    let both = "echo \"DB=$DB\"";
    a.set_repo("DB", "octo/a", "v1-VALUE");
    let (_, on_a) = a.sandbox("mona", "octo/a");
    let (_, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(dk.sandbox(&on_a, both), "DB=v1-VALUE");
    assert_eq!(dk.sandbox(&on_b, both), "DB=v1-VALUE");

    docker_ok(&["kill", &a.container]);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &a.container]),
        "false"
    );
    // B is unaffected: its sandbox served, changes through it work and reach it.
    assert_eq!(dk.sandbox(&on_b, both), "DB=v1-VALUE");
    b.set_repo("DB", "octo/a", "v2-VALUE");
    assert_eq!(dk.sandbox(&on_b, both), "DB=v2-VALUE");
    // A's sandbox: its socket file is left but nothing answers; the init fails closed (exit 1,
    // its command never ran).
    assert!(std::os::unix::net::UnixStream::connect(on_a.join("secrets.sock")).is_err());
    let dead = dk.init(&on_a, &["--secrets-timeout", "1"], "echo started");
    assert_eq!(
        dead.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&dead.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&dead.stdout).contains("started"),
        "the command ran without its secrets"
    );

    // A restarted: the same container and volumes; its socket back in the same directory.
    docker_ok(&["start", &a.container]);
    dk.wait_up(&a.container, &a.dir);
    assert_eq!(dk.sandbox(&on_a, both), "DB=v2-VALUE");
    assert_eq!(a.status()["sandboxes_here"], 1);
    assert_eq!(b.status()["sandboxes_here"], 1);
    container_logs_hold_no_value(&dk, &hosts, &db.url);
}

/// Case 5 with containers: 1,024 admin writes from 16 clients, 8 through each host's admin
/// socket, while host A's container is killed (`docker kill`, SIGKILL) mid-run: every write
/// acknowledged by either host is in the store afterwards with its value, as served to sandboxes
/// of host B and of host A started again.
#[test]
fn containers_docker_kill_during_concurrent_writes_on_two_hosts_loses_no_acknowledged_write() {
    let Some(dk) = Docker::new("writes") else {
        return;
    };
    let Some(db) = TestDb::new() else { return };
    let hosts = dk.hosts(&db.url);
    let (a, b) = (&hosts.a, &hosts.b);
    let runs = [a.run(), b.run()];
    // A is killed once it has acknowledged 40 writes: mid-run, whatever the machine's speed.
    let acked_on_a = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let container = a.container.clone();
    let killer = after_acks(&acked_on_a, 40, move || {
        docker_ok(&["kill", &container]);
    });
    let acked = write_through_two_hosts(&runs, &acked_on_a);
    killer.join().unwrap();
    let on_a = acked.iter().filter(|(c, _)| c % 2 == 0).count();
    let on_b = acked.len() - on_a;
    assert!(
        (40..512).contains(&on_a),
        "the kill must land mid-run: {on_a} acked on A"
    );
    assert_eq!(on_b, 512, "host B refused writes while A died");
    // Read back through B, and through A started again.
    docker_ok(&["start", &a.container]);
    dk.wait_up(&a.container, &a.dir);
    for h in [b, a] {
        for c in 0..16 {
            let (_, dir) = h.sandbox("mona", &format!("octo/w{c}"));
            let got: std::collections::HashMap<String, String> = served(&dir).into_iter().collect();
            for (_, i) in acked.iter().filter(|(cc, _)| *cc == c) {
                assert_eq!(
                    got.get(&format!("N{i}")).map(String::as_str),
                    Some(format!("w{c}-{i}-VALUE").as_str()),
                    "acknowledged write N{i} of octo/w{c} lost (read through {})",
                    h.container
                );
            }
        }
    }
    // And through the real init in a sandbox of each host: a write acknowledged by A just
    // before it died.
    let (c, i) = *acked
        .iter()
        .filter(|(c, _)| c % 2 == 0)
        .max_by_key(|(_, i)| *i)
        .unwrap();
    let script = format!("echo \"$N{i}\"");
    for h in [a, b] {
        let (_, dir) = h.sandbox("mona", &format!("octo/w{c}"));
        assert_eq!(dk.sandbox(&dir, &script), format!("w{c}-{i}-VALUE"));
    }
    eprintln!(
        "docker kill of host A during writes: {} acknowledged writes ({on_a} by A), all present",
        acked.len()
    );
    let logs = container_logs_hold_no_value(&dk, &hosts, &db.url);
    assert!(!logs.contains("row refused"), "{logs}");
}

/// A PostgreSQL cluster of this test alone (`scripts/postgres.sh` with its own directory and
/// port), so it can be restarted without disturbing the other tests; stopped on drop.
struct OwnCluster {
    env: std::collections::HashMap<&'static str, String>,
    url: String,
}

impl OwnCluster {
    fn start() -> Option<Self> {
        support::postgres::cluster_url()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tag = format!("{}-{port}", std::process::id());
        let env = std::collections::HashMap::from([
            ("SANDBOX_PG_DIR", format!("/tmp/pg-own-{tag}")),
            ("SANDBOX_PG_PORT", port.to_string()),
            ("SANDBOX_TEST_DIR", format!("/tmp/pg-own-env-{tag}")),
        ]);
        let mut c = Self {
            env,
            url: String::new(),
        };
        c.script("start");
        let text =
            std::fs::read_to_string(Path::new(&c.env["SANDBOX_TEST_DIR"]).join("postgres.env"))
                .unwrap();
        c.url = text
            .lines()
            .find_map(|l| l.strip_prefix("SANDBOX_TEST_POSTGRES="))
            .unwrap()
            .to_owned();
        Some(c)
    }

    fn script(&self, what: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        let mut cmd = std::process::Command::new(script);
        cmd.arg(what).envs(&self.env);
        support::daemon::run(cmd, None).ok();
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.env["SANDBOX_TEST_DIR"]);
    }
}

/// Up to 200 sets of 50 names on `repo` through the admin socket under `run`, 10 ms apart, until
/// `stop`, while the store may be going away: each is acknowledged or refused with a 503, never
/// anything else. Returns the numbers of the acknowledged ones (set `i` writes `W{i % 50}` =
/// `w{i}-VALUE`).
fn writes_through(
    run: PathBuf,
    repo: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..200 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let body = format!(
                r#"{{"name":"W{}","repo":"{repo}","value":"w{i}-VALUE"}}"#,
                i % 50
            );
            match admin_post(&run, "secrets/set", body.as_bytes()) {
                Ok((200, _)) => acked.push(i),
                Ok((503, text)) => assert!(text.contains("store unavailable"), "{text}"),
                Ok((code, text)) => panic!("set answered {code}: {text}"),
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        acked
    })
}

/// Whether the sandbox `dir` is served the last acknowledged value of each name of
/// [`writes_through`].
fn serves_last(dir: &Path, acked: &[usize]) -> bool {
    let mut last = std::collections::HashMap::new();
    for i in acked {
        last.insert(i % 50, *i);
    }
    let got: std::collections::HashMap<String, String> = served(dir).into_iter().collect();
    last.iter()
        .all(|(n, i)| got.get(&format!("W{n}")) == Some(&format!("w{i}-VALUE")))
}

/// Two brokers on a PostgreSQL cluster of the test's own (the test may restart it), host B
/// serving with `b_args` too, DB and mona's TOKEN set through A and served to a sandbox of B:
/// the cluster, A, B and that sandbox's directory. `None` (skipped) without PostgreSQL.
fn seeded_on_own_cluster(b_args: &[&str]) -> Option<(OwnCluster, Daemon, Daemon, PathBuf)> {
    if support::postgres::cluster_url().is_none() {
        support::skip("no PostgreSQL: run scripts/postgres.sh start");
        return None;
    }
    let cluster = OwnCluster::start()?;
    let (a, mut b) = two_hosts_on(&cluster.url);
    b.serve_args = b_args.iter().map(|a| a.to_string()).collect();
    b.start().unwrap_or_else(|e| panic!("{e}"));
    a.set_repo("DB", "octo/a", "v1-VALUE");
    a.set_user("TOKEN", "mona", "octo/a", "v2-VALUE");
    let (_, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(
        served(&on_b),
        pairs(&[("DB", "v1-VALUE"), ("TOKEN", "v2-VALUE")])
    );
    Some((cluster, a, b, on_b))
}

/// `token create --user USER` through `d`: the token (the last line of stdout) and its id.
fn new_token(d: &Daemon, user: &str) -> (String, String) {
    let token = d
        .cli(&["token", "create", "--user", user], None)
        .ok()
        .stdout()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let list = d.cli(&["token", "list", "--json"], None).ok().stdout();
    let tokens: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == format!("user:{user}"))
        .and_then(|t| t["id"].as_str())
        .unwrap()
        .to_owned();
    (token, id)
}

/// Case 3: PostgreSQL restarted under two brokers: both reconnect, every acknowledged change is
/// there, and a revocation made right after is honoured by the other broker (no answer the
/// store no longer authorises).
#[test]
fn after_a_postgresql_restart_brokers_reconnect_and_lose_nothing() {
    let Some((cluster, a, b, on_b)) = seeded_on_own_cluster(&[]) else {
        return;
    };
    // Writes keep coming through A while PostgreSQL restarts: each is acknowledged or refused
    // with a 503, never half-applied.
    let writer = writes_through(a.run_dir(), "octo/w", Arc::default());
    std::thread::sleep(Duration::from_millis(300));
    cluster.script("restart");
    let acked = writer.join().unwrap();
    for d in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(30), || status(d)["connection"]
                == "connected"),
            "{}",
            d.log_text()
        );
    }
    // The last acknowledged value of each name is what B serves.
    let (_, on_w) = b.sandbox("mona", "octo/w");
    assert!(
        eventually(Duration::from_secs(10), || serves_last(&on_w, &acked)),
        "host B serves {:?}",
        served(&on_w)
    );
    // A revocation through A right after: B stops serving the value.
    a.cli(&["delete", "TOKEN", "--user", "mona", "--yes"], None)
        .ok();
    assert!(
        eventually(Duration::from_secs(10), || served(&on_b)
            == pairs(&[("DB", "v1-VALUE")])),
        "host B still serves {:?}",
        served(&on_b)
    );
    eprintln!(
        "PostgreSQL restarted under two brokers: {} of 200 writes acknowledged, all present",
        acked.len()
    );
    logs_hold_no_value(&[&a, &b]);
}

/// Case 3 with containers: the store's PostgreSQL restarted under two broker containers while
/// writes come through both. Host B is frozen (`docker pause`) across the restart, so it is still
/// to reconnect when host A, back first, removes mona's access to TOKEN and changes DB. Once B
/// has reconnected, the real init in its sandbox gets DB's new value and no TOKEN: nothing the
/// store no longer authorises. Every write acknowledged by either host is served by both.
#[test]
fn containers_after_a_postgresql_restart_brokers_reconnect_lose_nothing_and_serve_no_revoked_secret(
) {
    let Some(dk) = Docker::new("restart") else {
        return;
    };
    if support::postgres::cluster_url().is_none() {
        support::skip("no PostgreSQL: run scripts/postgres.sh start");
        return;
    }
    let Some(cluster) = OwnCluster::start() else {
        return;
    };
    let hosts = dk.hosts(&cluster.url);
    let (a, b) = (&hosts.a, &hosts.b);
    let both = "echo \"DB=$DB TOKEN=$TOKEN\"";
    a.set_repo("DB", "octo/a", "v1-VALUE");
    a.cli(
        &["set", "TOKEN", "--user", "mona", "--repos", "octo/a"],
        Some(b"v2-VALUE"),
    )
    .ok();
    let (_, on_a) = a.sandbox("mona", "octo/a");
    let (_, on_b) = b.sandbox("mona", "octo/a");
    for dir in [&on_a, &on_b] {
        assert_eq!(dk.sandbox(dir, both), "DB=v1-VALUE TOKEN=v2-VALUE");
    }
    // Writes through both hosts from before the restart until B is back.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writes_through(a.run(), "octo/wa", Arc::clone(&stop)),
        writes_through(b.run(), "octo/wb", Arc::clone(&stop)),
    ];
    std::thread::sleep(Duration::from_millis(300));
    docker_ok(&["pause", &b.container]);
    cluster.script("restart");
    assert!(
        eventually(Duration::from_secs(30), || a.status()["connection"]
            == "connected"),
        "host A did not reconnect:\n{}",
        dk.logs(&a.container)
    );
    // The first attempts may meet a pooled connection the restart closed: a 503, nothing done.
    let through_a = |args: &[&str], value: Option<&[u8]>| {
        assert!(
            eventually(Duration::from_secs(20), || a
                .cli(args, value)
                .out
                .status
                .success()),
            "{args:?} through host A never succeeded:\n{}",
            dk.logs(&a.container)
        );
    };
    through_a(&["delete", "TOKEN", "--user", "mona", "--yes"], None);
    through_a(&["set", "DB", "--repo", "octo/a"], Some(b"v3-VALUE"));
    docker_ok(&["unpause", &b.container]);
    assert!(
        eventually(Duration::from_secs(30), || dk
            .logs(&b.container)
            .contains("store connection back")
            && b.status()["connection"] == "connected"),
        "host B did not reconnect:\n{}",
        dk.logs(&b.container)
    );
    // Reconnected: B serves what the store holds now, at once.
    assert_eq!(served(&on_b), pairs(&[("DB", "v3-VALUE")]));
    for dir in [&on_b, &on_a] {
        assert_eq!(dk.sandbox(dir, both), "DB=v3-VALUE TOKEN=");
    }
    // No acknowledged write lost: each host's last acknowledged values, read through both.
    stop.store(true, Ordering::SeqCst);
    let [wa, wb] = writers.map(|w| w.join().unwrap());
    assert!(!wa.is_empty() && !wb.is_empty(), "{wa:?} {wb:?}");
    for h in [a, b] {
        for (repo, acked) in [("octo/wa", &wa), ("octo/wb", &wb)] {
            let (_, dir) = h.sandbox("mona", repo);
            assert!(
                eventually(Duration::from_secs(10), || serves_last(&dir, acked)),
                "{} serves {:?} on {repo}",
                h.container,
                served(&dir)
            );
        }
    }
    eprintln!(
        "PostgreSQL restarted under two broker containers: {} and {} writes acknowledged through A and B, all present",
        wa.len(),
        wb.len()
    );
    container_logs_hold_no_value(&dk, &hosts, &cluster.url);
    for host in [&a.container, &b.container] {
        let log = dk.logs(host);
        assert!(log.contains("store connection lost"), "{host}:\n{log}");
    }
}

/// TLS to the store: with `sslmode=verify-full` and the cluster's CA (`sslrootcert`) the broker's
/// connections are encrypted (PostgreSQL's `pg_stat_ssl` says so); with `sslmode=require` but a
/// CA it does not trust, the broker refuses to start, saying the certificate did not verify.
#[test]
fn the_store_connection_is_tls_and_verifies_the_server() {
    let Some(db) = TestDb::new() else { return };
    let Ok(ca) = std::env::var("SANDBOX_TEST_POSTGRES_CA").or_else(|_| {
        let dir =
            std::env::var("SANDBOX_TEST_DIR").unwrap_or_else(|_| "/run/sandbox-init-test".into());
        std::fs::read_to_string(Path::new(&dir).join("postgres.env"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("SANDBOX_TEST_POSTGRES_CA="))
                    .map(str::to_owned)
            })
            .ok_or(())
    }) else {
        support::skip("the test cluster has no CA (scripts/postgres.sh start)");
        return;
    };
    let mut p = parts(&db.url);
    p.query = format!("sslmode=verify-full&sslrootcert={ca}");
    let mut d = host(&p.url(), "host-tls", None);
    d.start().unwrap_or_else(|e| panic!("{e}"));
    d.set_repo("DB", "octo/a", "v1-VALUE");
    let ssl = db.sql(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
         JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'sandbox-secrets' AND a.datname = '{}'",
        db.name
    ));
    let counts: Vec<&str> = ssl.trim().split('|').collect();
    assert!(counts[1] != "0", "no broker connection seen: {ssl}");
    assert_eq!(
        counts[0], counts[1],
        "a broker connection without TLS: {ssl}"
    );
    d.stop();

    // A server whose certificate the broker cannot verify is refused.
    p.query = "sslmode=require".into();
    let mut other = host(&p.url(), "host-untrusting", None);
    let e = other
        .start()
        .expect_err("started against an unverified server");
    assert!(
        e.contains("store unavailable") && e.contains("certificate"),
        "{e}"
    );
    assert!(!e.contains(&p.password), "the password in an error: {e}");
}

/// A row edited in the shared database while the brokers run (its repository list widened, its
/// version pushed past the others so a catching-up broker reads it) is refused by the broker
/// that re-reads it, naming it, and its value is never served to the repository it was not
/// granted to.
#[test]
fn a_row_edited_in_the_shared_database_is_refused_when_another_broker_catches_up() {
    let Some(db) = TestDb::new() else { return };
    let (a, mut b) = two_hosts(&db, &db.url);
    b.start().unwrap_or_else(|e| panic!("{e}"));
    a.set_user("TOKEN", "mona", "octo/b", "v1-VALUE");
    a.set_repo("DB", "octo/a", "v2-VALUE");
    let (_, on_b) = b.sandbox("mona", "octo/a");
    assert_eq!(served(&on_b), pairs(&[("DB", "v2-VALUE")]));
    db.sql(
        r#"UPDATE secrets SET repos = '["octo/b","octo/a"]', version = 1000
           WHERE name = 'TOKEN';"#,
    );
    // Any change through A makes B catch up.
    a.set_repo("OTHER", "octo/c", "v3-VALUE");
    assert!(
        eventually(Duration::from_secs(10), || b
            .log_text()
            .contains("user secret TOKEN of mona")),
        "B never named the edited row:\n{}",
        b.log_text()
    );
    let (code, body) = fetch(&on_b);
    assert_ne!(code, 200, "{body}");
    assert!(!body.contains("v1-VALUE"), "{body}");
    logs_hold_no_value(&[&a, &b]);
}

/// `GET path` on a platform API at `base` (`http://127.0.0.1:PORT`) with `token`: the status.
fn api_status(base: &str, path: &str, token: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Tokens live in the shared store: one created through host A authenticates on host B's
/// platform API, and a revocation through A holds on B at once (announced like a commit), not at
/// B's next restart.
#[test]
fn a_token_created_or_revoked_on_one_host_holds_on_another() {
    let Some(db) = TestDb::new() else { return };
    let (a, mut b) = two_hosts(&db, &db.url);
    b.serve_args = vec!["--http".into(), "127.0.0.1:0".into()];
    b.start().unwrap_or_else(|e| panic!("{e}"));
    let base = b.http_base();
    let (token, id) = new_token(&a, "mona");
    assert!(
        eventually(Duration::from_secs(5), || api_status(
            &base,
            "/v1/users/mona/secrets",
            &token
        ) == 200),
        "a token made through host A never authenticated on host B\n{}",
        b.log_text()
    );
    a.cli(&["token", "revoke", &id], None).ok();
    assert!(
        eventually(Duration::from_secs(5), || api_status(
            &base,
            "/v1/users/mona/secrets",
            &token
        ) == 401),
        "a token revoked through host A still authenticates on host B\n{}",
        b.log_text()
    );
    for log in [a.log_text(), b.log_text()] {
        assert!(!log.contains(&token), "the token is in a broker's log");
    }
}

/// A broker frozen (SIGSTOP) across a PostgreSQL restart while another broker revokes a secret:
/// from the moment it logs `store connection back`, no answer it serves holds the revoked
/// secret (docs/operations.md: it re-reads what was committed meanwhile before it serves).
/// Fetches run back to back from before it is resumed; each one that started after the log line
/// was written is checked.
#[test]
fn a_broker_back_after_a_postgresql_restart_serves_no_secret_revoked_meanwhile() {
    let Some((cluster, a, b, on_b)) = seeded_on_own_cluster(&["--http", "127.0.0.1:0"]) else {
        return;
    };
    let base = b.http_base();
    // A platform token made through A, working on B; revoked through A while B is away.
    let (api_token, token_id) = new_token(&a, "mona");
    let path = "/v1/users/mona/secrets";
    assert!(
        eventually(Duration::from_secs(5), || api_status(
            &base, path, &api_token
        ) == 200),
        "{}",
        b.log_text()
    );
    let pid = nix::unistd::Pid::from_raw(b.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    cluster.script("restart");
    // Through A, back first (its first attempts may meet a connection the restart closed).
    assert!(
        eventually(Duration::from_secs(30), || a
            .cli(&["delete", "TOKEN", "--user", "mona", "--yes"], None)
            .out
            .status
            .success()),
        "{}",
        a.log_text()
    );
    a.cli(&["token", "revoke", &token_id], None).ok();
    let log = b.logs().last().unwrap().clone();
    let stop = Arc::new(AtomicBool::new(false));
    // Requests finished by each thread, so the test stops only once some began after B was back.
    let (calls_done, fetches_done) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let caller = {
        let (stop, base, t) = (Arc::clone(&stop), base.clone(), api_token.clone());
        let done = Arc::clone(&calls_done);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                seen.push((started, api_status(&base, path, &t)));
                done.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    let fetcher = {
        let (stop, dir) = (Arc::clone(&stop), on_b.clone());
        let done = Arc::clone(&fetches_done);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (code, body) = fetch(&dir);
                assert_eq!(code, 200, "{body}");
                seen.push((started, body.contains("\"TOKEN\"")));
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        })
    };
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let back = loop {
        if std::fs::read_to_string(&log)
            .unwrap()
            .contains("store connection back")
        {
            break Instant::now();
        }
        assert!(
            Instant::now() < end,
            "host B never came back:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    // At least 500 ms of requests after B was back, and each thread has finished two more
    // since (the first may have begun before): a loaded machine may make one request slow.
    let (calls_at_back, fetches_at_back) = (
        calls_done.load(Ordering::SeqCst),
        fetches_done.load(Ordering::SeqCst),
    );
    std::thread::sleep(Duration::from_millis(500));
    let end = Instant::now() + Duration::from_secs(20);
    while (calls_done.load(Ordering::SeqCst) < calls_at_back + 2
        || fetches_done.load(Ordering::SeqCst) < fetches_at_back + 2)
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let seen = fetcher.join().unwrap();
    let calls = caller.join().unwrap();
    let accepted: Vec<u16> = calls
        .iter()
        .filter(|(t, _)| *t > back)
        .map(|(_, status)| *status)
        // Refused: 401, or 429 once the failures are rate-limited.
        .filter(|status| !matches!(status, 401 | 429))
        .collect();
    assert!(
        calls.iter().any(|(t, _)| *t > back),
        "no API call after host B was back"
    );
    assert!(
        accepted.is_empty(),
        "after host B logged its connection back, the token revoked meanwhile got {accepted:?}:\n{}",
        b.log_text()
    );
    let after: Vec<bool> = seen
        .iter()
        .filter(|(t, _)| *t > back)
        .map(|(_, token)| *token)
        .collect();
    assert!(!after.is_empty(), "no fetch after host B was back");
    let stale = after.iter().filter(|token| **token).count();
    assert_eq!(
        stale,
        0,
        "{stale} of {} answers after host B logged its connection back held the revoked TOKEN:\n{}",
        after.len(),
        b.log_text()
    );
    assert_eq!(served(&on_b), pairs(&[("DB", "v1-VALUE")]));
    logs_hold_no_value(&[&a, &b]);
}
