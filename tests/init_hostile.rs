//! Hostile sandbox-socket peers against the real `sandbox-init`: huge and endless bodies, 100k
//! entries, deep nesting, invalid UTF-8, NUL bytes, 10k-character names, huge headers, broken
//! HTTP. Each must stop the init before the child starts (exit 1) with a message naming the
//! problem, echo no value, and stay within a memory bound (the init's peak RSS, measured by
//! GNU time's `%M` when installed, else the children's `ru_maxrss`).

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
/// The bound on the init's peak resident memory while it refuses any of these.
const MEMORY_BOUND_KIB: u64 = 64 * 1024;
/// A value-like marker put in every hostile body: it must never be echoed.
const MARK: &str = support::MARK;

use support::peer::{http, Peer, Reply};

fn answer(secrets_json: &str) -> Vec<u8> {
    http(
        "200 OK",
        format!(r#"{{"sandbox":"s","repository":"o/r","secrets":{secrets_json}}}"#).as_bytes(),
    )
}

/// Kills a still-running init on drop (a failed assertion must not leave it behind).
struct Reaper(Option<std::process::Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the init against `peer` with `--secrets-timeout 3`; returns its output and peak RSS
/// (KiB).
fn run_init(peer: &Peer, dir: &Path) -> (String, Output, u64) {
    let rss_file = dir.join("rss");
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(INIT);
        c
    } else {
        Command::new(INIT)
    };
    cmd.args([
        "--secrets-timeout",
        "3",
        "--",
        "sh",
        "-c",
        "echo child-started",
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("SANDBOX_SECRETS_SOCKET", &peer.socket)
    .env("SANDBOX_INIT_LOG", "trace")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut reaper = Reaper(Some(cmd.spawn().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while reaper.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{shown} hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = reaper.0.take().unwrap().wait_with_output().unwrap();
    let rss = if gnu_time {
        // "Command exited with non-zero status 1" comes first.
        let text = std::fs::read_to_string(&rss_file).unwrap();
        text.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("GNU time wrote {text:?}"))
    } else {
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .unwrap()
            .max_rss() as u64
    };
    (shown, out, rss)
}

/// One hostile case: the init must exit 1, before its child, naming `why`, echoing no `MARK`,
/// within the memory bound. Returns the peak RSS in KiB.
fn refused(what: &str, reply: Reply, why: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(reply);
    let (shown, out, rss) = run_init(&peer, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let explain = format!(
        "{what}\ncommand: {shown}\nstatus: {}\nstdout:\n{stdout}\nstderr (first 2000 bytes):\n{}",
        out.status,
        stderr.chars().take(2000).collect::<String>()
    );
    assert_eq!(out.status.code(), Some(1), "{explain}");
    assert!(!stdout.contains("child-started"), "{explain}");
    assert!(stderr.contains(why), "expected {why:?}\n{explain}");
    assert!(!stderr.contains(MARK), "value echoed\n{explain}");
    assert!(stderr.len() < 4096, "an unbounded message\n{explain}");
    assert!(
        rss <= MEMORY_BOUND_KIB,
        "peak RSS {rss} KiB over {MEMORY_BOUND_KIB} KiB\n{explain}"
    );
    eprintln!(
        "hostile: {what}: refused, peak RSS {rss} KiB: {}",
        stderr.trim_end().lines().last().unwrap_or_default()
    );
    rss
}

fn secret(name: &str, value: &str) -> String {
    format!(r#"{{"name":"{name}","value":"{value}"}}"#)
}

#[test]
fn huge_bodies_are_refused_within_bounded_memory() {
    const MB10: usize = 10 * 1024 * 1024;
    // 10 MB that is not JSON.
    let mut body = MARK.as_bytes().to_vec();
    body.resize(MB10, b'x');
    refused(
        "10 MB non-JSON body",
        Reply::Bytes(http("200 OK", &body)),
        "not a secrets answer",
    );
    // 10 MB inside a valid shape: one value of 10 MB with a bad name.
    let big = format!("{MARK}{}", "v".repeat(MB10));
    refused(
        "10 MB value under an invalid name",
        Reply::Bytes(answer(&format!("[{}]", secret("BAD-NAME", &big)))),
        "letters, digits",
    );
    // 10 MB error body (non-200): its size is reported, its content bounded.
    let err = format!(r#"{{"error":"{}"}}"#, "e".repeat(MB10));
    refused(
        "10 MB error body",
        Reply::Bytes(http("500 Internal Server Error", err.as_bytes())),
        "500",
    );
    // A body over the 16 MiB cap, streamed until the init hangs up.
    refused(
        "endless body announced as 64 MiB",
        Reply::Flood {
            head: format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{\"sandbox\":\"{MARK}",
                64 * 1024 * 1024
            )
            .into_bytes(),
            unit: vec![b'x'; 64 * 1024],
        },
        "larger than 16777216 bytes",
    );
    // The same without a length: chunked, endless.
    refused(
        "endless chunked body",
        Reply::Flood {
            head: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
            unit: format!("10000\r\n{}\r\n", "y".repeat(0x10000)).into_bytes(),
        },
        "larger than",
    );
    // A body that trickles in: the deadline ends it.
    refused(
        "a body dripping 10 bytes/s",
        Reply::Drip,
        "no complete answer within 3s",
    );
}

#[test]
fn many_entries_and_deep_nesting_are_refused() {
    let entries: Vec<String> = (0..100_000)
        .map(|i| secret(&format!("N{i}"), MARK))
        .collect();
    refused(
        "100k secrets",
        Reply::Bytes(answer(&format!("[{}]", entries.join(",")))),
        "more than 8064 JSON values",
    );
    let fields: Vec<String> = (0..100_000)
        .map(|i| format!(r#""f{i}":"{MARK}""#))
        .collect();
    refused(
        "100k top-level fields",
        Reply::Bytes(http(
            "200 OK",
            format!("{{{}}}", fields.join(",")).as_bytes(),
        )),
        "more than 8064 JSON values",
    );
    let strings: Vec<String> = (0..100_000).map(|_| format!("\"{MARK}\"")).collect();
    refused(
        "100k strings in secrets",
        Reply::Bytes(answer(&format!("[{}]", strings.join(",")))),
        "more than 8064 JSON values",
    );
    refused(
        "100k nested arrays",
        Reply::Bytes(http("200 OK", "[".repeat(100_000).as_bytes())),
        "recursion limit exceeded",
    );
    refused(
        "100k nested arrays in a value",
        Reply::Bytes(answer(&format!(
            r#"[{{"name":"A","value":{}"#,
            "[".repeat(100_000)
        ))),
        "recursion limit exceeded",
    );
    refused(
        "1000 nested objects (under the value count)",
        Reply::Bytes(http("200 OK", r#"{"a":"#.repeat(1000).as_bytes())),
        "recursion limit exceeded",
    );
    // 1001 secrets: one more than an answer may hold (protocol::MAX_SECRETS_PER_ANSWER).
    let entries: Vec<String> = (0..1001).map(|i| secret(&format!("N{i}"), MARK)).collect();
    refused(
        "1001 secrets",
        Reply::Bytes(answer(&format!("[{}]", entries.join(",")))),
        "1001 secrets, more than the 1000",
    );
}

/// Every bad answer of the corpus (`tests/corpus/bad-answers/`: bad bytes, names, values and
/// shapes), served by a peer to the real init.
#[test]
fn bad_bytes_names_and_values_are_refused() {
    for case in support::bad_answers() {
        refused(
            &case.name,
            Reply::Bytes(http("200 OK", &case.body)),
            &case.why,
        );
    }
}

#[test]
fn broken_http_is_refused() {
    let huge_header = format!(
        "HTTP/1.1 200 OK\r\nx-big: {MARK}{}\r\ncontent-length: 2\r\n\r\n{{}}",
        "h".repeat(1024 * 1024)
    );
    let many_headers: String = (0..100_000)
        .map(|i| format!("x-h{i}: {MARK}\r\n"))
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a 1 MiB header line",
            huge_header.into_bytes(),
            "HTTP exchange",
        ),
        (
            "100k header lines",
            format!("HTTP/1.1 200 OK\r\n{many_headers}content-length: 2\r\n\r\n{{}}").into_bytes(),
            "HTTP exchange",
        ),
        (
            "not HTTP",
            format!("{MARK} hello\r\n\r\n").into_bytes(),
            "HTTP exchange",
        ),
        (
            "a NUL in the status line",
            b"HTTP/1.1 2\x0000 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "HTTP exchange",
        ),
        (
            "a body shorter than its length",
            format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{{\"x\":\"{MARK}").into_bytes(),
            "HTTP exchange",
        ),
        ("nothing at all", Vec::new(), "HTTP exchange"),
        (
            "a bad chunk size",
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{MARK}\r\n")
                .into_bytes(),
            "HTTP exchange",
        ),
    ];
    for (what, bytes, why) in cases {
        refused(what, Reply::Bytes(bytes), why);
    }
}
