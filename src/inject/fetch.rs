//! Fetching the sandbox's secrets from the broker socket and checking the answer. Owns the
//! current-thread runtime (built only when a socket exists) and the garbage checks on arrival;
//! it never logs, formats or stores a value outside a `SecretString`.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use serde_json::Value;

use crate::protocol;

/// One secret as it arrived, name re-validated. The value is zeroized on drop.
pub struct Secret {
    pub name: String,
    pub value: SecretString,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// Why a fetch from a present socket failed. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build the client runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Client(#[from] protocol::ClientError),
    #[error("no complete answer within {}", fmt_duration(*.0))]
    Timeout(Duration),
    #[error("broker answered {status}: {message}")]
    Status {
        status: hyper::StatusCode,
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
/// One `stat`, no runtime: the fast path of an init started without a broker.
pub fn socket_present(socket: &Path) -> bool {
    match std::fs::symlink_metadata(socket) {
        Ok(_) => true,
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)),
    }
}

/// `GET /v1/secrets` on `socket`, the whole exchange (connect included) bounded by `timeout`
/// and the answer by [`protocol::MAX_RESPONSE_BYTES`], then checked by [`parse_answer`].
pub fn fetch(socket: &Path, timeout: Duration) -> Result<Vec<Secret>, FetchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(FetchError::Runtime)?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(
            timeout,
            protocol::unix_request(
                socket,
                hyper::Method::GET,
                protocol::SECRETS_PATH,
                None,
                protocol::MAX_RESPONSE_BYTES,
            ),
        )
        .await
    });
    // Dropping the runtime here cancels the connection task, whatever happened.
    drop(runtime);
    let answer = answer.map_err(|_| FetchError::Timeout(timeout))??;
    parse_answer(answer.status, &answer.body)
}

/// Longest broker error message shown; a hostile peer cannot flood the terminal.
const MAX_ERROR_MESSAGE: usize = 300;

/// Checks a complete answer: a non-200 status becomes [`FetchError::Status`] with the broker's
/// `{"error"}` message (escaped, shortened); a 200 body must be exactly a secrets answer
/// (`{"sandbox","repository","secrets":[{"name","value"}]}`, no other field, at most
/// [`protocol::MAX_SECRETS_PER_ANSWER`] secrets) whose every name passes [`protocol::normalize_name`] (dangerous names refused),
/// appears once, and whose values hold no NUL (an environment cannot carry one). No message quotes the body: the shape is
/// checked by hand, because serde's own messages quote the offending string (`invalid type:
/// string "..."`), which could be a value.
pub fn parse_answer(status: hyper::StatusCode, body: &[u8]) -> Result<Vec<Secret>, FetchError> {
    if status != hyper::StatusCode::OK && body.len() > MAX_ERROR_BODY {
        return Err(FetchError::Status {
            status,
            message: format!("(error body of {} bytes, not read)", body.len()),
        });
    }
    // A tree of JSON values costs far more memory than its text: count them first.
    if status == hyper::StatusCode::OK && json_values_over(body, MAX_JSON_VALUES) {
        return Err(FetchError::Garbage(format!(
            "not a secrets answer: more than {MAX_JSON_VALUES} JSON values (an answer holds at \
             most {} secrets)",
            protocol::MAX_SECRETS_PER_ANSWER
        )));
    }
    // One JSON parser for every shape (a smaller init): the body becomes a `Value` first,
    // whose strings are zeroized when it is dropped.
    let (mut value, syntax) = match serde_json::from_slice::<Value>(body) {
        Ok(v) => (super::ScrubbedJson(v), None),
        Err(e) => (super::ScrubbedJson(Value::Null), Some(e)),
    };
    if status != hyper::StatusCode::OK {
        // An error body never holds a value by contract; it is still escaped and bounded.
        let message = match value.0.get("error").and_then(Value::as_str) {
            Some(e) => shorten(e),
            None => format!("(no JSON error body, {} bytes)", body.len()),
        };
        return Err(FetchError::Status { status, message });
    }
    // serde_json's syntax messages hold a line and column, never input text.
    if let Some(e) = syntax {
        return Err(FetchError::Garbage(format!("not a secrets answer: {e}")));
    }
    match decode(&mut value.0) {
        Ok(pairs) => check(pairs),
        Err(why) => Err(FetchError::Garbage(format!("not a secrets answer: {why}"))),
    }
}

/// Most JSON values a 200 answer may hold: 5 for the envelope, 5 per secret, with room to spare.
pub const MAX_JSON_VALUES: usize = 8 * protocol::MAX_SECRETS_PER_ANSWER + 64;
/// Largest error body parsed for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Whether `body` holds more than `limit` JSON values, counted as one plus the commas and colons
/// outside strings (every value but the first follows one of them): an upper bound, found in one
/// pass without allocating. Bytes need not be valid JSON or UTF-8.
pub fn json_values_over(body: &[u8], limit: usize) -> bool {
    let mut count = 1usize;
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' => {
                    count += 1;
                    if count > limit {
                        return true;
                    }
                }
                _ => {}
            }
        }
    }
    false
}

/// The wire shape of a 200 answer, checked field by field; the names and values are moved out
/// of `doc` (whose remaining strings the caller zeroizes). The error names the field, never its
/// content.
fn decode(doc: &mut Value) -> Result<Vec<(String, SecretString)>, String> {
    let Value::Object(top) = doc else {
        return Err("not a JSON object".into());
    };
    if top
        .keys()
        .any(|k| !matches!(k.as_str(), "sandbox" | "repository" | "secrets"))
    {
        return Err("a field other than sandbox, repository and secrets".into());
    }
    for field in ["sandbox", "repository"] {
        match top.get(field) {
            Some(Value::String(_)) => {}
            Some(_) => return Err(format!("`{field}` is not a string")),
            None => return Err(format!("missing field `{field}`")),
        }
    }
    let list = match top.get_mut("secrets") {
        Some(Value::Array(list)) => list,
        Some(_) => return Err("`secrets` is not an array".into()),
        None => return Err("missing field `secrets`".into()),
    };
    let most = protocol::MAX_SECRETS_PER_ANSWER;
    if list.len() > most {
        return Err(format!(
            "{} secrets, more than the {most} an answer may hold",
            list.len()
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter_mut().enumerate() {
        let Value::Object(fields) = item else {
            return Err(format!("`secrets[{i}]` is not an object"));
        };
        if fields.keys().any(|k| k != "name" && k != "value") {
            return Err(format!(
                "`secrets[{i}]` has a field other than name and value"
            ));
        }
        let mut take = |field: &str| match fields.get_mut(field) {
            Some(Value::String(s)) => Ok(std::mem::take(s)),
            Some(_) => Err(format!("`secrets[{i}].{field}` is not a string")),
            None => Err(format!("`secrets[{i}]` has no field `{field}`")),
        };
        let name = take("name")?;
        let value = SecretString::from(take("value")?);
        out.push((name, value));
    }
    Ok(out)
}

/// The checks on arrival: names valid (dangerous ones refused) and unique, values without NUL.
/// Value sizes are not capped here (a platform's own broker may allow larger ones; they are
/// spilled to files): the answer size cap bounds them.
/// Returns them sorted by name.
fn check(pairs: Vec<(String, SecretString)>) -> Result<Vec<Secret>, FetchError> {
    let mut out = Vec::with_capacity(pairs.len());
    for (raw, value) in pairs {
        let name = protocol::normalize_name(&raw, false)
            .map_err(|e| FetchError::Garbage(e.to_string()))?;
        if let Some(offset) = value.expose_secret().bytes().position(|b| b == 0) {
            return Err(FetchError::Garbage(format!(
                "value of {name} contains a NUL byte at offset {offset}"
            )));
        }
        out.push(Secret { name, value });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(FetchError::Garbage(format!(
            "secret name {:?} appears more than once",
            w[0].name
        )));
    }
    Ok(out)
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
    use hyper::StatusCode;

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
    fn garbage_is_refused_naming_the_reason_never_a_value() {
        let cases = [
            ("", "not a secrets answer"),
            ("hello", "not a secrets answer"),
            ("[]", "not a secrets answer"),
            (r#"{"secrets":[]}"#, "not a secrets answer"),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A"}]}"#,
                "not a secrets answer",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[],"x":1}"#,
                "not a secrets answer",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"LD_PRELOAD","value":"topsecret"}]}"#,
                "dangerous",
            ),
            // serde would quote these strings in its message ("invalid type: string ...").
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":["A=topsecret"]}"#,
                "`secrets[0]` is not an object",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":"topsecret"}"#,
                "`secrets` is not an array",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":["topsecret"]}]}"#,
                "`secrets[0].value` is not a string",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"x","v":"topsecret"}]}"#,
                "field other than name and value",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","topsecret":1,"secrets":[]}"#,
                "field other than sandbox",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"value":"topsecret"}]}"#,
                "has no field `name`",
            ),
            (
                &format!(
                    r#"{{"sandbox":"s","repository":"o/r","secrets":[{}]}}"#,
                    vec![r#"{"name":"A","value":"x"}"#; 1001].join(",")
                ),
                "1001 secrets, more than the 1000",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A-B","value":"topsecret"}]}"#,
                "letters, digits",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"GITHUB_X","value":"topsecret"}]}"#,
                "reserved",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"","value":"topsecret"}]}"#,
                "empty",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"topsecret"},{"name":"a","value":"topsecret"}]}"#,
                "more than once",
            ),
            (
                r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"top\u0000secret"}]}"#,
                "NUL byte at offset 3",
            ),
        ];
        for (body, want) in cases {
            let e = ok(body).unwrap_err();
            assert!(matches!(e, FetchError::Garbage(_)), "{body}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(want), "{body}: {msg}");
            assert!(
                !msg.contains("topsecret") && !msg.contains("secret\""),
                "{msg}"
            );
        }
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
    fn json_values_are_counted_outside_strings_only() {
        assert!(!json_values_over(b"", 1));
        assert!(!json_values_over(b"[1,2]", 2));
        assert!(json_values_over(b"[1,2,3]", 2));
        assert!(!json_values_over(br#"{"a":"x,y:z"}"#, 2));
        assert!(json_values_over(br#"{"a":"x","b":1}"#, 3));
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        assert!(!json_values_over(br#"["\",,,,"]"#, 1));
        assert!(json_values_over(br#"["\\",1,2]"#, 2));
        assert!(!json_values_over(b"\xff,\"", 2));
        let answer = format!(
            r#"{{"sandbox":"s","repository":"o/r","secrets":[{}]}}"#,
            vec![r#"{"name":"A","value":"x,:"}"#; protocol::MAX_SECRETS_PER_ANSWER].join(",")
        );
        assert!(!json_values_over(answer.as_bytes(), MAX_JSON_VALUES));
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
