//! Init-side fuzzing on stable Rust: proptest harnesses, one `fuzz_*` test per target. Each runs
//! `PROPTEST_CASES` cases (default 256), or, with `FUZZ_SECONDS=N`, batches of them until N
//! seconds have passed (`scripts/fuzz.sh`; the runner is `support::fuzz`); it prints `fuzz:
//! <target>: <n> executions`. A failure's seed is kept in `tests/fuzz_init.proptest-regressions`.
//! Targets: the broker answer decoding (raw bytes, and JSON shapes against a reference model),
//! `config.json` merging (in memory and through real files), the shell quoting of
//! `sandbox-init env` (read back by real bash and dash, many values per shell), registry
//! normalisation and secret-name validation. Crashers found are kept as regression tests at the
//! end of this file; bad wire answers go to `tests/corpus/bad-answers/`.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sandbox_init::inject::dockercfg::{self, Entry};
use sandbox_init::inject::fetch::{self, FetchError};
use sandbox_init::inject::quote;
use sandbox_init::protocol::{self, NameError};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

/// Runs one target through the harness's fuzz runner (`support::fuzz`).
fn fuzz<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    support::fuzz::run(target, file!(), strategy, test)
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Any JSON value, small and deep enough to matter; keys biased to the ones the code looks at.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("auths".to_owned()),
        1 => Just("credsStore".to_owned()),
        1 => Just("credHelpers".to_owned()),
        1 => Just("auth".to_owned()),
        2 => arb_server(),
        2 => ".{0,10}",
    ]
}

/// Registry server spellings, normal and odd.
fn arb_server() -> impl Strategy<Value = String> {
    let host: BoxedStrategy<String> = prop_oneof![
        Just("docker.io".to_owned()),
        Just("Index.Docker.IO".to_owned()),
        Just("registry-1.docker.io".to_owned()),
        Just("ghcr.io".to_owned()),
        Just("127.0.0.1:5000".to_owned()),
        "[a-zA-Z0-9.-]{1,12}(:[0-9]{1,5})?".prop_map(String::from),
        ".{0,12}".prop_map(String::from),
    ]
    .boxed();
    let path: BoxedStrategy<String> = prop_oneof![
        Just(String::new()),
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("/v1".to_owned()),
        Just("/V1/".to_owned()),
        "/[a-zA-Z/]{0,8}".prop_map(String::from),
    ]
    .boxed();
    let scheme = prop::sample::select(vec!["", "https://", "HTTP://", "http://"]);
    let pad = prop::sample::select(vec!["", " ", "\n", "\t "]);
    (scheme, host, path, pad)
        .prop_map(|(scheme, host, path, pad)| format!("{pad}{scheme}{host}{path}{pad}"))
}

/// Secret names: mostly valid, often dangerous, reserved, mixed case, empty, long or odd.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[A-Za-z_][A-Za-z0-9_]{0,12}",
        1 => prop::sample::select(
            protocol::DANGEROUS.iter().map(|d| d.pattern.example()).collect::<Vec<_>>()
        )
        .prop_map(|n| n.to_ascii_lowercase()),
        1 => "(git_|Python|NODE_|bash|ssl_|[A-Z]{0,4}_proxy)[A-Z0-9_]{0,6}",
        1 => "(GITHUB_|SANDBOX_|github_|Sandbox_)[A-Z0-9_]{0,6}",
        1 => "[0-9][A-Z0-9_]{0,6}",
        1 => "[A-Z_]{250,260}",
        2 => ".{0,10}",
    ]
}

/// Values: any text, sometimes with a NUL.
fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => ".{0,40}",
        1 => ".{0,10}\u{0}.{0,10}",
        1 => "[\n'\"\\\\$`]{0,20}",
    ]
}

/// A secrets answer, well-formed or damaged in one of the ways a broken broker could.
fn arb_answer() -> impl Strategy<Value = Value> {
    // Mostly sound entries, so that whole answers are often accepted too.
    let sound = prop_oneof![
        40 => "[A-Za-z_][A-Za-z0-9_]{0,12}".prop_map(String::from),
        1 => arb_name(),
    ];
    let entry = prop_oneof![
        40 => (sound, ".{0,40}").prop_map(|(n, v)| json!({"name": n, "value": v})),
        4 => (arb_name(), arb_value()).prop_map(|(n, v)| json!({"name": n, "value": v})),
        1 => (arb_name(), arb_value(), arb_json())
            .prop_map(|(n, v, x)| json!({"name": n, "value": v, "extra": x})),
        1 => (arb_name(), arb_json()).prop_map(|(n, v)| json!({"name": n, "value": v})),
        1 => arb_value().prop_map(|v| json!({"value": v})),
        1 => arb_json(),
    ];
    let secrets = prop_oneof![
        10 => prop::collection::vec(entry, 0..12).prop_map(Value::Array),
        1 => arb_json(),
    ];
    (
        secrets,
        prop::option::weighted(0.9, ".{0,8}".prop_map(Value::String)),
        prop::option::weighted(0.9, "[a-z]{1,5}/[a-z]{1,5}".prop_map(Value::String)),
        prop::option::weighted(0.05, arb_json()),
        prop::option::weighted(0.05, arb_json()),
    )
        .prop_map(|(secrets, sandbox, repo, extra, instead)| {
            if let Some(v) = instead {
                return v;
            }
            let mut m = Map::new();
            m.insert("secrets".into(), secrets);
            if let Some(s) = sandbox {
                m.insert("sandbox".into(), s);
            }
            if let Some(r) = repo {
                m.insert("repository".into(), r);
            }
            if let Some(x) = extra {
                m.insert("unexpected".into(), x);
            }
            Value::Object(m)
        })
}

// ---------------------------------------------------------------------------------------------
// Reference models, written independently of the code under test.

/// SPEC's name rules, straight from the text.
fn model_name(raw: &str) -> Option<String> {
    let up = raw.to_ascii_uppercase();
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !up.starts_with(|c: char| c.is_ascii_digit())
        && !up.starts_with("GITHUB_")
        && !up.starts_with("SANDBOX_")
        && !support::dangerous_oracle(&up);
    ok.then_some(up)
}

/// What the init must accept from an answer: `Some(sorted pairs)` or `None` (refused).
fn model_answer(doc: &Value) -> Option<Vec<(String, String)>> {
    let top = doc.as_object()?;
    if top.len() != 3 || !top.get("sandbox")?.is_string() || !top.get("repository")?.is_string() {
        return None;
    }
    let list = top.get("secrets")?.as_array()?;
    if list.len() > 200 {
        return None;
    }
    let mut out = BTreeMap::new();
    for e in list {
        let e = e.as_object()?;
        if e.len() != 2 {
            return None;
        }
        let name = model_name(e.get("name")?.as_str()?)?;
        let value = e.get("value")?.as_str()?;
        if value.contains('\0') || out.insert(name, value.to_owned()).is_some() {
            return None;
        }
    }
    Some(out.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// Targets: the answer decoding.

fn pairs(got: &[fetch::Secret]) -> Vec<(String, String)> {
    got.iter()
        .map(|s| (s.name.clone(), s.value.expose_secret().to_owned()))
        .collect()
}

/// Arbitrary bytes (and bytes around a valid answer): never a panic; whatever is accepted has
/// only valid, unique names and NUL-free values; a refusal is `Garbage` and quotes no input
/// longer than a name.
#[test]
fn fuzz_answer_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            arb_answer(),
            prop::collection::vec(any::<u8>(), 0..4),
            0usize..400
        )
            .prop_map(|(doc, junk, at)| {
                let mut b = serde_json::to_vec(&doc).unwrap();
                let at = at.min(b.len());
                b.splice(at..at, junk);
                b
            }),
    ];
    fuzz("fuzz_answer_bytes", bytes, |body| {
        match fetch::parse_answer(hyper::StatusCode::OK, &body) {
            Ok(got) => {
                let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
                for (i, s) in got.iter().enumerate() {
                    prop_assert_eq!(model_name(&s.name), Some(s.name.clone()));
                    prop_assert!(!s.value.expose_secret().contains('\0'));
                    prop_assert!(i == 0 || names[i - 1] < names[i], "sorted and unique");
                }
            }
            Err(FetchError::Garbage(msg)) => {
                prop_assert!(msg.len() < 600, "{}", msg);
            }
            Err(other) => prop_assert!(false, "not Garbage: {other}"),
        }
        // A non-200 status is always refused as such.
        let refused = fetch::parse_answer(hyper::StatusCode::BAD_GATEWAY, &body);
        let is_status = matches!(refused, Err(FetchError::Status { .. }));
        prop_assert!(is_status, "a 502 was not refused as a status");
        Ok(())
    });
}

/// JSON shapes: accepted exactly when the reference model accepts, with the same pairs; a
/// refusal never quotes a value.
#[test]
fn fuzz_answer_json() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let accepted = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    fuzz("fuzz_answer_json", arb_answer(), |doc| {
        let body = serde_json::to_vec(&doc).unwrap();
        let got = fetch::parse_answer(hyper::StatusCode::OK, &body);
        let want = model_answer(&doc);
        match &got {
            Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
        };
        match (&got, &want) {
            (Ok(got), Some(want)) => prop_assert_eq!(&pairs(got), want),
            (Err(FetchError::Garbage(msg)), None) => {
                // Values are at most 40 characters here; names may be quoted (they are not
                // values), strings in other places must not.
                if let Some(list) = doc.get("secrets").and_then(Value::as_array) {
                    for e in list {
                        if let Some(v) = e.get("value").and_then(Value::as_str) {
                            if v.len() >= 6 && e.get("name").and_then(Value::as_str) != Some(v) {
                                prop_assert!(!msg.contains(v), "value {:?} in {:?}", v, msg);
                            }
                        }
                    }
                }
            }
            _ => prop_assert!(
                false,
                "code says {:?}, model says {:?}",
                got.as_ref().map(|g| pairs(g)).map_err(|e| e.to_string()),
                want
            ),
        }
        Ok(())
    });
    // Both sides of the decision must be exercised, or the property says little.
    let (a, r) = (accepted.into_inner(), refused.into_inner());
    eprintln!("fuzz: fuzz_answer_json: {a} answers accepted, {r} refused (shrinking included)");
    assert!(a > 0 && r > 0, "accepted {a}, refused {r}");
}

// ---------------------------------------------------------------------------------------------
// Targets: config.json.

fn entry(id: &str, server: &str, auth: &str) -> Entry {
    Entry {
        id: id.to_owned(),
        server: server.to_owned(),
        auth: Zeroizing::new(auth.to_owned()),
    }
}

/// Triplets as `entries` would build them: normalised servers, one entry per server.
fn arb_entries() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((arb_server(), "[A-Za-z0-9+/=]{4,16}"), 0..4).prop_map(|raw| {
        let mut by_server = BTreeMap::new();
        for (server, auth) in raw {
            if let Some(s) = dockercfg::normalize_registry(&server) {
                by_server.insert(s, auth);
            }
        }
        by_server.into_iter().collect()
    })
}

/// Checks a merge result against the document it started from.
fn check_merged(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    entries: &[(String, String)],
) -> Result<(), TestCaseError> {
    for (k, v) in before {
        if k != "auths" {
            prop_assert_eq!(after.get(k), Some(v), "top-level {} changed", k);
        }
    }
    prop_assert_eq!(
        after.len(),
        before.len() + usize::from(!before.contains_key("auths"))
    );
    let auths = after["auths"].as_object().expect("auths is an object");
    for (server, auth) in entries {
        prop_assert_eq!(&auths[server], &json!({ "auth": auth }));
    }
    if let Some(Value::Object(old)) = before.get("auths") {
        for (k, v) in old {
            let replaced = entries.iter().any(|(s, _)| {
                k == s || dockercfg::normalize_registry(k).as_deref() == Some(s.as_str())
            });
            if !replaced {
                prop_assert_eq!(auths.get(k), Some(v), "auths entry {} lost", k);
            }
        }
        for k in auths.keys() {
            prop_assert!(
                old.contains_key(k) || entries.iter().any(|(s, _)| s == k),
                "auths entry {} appeared from nowhere",
                k
            );
        }
    }
    Ok(())
}

/// `merge` on arbitrary documents: never a panic, other keys and entries kept, every entry
/// written, the result serialisable.
#[test]
fn fuzz_config_merge() {
    let doc = prop::collection::btree_map(arb_key(), arb_json(), 0..6)
        .prop_map(|m| m.into_iter().collect::<Map<String, Value>>());
    fuzz(
        "fuzz_config_merge",
        (doc, arb_entries()),
        |(before, entries)| {
            let mut after = before.clone();
            let list: Vec<Entry> = entries.iter().map(|(s, a)| entry("ID", s, a)).collect();
            let _warnings = dockercfg::merge(&mut after, &list, Path::new("/x/config.json"));
            if before.get("auths").map_or(true, Value::is_object) {
                check_merged(&before, &after, &entries)?;
            } else {
                // A non-object `auths` is replaced (write_config keeps such a file aside first).
                prop_assert!(after["auths"].is_object());
            }
            prop_assert!(serde_json::to_vec(&after).is_ok());
            Ok(())
        },
    );
}

/// `write_config` through real files with arbitrary existing content (valid JSON, damaged JSON,
/// arbitrary bytes): never a panic, the result is a JSON object holding every entry and every
/// other key, a corrupt file is kept aside byte for byte, and the file is 0600.
#[test]
fn fuzz_config_file() {
    let existing = prop_oneof![
        4 => prop::collection::btree_map(arb_key(), arb_json(), 0..6)
            .prop_map(|m| serde_json::to_vec_pretty(&m).unwrap()),
        2 => arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(Vec::new()),
    ];
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    fuzz(
        "fuzz_config_file",
        (prop::option::of(existing), arb_entries()),
        |(existing, entries)| {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("docker");
            std::fs::create_dir(&cfg).unwrap();
            let path = cfg.join("config.json");
            if let Some(bytes) = &existing {
                std::fs::write(&path, bytes).unwrap();
            }
            let list: Vec<Entry> = entries.iter().map(|(s, a)| entry("ID", s, a)).collect();
            let written = dockercfg::write_config(&cfg, &list, uid, gid)
                .map_err(|e| TestCaseError::fail(format!("write_config: {e}")))?;
            prop_assert_eq!(&written.path, &path);
            let out = std::fs::read(&path).unwrap();
            let after: Map<String, Value> = serde_json::from_slice(&out)
                .map_err(|e| TestCaseError::fail(format!("not a JSON object out: {e}")))?;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            prop_assert_eq!(mode, 0o600);
            let before: Option<Map<String, Value>> = existing
                .as_deref()
                .filter(|b| !b.iter().all(u8::is_ascii_whitespace))
                .map(|b| serde_json::from_slice::<Map<String, Value>>(b).ok())
                .unwrap_or(Some(Map::new()))
                .filter(|m| m.get("auths").map_or(true, Value::is_object));
            let aside: Vec<_> = std::fs::read_dir(&cfg)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains(".corrupt-"))
                .collect();
            match before {
                Some(before) => {
                    prop_assert!(aside.is_empty(), "a valid file was kept aside");
                    check_merged(&before, &after, &entries)?;
                }
                None => {
                    prop_assert_eq!(aside.len(), 1, "corrupt file not kept aside");
                    prop_assert_eq!(
                        &std::fs::read(&aside[0]).unwrap(),
                        existing.as_ref().unwrap()
                    );
                    check_merged(&Map::new(), &after, &entries)?;
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Target: shell quoting, read back by real shells.

/// Values per shell invocation.
const BATCH: usize = 64;

/// Evaluates `export` lines for `values` in `shell` and returns what it prints back, each value
/// followed by a NUL (which no value holds).
fn read_back(shell: &str, values: &[String]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Zeroizing::new(String::new());
    for (i, v) in values.iter().enumerate() {
        quote::push_export(&mut text, &format!("V{i}"), v);
    }
    let mut script = String::from(". \"$1\"\n");
    for i in 0..values.len() {
        script.push_str(&format!("printf '%s\\000' \"$V{i}\"\n"));
    }
    let lines = dir.path().join("lines");
    std::fs::write(&lines, text.as_bytes()).unwrap();
    let out = Command::new(shell)
        .arg("-c")
        .arg(&script)
        .arg(shell)
        .arg(&lines)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `push_export` lines read back byte-exact by bash and dash (`sh`), `BATCH` values per shell.
#[test]
fn fuzz_env_quoting() {
    let value = prop_oneof![
        4 => "[^\u{0}]{0,30}",
        2 => "['\"\\\\$`!\n\r\t {}()*?\\[\\];&|<>#~=%^-]{0,20}",
        1 => "[\u{1}-\u{1f}\u{7f}]{0,10}",
        1 => "[^\u{0}]{200,2000}",
    ];
    let shells: Vec<&str> = ["bash", "dash"]
        .into_iter()
        .filter(|s| Command::new(s).arg("-c").arg("true").output().is_ok())
        .collect();
    assert!(shells.contains(&"bash"), "bash is needed");
    let executions = fuzz(
        "fuzz_env_quoting",
        prop::collection::vec(value, BATCH),
        |values| {
            let want: Vec<u8> = values.iter().flat_map(|v| v.bytes().chain([0])).collect();
            for shell in &shells {
                let got = read_back(shell, &values);
                if got != want {
                    // Name the first value read back wrong.
                    let got_parts: Vec<&[u8]> = got.split(|&b| b == 0).collect();
                    let bad = values
                        .iter()
                        .enumerate()
                        .find(|(i, v)| got_parts.get(*i) != Some(&v.as_bytes()))
                        .map(|(i, v)| (i, v.clone()));
                    prop_assert!(false, "{} read back wrong: {:?}", shell, bad);
                }
            }
            Ok(())
        },
    );
    eprintln!(
        "fuzz: fuzz_env_quoting: {} values read back by {}",
        executions * BATCH as u64,
        shells.join(" and ")
    );
}

// ---------------------------------------------------------------------------------------------
// Targets: registry normalisation and names.

/// `normalize_registry`: idempotent; scheme, case of scheme and host, padding and trailing
/// slashes do not matter; the result holds no whitespace, no scheme (but Docker Hub's key), no
/// trailing slash, a lower-case host; Docker Hub's names all map to its key; `basic_auth` is
/// standard base64.
#[test]
fn fuzz_registry() {
    fuzz(
        "fuzz_registry",
        (arb_server(), ".{0,12}", ".{0,12}"),
        |(server, user, password)| {
            let n = dockercfg::normalize_registry(&server);
            if let Some(n) = &n {
                prop_assert_eq!(dockercfg::normalize_registry(n), Some(n.clone()));
                prop_assert!(
                    !n.is_empty() && !n.chars().any(|c| c.is_whitespace() || c.is_control())
                );
                if n != dockercfg::DOCKER_HUB {
                    let lower = n.to_ascii_lowercase();
                    let scheme = lower.starts_with("http://") || lower.starts_with("https://");
                    prop_assert!(!n.ends_with('/') && !scheme, "{}", n);
                    let host = n.split('/').next().unwrap();
                    prop_assert_eq!(host, host.to_ascii_lowercase());
                }
                let bare = server.trim();
                let lower = bare.to_ascii_lowercase();
                let rest = lower
                    .strip_prefix("https://")
                    .or_else(|| lower.strip_prefix("http://"))
                    .map(|r| &bare[bare.len() - r.len()..])
                    .unwrap_or(bare);
                for variant in [
                    format!("https://{rest}"),
                    format!("HTTP://{rest}/"),
                    format!("  {}//", rest.to_owned()),
                ] {
                    prop_assert_eq!(dockercfg::normalize_registry(&variant), Some(n.clone()));
                }
                let host = rest.split('/').next().unwrap().to_ascii_lowercase();
                let path = rest[rest.find('/').unwrap_or(rest.len())..].trim_end_matches('/');
                let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"]
                    .contains(&host.as_str())
                    && (path.is_empty() || path.eq_ignore_ascii_case("/v1"));
                prop_assert_eq!(hub, n == dockercfg::DOCKER_HUB);
            } else {
                let inner = server.trim();
                prop_assert!(
                    inner.trim_start_matches("https://").is_empty()
                        || inner.chars().any(|c| c.is_whitespace() || c.is_control())
                        || inner
                            .to_ascii_lowercase()
                            .trim_start_matches("https://")
                            .trim_start_matches("http://")
                            .trim_end_matches('/')
                            .is_empty()
                        || inner
                            .to_ascii_lowercase()
                            .trim_start_matches("https://")
                            .trim_start_matches("http://")
                            .starts_with('/'),
                    "refused {:?}",
                    server
                );
            }
            use base64::Engine as _;
            prop_assert_eq!(
                dockercfg::basic_auth(&user, &password).to_string(),
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            Ok(())
        },
    );
}

/// `normalize_name` equals the reference model, is idempotent and case-insensitive, allows a
/// dangerous name only when asked, and names the rule in its error.
#[test]
fn fuzz_names() {
    fuzz("fuzz_names", arb_name(), |raw| {
        let got = protocol::normalize_name(&raw, false);
        prop_assert_eq!(got.clone().ok(), model_name(&raw));
        match &got {
            Ok(n) => {
                prop_assert_eq!(protocol::normalize_name(n, false), Ok(n.clone()));
                prop_assert_eq!(
                    protocol::normalize_name(&raw.to_ascii_lowercase(), false),
                    Ok(n.clone())
                );
            }
            Err(NameError::Dangerous(n)) => {
                prop_assert_eq!(protocol::normalize_name(&raw, true), Ok(n.clone()));
            }
            Err(e) => {
                prop_assert!(protocol::normalize_name(&raw, true).is_err());
                let msg = e.to_string();
                prop_assert!(msg.starts_with("secret name"), "{}", msg);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs the fuzzers found, kept.

/// `://¡` (no scheme, an odd host) normalises to itself: not a scheme left behind.
#[test]
fn regression_an_odd_server_is_kept_as_written() {
    assert_eq!(
        dockercfg::normalize_registry("://¡").as_deref(),
        Some("://¡")
    );
    assert_eq!(
        dockercfg::normalize_registry("HTTPS://Host:1//").as_deref(),
        Some("host:1")
    );
}

#[test]
fn regression_merge_keeps_a_non_auths_document() {
    let mut doc: Map<String, Value> =
        serde_json::from_str(r#"{"credHelpers":{"ghcr.io":"gh"},"x":[1,{"auths":2}]}"#).unwrap();
    let before = doc.clone();
    let list = vec![entry("A", "ghcr.io", "YTpi")];
    let warnings = dockercfg::merge(&mut doc, &list, Path::new("/c.json"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    check_merged(&before, &doc, &[("ghcr.io".into(), "YTpi".into())]).unwrap();
}

/// serde_json parsing numbers as f64 changed `-7.618747860147674e-259` by one ulp, so rewriting
/// `config.json` changed another tool's number; integers past 64 bits became floats. The crate
/// now keeps every number's digits as written (`arbitrary_precision`).
#[test]
fn regression_config_json_numbers_survive_a_merge_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let numbers = "[-7.618747860147674e-259,0.1,1e300,123456789012345678901234567890,-0]";
    let text = format!(r#"{{"x":{numbers},"auths":{{}}}}"#);
    std::fs::write(dir.path().join("config.json"), &text).unwrap();
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    dockercfg::write_config(dir.path(), &[entry("A", "ghcr.io", "YTpi")], uid, gid).unwrap();
    let out: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    // The digits are kept as written; only an exponent gains its explicit sign (`1e+300`).
    assert_eq!(
        serde_json::to_string(&out["x"]).unwrap(),
        numbers.replace("1e300", "1e+300")
    );
}
