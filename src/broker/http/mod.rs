//! The daemon's HTTP layer: one file per surface ([`sandbox`]: `GET /v1/secrets`; [`admin`]: the
//! admin API and the one implementation of every operation; [`platform`]: the platform API over
//! TCP, [`platform_tls`] its TLS), the mapping of errors to statuses, rule names and
//! `{"error"}` bodies, and the response body
//! that zeroizes what it carried. Calls into the daemon; never touches sockets or the store
//! directly. No error or log line here holds a value.

pub mod admin;
pub mod platform;
pub mod platform_tls;
pub mod sandbox;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use zeroize::Zeroizing;

use super::admin::{ADMIN_METHOD_NAME, ADMIN_PREFIX};
use super::daemon::DaemonError;
use super::sandboxes::SandboxError;
use super::store::StoreError;
use crate::protocol::{NameError, ScopeError, ValueError, MAX_SECRETS_PER_SCOPE, MAX_VALUE_BYTES};

/// Largest admin request body (a value at the limit, JSON-escaped, with room to spare).
pub const MAX_ADMIN_BODY: usize = 8 * MAX_VALUE_BYTES;
/// Buffer for one request on a sandbox socket (request line and headers; the API takes no body).
pub const MAX_SANDBOX_REQUEST: usize = 16 * 1024;
/// Most repositories one user secret may list.
pub const MAX_REPOS_PER_SECRET: usize = 1000;

/// Shortest and longest life of an API token (`token create --expires`): a second, a year.
pub const MIN_TOKEN_TTL: i64 = 1;
pub const MAX_TOKEN_TTL: i64 = 366 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("give exactly one of a user or a repository")]
    OneScope,
    #[error("--repos is for user secrets; a repository secret is read by every sandbox of its repository")]
    ReposOnRepoSecret,
    #[error("request body for {path} is not valid: {detail}")]
    BadJson { path: String, detail: String },
    #[error("request body is larger than {MAX_ADMIN_BODY} bytes")]
    TooLarge,
    #[error("GET /v1/secrets takes no request body")]
    BodyNotAllowed,
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("a user secret may list at most {MAX_REPOS_PER_SECRET} repositories, not {0}")]
    TooManyRepos(usize),
    #[error("backup path {0:?} must be an absolute path")]
    BackupPath(String),
    #[error("cannot read request body: {0}")]
    Body(hyper::Error),
    #[error("no route {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed on {path}")]
    Method { method: Method, path: String },
    #[error("uid {uid} may not use the admin socket (only root and uid {daemon})")]
    Forbidden { uid: u32, daemon: u32 },
    #[error("too many connections to the daemon (at most {0} at once); try again")]
    Busy(usize),
    #[error("the request did not complete (see the daemon's log)")]
    Incomplete,
    #[error("give exactly one of --user, --repo-admin or --platform")]
    TokenScope,
    #[error("a token expires between {MIN_TOKEN_TTL} seconds and {MAX_TOKEN_TTL} seconds (366 days) after it is made, not {0} seconds")]
    TokenExpiry(i64),
    #[error("token id {0:?} is not 12 lower-case hex digits")]
    TokenId(String),
    /// One entry of an import refused: nothing of it was stored. Status and rule are the
    /// entry's own.
    #[error("entry {index} ({name}) refused; nothing was stored")]
    Entry {
        /// 1-based, in the order the request gave them.
        index: usize,
        name: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error("an import holds no entry")]
    EmptyImport,
    #[error("an import holds {0} entries; a scope holds at most {MAX_SECRETS_PER_SCOPE} secrets")]
    ImportTooLarge(usize),
    #[error("given twice in the import (first as entry {0})")]
    DuplicateEntry(usize),
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::ReposRequired { .. } => StatusCode::BAD_REQUEST,
        StoreError::Limit { .. } => StatusCode::CONFLICT,
        StoreError::NotFound { .. }
        | StoreError::SandboxNotFound(_)
        | StoreError::TokenNotFound(_) => StatusCode::NOT_FOUND,
        StoreError::RefusedNeedsRepos { .. } => StatusCode::BAD_REQUEST,
        StoreError::Backup { .. } => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::OtherHost { .. } => StatusCode::CONFLICT,
        StoreError::Sql { error, .. }
            if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
        {
            StatusCode::INSUFFICIENT_STORAGE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// A body of `path` that is not the JSON it should be. serde's messages can quote input (a
    /// value): this names only the category and the position.
    pub fn bad_json(path: impl Into<String>, e: &serde_json::Error) -> ApiError {
        ApiError::BadJson {
            path: path.into(),
            detail: format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
            .to_lowercase(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Entry { source, .. } => source.status(),
            ApiError::EmptyImport | ApiError::DuplicateEntry(_) => StatusCode::BAD_REQUEST,
            ApiError::ImportTooLarge(_) => StatusCode::CONFLICT,
            ApiError::Name(_)
            | ApiError::Value(_)
            | ApiError::Scope(_)
            | ApiError::OneScope
            | ApiError::ReposOnRepoSecret
            | ApiError::TooManyRepos(_)
            | ApiError::BackupPath(_)
            | ApiError::BodyNotAllowed
            | ApiError::BadJson { .. }
            | ApiError::TokenScope
            | ApiError::TokenExpiry(_)
            | ApiError::TokenId(_)
            | ApiError::Sandbox(SandboxError::BadId(_))
            | ApiError::Daemon(DaemonError::Sandbox(SandboxError::BadId(_))) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Store(e) | ApiError::Daemon(DaemonError::Store(e)) => store_status(e),
            ApiError::NoRoute(_) | ApiError::Daemon(DaemonError::SandboxGone(_)) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Daemon(DaemonError::PlanTooLarge { .. }) => StatusCode::CONFLICT,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Busy(_)
            | ApiError::Daemon(
                DaemonError::ShuttingDown
                | DaemonError::DescriptorCeiling { .. }
                | DaemonError::Busy(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The name of the rule this error enforces, the same on every door (`{"rule"}` of an error
    /// answer, the CLI's `(rule: ...)`): stable words a platform can match on.
    pub fn rule(&self) -> &'static str {
        let store = |e: &StoreError| match e {
            StoreError::Limit { .. } => "secrets-per-scope",
            StoreError::NotFound { .. }
            | StoreError::SandboxNotFound(_)
            | StoreError::TokenNotFound(_) => "not-found",
            StoreError::ReposRequired { .. } | StoreError::RefusedNeedsRepos { .. } => {
                "repositories-required"
            }
            StoreError::Backup { .. } => "backup-path",
            _ => "internal",
        };
        match self {
            ApiError::Entry { source, .. } => source.rule(),
            ApiError::EmptyImport => "import-empty",
            ApiError::ImportTooLarge(_) => "secrets-per-scope",
            ApiError::DuplicateEntry(_) => "import-duplicate",
            ApiError::Name(NameError::Empty) => "name-empty",
            ApiError::Name(NameError::TooLong) => "name-length",
            ApiError::Name(NameError::BadCharacter(_)) => "name-characters",
            ApiError::Name(NameError::LeadingDigit(_)) => "name-leading-digit",
            ApiError::Name(NameError::ReservedGithub(_)) => "name-reserved-github",
            ApiError::Name(NameError::ReservedSandbox(_)) => "name-reserved-sandbox",
            ApiError::Name(NameError::Dangerous(_)) => "name-dangerous",
            ApiError::Value(ValueError::TooLarge { .. }) => "value-size",
            ApiError::Value(ValueError::Nul { .. }) => "value-nul",
            ApiError::Value(ValueError::NotUtf8 { .. }) => "value-utf8",
            ApiError::Value(ValueError::Empty) => "value-empty",
            ApiError::Scope(ScopeError::BadRepository(_)) => "repository-name",
            ApiError::Scope(ScopeError::BadUser(_)) => "user-name",
            ApiError::OneScope => "one-scope",
            ApiError::ReposOnRepoSecret => "repositories-on-repository-secret",
            ApiError::BadJson { .. } => "request-body",
            ApiError::TooLarge => "request-size",
            ApiError::BodyNotAllowed => "request-body",
            ApiError::BodyTimeout(_) => "request-timeout",
            ApiError::TooManyRepos(_) => "repositories-per-secret",
            ApiError::BackupPath(_) => "backup-path",
            ApiError::Body(_) => "request-body",
            ApiError::NoRoute(_) => "not-found",
            ApiError::Method { .. } => "method",
            ApiError::Forbidden { .. } => "admin-peer",
            ApiError::Busy(_) => "busy",
            ApiError::Incomplete => "internal",
            ApiError::TokenScope => "token-scope",
            ApiError::TokenExpiry(_) => "token-expiry",
            ApiError::TokenId(_) => "token-id",
            ApiError::Store(e) => store(e),
            ApiError::Sandbox(SandboxError::BadId(_)) => "sandbox-id",
            ApiError::Sandbox(_) => "internal",
            ApiError::Daemon(DaemonError::Store(e)) => store(e),
            ApiError::Daemon(DaemonError::Sandbox(SandboxError::BadId(_))) => "sandbox-id",
            ApiError::Daemon(DaemonError::SandboxGone(_)) => "not-found",
            ApiError::Daemon(DaemonError::PlanTooLarge { .. }) => "answer-size",
            ApiError::Daemon(
                DaemonError::ShuttingDown
                | DaemonError::DescriptorCeiling { .. }
                | DaemonError::Busy(_),
            ) => "busy",
            ApiError::Daemon(_) => "internal",
        }
    }

    /// The answer for this error: its status and `{"error": ..., "rule": ...}`, the message with
    /// its causes (each printed once).
    pub fn response(&self) -> Response<SecretBody> {
        let body = serde_json::to_vec(&RuleBody {
            error: chain(self),
            rule: self.rule(),
        })
        .unwrap_or_default();
        let mut r = json_response(self.status(), Zeroizing::new(body));
        if let ApiError::Method { path, .. } = self {
            let allow =
                hyper::header::HeaderValue::from_static(if path.starts_with(ADMIN_PREFIX) {
                    ADMIN_METHOD_NAME
                } else {
                    "GET"
                });
            r.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        r
    }
}

/// The body of an error answer of the admin and platform APIs: the message and the rule it
/// enforces. Never holds a value.
#[derive(Serialize)]
pub struct RuleBody {
    pub error: String,
    pub rule: &'static str,
}

/// An error and its sources on one line, `a: b: c`, each cause once: a source whose message
/// the line already holds (an error that both names its cause in its message and returns it as
/// `source()`) is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    join_causes(std::iter::successors(Some(err), |e| e.source()).map(|e| e.to_string()))
}

/// Joins messages, outermost first, with `: `, skipping any the line already holds.
pub fn join_causes(messages: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for m in messages {
        if out.is_empty() {
            out = m;
        } else if !m.is_empty() && !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
    }
    out
}

// ---------- a body that zeroizes what it carried ----------

/// The whole answer as one buffer, zeroized once written (it may hold secret values).
pub struct ZBuf {
    data: Arc<Zeroizing<Vec<u8>>>,
    pos: usize,
}

impl Drop for ZBuf {
    fn drop(&mut self) {
        let data = std::mem::replace(&mut self.data, Arc::new(Zeroizing::new(Vec::new())));
        crate::broker::limits::release(data);
    }
}

impl Buf for ZBuf {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }
    fn advance(&mut self, cnt: usize) {
        assert!(
            cnt <= self.remaining(),
            "advance past the end of the answer"
        );
        self.pos += cnt;
    }
}

/// A response body of one [`ZBuf`] frame.
pub struct SecretBody(Option<ZBuf>);

impl SecretBody {
    /// No body (`304`).
    pub fn empty() -> SecretBody {
        SecretBody(None)
    }
}

impl Body for SecretBody {
    type Data = ZBuf;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<ZBuf>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.remaining() as u64))
    }
}

fn json_response(status: StatusCode, body: Zeroizing<Vec<u8>>) -> Response<SecretBody> {
    shared_response(status, Arc::new(body))
}

fn shared_response(status: StatusCode, body: Arc<Zeroizing<Vec<u8>>>) -> Response<SecretBody> {
    let mut r = Response::new(SecretBody(Some(ZBuf { data: body, pos: 0 })));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn ok_json<T: Serialize>(value: &T) -> Response<SecretBody> {
    json_response(
        StatusCode::OK,
        Zeroizing::new(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// Longest path quoted back in an error.
const MAX_SHOWN_PATH: usize = 256;

/// A request path as an error shows it: cut at [`MAX_SHOWN_PATH`] bytes (on a char boundary).
fn shown(path: &str) -> String {
    if path.len() <= MAX_SHOWN_PATH {
        return path.to_owned();
    }
    let mut end = MAX_SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::store::ScopeKind;

    #[test]
    fn statuses() {
        assert_eq!(ApiError::OneScope.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::Forbidden { uid: 1, daemon: 0 }.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::Store(StoreError::Limit {
                kind: ScopeKind::User,
                scope: "u".into()
            })
            .status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::Daemon(DaemonError::ShuttingDown).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ceiling = ApiError::Daemon(DaemonError::DescriptorCeiling {
            limit: 1024,
            in_use: 960,
            sandboxes: 950,
        });
        assert_eq!(ceiling.status(), StatusCode::SERVICE_UNAVAILABLE);
        let msg = ceiling.to_string();
        assert!(msg.contains("1024") && msg.contains("LimitNOFILE"), "{msg}");
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot create directory /x: {source}")]
        struct Both {
            source: std::io::Error,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("cannot create directory /x")]
        struct SourceOnly {
            #[source]
            source: std::io::Error,
        }
        let io = || std::io::Error::from_raw_os_error(libc::ENOTDIR);
        for line in [
            chain(&Both { source: io() }),
            chain(&SourceOnly { source: io() }),
        ] {
            assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
            assert!(
                line.starts_with("cannot create directory /x: Not a directory"),
                "{line}"
            );
        }
    }
}
