//! The platform API (`serve --http ADDR`): GitHub-REST-like JSON routes over TCP for platforms
//! and for users' own tools, each authenticated by a Bearer token and authorised against the
//! token's scope. Values go in, never out. Every operation builds the same [`AdminCommand`] the
//! admin socket builds and runs it through [`admin::carry_out`]: one implementation of each. A
//! token that may not see a secret gets the very `404` a missing secret gets (no existence
//! oracle). Failed authentications are rate-limited per client address. The settings page
//! (`broker::web`) calls the operations here, as its own caller. No error, log line or answer
//! here holds a value or a token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use zeroize::Zeroize;

use super::admin::{self, Actor, AdminCommand, Answer};
use super::{chain, ApiError, MAX_ADMIN_BODY};
use crate::broker::admin::{ChangeAnswer, SandboxInfo};
use crate::broker::daemon::Daemon;
use crate::broker::sandboxes;
use crate::broker::store::tokens::{AuthError, TokenScope};
use crate::broker::store::{ScopeKind, SecretInfo, StoreError};
use crate::protocol;

/// Failed authentications one client address may make per [`FAIL_WINDOW`]; past it, `429`.
pub const MAX_AUTH_FAILURES: u32 = 10;
/// The window [`MAX_AUTH_FAILURES`] is counted over.
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// Requests served at once; more wait.
pub const MAX_CONCURRENT: usize = 256;
/// Time a request has to be answered, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who made a request: the token's id (for audit lines) and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: String,
    pub scope: TokenScope,
}

impl Caller {
    fn actor(&self) -> Actor {
        Actor::Token(self.token_id.clone())
    }
    /// Whether this caller may see and change `user`'s secrets.
    pub fn sees_user(&self, user: &str) -> bool {
        match &self.scope {
            TokenScope::Platform => true,
            TokenScope::User(u) => u == user,
            TokenScope::RepoAdmin(_) => false,
        }
    }
    /// Whether this caller may see and change `repo`'s secrets.
    pub fn sees_repo(&self, repo: &str) -> bool {
        match &self.scope {
            TokenScope::Platform => true,
            TokenScope::RepoAdmin(r) => r == repo,
            TokenScope::User(_) => false,
        }
    }
}

/// Counts failed authentications per client address.
#[derive(Default)]
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    /// `Err(wait)` while `ip` is over its budget.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&ip) {
            Some((n, since)) if *n >= MAX_AUTH_FAILURES && now < *since + FAIL_WINDOW => {
                Err(*since + FAIL_WINDOW - now)
            }
            _ => Ok(()),
        }
    }
    /// Counts one failure of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (_, since)| now < *since + FAIL_WINDOW);
        }
        let e = seen.entry(ip).or_insert((0, now));
        if now >= e.1 + FAIL_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }
}

/// The state every route shares.
pub struct Platform {
    pub daemon: Arc<Daemon>,
    pub failures: FailureLimiter,
    pub web: crate::broker::web::Sessions,
    /// Served over TLS: cookies get `Secure`.
    pub tls: bool,
    /// Held across the read and the write of a one-repository change, so two of them never lose
    /// each other's repository.
    pub list_edits: tokio::sync::Mutex<()>,
}

pub type Shared = Arc<Platform>;

/// A refusal of the platform API: `{"error", "rule"}` with its status.
#[derive(Debug)]
pub enum PlatformError {
    Api(ApiError),
    /// No or a bad `Authorization` header, or an unknown, revoked or expired token.
    Unauthorized(String),
    /// Too many failed authentications from this address.
    RateLimited(Duration),
    /// The token is valid but this route is not for its kind (sandboxes need a platform token).
    Scope(&'static str),
    /// A secret or scope the token may not see: answered exactly like a missing one.
    Hidden(String),
}

impl From<ApiError> for PlatformError {
    fn from(e: ApiError) -> Self {
        PlatformError::Api(e)
    }
}

/// The body of every refusal.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    pub error: String,
    pub rule: String,
}

impl PlatformError {
    pub fn status(&self) -> StatusCode {
        match self {
            PlatformError::Api(e) => e.status(),
            PlatformError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            PlatformError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            PlatformError::Scope(_) => StatusCode::FORBIDDEN,
            PlatformError::Hidden(_) => StatusCode::NOT_FOUND,
        }
    }
    pub fn rule(&self) -> &'static str {
        match self {
            PlatformError::Api(e) => e.rule(),
            PlatformError::Unauthorized(_) => "token",
            PlatformError::RateLimited(_) => "auth-rate",
            PlatformError::Scope(_) => "token-scope",
            PlatformError::Hidden(_) => "not-found",
        }
    }
    pub fn message(&self) -> String {
        match self {
            PlatformError::Api(e) => chain(e),
            PlatformError::Unauthorized(m) | PlatformError::Hidden(m) => m.clone(),
            PlatformError::RateLimited(wait) => format!(
                "too many failed authentications from this address; try again in {} s",
                wait.as_secs().max(1)
            ),
            PlatformError::Scope(m) => (*m).to_owned(),
        }
    }
}

impl IntoResponse for PlatformError {
    fn into_response(self) -> Response {
        let body = ErrorOut {
            error: self.message(),
            rule: self.rule().to_owned(),
        };
        let mut r = (self.status(), json_bytes(&body)).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            PlatformError::Unauthorized(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sandbox-secrets\""),
                );
            }
            PlatformError::RateLimited(wait) => {
                if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        r
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `200` (or `status`) with a JSON body.
fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        json_bytes(v),
    )
        .into_response()
}

// ---------- authentication ----------

/// Checks the `Authorization: Bearer` header of a request from `peer`.
pub fn authenticate(
    p: &Platform,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Caller, PlatformError> {
    let now = Instant::now();
    p.failures
        .check(peer, now)
        .map_err(PlatformError::RateLimited)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        p.failures.failed(peer, now);
        crate::broker::audit::api_refused(&peer.to_string(), "no bearer token");
        return Err(PlatformError::Unauthorized(
            "give a token: Authorization: Bearer <token> (sandbox-secrets token create)".into(),
        ));
    };
    match p.daemon.store().authenticate(token) {
        Ok((token_id, scope)) => Ok(Caller { token_id, scope }),
        Err(e) => {
            p.failures.failed(peer, now);
            let reason = match &e {
                AuthError::Unknown => "unknown or revoked token".to_owned(),
                AuthError::Expired { id } => format!("expired token {id}"),
            };
            crate::broker::audit::api_refused(&peer.to_string(), &reason);
            Err(PlatformError::Unauthorized(e.to_string()))
        }
    }
}

// ---------- operations: one per route, shared with the settings page ----------

/// What a refused look at another scope's secret says: the same as a missing one.
fn hidden_secret(kind: ScopeKind, scope: &str, name: &str) -> PlatformError {
    PlatformError::Api(ApiError::Store(StoreError::NotFound {
        kind,
        scope: scope.to_owned(),
        name: name.to_owned(),
    }))
}

fn hidden_scope(kind: ScopeKind, scope: &str) -> PlatformError {
    PlatformError::Hidden(format!("no {} {scope}", kind.noun()))
}

/// A user from a path, normalized; a user this caller may not see is hidden.
fn user_in_reach(c: &Caller, raw: &str) -> Result<String, PlatformError> {
    let user = protocol::normalize_user(raw).map_err(ApiError::from)?;
    if !c.sees_user(&user) {
        return Err(hidden_scope(ScopeKind::User, &user));
    }
    Ok(user)
}

/// A repository from a path, normalized; one this caller may not see is hidden.
fn repo_in_reach(c: &Caller, owner: &str, name: &str) -> Result<String, PlatformError> {
    let repo = protocol::normalize_repo(&format!("{owner}/{name}")).map_err(ApiError::from)?;
    if !c.sees_repo(&repo) {
        return Err(hidden_scope(ScopeKind::Repo, &repo));
    }
    Ok(repo)
}

fn secret_name(raw: &str) -> Result<String, PlatformError> {
    // Existing dangerous names (set through the admin socket) can be read and deleted.
    Ok(protocol::normalize_name(raw, true).map_err(ApiError::from)?)
}

async fn run(p: &Platform, c: &Caller, command: AdminCommand) -> Result<Answer, PlatformError> {
    Ok(admin::carry_out(&p.daemon, c.actor(), command).await?)
}

fn change(a: Answer) -> ChangeAnswer {
    match a {
        Answer::Change(c) => c,
        other => unreachable!("a change answers a change, not {other:?}"),
    }
}

/// The secrets of `kind` `scope` (already in reach).
pub async fn list(
    p: &Platform,
    c: &Caller,
    kind: ScopeKind,
    scope: &str,
) -> Result<Vec<SecretInfo>, PlatformError> {
    match run(
        p,
        c,
        AdminCommand::List {
            kind,
            scope: scope.to_owned(),
        },
    )
    .await?
    {
        Answer::List(l) => Ok(l.secrets),
        other => unreachable!("list answers a list, not {other:?}"),
    }
}

/// One secret's metadata, or the `404` of a missing one.
pub async fn one(
    p: &Platform,
    c: &Caller,
    kind: ScopeKind,
    scope: &str,
    name: &str,
) -> Result<SecretInfo, PlatformError> {
    list(p, c, kind, scope)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| hidden_secret(kind, scope, name))
}

/// Creates or updates a secret. For a user secret, `value: None` changes only the repositories.
pub async fn put_secret(
    p: &Platform,
    c: &Caller,
    kind: ScopeKind,
    scope: &str,
    name: &str,
    value: Option<&SecretString>,
    repos: Option<&[String]>,
) -> Result<ChangeAnswer, PlatformError> {
    let command = match (value, kind, repos) {
        (Some(v), _, _) => admin::set_command(kind, scope, name, v, repos, false)?,
        (None, ScopeKind::User, Some(r)) => AdminCommand::Access {
            user: scope.to_owned(),
            name: protocol::normalize_name(name, true).map_err(ApiError::from)?,
            repos: admin::normalize_repos(r)?,
        },
        (None, _, _) => {
            return Err(ApiError::BadJson {
                path: format!("secret {name}"),
                detail: match kind {
                    ScopeKind::User => "give \"value\", \"repositories\" or both".to_owned(),
                    ScopeKind::Repo => "give \"value\"".to_owned(),
                },
            }
            .into())
        }
    };
    Ok(change(run(p, c, command).await?))
}

/// Deletes a secret.
pub async fn delete_secret(
    p: &Platform,
    c: &Caller,
    kind: ScopeKind,
    scope: &str,
    name: &str,
) -> Result<ChangeAnswer, PlatformError> {
    let command = AdminCommand::Delete {
        kind,
        scope: scope.to_owned(),
        name: secret_name(name)?,
    };
    Ok(change(run(p, c, command).await?))
}

/// Adds (`add`) or removes one repository of a user secret's list.
pub async fn toggle_repo(
    p: &Platform,
    c: &Caller,
    user: &str,
    name: &str,
    repo: &str,
    add: bool,
) -> Result<ChangeAnswer, PlatformError> {
    let _edit = p.list_edits.lock().await;
    let current = one(p, c, ScopeKind::User, user, name).await?;
    let mut repos = current.repos;
    repos.retain(|r| r != repo);
    if add {
        repos.push(repo.to_owned());
    }
    put_secret(p, c, ScopeKind::User, user, name, None, Some(&repos)).await
}

// ---------- request and answer bodies ----------

/// A secret as the API shows it: never its value.
#[derive(Serialize, ToSchema)]
pub struct SecretOut {
    pub name: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// For a user secret: the repositories that may read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<String>>,
}

impl SecretOut {
    fn new(s: SecretInfo) -> Self {
        SecretOut {
            name: s.name,
            updated_at: rfc3339(s.updated),
            repositories: (s.scope == ScopeKind::User).then_some(s.repos),
        }
    }
}

fn rfc3339(secs: i64) -> String {
    crate::broker::cli::table::utc(secs)
}

#[derive(Serialize, ToSchema)]
pub struct SecretsOut {
    pub total_count: usize,
    pub secrets: Vec<SecretOut>,
}

#[derive(Serialize, ToSchema)]
pub struct RepositoryOut {
    pub full_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct RepositoriesOut {
    pub total_count: usize,
    pub repositories: Vec<RepositoryOut>,
}

/// What a change did: how many live sandboxes see it, how many of them were watching, and how
/// many of those restart their command on a change.
#[derive(Serialize, ToSchema)]
pub struct ChangeOut {
    pub name: String,
    /// `created`, `updated`, `access` or `deleted`.
    pub result: String,
    pub sandboxes: usize,
    pub watching: usize,
    pub restarting: usize,
}

impl ChangeOut {
    fn new(a: ChangeAnswer) -> Self {
        ChangeOut {
            name: a.name,
            result: a.result,
            sandboxes: a.sandboxes.len(),
            watching: a.watching.len(),
            restarting: a.restarting.len(),
        }
    }
}

fn changed(a: ChangeAnswer) -> Response {
    let status = if a.result == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &ChangeOut::new(a))
}

/// `PUT /v1/users/{user}/secrets/{name}`. The value is zeroized once used.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUserSecret {
    #[schema(value_type = Option<String>)]
    #[serde(default, deserialize_with = "opt_secret")]
    pub value: Option<SecretString>,
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
}

/// `PUT /v1/repos/{owner}/{repo}/secrets/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRepoSecret {
    #[schema(value_type = String)]
    #[serde(deserialize_with = "secret")]
    pub value: SecretString,
    /// Refused (rule `repositories-on-repository-secret`): every sandbox of the repository
    /// reads its secrets.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
}

/// `PUT /v1/users/{user}/secrets/{name}/repositories`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRepositories {
    pub repositories: Vec<String>,
}

/// `POST /v1/sandboxes`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSandbox {
    pub user: String,
    pub repo: String,
}

#[derive(Serialize, ToSchema)]
pub struct SandboxOut {
    pub id: String,
    pub user: String,
    pub repository: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The directory to bind-mount at `/run/sandbox`.
    pub dir: String,
}

impl From<SandboxInfo> for SandboxOut {
    fn from(s: SandboxInfo) -> Self {
        SandboxOut {
            id: s.id,
            user: s.user,
            repository: s.repository,
            created: s.created,
            dir: s.dir,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SandboxesOut {
    pub total_count: usize,
    pub sandboxes: Vec<SandboxOut>,
}

#[derive(Serialize, ToSchema)]
pub struct PlanEntryOut {
    pub name: String,
    /// `user` or `repository`.
    pub from: String,
    pub overrides_repository: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PlanOut {
    pub user: String,
    pub repository: String,
    pub secrets: Vec<PlanEntryOut>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct PlanQuery {
    pub user: String,
    pub repo: String,
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}
fn opt_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(SecretString::from))
}

/// Decodes a JSON body, then zeroes the bytes it came in. serde's messages can quote input (a
/// value): the error names only the position and the category.
fn body<T: for<'a> Deserialize<'a>>(what: &str, raw: Bytes) -> Result<T, PlatformError> {
    let parsed = serde_json::from_slice(&raw).map_err(|e| ApiError::bad_json(what, &e));
    if let Ok(mut owned) = raw.try_into_mut() {
        owned.as_mut().zeroize();
    }
    Ok(parsed?)
}

// ---------- handlers ----------

/// The client's address, from a plain or a TLS listener (set by [`serve_on`] on every request).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

type Peer = ConnectInfo<PeerAddr>;
type Res = Result<Response, PlatformError>;

/// Every route but health and the page: the caller its bearer token authenticates.
impl FromRequestParts<Shared> for Caller {
    type Rejection = PlatformError;

    async fn from_request_parts(parts: &mut Parts, p: &Shared) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .map(|c| c.0 .0.ip())
            .expect("serve_on sets every request's peer address");
        // After a shared store's connection came back, a token revoked meanwhile is revoked
        // here too before anything is authenticated (the tokens are read before the store).
        p.daemon.reread().await;
        authenticate(p, &parts.headers, peer)
    }
}

/// A route of the sandboxes: a caller with a platform token.
struct PlatformCaller(Caller);

impl FromRequestParts<Shared> for PlatformCaller {
    type Rejection = PlatformError;

    async fn from_request_parts(parts: &mut Parts, p: &Shared) -> Result<Self, Self::Rejection> {
        let c = Caller::from_request_parts(parts, p).await?;
        match c.scope {
            TokenScope::Platform => Ok(PlatformCaller(c)),
            _ => Err(PlatformError::Scope(
                "sandboxes are managed with a platform token (token create --platform)",
            )),
        }
    }
}

/// `/v1/users/{user}/secrets/{name}...`: the caller, a user in its reach and a valid name; a
/// user out of reach gets the very 404 a missing secret gets.
struct UserSecret {
    c: Caller,
    user: String,
    name: String,
}

impl FromRequestParts<Shared> for UserSecret {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, p: &Shared) -> Result<Self, Self::Rejection> {
        let c = Caller::from_request_parts(parts, p)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(segments) = Path::<Vec<String>>::from_request_parts(parts, p)
            .await
            .map_err(IntoResponse::into_response)?;
        let (user, name) = (&segments[0], &segments[1]);
        let scoped = secret_name(name).and_then(|name| {
            let user =
                user_in_reach(&c, user).map_err(|_| hidden_secret(ScopeKind::User, user, &name))?;
            Ok((user, name))
        });
        let (user, name) = scoped.map_err(IntoResponse::into_response)?;
        Ok(UserSecret { c, user, name })
    }
}

/// `/v1/repos/{owner}/{repo}/secrets/{name}`: the caller, a repository in its reach and a valid
/// name; a repository out of reach gets the very 404 a missing secret gets.
struct RepoSecret {
    c: Caller,
    repo: String,
    name: String,
}

impl FromRequestParts<Shared> for RepoSecret {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, p: &Shared) -> Result<Self, Self::Rejection> {
        let c = Caller::from_request_parts(parts, p)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path((owner, repo, name)) =
            Path::<(String, String, String)>::from_request_parts(parts, p)
                .await
                .map_err(IntoResponse::into_response)?;
        let scoped = secret_name(&name)
            .and_then(|name| Ok((repo_for_secret(&c, &owner, &repo, &name)?, name)));
        let (repo, name) = scoped.map_err(IntoResponse::into_response)?;
        Ok(RepoSecret { c, repo, name })
    }
}

#[utoipa::path(get, path = "/v1/users/{user}/secrets", tag = "user secrets",
    params(("user" = String, Path)),
    responses((status = 200, body = SecretsOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_list(State(p): State<Shared>, c: Caller, Path(user): Path<String>) -> Res {
    let user = user_in_reach(&c, &user)?;
    let secrets: Vec<SecretOut> = list(&p, &c, ScopeKind::User, &user)
        .await?
        .into_iter()
        .map(SecretOut::new)
        .collect();
    Ok(json(
        StatusCode::OK,
        &SecretsOut {
            total_count: secrets.len(),
            secrets,
        },
    ))
}

#[utoipa::path(get, path = "/v1/users/{user}/secrets/{name}", tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_get(State(p): State<Shared>, UserSecret { c, user, name }: UserSecret) -> Res {
    let s = one(&p, &c, ScopeKind::User, &user, &name).await?;
    Ok(json(StatusCode::OK, &SecretOut::new(s)))
}

#[utoipa::path(put, path = "/v1/users/{user}/secrets/{name}", tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path)),
    request_body = PutUserSecret,
    responses((status = 201, body = ChangeOut), (status = 200, body = ChangeOut),
        (status = 400, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_put(
    State(p): State<Shared>,
    c: Caller,
    Path((user, name)): Path<(String, String)>,
    raw: Bytes,
) -> Res {
    let user = user_in_reach(&c, &user).map_err(|e| match e {
        PlatformError::Hidden(_) => {
            hidden_secret(ScopeKind::User, &user, &name.to_ascii_uppercase())
        }
        e => e,
    })?;
    let req: PutUserSecret = body("PUT user secret", raw)?;
    let a = put_secret(
        &p,
        &c,
        ScopeKind::User,
        &user,
        &name,
        req.value.as_ref(),
        req.repositories.as_deref(),
    )
    .await?;
    Ok(changed(a))
}

#[utoipa::path(delete, path = "/v1/users/{user}/secrets/{name}", tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ChangeOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_delete(State(p): State<Shared>, UserSecret { c, user, name }: UserSecret) -> Res {
    Ok(changed(
        delete_secret(&p, &c, ScopeKind::User, &user, &name).await?,
    ))
}

#[utoipa::path(get, path = "/v1/users/{user}/secrets/{name}/repositories", tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RepositoriesOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_repos_get(State(p): State<Shared>, UserSecret { c, user, name }: UserSecret) -> Res {
    let s = one(&p, &c, ScopeKind::User, &user, &name).await?;
    let repositories: Vec<RepositoryOut> = s
        .repos
        .into_iter()
        .map(|full_name| RepositoryOut { full_name })
        .collect();
    Ok(json(
        StatusCode::OK,
        &RepositoriesOut {
            total_count: repositories.len(),
            repositories,
        },
    ))
}

#[utoipa::path(put, path = "/v1/users/{user}/secrets/{name}/repositories", tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path)),
    request_body = PutRepositories,
    responses((status = 200, body = ChangeOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_repos_put(
    State(p): State<Shared>,
    UserSecret { c, user, name }: UserSecret,
    raw: Bytes,
) -> Res {
    let req: PutRepositories = body("PUT repositories", raw)?;
    let a = put_secret(
        &p,
        &c,
        ScopeKind::User,
        &user,
        &name,
        None,
        Some(&req.repositories),
    )
    .await?;
    Ok(changed(a))
}

async fn user_repo_toggle(
    p: Shared,
    UserSecret { c, user, name }: UserSecret,
    (owner, repo): (String, String),
    add: bool,
) -> Res {
    let repo = protocol::normalize_repo(&format!("{owner}/{repo}")).map_err(ApiError::from)?;
    Ok(changed(
        toggle_repo(&p, &c, &user, &name, &repo, add).await?,
    ))
}

#[utoipa::path(put, path = "/v1/users/{user}/secrets/{name}/repositories/{owner}/{repo}",
    tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path), ("owner" = String, Path), ("repo" = String, Path)),
    responses((status = 200, body = ChangeOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_repo_add(
    State(p): State<Shared>,
    secret: UserSecret,
    Path((_, _, owner, repo)): Path<(String, String, String, String)>,
) -> Res {
    user_repo_toggle(p, secret, (owner, repo), true).await
}

#[utoipa::path(delete, path = "/v1/users/{user}/secrets/{name}/repositories/{owner}/{repo}",
    tag = "user secrets",
    params(("user" = String, Path), ("name" = String, Path), ("owner" = String, Path), ("repo" = String, Path)),
    responses((status = 200, body = ChangeOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn user_repo_remove(
    State(p): State<Shared>,
    secret: UserSecret,
    Path((_, _, owner, repo)): Path<(String, String, String, String)>,
) -> Res {
    user_repo_toggle(p, secret, (owner, repo), false).await
}

#[utoipa::path(get, path = "/v1/repos/{owner}/{repo}/secrets", tag = "repository secrets",
    params(("owner" = String, Path), ("repo" = String, Path)),
    responses((status = 200, body = SecretsOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn repo_list(
    State(p): State<Shared>,
    c: Caller,
    Path((owner, repo)): Path<(String, String)>,
) -> Res {
    let repo = repo_in_reach(&c, &owner, &repo)?;
    let secrets: Vec<SecretOut> = list(&p, &c, ScopeKind::Repo, &repo)
        .await?
        .into_iter()
        .map(SecretOut::new)
        .collect();
    Ok(json(
        StatusCode::OK,
        &SecretsOut {
            total_count: secrets.len(),
            secrets,
        },
    ))
}

fn repo_for_secret(
    c: &Caller,
    owner: &str,
    repo: &str,
    name: &str,
) -> Result<String, PlatformError> {
    repo_in_reach(c, owner, repo).map_err(|e| match e {
        PlatformError::Hidden(_) => hidden_secret(
            ScopeKind::Repo,
            &format!("{owner}/{repo}").to_ascii_lowercase(),
            &name.to_ascii_uppercase(),
        ),
        e => e,
    })
}

#[utoipa::path(get, path = "/v1/repos/{owner}/{repo}/secrets/{name}", tag = "repository secrets",
    params(("owner" = String, Path), ("repo" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn repo_get(State(p): State<Shared>, RepoSecret { c, repo, name }: RepoSecret) -> Res {
    let s = one(&p, &c, ScopeKind::Repo, &repo, &name).await?;
    Ok(json(StatusCode::OK, &SecretOut::new(s)))
}

#[utoipa::path(put, path = "/v1/repos/{owner}/{repo}/secrets/{name}", tag = "repository secrets",
    params(("owner" = String, Path), ("repo" = String, Path), ("name" = String, Path)),
    request_body = PutRepoSecret,
    responses((status = 201, body = ChangeOut), (status = 200, body = ChangeOut),
        (status = 400, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)),
    security(("bearer" = [])))]
async fn repo_put(
    State(p): State<Shared>,
    c: Caller,
    Path((owner, repo, name)): Path<(String, String, String)>,
    raw: Bytes,
) -> Res {
    let repo = repo_for_secret(&c, &owner, &repo, &name)?;
    let req: PutRepoSecret = body("PUT repository secret", raw)?;
    let a = put_secret(
        &p,
        &c,
        ScopeKind::Repo,
        &repo,
        &name,
        Some(&req.value),
        req.repositories.as_deref(),
    )
    .await?;
    Ok(changed(a))
}

#[utoipa::path(delete, path = "/v1/repos/{owner}/{repo}/secrets/{name}", tag = "repository secrets",
    params(("owner" = String, Path), ("repo" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ChangeOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn repo_delete(State(p): State<Shared>, RepoSecret { c, repo, name }: RepoSecret) -> Res {
    Ok(changed(
        delete_secret(&p, &c, ScopeKind::Repo, &repo, &name).await?,
    ))
}

#[utoipa::path(get, path = "/v1/plan", tag = "sandboxes",
    params(PlanQuery),
    responses((status = 200, body = PlanOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn plan(
    State(p): State<Shared>,
    c: Caller,
    q: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Res {
    let Ok(Query(q)) = q else {
        return Err(ApiError::BadJson {
            path: "/v1/plan".into(),
            detail: "give ?user=U&repo=owner/name".into(),
        }
        .into());
    };
    let user = user_in_reach(&c, &q.user)?;
    let repo = protocol::normalize_repo(&q.repo).map_err(ApiError::from)?;
    match run(&p, &c, AdminCommand::Plan { user, repo }).await? {
        Answer::Plan(a) => Ok(json(
            StatusCode::OK,
            &PlanOut {
                user: a.user,
                repository: a.repository,
                secrets: a
                    .secrets
                    .into_iter()
                    .map(|e| PlanEntryOut {
                        name: e.name,
                        from: match e.from {
                            crate::broker::acl::Level::User => "user".into(),
                            crate::broker::acl::Level::Repository => "repository".into(),
                        },
                        overrides_repository: e.overrides_repository,
                    })
                    .collect(),
            },
        )),
        other => unreachable!("plan answers a plan, not {other:?}"),
    }
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = NewSandbox,
    responses((status = 201, body = SandboxOut), (status = 403, body = ErrorOut)),
    security(("bearer" = [])))]
async fn sandbox_create(
    State(p): State<Shared>,
    PlatformCaller(c): PlatformCaller,
    raw: Bytes,
) -> Res {
    let req: NewSandbox = body("POST /v1/sandboxes", raw)?;
    let user = protocol::normalize_user(&req.user).map_err(ApiError::from)?;
    let repo = protocol::normalize_repo(&req.repo).map_err(ApiError::from)?;
    match run(&p, &c, AdminCommand::CreateSandbox { user, repo }).await? {
        Answer::Sandbox(s) => Ok(json(StatusCode::CREATED, &SandboxOut::from(s))),
        other => unreachable!("create answers a sandbox, not {other:?}"),
    }
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, body = SandboxesOut), (status = 403, body = ErrorOut)),
    security(("bearer" = [])))]
async fn sandbox_list(State(p): State<Shared>, PlatformCaller(c): PlatformCaller) -> Res {
    match run(&p, &c, AdminCommand::ListSandboxes).await? {
        Answer::Sandboxes(l) => {
            let sandboxes: Vec<SandboxOut> =
                l.sandboxes.into_iter().map(SandboxOut::from).collect();
            Ok(json(
                StatusCode::OK,
                &SandboxesOut {
                    total_count: sandboxes.len(),
                    sandboxes,
                },
            ))
        }
        other => unreachable!("list answers sandboxes, not {other:?}"),
    }
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)),
    security(("bearer" = [])))]
async fn sandbox_delete(
    State(p): State<Shared>,
    PlatformCaller(c): PlatformCaller,
    Path(id): Path<String>,
) -> Res {
    let id = sandboxes::check_id(&id).map_err(ApiError::from)?.to_owned();
    match run(&p, &c, AdminCommand::DeleteSandbox { id }).await? {
        Answer::Sandbox(s) => Ok(json(StatusCode::OK, &SandboxOut::from(s))),
        other => unreachable!("delete answers a sandbox, not {other:?}"),
    }
}

/// `GET /v1/health` on the network: what a load balancer's probe needs, without a token. Only
/// the status and the version: the admin socket's answer also counts live sandboxes and shows
/// the store's generation, which would tell anyone who reaches the port how busy the host is
/// and when secrets change; that stays behind the admin socket's peer check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthOut {
    /// Always `ok`: a daemon that answers is serving.
    pub status: String,
    /// The daemon's version.
    pub version: String,
}

impl From<admin::Health> for HealthOut {
    fn from(h: admin::Health) -> Self {
        HealthOut {
            status: h.status,
            version: h.version,
        }
    }
}

#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, body = HealthOut, description = "the daemon serves; no token needed")))]
async fn health(State(p): State<Shared>) -> Response {
    json(StatusCode::OK, &HealthOut::from(admin::health(&p.daemon)))
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "this document")),
    security(("bearer" = [])))]
async fn openapi(_: Caller) -> Res {
    Ok(json(StatusCode::OK, &ApiDoc::openapi()))
}

// ---------- the document and the router ----------

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of every route, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "sandbox-secrets platform API", version = "1"),
    paths(
        user_list, user_get, user_put, user_delete, user_repos_get, user_repos_put,
        user_repo_add, user_repo_remove, repo_list, repo_get, repo_put, repo_delete,
        plan, sandbox_create, sandbox_list, sandbox_delete, openapi, health
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Every route the router serves, as (method, path): the OpenAPI document must list exactly
/// these (unit test here, and `tests/platform_api.rs` against the served document).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/users/{user}/secrets"),
    ("get", "/v1/users/{user}/secrets/{name}"),
    ("put", "/v1/users/{user}/secrets/{name}"),
    ("delete", "/v1/users/{user}/secrets/{name}"),
    ("get", "/v1/users/{user}/secrets/{name}/repositories"),
    ("put", "/v1/users/{user}/secrets/{name}/repositories"),
    (
        "put",
        "/v1/users/{user}/secrets/{name}/repositories/{owner}/{repo}",
    ),
    (
        "delete",
        "/v1/users/{user}/secrets/{name}/repositories/{owner}/{repo}",
    ),
    ("get", "/v1/repos/{owner}/{repo}/secrets"),
    ("get", "/v1/repos/{owner}/{repo}/secrets/{name}"),
    ("put", "/v1/repos/{owner}/{repo}/secrets/{name}"),
    ("delete", "/v1/repos/{owner}/{repo}/secrets/{name}"),
    ("get", "/v1/plan"),
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes"),
    ("delete", "/v1/sandboxes/{id}"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/health"),
];

/// Refusals made below the routes (axum's extractors, the body limit, the timeout) come as plain
/// text or empty: on `/v1/` they become `{"error","rule"}` like every other refusal.
async fn json_refusals(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let api = req.uri().path().starts_with("/v1/");
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !api || is_json || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (error, rule) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            format!("request body is larger than {MAX_ADMIN_BODY} bytes"),
            "request-size",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            format!("the request did not complete within {REQUEST_TIMEOUT:?}"),
            "request-timeout",
        ),
        s if s.is_client_error() => (
            "the request's path, query or headers are not valid (a path segment that is not UTF-8?)"
                .to_owned(),
            "request",
        ),
        _ => (
            "the request did not complete (see the daemon's log)".to_owned(),
            "internal",
        ),
    };
    let mut out = json(
        status,
        &ErrorOut {
            error,
            rule: rule.to_owned(),
        },
    );
    for (k, v) in r.headers() {
        if k == header::ALLOW || k == header::RETRY_AFTER {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

async fn no_route(method: Method, uri: axum::http::Uri) -> PlatformError {
    PlatformError::Api(ApiError::NoRoute(format!("{method} {}", uri.path())))
}

/// The methods [`ROUTES`] serve on `path` (templates' `{x}` match one segment), for `Allow`.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut out: Vec<&'static str> = ROUTES
        .iter()
        .filter(|(_, template)| {
            let t: Vec<&str> = template.split('/').collect();
            t.len() == segs.len()
                && t.iter().zip(&segs).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        })
        .map(|(m, _)| *m)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

async fn no_method(method: Method, uri: axum::http::Uri) -> Response {
    let allow = allowed_methods(uri.path())
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = PlatformError::Api(ApiError::Method {
        method,
        path: uri.path().to_owned(),
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// The API's routes (the settings page adds its own in `broker::web`).
pub fn api_routes() -> Router<Shared> {
    Router::new()
        .route("/v1/users/{user}/secrets", get(user_list))
        .route(
            "/v1/users/{user}/secrets/{name}",
            get(user_get).put(user_put).delete(user_delete),
        )
        .route(
            "/v1/users/{user}/secrets/{name}/repositories",
            get(user_repos_get).put(user_repos_put),
        )
        .route(
            "/v1/users/{user}/secrets/{name}/repositories/{owner}/{repo}",
            put(user_repo_add).delete(user_repo_remove),
        )
        .route("/v1/repos/{owner}/{repo}/secrets", get(repo_list))
        .route(
            "/v1/repos/{owner}/{repo}/secrets/{name}",
            get(repo_get).put(repo_put).delete(repo_delete),
        )
        .route("/v1/plan", get(plan))
        .route("/v1/sandboxes", get(sandbox_list).post(sandbox_create))
        .route("/v1/sandboxes/{id}", axum::routing::delete(sandbox_delete))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/health", get(health))
}

/// The whole HTTP surface: API, settings page, limits, timeouts, tracing, no-store.
pub fn router(p: Shared) -> Router {
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::set_header::SetResponseHeaderLayer;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;
    api_routes()
        .merge(crate::broker::web::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .layer(RequestBodyLimitLayer::new(MAX_ADMIN_BODY))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(json_refusals))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .layer(TraceLayer::new_for_http())
        .with_state(p)
}

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves the platform API on `listener` until `shutdown` completes, then lets the open
/// connections finish (the caller bounds the wait); over TLS with `tls`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = daemon.config().header_timeout;
    let p = Arc::new(Platform {
        daemon,
        failures: FailureLimiter::default(),
        web: Default::default(),
        tls: tls.is_some(),
        list_edits: Default::default(),
    });
    let app = router(p);
    match tls {
        None => serve_on(listener, app, header_timeout, shutdown).await,
        Some(config) => {
            let listener = super::platform_tls::TlsListener::new(listener, config)?;
            serve_on(listener, app, header_timeout, shutdown).await
        }
    }
    Ok(())
}

/// The accept loop: a task per connection, at most [`MAX_CONNECTIONS`] at once, request headers
/// within `header_timeout` (a client that drips them is cut off), the client's address handed
/// to the routes as `ConnectInfo<PeerAddr>`, graceful shutdown.
async fn serve_on<L>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (io, peer) = tokio::select! {
            x = listener.accept() => x,
            _ = &mut shutdown => break,
        };
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
                    req
                });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(svc),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "platform API connection ended");
            }
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_routes() {
        let doc = ApiDoc::openapi();
        let mut listed: Vec<(String, String)> = Vec::new();
        let v = serde_json::to_value(&doc).unwrap();
        for (path, item) in v["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                listed.push((method.clone(), path.clone()));
            }
        }
        let mut want: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        listed.sort();
        want.sort();
        assert_eq!(listed, want);
    }

    #[test]
    fn allow_names_the_methods_of_a_path() {
        assert_eq!(
            allowed_methods("/v1/users/mona/secrets/X"),
            ["delete", "get", "put"]
        );
        assert_eq!(allowed_methods("/v1/sandboxes"), ["get", "post"]);
        assert_eq!(allowed_methods("/v1/plan"), ["get"]);
        assert!(allowed_methods("/v1/users//secrets").is_empty());
    }

    #[test]
    fn scopes_reach_only_their_own() {
        let mona = Caller {
            token_id: "a".into(),
            scope: TokenScope::User("mona".into()),
        };
        assert!(mona.sees_user("mona") && !mona.sees_user("hubot"));
        assert!(!mona.sees_repo("octo/hello"));
        let admin = Caller {
            token_id: "b".into(),
            scope: TokenScope::RepoAdmin("octo/hello".into()),
        };
        assert!(admin.sees_repo("octo/hello") && !admin.sees_repo("octo/other"));
        assert!(!admin.sees_user("mona"));
        let platform = Caller {
            token_id: "c".into(),
            scope: TokenScope::Platform,
        };
        assert!(platform.sees_user("x") && platform.sees_repo("a/b"));
    }

    #[test]
    fn failures_are_limited_per_address_and_forgotten_after_the_window() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(l.check(ip, t0).is_ok());
            l.failed(ip, t0);
        }
        assert!(l.check(ip, t0).is_err());
        assert!(l.check(other, t0).is_ok());
        assert!(l.check(ip, t0 + FAIL_WINDOW).is_ok());
    }
}
