//! Fuzz targets of the broker on stable Rust: proptest harnesses over the admin request decoding
//! and validation (`http::admin::parse_admin`), the route checks of both sockets, the secret-name
//! rules against an independent oracle, and raw bytes into a real daemon's sockets. Under `cargo
//! test` each target runs one batch (`PROPTEST_CASES`, default 256); `scripts/fuzz.sh SECONDS`
//! sets `FUZZ_SECONDS` to run each for that long (the runner is `support::fuzz`) and prints
//! executions per target. A failure is shrunk and its seed kept in
//! `tests/broker_fuzz.proptest-regressions`, replayed on every run.
#![cfg(feature = "broker")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sandbox_init::broker::admin::Route;
use sandbox_init::broker::http::admin::{admin_target, parse_admin, AdminCommand};
use sandbox_init::broker::http::sandbox::sandbox_target;
use sandbox_init::broker::http::{ApiError, MAX_REPOS_PER_SECRET};
use sandbox_init::protocol::{normalize_name, normalize_repo, normalize_user, DANGEROUS};
use secrecy::ExposeSecret;

/// Runs one target through the harness's fuzz runner, then says how many admin inputs were
/// accepted as commands (so the targets are seen to reach past the decoder).
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    support::fuzz::run(name, file!(), strategy, test);
    let accepted = ACCEPTED.load(Ordering::Relaxed);
    if accepted > 0 {
        println!("fuzz: {name}: {accepted} admin inputs accepted as commands");
    }
}

/// Admin inputs `parse_admin` accepted (so the targets are seen to reach past the decoder).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Checks what `parse_admin` returned: an accepted command holds only normalized, valid parts;
/// a refusal is a client error whose message never quotes the value.
fn check_parsed(
    route: Route,
    result: Result<AdminCommand, ApiError>,
    value_marker: &str,
) -> Result<(), TestCaseError> {
    let valid_name = |n: &str| normalize_name(n, true).as_deref() == Ok(n);
    let valid_repo = |r: &str| normalize_repo(r).as_deref() == Ok(r);
    let valid_user = |u: &str| normalize_user(u).as_deref() == Ok(u);
    match result {
        Ok(cmd) => {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            let debug = format!("{cmd:?}");
            prop_assert!(
                !debug.contains(value_marker),
                "Debug shows the value: {debug}"
            );
            match cmd {
                AdminCommand::Set {
                    scope,
                    name,
                    value,
                    repos,
                    kind,
                } => {
                    prop_assert!(valid_name(&name), "{name:?}");
                    prop_assert!(
                        valid_user(&scope) || valid_repo(&scope),
                        "{kind:?} {scope:?}"
                    );
                    let v = value.expose_secret();
                    prop_assert!(!v.is_empty() && v.len() <= 48 * 1024 && !v.contains('\0'));
                    if let Some(r) = repos {
                        prop_assert!(r.len() <= MAX_REPOS_PER_SECRET);
                        prop_assert!(r.iter().all(|r| valid_repo(r)));
                        let mut sorted = r.clone();
                        sorted.sort();
                        sorted.dedup();
                        prop_assert_eq!(sorted.len(), r.len(), "duplicates kept");
                    }
                }
                AdminCommand::Import {
                    scope,
                    entries,
                    repos,
                    kind,
                } => {
                    prop_assert_eq!(route, Route::SecretsImport);
                    prop_assert!(!entries.is_empty());
                    prop_assert!(
                        valid_user(&scope) || valid_repo(&scope),
                        "{kind:?} {scope:?}"
                    );
                    let mut names = std::collections::HashSet::new();
                    for (name, value) in &entries {
                        prop_assert!(valid_name(name), "{name:?}");
                        prop_assert!(names.insert(name.clone()), "{name:?} twice");
                        let v = value.expose_secret();
                        prop_assert!(!v.is_empty() && v.len() <= 48 * 1024 && !v.contains('\0'));
                    }
                    if let Some(r) = repos {
                        prop_assert!(r.len() <= MAX_REPOS_PER_SECRET);
                        prop_assert!(r.iter().all(|r| valid_repo(r)));
                    }
                }
                AdminCommand::Access { user, name, repos } => {
                    prop_assert!(valid_user(&user) && valid_name(&name));
                    prop_assert!(repos.len() <= MAX_REPOS_PER_SECRET);
                    prop_assert!(repos.iter().all(|r| valid_repo(r)));
                }
                AdminCommand::Delete { scope, name, .. } => {
                    prop_assert!(valid_name(&name));
                    prop_assert!(valid_user(&scope) || valid_repo(&scope));
                }
                AdminCommand::List { scope, .. } => {
                    prop_assert!(valid_user(&scope) || valid_repo(&scope))
                }
                AdminCommand::Plan { user, repo } | AdminCommand::CreateSandbox { user, repo } => {
                    prop_assert!(valid_user(&user) && valid_repo(&repo))
                }
                AdminCommand::ListSandboxes => prop_assert_eq!(route, Route::SandboxesList),
                AdminCommand::KeyStatus => prop_assert_eq!(route, Route::KeyStatus),
                AdminCommand::KeyRotate => prop_assert_eq!(route, Route::KeyRotate),
                AdminCommand::Status => prop_assert_eq!(route, Route::Status),
                AdminCommand::Backup { path } => {
                    prop_assert_eq!(route, Route::StoreBackup);
                    prop_assert!(path.is_absolute(), "{path:?}");
                }
                AdminCommand::DeleteSandbox { id } => {
                    prop_assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                }
                AdminCommand::TokenCreate { .. } => prop_assert_eq!(route, Route::TokensCreate),
                AdminCommand::TokenList => prop_assert_eq!(route, Route::TokensList),
                AdminCommand::TokenRevoke { id } => {
                    prop_assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                }
            }
        }
        Err(e) => {
            let status = e.status().as_u16();
            prop_assert!((400..500).contains(&status), "{route}: {e} -> {status}");
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            prop_assert!(!msg.contains(value_marker), "error quotes the value: {msg}");
            // The answer body is always `{"error": ...}`.
            let body = serde_json::to_string(&sandbox_init::protocol::ErrorBody { error: msg });
            prop_assert!(body.is_ok());
        }
    }
    Ok(())
}

fn route() -> impl Strategy<Value = Route> {
    prop::sample::select(Route::ALL.to_vec())
}

#[test]
fn fuzz_admin_parse_bytes() {
    // Arbitrary bytes, and valid JSON prefixes with arbitrary bytes spliced in.
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (
            prop::sample::select(vec![
                &br#"{"name":"A","repo":"o/r","value":""#[..],
                br#"{"name":"A","user":"mona","repos":["#,
                br#"{"user":"mona","repo":"#,
                br#"{"id":""#,
                br#"[[[[[[[[[[[[[[[[["#,
            ]),
            prop::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(head, tail)| [head, &tail[..]].concat()),
    ];
    fuzz("admin_parse_bytes", (route(), bytes), |(route, body)| {
        check_parsed(route, parse_admin(route, &body), "\u{1}never\u{1}")
    });
}

/// A JSON value with the admin API's field names, strings from hostile alphabets, and nesting.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let text = prop_oneof![
        "[A-Za-z_][A-Za-z0-9_]{0,12}",
        "[a-z0-9-]{1,12}/[a-z0-9._-]{1,12}",
        "[a-f0-9]{32}",
        any::<String>(),
        "\\PC{0,64}",
        Just(String::new()),
        Just("..".to_string()),
        Just("../../etc".to_string()),
        Just("LD_PRELOAD".to_string()),
        Just("github_token".to_string()),
        Just("a\u{0}b".to_string()),
        (1usize..400).prop_map(|n| "N".repeat(n)),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "name",
                "user",
                "repo",
                "repos",
                "value",
                "allow_dangerous",
                "id"
            ])
            .prop_map(str::to_owned),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An admin request close to valid: each field present or absent, of the right or wrong type.
fn admin_object() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let field = |s: BoxedStrategy<Value>| prop::option::weighted(0.8, s);
    let string = |re: &'static str| re.prop_map(Value::String).boxed();
    (
        field(prop_oneof![string("[A-Za-z_][A-Za-z0-9_]{0,20}"), json_value()].boxed()),
        field(prop_oneof![string("[A-Za-z0-9-]{1,40}"), json_value()].boxed()),
        field(
            prop_oneof![
                string("[A-Za-z0-9._-]{1,10}/[A-Za-z0-9._-]{1,10}"),
                json_value()
            ]
            .boxed(),
        ),
        field(
            prop_oneof![
                prop::collection::vec("[a-z0-9._-]{1,6}/[a-z0-9._-]{1,6}", 0..20)
                    .prop_map(Value::from),
                json_value()
            ]
            .boxed(),
        ),
        field(
            prop_oneof![
                "\\PC{1,200}".prop_map(|v| Value::String(format!("VALUEMARK{v}"))),
                json_value()
            ]
            .boxed(),
        ),
        field(prop_oneof![any::<bool>().prop_map(Value::Bool), json_value()].boxed()),
        field(prop_oneof![string("[a-f0-9]{30,34}"), json_value()].boxed()),
    )
        .prop_map(|(name, user, repo, repos, value, allow, id)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("name", name),
                ("user", user),
                ("repo", repo),
                ("repos", repos),
                ("value", value),
                ("allow_dangerous", allow),
                ("id", id),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

#[test]
fn fuzz_admin_parse_json() {
    let body = prop_oneof![json_value(), admin_object(), admin_object()];
    fuzz("admin_parse_json", (route(), body), |(route, body)| {
        let raw = serde_json::to_vec(&body).unwrap();
        check_parsed(route, parse_admin(route, &raw), "VALUEMARK")
    });
}

#[test]
fn fuzz_route_checks() {
    let method = prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get"
        ])
        .prop_map(str::to_owned),
        "[A-Z]{1,10}",
    ];
    let path = prop_oneof![
        Just("/v1/secrets".to_string()),
        "/v1/secrets[?#/.%a-z0-9=&]{0,30}",
        "/v1/admin/[a-z/]{0,24}",
        "/\\PC{0,80}",
        any::<String>(),
    ];
    fuzz(
        "route_checks",
        (method, path, any::<bool>()),
        |(method, path, has_body)| {
            let Ok(m) = hyper::Method::from_bytes(method.as_bytes()) else {
                return Ok(());
            };
            let sandbox = sandbox_target(&m, &path, has_body);
            let want = path.split('?').next() == Some("/v1/secrets")
                && m == hyper::Method::GET
                && !has_body;
            prop_assert_eq!(sandbox.is_ok(), want, "{} {:?}", m, path);
            if let Err(e) = sandbox {
                prop_assert!((400..500).contains(&e.status().as_u16()));
                prop_assert!(e.to_string().len() < 1024);
            }
            match admin_target(&m, &path) {
                Ok(route) => {
                    prop_assert!(m == hyper::Method::POST);
                    prop_assert_eq!(route.path(), path);
                }
                Err(e) => prop_assert!((400..500).contains(&e.status().as_u16())),
            }
            Ok(())
        },
    );
}

/// The name rules of SPEC, written out independently of `normalize_name`.
fn name_oracle(raw: &str, allow_dangerous: bool) -> Option<String> {
    let upper = raw.to_ascii_uppercase();
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !raw.starts_with(|c: char| c.is_ascii_digit())
        && !upper.starts_with("GITHUB_")
        && !upper.starts_with("SANDBOX_")
        && (allow_dangerous || !support::dangerous_oracle(&upper));
    ok.then_some(upper)
}

#[test]
fn fuzz_name_rules() {
    let name = prop_oneof![
        "[A-Za-z0-9_]{0,20}",
        "(github_|GITHUB_|sandbox_|Sandbox_|ld_|LD_|git_|Python|perl|_java_)[A-Za-z0-9_]{0,8}",
        "[A-Za-z0-9_]{0,8}_(proxy|Proxy|PROXY)",
        prop::sample::select(
            DANGEROUS
                .iter()
                .map(|d| d.pattern.example())
                .collect::<Vec<_>>()
        )
        .prop_map(|n| n.to_ascii_lowercase()),
        any::<String>(),
        (250usize..260).prop_map(|n| "A".repeat(n)),
    ];
    fuzz("name_rules", (name, any::<bool>()), |(raw, allow)| {
        let got = normalize_name(&raw, allow).ok();
        prop_assert_eq!(&got, &name_oracle(&raw, allow), "{:?}", raw);
        if let Some(n) = got {
            // Idempotent: the stored form is accepted as is.
            prop_assert_eq!(normalize_name(&n, allow).ok(), Some(n));
        }
        Ok(())
    });
}

/// Writes `raw`, closes the write side, reads what comes back (hang guard 10 s).
fn send_and_close(socket: &std::path::Path, raw: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("daemon neither answered nor closed within 10 s")
        }
        _ => {}
    }
    Ok(support::daemon::parse_answer(&out))
}

#[test]
fn fuzz_daemon_wire() {
    use support::daemon::*;
    let d = Daemon::new();
    d.cli(
        &["set", "WIRE", "--repo", "fuzz/w"],
        Some(b"wire-fuzz-VALUE"),
    )
    .ok();
    let (_, dir) = d.sandbox("mona", "fuzz/w");
    let sandbox = dir.join("secrets.sock");
    let admin = d.admin();
    let expected = served(&dir);
    // Valid requests with bytes inserted, replaced or cut; and raw junk.
    let base = prop::sample::select(vec![
        &b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /v1/admin/secrets/list HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"repo\":\"o/r\"}\r\n",
        b"POST /v1/admin/plan HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n",
    ]);
    let edit = (
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..16),
        0u8..3,
    );
    let input = prop_oneof![
        (base, prop::collection::vec(edit, 1..6)).prop_map(|(b, edits)| {
            let mut v = b.to_vec();
            for (at, bytes, kind) in edits {
                let i = at.index(v.len() + 1);
                match kind {
                    0 => {
                        v.splice(i..i, bytes);
                    }
                    1 => {
                        let end = (i + bytes.len()).min(v.len());
                        v.splice(i..end, bytes);
                    }
                    _ => v.truncate(i),
                }
            }
            v
        }),
        prop::collection::vec(any::<u8>(), 0..512),
    ];
    fuzz("daemon_wire", (any::<bool>(), input), |(to_admin, raw)| {
        let socket = if to_admin { &admin } else { &sandbox };
        // The write side is closed after the input, so the daemon sees the end of an
        // unfinished request at once instead of waiting out its deadlines.
        let answer = send_and_close(socket, &raw);
        if let Ok((status, body)) = answer {
            prop_assert!(
                status == 0 || (200..600).contains(&status),
                "status {status}"
            );
            if !to_admin && status == 200 {
                prop_assert!(body.contains("wire-fuzz-VALUE"));
            }
        }
        Ok(())
    });
    // The daemon survived every input and serves as before.
    assert_eq!(served(&dir), expected);
    d.cli(&["list", "--repo", "fuzz/w"], None).ok();
}
