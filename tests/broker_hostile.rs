//! Oversized and hostile input on both sockets of a real daemon: huge bodies, huge JSON arrays,
//! deep nesting, invalid UTF-8, NUL bytes, long names, huge or many headers. Each is refused with
//! a status (and `{"error"}` wherever the daemon's routes answer), the daemon's peak memory stays
//! bounded, and it keeps serving.
#![cfg(feature = "broker")]

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::*;

/// Growth of the daemon's peak RSS allowed over all hostile inputs.
const HWM_BOUND_KIB: u64 = 64 * 1024;

/// One hostile input and what answers are acceptable.
struct Case {
    what: String,
    raw: Vec<u8>,
    /// Acceptable statuses.
    statuses: &'static [u16],
    /// The answer must be `{"error": ...}` holding this text (None: HTTP-level refusal by the
    /// parser, which answers a bare status).
    error: Option<&'static str>,
}

fn case(
    what: impl Into<String>,
    raw: Vec<u8>,
    statuses: &'static [u16],
    error: Option<&'static str>,
) -> Case {
    Case {
        what: what.into(),
        raw,
        statuses,
        error,
    }
}

fn post(route: &str, body: &[u8]) -> Vec<u8> {
    request("POST", &format!("/v1/admin/{route}"), body)
}

fn chunked(head: &str, body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("{head}\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for c in body.chunks(64 * 1024) {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn with_headers(head: &str, headers: &str) -> Vec<u8> {
    format!("{head}\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: 0\r\n\r\n")
        .into_bytes()
}

/// A request line of raw bytes (maybe not UTF-8) with minimal headers.
fn raw_head(line: &[u8]) -> Vec<u8> {
    let mut r = line.to_vec();
    r.extend_from_slice(b"\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    r
}

fn admin_cases() -> Vec<Case> {
    let big = vec![b'x'; 10 * 1024 * 1024];
    let mut v = Vec::new();
    v.push(case(
        "admin: 10 MB body, Content-Length",
        post("secrets/set", &big),
        &[413],
        Some("larger than"),
    ));
    v.push(case(
        "admin: 10 MB body, chunked",
        chunked("POST /v1/admin/secrets/set HTTP/1.1", &big),
        &[413],
        Some("larger than"),
    ));
    let value_10m = format!(
        r#"{{"name":"A","repo":"o/r","value":"{}"}}"#,
        "v".repeat(10 << 20)
    );
    v.push(case(
        "admin: 10 MB value",
        post("secrets/set", value_10m.as_bytes()),
        &[413],
        Some("larger than"),
    ));
    let repos_100k: Vec<String> = (0..100_000).map(|i| format!("o/r{i}")).collect();
    let body =
        serde_json::json!({"name":"A","user":"mona","repos":repos_100k,"value":"v"}).to_string();
    v.push(case(
        "admin: 100k-entry repos array",
        post("secrets/set", body.as_bytes()),
        &[413],
        Some("larger than"),
    ));
    // As many distinct repositories as fit under the body limit: refused by count, quickly.
    let repos_many: Vec<String> = (0..40_000).map(|i| format!("o/{i}")).collect();
    let body =
        serde_json::json!({"name":"A","user":"mona","repos":repos_many,"value":"v"}).to_string();
    v.push(case(
        "admin: 40k-entry repos array",
        post("secrets/set", body.as_bytes()),
        &[400],
        Some("at most 1000 repositories"),
    ));
    let body = serde_json::json!({"name":"A","user":"mona","repos":repos_many}).to_string();
    v.push(case(
        "admin: 40k-entry access list",
        post("secrets/access", body.as_bytes()),
        &[400],
        Some("at most 1000 repositories"),
    ));
    let ones = format!("[{}1]", "1,".repeat(100_000));
    v.push(case(
        "admin: 100k-entry top-level array",
        post("secrets/set", ones.as_bytes()),
        &[400],
        Some("not valid"),
    ));
    v.push(case(
        "admin: 100k nested [",
        post("secrets/set", &vec![b'['; 100_000]),
        &[400],
        Some("not valid"),
    ));
    let nested = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    v.push(case(
        "admin: 50k nested objects",
        post("plan", nested.as_bytes()),
        &[400],
        Some("not valid"),
    ));
    let deep_value = format!(
        r#"{{"name":"A","repo":"o/r","value":{}"x"{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    v.push(case(
        "admin: value nested 10k deep",
        post("secrets/set", deep_value.as_bytes()),
        &[400],
        Some("not valid"),
    ));
    v.push(case(
        "admin: invalid UTF-8 in a value",
        post(
            "secrets/set",
            b"{\"name\":\"A\",\"repo\":\"o/r\",\"value\":\"\xff\xfe\xfd\"}",
        ),
        &[400],
        Some("not valid"),
    ));
    v.push(case(
        "admin: invalid UTF-8 in a name",
        post(
            "secrets/set",
            b"{\"name\":\"A\xc3\x28\",\"repo\":\"o/r\",\"value\":\"v\"}",
        ),
        &[400],
        Some("not valid"),
    ));
    v.push(case(
        "admin: escaped NUL in a value",
        post(
            "secrets/set",
            br#"{"name":"A","repo":"o/r","value":"ab\u0000cd"}"#,
        ),
        &[400],
        Some("NUL byte"),
    ));
    v.push(case(
        "admin: raw NUL in a value",
        post(
            "secrets/set",
            b"{\"name\":\"A\",\"repo\":\"o/r\",\"value\":\"ab\0cd\"}",
        ),
        &[400],
        Some("not valid"),
    ));
    v.push(case(
        "admin: escaped NUL in a name",
        post(
            "secrets/set",
            br#"{"name":"A\u0000B","repo":"o/r","value":"v"}"#,
        ),
        &[400],
        Some("letters, digits and underscores"),
    ));
    v.push(case(
        "admin: NUL in the body outside strings",
        post("secrets/set", b"{\0\"name\":\"A\"}"),
        &[400],
        Some("not valid"),
    ));
    let long_name =
        serde_json::json!({"name":"N".repeat(10_000),"repo":"o/r","value":"v"}).to_string();
    v.push(case(
        "admin: 10k-character name",
        post("secrets/set", long_name.as_bytes()),
        &[400],
        Some("longer than 255"),
    ));
    let long_del = serde_json::json!({"name":"N".repeat(10_000),"repo":"o/r"}).to_string();
    v.push(case(
        "admin: 10k-character name on delete",
        post("secrets/delete", long_del.as_bytes()),
        &[400],
        Some("longer than 255"),
    ));
    let long_repo =
        serde_json::json!({"name":"A","repo":format!("o/{}", "r".repeat(10_000)),"value":"v"})
            .to_string();
    v.push(case(
        "admin: 10k-character repository",
        post("secrets/set", long_repo.as_bytes()),
        &[400],
        Some("must be owner/name"),
    ));
    let long_user = serde_json::json!({"user":"u".repeat(10_000),"repo":"o/r"}).to_string();
    v.push(case(
        "admin: 10k-character user",
        post("sandboxes/create", long_user.as_bytes()),
        &[400],
        Some("1-39 letters"),
    ));
    let long_id = serde_json::json!({"id":"a".repeat(10_000)}).to_string();
    v.push(case(
        "admin: 10k-character sandbox id",
        post("sandboxes/delete", long_id.as_bytes()),
        &[400],
        Some("lower-case hex"),
    ));
    v.push(case(
        "admin: ../ sandbox id",
        post("sandboxes/delete", br#"{"id":"../../etc"}"#),
        &[400],
        Some("lower-case hex"),
    ));
    let big_value =
        serde_json::json!({"name":"A","repo":"o/r","value":"v".repeat(48 * 1024 + 1)}).to_string();
    v.push(case(
        "admin: value one byte over the limit",
        post("secrets/set", big_value.as_bytes()),
        &[400],
        Some("49152-byte limit"),
    ));
    for (what, body) in [
        ("empty body", &b""[..]),
        ("null", b"null"),
        ("a string", b"\"x\""),
        ("wrong types", br#"{"name":1,"repo":["o/r"],"value":{}}"#),
        (
            "duplicate fields",
            br#"{"name":"A","name":"B","repo":"o/r","value":"v"}"#,
        ),
        ("unterminated", br#"{"name":"A","repo":"o/r","value":"v"#),
        (
            "trailing garbage",
            br#"{"name":"A","repo":"o/r","value":"v"} x"#,
        ),
    ] {
        v.push(case(
            format!("admin: {what}"),
            post("secrets/set", body),
            &[400],
            Some("not valid"),
        ));
    }
    v.push(case(
        "admin: both scopes",
        post(
            "secrets/set",
            br#"{"name":"A","repo":"o/r","user":"mona","value":"v"}"#,
        ),
        &[400],
        Some("exactly one"),
    ));
    v.push(case(
        "admin: 10k-character path",
        request("POST", &format!("/v1/admin/{}", "p".repeat(10_000)), b"{}"),
        &[404],
        Some("no route"),
    ));
    v.push(case(
        "admin: 1 MB header line",
        with_headers(
            "POST /v1/admin/plan HTTP/1.1",
            &format!("X-Big: {}\r\n", "h".repeat(1 << 20)),
        ),
        &[431, 400],
        None,
    ));
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    v.push(case(
        "admin: 1000 headers",
        with_headers("POST /v1/admin/plan HTTP/1.1", &many),
        &[431, 400],
        None,
    ));
    v.push(case(
        "admin: invalid UTF-8 in the path",
        raw_head(b"POST /v1/admin/\xff\xfe HTTP/1.1"),
        &[400, 404],
        None,
    ));
    v.push(case(
        "admin: NUL in a header",
        with_headers("POST /v1/admin/plan HTTP/1.1", "X-N: a\0b\r\n"),
        &[400],
        None,
    ));
    v.push(case(
        "admin: conflicting lengths",
        b"POST /v1/admin/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}".to_vec(),
        &[400],
        None,
    ));
    v.push(case(
        "admin: Content-Length overflow",
        b"POST /v1/admin/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        &[400, 413],
        None,
    ));
    v.push(case(
        "admin: not HTTP at all",
        vec![0xffu8; 100_000],
        &[400, 431],
        None,
    ));
    v
}

fn sandbox_cases() -> Vec<Case> {
    let big = vec![b'x'; 10 * 1024 * 1024];
    let mut v = Vec::new();
    v.push(case(
        "sandbox: GET with a 10 MB body",
        request("GET", "/v1/secrets", &big),
        &[400],
        Some("takes no request body"),
    ));
    v.push(case(
        "sandbox: GET with a chunked 10 MB body",
        chunked("GET /v1/secrets HTTP/1.1", &big),
        &[400],
        Some("takes no request body"),
    ));
    v.push(case(
        "sandbox: POST with a 10 MB body",
        request("POST", "/v1/secrets", &big),
        &[405],
        Some("not allowed"),
    ));
    let ones = format!("[{}1]", "1,".repeat(100_000));
    v.push(case(
        "sandbox: 100k-entry JSON body",
        request("GET", "/v1/secrets", ones.as_bytes()),
        &[400],
        Some("takes no request body"),
    ));
    v.push(case(
        "sandbox: 100k nested [ body",
        request("GET", "/v1/secrets", &vec![b'['; 100_000]),
        &[400],
        Some("takes no request body"),
    ));
    v.push(case(
        "sandbox: 10k-character path",
        request("GET", &format!("/v1/secrets/{}", "n".repeat(10_000)), b""),
        &[404],
        Some("no route"),
    ));
    v.push(case(
        "sandbox: 100k-character path",
        request("GET", &format!("/v1/{}", "n".repeat(100_000)), b""),
        &[414, 431, 400],
        None,
    ));
    v.push(case(
        "sandbox: 1 MB header line",
        with_headers(
            "GET /v1/secrets HTTP/1.1",
            &format!("X-Big: {}\r\n", "h".repeat(1 << 20)),
        ),
        &[431, 400],
        None,
    ));
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    v.push(case(
        "sandbox: 1000 headers",
        with_headers("GET /v1/secrets HTTP/1.1", &many),
        &[431, 400],
        None,
    ));
    v.push(case(
        "sandbox: invalid UTF-8 in the path",
        raw_head(b"GET /v1/\xff\xfe HTTP/1.1"),
        &[400, 404],
        None,
    ));
    v.push(case(
        "sandbox: NUL in the path",
        with_headers("GET /v1/sec\0rets HTTP/1.1", ""),
        &[400],
        None,
    ));
    v.push(case(
        "sandbox: NUL in a header",
        with_headers("GET /v1/secrets HTTP/1.1", "X-N: a\0b\r\n"),
        &[400],
        None,
    ));
    v.push(case(
        "sandbox: not HTTP at all",
        vec![0u8; 100_000],
        &[400, 431],
        None,
    ));
    v
}

fn try_case(socket: &Path, c: &Case) {
    let (status, body) = exchange(socket, c.raw.clone(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.what));
    assert!(
        c.statuses.contains(&status),
        "{}: status {status}, wanted one of {:?}; body {:?}",
        c.what,
        c.statuses,
        &body[..body.len().min(500)]
    );
    if let Some(needle) = c.error {
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {body:?}", c.what));
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error field: {body}", c.what));
        assert!(
            msg.contains(needle),
            "{}: error {msg:?} lacks {needle:?}",
            c.what
        );
        assert!(
            msg.len() < 16 * 1024,
            "{}: error message of {} bytes",
            c.what,
            msg.len()
        );
    }
}

#[test]
fn hostile_input_on_both_sockets_is_refused_with_bounded_memory() {
    let d = Daemon::new();
    d.cli(
        &["set", "KEPT", "--repo", "o/r"],
        Some(b"hostile-kept-VALUE"),
    )
    .ok();
    let (_, dir) = d.sandbox("mona", "o/r");
    let before = served(&dir);
    let hwm_before = d.vm_hwm_kib();
    let mut tried = 0;
    for c in admin_cases() {
        try_case(&d.admin(), &c);
        tried += 1;
    }
    for c in sandbox_cases() {
        try_case(&dir.join("secrets.sock"), &c);
        tried += 1;
    }
    // Nothing hostile got in; the daemon still serves both sockets.
    assert_eq!(served(&dir), before);
    let list = d
        .cli(&["list", "--repo", "o/r", "--json"], None)
        .ok()
        .stdout();
    assert!(list.contains("KEPT") && !list.contains("\"A\""), "{list}");
    let hwm_after = d.vm_hwm_kib();
    println!(
        "hostile inputs: {tried} tried, peak RSS {hwm_before} KiB -> {hwm_after} KiB (+{} KiB)",
        hwm_after - hwm_before
    );
    assert!(
        hwm_after - hwm_before < HWM_BOUND_KIB,
        "peak RSS grew by {} KiB",
        hwm_after - hwm_before
    );
}

#[test]
fn a_flood_of_huge_headers_costs_bounded_memory() {
    use std::io::Write;
    let d = Daemon::new();
    let (_, dir) = d.sandbox("mona", "o/r");
    let hwm_before = d.vm_hwm_kib();
    // 300 connections at once each sending 400 KB of header bytes without ending them: with a
    // buffer as large as the admin socket's this would hold 120 MB.
    let line = format!("X-Big: {}\r\n", "h".repeat(4096));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let sock = dir.join("secrets.sock");
            let line = line.clone();
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for _ in 0..50 {
                    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                    let _ = s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: x\r\n");
                    conns.push(s);
                }
                for _ in 0..100 {
                    for s in conns.iter_mut() {
                        let _ = s.write_all(line.as_bytes());
                    }
                }
                conns
            })
        })
        .collect();
    let conns: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(served(&dir).len(), 0);
    let hwm_after = d.vm_hwm_kib();
    drop(conns);
    println!(
        "huge-header flood: 300 connections x 400 KB, peak RSS {hwm_before} KiB -> {hwm_after} KiB"
    );
    assert!(
        hwm_after - hwm_before < HWM_BOUND_KIB,
        "peak RSS grew by {} KiB",
        hwm_after - hwm_before
    );
}
