//! Store v2 against the real daemon, what only the SQLite store has: a store written by the
//! first release migrates and serves the same answers; attacks on the state directory's files
//! are refused; a rolled-back store is refused; rotation and backups survive `kill -9`;
//! concurrent creates share commits. The attacks on rows, the limits, `kill -9` during creates
//! and key rotation run against every backend in `store_suite.rs`.
#![cfg(feature = "broker")]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::daemon::*;
use support::world::{World, VALUES};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `sql` on the stopped daemon's database.
fn edit(state: &Path, sql: &str) {
    let db = rusqlite::Connection::open(state.join("secrets.db")).unwrap();
    db.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// One column of one row, as the database holds it.
fn column(state: &Path, sql: &str) -> rusqlite::types::Value {
    let db = rusqlite::Connection::open(state.join("secrets.db")).unwrap();
    db.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn world() -> World {
    support::world::seeded(Daemon::traced())
}

/// Fails unless the (stopped) daemon refuses to start, saying `needle`.
#[track_caller]
fn refuses_to_start(d: &mut Daemon, needle: &str) -> String {
    match d.start() {
        Ok(()) => panic!("daemon started, expected a refusal mentioning {needle:?}"),
        Err(e) => {
            assert!(e.contains(needle), "expected {needle:?} in:\n{e}");
            assert_no_values("refusal", e.as_bytes(), &VALUES);
            e
        }
    }
}

// ------------------------------------------------------------------------------------------
// Migration

#[test]
fn a_v1_store_migrates_once_after_a_backup_and_serves_the_same_answers() {
    let mut d = Daemon::unstarted(None);
    std::fs::create_dir(&d.state).unwrap();
    chmod(&d.state, 0o700);
    for f in ["key", "secrets.db"] {
        std::fs::copy(fixture().join(f), d.state.join(f)).unwrap();
        chmod(&d.state.join(f), 0o600);
    }
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap();
    d.start().unwrap();
    let log = d.log_text();
    assert!(
        log.contains("migrating the store from schema 1 to 4"),
        "{log}"
    );

    let check_answers = |d: &Daemon| {
        for (id, want) in expected["sandboxes"].as_object().unwrap() {
            let dir = d.run_dir().join("sandboxes").join(id);
            let got = served(&dir);
            let want: Vec<(String, String)> = want["secrets"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            assert_eq!(got, want, "sandbox {id}");
        }
        for plan in expected["plans"].as_array().unwrap() {
            let out = d
                .cli(
                    &[
                        "plan",
                        "--user",
                        plan["user"].as_str().unwrap(),
                        "--repo",
                        plan["repository"].as_str().unwrap(),
                        "--json",
                    ],
                    None,
                )
                .ok()
                .stdout();
            let got: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(got["secrets"], plan["secrets"], "{out}");
        }
        for (user, secrets) in expected["user_secrets"].as_object().unwrap() {
            let got: serde_json::Value =
                serde_json::from_str(&d.list_json("--user", user)).unwrap();
            for s in got["secrets"].as_array().unwrap() {
                let name = s["name"].as_str().unwrap();
                assert_eq!(s["repos"], secrets[name], "{user} {name}");
            }
            assert_eq!(
                got["secrets"].as_array().unwrap().len(),
                secrets.as_object().unwrap().len()
            );
        }
    };
    check_answers(&d);
    let sandboxes: serde_json::Value =
        serde_json::from_str(&d.cli(&["sandbox", "list", "--json"], None).ok().stdout()).unwrap();
    assert_eq!(sandboxes["sandboxes"].as_array().unwrap().len(), 3);
    d.stop();

    // The backup next to the store is the v1 store as it was: same rows, no version table.
    let backups: Vec<PathBuf> = std::fs::read_dir(&d.state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".v1-") && p.to_string_lossy().ends_with(".bak"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(mode(&backups[0]), 0o600);
    let old = rusqlite::Connection::open(&backups[0]).unwrap();
    let n: i64 = old
        .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 7);
    let versioned: i64 = old
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(versioned, 0);
    // The store itself is v4 now (v2, hosts, tokens); a second start does not migrate again.
    let v = column(&d.state, "SELECT max(version) FROM schema_migrations");
    assert_eq!(v, rusqlite::types::Value::Integer(4));
    d.start().unwrap();
    assert!(!d.log_text().contains("migrating"), "{}", d.log_text());
    check_answers(&d);
    d.stop();
}

// ------------------------------------------------------------------------------------------
// Rows edited by someone without the key

#[test]
fn a_corrupt_repository_list_is_named_never_read_as_no_repositories() {
    let mut w = world();
    w.d.stop();
    edit(
        &w.d.state,
        "UPDATE secrets SET repos = 'octo/a' WHERE kind = 'user' AND name = 'DEPLOY';
         UPDATE secrets SET version = 'x' WHERE kind = 'repo' AND scope = 'octo/b';",
    );
    w.d.start().unwrap();
    let log = w.d.log_text();
    assert!(
        log.contains("user secret DEPLOY of hubot: malformed: repository list is not a list"),
        "{log}"
    );
    assert!(
        log.contains("repository secret DB of octo/b: malformed"),
        "{log}"
    );
    // The malformed rows are skipped; the daemon serves everything else.
    assert_eq!(
        served(&w.mona_a.1),
        pairs(&[("DB", "a-db-VALUE"), ("TOKEN", "mona-token-VALUE")])
    );
    assert_eq!(served(&w.hubot_a.1), pairs(&[("DB", "a-db-VALUE")]));
    w.d.stop();
}

#[test]
fn a_re_pointed_sandbox_is_refused_and_not_served() {
    let mut w = world();
    w.d.stop();
    // hubot's sandbox re-pointed at mona, to read mona's secrets.
    edit(
        &w.d.state,
        &format!(
            "UPDATE sandboxes SET user = 'mona' WHERE id = '{}'",
            w.hubot_a.0
        ),
    );
    w.d.start().unwrap();
    let log = w.d.log_text();
    assert!(
        log.contains(&format!("sandbox {}", w.hubot_a.0)) && log.contains("re-pointed"),
        "{log}"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(w.hubot_a.1.join("secrets.sock")).is_err(),
        "a refused sandbox has no socket"
    );
    w.others_served(&[&w.hubot_a.0]);
    let listed = w.d.cli(&["sandbox", "list"], None).ok().stdout();
    assert!(!listed.contains(&w.hubot_a.0), "{listed}");
    w.d.stop();
}

#[test]
fn an_old_row_put_back_after_an_access_change_is_refused_as_replayed() {
    let mut w = world();
    w.d.stop();
    let db = rusqlite::Connection::open(w.d.state.join("secrets.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE saved AS SELECT * FROM secrets WHERE kind = 'user' AND name = 'TOKEN';",
    )
    .unwrap();
    drop(db);
    w.d.start().unwrap();
    // The owner revokes octo/b.
    w.d.cli(
        &["access", "TOKEN", "--user", "mona", "--repos", "octo/a"],
        None,
    )
    .ok();
    let (_, body) = fetch(&w.mona_b.1);
    assert!(!body.contains("mona-token-VALUE"));
    w.d.stop();
    // The attacker puts the old row (granting octo/b, validly sealed back then) back.
    edit(
        &w.d.state,
        "DELETE FROM secrets WHERE kind = 'user' AND name = 'TOKEN';
         INSERT INTO secrets SELECT * FROM saved; DROP TABLE saved;",
    );
    w.d.start().unwrap();
    let log = w.d.log_text();
    assert!(
        log.contains("user secret TOKEN of mona: replayed: version"),
        "{log}"
    );
    let (status, body) = fetch(&w.mona_b.1);
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("mona-token-VALUE"), "{body}");
    w.others_served(&[&w.mona_a.0, &w.mona_b.0]);
    w.d.stop();
}

// ------------------------------------------------------------------------------------------
// The state directory: only the key is trusted

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let mut w = world();
    w.d.stop();
    for m in [0o777, 0o770, 0o702] {
        chmod(&w.d.state, m);
        refuses_to_start(&mut w.d, &format!("has mode {m:04o}"));
    }
    chmod(&w.d.state, 0o700);
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

#[test]
fn a_key_symlinked_or_owned_by_another_uid_is_refused() {
    if let Some(why) = nobody_unavailable() {
        support::skip(why);
        return;
    }
    let mut w = world();
    w.d.stop();
    let key = w.d.state.join("key");
    let original = std::fs::read(&key).unwrap();
    // The attacker's own key, owned by them, linked in place of the real one.
    let theirs = w.d.dir.path().join("attacker-key");
    std::fs::write(&theirs, [0x41u8; 32]).unwrap();
    chmod(&theirs, 0o600);
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&theirs, &key).unwrap();
    refuses_to_start(&mut w.d, "is a symbolic link");
    // The same key as a plain file owned by another uid.
    std::fs::remove_file(&key).unwrap();
    std::fs::copy(&theirs, &key).unwrap();
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    refuses_to_start(&mut w.d, "is owned by uid 65534");
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, &original).unwrap();
    chmod(&key, 0o600);
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

#[test]
fn a_database_owned_by_another_uid_is_refused() {
    if let Some(why) = nobody_unavailable() {
        support::skip(why);
        return;
    }
    let mut w = world();
    w.d.stop();
    let db = w.d.state.join("secrets.db");
    std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
    refuses_to_start(&mut w.d, "is owned by uid 65534");
    std::os::unix::fs::chown(&db, Some(0), Some(0)).unwrap();
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

#[test]
fn a_missing_key_check_or_an_emptied_database_is_refused_never_started_empty() {
    let mut w = world();
    w.d.stop();
    let db = w.d.state.join("secrets.db");
    let saved = std::fs::read(&db).unwrap();
    edit(&w.d.state, "DELETE FROM meta WHERE key = 'keycheck'");
    refuses_to_start(&mut w.d, "has no key check");
    // A 0-byte database in place of the store.
    std::fs::write(&db, b"").unwrap();
    refuses_to_start(&mut w.d, "has no key check");
    // Without the manifest root the rows cannot be checked for replays.
    std::fs::write(&db, &saved).unwrap();
    edit(&w.d.state, "DELETE FROM meta WHERE key = 'root'");
    refuses_to_start(&mut w.d, "the manifest root is missing");
    std::fs::write(&db, &saved).unwrap();
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

#[test]
fn a_store_restored_from_before_a_token_was_revoked_is_a_rollback() {
    let mut w = world();
    let token = w.d.cli(&["token", "create", "--user", "mona"], None).ok();
    let list = w.d.cli(&["token", "list", "--json"], None).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = v["tokens"][0]["id"].as_str().unwrap().to_owned();
    w.d.stop();
    // The operator's copy holds the token; it is revoked after the copy was taken.
    let db = w.d.state.join("secrets.db");
    let old = std::fs::read(&db).unwrap();
    w.d.start().unwrap();
    w.d.cli(&["token", "revoke", &id], None).ok();
    w.d.stop();
    std::fs::write(&db, &old).unwrap();
    // Put back, the copy would authenticate the revoked token again: refused as a rollback.
    let e = refuses_to_start(&mut w.d, "is older than the last one this host wrote");
    assert!(e.contains("--accept-rollback"), "{e}");
    assert!(!e.contains(token.stdout().trim()), "{e}");
    // Accepted by an operator, the old copy does hold the token again: the refusal is what
    // kept it revoked (revoke again after accepting a restore, docs/operations.md).
    w.d.wrapper = vec!["env".into(), "SANDBOX_SECRETS_ACCEPT_ROLLBACK=true".into()];
    w.d.start().unwrap();
    let listed = w.d.cli(&["token", "list", "--json"], None).ok().stdout();
    assert!(
        listed.contains(&id),
        "the accepted old copy holds the token: {listed}"
    );
    w.d.stop();
}

#[test]
fn a_rolled_back_store_is_refused_until_an_operator_accepts_it() {
    let mut w = world();
    w.d.stop();
    let db = w.d.state.join("secrets.db");
    let old = std::fs::read(&db).unwrap();
    w.d.start().unwrap();
    // Access revoked and a sandbox deleted after the copy was taken.
    w.d.cli(
        &["access", "TOKEN", "--user", "mona", "--repos", "octo/a"],
        None,
    )
    .ok();
    w.d.cli(&["sandbox", "delete", &w.hubot_a.0], None).ok();
    w.d.stop();
    std::fs::write(&db, &old).unwrap();
    let e = refuses_to_start(&mut w.d, "is older than the last one this host wrote");
    assert!(e.contains("--accept-rollback"), "{e}");
    // The generation file removed to hide the rollback: refused as well.
    let gen = w.d.state.join("generation");
    let saved_gen = std::fs::read(&gen).unwrap();
    std::fs::remove_file(&gen).unwrap();
    refuses_to_start(&mut w.d, "generation file");
    std::fs::write(&gen, &saved_gen).unwrap();
    chmod(&gen, 0o600);
    // The operator confirms (here through the environment the flag also reads).
    w.d.wrapper = vec!["env".into(), "SANDBOX_SECRETS_ACCEPT_ROLLBACK=true".into()];
    w.d.start().unwrap();
    assert!(
        w.d.log_text()
            .contains("serving a store older than the last one this host wrote"),
        "{}",
        w.d.log_text()
    );
    w.others_served(&[]);
    w.d.stop();
    // Accepted once: later starts need no flag.
    w.d.wrapper.clear();
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

/// Waits up to `limit` for `f` to hold.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn rows_refused_at_start_never_stop_the_daemon() {
    let mut w = world();
    w.d.stop();
    // Everything at once: a flipped bit, a re-pointed sandbox, garbage in a row.
    edit(
        &w.d.state,
        &format!(
            "UPDATE secrets SET ciphertext = x'00' WHERE kind = 'repo' AND scope = 'octo/a';
             UPDATE sandboxes SET repo = 'octo/b' WHERE id = '{}';
             UPDATE secrets SET nonce = 'garbage' WHERE kind = 'user' AND name = 'NPM';
             DELETE FROM secrets WHERE kind = 'user' AND name = 'DEPLOY';",
            w.mona_a.0
        ),
    );
    w.d.start().unwrap();
    assert!(eventually(Duration::from_secs(5), || w.d.alive()));
    let log = w.d.log_text();
    for needle in [
        "repository secret DB of octo/a: its seal does not verify",
        &format!("sandbox {}: its seal does not verify", w.mona_a.0),
        "user secret NPM of mona: malformed",
        "row missing from the database (deleted outside the daemon?) row=user secret DEPLOY of hubot",
    ] {
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
    }
    let (status, _) = fetch(&w.hubot_a.1);
    assert_eq!(status, 500);
    let other = w.d.sandbox("hubot", "octo/b");
    assert_eq!(served(&other.1), pairs(&[("DB", "b-db-VALUE")]));
    let log = w.d.stop();
    assert_no_values("daemon log", log.as_bytes(), &VALUES);
}

// ------------------------------------------------------------------------------------------
// Group commit: concurrent creates

/// Concurrent creates share transactions: 16 clients get many more creates per second than one
/// fsync each would allow. Prints the figure; the bound here is loose (a debug build on a
/// shared machine), BENCHMARKS.md has the release figure.
#[test]
fn concurrent_creates_share_commits() {
    let mut d = Daemon::new();
    let started = std::time::Instant::now();
    let acked = create_until(
        &d.run_dir(),
        16,
        started + Duration::from_secs(2),
        &Default::default(),
    );
    let rate = acked.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "group commit: {} creates from 16 clients, {rate:.0}/s",
        acked.len()
    );
    let db = rusqlite::Connection::open(d.state.join("secrets.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM sandboxes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, acked.len());
    // Fewer generations than creates: some commits carried several creates.
    let generation: i64 = db
        .query_row("SELECT max(version) FROM sandboxes", [], |r| r.get(0))
        .unwrap();
    assert!(
        (generation as usize) < acked.len(),
        "{generation} commits for {} creates",
        acked.len()
    );
    d.stop();
}

// ------------------------------------------------------------------------------------------
// Key rotation and backups

/// `key status --json` of a running daemon.
fn key_status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.cli(&["key", "status", "--json"], None).ok().stdout()).unwrap()
}

#[test]
fn kill_9_at_any_point_of_a_rotation_loses_nothing() {
    let mut d = Daemon::new();
    let mut want: Vec<(PathBuf, Vec<(String, String)>)> = Vec::new();
    for r in 0..10 {
        let repo = format!("octo/k{r}");
        let mut values = Vec::new();
        for n in 0..30 {
            let name = format!("K{n:02}");
            let value = format!("rot-{r}-{n}-VALUE");
            let body = serde_json::json!({"name": name, "repo": repo, "value": value});
            let (status, text) =
                admin_post(&d.run_dir(), "secrets/set", body.to_string().as_bytes()).unwrap();
            assert_eq!(status, 200, "{text}");
            values.push((name, value));
        }
        let (_, dir) = d.sandbox("mona", &repo);
        want.push((dir, values));
    }
    // One rotation undisturbed, to know how long one takes; the kills land across twice that.
    let started = std::time::Instant::now();
    let (status, text) = admin_post(&d.run_dir(), "key/rotate", b"{}").unwrap();
    assert_eq!(status, 200, "{text}");
    let took = started.elapsed();
    let mut rng = Rng::from_env("kill_9_rotation");
    let (mut rotated, mut committed) = (0, 0);
    let mut key = key_status(&d)["active"].as_str().unwrap().to_owned();
    for cycle in 0..10 {
        let pid = d.pid();
        let wait = Duration::from_micros(rng.below(2 * took.as_micros() as u64 + 1));
        let run_dir = d.run_dir();
        let rotation = std::thread::spawn(move || admin_post(&run_dir, "key/rotate", b"{}").ok());
        std::thread::sleep(wait);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some((200, _)) = rotation.join().unwrap() {
            rotated += 1;
        }
        d.kill9();
        d.start()
            .unwrap_or_else(|e| panic!("cycle {cycle} (killed after {wait:?}): {e}"));
        let log = d.log_text();
        assert!(!log.contains("row refused"), "cycle {cycle}:\n{log}");
        let status = key_status(&d);
        let active = status["active"].as_str().unwrap();
        if active != key {
            committed += 1;
            key = active.to_owned();
        }
        assert_eq!(
            status["rows"],
            serde_json::json!({ active: 310 }),
            "cycle {cycle}: every row under one key"
        );
        assert!(!d.state.join("key.next").exists(), "cycle {cycle}");
        for (dir, values) in &want {
            let got = served(dir);
            assert_eq!(got.len(), values.len());
            assert_eq!(&got, values, "cycle {cycle}");
        }
    }
    eprintln!(
        "kill -9 during rotation ({took:?} each): 10 kills, {committed} rotations committed, \
         {rotated} of them acknowledged before the kill"
    );
    d.stop();
}

#[test]
fn a_backup_taken_while_serving_restores_and_is_detected_as_older() {
    let mut w = world();
    let file = w.d.dir.path().join("backup.db");
    // Taken while sandboxes are being fetched.
    let dir = w.mona_b.1.clone();
    let reader = std::thread::spawn(move || {
        for _ in 0..200 {
            assert_eq!(fetch(&dir).0, 200);
        }
    });
    let out =
        w.d.cli(&["backup", file.to_str().unwrap()], None)
            .ok()
            .stdout();
    reader.join().unwrap();
    assert!(out.contains("backup of generation"), "{out}");
    assert_eq!(mode(&file), 0o600);
    w.d.cli(&["backup", file.to_str().unwrap()], None)
        .fails_with("File exists");
    // Later changes, then the restore of docs/operations.md: stop, copy back, start.
    w.d.cli(
        &["access", "TOKEN", "--user", "mona", "--repos", "octo/a"],
        None,
    )
    .ok();
    w.d.stop();
    for f in ["secrets.db-wal", "secrets.db-shm"] {
        let _ = std::fs::remove_file(w.d.state.join(f));
    }
    std::fs::copy(&file, w.d.state.join("secrets.db")).unwrap();
    let e = refuses_to_start(&mut w.d, "is older than the last one this host wrote");
    assert!(e.contains("generation"), "{e}");
    // The operator confirms with the flag itself.
    let log = w.d.dir.path().join("accept.log");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--accept-rollback", "--state-dir"])
        .arg(&w.d.state)
        .arg("--run-dir")
        .arg(w.d.run_dir())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening")
    }));
    // The backup's state: TOKEN still granted to octo/b.
    w.others_served(&[]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving a store older"), "{text}");
    w.d.start().unwrap();
    w.others_served(&[]);
    w.d.stop();
}

#[test]
fn a_store_error_prints_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(BIN);
    c.args(["serve", "--state-dir", "/etc/passwd/x", "--run-dir"])
        .arg(dir.path().join("run"));
    let r = run(c, None).fails_with("cannot create state directory /etc/passwd/x");
    assert_eq!(
        r.stderr().matches("Not a directory").count(),
        1,
        "{}",
        r.explain()
    );
}

/// Schema 3 ("hosts"): a store of schema 2 (its sandboxes have no host) is migrated once after
/// a backup; its sandboxes stay served by this, its only, broker and list with no host; new
/// ones carry this host's id.
#[test]
fn a_v2_store_gains_hosts_once_and_its_sandboxes_stay_served_here() {
    let mut d = Daemon::new();
    d.set_repo("DB", "octo/a", "a-db-VALUE");
    let (old, dir) = d.sandbox("mona", "octo/a");
    d.stop();
    // Back to schema 2 as the previous release wrote it.
    edit(
        &d.state,
        "ALTER TABLE sandboxes DROP COLUMN host; DROP TABLE tokens;
         DELETE FROM schema_migrations WHERE version >= 3;",
    );
    d.start().unwrap();
    let log = d.log_text();
    assert!(
        log.contains("migrating the store from schema 2 to 4"),
        "{log}"
    );
    assert_eq!(served(&dir), pairs(&[("DB", "a-db-VALUE")]));
    let backups: Vec<_> = std::fs::read_dir(&d.state)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("secrets.db.v2-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "one backup before the migration");
    let (new, _) = d.sandbox("mona", "octo/a");
    let listed: serde_json::Value =
        serde_json::from_str(&d.cli(&["sandbox", "list", "--json"], None).ok().stdout()).unwrap();
    let host_of = |id: &str| {
        listed["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["host"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(host_of(&old), "");
    assert!(!host_of(&new).is_empty());
    let versions = column(
        &d.state,
        "SELECT group_concat(version) FROM schema_migrations",
    );
    assert_eq!(versions, rusqlite::types::Value::Text("2,3,4".into()));
    // Once: the next start migrates nothing.
    d.stop();
    d.start().unwrap();
    assert!(!d.log_text().contains("migrating"), "{}", d.log_text());
    assert_eq!(served(&dir), pairs(&[("DB", "a-db-VALUE")]));
    d.stop();
}
