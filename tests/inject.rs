//! The init's secrets step against real unix-socket peers started here: a well-behaved answer,
//! and hostile or faulty ones (garbage, silence, 500, an oversized answer, a dead socket). Drives
//! `sandbox_init::inject::{prepare, write_env}` through the library; every test in its own temp
//! dir; values are distinctive and grepped for in every log line.

mod support;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use sandbox_init::inject::{self, Options, Prepared, SecretsPolicy, Target};
use secrecy::ExposeSecret;
use serde_json::json;

use support::peer::{Peer as Server, Reply};
use support::registry::registry_env;

// ---------------------------------------------------------------------------------------------
// Peers (the fake broker is `support::peer`)

fn serve(secrets: &[(&str, &str)]) -> Server {
    Server::serving(secrets)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn opts(socket: &Path, policy: SecretsPolicy) -> Options {
    Options {
        socket: socket.to_owned(),
        policy,
        timeout: Duration::from_secs(5),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The target: `nobody` (65534) when root so ownership is really changed, else ourselves.
fn target(home: &Path) -> Target {
    if is_root() {
        Target {
            uid: 65534,
            gid: 65534,
            home: home.to_owned(),
        }
    } else {
        support::skip("ownership by another user (not root); targeting ourselves");
        Target {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home: home.to_owned(),
        }
    }
}

/// A temp dir the target can traverse: the init works on docker config files as the target.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Gives `paths` to the target: the init writes credentials only where the target owns.
fn give(t: &Target, paths: &[&Path]) {
    for p in paths {
        std::os::unix::fs::lchown(p, Some(t.uid), Some(t.gid)).unwrap();
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// Runs `f` with a trace-level subscriber on this thread, returning its result and every log
/// line it wrote.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn vars(p: &Prepared) -> Vec<(String, String)> {
    p.vars
        .iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
        .collect()
}

fn err_text(e: &inject::Error) -> String {
    inject::chain(e)
}

fn assert_no_value(haystack: &str, values: &[&str]) {
    for v in values {
        assert!(
            !haystack.contains(v),
            "value {v:?} leaked into:\n{haystack}"
        );
    }
}

const TRICKY: &str = "l1\nl2 'single' \"double\" $HOME `id` \\back\\slash é✓🦀\ttab\r\n";

// ---------------------------------------------------------------------------------------------
// Fetch and policy

#[test]
fn no_socket_starts_without_secrets_unless_required() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let home = dir.path().join("home");
    for policy in [SecretsPolicy::Auto, SecretsPolicy::Optional] {
        let (got, logs) = logged(|| inject::prepare(&opts(&socket, policy), &target(&home), &[]));
        let got = got.unwrap();
        assert!(got.vars.is_empty() && got.unset.is_empty());
        assert!(logs.contains("no secrets socket"), "{logs}");
        assert!(logs.contains("absent.sock"), "{logs}");
    }
    let e =
        inject::prepare(&opts(&socket, SecretsPolicy::Required), &target(&home), &[]).unwrap_err();
    let msg = err_text(&e);
    assert!(
        msg.contains("absent.sock") && msg.contains("does not exist") && msg.contains("required"),
        "{msg}"
    );
    // Nothing was created on the way.
    assert!(!home.exists());
}

#[test]
fn authorized_secrets_arrive_byte_exact_and_replace_inherited_with_a_warning() {
    let server = serve(&[
        ("TRICKY", TRICKY),
        ("api_token", "tok-7f3a9c-distinct"),
        ("EMPTY", ""),
    ]);
    let home = tempfile::tempdir().unwrap();
    let inherited = env(&[("API_TOKEN", "inherited-old-value"), ("TERM", "xterm")]);
    let (got, logs) = logged(|| {
        inject::prepare(
            &opts(&server.socket, SecretsPolicy::Auto),
            &target(home.path()),
            &inherited,
        )
    });
    let got = got.unwrap();
    assert_eq!(
        vars(&got),
        vec![
            ("API_TOKEN".to_string(), "tok-7f3a9c-distinct".to_string()),
            ("EMPTY".to_string(), String::new()),
            ("TRICKY".to_string(), TRICKY.to_string()),
        ]
    );
    assert!(got.unset.is_empty());
    assert!(
        logs.contains("WARN") && logs.contains("API_TOKEN replaces the inherited variable"),
        "{logs}"
    );
    assert!(
        logs.contains("fetched 3 secrets from") && logs.contains("API_TOKEN EMPTY TRICKY"),
        "{logs}"
    );
    assert_no_value(
        &logs,
        &[
            "tok-7f3a9c-distinct",
            "inherited-old-value",
            "single",
            "back",
        ],
    );
    assert!(
        format!("{got:?}").find("tok-7f3a9c").is_none(),
        "Debug shows a value"
    );
    // No registry triplet: no docker config written.
    assert!(!home.path().join(".docker").exists());
    assert_eq!(server.hits(), 1);
    let requests = server.requests();
    assert!(
        requests[0].starts_with(b"GET /v1/secrets HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&requests[0])
    );
}

/// Every way a present socket can fail, under each policy: `auto` and `required` stop with a
/// message naming the socket and the reason; `optional` warns and goes on with none.
#[test]
fn faulty_peers_fail_closed_unless_optional() {
    let dead_dir = tempfile::tempdir().unwrap();
    let dead = dead_dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    let not_a_socket = dead_dir.path().join("plain-file");
    std::fs::write(&not_a_socket, b"").unwrap();

    let garbage = Server::start(Reply::answer("200 OK", b"{\"hello\":\"world\"}"));
    let not_http = Server::start(Reply::Bytes(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()));
    let silent = Server::start(Reply::Silent);
    let failing = Server::start(Reply::answer(
        "500 Internal Server Error",
        br#"{"error":"store is locked"}"#,
    ));
    let flood = Server::start(Reply::flood());
    let bad_name = serve(&[("LD_PRELOAD", "/tmp/evil-distinct.so")]);
    let dup = serve(&[("DUP", "dup-value-1"), ("dup", "dup-value-2")]);
    let cases: Vec<(&str, &Path, &[&str])> = vec![
        (
            "dead socket",
            &dead,
            &["dead.sock", "cannot connect", "refused"],
        ),
        (
            "not a socket",
            &not_a_socket,
            &["plain-file", "cannot connect"],
        ),
        (
            "garbage",
            &garbage.socket,
            &["garbage", "not a secrets answer"],
        ),
        ("not http", &not_http.socket, &["HTTP exchange"]),
        (
            "silent",
            &silent.socket,
            &["no complete answer within 400ms"],
        ),
        ("500", &failing.socket, &["500", "store is locked"]),
        ("flood", &flood.socket, &["larger than 16777216 bytes"]),
        (
            "dangerous name",
            &bad_name.socket,
            &["garbage", "LD_PRELOAD", "dangerous"],
        ),
        (
            "duplicate",
            &dup.socket,
            &["garbage", "DUP", "more than once"],
        ),
    ];
    let home = tempfile::tempdir().unwrap();
    for (what, socket, want) in cases {
        for policy in [
            SecretsPolicy::Auto,
            SecretsPolicy::Required,
            SecretsPolicy::Optional,
        ] {
            // Only the silent peer is meant to run into the deadline.
            let timeout = if what == "silent" { 400 } else { 20_000 };
            let o = Options {
                timeout: Duration::from_millis(timeout),
                ..opts(socket, policy)
            };
            let (got, logs) = logged(|| inject::prepare(&o, &target(home.path()), &[]));
            let text = match (&got, policy) {
                (Ok(p), SecretsPolicy::Optional) => {
                    assert!(p.vars.is_empty(), "{what}");
                    assert!(
                        logs.contains("WARN") && logs.contains("--secrets optional"),
                        "{what}: {logs}"
                    );
                    logs.clone()
                }
                (Err(e), SecretsPolicy::Auto | SecretsPolicy::Required) => err_text(e),
                _ => panic!("{what} under {policy:?}: {got:?}\n{logs}"),
            };
            assert!(text.contains("cannot fetch secrets from"), "{what}: {text}");
            for w in want {
                assert!(
                    text.contains(w),
                    "{what} under {policy:?}: want {w:?} in {text}"
                );
            }
            assert_no_value(&(text + &logs), &["evil-distinct", "dup-value"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spill

#[test]
fn a_value_over_max_arg_strlen_arrives_through_name_file() {
    let big: String = "0123456789abcdef".repeat(200 * 1024 / 16) + "-end-distinct";
    let server = serve(&[("BIG", &big), ("SMALL", "small-distinct")]);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let spill = dir.path().join("run/sandbox-init/secrets");
    // Left from an earlier start: a revoked secret's file (in the init's manifest), in a
    // directory the init did not make (so its mode is kept).
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::set_permissions(&spill, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(spill.join("REVOKED"), b"revoked-distinct").unwrap();
    std::fs::write(spill.join(inject::spill::MANIFEST), "REVOKED\n").unwrap();
    let t = target(dir.path());
    give(&t, &[&spill]); // an earlier start made it the target's
    let inherited = env(&[
        ("BIG", "stale-inherited"),
        ("SANDBOX_INIT_SECRETS_DIR", spill.to_str().unwrap()),
    ]);
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &inherited));
    let got = got.unwrap();
    let file = spill.join("BIG");
    assert_eq!(
        vars(&got),
        vec![
            ("BIG_FILE".to_string(), file.to_str().unwrap().to_string()),
            ("SMALL".to_string(), "small-distinct".to_string()),
        ]
    );
    assert_eq!(got.unset, vec!["BIG".to_string()]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), big);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o400);
    assert_eq!((meta.uid(), meta.gid()), (t.uid, t.gid));
    let dmeta = std::fs::metadata(&spill).unwrap();
    assert_eq!(dmeta.mode() & 0o7777, 0o755);
    assert_eq!((dmeta.uid(), dmeta.gid()), (t.uid, t.gid));
    // Only the file and the manifest: no temporary left behind, the revoked one gone.
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 2);
    assert_eq!(
        std::fs::read_to_string(spill.join(inject::spill::MANIFEST)).unwrap(),
        "BIG\n"
    );
    assert!(
        logs.contains("no longer spilled from") && logs.contains("secrets: REVOKED"),
        "{logs}"
    );
    assert!(logs.contains("BIG_FILE="), "{logs}");
    assert_no_value(
        &logs,
        &["-end-distinct", "0123456789abcdef", "small-distinct"],
    );
}

#[test]
fn many_values_over_the_total_budget_spill_the_largest_first() {
    // 100 values of 40 KiB = 4 MiB: more than ARG_MAX (2 MiB with an 8 MiB stack) allows.
    let values: Vec<(String, String)> = (0..100)
        .map(|i| (format!("V{i:03}"), format!("{i:03}-").repeat(10 * 1024)))
        .collect();
    let pairs: Vec<(&str, &str)> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let server = serve(&pairs);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let spill = dir.path().join("spill");
    let inherited = env(&[("SANDBOX_INIT_SECRETS_DIR", spill.to_str().unwrap())]);
    let got = inject::prepare(
        &opts(&server.socket, SecretsPolicy::Auto),
        &target(dir.path()),
        &inherited,
    )
    .unwrap();
    let limits = inject::env::Limits::current();
    let in_env: usize = got
        .vars
        .iter()
        .map(|(k, v)| inject::env::entry_cost(k.len(), v.expose_secret().len()))
        .sum();
    assert!(in_env <= limits.total, "{in_env} > {}", limits.total);
    let files: Vec<_> = got
        .vars
        .iter()
        .filter(|(k, _)| k.ends_with("_FILE"))
        .collect();
    assert!(!files.is_empty());
    assert_eq!(got.vars.len(), 100);
    for (k, path) in files {
        let name = k.trim_end_matches("_FILE");
        let want = &values.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(
            &std::fs::read_to_string(path.expose_secret()).unwrap(),
            want
        );
    }
    // The real execve takes what stayed: a child sees every in-env value.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("echo ok").env_clear();
    for (k, v) in &got.vars {
        cmd.env(k, v.expose_secret());
    }
    let out = cmd.output().expect("execve with the planned environment");
    assert_eq!(out.stdout, b"ok\n");
}

// ---------------------------------------------------------------------------------------------
// Docker config

fn triplet<'a>(id: &str, server: &'a str, user: &'a str, pw: &'a str) -> Vec<(String, &'a str)> {
    vec![
        (format!("{id}_CONTAINER_REGISTRY_SERVER"), server),
        (format!("{id}_CONTAINER_REGISTRY_USER"), user),
        (format!("{id}_CONTAINER_REGISTRY_PASSWORD"), pw),
    ]
}

fn serve_owned(secrets: &[(String, &str)]) -> Server {
    let pairs: Vec<(&str, &str)> = secrets.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    serve(&pairs)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_triplet_merges_into_config_json_keeping_other_auths() {
    let dir = open_tempdir();
    let home = dir.path().join("home");
    let docker = home.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths":{"other.example:5000":{"auth":"b3RoZXI6a2VlcA=="},
            "HTTPS://Reg.Example:5000/":{"auth":"c3RhbGU="}},"psFormat":"table {{.ID}}"}"#,
    )
    .unwrap();
    let mut secrets = triplet(
        "ACME",
        "https://Reg.Example:5000/",
        "mona",
        "pw-9d8c7b-distinct",
    );
    secrets.extend(triplet("HUB", "docker.io", "hubuser", "hub-pw-distinct"));
    secrets.push(("PLAIN".into(), "plain-distinct"));
    let server = serve_owned(&secrets);
    let t = target(&home);
    give(&t, &[&docker]);
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &[]));
    let got = got.unwrap();
    let path = docker.join("config.json");
    let config = read_json(&path);
    assert_eq!(
        config,
        json!({
            "auths": {
                "other.example:5000": {"auth": "b3RoZXI6a2VlcA=="},
                "reg.example:5000": {"auth": b64("mona:pw-9d8c7b-distinct")},
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hub-pw-distinct")},
            },
            "psFormat": "table {{.ID}}",
        })
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (t.uid, t.gid));
    let dmeta = std::fs::metadata(&docker).unwrap();
    assert_eq!(dmeta.mode() & 0o7777, 0o700);
    assert_eq!((dmeta.uid(), dmeta.gid()), (t.uid, t.gid));
    // config.json and the record of what sandbox-init wrote into it, no temporary file.
    assert_eq!(
        std::fs::read_dir(&docker).unwrap().count(),
        2,
        "a temp file was left"
    );
    assert!(docker.join("config.json.sandbox-init").is_file());
    // The triplet variables stay in the environment too (Codespaces behaviour).
    assert_eq!(got.vars.len(), 7);
    assert!(logs.contains("registry credentials written"), "{logs}");
    assert_no_value(
        &logs,
        &[
            "pw-9d8c7b-distinct",
            "hub-pw-distinct",
            &b64("mona:pw-9d8c7b-distinct"),
            "b3RoZXI6a2VlcA==",
        ],
    );
}

#[test]
fn docker_config_env_is_honoured_and_a_missing_dir_is_created_private() {
    let dir = open_tempdir();
    let cfg = dir.path().join("cfg/docker");
    let secrets = triplet("R", "ghcr.io", "u", "ghcr-pw-distinct");
    let server = serve_owned(&secrets);
    let t = target(&dir.path().join("no-such-home"));
    std::fs::create_dir(dir.path().join("cfg")).unwrap();
    give(&t, &[&dir.path().join("cfg")]);
    let inherited = env(&[("DOCKER_CONFIG", cfg.to_str().unwrap())]);
    inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &inherited).unwrap();
    let config = read_json(&cfg.join("config.json"));
    assert_eq!(
        config["auths"]["ghcr.io"]["auth"],
        b64("u:ghcr-pw-distinct")
    );
    let dmeta = std::fs::metadata(&cfg).unwrap();
    assert_eq!(dmeta.mode() & 0o7777, 0o700);
    assert_eq!(dmeta.uid(), t.uid);
    assert!(!dir.path().join("no-such-home").exists());
}

#[test]
fn a_corrupt_config_is_kept_aside_and_shadowing_helpers_warned() {
    let dir = open_tempdir();
    let docker = dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    let corrupt = b"{\"auths\": {\"x\": {\"auth\": \"truncated-distinct";
    std::fs::write(docker.join("config.json"), corrupt).unwrap();
    let server = serve_owned(&triplet("R", "reg.example", "u", "corrupt-case-pw"));
    let t = target(dir.path());
    give(&t, &[&docker]);
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &[]));
    got.unwrap();
    let aside: Vec<PathBuf> = std::fs::read_dir(&docker)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains("config.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), corrupt);
    assert!(
        logs.contains("is corrupt (not JSON") && logs.contains("kept it as"),
        "{logs}"
    );
    let config = read_json(&docker.join("config.json"));
    assert_eq!(
        config["auths"]["reg.example"]["auth"],
        b64("u:corrupt-case-pw")
    );

    // Not an object: also kept aside. Then credsStore + credHelpers warnings.
    std::fs::write(docker.join("config.json"), b"[1,2]").unwrap();
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &[]));
    got.unwrap();
    assert!(logs.contains("not a JSON object"), "{logs}");
    std::fs::write(
        docker.join("config.json"),
        br#"{"credsStore":"desktop","credHelpers":{"reg.example":"pass"}}"#,
    )
    .unwrap();
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &[]));
    got.unwrap();
    assert!(
        logs.contains("credsStore \\\"desktop\\\"") || logs.contains("credsStore \"desktop\""),
        "{logs}"
    );
    assert!(logs.contains("credHelpers"), "{logs}");
    let config = read_json(&docker.join("config.json"));
    assert_eq!(config["credsStore"], "desktop");
    assert_eq!(
        config["auths"]["reg.example"]["auth"],
        b64("u:corrupt-case-pw")
    );
    assert_no_value(&logs, &["corrupt-case-pw", "truncated-distinct"]);
}

#[test]
fn an_incomplete_or_wrong_triplet_is_a_warning_naming_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut secrets = triplet("ACME", "reg.example", "u", "pw-distinct");
    secrets.retain(|(n, _)| !n.ends_with("_PASSWORD"));
    secrets.extend(triplet("SPACE", "reg example", "u", "space-pw-distinct"));
    let server = serve_owned(&secrets);
    let t = target(dir.path());
    let (got, logs) =
        logged(|| inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &[]));
    assert_eq!(got.unwrap().vars.len(), 5);
    assert!(
        logs.contains("ACME_CONTAINER_REGISTRY_PASSWORD missing"),
        "{logs}"
    );
    assert!(
        logs.contains("SPACE_CONTAINER_REGISTRY_SERVER is not a registry server"),
        "{logs}"
    );
    assert!(!dir.path().join(".docker").exists());
    assert_no_value(&logs, &["space-pw-distinct"]);
}

// ---------------------------------------------------------------------------------------------
// `sandbox-init env`

fn env_output(
    socket: &Path,
    policy: SecretsPolicy,
    env: &[(OsString, OsString)],
) -> Result<String, String> {
    let mut out = Vec::new();
    inject::write_env(&opts(socket, policy), inject::EnvFormat::Sh, env, &mut out)
        .map(|()| String::from_utf8(out).unwrap())
        .map_err(|e| inject::chain(&e))
}

#[test]
fn env_lines_round_trip_through_bash_dash_and_busybox() {
    let values = [
        ("TRICKY", TRICKY),
        ("QUOTES", "'''\"\"\"'"),
        ("DOLLARS", "$1 ${x:-y} $(echo no) `echo no`"),
        ("TRAILING", "ends with newlines\n\n"),
        ("UNICODE", "ünïcödé ✓ 🦀 \u{202e}"),
        ("EMPTY", ""),
    ];
    let server = serve(&values);
    let text = env_output(&server.socket, SecretsPolicy::Auto, &[]).unwrap();
    assert!(
        text.starts_with("export ") && text.ends_with("'\n"),
        "{text}"
    );
    let mut shells = vec![vec!["bash", "-c"], vec!["sh", "-c"]];
    if Command::new("busybox").arg("true").output().is_ok() {
        shells.push(vec!["busybox", "sh", "-c"]);
    } else {
        support::skip("busybox sh (not installed)");
    }
    let mut printer = String::from("eval \"$LINES\"\n");
    for (n, _) in &values {
        printer.push_str(&format!("printf '%s\\000' \"${n}\"\n"));
    }
    let mut want = Vec::new();
    for (_, v) in &values {
        want.extend_from_slice(v.as_bytes());
        want.push(0);
    }
    for shell in shells {
        let out = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&printer)
            .env_clear()
            .env("LINES", &text)
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell:?}: {out:?}");
        assert_eq!(out.stdout, want, "{shell:?}");
    }
}

#[test]
fn env_prints_nothing_without_a_socket_and_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.sock");
    assert_eq!(env_output(&absent, SecretsPolicy::Auto, &[]).unwrap(), "");
    assert!(env_output(&absent, SecretsPolicy::Required, &[])
        .unwrap_err()
        .contains("does not exist"));
    let garbage = Server::start(Reply::answer("200 OK", b"not json"));
    let e = env_output(&garbage.socket, SecretsPolicy::Auto, &[]).unwrap_err();
    assert!(e.contains("garbage"), "{e}");
    assert_eq!(
        env_output(&garbage.socket, SecretsPolicy::Optional, &[]).unwrap(),
        ""
    );
}

#[test]
fn env_exports_a_file_for_an_oversized_value() {
    let big = "z".repeat(140 * 1024) + "-env-big-distinct";
    let server = serve(&[("BIG", &big), ("SMALL", "s")]);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let spill = dir.path().join("secrets");
    let text = env_output(
        &server.socket,
        SecretsPolicy::Auto,
        &env(&[("SANDBOX_INIT_SECRETS_DIR", spill.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(
        text,
        format!(
            "export SMALL='s'\nexport BIG_FILE='{}'\nexport SANDBOX_SECRETS_NAMES='SMALL BIG_FILE'\n",
            spill.join("BIG").display()
        )
    );
    assert_eq!(std::fs::read_to_string(spill.join("BIG")).unwrap(), big);
}

// ---------------------------------------------------------------------------------------------
// Registry end to end (skopeo against a private registry)

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn registry_triplet_lets_skopeo_and_docker_reach_the_private_image() {
    let Some([registry, user, password, image]) = registry_env() else {
        support::skip("no test registry (run scripts/registry.sh)");
        return;
    };
    if Command::new("skopeo").arg("--version").output().is_err() {
        support::skip("skopeo not installed");
        return;
    }
    let cases = [
        (password.as_str(), true),
        ("wrong-password-distinct", false),
    ];
    for (pw, works) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("docker");
        let server = serve_owned(&triplet("TEST", &format!("http://{registry}/"), &user, pw));
        let me = Target {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home: dir.path().to_owned(),
        };
        inject::prepare(
            &opts(&server.socket, SecretsPolicy::Required),
            &me,
            &env(&[("DOCKER_CONFIG", cfg.to_str().unwrap())]),
        )
        .unwrap();
        let authfile = cfg.join("config.json");
        let out = run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--authfile"])
            .arg(&authfile)
            .arg(format!("docker://{image}")));
        assert_eq!(
            out.status.success(),
            works,
            "skopeo with password ok={works}"
        );
        let docker_ok = Command::new("docker")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !works && docker_ok {
            let out = run(Command::new("docker")
                .env("DOCKER_CONFIG", &cfg)
                .args(["pull", &image]));
            assert!(!out.status.success(), "docker pull with a wrong password");
        }
        // Unauthenticated must fail, or the test proves nothing.
        if works {
            let anon = dir.path().join("anon.json");
            std::fs::write(&anon, b"{}").unwrap();
            let out = run(Command::new("skopeo")
                .args(["inspect", "--tls-verify=false", "--authfile"])
                .arg(&anon)
                .arg(format!("docker://{image}")));
            assert!(
                !out.status.success(),
                "the registry lets anonymous users in"
            );
            if docker_ok {
                let _ = Command::new("docker")
                    .args(["image", "rm", &image])
                    .output();
                let out = run(Command::new("docker")
                    .env("DOCKER_CONFIG", &cfg)
                    .args(["pull", &image]));
                assert!(out.status.success(), "docker pull with DOCKER_CONFIG");
            } else {
                support::skip("docker pull (docker not running)");
            }
        }
    }
}

#[test]
fn a_spill_directory_that_cannot_be_made_stops_the_init_unless_optional() {
    let big = "q".repeat(130 * 1024) + "-unspillable-distinct";
    let server = serve(&[("BIG", &big), ("SMALL", "s")]);
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let spill = blocker.join("secrets");
    let inherited = env(&[("SANDBOX_INIT_SECRETS_DIR", spill.to_str().unwrap())]);
    let t = target(dir.path());
    let e =
        inject::prepare(&opts(&server.socket, SecretsPolicy::Auto), &t, &inherited).unwrap_err();
    let msg = err_text(&e);
    assert!(
        msg.contains("cannot prepare the directory") && msg.contains("a-file/secrets"),
        "{msg}"
    );
    let (got, logs) = logged(|| {
        inject::prepare(
            &opts(&server.socket, SecretsPolicy::Optional),
            &t,
            &inherited,
        )
    });
    assert_eq!(
        vars(&got.unwrap()),
        vec![("SMALL".to_string(), "s".to_string())]
    );
    assert!(
        logs.contains("starting without BIG (--secrets optional)"),
        "{logs}"
    );
    assert_no_value(&(msg + &logs), &["-unspillable-distinct"]);
}

/// Runs `prepare` on a thread; a hang (the defect: open() of a FIFO blocks PID 1) fails the test
/// after a generous guard instead of hanging the suite.
fn prepare_guarded(
    socket: &Path,
    t: &Target,
    inherited: Vec<(OsString, OsString)>,
) -> (Result<(), String>, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (socket, t) = (socket.to_owned(), t.clone());
    std::thread::spawn(move || {
        let (got, logs) =
            logged(|| inject::prepare(&opts(&socket, SecretsPolicy::Auto), &t, &inherited));
        let _ = tx.send((got.map(drop).map_err(|e| err_text(&e)), logs));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("prepare hung (guard: 30 s)")
}

#[test]
fn a_fifo_at_config_json_is_kept_aside_without_blocking() {
    let dir = open_tempdir();
    let docker = dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    nix::unistd::mkfifo(
        &docker.join("config.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let server = serve_owned(&triplet("R", "reg.example", "u", "fifo-case-pw"));
    let t = target(dir.path());
    give(&t, &[&docker, &docker.join("config.json")]);
    let (got, logs) = prepare_guarded(&server.socket, &t, Vec::new());
    got.unwrap();
    assert!(logs.contains("not a regular file"), "{logs}");
    let meta = std::fs::symlink_metadata(docker.join("config.json")).unwrap();
    assert!(meta.is_file());
    let config = read_json(&docker.join("config.json"));
    assert_eq!(
        config["auths"]["reg.example"]["auth"],
        b64("u:fifo-case-pw")
    );
}

#[test]
fn a_symlinked_docker_dir_or_parent_of_the_user_is_not_followed() {
    if !is_root() {
        support::skip("needs root to plant links owned by another user");
        return;
    }
    use std::os::unix::fs::{lchown, symlink};
    let dir = open_tempdir();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let server = serve_owned(&triplet("R", "reg.example", "u", "link-case-pw"));
    let t = target(&home);

    // ~/.docker itself a link the user planted.
    symlink(&victim, home.join(".docker")).unwrap();
    lchown(home.join(".docker"), Some(65534), Some(65534)).unwrap();
    let (_, logs) = prepare_guarded(&server.socket, &t, Vec::new());
    // A parent of $DOCKER_CONFIG a link the user planted.
    symlink(&victim, home.join(".config")).unwrap();
    lchown(home.join(".config"), Some(65534), Some(65534)).unwrap();
    let cfg = home.join(".config/docker");
    let (_, logs2) = prepare_guarded(
        &server.socket,
        &t,
        env(&[("DOCKER_CONFIG", cfg.to_str().unwrap())]),
    );
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755, "{logs}\n{logs2}");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{logs}\n{logs2}");
    let left: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
    assert!(left.is_empty(), "wrote through the link: {left:?}");
    assert_no_value(&logs, &["link-case-pw"]);
}

#[test]
fn parents_created_for_docker_config_belong_to_the_target() {
    if !is_root() {
        support::skip("needs root to create directories for another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("h/.config/docker");
    let server = serve_owned(&triplet("R", "ghcr.io", "u", "parents-case-pw"));
    let t = target(&dir.path().join("h"));
    // Created as the target: only where it may create (its own directory here).
    give(&t, &[dir.path()]);
    let (got, logs) = prepare_guarded(
        &server.socket,
        &t,
        env(&[("DOCKER_CONFIG", cfg.to_str().unwrap())]),
    );
    got.unwrap();
    for p in [dir.path().join("h"), dir.path().join("h/.config")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (65534, 65534),
            "{}: {logs}",
            p.display()
        );
        assert_eq!(m.mode() & 0o7777, 0o755, "{}", p.display());
    }
    let m = std::fs::metadata(&cfg).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (65534, 0o700));
}
