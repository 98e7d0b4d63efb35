//! Fetching the sandbox's secrets from the broker socket and checking the answer. Owns the
//! deadline of the fetch (one blocking exchange by [`protocol::http1`], no runtime) and the
//! garbage checks on arrival; it never logs, formats or stores a value outside a `SecretString`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol;

/// One secret as it arrived, name re-validated. The value is zeroized on drop; `Debug` is
/// redacted.
pub type Secret = protocol::WireSecret;

/// Why a fetch from a present socket failed. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] protocol::ClientError),
    #[error("no complete answer within {}", fmt_duration(*.0))]
    Timeout(Duration),
    #[error("broker answered {status}: {message}")]
    Status {
        status: http::StatusCode,
        message: String,
    },
    #[error("broker answered garbage: {0}")]
    Garbage(String),
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Whether something exists at the socket path. Only "nothing there" (ENOENT, ENOTDIR) counts as
/// absent: anything else (a dead socket, a permission problem) is a present-but-failing socket.
/// One `stat`, no connection: the fast path of an init started without a broker.
pub fn socket_present(socket: &Path) -> bool {
    match std::fs::symlink_metadata(socket) {
        Ok(_) => true,
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)),
    }
}

/// Whether the daemon's marker file (`protocol::MARKER_NAME`, a regular file, not a symlink) is in
/// `dir`: a broker serves that directory.
pub fn marker_present(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(protocol::MARKER_NAME)).is_ok_and(|m| m.is_file())
}

/// Waits up to `timeout` for something to appear at `socket` (the daemon renames a listening
/// socket into place, so once it is there it answers). Checks every 20 ms: this runs only in
/// the window where a broker is expected and not up.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if socket_present(socket) {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// A checked answer and its entity tag (`ETag`, kept as sent; `None` from a broker without
/// watches).
#[derive(Debug)]
pub struct Fetched {
    pub secrets: Vec<Secret>,
    pub etag: Option<String>,
}

/// `GET /v1/secrets` on `socket`, the whole exchange (connect included) bounded by `timeout`
/// and the answer by [`protocol::MAX_RESPONSE_BYTES`], then checked by [`parse_answer`].
pub fn fetch(socket: &Path, timeout: Duration) -> Result<Vec<Secret>, FetchError> {
    fetch_tagged(socket, timeout).map(|f| f.secrets)
}

/// [`fetch`], with the answer's `ETag`.
pub fn fetch_tagged(socket: &Path, timeout: Duration) -> Result<Fetched, FetchError> {
    match exchange(socket, &[], timeout)? {
        Some(f) => Ok(f),
        None => Err(FetchError::Status {
            status: http::StatusCode::NOT_MODIFIED,
            message: "(not modified, but no tag was sent)".into(),
        }),
    }
}

/// The watch: `GET /v1/secrets` with `If-None-Match: holds` and `Prefer: wait=SECS,
/// on-change=REACTION` (what the init does on a change, for the broker to report). The broker
/// answers when the answer's tag differs from `holds` (`Some`) or when `wait` passed (`304`:
/// `None`). The exchange is bounded by `wait` plus `slack`: one wakeup per wait while nothing
/// changes, none between.
pub fn watch(
    socket: &Path,
    holds: &str,
    wait: Duration,
    slack: Duration,
    reaction: protocol::Reaction,
) -> Result<Option<Fetched>, FetchError> {
    let prefer = format!(
        "wait={}, {}={}",
        wait.as_secs(),
        protocol::Reaction::PREFERENCE,
        reaction.token()
    );
    exchange(
        socket,
        &[("if-none-match", holds), ("prefer", &prefer)],
        wait + slack,
    )
}

/// One exchange: `None` for `304 Not Modified`, else the checked answer with its tag.
fn exchange(
    socket: &Path,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Option<Fetched>, FetchError> {
    let deadline = Instant::now() + timeout;
    let answer = match protocol::http1::get(
        socket,
        protocol::SECRETS_PATH,
        headers,
        deadline,
        protocol::MAX_RESPONSE_BYTES,
    ) {
        Err(protocol::ClientError::Deadline { .. }) => return Err(FetchError::Timeout(timeout)),
        answer => answer?,
    };
    if answer.status == http::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let etag = answer.header("etag").map(str::to_owned);
    let secrets = parse_answer(answer.status, &answer.body)?;
    Ok(Some(Fetched { secrets, etag }))
}

/// Longest broker error message shown; a hostile peer cannot flood the terminal.
const MAX_ERROR_MESSAGE: usize = 300;
/// Largest error body parsed for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Checks a complete answer: a non-200 status becomes [`FetchError::Status`] with the broker's
/// `{"error"}` message (escaped, shortened); a 200 body must pass [`protocol::decode_answer`],
/// the one decoder of the wire format. No message quotes the body.
pub fn parse_answer(status: http::StatusCode, body: &[u8]) -> Result<Vec<Secret>, FetchError> {
    if status == http::StatusCode::OK {
        return protocol::decode_answer(body).map_err(|e| FetchError::Garbage(e.to_string()));
    }
    let message = if body.len() > MAX_ERROR_BODY {
        format!("(error body of {} bytes, not read)", body.len())
    } else {
        match protocol::decode_error(body) {
            Some(e) => shorten(&e),
            None => format!("(no JSON error body, {} bytes)", body.len()),
        }
    };
    Err(FetchError::Status { status, message })
}

fn shorten(message: &str) -> String {
    // Escape only what is shown: a long message is never copied whole.
    let mut escaped: String = message
        .chars()
        .flat_map(char::escape_debug)
        .take(MAX_ERROR_MESSAGE + 1)
        .collect();
    if escaped.chars().count() > MAX_ERROR_MESSAGE {
        escaped = escaped.chars().take(MAX_ERROR_MESSAGE).collect();
        escaped.push_str("...");
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use secrecy::ExposeSecret;

    fn ok(body: &str) -> Result<Vec<Secret>, FetchError> {
        parse_answer(StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn a_good_answer_is_taken_and_names_upper_cased() {
        let got = ok(r#"{"sandbox":"s","repository":"o/r","secrets":[
            {"name":"api_token","value":"v1\n'$\"\\é"},{"name":"B","value":""}]}"#)
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "API_TOKEN");
        assert_eq!(got[0].value.expose_secret(), "v1\n'$\"\\é");
        assert_eq!(got[1].name, "B");
        assert!(!format!("{got:?}").contains("v1"));
        assert!(ok(r#"{"sandbox":"s","repository":"o/r","secrets":[]}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn error_statuses_show_the_broker_message_escaped_and_bounded() {
        let e = parse_answer(StatusCode::FORBIDDEN, br#"{"error":"sandbox deleted\n"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "broker answered 403 Forbidden: sandbox deleted\\n");
        let e = parse_answer(StatusCode::INTERNAL_SERVER_ERROR, b"<html>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("500") && e.contains("no JSON error body, 6 bytes"),
            "{e}"
        );
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(5000));
        let e = parse_answer(StatusCode::BAD_GATEWAY, long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400 && e.ends_with("..."), "{e}");
    }

    #[test]
    fn only_nothing_there_counts_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!socket_present(&dir.path().join("nope.sock")));
        assert!(!socket_present(&dir.path().join("nope/deeper.sock")));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(socket_present(&file));
        assert!(!socket_present(&file.join("under-a-file.sock")));
    }
}
