//! HTTP routes of the daemon: the sandbox API (`GET /v1/secrets`) and the admin API (JSON POSTs
//! under `/v1/admin/`), their request and answer types, and the mapping of errors to statuses.
//! Validates every name, value and scope before the store sees it. No error or log line here
//! holds a value; answers carrying values are zeroized after they are written.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::acl::PlanEntry;
use super::audit;
use super::sandboxes::SandboxError;
use super::server::Daemon;
use super::store::{SandboxRow, ScopeKind, SecretInfo, StoreError};
use crate::protocol::{
    self, ErrorBody, NameError, ScopeError, ValueError, MAX_VALUE_BYTES, SECRETS_PATH,
};

/// Prefix of every admin route.
pub const ADMIN_PREFIX: &str = "/v1/admin/";
/// Largest admin request body (a value at the limit, JSON-escaped, with room to spare).
pub const MAX_ADMIN_BODY: usize = 8 * MAX_VALUE_BYTES;
/// Buffer for one request on a sandbox socket (request line and headers; the API takes no body).
pub const MAX_SANDBOX_REQUEST: usize = 16 * 1024;

// ---------- admin request and answer types (the admin client uses the same ones) ----------

/// `POST /v1/admin/secrets/set`: create or update a secret. Exactly one of `user`, `repo`.
#[derive(Serialize, Deserialize)]
pub struct SetRequest {
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    /// For a user secret: which repositories may read it (required when new; `None` keeps).
    #[serde(default)]
    pub repos: Option<Vec<String>>,
    #[serde(serialize_with = "expose_value", deserialize_with = "secret_value")]
    pub value: SecretString,
    #[serde(default)]
    pub allow_dangerous: bool,
}

impl std::fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetRequest")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("repo", &self.repo)
            .field("repos", &self.repos)
            .field("value", &"[redacted]")
            .finish()
    }
}

fn expose_value<S: serde::Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}
fn secret_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// `POST /v1/admin/secrets/access`: replace which repositories may read a user secret, without
/// its value.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessRequest {
    pub name: String,
    pub user: String,
    pub repos: Vec<String>,
}

/// `POST /v1/admin/secrets/delete` and `.../list` (list ignores `name`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScopeRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
}

/// `POST /v1/admin/plan` and `/v1/admin/sandboxes/create`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserRepoRequest {
    pub user: String,
    pub repo: String,
}

/// `POST /v1/admin/sandboxes/delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdRequest {
    pub id: String,
}

/// `POST /v1/admin/store/backup`: where to write the copy (an absolute path that must not exist).
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRequest {
    pub path: String,
}

/// Answer of `store/backup`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupAnswer {
    pub path: String,
    /// The store generation the copy holds.
    pub generation: u64,
}

/// Answer of `key/rotate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyRotateAnswer {
    pub previous: String,
    pub key_id: String,
}

/// Answer of set, access and delete.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeAnswer {
    pub name: String,
    pub scope: ScopeKind,
    pub owner: String,
    /// `created`, `updated`, `access` or `deleted`.
    pub result: String,
}

/// Answer of list.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListAnswer {
    pub secrets: Vec<SecretInfo>,
}

/// Answer of plan.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanAnswer {
    pub user: String,
    pub repository: String,
    pub secrets: Vec<PlanEntry>,
}

/// One sandbox as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub user: String,
    pub repository: String,
    pub created: i64,
    /// The directory to bind-mount at `/run/sandbox`.
    pub dir: String,
}

/// Answer of sandbox list.
#[derive(Debug, Serialize, Deserialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

// ---------- errors ----------

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
    #[error("sandbox {0} no longer exists")]
    SandboxGone(String),
    #[error("cannot serve secrets: {0}")]
    Unservable(StoreError),
    #[error("value of {0} is not valid UTF-8")]
    NotText(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Name(_)
            | ApiError::Value(_)
            | ApiError::Scope(_)
            | ApiError::OneScope
            | ApiError::ReposOnRepoSecret
            | ApiError::TooManyRepos(_)
            | ApiError::BackupPath(_)
            | ApiError::BodyNotAllowed
            | ApiError::BadJson { .. }
            | ApiError::Sandbox(SandboxError::BadId(_))
            | ApiError::Store(StoreError::ReposRequired { .. }) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Store(StoreError::Limit { .. }) => StatusCode::CONFLICT,
            ApiError::Store(StoreError::NotFound { .. } | StoreError::SandboxNotFound(_))
            | ApiError::NoRoute(_)
            | ApiError::SandboxGone(_) => StatusCode::NOT_FOUND,
            ApiError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Store(StoreError::Sql { error, .. })
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer for this error: its status and `{"error": ...}`.
    pub fn response(&self) -> Response<SecretBody> {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.to_string(),
        })
        .unwrap_or_default();
        let mut r = json_response(self.status(), Zeroizing::new(body));
        if let ApiError::Method { path, .. } = self {
            let allow =
                hyper::header::HeaderValue::from_static(if path.starts_with(ADMIN_PREFIX) {
                    "POST"
                } else {
                    "GET"
                });
            r.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        r
    }
}

// ---------- a body that zeroizes what it carried ----------

/// The whole answer as one buffer, zeroized once written (it may hold secret values).
pub struct ZBuf {
    data: Arc<Zeroizing<Vec<u8>>>,
    pos: usize,
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

// ---------- sandbox API ----------

#[derive(Serialize)]
struct OutSecret<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct OutResponse<'a> {
    sandbox: &'a str,
    repository: &'a str,
    secrets: Vec<OutSecret<'a>>,
}

/// Answers one request on sandbox `id`'s socket.
pub fn sandbox_request(
    daemon: &Daemon,
    id: &str,
    method: &Method,
    path: &str,
    has_body: bool,
) -> Response<SecretBody> {
    if let Err(e) = sandbox_target(method, path, has_body) {
        return e.response();
    }
    match secrets_answer(daemon, id) {
        Ok(body) => shared_response(StatusCode::OK, body),
        Err(e) => {
            audit::read_refused(id, &e);
            e.response()
        }
    }
}

/// Largest answer kept in the [`AnswerCache`]; bigger ones are rebuilt per request.
pub const MAX_CACHED_ANSWER: usize = 1024 * 1024;
/// Most answers kept; the cache is emptied when it would grow past this.
pub const MAX_CACHED_ANSWERS: usize = 4096;

/// Built `GET /v1/secrets` answers per sandbox, all of one store generation, so a sandbox's
/// answer is opened and encoded once per change rather than once per request. Every change to
/// the store empties the whole cache ([`AnswerCache::sync`]); an entry built at any other
/// generation is refused. Entries are zeroized when dropped (a response still being written
/// keeps its own reference until it is done).
#[derive(Default)]
pub struct AnswerCache {
    inner: std::sync::RwLock<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// The store generation every entry was built at; 0 until the first [`AnswerCache::sync`].
    generation: u64,
    map: std::collections::HashMap<String, Arc<CachedAnswer>>,
}

struct CachedAnswer {
    generation: u64,
    body: Arc<Zeroizing<Vec<u8>>>,
    repository: String,
    count: usize,
    names: String,
}

impl AnswerCache {
    fn get(&self, id: &str, generation: u64) -> Option<Arc<CachedAnswer>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .map
            .get(id)
            .filter(|c| c.generation == generation)
            .map(Arc::clone)
    }

    /// Keeps an answer, unless it was built at a generation other than the one last synced (the
    /// store changed since: a secret, an access list or the sandbox itself may be gone).
    fn put(&self, id: &str, entry: CachedAnswer) -> bool {
        if entry.body.len() > MAX_CACHED_ANSWER {
            return false;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if entry.generation != inner.generation {
            return false;
        }
        if inner.map.len() >= MAX_CACHED_ANSWERS && !inner.map.contains_key(id) {
            inner.map.clear();
        }
        inner.map.insert(id.to_owned(), Arc::new(entry));
        true
    }

    /// Called after every (attempted) change to the store with its generation: if it moved, every
    /// entry is dropped (and so zeroized) and only answers of the new generation are kept from
    /// now on. A change bumps the generation before it starts, so an answer built before it is
    /// either refused here or removed by this call.
    pub fn sync(&self, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation {
            inner.map.clear();
            inner.generation = generation;
        }
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// True when no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn secrets_answer(daemon: &Daemon, id: &str) -> Result<Arc<Zeroizing<Vec<u8>>>, ApiError> {
    if let Some(c) = daemon.answers().get(id, daemon.store().generation()) {
        audit::secrets_read(id, &c.repository, c.count, &c.names);
        return Ok(Arc::clone(&c.body));
    }
    let fetched = daemon.store().fetch(id).map_err(|e| match e {
        StoreError::SandboxNotFound(id) => ApiError::SandboxGone(id),
        other => ApiError::Unservable(other),
    })?;
    let mut secrets = Vec::with_capacity(fetched.secrets.len());
    for (name, value) in &fetched.secrets {
        let value = std::str::from_utf8(value).map_err(|_| ApiError::NotText(name.to_owned()))?;
        secrets.push(OutSecret { name, value });
    }
    let out = OutResponse {
        sandbox: &fetched.sandbox.id,
        repository: &fetched.sandbox.repo,
        secrets,
    };
    let mut body = Zeroizing::new(Vec::with_capacity(
        128 + fetched
            .secrets
            .iter()
            .map(|(n, v)| n.len() + v.len() + 32)
            .sum::<usize>(),
    ));
    serde_json::to_writer(&mut *body, &out).map_err(|_| ApiError::NotText(String::new()))?;
    let body = Arc::new(body);
    let names: Vec<&str> = fetched.secrets.iter().map(|(n, _)| n.as_str()).collect();
    let names = names.join(",");
    audit::secrets_read(
        &fetched.sandbox.id,
        &fetched.sandbox.repo,
        fetched.secrets.len(),
        &names,
    );
    daemon.answers().put(
        id,
        CachedAnswer {
            generation: fetched.generation,
            body: Arc::clone(&body),
            repository: fetched.sandbox.repo.clone(),
            count: fetched.secrets.len(),
            names,
        },
    );
    Ok(body)
}

// ---------- admin API ----------

/// Reads a request body into a zeroized buffer, up to [`MAX_ADMIN_BODY`].
pub async fn read_body(body: Incoming) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let mut body = body;
    let mut out = Zeroizing::new(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ApiError::Body)?;
        if let Ok(chunk) = frame.into_data() {
            if out.len() + chunk.len() > MAX_ADMIN_BODY {
                return Err(ApiError::TooLarge);
            }
            if out.capacity() < out.len() + chunk.len() {
                let mut grown = Zeroizing::new(Vec::with_capacity(
                    (out.len() + chunk.len()).max(out.capacity() * 2),
                ));
                grown.extend_from_slice(&out);
                out = grown;
            }
            out.extend_from_slice(&chunk);
        }
    }
    Ok(out)
}

/// Answers one admin request from `uid` (already allowed).
pub async fn admin_request(
    daemon: &Arc<Daemon>,
    uid: u32,
    req: Request<Incoming>,
) -> Response<SecretBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let route = match admin_target(&method, &path) {
        Ok(route) => route,
        Err(e) => return e.response(),
    };
    // A declared length over the limit is refused before any of the body is read.
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return ApiError::TooLarge.response();
    }
    let timeout = daemon.body_timeout();
    let body = match tokio::time::timeout(timeout, read_body(req.into_body())).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return e.response(),
        Err(_) => return ApiError::BodyTimeout(timeout).response(),
    };
    let answer = parse_admin(route, &body)
        .and_then(|command| run_admin(daemon, uid, command))
        .unwrap_or_else(|e| e.response());
    // Any change (or failed attempt) moved the generation: drop every cached answer now.
    daemon.answers().sync(daemon.store().generation());
    answer
}

/// The admin routes, after [`ADMIN_PREFIX`].
pub const ROUTES: &[&str] = &[
    "secrets/set",
    "secrets/access",
    "secrets/delete",
    "secrets/list",
    "plan",
    "sandboxes/create",
    "sandboxes/list",
    "sandboxes/delete",
    "key/status",
    "key/rotate",
    "store/backup",
];

/// Checks the method and path of an admin request; returns the route (a member of [`ROUTES`]).
/// Pure.
pub fn admin_target<'a>(method: &Method, path: &'a str) -> Result<&'a str, ApiError> {
    let Some(route) = path
        .strip_prefix(ADMIN_PREFIX)
        .filter(|r| ROUTES.contains(r))
    else {
        return Err(ApiError::NoRoute(shown(path)));
    };
    if method != Method::POST {
        return Err(ApiError::Method {
            method: method.clone(),
            path: path.to_owned(),
        });
    }
    Ok(route)
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

/// A validated admin request: every name, value, scope and id checked and normalized, nothing
/// done yet. `Debug` never shows a value.
pub enum AdminCommand {
    Set {
        kind: ScopeKind,
        scope: String,
        name: String,
        value: SecretString,
        repos: Option<Vec<String>>,
    },
    Access {
        user: String,
        name: String,
        repos: Vec<String>,
    },
    Delete {
        kind: ScopeKind,
        scope: String,
        name: String,
    },
    List {
        kind: ScopeKind,
        scope: String,
    },
    Plan {
        user: String,
        repo: String,
    },
    CreateSandbox {
        user: String,
        repo: String,
    },
    ListSandboxes,
    DeleteSandbox {
        id: String,
    },
    KeyStatus,
    KeyRotate,
    Backup {
        path: std::path::PathBuf,
    },
}

impl std::fmt::Debug for AdminCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminCommand::Set {
                kind,
                scope,
                name,
                repos,
                ..
            } => f
                .debug_struct("Set")
                .field("kind", kind)
                .field("scope", scope)
                .field("name", name)
                .field("value", &"[redacted]")
                .field("repos", repos)
                .finish(),
            AdminCommand::Access { user, name, repos } => f
                .debug_struct("Access")
                .field("user", user)
                .field("name", name)
                .field("repos", repos)
                .finish(),
            AdminCommand::Delete { kind, scope, name } => f
                .debug_struct("Delete")
                .field("kind", kind)
                .field("scope", scope)
                .field("name", name)
                .finish(),
            AdminCommand::List { kind, scope } => f
                .debug_struct("List")
                .field("kind", kind)
                .field("scope", scope)
                .finish(),
            AdminCommand::Plan { user, repo } => f
                .debug_struct("Plan")
                .field("user", user)
                .field("repo", repo)
                .finish(),
            AdminCommand::CreateSandbox { user, repo } => f
                .debug_struct("CreateSandbox")
                .field("user", user)
                .field("repo", repo)
                .finish(),
            AdminCommand::ListSandboxes => f.write_str("ListSandboxes"),
            AdminCommand::DeleteSandbox { id } => {
                f.debug_struct("DeleteSandbox").field("id", id).finish()
            }
            AdminCommand::KeyStatus => f.write_str("KeyStatus"),
            AdminCommand::KeyRotate => f.write_str("KeyRotate"),
            AdminCommand::Backup { path } => f.debug_struct("Backup").field("path", path).finish(),
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(route: &str, body: &'a [u8]) -> Result<T, ApiError> {
    // serde's messages can quote input (a value); report only the position and the category.
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson {
        path: format!("{ADMIN_PREFIX}{route}"),
        detail: format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        )
        .to_lowercase(),
    })
}

/// Decodes and validates the body of admin `route` (one of [`ROUTES`]) without touching the
/// store: the pure half of every admin request, and the fuzzing entry point. Any input gives
/// either a command or an error naming what was wrong; it never panics and its errors never
/// quote a value.
pub fn parse_admin(route: &str, body: &[u8]) -> Result<AdminCommand, ApiError> {
    match route {
        "secrets/set" => {
            let req: SetRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            let name = protocol::normalize_name(&req.name, req.allow_dangerous)?;
            let value = protocol::check_value(req.value.expose_secret().as_bytes())?;
            let repos = match (&kind, &req.repos) {
                (ScopeKind::Repo, Some(_)) => return Err(ApiError::ReposOnRepoSecret),
                (_, Some(r)) => Some(normalize_repos(r)?),
                (_, None) => None,
            };
            Ok(AdminCommand::Set {
                kind,
                scope,
                name,
                value: SecretString::from(value.to_owned()),
                repos,
            })
        }
        "secrets/access" => {
            let req: AccessRequest = parse(route, body)?;
            let user = protocol::normalize_user(&req.user)?;
            // Dangerous names may exist (set with the flag); access changes do not re-judge them.
            let name = protocol::normalize_name(&req.name, true)?;
            let repos = normalize_repos(&req.repos)?;
            Ok(AdminCommand::Access { user, name, repos })
        }
        "secrets/delete" => {
            let req: ScopeRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            let name = protocol::normalize_name(&req.name, true)?;
            Ok(AdminCommand::Delete { kind, scope, name })
        }
        "secrets/list" => {
            let req: ScopeRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            Ok(AdminCommand::List { kind, scope })
        }
        "plan" | "sandboxes/create" => {
            let req: UserRepoRequest = parse(route, body)?;
            let user = protocol::normalize_user(&req.user)?;
            let repo = protocol::normalize_repo(&req.repo)?;
            Ok(if route == "plan" {
                AdminCommand::Plan { user, repo }
            } else {
                AdminCommand::CreateSandbox { user, repo }
            })
        }
        "sandboxes/list" => Ok(AdminCommand::ListSandboxes),
        "key/status" => Ok(AdminCommand::KeyStatus),
        "key/rotate" => Ok(AdminCommand::KeyRotate),
        "store/backup" => {
            let req: BackupRequest = parse(route, body)?;
            let path = std::path::PathBuf::from(&req.path);
            if !path.is_absolute() {
                return Err(ApiError::BackupPath(req.path));
            }
            Ok(AdminCommand::Backup { path })
        }
        "sandboxes/delete" => {
            let req: IdRequest = parse(route, body)?;
            let id = super::sandboxes::check_id(&req.id)?.to_owned();
            Ok(AdminCommand::DeleteSandbox { id })
        }
        other => Err(ApiError::NoRoute(shown(&format!("{ADMIN_PREFIX}{other}")))),
    }
}

/// Normalizes exactly one of a user and a repository.
fn one_scope(
    user: &Option<String>,
    repo: &Option<String>,
) -> Result<(ScopeKind, String), ApiError> {
    match (user, repo) {
        (Some(u), None) => Ok((ScopeKind::User, protocol::normalize_user(u)?)),
        (None, Some(r)) => Ok((ScopeKind::Repo, protocol::normalize_repo(r)?)),
        _ => Err(ApiError::OneScope),
    }
}

/// Most repositories one user secret may list.
pub const MAX_REPOS_PER_SECRET: usize = 1000;

/// Normalizes a list of repositories, dropping duplicates, keeping order; at most
/// [`MAX_REPOS_PER_SECRET`] entries (counted before duplicates are dropped).
pub fn normalize_repos(repos: &[String]) -> Result<Vec<String>, ApiError> {
    if repos.len() > MAX_REPOS_PER_SECRET {
        return Err(ApiError::TooManyRepos(repos.len()));
    }
    let mut seen = std::collections::HashSet::with_capacity(repos.len());
    let mut out: Vec<String> = Vec::with_capacity(repos.len());
    for r in repos {
        let r = protocol::normalize_repo(r)?;
        if seen.insert(r.clone()) {
            out.push(r);
        }
    }
    Ok(out)
}

fn sandbox_info(daemon: &Daemon, row: SandboxRow) -> SandboxInfo {
    let dir = daemon
        .layout()
        .sandbox_dir(&row.id)
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    SandboxInfo {
        id: row.id,
        user: row.user,
        repository: row.repo,
        created: row.created,
        dir,
    }
}

/// Carries out a validated admin command for `uid` and builds its answer.
fn run_admin(
    daemon: &Arc<Daemon>,
    uid: u32,
    command: AdminCommand,
) -> Result<Response<SecretBody>, ApiError> {
    let store = daemon.store();
    match command {
        AdminCommand::Set {
            kind,
            scope,
            name,
            value,
            repos,
        } => {
            let created = store.set_secret(kind, &scope, &name, value.expose_secret(), repos)?;
            let result = if created { "created" } else { "updated" };
            audit::admin_change(
                uid,
                result,
                &format!("{} secret {name} of {scope}", kind.as_str()),
            );
            Ok(ok_json(&ChangeAnswer {
                name,
                scope: kind,
                owner: scope,
                result: result.into(),
            }))
        }
        AdminCommand::Access { user, name, repos } => {
            let shown = repos.join(",");
            store.set_access(&user, &name, repos)?;
            audit::admin_change(
                uid,
                "access",
                &format!("user secret {name} of {user} -> [{shown}]"),
            );
            Ok(ok_json(&ChangeAnswer {
                name,
                scope: ScopeKind::User,
                owner: user,
                result: "access".into(),
            }))
        }
        AdminCommand::Delete { kind, scope, name } => {
            store.delete_secret(kind, &scope, &name)?;
            audit::admin_change(
                uid,
                "deleted",
                &format!("{} secret {name} of {scope}", kind.as_str()),
            );
            Ok(ok_json(&ChangeAnswer {
                name,
                scope: kind,
                owner: scope,
                result: "deleted".into(),
            }))
        }
        AdminCommand::List { kind, scope } => Ok(ok_json(&ListAnswer {
            secrets: store.list(kind, &scope),
        })),
        AdminCommand::Plan { user, repo } => {
            let secrets = store.plan(&user, &repo);
            Ok(ok_json(&PlanAnswer {
                user,
                repository: repo,
                secrets,
            }))
        }
        AdminCommand::CreateSandbox { user, repo } => {
            let row = daemon.create_sandbox(&user, &repo)?;
            audit::admin_change(
                uid,
                "sandbox-created",
                &format!("{} for {user} on {repo}", row.id),
            );
            Ok(ok_json(&sandbox_info(daemon, row)))
        }
        AdminCommand::ListSandboxes => Ok(ok_json(&SandboxList {
            sandboxes: store
                .sandboxes()
                .into_iter()
                .map(|r| sandbox_info(daemon, r))
                .collect(),
        })),
        AdminCommand::DeleteSandbox { id } => {
            let row = daemon.delete_sandbox(&id)?;
            audit::admin_change(uid, "sandbox-deleted", &row.id);
            Ok(ok_json(&sandbox_info(daemon, row)))
        }
        AdminCommand::KeyStatus => Ok(ok_json(&store.key_status())),
        AdminCommand::KeyRotate => {
            let previous = store.key_status().active;
            let key_id = store.rotate_key()?;
            audit::admin_change(uid, "key-rotated", &format!("{previous} -> {key_id}"));
            Ok(ok_json(&KeyRotateAnswer { previous, key_id }))
        }
        AdminCommand::Backup { path } => {
            let generation = store.backup(&path)?;
            let shown = path.display().to_string();
            audit::admin_change(
                uid,
                "backup",
                &format!("generation {generation} to {shown}"),
            );
            Ok(ok_json(&BackupAnswer {
                path: shown,
                generation,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(generation: u64, text: &str) -> CachedAnswer {
        CachedAnswer {
            generation,
            body: Arc::new(Zeroizing::new(text.as_bytes().to_vec())),
            repository: "o/r".into(),
            count: 1,
            names: "N".into(),
        }
    }

    #[test]
    fn a_change_empties_the_answer_cache_and_old_answers_are_refused() {
        let cache = AnswerCache::default();
        cache.sync(5);
        assert!(cache.put("a", answer(5, "A")));
        assert!(cache.put("b", answer(5, "B")));
        assert!(!cache.put("c", answer(4, "C")), "an older generation");
        assert!(
            !cache.put("c", answer(6, "C")),
            "a generation not synced yet"
        );
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a", 5).is_some());
        // A change to anything (here: any generation move) drops every sandbox's answer.
        cache.sync(6);
        assert!(cache.is_empty());
        assert!(cache.get("b", 5).is_none());
        assert!(!cache.put("a", answer(5, "A")));
        assert!(cache.is_empty());
        assert!(cache.put("a", answer(6, "A")));
        // A sync at the same generation (a read-only admin command) keeps what is there.
        cache.sync(6);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_answer_built_before_its_sandbox_was_deleted_is_never_kept() {
        use crate::broker::store::{SandboxRow, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = crate::broker::sandboxes::new_id().unwrap();
        store
            .add_sandbox(SandboxRow {
                id: id.clone(),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 0,
            })
            .unwrap();
        store
            .set_secret(ScopeKind::Repo, "o/r", "N", "cache-VALUE-1", None)
            .unwrap();
        let cache = AnswerCache::default();
        cache.sync(store.generation());
        // Two readers fetch; then the sandbox is deleted, and one put lands before the
        // daemon syncs the cache and one after.
        let early = store.fetch(&id).unwrap().generation;
        let late = store.fetch(&id).unwrap().generation;
        store.remove_sandbox(&id).unwrap();
        assert!(cache.put(&id, answer(early, "cache-VALUE-1")));
        cache.sync(store.generation());
        assert!(
            cache.is_empty(),
            "the delete dropped the answer put before it was synced"
        );
        assert!(!cache.put(&id, answer(late, "cache-VALUE-1")));
        assert!(cache.is_empty());
        assert!(cache.get(&id, store.generation()).is_none());
        // Deleting a secret, likewise, drops every other sandbox's answer.
        let other = crate::broker::sandboxes::new_id().unwrap();
        store
            .add_sandbox(SandboxRow {
                id: other.clone(),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 0,
            })
            .unwrap();
        cache.sync(store.generation());
        assert!(cache.put(&other, answer(store.fetch(&other).unwrap().generation, "v")));
        store.delete_secret(ScopeKind::Repo, "o/r", "N").unwrap();
        cache.sync(store.generation());
        assert!(cache.is_empty());
    }

    #[test]
    fn json_errors_never_quote_the_input() {
        let body = br#"{"name":"A","repo":"o/r","value":12345678901234567890123}"#;
        let e = parse::<SetRequest>("secrets/set", body)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("1234567890"), "{e}");
        let body = br#"{"name":"A","repo":"o/r","value":"hunter2","bogus":"hunter2"#;
        let e = parse::<SetRequest>("secrets/set", body)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

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
    }

    #[test]
    fn repos_are_normalized_and_deduplicated() {
        let got = normalize_repos(&["O/R".into(), "o/r".into(), "a/b".into()]).unwrap();
        assert_eq!(got, ["o/r", "a/b"]);
        assert!(normalize_repos(&["bad".into()]).is_err());
    }

    #[test]
    fn set_request_debug_is_redacted() {
        let r: SetRequest =
            serde_json::from_str(r#"{"name":"A","repo":"o/r","value":"hunter2"}"#).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
