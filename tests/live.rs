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

/// [`broker_with_sandbox`] with the sandbox directory reachable for nobody, as it is inside a
/// container, and a directory anyone may write (for the credentials the init writes as nobody).
fn broker_for_nobody() -> (Daemon, std::path::PathBuf, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let (broker, dir) = broker_with_sandbox();
    std::fs::set_permissions(
        broker.run_dir().join("sandboxes"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    (broker, dir, out)
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

/// `sandbox-init exec` run directly (not PID 1), on a clean environment plus `env`.
fn exec_command(socket: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(INIT);
    cmd.arg("exec")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", socket);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn exec_replaces_itself_with_the_command_which_sees_the_secrets() {
    let (broker, dir) = broker_with_sandbox();
    let socket = dir.join("secrets.sock");
    let out = tempfile::tempdir().unwrap();
    let docker = out.path().join("docker");
    let docker_s = docker.display().to_string();
    // No fork: the command has the pid `exec` was started with.
    let mut cmd = exec_command(
        &socket,
        &[("DOCKER_CONFIG", &docker_s), ("SANDBOX_INIT_LOG", "trace")],
        &["--", "sh", "-c", "echo \"$$ $TOKEN\""],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let r = Run {
        cmd: format!("{cmd:?}"),
        out: child.wait_with_output().unwrap(),
    }
    .ok();
    assert_eq!(
        r.stdout().trim(),
        format!("{pid} {VALUE}"),
        "{}",
        r.explain()
    );
    let cfg = std::fs::read_to_string(docker.join("config.json")).unwrap();
    assert!(cfg.contains("reg.example"), "{cfg}");
    for v in [VALUE, PASSWORD] {
        assert!(!contains(&r.out.stderr, v), "{v} in exec's trace log");
    }
    assert!(
        !broker.log_text().contains(VALUE),
        "value in the broker's log"
    );

    // Exit codes as for PID 1's child: 127 not found, 126 not executable.
    let r = run(exec_command(&socket, &[], &["no-such-command-x"]), None);
    assert_eq!(r.out.status.code(), Some(127), "{}", r.explain());
    assert!(
        r.stderr().contains("exec no-such-command-x"),
        "{}",
        r.explain()
    );
    let plain = out.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    let r = run(exec_command(&socket, &[], &[plain.to_str().unwrap()]), None);
    assert_eq!(r.out.status.code(), Some(126), "{}", r.explain());

    // A failed fetch fails closed: the command never runs.
    let r = run(
        exec_command(
            &out.path().join("gone/secrets.sock"),
            &[],
            &[
                "--secrets",
                "required",
                "--",
                "touch",
                plain.to_str().unwrap(),
            ],
        ),
        None,
    );
    assert_eq!(r.out.status.code(), Some(1), "{}", r.explain());
}

#[test]
fn exec_drops_privileges_only_as_root_and_never_when_already_the_target() {
    if let Some(why) = support::daemon::nobody_unavailable() {
        support::skip(why);
        return;
    }
    let (_broker, dir, out) = broker_for_nobody();
    let socket = dir.join("secrets.sock");
    let docker = out.path().join("docker");
    let docker_s = docker.display().to_string();
    let script = "echo \"$(id -u):$(id -g):$(id -G) $TOKEN\"";

    // Root with SANDBOX_INIT_USER: drops to it as PID 1 would, credentials owned by it.
    let r = run(
        exec_command(
            &socket,
            &[
                ("SANDBOX_INIT_USER", "nobody"),
                ("DOCKER_CONFIG", &docker_s),
            ],
            &["--", "sh", "-c", script],
        ),
        None,
    )
    .ok();
    let nobody_gid = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nobody:x:65534:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    assert!(
        r.stdout().starts_with(&format!("65534:{nobody_gid}:")) && r.stdout().contains(VALUE),
        "{}",
        r.explain()
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(docker.join("config.json")).unwrap().uid(),
        65534
    );
    std::fs::remove_dir_all(&docker).unwrap();

    // Already the target user (`docker exec -u nobody` in an image with SANDBOX_INIT_USER=nobody),
    // or another user without root: no identity change, nothing said, the secrets arrive.
    for target in ["nobody", "root"] {
        let mut cmd = support::daemon::as_nobody(&[INIT, "exec", "--", "sh", "-c", script]);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SANDBOX_SECRETS_SOCKET", &socket)
            .env("SANDBOX_INIT_USER", target)
            .env("DOCKER_CONFIG", &docker_s);
        let r = run(cmd, None).ok();
        assert_eq!(
            r.stdout().trim(),
            format!("65534:65534:65534 {VALUE}"),
            "{}",
            r.explain()
        );
        assert_eq!(r.stderr(), "", "{}", r.explain());
        assert_eq!(
            std::fs::metadata(docker.join("config.json")).unwrap().uid(),
            65534
        );
    }
}

#[test]
fn env_unsets_what_is_no_longer_authorised_and_speaks_dotenv_and_json() {
    let (broker, dir) = broker_with_sandbox();
    broker.set_user("MULTI", "mona", "octo/hello", "a \"b\"\nc\\d $X");
    let socket = dir.join("secrets.sock");
    // One shell: eval, delete, eval again: the deleted name is gone.
    let script = format!(
        "eval \"$({init} env)\" && echo \"1 [$TOKEN] [$SANDBOX_SECRETS_NAMES]\" && \
         {cli} delete TOKEN --user mona >/dev/null && eval \"$({init} env)\" && \
         echo \"2 [${{TOKEN-unset}}] [$SANDBOX_SECRETS_NAMES]\"",
        init = INIT,
        cli = support::daemon::BIN,
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script])
        .env("SANDBOX_SECRETS_SOCKET", &socket)
        .env("SANDBOX_SECRETS_RUN_DIR", broker.run_dir())
        .env_remove("SANDBOX_SECRETS_NAMES")
        .env_remove("TOKEN");
    let r = run(cmd, None).ok();
    let all = "MULTI REG_CONTAINER_REGISTRY_PASSWORD REG_CONTAINER_REGISTRY_SERVER \
               REG_CONTAINER_REGISTRY_USER";
    let names_before = format!("{all} TOKEN");
    assert_eq!(
        r.stdout(),
        format!("1 [{VALUE}] [{names_before}]\n2 [unset] [{all}]\n"),
        "{}",
        r.explain()
    );

    let formats = |format: &str| {
        let mut cmd = Command::new(INIT);
        cmd.args(["env", "--format", format])
            .env("SANDBOX_SECRETS_SOCKET", &socket);
        run(cmd, None).ok().stdout()
    };
    let json: serde_json::Value = serde_json::from_str(&formats("json")).unwrap();
    assert_eq!(json["MULTI"], "a \"b\"\nc\\d $X");
    assert_eq!(json["REG_CONTAINER_REGISTRY_PASSWORD"], PASSWORD);
    assert!(json.get("TOKEN").is_none());
    let dotenv = formats("dotenv");
    assert!(
        dotenv.contains("MULTI=\"a \\\"b\\\"\\nc\\\\d $X\"\n"),
        "{dotenv}"
    );
    assert!(!dotenv.contains("export") && !dotenv.contains("SANDBOX_SECRETS_NAMES"));
}

#[test]
fn a_start_that_fails_after_the_fetch_leaves_no_new_credentials_on_disk() {
    let (broker, dir) = broker_with_sandbox();
    // Three values of 48 KiB do not fit a 128 KiB exec budget: they must go to files, and the
    // spill directory cannot be made (under a regular file).
    for n in ["BIG_A", "BIG_B", "BIG_C"] {
        broker.set_user(n, "mona", "octo/hello", &"v".repeat(48 * 1024));
    }
    let out = tempfile::tempdir().unwrap();
    let docker = out.path().join("docker");
    let blocker = out.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let seen = out.path().join("seen");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -s 256 && exec \"$@\"", "sh", INIT])
        .args(["--", "touch", seen.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", dir.join("secrets.sock"))
        .env("DOCKER_CONFIG", &docker)
        .env("SANDBOX_INIT_SECRETS_DIR", blocker.join("spill"));
    let r = run(cmd, None);
    assert_eq!(r.out.status.code(), Some(1), "{}", r.explain());
    assert!(r.stderr().contains("oversized secrets"), "{}", r.explain());
    assert!(!seen.exists(), "the command started");
    assert!(
        !docker.exists(),
        "registry credentials were written by a start that failed"
    );
}

/// One `GET /v1/secrets` with `extra` headers, read to the end: (status, head, body, time).
fn get(socket: &Path, extra: &str) -> (u16, String, String, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/secrets HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned(), started.elapsed())
}

fn etag_of(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag in {head}"))
}

#[test]
fn a_watch_waits_for_a_change_of_its_own_answer_and_nothing_else() {
    let (broker, dir) = broker_with_sandbox();
    let (_, other) = broker.sandbox("hubot", "octo/elsewhere");
    let socket = dir.join("secrets.sock");
    let (status, head, body, _) = get(&socket, "");
    assert_eq!(status, 200, "{head}");
    assert!(body.contains(VALUE));
    let tag = etag_of(&head);
    // The same answer again has the same tag; an old tag gets the answer at once.
    assert_eq!(etag_of(&get(&socket, "").1), tag);
    let (status, _, body, took) = get(&socket, "If-None-Match: \"0000000000000001\"\r\n");
    assert!(status == 200 && body.contains(VALUE) && took < Duration::from_secs(1));

    // Holding the current answer: 304 at the deadline, with the tag, no body.
    let (status, head, body, took) = get(
        &socket,
        &format!("If-None-Match: {tag}\r\nPrefer: wait=1\r\n"),
    );
    assert_eq!((status, body.as_str()), (304, ""), "{head}");
    assert_eq!(etag_of(&head), tag);
    assert!(took >= Duration::from_millis(950), "{took:?}");

    // A change to another sandbox's secrets wakes nobody here; a change to ours answers at once.
    let other_tag = etag_of(&get(&other.join("secrets.sock"), "").1);
    let watch = |socket: std::path::PathBuf, tag: String, wait: u32| {
        std::thread::spawn(move || {
            get(
                &socket,
                &format!("If-None-Match: {tag}\r\nPrefer: wait={wait}\r\n"),
            )
        })
    };
    let mine = watch(socket.clone(), tag.clone(), 20);
    let theirs = watch(other.join("secrets.sock"), other_tag, 2);
    std::thread::sleep(Duration::from_millis(300));
    broker.set_user("HUBOT_ONLY", "hubot", "octo/elsewhere-not", "hubot-x-value");
    broker.set_user("MONA_ELSEWHERE", "mona", "octo/other", "not-for-hello");
    let set_done = Instant::now();
    broker.set_user("TOKEN", "mona", "octo/hello", "rotated-token-value-5e1");
    let answered_after_set = set_done.elapsed();
    let (status, head, body, _) = mine.join().unwrap();
    let latency = set_done.elapsed();
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("rotated-token-value-5e1") && !body.contains(VALUE));
    assert_ne!(etag_of(&head), tag);
    assert!(
        latency < answered_after_set + Duration::from_millis(200),
        "change reached the watch {latency:?} after the set began ({answered_after_set:?} for the set)"
    );
    let (status, _, _, took) = theirs.join().unwrap();
    assert_eq!(status, 304, "another sandbox's watch was woken");
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    // No value in the broker's log through the watch path.
    for v in [VALUE, "rotated-token-value-5e1", PASSWORD] {
        assert!(!broker.log_text().contains(v), "{v} in the broker's log");
    }
}

#[test]
fn set_delete_and_access_say_which_sandboxes_see_the_change() {
    let (broker, dir) = broker_with_sandbox();
    let (second_id, _) = broker.sandbox("mona", "octo/hello");
    let (_, _other) = broker.sandbox("hubot", "octo/hello");
    let first_id = dir.file_name().unwrap().to_str().unwrap().to_owned();
    let socket = dir.join("secrets.sock");
    let tag = etag_of(&get(&socket, "").1);
    let watch = std::thread::spawn(move || {
        get(
            &socket,
            // A hostile `on-change` preference is ignored: the watch works, restarts nothing.
            &format!("If-None-Match: {tag}\r\nPrefer: wait=20, on-change=rm -rf /\r\n"),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = broker
        .cli(
            &["set", "TOKEN", "--user", "mona", "--repos", "octo/hello"],
            Some(b"rotated-affected-1"),
        )
        .ok();
    assert_eq!(
        r.stdout(),
        "updated user secret TOKEN of mona: 2 sandboxes see the change (1 watching)\n"
    );
    assert_eq!(watch.join().unwrap().0, 200);
    let r = broker
        .cli(
            &[
                "set",
                "ELSEWHERE",
                "--user",
                "mona",
                "--repos",
                "octo/other",
                "--json",
            ],
            Some(b"elsewhere-affected-2"),
        )
        .ok();
    let json: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(json["sandboxes"], serde_json::json!([]), "{}", r.stdout());
    let r = broker
        .cli(
            &["delete", "TOKEN", "--user", "mona", "--yes", "--json"],
            None,
        )
        .ok();
    let json: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let mut want = vec![first_id.clone(), second_id.clone()];
    want.sort();
    assert_eq!(json["sandboxes"], serde_json::json!(want), "{}", r.stdout());
    assert_eq!(json["watching"], serde_json::json!([]));
    assert_eq!(json["restarting"], serde_json::json!([]));
    // A repository secret reaches every sandbox of the repository, whoever its user.
    let r = broker
        .cli(
            &["set", "REPO_X", "--repo", "octo/hello"],
            Some(b"repo-x-3"),
        )
        .ok();
    assert!(
        r.stdout()
            .ends_with(": 3 sandboxes see the change (0 watching)\n"),
        "{}",
        r.stdout()
    );
    let r = broker
        .cli(
            &[
                "access",
                "ELSEWHERE",
                "--user",
                "mona",
                "--repos",
                "octo/hello",
            ],
            None,
        )
        .ok();
    assert!(
        r.stdout()
            .ends_with(": 2 sandboxes see the change (0 watching)\n"),
        "{}",
        r.stdout()
    );
}

#[test]
fn a_shared_secrets_dir_keeps_its_own_files_and_its_mode() {
    let (broker, dir) = broker_with_sandbox();
    for n in ["BIG_A", "BIG_B", "BIG_C"] {
        broker.set_user(n, "mona", "octo/hello", &"v".repeat(48 * 1024));
    }
    // A directory of the user's own on a tmpfs, shared with other files.
    let shared = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for f in ["README", "LICENSE", "TOKEN"] {
        std::fs::write(shared.path().join(f), "not a secret").unwrap();
    }
    let start = || {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -s 256 && exec \"$@\"", "sh", INIT])
            .args(["--", "true"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SANDBOX_SECRETS_SOCKET", dir.join("secrets.sock"))
            .env("DOCKER_CONFIG", shared.path().join(".docker"))
            .env("SANDBOX_INIT_SECRETS_DIR", shared.path());
        run(cmd, None)
    };
    let r = start().ok();
    let spilled: Vec<&str> = ["BIG_A", "BIG_B", "BIG_C"]
        .into_iter()
        .filter(|n| shared.path().join(n).is_file())
        .collect();
    assert!(!spilled.is_empty(), "nothing spilled\n{}", r.explain());
    assert_eq!(
        support::daemon::mode(shared.path()),
        0o755,
        "the shared dir was chmodded"
    );
    // The big secrets are deleted: their files go, the directory's own stay.
    for n in ["BIG_A", "BIG_B", "BIG_C"] {
        broker
            .cli(&["delete", n, "--user", "mona", "--yes"], None)
            .ok();
    }
    start();
    for f in ["README", "LICENSE", "TOKEN"] {
        assert_eq!(
            std::fs::read_to_string(shared.path().join(f)).unwrap(),
            "not a secret",
            "{f} was touched"
        );
    }
    for n in ["BIG_A", "BIG_B", "BIG_C"] {
        assert!(!shared.path().join(n).exists(), "{n} was left behind");
    }
    assert_eq!(support::daemon::mode(shared.path()), 0o755);
}

/// Waits up to `within` for `path` to hold at least `lines` lines; returns them.
fn lines_of(path: &Path, lines: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_owned).collect();
        if got.len() >= lines || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The init as PID 1, started in the background with its stderr to a file (read at the end).
struct Watching {
    child: std::process::Child,
    log: std::path::PathBuf,
    cmd: String,
}

impl Watching {
    fn start(mut cmd: Command, log: std::path::PathBuf) -> Watching {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::null()).stderr(file);
        let shown = format!("{cmd:?}");
        Watching {
            child: cmd.spawn().unwrap(),
            log,
            cmd: shown,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The init's exit code within `within` (None: still running, then killed).
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn explain(&self) -> String {
        format!("command: {}\nstderr:\n{}", self.cmd, self.log())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        // unshare --kill-child: the init (and its namespace) goes with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev-server stand-in: prints its environment's TOKEN and EXTRA as one line per start, and
/// exits 7 on SIGUSR1 (so the init's exit code is seen to be the command's).
const DEV_SERVER: &str = r#"
trap 'exit 0' TERM
trap 'exit 7' USR1
printf '%s|%s\n' "${TOKEN-unset}" "${EXTRA-unset}" >> "$OUT"
while :; do sleep 1 & wait $!; done
"#;

#[test]
fn on_change_restart_gives_the_command_new_values_and_drops_deleted_ones() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (broker, dir) = broker_with_sandbox();
    broker.set_user("EXTRA", "mona", "octo/hello", "extra-value-81c");
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let seen_s = seen.display().to_string();
    let docker = out.path().join("docker").display().to_string();
    let mut init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[("OUT", &seen_s), ("DOCKER_CONFIG", &docker)],
            &[
                "--on-change",
                "restart",
                "--restart-grace",
                "3",
                "--",
                "sh",
                "-c",
                DEV_SERVER,
            ],
        ),
        out.path().join("init.log"),
    );
    let first = lines_of(&seen, 1, Duration::from_secs(10));
    assert_eq!(
        first,
        [format!("{VALUE}|extra-value-81c")],
        "{}",
        init.explain()
    );

    broker.set_user("TOKEN", "mona", "octo/hello", "rotated-live-4d2");
    let got = lines_of(&seen, 2, Duration::from_secs(10));
    assert_eq!(
        got.get(1).map(String::as_str),
        Some("rotated-live-4d2|extra-value-81c"),
        "{}",
        init.explain()
    );
    broker
        .cli(&["delete", "EXTRA", "--user", "mona"], None)
        .ok();
    let got = lines_of(&seen, 3, Duration::from_secs(10));
    assert_eq!(
        got.get(2).map(String::as_str),
        Some("rotated-live-4d2|unset"),
        "{}",
        init.explain()
    );

    // A burst of changes gives one restart, with the last value.
    for n in 0..5 {
        broker.set_user("TOKEN", "mona", "octo/hello", &format!("burst-{n}-c0"));
    }
    std::thread::sleep(Duration::from_secs(3));
    let got = lines_of(&seen, 5, Duration::from_millis(1));
    assert_eq!(
        got.last().map(String::as_str),
        Some("burst-4-c0|unset"),
        "{}",
        init.explain()
    );
    assert!(
        got.len() <= 5,
        "a burst of 5 changes gave {} restarts: {got:?}",
        got.len() - 3
    );

    // The command ending by itself still ends the init with its code.
    signal_command(&init, libc::SIGUSR1);
    assert_eq!(
        init.wait(Duration::from_secs(10)),
        Some(7),
        "{}",
        init.explain()
    );
    let log = init.log();
    assert!(log.contains("restarting the command"), "{}", init.explain());
    for v in [
        VALUE,
        "rotated-live-4d2",
        "extra-value-81c",
        "burst-4-c0",
        PASSWORD,
    ] {
        assert!(!log.contains(v), "{v} in the init's log");
    }
}

/// Sends `sig` to the init of `w` (PID 1 of its namespace, the child of `unshare`): it forwards
/// it to the command.
fn signal_command(w: &Watching, sig: i32) {
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.child.id())).unwrap();
    let init: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    )
    .unwrap();
}

/// The same dev server for `signal:HUP`: on HUP it appends the registry credentials file it
/// reads (as a server re-reading its files would) to `$OUT`.
const HUP_SERVER: &str = r#"
trap 'exit 7' USR1
trap 'echo "hup $(cat "$DOCKER_CONFIG/config.json")" >> "$OUT"' HUP
printf 'start %s\n' "${TOKEN-unset}" >> "$OUT"
while :; do sleep 1 & wait $!; done
"#;

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[test]
fn on_change_signal_keeps_the_process_and_its_files_are_current() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (broker, dir) = broker_with_sandbox();
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let seen_s = seen.display().to_string();
    let docker = out.path().join("docker").display().to_string();
    let mut init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[
                ("OUT", &seen_s),
                ("DOCKER_CONFIG", &docker),
                ("SANDBOX_INIT_ON_CHANGE", "signal:HUP"),
            ],
            &["--", "sh", "-c", HUP_SERVER],
        ),
        out.path().join("init.log"),
    );
    let first = lines_of(&seen, 1, Duration::from_secs(10));
    assert_eq!(first, [format!("start {VALUE}")], "{}", init.explain());
    broker.set_repo(
        "REG_CONTAINER_REGISTRY_PASSWORD",
        "octo/hello",
        "rotated-pw-9e0",
    );
    let got = lines_of(&seen, 2, Duration::from_secs(10));
    let hup = got.get(1).cloned().unwrap_or_default();
    assert!(hup.starts_with("hup "), "{got:?}\n{}", init.explain());
    assert!(hup.contains(&basic("mona", "rotated-pw-9e0")), "{hup}");
    assert!(!hup.contains(&basic("mona", PASSWORD)), "{hup}");
    // Still the first process: no second start line.
    std::thread::sleep(Duration::from_millis(300));
    let got = lines_of(&seen, 3, Duration::from_millis(1));
    assert_eq!(got.len(), 2, "{got:?}");
    signal_command(&init, libc::SIGUSR1);
    assert_eq!(
        init.wait(Duration::from_secs(10)),
        Some(7),
        "{}",
        init.explain()
    );
    for v in [VALUE, "rotated-pw-9e0", PASSWORD] {
        assert!(!init.log().contains(v), "{v} in the init's log");
    }
}

/// The PID (as the host sees it) of the init of `w`: PID 1 of its namespace, the child of
/// `unshare`.
fn init_pid(w: &Watching) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.child.id()))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether the init of `w` holds a connected unix socket (its watch: the fetch at start is
/// closed before the command starts), from its descriptors and `/proc/net/unix`.
fn holds_a_connection(w: &Watching) -> bool {
    let Some(pid) = init_pid(w) else {
        return false;
    };
    let connected: Vec<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7 && f[5] == "03").then(|| format!("socket:[{}]", f[6]))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| connected.iter().any(|c| l.as_os_str() == c.as_str()))
}

/// Waits until the init of `w` holds its watch open, as the broker will see it when a change
/// comes.
fn watch_open(w: &Watching) {
    assert!(
        eventually(Duration::from_secs(10), || holds_a_connection(w)),
        "the init holds no watch open\n{}",
        w.explain()
    );
    // The connection is made; give the daemon a moment to read the request's headers.
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn set_says_how_many_watching_sandboxes_restart_their_command() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (broker, restart_dir) = broker_with_sandbox();
    let restart_id = restart_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (signal_id, signal_dir) = broker.sandbox("mona", "octo/hello");
    let (quiet_id, quiet_dir) = broker.sandbox("mona", "octo/hello");
    let out = tempfile::tempdir().unwrap();
    let start = |name: &str, dir: &Path, mode: &str, script: &str| {
        let seen = out.path().join(format!("{name}.seen"));
        let docker = out.path().join(format!("{name}.docker"));
        let mut args = vec!["--on-change", mode, "--", "sh", "-c", script];
        if mode == "none" {
            args.drain(..2);
        }
        let init = Watching::start(
            pid1_command(
                &dir.join("secrets.sock"),
                &[
                    ("OUT", &seen.display().to_string()),
                    ("DOCKER_CONFIG", &docker.display().to_string()),
                ],
                &args,
            ),
            out.path().join(format!("{name}.log")),
        );
        let first = lines_of(&seen, 1, Duration::from_secs(10));
        assert_eq!(first.len(), 1, "{}", init.explain());
        (init, seen)
    };
    let (restarting, restart_seen) = start("restart", &restart_dir, "restart", DEV_SERVER);
    let (signalled, signal_seen) = start("signal", &signal_dir, "signal:HUP", HUP_SERVER);
    let (quiet, _) = start("quiet", &quiet_dir, "none", DEV_SERVER);
    watch_open(&restarting);
    watch_open(&signalled);
    assert!(
        !holds_a_connection(&quiet),
        "an init without --on-change holds a connection\n{}",
        quiet.explain()
    );

    let r = broker
        .cli(
            &["set", "TOKEN", "--user", "mona", "--repos", "octo/hello"],
            Some(b"restarts-told-1"),
        )
        .ok();
    assert_eq!(
        r.stdout(),
        "updated user secret TOKEN of mona: 3 sandboxes see the change \
         (2 watching, 1 restarts its command)\n",
        "{}\n{}\n{}",
        r.explain(),
        restarting.explain(),
        signalled.explain()
    );
    // What was said is what happened: one command started again, the other was signalled.
    let got = lines_of(&restart_seen, 2, Duration::from_secs(10));
    assert_eq!(
        got.get(1).map(String::as_str),
        Some("restarts-told-1|unset"),
        "{}",
        restarting.explain()
    );
    let got = lines_of(&signal_seen, 2, Duration::from_secs(10));
    assert!(
        got.get(1).is_some_and(|l| l.starts_with("hup ")),
        "{got:?}\n{}",
        signalled.explain()
    );

    // --json carries the ids; a change the restarting sandbox does not see restarts nothing.
    watch_open(&restarting);
    watch_open(&signalled);
    let json = |args: &[&str], value: Option<&[u8]>| {
        let r = broker.cli(args, value).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
        v
    };
    let v = json(
        &["delete", "TOKEN", "--user", "mona", "--yes", "--json"],
        None,
    );
    let mut all = vec![restart_id.clone(), signal_id.clone(), quiet_id.clone()];
    all.sort();
    let mut watching = vec![restart_id.clone(), signal_id.clone()];
    watching.sort();
    assert_eq!(v["sandboxes"], serde_json::json!(all), "{v}");
    assert_eq!(v["watching"], serde_json::json!(watching), "{v}");
    assert_eq!(v["restarting"], serde_json::json!([restart_id]), "{v}");
    let got = lines_of(&restart_seen, 3, Duration::from_secs(10));
    assert_eq!(got.get(2).map(String::as_str), Some("unset|unset"));

    // A secret of another repository reaches none of them: nothing watching, nothing restarts.
    watch_open(&restarting);
    let v = json(
        &[
            "set",
            "ELSEWHERE",
            "--user",
            "mona",
            "--repos",
            "octo/other",
            "--json",
        ],
        Some(b"elsewhere-3"),
    );
    assert_eq!(v["restarting"], serde_json::json!([]), "{v}");
    assert_eq!(v["watching"], serde_json::json!([]), "{v}");
    for log in [restarting.log(), signalled.log(), broker.log_text()] {
        for v in ["restarts-told-1", "elsewhere-3", VALUE, PASSWORD] {
            assert!(!log.contains(v), "{v} in a log:\n{log}");
        }
    }
}

#[test]
fn a_change_made_while_the_broker_restarts_arrives_when_it_is_back() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (mut broker, dir) = broker_with_sandbox();
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let seen_s = seen.display().to_string();
    let docker = out.path().join("docker").display().to_string();
    let init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[("OUT", &seen_s), ("DOCKER_CONFIG", &docker)],
            &["--on-change", "restart", "--", "sh", "-c", DEV_SERVER],
        ),
        out.path().join("init.log"),
    );
    assert_eq!(
        lines_of(&seen, 1, Duration::from_secs(10)).len(),
        1,
        "{}",
        init.explain()
    );
    broker.stop();
    // The watcher retries with backoff meanwhile; the command keeps running with its values.
    std::thread::sleep(Duration::from_secs(2));
    broker.start().unwrap();
    broker.set_user("TOKEN", "mona", "octo/hello", "after-restart-0b7");
    let got = lines_of(&seen, 2, Duration::from_secs(15));
    assert_eq!(
        got.get(1).map(String::as_str),
        Some("after-restart-0b7|unset"),
        "{got:?}\n{}",
        init.explain()
    );
    assert_eq!(got[0], format!("{VALUE}|unset"));
    let log = init.log();
    assert!(log.contains("reconnected"), "{}", init.explain());
    for v in [VALUE, "after-restart-0b7", PASSWORD] {
        assert!(!log.contains(v), "{v} in the init's log");
    }
}

/// Waits up to `within` for `check` to hold.
fn eventually(within: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn secrets_dir_files_and_our_config_json_entries_follow_set_and_delete() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (broker, dir) = broker_with_sandbox();
    let out = tempfile::tempdir().unwrap();
    // The secrets directory on tmpfs, as the spill rules want; a file of the user's in it.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let files = shm.path().join("secrets");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("NOTES"), "mine").unwrap();
    // A config.json holding the user's own login, which must survive everything.
    let docker = out.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths":{"theirs.example":{"auth":"dGhlaXI6b3du"}}}"#,
    )
    .unwrap();
    let (files_s, docker_s) = (files.display().to_string(), docker.display().to_string());
    let init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[("DOCKER_CONFIG", &docker_s)],
            &[
                "--on-change",
                "signal:HUP",
                "--secrets-dir",
                &files_s,
                "--",
                "sh",
                "-c",
                "trap : HUP; while :; do sleep 1 & wait $!; done",
            ],
        ),
        out.path().join("init.log"),
    );
    let read = |name: &str| std::fs::read_to_string(files.join(name)).ok();
    let config = || std::fs::read_to_string(docker.join("config.json")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || read("TOKEN").as_deref()
            == Some(VALUE)),
        "{}",
        init.explain()
    );
    let meta = std::fs::metadata(files.join("TOKEN")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o400);
    assert_eq!(
        read("REG_CONTAINER_REGISTRY_PASSWORD").as_deref(),
        Some(PASSWORD)
    );
    // config.json is written last, just after the files.
    assert!(
        eventually(Duration::from_secs(5), || config()
            .contains(&basic("mona", PASSWORD))),
        "{}",
        config()
    );

    broker.set_user("TOKEN", "mona", "octo/hello", "files-rotated-6a1");
    broker.set_user("LATER", "mona", "octo/hello", "later-value-22f");
    broker.set_repo(
        "REG_CONTAINER_REGISTRY_PASSWORD",
        "octo/hello",
        "pw-rotated-e3c",
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            read("TOKEN").as_deref() == Some("files-rotated-6a1")
                && read("LATER").as_deref() == Some("later-value-22f")
                && config().contains(&basic("mona", "pw-rotated-e3c"))
        }),
        "{:?} {:?}\n{}\n{}",
        read("TOKEN"),
        read("LATER"),
        config(),
        init.explain()
    );
    assert!(
        !config().contains(&basic("mona", PASSWORD)),
        "the old password stayed"
    );

    broker
        .cli(&["delete", "TOKEN", "--user", "mona"], None)
        .ok();
    broker
        .cli(
            &[
                "delete",
                "REG_CONTAINER_REGISTRY_USER",
                "--repo",
                "octo/hello",
            ],
            None,
        )
        .ok();
    assert!(
        eventually(Duration::from_secs(10), || read("TOKEN").is_none()
            && !config().contains("reg.example")),
        "{:?}\n{}\n{}",
        read("TOKEN"),
        config(),
        init.explain()
    );
    // Theirs stays: the user's file, the user's login; ours is gone with its record.
    assert_eq!(read("NOTES").as_deref(), Some("mine"));
    assert_eq!(read("LATER").as_deref(), Some("later-value-22f"));
    let cfg: serde_json::Value = serde_json::from_str(&config()).unwrap();
    assert_eq!(
        cfg["auths"]["theirs.example"]["auth"], "dGhlaXI6b3du",
        "{cfg}"
    );
    assert_eq!(cfg["auths"].as_object().unwrap().len(), 1, "{cfg}");
    // The record goes right after config.json is rewritten (a step later on the watch thread).
    assert!(
        eventually(Duration::from_secs(10), || !docker
            .join("config.json.sandbox-init")
            .exists()),
        "the record of our entries outlived them"
    );
    let log = init.log();
    for v in [
        VALUE,
        "files-rotated-6a1",
        "later-value-22f",
        PASSWORD,
        "pw-rotated-e3c",
    ] {
        assert!(!log.contains(v), "{v} in the init's log");
    }
}

#[test]
fn helper_mode_keeps_no_password_on_disk_and_skopeo_uses_a_rotated_one() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let Some([registry, user, password, image]) = support::registry::registry_env() else {
        support::skip("no test registry (run scripts/registry.sh start)");
        return;
    };
    if Command::new("skopeo").arg("--version").output().is_err() {
        support::skip("skopeo not installed");
        return;
    }
    let broker = Daemon::traced();
    broker.set_user(
        "PRIV_CONTAINER_REGISTRY_SERVER",
        "mona",
        "octo/hello",
        &registry,
    );
    broker.set_user("PRIV_CONTAINER_REGISTRY_USER", "mona", "octo/hello", &user);
    broker.set_user(
        "PRIV_CONTAINER_REGISTRY_PASSWORD",
        "mona",
        "octo/hello",
        "wrong-pw-51d",
    );
    let (_, dir) = broker.sandbox("mona", "octo/hello");
    let out = tempfile::tempdir().unwrap();
    // docker-credential-sandbox: this binary under that name, on PATH.
    let bin = out.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(INIT, bin.join("docker-credential-sandbox")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker = out.path().join("docker");
    let docker_s = docker.display().to_string();
    let socket = dir.join("secrets.sock");
    let init = Watching::start(
        {
            let mut c = pid1_command(
                &socket,
                &[("DOCKER_CONFIG", &docker_s)],
                &[
                    "--registry-credentials",
                    "helper",
                    "--",
                    "sh",
                    "-c",
                    "while :; do sleep 1 & wait $!; done",
                ],
            );
            c.env("PATH", &path);
            c
        },
        out.path().join("init.log"),
    );
    // Beside it, file mode with a watch: the rotated password replaces ours in config.json.
    let filed = out.path().join("filed");
    let filed_s = filed.display().to_string();
    let file_init = Watching::start(
        pid1_command(
            &socket,
            &[("DOCKER_CONFIG", &filed_s)],
            &[
                "--on-change",
                "signal:HUP",
                "--",
                "sh",
                "-c",
                "trap : HUP; while :; do sleep 1 & wait $!; done",
            ],
        ),
        out.path().join("file-init.log"),
    );
    let config = docker.join("config.json");
    assert!(
        eventually(Duration::from_secs(10), || config.exists()
            && filed.join("config.json").exists()),
        "{}\n{}",
        init.explain(),
        file_init.explain()
    );
    // What a process in the sandbox runs: skopeo, reading the config the init wrote.
    let skopeo_with = |dir: &Path| {
        let mut c = Command::new("skopeo");
        c.args(["inspect", "--tls-verify=false", "--authfile"])
            .arg(dir.join("config.json"))
            .arg(format!("docker://{image}"))
            .env("PATH", &path)
            .env("SANDBOX_SECRETS_SOCKET", &socket)
            .env("DOCKER_CONFIG", dir);
        run(c, None)
    };
    let skopeo = || skopeo_with(&docker);
    let r = skopeo_with(&filed);
    assert!(
        !r.out.status.success(),
        "the wrong password worked\n{}",
        r.explain()
    );
    let r = skopeo();
    assert!(
        !r.out.status.success(),
        "the wrong password worked\n{}",
        r.explain()
    );
    broker.set_user(
        "PRIV_CONTAINER_REGISTRY_PASSWORD",
        "mona",
        "octo/hello",
        &password,
    );
    let r = skopeo();
    assert!(
        r.out.status.success(),
        "{}\n{}",
        r.explain(),
        init.explain()
    );
    // File mode: the watch rewrote config.json with the rotated password.
    let wanted = basic(&user, &password);
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(
            filed.join("config.json")
        )
        .unwrap_or_default()
        .contains(&wanted)),
        "{}",
        file_init.explain()
    );
    let r = skopeo_with(&filed);
    assert!(r.out.status.success(), "{}", r.explain());
    assert!(!file_init.log().contains(&password));
    // docker pull through the same helper, when a docker engine answers here.
    if Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let mut pull = Command::new("docker");
        pull.args(["pull", "-q", &image])
            .env("PATH", &path)
            .env("SANDBOX_SECRETS_SOCKET", &socket)
            .env("DOCKER_CONFIG", &docker);
        let r = run(pull, None);
        assert!(r.out.status.success(), "{}", r.explain());
    } else {
        support::skip("no docker engine: docker pull through the helper not tried");
    }

    // No password in any file the init wrote; the helper speaks the protocol.
    let text = std::fs::read_to_string(&config).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let host = registry.trim_start_matches("http://").trim_end_matches('/');
    assert_eq!(cfg["credHelpers"][host], "sandbox", "{text}");
    for entry in std::fs::read_dir(&docker).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!contains(&bytes, &password) && !contains(&bytes, "wrong-pw-51d"));
        assert!(!contains(&bytes, &basic(&user, &password)));
    }
    let mut get = Command::new(bin.join("docker-credential-sandbox"));
    get.arg("get")
        .env("SANDBOX_SECRETS_SOCKET", &socket)
        .env("SANDBOX_INIT_LOG", "trace");
    let r = run(get, Some(format!("{host}\n").as_bytes()));
    assert!(
        !contains(&r.out.stderr, &password),
        "the password in the helper's log"
    );
    let answer: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(answer["Username"], user.as_str());
    assert_eq!(answer["Secret"], password.as_str());
    assert_eq!(answer["ServerURL"], host);
    let mut list = Command::new(bin.join("docker-credential-sandbox"));
    list.arg("list").env("SANDBOX_SECRETS_SOCKET", &socket);
    assert_eq!(run(list, None).stdout(), "{}\n");
    let mut miss = Command::new(bin.join("docker-credential-sandbox"));
    miss.arg("get").env("SANDBOX_SECRETS_SOCKET", &socket);
    let r = run(miss, Some(b"elsewhere.example\n"));
    assert_eq!(r.out.status.code(), Some(1));
    assert_eq!(r.stdout(), "credentials not found in native keychain\n");
    let log = init.log();
    assert!(!log.contains(&password) && !log.contains("wrong-pw-51d"));
}

#[test]
fn docker_stop_during_a_restart_ends_the_init_with_the_commands_status() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (broker, dir) = broker_with_sandbox();
    let out = tempfile::tempdir().unwrap();
    let seen = out.path().join("seen");
    let seen_s = seen.display().to_string();
    let docker = out.path().join("docker").display().to_string();
    // A command that ignores SIGTERM: the restart waits out its grace (30 s) before SIGKILL.
    let script = r#"trap '' TERM; echo start >> "$OUT"; while :; do sleep 1 & wait $!; done"#;
    let mut init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[("OUT", &seen_s), ("DOCKER_CONFIG", &docker)],
            &[
                "--on-change",
                "restart",
                "--restart-grace",
                "30",
                "--",
                "sh",
                "-c",
                script,
            ],
        ),
        out.path().join("init.log"),
    );
    assert_eq!(lines_of(&seen, 1, Duration::from_secs(10)).len(), 1);
    broker.set_user("TOKEN", "mona", "octo/hello", "during-stop-8d3");
    assert!(
        eventually(Duration::from_secs(10), || init
            .log()
            .contains("restarting the command")),
        "{}",
        init.explain()
    );
    // docker stop: SIGTERM to PID 1. The command ignores it, so it gets SIGHUP as on a hang-up;
    // the init ends with its status instead of starting it again.
    signal_command(&init, libc::SIGTERM);
    assert_eq!(
        init.wait(Duration::from_secs(10)),
        Some(128 + libc::SIGHUP),
        "{}",
        init.explain()
    );
    assert_eq!(lines_of(&seen, 2, Duration::from_millis(1)), ["start"]);
    assert!(
        init.log().contains("restart is abandoned"),
        "{}",
        init.explain()
    );
}

#[test]
fn a_deeply_nested_config_json_does_not_take_the_watch_down() {
    if let Some(why) = can_be_pid1() {
        support::skip(why);
        return;
    }
    let (broker, dir) = broker_with_sandbox();
    let out = tempfile::tempdir().unwrap();
    // As deep as serde_json reads (128 levels with the top object): parsed, merged and written
    // again on the watch thread after a change.
    let docker = out.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
    std::fs::write(docker.join("config.json"), &deep).unwrap();
    let docker_s = docker.display().to_string();
    let mut init = Watching::start(
        pid1_command(
            &dir.join("secrets.sock"),
            &[("DOCKER_CONFIG", &docker_s)],
            &[
                "--on-change",
                "signal:HUP",
                "--",
                "sh",
                "-c",
                "trap : HUP; while :; do sleep 1 & wait $!; done",
            ],
        ),
        out.path().join("init.log"),
    );
    let config = || std::fs::read_to_string(docker.join("config.json")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || config()
            .contains(&basic("mona", PASSWORD))),
        "{}",
        init.explain()
    );
    broker.set_repo(
        "REG_CONTAINER_REGISTRY_PASSWORD",
        "octo/hello",
        "deep-rotated-1f4",
    );
    assert!(
        eventually(Duration::from_secs(10), || config()
            .contains(&basic("mona", "deep-rotated-1f4"))),
        "{}",
        init.explain()
    );
    assert!(
        config().contains(&"[".repeat(126)),
        "the nested value was lost"
    );
    assert_eq!(
        init.wait(Duration::from_millis(300)),
        None,
        "{}",
        init.explain()
    );
}

/// tini's `-p SIG` outlives the credentials written as the target user: the kernel clears a
/// thread's parent-death signal when its filesystem ids change (the `config.json` write for
/// `--user`), so the init must set it again, or a dead parent leaves it running.
#[test]
fn tini_p_still_fires_after_credentials_are_written_as_the_target_user() {
    if let Some(why) = support::daemon::nobody_unavailable() {
        support::skip(why);
        return;
    }
    let (_broker, dir, out) = broker_for_nobody();
    let docker = out.path().join("docker");
    let tini = out.path().join("tini");
    std::os::unix::fs::symlink(INIT, &tini).unwrap();
    // The parent: starts the init in the background, says its pid, then waits to be killed.
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" -p SIGKILL -- sleep 1000 & echo $!; exec sleep 1000")
        .arg(&tini)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", dir.join("secrets.sock"))
        .env("SANDBOX_INIT_USER", "nobody")
        .env("DOCKER_CONFIG", &docker)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let init: u32 = line.trim().parse().unwrap();
    let children = format!("/proc/{init}/task/{init}/children");
    let started = Instant::now();
    // Credentials written and the command started: the init is past the write.
    while !(docker.join("config.json").exists()
        && std::fs::read_to_string(&children).is_ok_and(|c| !c.trim().is_empty()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the init never wrote the credentials and started its command"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let command = std::fs::read_to_string(&children).unwrap();
    let _ = parent.kill();
    let _ = parent.wait();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| {
            s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = gone();
    for pid in command
        .split_whitespace()
        .chain([init.to_string().as_str()])
    {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    assert!(
        dead,
        "the init {init} outlived its parent: -p SIGKILL was lost when it wrote config.json as nobody"
    );
}
