//! Live secrets (issue 11) with the real daemon and the real init as PID 1 of a new PID
//! namespace: no fail-open window while the broker restarts, `sandbox-init exec` and the `env`
//! formats, and what a start that fails leaves behind.

#![cfg(feature = "broker")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::{run, Daemon, Run};

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

/// The init as PID 1 of a new PID namespace, on a clean environment plus `env`, logging at trace.
fn pid1_command(socket: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-pf", "--mount-proc", "--kill-child", INIT])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", socket)
        .env("SANDBOX_INIT_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const VALUE: &str = "live-value-3f9c1";
const PASSWORD: &str = "live-registry-pw-77aa";

/// A broker serving mona's sandbox of octo/hello with one plain secret and a registry triplet.
fn broker_with_sandbox() -> (Daemon, std::path::PathBuf) {
    let broker = Daemon::traced();
    broker.set_user("TOKEN", "mona", "octo/hello", VALUE);
    broker.set_repo("REG_CONTAINER_REGISTRY_SERVER", "octo/hello", "reg.example");
    broker.set_repo("REG_CONTAINER_REGISTRY_USER", "octo/hello", "mona");
    broker.set_repo("REG_CONTAINER_REGISTRY_PASSWORD", "octo/hello", PASSWORD);
    let (_, dir) = broker.sandbox("mona", "octo/hello");
    (broker, dir)
}

#[test]
fn a_broker_restarted_within_the_timeout_delivers_the_secrets() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (mut broker, dir) = broker_with_sandbox();
    assert!(
        dir.join("broker").is_file(),
        "no marker in {}",
        dir.display()
    );
    broker.stop();
    assert!(
        !dir.join("secrets.sock").exists(),
        "socket left after a clean stop"
    );
    assert!(
        dir.join("broker").is_file(),
        "the marker must outlive the socket"
    );

    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let script = format!("printf %s \"$TOKEN\" > {}", seen.display());
    let docker = out.path().join("docker");
    let docker_s = docker.display().to_string();
    let mut cmd = pid1_command(
        &dir.join("secrets.sock"),
        &[("DOCKER_CONFIG", &docker_s)],
        &["--secrets-timeout", "20", "--", "sh", "-c", &script],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !seen.exists(),
        "the command started before the broker was back"
    );
    broker.start().unwrap();
    let output = child.wait_with_output().unwrap();
    let r = Run {
        cmd: format!("{cmd:?}"),
        out: output,
    };
    assert!(r.out.status.success(), "{}", r.explain());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), VALUE);
    assert!(docker.join("config.json").is_file(), "{}", r.explain());
    assert!(r.stderr().contains("waiting up to"), "{}", r.explain());
    for v in [VALUE, PASSWORD] {
        assert!(!contains(&r.out.stderr, v), "{v} in the init's log");
    }
}

#[test]
fn a_broker_down_longer_than_the_timeout_fails_closed_and_nothing_starts_or_is_written() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (mut broker, dir) = broker_with_sandbox();
    broker.stop();
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let docker = out.path().join("docker");
    let spill = out.path().join("spill");
    let script = format!("touch {}", seen.display());
    let started = Instant::now();
    let r = run(
        pid1_command(
            &dir.join("secrets.sock"),
            &[
                ("DOCKER_CONFIG", &docker.display().to_string()),
                ("SANDBOX_INIT_SECRETS_DIR", &spill.display().to_string()),
            ],
            &["--secrets-timeout", "1", "--", "sh", "-c", &script],
        ),
        None,
    );
    assert_eq!(r.out.status.code(), Some(1), "{}", r.explain());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let want = format!(
        "sandbox-init: secrets: broker not serving {}: start `sandbox-secrets serve`, or pass \
         --secrets optional",
        dir.display()
    );
    assert!(r.stderr().contains(&want), "{}", r.explain());
    assert!(!seen.exists(), "the command started");
    assert!(!docker.exists() && !spill.exists(), "something was written");

    // `--secrets optional` starts at once without secrets, saying why.
    let r = run(
        pid1_command(
            &dir.join("secrets.sock"),
            &[],
            &[
                "--secrets",
                "optional",
                "--",
                "sh",
                "-c",
                "echo \"[$TOKEN]\"",
            ],
        ),
        None,
    )
    .ok();
    assert_eq!(r.stdout().trim(), "[]");
    assert!(r.stderr().contains("broker not serving"), "{}", r.explain());

    // Without the marker (an image run with no sandbox mounted) nothing changes.
    let empty = tempfile::tempdir().unwrap();
    let r = run(
        pid1_command(
            &empty.path().join("secrets.sock"),
            &[],
            &["--secrets-timeout", "30", "--", "true"],
        ),
        None,
    )
    .ok();
    assert!(
        r.stderr().contains("starting without secrets"),
        "{}",
        r.explain()
    );
}
