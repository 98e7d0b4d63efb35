//! Integration tests of `sandbox-secrets`: a real daemon process per test in its own temp dirs,
//! driven through the real CLI and the real sandbox sockets. A failure prints the command, its
//! stdout and stderr, and the daemon's log.

#![cfg(feature = "broker")]

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use support::daemon::*;

// ------------------------------------------------------------------------------------------

#[test]
fn set_update_list_delete_round_trip() {
    let mut d = Daemon::traced();
    let v1 = "round-trip-VALUE-one\nline two $'\"\\ `x`";
    let v2 = "round-trip-VALUE-two";
    d.set_user("api_token", "Mona", "octo/app", v1);
    let (_, dir) = d.sandbox("mona", "octo/app");
    assert_eq!(served(&dir), pairs(&[("API_TOKEN", v1)]));

    // Case-insensitive: the same secret, updated; the grant is kept when --repos is omitted.
    let out = d
        .cli(&["set", "Api_Token", "--user", "mona"], Some(v2.as_bytes()))
        .ok();
    assert!(out.stdout().contains("updated"), "{}", out.explain());
    assert_eq!(served(&dir), pairs(&[("API_TOKEN", v2)]));

    // From a file.
    let file = d.dir.path().join("value.txt");
    std::fs::write(&file, "from-file-VALUE").unwrap();
    d.cli(
        &["set", "db_url", "--repo", "Octo/App", "--from-file"],
        None,
    )
    .fails_with("--from-file");
    d.cli(
        &[
            "set",
            "db_url",
            "--repo",
            "Octo/App",
            "--from-file",
            file.to_str().unwrap(),
        ],
        None,
    )
    .ok();
    assert_eq!(
        served(&dir),
        pairs(&[("API_TOKEN", v2), ("DB_URL", "from-file-VALUE")])
    );

    let list = d.cli(&["list", "--user", "mona"], None).ok();
    assert!(list.stdout().contains("API_TOKEN") && list.stdout().contains("octo/app"));
    let json: serde_json::Value = serde_json::from_str(&d.list_json("--user", "mona")).unwrap();
    assert_eq!(json["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(json["secrets"][0]["repos"][0], "octo/app");
    // RFC 3339 UTC in JSON, as in the table.
    let updated = json["secrets"][0]["updated"].as_str().unwrap();
    assert!(
        updated.starts_with("20") && updated.ends_with('Z'),
        "{updated}"
    );
    let rlist = d.cli(&["list", "--repo", "octo/app"], None).ok();
    assert!(rlist.stdout().contains("DB_URL"));
    for out in [&list, &rlist] {
        assert_no_values("list output", &out.out.stdout, &[v1, v2, "from-file-VALUE"]);
    }

    // Delete (stdin is not a terminal: no question asked).
    d.cli(&["delete", "API_TOKEN", "--user", "mona"], None).ok();
    d.cli(&["delete", "API_TOKEN", "--user", "mona"], None)
        .fails_with("no user secret API_TOKEN for mona");
    d.cli(&["delete", "db_url", "--repo", "octo/app", "--yes"], None)
        .ok();
    assert_eq!(served(&dir), vec![]);
    let empty: serde_json::Value = serde_json::from_str(&d.list_json("--user", "mona")).unwrap();
    assert_eq!(empty["secrets"], serde_json::json!([]));

    let log = d.stop();
    assert_no_values(
        "daemon log",
        log.as_bytes(),
        &[v2, "round-trip-VALUE-one", "from-file-VALUE"],
    );
    assert!(log.contains("API_TOKEN"), "audit names secrets:\n{log}");
}

#[test]
fn access_matrix_and_plan() {
    let mut d = Daemon::traced();
    d.set_user("TOKEN", "mona", "octo/a", "mona-token-VALUE");
    d.set_user("ONLY_B", "mona", "octo/b", "mona-b-VALUE");
    d.set_user("HUBOT_T", "hubot", "octo/a,octo/b", "hubot-VALUE");
    d.set_repo("TOKEN", "octo/a", "repo-a-token-VALUE");
    d.set_repo("DB", "octo/a", "repo-a-db-VALUE");
    d.set_repo("DB", "octo/b", "repo-b-db-VALUE");

    let (_, mona_a) = d.sandbox("mona", "octo/a");
    let (_, mona_b) = d.sandbox("mona", "octo/b");
    let (_, hubot_a) = d.sandbox("hubot", "octo/a");
    let (_, mona_c) = d.sandbox("mona", "octo/c");

    // User secret wins the clash on TOKEN; repository secrets reach every sandbox of the repo.
    assert_eq!(
        served(&mona_a),
        pairs(&[("DB", "repo-a-db-VALUE"), ("TOKEN", "mona-token-VALUE")])
    );
    assert_eq!(
        served(&mona_b),
        pairs(&[("DB", "repo-b-db-VALUE"), ("ONLY_B", "mona-b-VALUE")])
    );
    assert_eq!(
        served(&hubot_a),
        pairs(&[
            ("DB", "repo-a-db-VALUE"),
            ("HUBOT_T", "hubot-VALUE"),
            ("TOKEN", "repo-a-token-VALUE")
        ])
    );
    assert_eq!(served(&mona_c), vec![]);
    let (_, body) = fetch(&mona_a);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["repository"], "octo/a");
    assert_eq!(v.as_object().unwrap().len(), 3, "{body}");

    let plan = d
        .cli(&["plan", "--user", "mona", "--repo", "octo/a"], None)
        .ok();
    let text = plan.stdout();
    assert!(
        text.contains("TOKEN") && text.contains("user secret wins"),
        "{text}"
    );
    assert_no_values(
        "plan",
        text.as_bytes(),
        &["mona-token-VALUE", "repo-a-db-VALUE"],
    );
    let plan = d
        .cli(
            &["plan", "--user", "mona", "--repo", "octo/a", "--json"],
            None,
        )
        .ok();
    let p: serde_json::Value = serde_json::from_str(&plan.stdout()).unwrap();
    assert_eq!(
        p["secrets"],
        serde_json::json!([
            {"name": "DB", "from": "repository", "overrides_repository": false},
            {"name": "TOKEN", "from": "user", "overrides_repository": true},
        ])
    );

    // Changing access needs no value (stdin is empty/null) and takes effect at once.
    let out = d
        .cli(
            &[
                "access",
                "TOKEN",
                "--user",
                "mona",
                "--repos",
                "octo/b,octo/c",
            ],
            None,
        )
        .ok();
    assert!(out.stdout().contains("access changed"), "{}", out.explain());
    assert_eq!(
        served(&mona_a),
        pairs(&[("DB", "repo-a-db-VALUE"), ("TOKEN", "repo-a-token-VALUE")])
    );
    assert!(served(&mona_b).contains(&("TOKEN".into(), "mona-token-VALUE".into())));
    assert_eq!(served(&mona_c), pairs(&[("TOKEN", "mona-token-VALUE")]));
    d.cli(&["access", "TOKEN", "--user", "mona", "--repos", ""], None)
        .ok();
    assert_eq!(served(&mona_c), vec![]);
    d.cli(
        &["access", "NOPE", "--user", "mona", "--repos", "octo/a"],
        None,
    )
    .fails_with("no user secret NOPE for mona");
    d.cli(
        &["access", "TOKEN", "--user", "mona", "--repos", "not-a-repo"],
        None,
    )
    .fails_with("must be owner/name");

    let log = d.stop();
    assert_no_values(
        "daemon log",
        log.as_bytes(),
        &[
            "mona-token-VALUE",
            "repo-a-token-VALUE",
            "hubot-VALUE",
            "repo-b-db-VALUE",
        ],
    );
    assert!(
        log.contains("names=DB,TOKEN") || log.contains("names=\"DB,TOKEN\""),
        "{log}"
    );
}

#[test]
fn invalid_input_is_refused_by_rule_and_the_store_is_unchanged() {
    let mut d = Daemon::traced();
    d.set_user("KEEP", "mona", "octo/a", "keep-user-VALUE");
    d.set_repo("KEEP", "octo/a", "keep-repo-VALUE");
    let before = (
        d.list_json("--user", "mona"),
        d.list_json("--repo", "octo/a"),
    );

    let long = "A".repeat(256);
    let big = "x".repeat(48 * 1024 + 1);
    let cases: Vec<(Vec<&str>, Vec<u8>, &str)> = vec![
        (
            vec!["set", "1ABC", "--repo", "octo/a"],
            b"v".to_vec(),
            "must not start with a digit",
        ),
        (
            vec!["set", "A-B", "--repo", "octo/a"],
            b"v".to_vec(),
            "may only contain letters, digits and underscores",
        ),
        (
            vec!["set", "A B", "--repo", "octo/a"],
            b"v".to_vec(),
            "may only contain",
        ),
        (
            vec!["set", "", "--repo", "octo/a"],
            b"v".to_vec(),
            "secret name is empty",
        ),
        (
            vec!["set", &long, "--repo", "octo/a"],
            b"v".to_vec(),
            "longer than 255",
        ),
        (
            vec!["set", "github_token", "--repo", "octo/a"],
            b"v".to_vec(),
            "must not start with GITHUB_",
        ),
        (
            vec!["set", "Sandbox_X", "--repo", "octo/a"],
            b"v".to_vec(),
            "must not start with SANDBOX_",
        ),
        (
            vec!["set", "ld_preload", "--repo", "octo/a"],
            b"v".to_vec(),
            "is dangerous (LD_*: the dynamic loader loads code into every program (LD_PRELOAD, \
             LD_AUDIT)); allow it explicitly (pass --allow-dangerous",
        ),
        (
            vec!["set", "PATH", "--user", "mona", "--repos", "octo/a"],
            b"v".to_vec(),
            "is dangerous",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo/a"],
            b"".to_vec(),
            "secret value is empty",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo/a"],
            b"ab\0cd".to_vec(),
            "NUL byte at offset 2",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo/a"],
            vec![b'a', 0xff, b'b'],
            "not valid UTF-8",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo/a"],
            big.clone().into_bytes(),
            "more than the 49152-byte limit",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo"],
            b"v".to_vec(),
            "must be owner/name",
        ),
        (
            vec!["set", "KEEP", "--repo", "a/b/c"],
            b"v".to_vec(),
            "must be owner/name",
        ),
        (
            vec!["set", "KEEP", "--user=-mona", "--repos", "octo/a"],
            b"v".to_vec(),
            "must be 1-39 letters",
        ),
        (
            vec!["set", "KEEP", "--user", "mona", "--repos", "octo/a,bad"],
            b"v".to_vec(),
            "\"bad\" must be owner/name",
        ),
        (
            vec!["set", "NEW", "--user", "mona"],
            b"v".to_vec(),
            "give the repositories",
        ),
        (
            vec!["set", "KEEP", "--repo", "octo/a", "--repos", "octo/b"],
            b"v".to_vec(),
            "cannot be used with",
        ),
        (
            vec!["set", "KEEP", "--user", "mona", "--repo", "octo/a"],
            b"v".to_vec(),
            "cannot be used with",
        ),
        (
            vec!["delete", "bad-name", "--repo", "octo/a"],
            vec![],
            "may only contain",
        ),
        (
            vec!["sandbox", "create", "--user", "mona", "--repo", "nope"],
            vec![],
            "must be owner/name",
        ),
        (
            vec!["sandbox", "delete", "../../etc"],
            vec![],
            "is not 32 lower-case hex digits",
        ),
        (
            vec!["sandbox", "delete", "0123456789abcdef0123456789abcdef"],
            vec![],
            "no sandbox 0123456789abcdef0123456789abcdef",
        ),
    ];
    for (args, stdin, needle) in &cases {
        let out = d.cli(args, Some(stdin)).fails_with(needle);
        assert_no_values("error output", &out.out.stderr, &["keep-user-VALUE"]);
    }
    // The refused value itself never shows up in the error.
    let out = d
        .cli(
            &["set", "KEEP", "--repo", "octo/a"],
            Some(b"refused-VALUE\0x"),
        )
        .fails_with("NUL");
    assert_no_values("error", &out.out.stderr, &["refused-VALUE"]);
    assert_eq!(
        before,
        (
            d.list_json("--user", "mona"),
            d.list_json("--repo", "octo/a")
        )
    );
    let (_, dir) = d.sandbox("mona", "octo/a");
    assert_eq!(served(&dir), pairs(&[("KEEP", "keep-user-VALUE")]));

    // Dangerous names pass with the explicit flag.
    d.cli(
        &["set", "ld_preload", "--repo", "octo/z", "--allow-dangerous"],
        Some(b"/lib/x.so"),
    )
    .ok();
    assert!(d.list_json("--repo", "octo/z").contains("LD_PRELOAD"));

    // 100 per user and per repository; the 101st is refused and nothing changes.
    for i in 0..99 {
        d.set_user(&format!("U{i}"), "mona", "octo/a", "u");
        d.set_repo(&format!("R{i}"), "octo/a", "r");
    }
    let full = (
        d.list_json("--user", "mona"),
        d.list_json("--repo", "octo/a"),
    );
    d.cli(
        &["set", "EXTRA", "--user", "mona", "--repos", "octo/a"],
        Some(b"v"),
    )
    .fails_with("user mona already has 100 secrets (the limit)");
    d.cli(&["set", "EXTRA", "--repo", "octo/a"], Some(b"v"))
        .fails_with("repository octo/a already has 100 secrets (the limit)");
    // Updating at the limit still works.
    d.cli(
        &["set", "KEEP", "--repo", "octo/a"],
        Some(b"keep-repo-VALUE"),
    )
    .ok();
    assert_eq!(
        full.0,
        d.list_json("--user", "mona"),
        "refused change touched the store"
    );
    let listed: serde_json::Value = serde_json::from_str(&d.list_json("--repo", "octo/a")).unwrap();
    assert_eq!(listed["secrets"].as_array().unwrap().len(), 100);
    assert_eq!(served(&dir).len(), 199);
    d.stop();
}

#[test]
fn nothing_at_rest_holds_a_plaintext_value_and_tampering_is_named() {
    let mut d = Daemon::traced();
    let values = ["AT-REST-user-VALUE-4f1c", "AT-REST-repo-VALUE-93ab"];
    d.set_user("TOKEN", "mona", "octo/a", values[0]);
    d.set_repo("DB_PASS", "octo/a", values[1]);
    let (_, dir) = d.sandbox("mona", "octo/a");
    let (_, other) = d.sandbox("hubot", "octo/b");
    d.set_repo("B_ONLY", "octo/b", "b-VALUE");
    assert_eq!(served(&dir).len(), 2);

    // While running (WAL live) and after stopping: no file in the state dir holds a value.
    let scan = |d: &Daemon| {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&d.state).unwrap() {
            let path = entry.unwrap().path();
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            assert_no_values(
                &path.display().to_string(),
                &std::fs::read(&path).unwrap(),
                &values,
            );
        }
        seen
    };
    let live = scan(&d);
    assert!(
        live.iter().any(|f| f == "secrets.db-wal"),
        "WAL not in use: {live:?}"
    );
    assert_eq!(mode(&d.state.join("key")), 0o600);
    assert_eq!(std::fs::metadata(d.state.join("key")).unwrap().len(), 32);
    d.stop();
    scan(&d);

    // Flip one bit of DB_PASS's ciphertext while the daemon is stopped.
    {
        let db = rusqlite::Connection::open(d.state.join("secrets.db")).unwrap();
        let mut ct: Vec<u8> = db
            .query_row(
                "SELECT ciphertext FROM secrets WHERE kind = 'repo' AND name = 'DB_PASS'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        ct[3] ^= 0x01;
        db.execute(
            "UPDATE secrets SET ciphertext = ?1 WHERE kind = 'repo' AND name = 'DB_PASS'",
            [ct],
        )
        .unwrap();
    }
    d.start().unwrap();
    let (status, body) = fetch(&dir);
    assert_eq!(status, 500, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(msg.contains("DB_PASS") && msg.contains("octo/a"), "{msg}");
    assert_no_values("error answer", body.as_bytes(), &values);
    // Other sandboxes are served as before.
    assert_eq!(served(&other), pairs(&[("B_ONLY", "b-VALUE")]));
    let log = d.stop();
    assert!(
        log.contains("DB_PASS"),
        "startup names the tampered secret:\n{log}"
    );
    assert_no_values("daemon log", log.as_bytes(), &values);
    // Swapping a valid ciphertext in from another secret is refused too: the AAD binds the
    // value to its scope and name.
    {
        let db = rusqlite::Connection::open(d.state.join("secrets.db")).unwrap();
        db.execute(
            "UPDATE secrets SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM secrets
             WHERE kind = 'user' AND name = 'TOKEN') WHERE kind = 'repo' AND name = 'DB_PASS'",
            [],
        )
        .unwrap();
    }
    d.start().unwrap();
    let (status, body) = fetch(&dir);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("DB_PASS"), "{body}");
    assert_no_values("error answer", body.as_bytes(), &values);
    d.stop();
}

#[test]
fn key_file_rules() {
    let mut d = Daemon::traced();
    d.set_repo("X", "octo/a", "key-rules-VALUE");
    d.stop();
    let key = d.state.join("key");
    let original = std::fs::read(&key).unwrap();

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = d.start().unwrap_err();
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");

    std::fs::write(&key, [0x5a; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = d.start().unwrap_err();
    assert!(e.contains("does not open this store"), "{e}");

    std::fs::remove_file(&key).unwrap();
    let e = d.start().unwrap_err();
    assert!(
        e.contains("is missing but the store holds 1 sealed secrets"),
        "{e}"
    );

    std::fs::write(&key, &original).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.start().unwrap();
    let (_, dir) = d.sandbox("mona", "octo/a");
    assert_eq!(served(&dir), pairs(&[("X", "key-rules-VALUE")]));
    d.stop();
}

#[test]
fn restart_keeps_secrets_and_sandboxes_through_the_same_directory() {
    let mut d = Daemon::traced();
    d.set_user("TOKEN", "mona", "octo/a", "restart-VALUE");
    let (id, dir) = d.sandbox("mona", "octo/a");
    let listed_before = d.cli(&["sandbox", "list", "--json"], None).ok().stdout();
    assert_eq!(served(&dir), pairs(&[("TOKEN", "restart-VALUE")]));
    // Hold the directory open as a bind mount would: the same inode must serve after restart.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());

    // An idle keep-alive connection does not hold up a SIGTERM: it is closed in the drain.
    let mut idle = UnixStream::connect(dir.join("secrets.sock")).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(idle, "GET /v1/secrets HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let log = d.stop();
    assert!(
        !log.contains("still open after the drain timeout"),
        "idle connection held up the drain:\n{log}"
    );
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(
        !d.run_dir().join("admin.sock").exists(),
        "SIGTERM leaves the admin socket"
    );
    assert!(
        !dir.join("secrets.sock").exists(),
        "SIGTERM leaves the sandbox socket"
    );
    assert!(
        dir.is_dir(),
        "the sandbox directory must survive for its bind mount"
    );

    d.start().unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap()),
        inode
    );
    assert_eq!(served(&dir), pairs(&[("TOKEN", "restart-VALUE")]));
    assert_eq!(
        d.cli(&["sandbox", "list", "--json"], None).ok().stdout(),
        listed_before
    );
    assert!(d
        .cli(&["sandbox", "list"], None)
        .ok()
        .stdout()
        .contains(&id));

    // A second daemon on the same run directory is refused.
    let second = run(
        {
            let mut c = Command::new(BIN);
            c.args(["serve", "--state-dir"])
                .arg(d.dir.path().join("state2"))
                .arg("--run-dir")
                .arg(d.run_dir());
            c
        },
        None,
    );
    let second = second.fails_with("in use by a running daemon");
    assert!(
        second.stderr().contains("admin.sock"),
        "{}",
        second.explain()
    );
    // ... and the first still serves.
    assert_eq!(served(&dir).len(), 1);

    // A stale socket file (daemon killed hard) is replaced on start.
    assert!(
        d.alive(),
        "daemon gone before the hard kill\n{}",
        d.log_text()
    );
    d.kill9();
    assert!(d.run_dir().join("admin.sock").exists());
    d.start().unwrap();
    assert_eq!(served(&dir), pairs(&[("TOKEN", "restart-VALUE")]));
    d.stop();
}

#[test]
fn modes_of_the_run_directory_and_sandbox_deletion() {
    let mut d = Daemon::traced();
    let (id, dir) = d.sandbox("mona", "octo/a");
    let run = d.run_dir();
    assert_eq!(mode(&run), 0o755);
    assert_eq!(mode(&run.join("admin.sock")), 0o600);
    assert_eq!(mode(&run.join("sandboxes")), 0o700);
    assert_eq!(dir, run.join("sandboxes").join(&id));
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("secrets.sock")), 0o666);
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    // Other routes and methods answer JSON errors.
    let (status, body) = http(&dir.join("secrets.sock"), "GET", "/v1/other").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = http(&dir.join("secrets.sock"), "POST", "/v1/secrets").unwrap();
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = http(&run.join("admin.sock"), "GET", "/v1/admin/plan").unwrap();
    assert_eq!(status, 405, "{body}");

    let (id2, dir2) = d.sandbox("mona", "octo/a");
    d.cli(&["sandbox", "delete", &id], None).ok();
    assert!(!dir.exists(), "deleted sandbox's directory is still there");
    assert!(UnixStream::connect(dir.join("secrets.sock")).is_err());
    let list = d.cli(&["sandbox", "list"], None).ok().stdout();
    assert!(!list.contains(&id) && list.contains(&id2), "{list}");
    assert_eq!(fetch(&dir2).0, 200);
    d.stop();
    d.start().unwrap();
    assert!(!dir.exists(), "deleted sandbox came back after restart");
    assert_eq!(fetch(&dir2).0, 200);
    d.stop();
}

#[test]
fn admin_socket_refuses_other_uids() {
    if let Some(why) = nobody_unavailable() {
        support::skip(why);
        return;
    }
    let mut d = Daemon::traced();
    d.set_repo("X", "octo/a", "admin-uid-VALUE");
    let cli_as_nobody = |args: &[&str]| {
        let mut c = as_nobody(&[BIN, "--run-dir"]);
        c.arg(d.run_dir()).args(args);
        run(c, None)
    };
    // The socket's 0600 mode stops the connect itself.
    cli_as_nobody(&["list", "--repo", "octo/a"]).fails_with("Permission denied");
    // With the mode opened up, SO_PEERCRED still refuses, with a 403 naming the rule.
    let admin = d.run_dir().join("admin.sock");
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as_nobody(&["list", "--repo", "octo/a"])
        .fails_with("uid 65534 may not use the admin socket");
    assert!(!out.stdout().contains('X'), "{}", out.explain());
    cli_as_nobody(&["sandbox", "create", "--user", "mona", "--repo", "octo/a"])
        .fails_with("uid 65534 may not use the admin socket");
    assert!(d
        .cli(&["sandbox", "list", "--json"], None)
        .ok()
        .stdout()
        .contains("[]"));
    // Root still works.
    d.cli(&["list", "--repo", "octo/a"], None).ok();
    let log = d.stop();
    assert!(
        log.contains("admin connection refused") && log.contains("65534"),
        "{log}"
    );
}

#[test]
fn unusable_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let mut c = Command::new(BIN);
    c.args(["serve", "--state-dir"])
        .arg(file.join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"));
    let out = run(c, None).fails_with("cannot create state directory");
    // The cause is printed once: an error names it in its message or returns it as its source,
    // and the binary's printer never shows it twice.
    assert_eq!(
        out.stderr().matches("Not a directory").count(),
        1,
        "{}",
        out.explain()
    );

    if !is_root() {
        support::skip("needs root for the non-root daemon case");
        return;
    }
    // A daemon running as nobody cannot write a root-owned state directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = as_nobody(&[BIN, "serve", "--state-dir"]);
    c.arg(&state)
        .arg("--run-dir")
        .arg(dir.path().join("run-nobody"));
    let out = run(c, None).fails_with("is not writable");
    assert_eq!(
        out.stderr().matches("Permission denied").count(),
        1,
        "{}",
        out.explain()
    );
}

#[test]
fn delete_asks_on_a_terminal_unless_yes() {
    if Command::new("script").arg("--version").output().is_err() {
        support::skip("script(1) not installed (needed for a pseudo-terminal)");
        return;
    }
    let mut d = Daemon::traced();
    d.set_repo("GONE", "octo/a", "confirm-VALUE");
    let on_tty = |args: &str, answer: &[u8]| {
        let mut c = Command::new("script");
        c.args(["-qec"])
            .arg(format!("{BIN} --run-dir {} {args}", d.run_dir().display()))
            .arg("/dev/null");
        run(c, Some(answer))
    };
    let out = on_tty("delete GONE --repo octo/a", b"n\n");
    assert!(
        !out.out.status.success()
            && out
                .stdout()
                .contains("delete repository secret GONE of octo/a? [y/N]"),
        "{}",
        out.explain()
    );
    // Declined: "canceled", exit 2 (not an error).
    assert!(out.stdout().contains("canceled"), "{}", out.explain());
    assert_eq!(out.out.status.code(), Some(2), "{}", out.explain());
    assert!(d.list_json("--repo", "octo/a").contains("GONE"));
    let out = on_tty("delete GONE --repo octo/a --yes", b"");
    assert!(
        out.out.status.success() && !out.stdout().contains("[y/N]"),
        "{}",
        out.explain()
    );
    assert!(!d.list_json("--repo", "octo/a").contains("GONE"));
    d.stop();
}

#[test]
fn directories_of_another_uid_are_refused_and_the_client_sends_only_to_root_or_itself() {
    if let Some(why) = nobody_unavailable() {
        support::skip(why);
        return;
    }
    let nobody_dir = |path: &std::path::Path| {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    };
    // A root daemon refuses a run directory or a state directory another uid owns: that uid
    // could replace the admin socket, or the store and its key.
    let dir = tempfile::tempdir().unwrap();
    let other_run = dir.path().join("other-run");
    nobody_dir(&other_run);
    // `timeout` is a hang guard: a daemon that accepted the directory would serve forever.
    let mut c = Command::new("timeout");
    c.args(["60", BIN, "serve", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(&other_run);
    run(c, None).fails_with(&format!(
        "run directory {} is owned by uid 65534",
        other_run.display()
    ));
    assert!(!other_run.join("admin.sock").exists());
    let other_state = dir.path().join("other-state");
    nobody_dir(&other_state);
    // `timeout` is a hang guard: a daemon that accepted the directory would serve forever.
    let mut c = Command::new("timeout");
    c.args(["60", BIN, "serve", "--state-dir"])
        .arg(&other_state)
        .arg("--run-dir")
        .arg(dir.path().join("run"));
    run(c, None).fails_with(&format!(
        "state directory {} is owned by uid 65534",
        other_state.display()
    ));
    assert!(!other_state.join("key").exists());

    // A daemon run by another user (here nobody) at the run directory root's client uses: the
    // client checks who serves the socket and sends nothing, not even a value.
    let mut d = Daemon::unstarted(None);
    nobody_dir(&d.run_dir());
    nobody_dir(&d.state);
    d.wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec();
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let value = "impostor-VALUE-51c2";
    let out = d
        .cli(&["set", "STOLEN", "--repo", "o/r"], Some(value.as_bytes()))
        .fails_with("served by uid 65534, not root, this user (uid 0) or the sandbox-secrets service account; nothing was sent");
    assert_no_values("refused client", out.explain().as_bytes(), &[value]);
    // Its own user may use it; it never received the value.
    let mut c = as_nobody(&[BIN, "--run-dir"]);
    c.arg(d.run_dir()).args(["list", "--repo", "o/r", "--json"]);
    let list = run(c, None).ok().stdout();
    assert!(!list.contains("STOLEN"), "{list}");
    let log = d.stop();
    assert!(!log.contains("admin change"), "{log}");
    assert_no_values("daemon log", log.as_bytes(), &[value]);
}

/// `secrets/import` straight on the admin socket (what a platform or script sends, with no CLI
/// check before it): a last entry that breaks a name rule, a value rule or the one-name rule
/// refuses the whole import with its entry named and the store unchanged; a good one stores
/// every entry byte for byte and wakes nothing it does not reach.
#[test]
fn an_import_on_the_admin_socket_is_all_or_nothing() {
    let d = Daemon::traced();
    let keep = "kept-VALUE-\u{e9}\n";
    d.set_repo("KEEP", "octo/imp", keep);
    let (_, dir) = d.sandbox("mona", "octo/imp");
    let before = d.list_json("--repo", "octo/imp");
    let body = |last: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "repo": "octo/imp",
            "entries": [
                {"name": "KEEP", "value": "imp-VALUE-1"},
                {"name": "FRESH", "value": "imp-VALUE-2"},
                last,
            ],
        }))
        .unwrap()
    };
    for (last, status, words) in [
        (
            serde_json::json!({"name": "LD_PRELOAD", "value": "imp-VALUE-3"}),
            400,
            (
                "entry 3 (LD_PRELOAD) refused; nothing was stored",
                "name-dangerous",
            ),
        ),
        (
            serde_json::json!({"name": "9X", "value": "imp-VALUE-3"}),
            400,
            ("entry 3 (9X) refused", "name-leading-digit"),
        ),
        (
            serde_json::json!({"name": "OK", "value": ""}),
            400,
            ("entry 3 (OK) refused", "value-empty"),
        ),
        (
            serde_json::json!({"name": "fresh", "value": "imp-VALUE-3"}),
            400,
            (
                "given twice in the import (first as entry 2)",
                "import-duplicate",
            ),
        ),
    ] {
        let (code, text) = admin_post(&d.run_dir(), "secrets/import", &body(last)).unwrap();
        assert_eq!(code, status, "{text}");
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(e["error"].as_str().unwrap().contains(words.0), "{text}");
        assert_eq!(e["rule"], words.1, "{text}");
        assert!(!text.contains("VALUE"), "{text}");
        assert_eq!(d.list_json("--repo", "octo/imp"), before);
        assert_eq!(served(&dir), pairs(&[("KEEP", keep)]));
    }
    let (code, text) = admin_post(
        &d.run_dir(),
        "secrets/import",
        br#"{"repo":"octo/imp","entries":[]}"#,
    )
    .unwrap();
    assert_eq!((code, text.contains("import-empty")), (400, true), "{text}");
    // More entries than a scope can hold: refused before any is looked at.
    let many: Vec<_> = (0..101)
        .map(|i| serde_json::json!({"name": format!("M{i}"), "value": "imp-VALUE"}))
        .collect();
    let too_many =
        serde_json::to_vec(&serde_json::json!({"repo": "octo/imp", "entries": many})).unwrap();
    let (code, text) = admin_post(&d.run_dir(), "secrets/import", &too_many).unwrap();
    assert_eq!(code, 409, "{text}");
    assert!(
        text.contains("101 entries") && text.contains("secrets-per-scope"),
        "{text}"
    );
    assert_eq!(d.list_json("--repo", "octo/imp"), before);

    let good = body(serde_json::json!({"name": "third", "value": " sp\tace\r\n"}));
    let (code, text) = admin_post(&d.run_dir(), "secrets/import", &good).unwrap();
    assert_eq!(code, 200, "{text}");
    let a: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(a["secrets"][0]["result"], "updated", "{text}");
    assert_eq!(a["secrets"][2]["name"], "THIRD", "{text}");
    assert_eq!(a["secrets"][2]["result"], "created", "{text}");
    assert_eq!(a["sandboxes"].as_array().unwrap().len(), 1, "{text}");
    assert_eq!(
        served(&dir),
        pairs(&[
            ("FRESH", "imp-VALUE-2"),
            ("KEEP", "imp-VALUE-1"),
            ("THIRD", " sp\tace\r\n"),
        ])
    );
    assert_no_values(
        "the daemon's log",
        d.log_text().as_bytes(),
        &["imp-VALUE", "kept-VALUE", "sp\tace"],
    );
}

/// The answer-size check counts an import's entries together: with a user's sandbox answer
/// less than one 48 KiB secret short of the init's 16 MiB cap after one such secret is
/// deleted, each of two such entries fits alone, the two together do not; the import is
/// refused naming the second, nothing stored.
#[test]
fn an_import_is_held_to_the_answer_size_as_a_whole() {
    let d = Daemon::new();
    let (_, dir) = d.sandbox("mallory", "evil/big");
    // Control characters escape to 6 bytes each: about 288 KiB of answer per secret; then
    // plain 48 KiB ones until one more does not fit.
    let mut stored = 0usize;
    for value in ["\u{1}".repeat(48 * 1024), "a".repeat(48 * 1024)] {
        loop {
            let name = format!("BIG_{stored:03}");
            let r = d.cli(
                &["set", &name, "--user", "mallory", "--repos", "evil/big"],
                Some(value.as_bytes()),
            );
            if !r.out.status.success() {
                assert!(r.stderr().contains("answer-size"), "{}", r.explain());
                break;
            }
            stored += 1;
            assert!(stored < 100, "no answer-size refusal");
        }
    }
    let last = format!("BIG_{:03}", stored - 1);
    d.cli(&["delete", &last, "--user", "mallory"], None).ok();
    let before = d.list_json("--user", "mallory");
    let value = "a".repeat(48 * 1024);
    let entry = |n: &str| serde_json::json!({"name": n, "value": value});
    let body = serde_json::to_vec(&serde_json::json!({
        "user": "mallory",
        "repos": ["evil/big"],
        "entries": [entry(&last), entry("ONE_MORE")],
    }))
    .unwrap();
    let (code, text) = admin_post(&d.run_dir(), "secrets/import", &body).unwrap();
    assert_eq!(code, 409, "{text}");
    assert!(
        text.contains("entry 2 (ONE_MORE) refused") && text.contains("answer-size"),
        "{text}"
    );
    assert_eq!(d.list_json("--user", "mallory"), before);
    // Alone, it fits.
    let body = serde_json::to_vec(&serde_json::json!({
        "user": "mallory",
        "repos": ["evil/big"],
        "entries": [entry(&last)],
    }))
    .unwrap();
    let (code, text) = admin_post(&d.run_dir(), "secrets/import", &body).unwrap();
    assert_eq!(code, 200, "{text}");
    assert_eq!(fetch(&dir).0, 200);
}
