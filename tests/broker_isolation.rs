//! Isolation of sandboxes against a real daemon: no request on one sandbox's socket reaches
//! another's secrets, symlinks put in the run directory are never followed at creation or
//! restart, host users cannot reach sandbox sockets, and the modes SPEC gives hold throughout.
#![cfg(feature = "broker")]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::daemon::*;

const A_VALUE: &str = "isolation-A-VALUE-7f3a";
const B_VALUE: &str = "isolation-B-VALUE-91c2";

/// Two sandboxes of different users and repositories, each with a secret only it may read.
fn two_sandboxes(d: &Daemon) -> ((String, std::path::PathBuf), (String, std::path::PathBuf)) {
    d.cli(
        &["set", "ONLY_A", "--user", "mona", "--repos", "iso/a"],
        Some(A_VALUE.as_bytes()),
    )
    .ok();
    d.cli(
        &["set", "ONLY_B", "--repo", "iso/b"],
        Some(B_VALUE.as_bytes()),
    )
    .ok();
    let a = d.sandbox("mona", "iso/a");
    let b = d.sandbox("hubot", "iso/b");
    assert_eq!(served(&a.1), vec![("ONLY_A".into(), A_VALUE.into())]);
    assert_eq!(served(&b.1), vec![("ONLY_B".into(), B_VALUE.into())]);
    (a, b)
}

fn assert_modes(d: &Daemon, dirs: &[&Path]) {
    let run = d.run_dir();
    assert_eq!(mode(&run), 0o755, "run dir");
    assert_eq!(mode(&run.join("admin.sock")), 0o600, "admin socket");
    assert_eq!(mode(&run.join("sandboxes")), 0o700, "sandboxes/");
    for dir in dirs {
        assert_eq!(mode(dir), 0o755, "{}", dir.display());
        assert_eq!(mode(&dir.join("secrets.sock")), 0o666, "{}", dir.display());
    }
}

#[test]
fn no_request_on_one_socket_reads_another_sandbox() {
    let d = Daemon::new();
    let ((a_id, a), (b_id, _b)) = two_sandboxes(&d);
    let sock = a.join("secrets.sock");
    let own = served(&a);
    let get = |path: &str, headers: &str| -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: 0\r\n\r\n")
            .into_bytes()
    };
    let mut attempts: Vec<(String, Vec<u8>)> = Vec::new();
    for path in [
        format!("/v1/secrets/../{b_id}"),
        format!("/v1/secrets/../../sandboxes/{b_id}/secrets"),
        format!("/v1/secrets/{b_id}"),
        format!("/v1/sandboxes/{b_id}/secrets"),
        format!("/v1/secrets%2f..%2f{b_id}"),
        format!("/v1/secrets?sandbox={b_id}"),
        format!("/v1/secrets?id={b_id}&user=hubot&repo=iso/b"),
        "/v1/secrets?repository=iso%2Fb".to_string(),
        format!("/v1/secrets#{b_id}"),
        format!("http://{b_id}/v1/secrets"),
        format!("http://localhost/v1/sandboxes/{b_id}/secrets"),
        "//v1/secrets".into(),
        "/v1/./secrets".into(),
        "/v1/secrets/".into(),
        "/V1/SECRETS".into(),
        "/v1/admin/sandboxes/list".into(),
        "/v1/admin/plan".into(),
        format!("/{b_id}/secrets.sock"),
        "*".into(),
    ] {
        attempts.push((format!("path {path}"), get(&path, "")));
    }
    for header in [
        format!("Host: {b_id}\r\n"),
        format!("X-Sandbox: {b_id}\r\n"),
        format!("X-Sandbox-Id: {b_id}\r\nX-User: hubot\r\nX-Repository: iso/b\r\n"),
        format!("Authorization: Bearer {b_id}\r\n"),
        format!("Forwarded: for={b_id}\r\n"),
        "X-Forwarded-User: hubot\r\n".into(),
    ] {
        attempts.push((
            format!("header {}", header.trim()),
            get("/v1/secrets", &header),
        ));
    }
    let body = serde_json::json!({"sandbox": b_id, "user": "hubot", "repo": "iso/b"}).to_string();
    attempts.push((
        "id in the body".into(),
        request("GET", "/v1/secrets", body.as_bytes()),
    ));
    attempts.push((
        "id in a POST body".into(),
        request("POST", "/v1/secrets", body.as_bytes()),
    ));
    attempts.push((
        "admin route with a body".into(),
        request(
            "POST",
            "/v1/admin/sandboxes/create",
            br#"{"user":"hubot","repo":"iso/b"}"#,
        ),
    ));
    let mut served_own = 0;
    for (what, raw) in &attempts {
        let (status, body) = exchange(&sock, raw.clone(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!body.contains(B_VALUE), "{what}: B's value leaked: {body}");
        assert!(!body.contains("ONLY_B"), "{what}: B's name leaked: {body}");
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["sandbox"], a_id.as_str(), "{what}: {body}");
                served_own += 1;
            }
            400 | 404 | 405 => {
                if !body.is_empty() {
                    assert!(body.contains("\"error\""), "{what}: {body}");
                }
            }
            other => panic!("{what}: unexpected status {other}: {body}"),
        }
    }
    println!(
        "isolation: {} requests on A's socket, {served_own} answered A's own set, none reached B",
        attempts.len()
    );
    // Still A's own set, and sandbox creation over a sandbox socket made nothing.
    assert_eq!(served(&a), own);
    let list = d.cli(&["sandbox", "list", "--json"], None).ok().stdout();
    assert_eq!(list.matches("\"id\"").count(), 2, "{list}");
}

#[test]
fn symlinks_in_the_run_directory_are_not_followed_at_restart() {
    let mut d = Daemon::new();
    let ((a_id, a), (b_id, b)) = two_sandboxes(&d);
    let (c_id, c) = d.sandbox("mona", "iso/a");
    d.stop();

    // A's directory becomes a symlink to B's; C's to an unrelated directory.
    let victim = d.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_dir_all(&a).unwrap();
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::fs::remove_dir_all(&c).unwrap();
    std::os::unix::fs::symlink(&victim, &c).unwrap();

    d.start().unwrap();
    let log = d.log_text();
    for id in [&a_id, &c_id] {
        assert!(
            log.contains("cannot re-create sandbox socket") && log.contains(id.as_str()),
            "{id} not refused:\n{log}"
        );
    }
    assert!(log.contains("a symlink"), "{log}");
    // B's directory serves B and only B, whatever the order the sandboxes were started in.
    assert_eq!(served(&b), vec![("ONLY_B".into(), B_VALUE.into())]);
    // The unrelated directory was neither chmodded nor given a socket.
    assert_eq!(mode(&victim), 0o700);
    assert!(std::fs::read_dir(&victim).unwrap().next().is_none());
    assert_modes(&d, &[&b]);

    // Deleting A and C unlinks the symlinks only.
    d.cli(&["sandbox", "delete", &a_id], None).ok();
    d.cli(&["sandbox", "delete", &c_id], None).ok();
    assert!(std::fs::symlink_metadata(&a).is_err() && std::fs::symlink_metadata(&c).is_err());
    assert!(victim.exists());
    assert_eq!(served(&b), vec![("ONLY_B".into(), B_VALUE.into())]);
    let _ = b_id;
    d.stop();
}

#[test]
fn a_symlink_in_place_of_a_socket_is_replaced_never_followed() {
    // Root inside a container can write its bind-mounted sandbox directory: it plants a symlink
    // named secrets.sock, to a host file (here mode 0600) or to another sandbox's socket.
    use std::os::unix::fs::FileTypeExt;
    let mut d = Daemon::new();
    let ((_, a), (_, b)) = two_sandboxes(&d);
    d.stop();
    let victim = d.dir.path().join("shadow");
    std::fs::write(&victim, "root:x").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let a_link = a.join("secrets.sock");
    let b_link = b.join("secrets.sock");
    let _ = std::fs::remove_file(&a_link);
    std::os::unix::fs::symlink(&victim, &a_link).unwrap();
    let _ = std::fs::remove_file(&b_link);
    std::os::unix::fs::symlink(&a_link, &b_link).unwrap();
    d.start().unwrap();
    // The host file was neither chmodded nor written.
    assert_eq!(mode(&victim), 0o600);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:x");
    // Each symlink was replaced by the sandbox's own real socket, mode 0666.
    for link in [&a_link, &b_link] {
        let meta = std::fs::symlink_metadata(link).unwrap();
        assert!(meta.file_type().is_socket(), "{}: {meta:?}", link.display());
    }
    assert_eq!(served(&a), vec![("ONLY_A".into(), A_VALUE.into())]);
    assert_eq!(served(&b), vec![("ONLY_B".into(), B_VALUE.into())]);
    assert_modes(&d, &[&a, &b]);
    d.stop();
}

#[test]
fn host_users_cannot_reach_sandbox_sockets_or_the_admin_socket() {
    if let Some(why) = nobody_unavailable() {
        support::skip(why);
        return;
    }
    let mut d = Daemon::new();
    let ((_, a), _) = two_sandboxes(&d);
    assert_modes(&d, &[&a]);
    let run_as_nobody = |args: &[&str]| run(as_nobody(args), None);
    // open(2) of a socket path answers ENXIO when the path is reachable: EACCES proves the
    // 0700 sandboxes/ directory stops the lookup itself.
    let sock = a.join("secrets.sock");
    run_as_nobody(&["cat", sock.to_str().unwrap()]).fails_with("Permission denied");
    run_as_nobody(&["ls", d.run_dir().join("sandboxes").to_str().unwrap()])
        .fails_with("Permission denied");
    // The same check as root sees the socket (ENXIO), so the test can fail.
    let r = run(
        {
            let mut c = Command::new("cat");
            c.arg(&sock);
            c
        },
        None,
    );
    assert!(
        r.stderr().contains("No such device or address"),
        "{}",
        r.explain()
    );
    let admin = d.admin();
    let run_dir = d.run_dir();
    let list_as_nobody = || {
        run_as_nobody(&[
            BIN,
            "--run-dir",
            run_dir.to_str().unwrap(),
            "sandbox",
            "list",
        ])
    };
    list_as_nobody().fails_with("Permission denied");
    // With the admin socket's mode opened by mistake, SO_PEERCRED still refuses.
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o666)).unwrap();
    list_as_nobody().fails_with("may not use the admin socket");
    // The next start sets every mode back.
    d.stop();
    d.start().unwrap();
    assert_modes(&d, &[&a]);
    d.stop();
}
