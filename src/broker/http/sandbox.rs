//! The sandbox surface: `GET /v1/secrets` on a sandbox's socket. The daemon knows the sandbox by
//! the socket the request arrived on; this file checks the request line and turns the daemon's
//! answer (encoded by `protocol`) or its error into a response, with its `ETag`; a request that
//! holds the current answer (`If-None-Match`) waits for a change (the watch, long-polled). Never
//! sees a value in clear: the answer is an opaque, zeroizing buffer.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue, ETAG};
use hyper::{Method, Response, StatusCode};

use super::{shared_response, shown, ApiError, SecretBody};
use crate::broker::audit;
use crate::broker::daemon::{self, Daemon, Slot};
use crate::protocol::{Reaction, SECRETS_PATH};

/// Longest a watch waits when the request names no `Prefer: wait=N`.
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(60);
/// Longest a watch may ask to wait.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);

/// What a request asks besides the answer: a watch (`If-None-Match: "<etag>"`), its deadline
/// (`Prefer: wait=SECS`) and what the client does on a change (`Prefer: on-change=restart`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watching {
    /// The entity tag of the answer the client holds.
    pub holds: Option<u64>,
    pub wait: Option<Duration>,
    /// What the watching client does when the answer changes, as it declared it (reported by
    /// the admin answers; an unknown or malformed preference is none).
    pub reaction: Option<Reaction>,
}

impl Watching {
    /// Reads the two headers. Pure. An unreadable `If-None-Match` is no watch (the answer comes
    /// at once); `wait` is capped at [`MAX_WATCH_WAIT`]; an unreadable preference is ignored.
    pub fn from_headers(headers: &HeaderMap) -> Watching {
        let holds = headers
            .get(hyper::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_etag);
        let wait = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_WATCH_WAIT));
        let reaction = Reaction::from_prefer(
            headers
                .get_all("prefer")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        Watching {
            holds,
            wait,
            reaction,
        }
    }
}

/// `"<16 hex digits>"` (a weak `W/` prefix allowed) to its digest.
pub fn parse_etag(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let hex = v.strip_prefix('"')?.strip_suffix('"')?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// An entity tag as sent: `"<16 hex digits>"`.
pub fn format_etag(tag: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{tag:016x}\"")).expect("hex is a valid header value")
}

/// Answers one request on sandbox `slot`'s socket. With [`Watching::holds`] equal to the
/// current answer's tag it waits until the answer changes (`200`), the deadline passes or the
/// daemon stops (`304`, no body); otherwise it answers at once. Every `200` carries `ETag`.
pub async fn answer(
    daemon: &Arc<Daemon>,
    slot: &Slot,
    method: &Method,
    path: &str,
    has_body: bool,
    watching: Watching,
) -> Response<SecretBody> {
    let id = slot.id();
    if let Err(e) = sandbox_target(method, path, has_body) {
        return e.response();
    }
    let Some(holds) = watching.holds else {
        return read(daemon, id).await;
    };
    let watch = daemon.watch(id, watching.reaction == Some(Reaction::Restart));
    let deadline = tokio::time::sleep(watching.wait.unwrap_or(DEFAULT_WATCH_WAIT));
    tokio::pin!(deadline);
    loop {
        let changed = watch.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let Ok(now) = daemon.answer_tag(id) else {
            return read(daemon, id).await;
        };
        if now != holds {
            return read(daemon, id).await;
        }
        watch.holds(now);
        tokio::select! {
            _ = changed => continue,
            _ = &mut deadline => break,
            _ = slot.stopped() => break,
        }
    }
    let mut r = Response::new(SecretBody::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    r.headers_mut().insert(ETAG, format_etag(holds));
    r
}

/// The answer now, with its `ETag`, or the refusal (audited); after a shared store's connection
/// came back, only once the store was re-read ([`Daemon::reread`]). A cached answer is served at
/// once; building one (opening and encoding up to megabytes of values) runs on a blocking thread,
/// so it never holds an async worker another sandbox's fetch needs.
async fn read(daemon: &Arc<Daemon>, id: &str) -> Response<SecretBody> {
    daemon.reread().await;
    let built = match daemon.cached_answer(id) {
        Some(body) => Ok(body),
        None => {
            if let Err(e) = daemon.still_over_budget(id) {
                return ApiError::from(e).response();
            }
            // Large (or not yet seen) answers are built a few at once; one that waited finds
            // the answer another request built. A sandbox whose answer was small never waits.
            let _permit = if daemon.answers().small(id) {
                None
            } else {
                let Ok(permit) = daemon.builds().acquire().await else {
                    return ApiError::Incomplete.response();
                };
                if let Some(body) = daemon.cached_answer(id) {
                    return tagged(body);
                }
                Some(permit)
            };
            let (daemon, id) = (Arc::clone(daemon), id.to_owned());
            match tokio::task::spawn_blocking(move || daemon.answer(&id)).await {
                Ok(built) => built,
                Err(e) => {
                    tracing::error!(error = %e, "building an answer did not complete");
                    return ApiError::Incomplete.response();
                }
            }
        }
    };
    match built {
        Ok(body) => tagged(body),
        Err(e) => {
            let e = ApiError::from(e);
            audit::read_refused(id, &super::chain(&e));
            e.response()
        }
    }
}

/// A `200` carrying `body` and its `ETag`.
fn tagged(body: std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>) -> Response<SecretBody> {
    let tag = daemon::etag(&body);
    let mut r = shared_response(StatusCode::OK, body);
    r.headers_mut().insert(ETAG, format_etag(tag));
    r
}

/// Checks the method and path of a request on a sandbox socket, and that it carries no body (the
/// API takes none; a body is refused, never read). Pure.
pub fn sandbox_target(method: &Method, path: &str, has_body: bool) -> Result<(), ApiError> {
    let path = path.split('?').next().unwrap_or(path);
    if path != SECRETS_PATH {
        return Err(ApiError::NoRoute(shown(path)));
    }
    if method != Method::GET {
        return Err(ApiError::Method {
            method: method.clone(),
            path: path.to_owned(),
        });
    }
    if has_body {
        return Err(ApiError::BodyNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_headers_and_etags() {
        let tag = 0x0123_4567_89ab_cdef_u64;
        let shown = format_etag(tag);
        assert_eq!(shown, "\"0123456789abcdef\"");
        assert_eq!(parse_etag(shown.to_str().unwrap()), Some(tag));
        assert_eq!(parse_etag("W/\"0123456789abcdef\""), Some(tag));
        for bad in [
            "",
            "*",
            "\"\"",
            "0123456789abcdef",
            "\"0123456789abcdeg\"",
            "\"123\"",
        ] {
            assert_eq!(parse_etag(bad), None, "{bad}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(Watching::from_headers(&h), Watching::default());
        h.insert(hyper::header::IF_NONE_MATCH, shown);
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=5"));
        assert_eq!(
            Watching::from_headers(&h),
            Watching {
                holds: Some(tag),
                wait: Some(Duration::from_secs(5)),
                reaction: None,
            }
        );
        h.insert("prefer", HeaderValue::from_static("wait=99999"));
        assert_eq!(Watching::from_headers(&h).wait, Some(MAX_WATCH_WAIT));
        h.insert(
            "prefer",
            HeaderValue::from_static("wait=300, on-change=restart"),
        );
        let w = Watching::from_headers(&h);
        assert_eq!(w.reaction, Some(Reaction::Restart));
        assert_eq!(w.wait, Some(Duration::from_secs(300)));
        // A hostile preference leaves the watch as it was.
        h.insert(
            "prefer",
            HeaderValue::from_static("wait=7, on-change=rm -rf; on-change=restart"),
        );
        let w = Watching::from_headers(&h);
        assert_eq!((w.reaction, w.wait), (None, Some(Duration::from_secs(7))));
    }
}
