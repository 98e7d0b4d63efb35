//! The encrypted secret store: SQLite (WAL, one transaction per change) in the state directory,
//! with an in-memory copy of the sealed rows that every read uses. Enforces the per-scope limit
//! and existence rules; names, values and scopes arrive already validated (see `api`). Holds no
//! plaintext beyond one request and never logs or formats a value.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::acl::{self, PlanEntry, UserGrant};
use super::crypto::{self, CryptoError, Sealed, Sealer};
use crate::protocol::MAX_SECRETS_PER_SCOPE;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "secrets.db";
/// File name of the key inside the state directory.
pub const KEY_FILE: &str = "key";
const KEY_CHECK: &[u8] = b"sandbox-secrets key check v1";

/// Which level a secret belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    User,
    Repo,
}

impl ScopeKind {
    /// The word stored in the database and bound into the AAD.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::User => "user",
            ScopeKind::Repo => "repo",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(ScopeKind::User),
            "repo" => Some(ScopeKind::Repo),
            _ => None,
        }
    }
    /// The word used in messages and CLI output: `user` or `repository`.
    pub fn noun(self) -> &'static str {
        match self {
            ScopeKind::User => "user",
            ScopeKind::Repo => "repository",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {path} is owned by uid {owner}: it must belong to this daemon's uid ({euid}) or root")]
    StateDirOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("state directory {path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: nix::Error },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database step {step} failed: {source}")]
    Sql {
        step: &'static str,
        source: rusqlite::Error,
    },
    #[error("database holds an unknown scope kind {0:?}")]
    BadKind(String),
    #[error("key file {path} is missing but the store holds {count} sealed secrets; restore the key file from backup")]
    MissingKey { path: PathBuf, count: usize },
    #[error("key file {path} does not open this store (a different key?)")]
    WrongKey { path: PathBuf },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{} {scope} already has {MAX_SECRETS_PER_SCOPE} secrets (the limit); delete one first", .kind.noun())]
    Limit { kind: ScopeKind, scope: String },
    #[error("no {} secret {name} for {scope}", .kind.noun())]
    NotFound {
        kind: ScopeKind,
        scope: String,
        name: String,
    },
    #[error(
        "user secret {name} of {user} is new: give the repositories that may read it (--repos)"
    )]
    ReposRequired { user: String, name: String },
    #[error("no sandbox {0}")]
    SandboxNotFound(String),
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
}

impl StoreError {
    fn sql(step: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sql { step, source }
    }
}

/// A secret row as kept in memory and in SQLite: sealed, never plaintext.
#[derive(Clone, Debug)]
struct Row {
    repos: Vec<String>,
    sealed: Sealed,
    updated: i64,
}

/// What `list` shows of a secret: never its value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub scope: ScopeKind,
    /// The user or repository it belongs to.
    pub owner: String,
    /// For a user secret, the repositories that may read it; empty for a repository secret.
    pub repos: Vec<String>,
    /// Seconds since the epoch of the last change.
    pub updated: i64,
}

/// A sandbox as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRow {
    pub id: String,
    pub user: String,
    pub repo: String,
    pub created: i64,
}

/// The result of a sandbox fetch: the values, in name order, zeroized on drop.
pub struct Fetched {
    pub sandbox: SandboxRow,
    /// The store's generation this answer was read at (see [`Store::generation`]).
    pub generation: u64,
    pub secrets: Vec<(String, Zeroizing<Vec<u8>>)>,
}

type Key = (ScopeKind, String, String);

#[derive(Default)]
struct Cache {
    secrets: BTreeMap<Key, Row>,
    sandboxes: BTreeMap<String, SandboxRow>,
}

impl Cache {
    fn scope_rows<'a>(
        &'a self,
        kind: ScopeKind,
        scope: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Row)> + 'a {
        self.secrets
            .range((kind, scope.to_owned(), String::new())..)
            .take_while(move |((k, s, _), _)| *k == kind && s == scope)
            .map(|((_, _, n), row)| (n.as_str(), row))
    }
}

/// The store: SQLite for durability, an in-memory copy for reads, the sealer for values.
pub struct Store {
    db_path: PathBuf,
    conn: Mutex<Connection>,
    cache: RwLock<Cache>,
    sealer: Sealer,
    /// Bumped by every change, under the write lock: answers built at an older generation are
    /// stale.
    generation: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("db", &self.db_path).finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn what(kind: ScopeKind, scope: &str, name: &str) -> String {
    format!("{} secret {name} of {scope}", kind.noun())
}

impl Store {
    /// Opens (creating if needed) the store in `state_dir`: the directory (0700), the database,
    /// the key file (created 0600 on first start, refused if looser), and checks the key opens
    /// this store.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::StateDir {
                path: state_dir.to_owned(),
                source,
            })?;
        let owner = std::fs::metadata(state_dir)
            .map_err(|source| StoreError::StateDir {
                path: state_dir.to_owned(),
                source,
            })?
            .uid();
        let euid = nix::unistd::geteuid().as_raw();
        if !super::sandboxes::owner_trusted(owner, euid) {
            return Err(StoreError::StateDirOwner {
                path: state_dir.to_owned(),
                owner,
                euid,
            });
        }
        nix::unistd::access(state_dir, nix::unistd::AccessFlags::W_OK).map_err(|source| {
            StoreError::NotWritable {
                path: state_dir.to_owned(),
                source,
            }
        })?;
        let db_path = state_dir.join(DB_FILE);
        let conn = Connection::open(&db_path).map_err(|source| StoreError::Open {
            path: db_path.clone(),
            source,
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS secrets (
                 kind TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
                 repos TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
                 updated INTEGER NOT NULL, PRIMARY KEY (kind, scope, name));
             CREATE TABLE IF NOT EXISTS sandboxes (
                 id TEXT PRIMARY KEY, user TEXT NOT NULL, repo TEXT NOT NULL,
                 created INTEGER NOT NULL);",
        )
        .map_err(|source| StoreError::Open {
            path: db_path.clone(),
            source,
        })?;
        let cache = load(&conn)?;

        let key_path = state_dir.join(KEY_FILE);
        let sealer = if crypto::key_exists(&key_path) {
            Sealer::load(&key_path)?
        } else if !cache.secrets.is_empty() {
            return Err(StoreError::MissingKey {
                path: key_path,
                count: cache.secrets.len(),
            });
        } else {
            conn.execute("DELETE FROM meta WHERE key = 'keycheck'", [])
                .map_err(StoreError::sql("reset key check"))?;
            Sealer::create(&key_path)?
        };
        let check_aad = crypto::aad("meta", "", "keycheck");
        let stored: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT nonce, ciphertext FROM meta WHERE key = 'keycheck'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(StoreError::sql("read key check"))?;
        match stored {
            Some((nonce, ciphertext)) => {
                let ok = sealer
                    .open(&Sealed { nonce, ciphertext }, &check_aad, "key check")
                    .is_ok_and(|v| v.as_slice() == KEY_CHECK);
                if !ok {
                    return Err(StoreError::WrongKey { path: key_path });
                }
            }
            None => {
                let s = sealer.seal(KEY_CHECK, &check_aad, "key check")?;
                conn.execute(
                    "INSERT INTO meta (key, nonce, ciphertext) VALUES ('keycheck', ?1, ?2)",
                    params![s.nonce, s.ciphertext],
                )
                .map_err(StoreError::sql("write key check"))?;
            }
        }
        Ok(Self {
            db_path,
            conn: Mutex::new(conn),
            cache: RwLock::new(cache),
            sealer,
            generation: AtomicU64::new(1),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        let guard = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // Bumped before any change is made and while readers are shut out, so no reader can
        // pair the new generation with old contents or the old one with new contents.
        self.generation.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// The current generation: it changes whenever the store does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names every secret whose sealed value does not open (tampered rows), for a startup warning.
    pub fn unreadable(&self) -> Vec<String> {
        let cache = self.read();
        cache
            .secrets
            .iter()
            .filter(|((k, s, n), row)| {
                self.sealer
                    .open(&row.sealed, &crypto::aad(k.as_str(), s, n), "")
                    .is_err()
            })
            .map(|((k, s, n), _)| what(*k, s, n))
            .collect()
    }

    /// Creates or updates a secret. `repos` is required for a new user secret; for an update
    /// `None` keeps the current list. Returns true when the secret was created.
    pub fn set_secret(
        &self,
        kind: ScopeKind,
        scope: &str,
        name: &str,
        value: &str,
        repos: Option<Vec<String>>,
    ) -> Result<bool, StoreError> {
        let mut cache = self.write();
        let key = (kind, scope.to_owned(), name.to_owned());
        let existing = cache.secrets.get(&key);
        let created = existing.is_none();
        if created && cache.scope_rows(kind, scope).count() >= MAX_SECRETS_PER_SCOPE {
            return Err(StoreError::Limit {
                kind,
                scope: scope.to_owned(),
            });
        }
        let repos = match (kind, repos, existing) {
            (ScopeKind::Repo, _, _) => Vec::new(),
            (ScopeKind::User, Some(r), _) => r,
            (ScopeKind::User, None, Some(row)) => row.repos.clone(),
            (ScopeKind::User, None, None) => {
                return Err(StoreError::ReposRequired {
                    user: scope.to_owned(),
                    name: name.to_owned(),
                })
            }
        };
        let sealed = self.sealer.seal(
            value.as_bytes(),
            &crypto::aad(kind.as_str(), scope, name),
            &what(kind, scope, name),
        )?;
        let row = Row {
            repos,
            sealed,
            updated: now(),
        };
        self.upsert(&key, &row, "write secret")?;
        cache.secrets.insert(key, row);
        Ok(created)
    }

    /// Replaces the list of repositories that may read a user secret, without its value.
    pub fn set_access(&self, user: &str, name: &str, repos: Vec<String>) -> Result<(), StoreError> {
        let mut cache = self.write();
        let key = (ScopeKind::User, user.to_owned(), name.to_owned());
        let Some(old) = cache.secrets.get(&key) else {
            return Err(StoreError::NotFound {
                kind: ScopeKind::User,
                scope: user.to_owned(),
                name: name.to_owned(),
            });
        };
        let row = Row {
            repos,
            sealed: old.sealed.clone(),
            updated: now(),
        };
        self.upsert(&key, &row, "write access")?;
        cache.secrets.insert(key, row);
        Ok(())
    }

    fn upsert(&self, key: &Key, row: &Row, step: &'static str) -> Result<(), StoreError> {
        let repos = serde_json::to_string(&row.repos).unwrap_or_else(|_| "[]".into());
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::sql(step))?;
        tx.execute(
            "INSERT INTO secrets (kind, scope, name, repos, nonce, ciphertext, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (kind, scope, name) DO UPDATE SET repos = excluded.repos,
                 nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                 updated = excluded.updated",
            params![
                key.0.as_str(),
                key.1,
                key.2,
                repos,
                row.sealed.nonce,
                row.sealed.ciphertext,
                row.updated
            ],
        )
        .map_err(StoreError::sql(step))?;
        tx.commit().map_err(StoreError::sql(step))
    }

    /// Deletes a secret.
    pub fn delete_secret(
        &self,
        kind: ScopeKind,
        scope: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        let mut cache = self.write();
        let key = (kind, scope.to_owned(), name.to_owned());
        if !cache.secrets.contains_key(&key) {
            return Err(StoreError::NotFound {
                kind,
                scope: scope.to_owned(),
                name: name.to_owned(),
            });
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(StoreError::sql("delete secret"))?;
        tx.execute(
            "DELETE FROM secrets WHERE kind = ?1 AND scope = ?2 AND name = ?3",
            params![kind.as_str(), scope, name],
        )
        .map_err(StoreError::sql("delete secret"))?;
        tx.commit().map_err(StoreError::sql("delete secret"))?;
        cache.secrets.remove(&key);
        Ok(())
    }

    /// Lists the secrets of one user or one repository, by name; never values.
    pub fn list(&self, kind: ScopeKind, scope: &str) -> Vec<SecretInfo> {
        self.read()
            .scope_rows(kind, scope)
            .map(|(name, row)| SecretInfo {
                name: name.to_owned(),
                scope: kind,
                owner: scope.to_owned(),
                repos: row.repos.clone(),
                updated: row.updated,
            })
            .collect()
    }

    /// Which names a sandbox of (`user`, `repo`) gets, and from where.
    pub fn plan(&self, user: &str, repo: &str) -> Vec<PlanEntry> {
        plan_in(&self.read(), user, repo)
    }

    /// Records a new sandbox.
    pub fn add_sandbox(&self, sandbox: SandboxRow) -> Result<(), StoreError> {
        let mut cache = self.write();
        if cache.sandboxes.contains_key(&sandbox.id) {
            return Err(StoreError::SandboxExists(sandbox.id));
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::sql("add sandbox"))?;
        tx.execute(
            "INSERT INTO sandboxes (id, user, repo, created) VALUES (?1, ?2, ?3, ?4)",
            params![sandbox.id, sandbox.user, sandbox.repo, sandbox.created],
        )
        .map_err(StoreError::sql("add sandbox"))?;
        tx.commit().map_err(StoreError::sql("add sandbox"))?;
        cache.sandboxes.insert(sandbox.id.clone(), sandbox);
        Ok(())
    }

    /// Forgets a sandbox.
    pub fn remove_sandbox(&self, id: &str) -> Result<SandboxRow, StoreError> {
        let mut cache = self.write();
        if !cache.sandboxes.contains_key(id) {
            return Err(StoreError::SandboxNotFound(id.to_owned()));
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(StoreError::sql("remove sandbox"))?;
        tx.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])
            .map_err(StoreError::sql("remove sandbox"))?;
        tx.commit().map_err(StoreError::sql("remove sandbox"))?;
        Ok(cache.sandboxes.remove(id).expect("checked above"))
    }

    /// Every sandbox, by id.
    pub fn sandboxes(&self) -> Vec<SandboxRow> {
        self.read().sandboxes.values().cloned().collect()
    }

    /// One sandbox.
    pub fn sandbox(&self, id: &str) -> Option<SandboxRow> {
        self.read().sandboxes.get(id).cloned()
    }

    /// The authorized secrets of a sandbox, opened. A value that does not open is an error naming
    /// the secret; nothing else is returned then.
    pub fn fetch(&self, id: &str) -> Result<Fetched, StoreError> {
        let cache = self.read();
        let generation = self.generation();
        let sandbox = cache
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::SandboxNotFound(id.to_owned()))?;
        let entries = plan_in(&cache, &sandbox.user, &sandbox.repo);
        let mut secrets = Vec::with_capacity(entries.len());
        for entry in entries {
            let (kind, scope) = match entry.from {
                acl::Level::User => (ScopeKind::User, sandbox.user.as_str()),
                acl::Level::Repository => (ScopeKind::Repo, sandbox.repo.as_str()),
            };
            let key = (kind, scope.to_owned(), entry.name);
            let row = cache.secrets.get(&key).expect("plan names stored rows");
            let value = self.sealer.open(
                &row.sealed,
                &crypto::aad(kind.as_str(), scope, &key.2),
                &what(kind, scope, &key.2),
            )?;
            secrets.push((key.2, value));
        }
        Ok(Fetched {
            sandbox,
            generation,
            secrets,
        })
    }
}

fn plan_in(cache: &Cache, user: &str, repo: &str) -> Vec<PlanEntry> {
    acl::plan(
        repo,
        cache
            .scope_rows(ScopeKind::User, user)
            .map(|(name, row)| UserGrant {
                name,
                repos: &row.repos,
            }),
        cache.scope_rows(ScopeKind::Repo, repo).map(|(n, _)| n),
    )
}

fn load(conn: &Connection) -> Result<Cache, StoreError> {
    let mut cache = Cache::default();
    let mut stmt = conn
        .prepare("SELECT kind, scope, name, repos, nonce, ciphertext, updated FROM secrets")
        .map_err(StoreError::sql("load secrets"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(StoreError::sql("load secrets"))?;
    for row in rows {
        let (kind, scope, name, repos, nonce, ciphertext, updated) =
            row.map_err(StoreError::sql("load secrets"))?;
        let kind = ScopeKind::parse(&kind).ok_or(StoreError::BadKind(kind))?;
        let repos: Vec<String> = serde_json::from_str(&repos).unwrap_or_default();
        cache.secrets.insert(
            (kind, scope, name),
            Row {
                repos,
                sealed: Sealed { nonce, ciphertext },
                updated,
            },
        );
    }
    let mut stmt = conn
        .prepare("SELECT id, user, repo, created FROM sandboxes")
        .map_err(StoreError::sql("load sandboxes"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(SandboxRow {
                id: r.get(0)?,
                user: r.get(1)?,
                repo: r.get(2)?,
                created: r.get(3)?,
            })
        })
        .map_err(StoreError::sql("load sandboxes"))?;
    for row in rows {
        let row = row.map_err(StoreError::sql("load sandboxes"))?;
        cache.sandboxes.insert(row.id.clone(), row);
    }
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_counts_only_new_names_and_refusal_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..MAX_SECRETS_PER_SCOPE {
            store
                .set_secret(ScopeKind::Repo, "o/r", &format!("N{i}"), "v", None)
                .unwrap();
        }
        let e = store
            .set_secret(ScopeKind::Repo, "o/r", "EXTRA", "v", None)
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // Updating an existing one still works; another repository is not affected.
        assert!(!store
            .set_secret(ScopeKind::Repo, "o/r", "N0", "w", None)
            .unwrap());
        store
            .set_secret(ScopeKind::Repo, "o/other", "EXTRA", "v", None)
            .unwrap();
        assert_eq!(
            store.list(ScopeKind::Repo, "o/r").len(),
            MAX_SECRETS_PER_SCOPE
        );
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(
            again.list(ScopeKind::Repo, "o/r").len(),
            MAX_SECRETS_PER_SCOPE
        );
        assert!(again.unreadable().is_empty());
    }

    #[test]
    fn scope_rows_do_not_bleed_into_neighbouring_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = vec!["o/r".to_string()];
        store
            .set_secret(ScopeKind::User, "mon", "A", "1", Some(r.clone()))
            .unwrap();
        store
            .set_secret(ScopeKind::User, "mona", "B", "2", Some(r.clone()))
            .unwrap();
        store
            .set_secret(ScopeKind::User, "monb", "C", "3", Some(r))
            .unwrap();
        let names: Vec<_> = store
            .list(ScopeKind::User, "mona")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["B"]);
    }
}
