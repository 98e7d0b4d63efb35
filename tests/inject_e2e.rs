//! End to end: the real broker daemon (`sandbox-secrets serve` in temp dirs, secrets set through
//! its admin CLI with values on stdin) and the real `sandbox-init` as PID 1 of a new PID
//! namespace (`unshare -pf --mount-proc`). Proves what the child sees, what it must not see, that
//! no value reaches the init's own environ or its trace-level log, `sandbox-init env` and the
//! profile.d snippet, the spill of values over the `execve` budget, and registry credentials
//! against a real private registry.

#![cfg(feature = "broker")]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::daemon::{run, Daemon, Run};
use support::registry::registry_env;

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");

/// Root and `unshare` are needed for PID 1 in a namespace.
fn can_be_pid1() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (PID namespaces need it)");
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("unshare not installed");
    }
    None
}

/// A running broker logging at trace, its CLI configured through the environment as a host's
/// profile would; killed on drop.
fn broker() -> Daemon {
    let mut d = Daemon::traced();
    d.dirs_by_env = true;
    d
}

/// `sandbox create`: the socket of the new sandbox.
fn sandbox_socket(broker: &Daemon, user: &str, repo: &str) -> PathBuf {
    broker.sandbox(user, repo).1.join("secrets.sock")
}

/// Runs the init as PID 1 of a new PID namespace with `env` on top of a clean environment, and
/// the usual 8 MiB stack limit (so `ARG_MAX` is the usual 2 MiB whatever the test runner has).
fn init_as_pid1(socket: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -s 8192 && exec \"$@\"", "sh"])
        .args(["unshare", "-pf", "--mount-proc", "--kill-child", INIT])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", socket)
        .env("SANDBOX_INIT_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, None)
}

fn parse_environ(raw: &[u8]) -> BTreeMap<String, String> {
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8(e.to_vec()).unwrap();
            let (k, v) = e.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const TRICKY: &str =
    "line one\nline 'two' \"quoted\" $HOME ${X:-y} `id` $(id) \\back\\slash\n\tü ✓ 🦀 end-e2e-7c1\n";

#[test]
fn pid1_child_sees_exactly_the_authorized_secrets_and_nothing_leaks() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let broker = broker();
    broker.set_user("API_TOKEN", "mona", "octo/hello", TRICKY);
    broker.set_user("ELSEWHERE", "mona", "octo/other", "elsewhere-value-4d2e");
    broker.set_user(
        "SHARED",
        "mona",
        "octo/hello,octo/other",
        "shared-user-value-9a1",
    );
    broker.set_repo(
        "DB_URL",
        "octo/hello",
        "postgres://u:p@db/x?sslmode=require-5b3",
    );
    broker.set_repo("SHARED", "octo/hello", "shared-repo-value-loses-8e4");
    broker.set_repo("OTHER_REPO", "octo/other", "other-repo-value-1f7");
    broker.set_user("HUBOT_TOKEN", "hubot", "octo/hello", "hubot-value-6c9");
    let socket = sandbox_socket(&broker, "mona", "octo/hello");

    let out_dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cat /proc/self/environ > {d}/child.env && cat /proc/1/environ > {d}/pid1.env",
        d = out_dir.path().display()
    );
    let r = init_as_pid1(
        &socket,
        &[("DB_URL", "inherited-db-url-0e2"), ("KEEP_ME", "kept")],
        &["--", "sh", "-c", &script],
    );
    let out = &r.out;
    assert!(out.status.success(), "{}", r.explain());
    let child = std::fs::read(out_dir.path().join("child.env")).unwrap();
    let env = parse_environ(&child);
    assert_eq!(env.get("API_TOKEN").map(String::as_str), Some(TRICKY));
    assert_eq!(
        env.get("DB_URL").map(String::as_str),
        Some("postgres://u:p@db/x?sslmode=require-5b3")
    );
    assert_eq!(
        env.get("SHARED").map(String::as_str),
        Some("shared-user-value-9a1")
    );
    assert_eq!(env.get("KEEP_ME").map(String::as_str), Some("kept"));
    for absent in ["ELSEWHERE", "OTHER_REPO", "HUBOT_TOKEN"] {
        assert!(!env.contains_key(absent), "{absent} reached the child");
    }
    let secret_values = [
        "end-e2e-7c1",
        "elsewhere-value-4d2e",
        "shared-user-value-9a1",
        "shared-repo-value-loses-8e4",
        "require-5b3",
        "other-repo-value-1f7",
        "hubot-value-6c9",
    ];
    for v in [
        "elsewhere-value-4d2e",
        "other-repo-value-1f7",
        "hubot-value-6c9",
        "loses-8e4",
    ] {
        assert!(!contains(&child, v), "unauthorized value {v} in the child");
    }
    // The init's own environment holds no value.
    let pid1 = std::fs::read(out_dir.path().join("pid1.env")).unwrap();
    assert!(
        contains(&pid1, "SANDBOX_SECRETS_SOCKET="),
        "not the init's environ?"
    );
    for v in secret_values {
        assert!(!contains(&pid1, v), "{v} in /proc/1/environ");
    }
    // Trace-level logs of the init hold names, never values; the override is warned about.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DB_URL"), "{}", r.explain());
    for v in secret_values.iter().chain(&["inherited-db-url-0e2"]) {
        assert!(!stderr.contains(v), "{v} in the init's log:\n{stderr}");
    }
    let broker_log = broker.log_text();
    for v in secret_values {
        assert!(!broker_log.contains(v), "{v} in the broker's log");
    }
}

#[test]
fn sandbox_init_env_and_the_profile_snippet_round_trip_through_shells() {
    let broker = broker();
    let values = [
        ("TRICKY", TRICKY),
        ("QUOTES", "'''\"\"'\\'"),
        ("TRAILING", "trailing newlines\n\n"),
    ];
    for (n, v) in values {
        broker.set_user(n, "mona", "octo/hello", v);
    }
    let socket = sandbox_socket(&broker, "mona", "octo/hello");
    let mut cmd = Command::new(INIT);
    cmd.arg("env")
        .env_clear()
        .env("SANDBOX_SECRETS_SOCKET", &socket)
        .env("SANDBOX_INIT_LOG", "trace");
    let r = run(cmd, None).ok();
    let out = &r.out;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("end-e2e-7c1"), "{stderr}");
    let lines = String::from_utf8(out.stdout.clone()).unwrap();

    // The snippet, pointed at this binary, sourced by each shell as a login shell would.
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("images/profile.d/sandbox-secrets.sh"),
    )
    .unwrap()
    .replace("/usr/local/bin/sandbox-init", INIT);
    let dir = tempfile::tempdir().unwrap();
    let snippet_path = dir.path().join("sandbox-secrets.sh");
    std::fs::write(&snippet_path, &snippet).unwrap();

    let mut printer = String::new();
    for (n, _) in values {
        printer.push_str(&format!("printf '%s\\000' \"${n}\"\n"));
    }
    let want: Vec<u8> = values
        .iter()
        .flat_map(|(_, v)| v.bytes().chain([0]))
        .collect();
    let mut shells = vec![vec!["bash", "-c"], vec!["sh", "-c"]];
    if Command::new("busybox").arg("true").output().is_ok() {
        shells.push(vec!["busybox", "sh", "-c"]);
    }
    for shell in &shells {
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(format!("eval \"$LINES\"\n{printer}"))
            .env_clear()
            .env("LINES", &lines);
        let r = run(cmd, None).ok();
        let out = &r.out;
        assert_eq!(out.stdout, want, "{}", r.explain());

        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(format!(". {}\n{printer}", snippet_path.display()))
            .env_clear()
            .env("SANDBOX_SECRETS_SOCKET", &socket);
        let r = run(cmd, None).ok();
        let out = &r.out;
        assert_eq!(out.stdout, want, "{}", r.explain());
        assert!(out.stderr.is_empty(), "{}", r.explain());

        // No socket: quiet, nothing set.
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(format!(
                ". {}\necho \"[${{TRICKY-unset}}]\"",
                snippet_path.display()
            ))
            .env_clear()
            .env("SANDBOX_SECRETS_SOCKET", dir.path().join("absent.sock"));
        let r = run(cmd, None).ok();
        let out = &r.out;
        assert_eq!(out.stdout, b"[unset]\n", "{}", r.explain());
        assert!(out.stderr.is_empty(), "{}", r.explain());
    }
    // No binary: quiet too.
    let missing = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("images/profile.d/sandbox-secrets.sh"),
    )
    .unwrap()
    .replace("/usr/local/bin/sandbox-init", "/nonexistent/sandbox-init");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{missing}\necho \"[${{TRICKY-unset}}]\""))
        .env_clear()
        .env("SANDBOX_SECRETS_SOCKET", &socket);
    let r = run(cmd, None).ok();
    let out = &r.out;
    assert_eq!(out.stdout, b"[unset]\n", "{}", r.explain());
    assert!(out.stderr.is_empty(), "{}", r.explain());
}

#[test]
fn values_over_the_execve_budget_arrive_through_name_file() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let broker = broker();
    // 60 values of 40 KiB: 2.4 MiB, over ARG_MAX (2 MiB with an 8 MiB stack) and under the
    // broker's 48 KiB per value.
    let values: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("BIG_{i:02}"),
                format!("{i:02}-big-value-").repeat(40 * 1024 / 15),
            )
        })
        .collect();
    for (n, v) in &values {
        broker.set_user(n, "mona", "octo/hello", v);
    }
    let socket = sandbox_socket(&broker, "mona", "octo/hello");
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let spill = dir.path().join("spill");
    let script = format!(
        "cat /proc/self/environ > {}/child.env",
        dir.path().display()
    );
    let r = init_as_pid1(
        &socket,
        &[("SANDBOX_INIT_SECRETS_DIR", spill.to_str().unwrap())],
        &["--", "sh", "-c", &script],
    );
    let out = &r.out;
    assert!(out.status.success(), "{}", r.explain());
    let env = parse_environ(&std::fs::read(dir.path().join("child.env")).unwrap());
    let mut spilled = 0;
    for (n, v) in &values {
        match (env.get(n), env.get(&format!("{n}_FILE"))) {
            (Some(got), None) => assert_eq!(got, v, "{n}"),
            (None, Some(path)) => {
                spilled += 1;
                assert_eq!(Path::new(path).parent(), Some(spill.as_path()));
                assert_eq!(&std::fs::read_to_string(path).unwrap(), v, "{n}");
                let meta = std::fs::metadata(path).unwrap();
                assert_eq!(meta.mode() & 0o7777, 0o400, "{path}");
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    assert!(spilled > 0, "nothing was spilled:\n{}", r.explain());
    assert!(spilled < values.len(), "everything was spilled");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("-big-value-"), "a value in the log");
}

#[test]
fn registry_triplet_through_the_real_init_lets_skopeo_and_docker_pull() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let Some([registry, user, password, image]) = registry_env() else {
        support::skip("no test registry (run scripts/registry.sh)");
        return;
    };
    let broker = broker();
    broker.set_user(
        "PRIV_CONTAINER_REGISTRY_SERVER",
        "mona",
        "octo/hello",
        &format!("http://{registry}/"),
    );
    broker.set_user("PRIV_CONTAINER_REGISTRY_USER", "mona", "octo/hello", &user);
    broker.set_user(
        "PRIV_CONTAINER_REGISTRY_PASSWORD",
        "mona",
        "octo/hello",
        &password,
    );
    broker.set_user(
        "WRONG_CONTAINER_REGISTRY_SERVER",
        "mona",
        "octo/wrong",
        &registry,
    );
    broker.set_user("WRONG_CONTAINER_REGISTRY_USER", "mona", "octo/wrong", &user);
    broker.set_user(
        "WRONG_CONTAINER_REGISTRY_PASSWORD",
        "mona",
        "octo/wrong",
        "not-the-password-3b7",
    );
    for (repo, works) in [("octo/hello", true), ("octo/wrong", false)] {
        let socket = sandbox_socket(&broker, "mona", repo);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("docker");
        let script = format!(
            "skopeo inspect --tls-verify=false --authfile \"$DOCKER_CONFIG/config.json\" \
             docker://{image} >/dev/null && docker pull -q {image} >/dev/null && echo reached"
        );
        let r = init_as_pid1(
            &socket,
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
            &["--", "sh", "-c", &script],
        );
        let out = &r.out;
        let reached = out.status.success() && out.stdout == b"reached\n";
        assert_eq!(reached, works, "{repo}:\n{}", r.explain());
        let meta = std::fs::metadata(cfg.join("config.json")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(&password) && !stderr.contains("not-the-password-3b7"));
    }
}
