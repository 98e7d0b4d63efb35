//! The admin surface: `POST /v1/admin/<route>` on the admin socket (peer already checked by the
//! server). Reads the body (bounded, zeroized), decodes and validates it into an
//! [`AdminCommand`] without touching the store ([`parse_admin`], the fuzzing entry point), then
//! carries it out through the daemon and the store. Request and answer types are
//! `broker::admin`'s. No error or log line here holds a value.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    ok_json, shown, ApiError, SecretBody, MAX_ADMIN_BODY, MAX_REPOS_PER_SECRET, MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
};
use crate::broker::acl::Level;
use crate::broker::admin::{
    AccessRequest, BackupAnswer, BackupRequest, ChangeAnswer, CreateSandboxRequest, DeleteRequest,
    DeleteSandboxRequest, ImportAnswer, ImportRequest, Imported, KeyRotateAnswer, ListAnswer,
    ListRequest, PlanAnswer, PlanRequest, Route, SandboxInfo, SandboxList, SetRequest,
    StatusAnswer, TokenCreateRequest, TokenCreated, TokenInfo, TokenList, TokenRevokeRequest,
};
use crate::broker::audit;
use crate::broker::daemon::{self, Daemon};
use crate::broker::sandboxes;
use crate::broker::store::tokens::TokenScope;
use crate::broker::store::{SandboxRow, ScopeKind};
use crate::protocol;

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
pub async fn answer(
    daemon: &Arc<Daemon>,
    uid: u32,
    req: Request<Incoming>,
) -> Response<SecretBody> {
    if req.uri().path() == HEALTH_PATH && req.method() == Method::GET {
        return ok_json(&health(daemon));
    }
    let route = match admin_target(req.method(), req.uri().path()) {
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
    let timeout = daemon.config().body_timeout;
    let body = match tokio::time::timeout(timeout, read_body(req.into_body())).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return e.response(),
        Err(_) => return ApiError::BodyTimeout(timeout).response(),
    };
    // Every admin command touches the filesystem (the store's files, a sandbox's directory and
    // socket) and may open and encode values: it runs on a blocking thread, so a slow disk or a
    // large plan never holds an async worker other sandboxes' fetches need.
    let command = match parse_admin(route, &body) {
        Ok(command) => command,
        Err(e) => return e.response(),
    };
    drop(body);
    match carry_out(daemon, Actor::Uid(uid), command).await {
        Ok(answer) => answer.response(),
        Err(e) => e.response(),
    }
}

/// Who asked: a uid on the admin socket, or a token (by id) of the platform API. Audit lines
/// name it; nothing else depends on it (access was decided before).
#[derive(Clone, Debug)]
pub enum Actor {
    Uid(u32),
    Token(String),
}

fn audit_change(actor: &Actor, action: &str, what: &str) {
    match actor {
        Actor::Uid(uid) => audit::admin_change(*uid, action, what),
        Actor::Token(id) => audit::api_change(id, action, what),
    }
}

/// The typed answer of one command: the admin socket sends it as it is, the platform API
/// shapes it its own way. Neither ever holds a secret value (a created token, once, is not one).
#[derive(Debug)]
pub enum Answer {
    Change(ChangeAnswer),
    Import(ImportAnswer),
    List(ListAnswer),
    Plan(PlanAnswer),
    Sandbox(SandboxInfo),
    Sandboxes(SandboxList),
    KeyStatus(crate::broker::admin::KeyStatus),
    KeyRotate(KeyRotateAnswer),
    Backup(BackupAnswer),
    TokenCreated(TokenCreated),
    Tokens(TokenList),
    Token(TokenInfo),
    Status(StatusAnswer),
}

impl Answer {
    /// The admin socket's `200` answer.
    pub fn response(&self) -> Response<SecretBody> {
        match self {
            Answer::Change(a) => ok_json(a),
            Answer::Import(a) => ok_json(a),
            Answer::List(a) => ok_json(a),
            Answer::Plan(a) => ok_json(a),
            Answer::Sandbox(a) => ok_json(a),
            Answer::Sandboxes(a) => ok_json(a),
            Answer::KeyStatus(a) => ok_json(a),
            Answer::KeyRotate(a) => ok_json(a),
            Answer::Backup(a) => ok_json(a),
            Answer::TokenCreated(a) => ok_json(a),
            Answer::Tokens(a) => ok_json(a),
            Answer::Token(a) => ok_json(a),
            Answer::Status(a) => ok_json(a),
        }
    }
}

/// Carries out a validated command for `actor`: the one implementation of every operation,
/// shared by the admin socket and the platform API. Every command touches the filesystem (the
/// store's files, a sandbox's directory and socket) and may open and encode values: it runs on
/// a blocking thread, so a slow disk or a large plan never holds an async worker other
/// sandboxes' fetches need.
pub async fn carry_out(
    daemon: &Arc<Daemon>,
    actor: Actor,
    command: AdminCommand,
) -> Result<Answer, ApiError> {
    let worker = Arc::clone(daemon);
    // Any change (or failed attempt) moved the generation: every cached answer is dropped, then
    // the watched sandboxes whose answer changed are woken (which may rebuild answers: on the
    // same blocking thread).
    let done = tokio::task::spawn_blocking(move || {
        let answer = execute(&worker, &actor, command);
        worker.answers().sync(worker.store().generation());
        worker.wake_watchers();
        answer
    })
    .await;
    match done {
        Ok(answer) => answer,
        Err(e) => {
            daemon.answers().sync(daemon.store().generation());
            tracing::error!(error = %e, "admin command did not complete");
            Err(ApiError::Incomplete)
        }
    }
}

/// The liveness probe: `GET` answers `200` with [`Health`] while the daemon serves. Reads no
/// store row and no value, so it stays cheap and answers whatever the load.
pub const HEALTH_PATH: &str = "/v1/health";

/// The answer of [`HEALTH_PATH`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// Always `ok`: a daemon that answers is serving.
    pub status: String,
    /// The daemon's version (Cargo's).
    pub version: String,
    /// Live sandboxes.
    pub sandboxes: usize,
    /// The store's current generation (changes whenever the store does).
    pub generation: u64,
}

/// The health answer, built once for both doors: the admin socket sends it whole, the platform
/// API only its [`Health::public`] part.
pub fn health(daemon: &Daemon) -> Health {
    Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sandboxes: daemon.sandbox_count(),
        generation: daemon.store().generation(),
    }
}

/// Which sandboxes a change of a secret of (kind, scope) can touch: the user's or the
/// repository's.
fn picker(kind: ScopeKind, scope: &str) -> impl Fn(&SandboxRow) -> bool {
    let scope = scope.to_owned();
    move |row: &SandboxRow| match kind {
        ScopeKind::User => row.user == scope,
        ScopeKind::Repo => row.repo == scope,
    }
}

/// After a change: the live sandboxes among `pick`'s whose answer moved since `before`, those of
/// them with a watch open, woken now, and of those the ones whose watcher restarts its command.
fn affected(
    daemon: &Daemon,
    before: &[(String, Option<Level>)],
    pick: &impl Fn(&SandboxRow) -> bool,
    name: &str,
    kind: ScopeKind,
    value_changed: bool,
) -> Affected {
    affected_names(
        daemon,
        &[(name.to_owned(), before.to_vec())],
        pick,
        kind,
        value_changed,
    )
}

/// Which level each live sandbox (by id) takes one name from, before a change.
type Sources = Vec<(String, Option<Level>)>;

/// [`affected`] for a change of several names at once (an import): the sandboxes any of them
/// reached, the watchers woken once.
fn affected_names(
    daemon: &Daemon,
    befores: &[(String, Sources)],
    pick: &impl Fn(&SandboxRow) -> bool,
    kind: ScopeKind,
    value_changed: bool,
) -> Affected {
    daemon.answers().sync(daemon.store().generation());
    let level = match kind {
        ScopeKind::User => Level::User,
        ScopeKind::Repo => Level::Repository,
    };
    let mut reached = std::collections::BTreeSet::new();
    for (name, before) in befores {
        let after = daemon.live_sources(pick, name);
        reached.extend(daemon::changed_between(
            before,
            &after,
            level,
            value_changed,
        ));
    }
    let sandboxes: Vec<String> = reached.into_iter().collect();
    let woken: Vec<daemon::Woken> = daemon
        .wake_watchers()
        .into_iter()
        .filter(|w| sandboxes.contains(&w.id))
        .collect();
    let restarting = woken
        .iter()
        .filter(|w| w.restarts)
        .map(|w| w.id.clone())
        .collect();
    Affected {
        sandboxes,
        watching: woken.into_iter().map(|w| w.id).collect(),
        restarting,
    }
}

/// Who a change reaches, each list sorted: see [`ChangeAnswer`].
struct Affected {
    sandboxes: Vec<String>,
    watching: Vec<String>,
    restarting: Vec<String>,
}

/// Checks the method and path of an admin request; returns its route. Pure.
pub fn admin_target(method: &Method, path: &str) -> Result<Route, ApiError> {
    let Some(route) = Route::from_path(path) else {
        return Err(ApiError::NoRoute(shown(path)));
    };
    if method != Route::METHOD {
        return Err(ApiError::Method {
            method: method.clone(),
            path: path.to_owned(),
        });
    }
    Ok(route)
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
    /// Entries already checked, names normalized and distinct.
    Import {
        kind: ScopeKind,
        scope: String,
        entries: Vec<(String, SecretString)>,
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
    KeyStatus,
    KeyRotate,
    Status,
    Backup {
        path: std::path::PathBuf,
    },
    DeleteSandbox {
        id: String,
    },
    TokenCreate {
        scope: TokenScope,
        /// Seconds the token stays valid.
        ttl: i64,
    },
    TokenList,
    TokenRevoke {
        id: String,
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
            AdminCommand::Import {
                kind,
                scope,
                entries,
                repos,
            } => f
                .debug_struct("Import")
                .field("kind", kind)
                .field("scope", scope)
                .field(
                    "names",
                    &entries.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                )
                .field("values", &"[redacted]")
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
            AdminCommand::KeyStatus => f.write_str("KeyStatus"),
            AdminCommand::KeyRotate => f.write_str("KeyRotate"),
            AdminCommand::Status => f.write_str("Status"),
            AdminCommand::Backup { path } => f.debug_struct("Backup").field("path", path).finish(),
            AdminCommand::DeleteSandbox { id } => {
                f.debug_struct("DeleteSandbox").field("id", id).finish()
            }
            AdminCommand::TokenCreate { scope, ttl } => f
                .debug_struct("TokenCreate")
                .field("scope", scope)
                .field("ttl", ttl)
                .finish(),
            AdminCommand::TokenList => f.write_str("TokenList"),
            AdminCommand::TokenRevoke { id } => {
                f.debug_struct("TokenRevoke").field("id", id).finish()
            }
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(route: Route, body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_json(route.path(), &e))
}

/// Decodes and validates the body of admin `route` without touching the store: the pure half of
/// every admin request, and the fuzzing entry point. Any input gives either a command or an
/// error naming what was wrong; it never panics and its errors never quote a value.
pub fn parse_admin(route: Route, body: &[u8]) -> Result<AdminCommand, ApiError> {
    match route {
        Route::SecretsSet => {
            let req: SetRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            set_command(
                kind,
                &scope,
                &req.name,
                &req.value,
                req.repos.as_deref(),
                req.allow_dangerous,
            )
        }
        Route::SecretsImport => {
            let req: ImportRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            import_command(kind, &scope, &req)
        }
        Route::SecretsAccess => {
            let req: AccessRequest = parse(route, body)?;
            let user = protocol::normalize_user(&req.user)?;
            // Dangerous names may exist (set with the flag); access changes do not re-judge them.
            let name = protocol::normalize_name(&req.name, true)?;
            let repos = normalize_repos(&req.repos)?;
            Ok(AdminCommand::Access { user, name, repos })
        }
        Route::SecretsDelete => {
            let req: DeleteRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            let name = protocol::normalize_name(&req.name, true)?;
            Ok(AdminCommand::Delete { kind, scope, name })
        }
        Route::SecretsList => {
            let req: ListRequest = parse(route, body)?;
            let (kind, scope) = one_scope(&req.user, &req.repo)?;
            Ok(AdminCommand::List { kind, scope })
        }
        Route::Plan => {
            let req: PlanRequest = parse(route, body)?;
            let user = protocol::normalize_user(&req.user)?;
            let repo = protocol::normalize_repo(&req.repo)?;
            Ok(AdminCommand::Plan { user, repo })
        }
        Route::SandboxesCreate => {
            let req: CreateSandboxRequest = parse(route, body)?;
            let user = protocol::normalize_user(&req.user)?;
            let repo = protocol::normalize_repo(&req.repo)?;
            Ok(AdminCommand::CreateSandbox { user, repo })
        }
        Route::SandboxesList => Ok(AdminCommand::ListSandboxes),
        Route::KeyStatus => Ok(AdminCommand::KeyStatus),
        Route::KeyRotate => Ok(AdminCommand::KeyRotate),
        Route::Status => Ok(AdminCommand::Status),
        Route::StoreBackup => {
            let req: BackupRequest = parse(route, body)?;
            let path = std::path::PathBuf::from(&req.path);
            if !path.is_absolute() {
                return Err(ApiError::BackupPath(req.path));
            }
            Ok(AdminCommand::Backup { path })
        }
        Route::SandboxesDelete => {
            let req: DeleteSandboxRequest = parse(route, body)?;
            let id = sandboxes::check_id(&req.id)?.to_owned();
            Ok(AdminCommand::DeleteSandbox { id })
        }
        Route::TokensCreate => {
            let req: TokenCreateRequest = parse(route, body)?;
            let scope = match (&req.user, &req.repo_admin, req.platform) {
                (Some(u), None, false) => TokenScope::User(protocol::normalize_user(u)?),
                (None, Some(r), false) => TokenScope::RepoAdmin(protocol::normalize_repo(r)?),
                (None, None, true) => TokenScope::Platform,
                _ => return Err(ApiError::TokenScope),
            };
            if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&req.expires_in) {
                return Err(ApiError::TokenExpiry(req.expires_in));
            }
            Ok(AdminCommand::TokenCreate {
                scope,
                ttl: req.expires_in,
            })
        }
        Route::TokensList => Ok(AdminCommand::TokenList),
        Route::TokensRevoke => {
            let req: TokenRevokeRequest = parse(route, body)?;
            let ok = req.id.len() == 12
                && req
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(ApiError::TokenId(shown(&req.id)));
            }
            Ok(AdminCommand::TokenRevoke { id: req.id })
        }
    }
}

/// Validates a create-or-update of secret `name` of (`kind`, `scope`), `scope` already
/// normalized: the one check of name, value and repositories every door uses.
pub fn set_command(
    kind: ScopeKind,
    scope: &str,
    name: &str,
    value: &SecretString,
    repos: Option<&[String]>,
    allow_dangerous: bool,
) -> Result<AdminCommand, ApiError> {
    let name = protocol::normalize_name(name, allow_dangerous)?;
    let value = protocol::check_value(value.expose_secret().as_bytes())?;
    let repos = match (&kind, repos) {
        (ScopeKind::Repo, Some(_)) => return Err(ApiError::ReposOnRepoSecret),
        (_, Some(r)) => Some(normalize_repos(r)?),
        (_, None) => None,
    };
    Ok(AdminCommand::Set {
        kind,
        scope: scope.to_owned(),
        name,
        value: SecretString::from(value.to_owned()),
        repos,
    })
}

/// Validates an import into (`kind`, `scope`), `scope` already normalized: each entry as
/// [`set_command`] checks a set, a refusal naming the entry; a name given twice (after
/// normalization) is refused, as which value was meant is not clear.
pub fn import_command(
    kind: ScopeKind,
    scope: &str,
    req: &ImportRequest,
) -> Result<AdminCommand, ApiError> {
    if req.entries.is_empty() {
        return Err(ApiError::EmptyImport);
    }
    // More could never be stored in one scope: refused before any entry is looked at.
    if req.entries.len() > protocol::MAX_SECRETS_PER_SCOPE {
        return Err(ApiError::ImportTooLarge(req.entries.len()));
    }
    let repos = match (&kind, &req.repos) {
        (ScopeKind::Repo, Some(_)) => return Err(ApiError::ReposOnRepoSecret),
        (_, Some(r)) => Some(normalize_repos(r)?),
        (_, None) => None,
    };
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.iter().enumerate() {
        let index = i + 1;
        let refused = |source: ApiError| ApiError::Entry {
            index,
            name: shown(&e.name),
            source: Box::new(source),
        };
        let name = protocol::normalize_name(&e.name, req.allow_dangerous)
            .map_err(|err| refused(err.into()))?;
        let value = protocol::check_value(e.value.expose_secret().as_bytes())
            .map_err(|err| refused(err.into()))?;
        if let Some(first) = seen.insert(name.clone(), index) {
            return Err(refused(ApiError::DuplicateEntry(first)));
        }
        entries.push((name, SecretString::from(value.to_owned())));
    }
    Ok(AdminCommand::Import {
        kind,
        scope: scope.to_owned(),
        entries,
        repos,
    })
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
        host: row.host,
    }
}

/// Carries out a validated command for `actor` and builds its answer (on the calling thread:
/// see [`carry_out`]).
pub fn execute(
    daemon: &Arc<Daemon>,
    actor: &Actor,
    command: AdminCommand,
) -> Result<Answer, ApiError> {
    let store = daemon.store();
    match command {
        AdminCommand::Set {
            kind,
            scope,
            name,
            value,
            repos,
        } => {
            daemon.check_set_fits(kind, &scope, &name, value.expose_secret(), repos.as_deref())?;
            let pick = picker(kind, &scope);
            let before = daemon.live_sources(&pick, &name);
            let created = store.set_secret(kind, &scope, &name, value.expose_secret(), repos)?;
            let Affected {
                sandboxes,
                watching,
                restarting,
            } = affected(daemon, &before, &pick, &name, kind, true);
            let result = if created { "created" } else { "updated" };
            audit_change(
                actor,
                result,
                &format!("{} secret {name} of {scope}", kind.noun()),
            );
            Ok(Answer::Change(ChangeAnswer {
                name,
                scope: kind,
                owner: scope,
                result: result.into(),
                sandboxes,
                watching,
                restarting,
            }))
        }
        AdminCommand::Import {
            kind,
            scope,
            entries,
            repos,
        } => {
            let pairs: Vec<(&str, &str)> = entries
                .iter()
                .map(|(n, v)| (n.as_str(), v.expose_secret()))
                .collect();
            daemon
                .check_sets_fit(kind, &scope, &pairs, repos.as_deref())
                .map_err(|(i, e)| ApiError::Entry {
                    index: i + 1,
                    name: entries[i].0.clone(),
                    source: Box::new(e.into()),
                })?;
            drop(pairs);
            let pick = picker(kind, &scope);
            let befores: Vec<_> = entries
                .iter()
                .map(|(name, _)| (name.clone(), daemon.live_sources(&pick, name)))
                .collect();
            let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
            let sealed = entries
                .into_iter()
                .map(|(n, v)| (n, Zeroizing::new(v.expose_secret().as_bytes().to_vec())))
                .collect();
            let created =
                store
                    .import_secrets(kind, &scope, sealed, repos)
                    .map_err(|e| match e {
                        crate::broker::store::StoreError::Entry {
                            index,
                            name,
                            source,
                        } => ApiError::Entry {
                            index,
                            name,
                            source: Box::new(ApiError::Store(*source)),
                        },
                        other => ApiError::Store(other),
                    })?;
            let Affected {
                sandboxes,
                watching,
                restarting,
            } = affected_names(daemon, &befores, &pick, kind, true);
            let secrets: Vec<Imported> = names
                .into_iter()
                .zip(created)
                .map(|(name, created)| Imported {
                    name,
                    result: if created { "created" } else { "updated" }.into(),
                })
                .collect();
            for s in &secrets {
                audit_change(
                    actor,
                    &s.result,
                    &format!("{} secret {} of {scope} (import)", kind.noun(), s.name),
                );
            }
            Ok(Answer::Import(ImportAnswer {
                scope: kind,
                owner: scope,
                secrets,
                sandboxes,
                watching,
                restarting,
            }))
        }
        AdminCommand::Access { user, name, repos } => {
            let shown = repos.join(",");
            let pick = picker(ScopeKind::User, &user);
            let before = daemon.live_sources(&pick, &name);
            store.set_access(&user, &name, repos)?;
            let Affected {
                sandboxes,
                watching,
                restarting,
            } = affected(daemon, &before, &pick, &name, ScopeKind::User, false);
            audit_change(
                actor,
                "access",
                &format!("user secret {name} of {user} -> [{shown}]"),
            );
            Ok(Answer::Change(ChangeAnswer {
                name,
                scope: ScopeKind::User,
                owner: user,
                result: "access".into(),
                sandboxes,
                watching,
                restarting,
            }))
        }
        AdminCommand::Delete { kind, scope, name } => {
            let pick = picker(kind, &scope);
            let before = daemon.live_sources(&pick, &name);
            store.delete_secret(kind, &scope, &name)?;
            let Affected {
                sandboxes,
                watching,
                restarting,
            } = affected(daemon, &before, &pick, &name, kind, false);
            audit_change(
                actor,
                "deleted",
                &format!("{} secret {name} of {scope}", kind.noun()),
            );
            Ok(Answer::Change(ChangeAnswer {
                name,
                scope: kind,
                owner: scope,
                result: "deleted".into(),
                sandboxes,
                watching,
                restarting,
            }))
        }
        AdminCommand::List { kind, scope } => Ok(Answer::List(ListAnswer {
            secrets: store.list(kind, &scope),
        })),
        AdminCommand::Plan { user, repo } => {
            let secrets = store.plan(&user, &repo);
            Ok(Answer::Plan(PlanAnswer {
                user,
                repository: repo,
                secrets,
            }))
        }
        AdminCommand::CreateSandbox { user, repo } => {
            let row = daemon.create_sandbox(&user, &repo)?;
            audit_change(
                actor,
                "sandbox-created",
                &format!("{} for {user} on {repo}", row.id),
            );
            Ok(Answer::Sandbox(sandbox_info(daemon, row)))
        }
        AdminCommand::ListSandboxes => Ok(Answer::Sandboxes(SandboxList {
            sandboxes: store
                .sandboxes()
                .into_iter()
                .map(|r| sandbox_info(daemon, r))
                .collect(),
        })),
        AdminCommand::DeleteSandbox { id } => {
            let row = daemon.delete_sandbox(&id)?;
            audit_change(actor, "sandbox-deleted", &row.id);
            Ok(Answer::Sandbox(sandbox_info(daemon, row)))
        }
        AdminCommand::KeyStatus => Ok(Answer::KeyStatus(store.key_status())),
        AdminCommand::Status => {
            let host = &daemon.config().host_id;
            let all = store.sandboxes();
            let connection = match store.link() {
                None => "local".to_owned(),
                Some(link) => {
                    let l = link.borrow();
                    match (&l.reason, l.connected) {
                        (_, true) => "connected".to_owned(),
                        (Some(why), false) => format!("disconnected: {why}"),
                        (None, false) => "connecting".to_owned(),
                    }
                }
            };
            Ok(Answer::Status(StatusAnswer {
                store: store.kind().to_owned(),
                location: store.describe().to_owned(),
                connection,
                schema_version: crate::broker::store::backend::SCHEMA_VERSION,
                generation: store.stored_generation(),
                host_id: host.clone(),
                sandboxes_here: all.iter().filter(|s| s.served_by(host)).count(),
                sandboxes_total: all.len(),
                keys: store.key_status(),
            }))
        }
        AdminCommand::KeyRotate => {
            let previous = store.key_status().active;
            let key_id = store.rotate_key()?;
            // API tokens are sealed under the store key too (outside the manifest).
            if let Err(e) = store.reseal_tokens() {
                tracing::warn!(error = %e, "tokens not resealed after the key rotation; they are at the next start");
            }
            audit_change(actor, "key-rotated", &format!("{previous} -> {key_id}"));
            Ok(Answer::KeyRotate(KeyRotateAnswer { previous, key_id }))
        }
        AdminCommand::TokenCreate { scope, ttl } => {
            let (info, token) = store.create_token(&scope, ttl)?;
            audit_change(
                actor,
                "token-created",
                &format!("{} ({}, expires {})", info.id, info.scope, info.expires),
            );
            Ok(Answer::TokenCreated(TokenCreated {
                info,
                token: token.expose_secret().to_owned(),
            }))
        }
        AdminCommand::TokenList => Ok(Answer::Tokens(TokenList {
            tokens: store.list_tokens(),
        })),
        AdminCommand::TokenRevoke { id } => {
            let info = store.revoke_token(&id)?;
            audit_change(
                actor,
                "token-revoked",
                &format!("{} ({})", info.id, info.scope),
            );
            Ok(Answer::Token(info))
        }
        AdminCommand::Backup { path } => {
            let generation = store.backup(&path)?;
            let shown = path.display().to_string();
            audit_change(
                actor,
                "backup",
                &format!("generation {generation} to {shown}"),
            );
            Ok(Answer::Backup(BackupAnswer {
                path: shown,
                generation,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_the_input() {
        let body = br#"{"name":"A","repo":"o/r","value":12345678901234567890123}"#;
        let e = parse::<SetRequest>(Route::SecretsSet, body)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("1234567890"), "{e}");
        let body = br#"{"name":"A","repo":"o/r","value":"hunter2","bogus":"hunter2"#;
        let e = parse::<SetRequest>(Route::SecretsSet, body)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn repos_are_normalized_and_deduplicated() {
        let got = normalize_repos(&["O/R".into(), "o/r".into(), "a/b".into()]).unwrap();
        assert_eq!(got, ["o/r", "a/b"]);
        assert!(normalize_repos(&["bad".into()]).is_err());
    }

    #[test]
    fn every_route_is_reached_by_its_path_and_only_by_post() {
        for r in Route::ALL {
            assert_eq!(admin_target(&Method::POST, &r.path()).unwrap(), r);
            let e = admin_target(&Method::GET, &r.path()).unwrap_err();
            assert_eq!(e.status(), hyper::StatusCode::METHOD_NOT_ALLOWED);
        }
        let e = admin_target(&Method::POST, "/v1/admin/nope").unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::NOT_FOUND);
    }
}
