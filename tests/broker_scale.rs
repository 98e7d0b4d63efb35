//! The broker with many sandboxes and at its edges: the descriptor ceiling (a create refused
//! with a clear 503, every existing sandbox still served, the ceiling logged at start), the
//! memory each live sandbox costs, and creates racing a SIGTERM (refused, or stopped with the
//! rest; an OK always had a live socket). Real daemon, real sockets.
#![cfg(feature = "broker")]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::*;

/// `sandboxes/create` over the raw admin socket: (status, body).
fn create(run_dir: &std::path::Path, user: &str, repo: &str) -> std::io::Result<(u16, String)> {
    admin_post(
        run_dir,
        "sandboxes/create",
        format!(r#"{{"user":"{user}","repo":"{repo}"}}"#).as_bytes(),
    )
}

fn dir_of(body: &str) -> PathBuf {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    PathBuf::from(v["dir"].as_str().unwrap())
}

#[test]
fn at_the_descriptor_ceiling_a_create_is_refused_and_every_sandbox_stays_served() {
    let mut d = Daemon::unstarted(None);
    // Soft and hard limit 256: the daemon cannot raise it.
    d.wrapper = vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        d.log_text().contains("descriptor_limit=256"),
        "the ceiling is logged at start\n{}",
        d.log_text()
    );
    d.set_repo("EDGE", "edge/r", "edge-VALUE-1");
    let mut dirs = Vec::new();
    let until_refused = |dirs: &mut Vec<PathBuf>| loop {
        let (status, body) = create(&d.run_dir(), "mona", "edge/r").unwrap();
        if status != 200 {
            break (status, body);
        }
        dirs.push(dir_of(&body));
        assert!(dirs.len() < 256, "no ceiling reached\n{}", d.log_text());
    };
    until_refused(&mut dirs);
    // The previous create's connection may still have counted against the ceiling: once it is
    // gone, the edge is found again, so the CLI below meets it too.
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = until_refused(&mut dirs);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("256") && body.contains("LimitNOFILE") && body.contains("descriptor limit"),
        "{body}"
    );
    assert!(
        dirs.len() >= 100,
        "only {} sandboxes under a limit of 256",
        dirs.len()
    );
    // The CLI says the same, once, and exits non-zero; nothing was created.
    let out = d
        .cli(
            &["sandbox", "create", "--user", "mona", "--repo", "edge/r"],
            None,
        )
        .fails_with("LimitNOFILE");
    assert_eq!(
        out.stderr().matches("LimitNOFILE").count(),
        1,
        "{}",
        out.explain()
    );
    let listed: serde_json::Value =
        serde_json::from_str(&d.cli(&["sandbox", "list", "--json"], None).ok().stdout()).unwrap();
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), dirs.len());
    // Every existing sandbox is still served, and the admin socket still answers.
    for dir in &dirs {
        assert_eq!(served(dir), pairs(&[("EDGE", "edge-VALUE-1")]));
    }
    assert!(!d.log_text().contains("accept failed"), "{}", d.log_text());
    // Deleting one makes room for one, once the connections of the fetches above are closed on
    // the daemon's side too (each holds a descriptor until its task sees the end).
    let id = dirs[0].file_name().unwrap().to_str().unwrap().to_owned();
    d.cli(&["sandbox", "delete", &id], None).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) = create(&d.run_dir(), "mona", "edge/r").unwrap();
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && std::time::Instant::now() < deadline,
            "{status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn memory_per_live_sandbox_is_at_most_2_kib() {
    const N: usize = 3000;
    let d = Daemon::new();
    // Warm up: the runtime, the store and the first allocations.
    for _ in 0..200 {
        let (status, body) = create(&d.run_dir(), "mona", "mem/r").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(d.pid());
    for _ in 0..N {
        let (status, body) = create(&d.run_dir(), "mona", "mem/r").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(d.pid());
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    println!("memory: {N} sandboxes: RSS {before} KiB -> {after} KiB, {per:.2} KiB per sandbox");
    assert!(per <= 2.0, "{per:.2} KiB per live sandbox");
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_create_racing_sigterm_is_refused_or_stopped_with_the_rest() {
    let mut d = Daemon::new();
    d.set_repo("RACE", "race/r", "race-VALUE-1");
    let run_dir = d.run_dir();
    let stopping = Arc::new(AtomicBool::new(false));
    // (dir, served right after the OK, that fetch ended before SIGTERM was sent)
    let oks = Arc::new(Mutex::new(Vec::<(PathBuf, bool, bool)>::new()));
    let refusals = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (run_dir, stopping, oks, refusals) = (
                run_dir.clone(),
                Arc::clone(&stopping),
                Arc::clone(&oks),
                Arc::clone(&refusals),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    match create(&run_dir, "mona", "race/r") {
                        Ok((200, body)) => {
                            let dir = dir_of(&body);
                            let live = fetch_quietly(&dir);
                            // Only a fetch that ended before SIGTERM was sent must have worked.
                            let before = !stopping.load(Ordering::SeqCst);
                            oks.lock().unwrap().push((dir, live, before));
                        }
                        Ok((status, body)) => refusals.lock().unwrap().push((status, body)),
                        // The admin socket is gone, or the connection was closed unanswered.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    stopping.store(true, Ordering::SeqCst);
    let log = d.stop();
    for w in workers {
        w.join().unwrap();
    }
    let oks = oks.lock().unwrap().clone();
    let refusals = refusals.lock().unwrap().clone();
    assert!(
        oks.len() > 10,
        "too few creates before the stop: {}",
        oks.len()
    );
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("shutting down"), "{body}");
    }
    // Every OK before SIGTERM had a live socket at once.
    for (dir, live, before) in &oks {
        assert!(
            !before || *live,
            "{} answered OK without a live socket\n{log}",
            dir.display()
        );
    }
    // After a restart, exactly the sandboxes that answered OK exist, each served.
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let listed: serde_json::Value =
        serde_json::from_str(&d.cli(&["sandbox", "list", "--json"], None).ok().stdout()).unwrap();
    assert_eq!(
        listed["sandboxes"].as_array().unwrap().len(),
        oks.len(),
        "a refused create left a sandbox behind ({} refusals)\n{log}",
        refusals.len()
    );
    for (dir, _, _) in &oks {
        assert_eq!(served(dir), pairs(&[("RACE", "race-VALUE-1")]));
    }
    println!(
        "shutdown race: {} creates answered OK, {} refused with 503",
        oks.len(),
        refusals.len()
    );
}

/// Whether a sandbox's socket answers 200 now.
fn fetch_quietly(dir: &std::path::Path) -> bool {
    matches!(
        http(&dir.join("secrets.sock"), "GET", "/v1/secrets"),
        Ok((200, _))
    )
}

#[test]
fn past_the_global_connection_cap_a_connection_gets_503_and_others_stay_served() {
    use std::io::Write;
    let mut d = Daemon::unstarted(None);
    d.wrapper = vec!["env".into(), "SANDBOX_SECRETS_MAX_CONNECTIONS=40".into()];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    d.set_repo("CAP", "cap/r", "cap-VALUE-1");
    let (_, a) = d.sandbox("mona", "cap/r");
    let (_, b) = d.sandbox("mona", "cap/r");
    // 32 half-sent requests fill A's own cap; 8 more on B fill the daemon's 40.
    let mut held = Vec::new();
    for (dir, n) in [(&a, 32), (&b, 8)] {
        for _ in 0..n {
            let mut s = std::os::unix::net::UnixStream::connect(dir.join("secrets.sock")).unwrap();
            s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            held.push(s);
        }
    }
    // The cap is reached once the daemon has accepted 40; a half-sent connection may still sit
    // in a backlog when the first fetch comes (one of the 40 was seen not yet accepted on a
    // loaded host), so each fetch that is still served adds one more half-sent connection, up
    // to 8: past the cap the daemon must answer 503, however the 40 were spread.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut extra = 0;
    let busy = loop {
        let (status, body) = fetch(&b);
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline && extra < 8,
            "no 503 past the cap ({extra} extra connections held): {status} {body}\n{}",
            d.log_text()
        );
        let mut s = std::os::unix::net::UnixStream::connect(b.join("secrets.sock")).unwrap();
        s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        held.push(s);
        extra += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(busy.contains("too many connections"), "{busy}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&b).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "B not served once the connections closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(served(&a), pairs(&[("CAP", "cap-VALUE-1")]));
}

#[test]
fn a_restart_brings_every_sandbox_back_and_under_a_lower_limit_serves_those_that_fit() {
    use std::os::unix::fs::PermissionsExt;
    const N: usize = 300;
    let mut d = Daemon::new();
    d.set_repo("BACK", "back/r", "back-VALUE-1");
    let dirs: Vec<PathBuf> = (0..N)
        .map(|_| {
            let (status, body) = create(&d.run_dir(), "mona", "back/r").unwrap();
            assert_eq!(status, 200, "{body}");
            dir_of(&body)
        })
        .collect();
    // Killed: the sockets stay behind, stale. One sandbox also has a staging socket left by a
    // create cut short, one a directory whose mode was changed.
    d.kill9();
    let sandboxes = d.run_dir().join("sandboxes");
    let first = dirs[0].file_name().unwrap().to_str().unwrap().to_owned();
    drop(std::os::unix::net::UnixListener::bind(sandboxes.join(format!(".{first}.sock"))).unwrap());
    std::fs::set_permissions(&dirs[1], std::fs::Permissions::from_mode(0o700)).unwrap();
    d.start().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        d.log_text().contains(&format!("sandboxes={N}")),
        "{}",
        d.log_text()
    );
    for dir in &dirs {
        assert_eq!(
            served(dir),
            pairs(&[("BACK", "back-VALUE-1")]),
            "{}",
            dir.display()
        );
    }
    assert_eq!(mode(&dirs[1]), 0o755);
    assert!(!sandboxes.join(format!(".{first}.sock")).exists());
    d.stop();

    // Under a limit of 256 descriptors not every sandbox fits: those that fit are served, each
    // of the others is named in the log, and the daemon runs and answers.
    d.wrapper = vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let log = d.log_text();
    let (mut up, mut down) = (0, 0);
    for dir in &dirs {
        let id = dir.file_name().unwrap().to_str().unwrap();
        if dir.join("secrets.sock").exists() {
            assert_eq!(served(dir), pairs(&[("BACK", "back-VALUE-1")]));
            assert!(!log.contains(id), "{id} served and named\n{log}");
            up += 1;
        } else {
            let line = log
                .lines()
                .find(|l| l.contains(id))
                .unwrap_or_else(|| panic!("{id} not named\n{log}"));
            assert!(
                line.contains("descriptor limit") && line.contains("LimitNOFILE"),
                "{line}"
            );
            down += 1;
        }
    }
    assert!(up >= 100 && down > 0, "{up} served, {down} refused\n{log}");
    assert!(log.contains(&format!("sandboxes={up}")), "{log}");
    d.cli(&["sandbox", "list"], None).ok();
}
