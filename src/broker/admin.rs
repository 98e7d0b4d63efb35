//! The admin API's vocabulary: its routes (a typed enum: path, method, request and answer type)
//! and the request and answer bodies. One module, imported by the daemon's HTTP layer, the admin
//! client and the CLI, so a route or a field is written down once. Holds no logic and no I/O;
//! `Debug` of a request never shows a value.

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::acl::PlanEntry;
pub use super::store::tokens::TokenInfo;
pub use super::store::KeyStatus;
use super::store::{ScopeKind, SecretInfo};

/// Prefix of every admin route.
pub const ADMIN_PREFIX: &str = "/v1/admin/";
/// The method every admin route takes, as an `Allow` header names it.
pub const ADMIN_METHOD_NAME: &str = "POST";

/// One admin route. Every route is a `POST` of a JSON body ([`Route::METHOD`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    SecretsSet,
    SecretsImport,
    SecretsAccess,
    SecretsDelete,
    SecretsList,
    Plan,
    SandboxesCreate,
    SandboxesList,
    SandboxesDelete,
    KeyStatus,
    KeyRotate,
    StoreBackup,
    TokensCreate,
    TokensList,
    TokensRevoke,
    Status,
}

impl Route {
    /// Every route, in the order the docs list them.
    pub const ALL: [Route; 16] = [
        Route::SecretsSet,
        Route::SecretsImport,
        Route::SecretsAccess,
        Route::SecretsDelete,
        Route::SecretsList,
        Route::Plan,
        Route::SandboxesCreate,
        Route::SandboxesList,
        Route::SandboxesDelete,
        Route::KeyStatus,
        Route::KeyRotate,
        Route::StoreBackup,
        Route::TokensCreate,
        Route::TokensList,
        Route::TokensRevoke,
        Route::Status,
    ];

    /// The one method every admin route takes.
    pub const METHOD: hyper::Method = hyper::Method::POST;

    /// The route's name after [`ADMIN_PREFIX`] (`secrets/set`).
    pub fn name(self) -> &'static str {
        match self {
            Route::SecretsSet => "secrets/set",
            Route::SecretsImport => "secrets/import",
            Route::SecretsAccess => "secrets/access",
            Route::SecretsDelete => "secrets/delete",
            Route::SecretsList => "secrets/list",
            Route::Plan => "plan",
            Route::SandboxesCreate => "sandboxes/create",
            Route::SandboxesList => "sandboxes/list",
            Route::SandboxesDelete => "sandboxes/delete",
            Route::KeyStatus => "key/status",
            Route::KeyRotate => "key/rotate",
            Route::StoreBackup => "store/backup",
            Route::TokensCreate => "tokens/create",
            Route::TokensList => "tokens/list",
            Route::TokensRevoke => "tokens/revoke",
            Route::Status => "status",
        }
    }

    /// The full request path (`/v1/admin/secrets/set`).
    pub fn path(self) -> String {
        format!("{ADMIN_PREFIX}{}", self.name())
    }

    /// The route a request path names, if any.
    pub fn from_path(path: &str) -> Option<Route> {
        let name = path.strip_prefix(ADMIN_PREFIX)?;
        Route::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request body of one route: the type says where it goes and what comes back, so the client
/// cannot send a body to the wrong route or decode the wrong answer.
pub trait AdminCall: Serialize {
    const ROUTE: Route;
    type Answer: DeserializeOwned;
}

macro_rules! call {
    ($req:ty, $route:expr, $answer:ty) => {
        impl AdminCall for $req {
            const ROUTE: Route = $route;
            type Answer = $answer;
        }
    };
}

call!(SetRequest, Route::SecretsSet, ChangeAnswer);
call!(ImportRequest, Route::SecretsImport, ImportAnswer);
call!(AccessRequest, Route::SecretsAccess, ChangeAnswer);
call!(DeleteRequest, Route::SecretsDelete, ChangeAnswer);
call!(ListRequest, Route::SecretsList, ListAnswer);
call!(PlanRequest, Route::Plan, PlanAnswer);
call!(CreateSandboxRequest, Route::SandboxesCreate, SandboxInfo);
call!(ListSandboxesRequest, Route::SandboxesList, SandboxList);
call!(DeleteSandboxRequest, Route::SandboxesDelete, SandboxInfo);
call!(KeyStatusRequest, Route::KeyStatus, KeyStatus);
call!(KeyRotateRequest, Route::KeyRotate, KeyRotateAnswer);
call!(BackupRequest, Route::StoreBackup, BackupAnswer);
call!(TokenCreateRequest, Route::TokensCreate, TokenCreated);
call!(TokenListRequest, Route::TokensList, TokenList);
call!(TokenRevokeRequest, Route::TokensRevoke, TokenInfo);
call!(StatusRequest, Route::Status, StatusAnswer);

// ---------- requests ----------

/// `secrets/set`: create or update a secret. Exactly one of `user`, `repo`.
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

/// `secrets/import`: create or update several secrets of one scope in one transaction, all or
/// none (a dotenv file's entries). Exactly one of `user`, `repo`; `repos` and `allow_dangerous`
/// hold for every entry, as for `secrets/set`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportRequest {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub repos: Option<Vec<String>>,
    #[serde(default)]
    pub allow_dangerous: bool,
    pub entries: Vec<ImportEntry>,
}

/// One secret of an import. `Debug` never shows the value.
#[derive(Serialize, Deserialize)]
pub struct ImportEntry {
    pub name: String,
    #[serde(serialize_with = "expose_value", deserialize_with = "secret_value")]
    pub value: SecretString,
}

impl std::fmt::Debug for ImportEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportEntry")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// `secrets/access`: replace which repositories may read a user secret, without its value.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessRequest {
    pub name: String,
    pub user: String,
    pub repos: Vec<String>,
}

/// `secrets/delete`. Exactly one of `user`, `repo`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
}

/// `secrets/list`. Exactly one of `user`, `repo`; a `name` is accepted and ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListRequest {
    #[serde(default, skip_serializing)]
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
}

/// `plan`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanRequest {
    pub user: String,
    pub repo: String,
}

/// `sandboxes/create`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateSandboxRequest {
    pub user: String,
    pub repo: String,
}

/// `sandboxes/list`: no field.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ListSandboxesRequest {}

/// `sandboxes/delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteSandboxRequest {
    pub id: String,
}

/// `key/status`: no field.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyStatusRequest {}

/// `status`: no field.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatusRequest {}

/// `key/rotate`: no field.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyRotateRequest {}

/// `store/backup`: where the daemon writes the copy (an absolute path that must not exist).
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRequest {
    pub path: String,
}

/// `tokens/create`: exactly one of `user`, `repo_admin`, `platform`; valid for `expires_in`
/// seconds.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenCreateRequest {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub repo_admin: Option<String>,
    #[serde(default)]
    pub platform: bool,
    pub expires_in: i64,
}

/// `tokens/list`: no field.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenListRequest {}

/// `tokens/revoke`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenRevokeRequest {
    pub id: String,
}

// ---------- answers ----------

/// Answer of `tokens/create`: the only time the token is shown. `Debug` hides it.
#[derive(Serialize, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated")
            .field("info", &self.info)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Answer of `tokens/list`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Answer of `status`: the store and this host as the daemon sees them.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Where: the database file, or the URL without its password.
    pub location: String,
    /// `local` (SQLite), `connected`, or `disconnected: <reason>` (answers cached so far are
    /// served; admin changes are refused).
    pub connection: String,
    pub schema_version: u32,
    /// The store generation this daemon serves.
    pub generation: u64,
    pub host_id: String,
    /// Sandboxes this host serves (of all in the store).
    pub sandboxes_here: usize,
    pub sandboxes_total: usize,
    pub keys: KeyStatus,
}

/// Answer of `key/rotate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyRotateAnswer {
    pub previous: String,
    pub key_id: String,
}

/// Answer of `store/backup`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupAnswer {
    pub path: String,
    /// The store generation the copy holds.
    pub generation: u64,
}

/// Answer of set, access and delete.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeAnswer {
    pub name: String,
    pub scope: ScopeKind,
    pub owner: String,
    /// `created`, `updated`, `access` or `deleted`.
    pub result: String,
    /// Live sandboxes whose answer changed with this (sorted ids).
    #[serde(default)]
    pub sandboxes: Vec<String>,
    /// Of those, the ones with a watch open that was woken (their init sees it now).
    #[serde(default)]
    pub watching: Vec<String>,
    /// Of the watching, the ones where a watcher declared it restarts its command on a change
    /// (`sandbox-init --on-change restart`); the others' commands keep running.
    #[serde(default)]
    pub restarting: Vec<String>,
}

impl ChangeAnswer {
    /// ": 3 sandboxes see the change (2 watching, 1 restarts its command)", for the CLI's line;
    /// the restarts are said only when there are some.
    pub fn affected(&self) -> String {
        let n = self.sandboxes.len();
        let who = match n {
            0 => return ": no sandbox sees the change".into(),
            1 => "1 sandbox sees".to_owned(),
            n => format!("{n} sandboxes see"),
        };
        let restarts = match self.restarting.len() {
            0 => String::new(),
            1 => ", 1 restarts its command".to_owned(),
            m => format!(", {m} restart their commands"),
        };
        format!(
            ": {who} the change ({} watching{restarts})",
            self.watching.len()
        )
    }
}

/// Answer of `secrets/import`: every entry stored (none is, when the import is refused).
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportAnswer {
    pub scope: ScopeKind,
    pub owner: String,
    /// Each entry, in the order given: its normalized name and `created` or `updated`.
    pub secrets: Vec<Imported>,
    /// Live sandboxes whose answer changed with the import (sorted ids), as for `set`.
    #[serde(default)]
    pub sandboxes: Vec<String>,
    #[serde(default)]
    pub watching: Vec<String>,
    #[serde(default)]
    pub restarting: Vec<String>,
}

/// One stored entry of an import.
#[derive(Debug, Serialize, Deserialize)]
pub struct Imported {
    pub name: String,
    /// `created` or `updated`.
    pub result: String,
}

impl ImportAnswer {
    /// The same line ending as [`ChangeAnswer::affected`].
    pub fn affected(&self) -> String {
        ChangeAnswer {
            name: String::new(),
            scope: self.scope,
            owner: String::new(),
            result: String::new(),
            sandboxes: self.sandboxes.clone(),
            watching: self.watching.clone(),
            restarting: self.restarting.clone(),
        }
        .affected()
    }
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
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The directory to bind-mount at `/run/sandbox`.
    pub dir: String,
    /// The broker host that serves it (empty: created before hosts, served by its only host).
    #[serde(default)]
    pub host: String,
}

/// Answer of sandbox list.
#[derive(Debug, Serialize, Deserialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_line_says_restarts_only_when_there_are_some() {
        let ids = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
        let line = |sandboxes, watching, restarting| {
            ChangeAnswer {
                name: "TOKEN".into(),
                scope: ScopeKind::User,
                owner: "mona".into(),
                result: "updated".into(),
                sandboxes: ids(sandboxes),
                watching: ids(watching),
                restarting: ids(restarting),
            }
            .affected()
        };
        assert_eq!(line(0, 0, 0), ": no sandbox sees the change");
        assert_eq!(line(1, 0, 0), ": 1 sandbox sees the change (0 watching)");
        assert_eq!(
            line(3, 2, 1),
            ": 3 sandboxes see the change (2 watching, 1 restarts its command)"
        );
        assert_eq!(
            line(3, 3, 2),
            ": 3 sandboxes see the change (3 watching, 2 restart their commands)"
        );
        // An answer from a broker without the field reads as no restarts.
        let old: ChangeAnswer = serde_json::from_str(
            r#"{"name":"T","scope":"user","owner":"mona","result":"updated",
                "sandboxes":["a"],"watching":["a"]}"#,
        )
        .unwrap();
        assert!(old.restarting.is_empty());
        assert_eq!(old.affected(), ": 1 sandbox sees the change (1 watching)");
    }

    #[test]
    fn routes_round_trip_through_their_paths() {
        for r in Route::ALL {
            assert_eq!(Route::from_path(&r.path()), Some(r));
            assert!(r.path().starts_with(ADMIN_PREFIX));
        }
        let mut names: Vec<_> = Route::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Route::ALL.len());
        for bad in [
            "/v1/admin/",
            "/v1/admin/plan/",
            "/v1/admin/nope",
            "/v1/secrets",
            "plan",
        ] {
            assert_eq!(Route::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn set_request_debug_is_redacted() {
        let r: SetRequest =
            serde_json::from_str(r#"{"name":"A","repo":"o/r","value":"hunter2"}"#).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
        let r: ImportRequest =
            serde_json::from_str(r#"{"repo":"o/r","entries":[{"name":"A","value":"hunter2"}]}"#)
                .unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
