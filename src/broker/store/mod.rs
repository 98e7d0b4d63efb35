//! The secret store: the rules (existence, per-scope limit), the sealing of every row that decides
//! access, the manifest that refuses replayed rows, schema migrations, key rotation, backups and
//! group commit, over a [`Backend`] (SQLite today). Keeps an in-memory copy of the verified rows
//! that every read uses. Names, values and scopes arrive already validated (see `api`). Holds no
//! plaintext beyond one request and never logs or formats a value.
//!
//! - [`backend`]: the `Backend` trait, its sealed records and schema versions.
//! - [`sqlite`]: the SQLite backend.
//! - `postgres` (feature `postgres`): the PostgreSQL backend, the store many brokers share.
//! - [`seal`]: key files, key ids, XChaCha20-Poly1305 and the additional data of each row.
//! - [`keys`]: key rotation files and the generation file beside the key.
//! - [`tokens`]: the platform API's tokens (hashes under a seal, in memory for every request).

pub mod backend;
pub mod keys;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod seal;
pub mod sqlite;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::acl::{self, PlanEntry, UserGrant};
use crate::protocol::MAX_SECRETS_PER_SCOPE;
use backend::{Backend, Change, MetaRecord, SandboxRecord, SecretRecord, SCHEMA_VERSION};
use keys::FileGeneration;
pub use keys::{GENERATION_FILE, KEY_FILE, NEXT_KEY_FILE};
use seal::{aad_v2, CryptoError, KeyRing, Sealed, Sealer};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "secrets.db";
const KEY_CHECK: &[u8] = b"sandbox-secrets key check v1";
/// Buckets of the manifest: a change re-seals one bucket and the root, not the whole manifest.
const BUCKETS: usize = 256;

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
    /// The kind stored as `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
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
    #[error("cannot create state directory {path}: {error}")]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("state directory {path} is owned by uid {owner}: it must belong to this daemon's uid ({euid}) or root")]
    StateDirOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("state directory {path} has mode {mode:04o}: it must not be writable by group or others (chmod 700)")]
    StateDirMode { path: PathBuf, mode: u32 },
    #[error("state directory {path} is not writable: {error}")]
    NotWritable { path: PathBuf, error: nix::Error },
    #[error(
        "database {path} is owned by uid {owner}: it must belong to this daemon's uid ({euid})"
    )]
    DbOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("database {path} is not a regular file (a symbolic link?)")]
    DbNotFile { path: PathBuf },
    #[error("cannot create database {path}: {error}")]
    DbFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open database {path}: {error}")]
    Open {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("database step {step} failed: {error}")]
    Sql {
        step: &'static str,
        error: rusqlite::Error,
    },
    #[error("store schema version {found} is newer than this daemon knows ({SCHEMA_VERSION}); run a newer sandbox-secrets")]
    SchemaTooNew { found: u32 },
    #[error("cannot back up the store before migrating it: {0}")]
    MigrationBackup(Box<StoreError>),
    #[error("cannot write backup {path}: {error}")]
    Backup {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("key file {path} is missing but the store holds {count} sealed secrets; restore the key file from backup")]
    MissingKey { path: PathBuf, count: usize },
    #[error("key file {path} (key id {held}) does not open this store, which is sealed with key id {wanted} (a different key?)")]
    WrongKey {
        path: PathBuf,
        held: String,
        wanted: String,
    },
    #[error("key file {path} exists but the store has no key check: the database was replaced or emptied outside the daemon; restore it from a backup")]
    KeyCheckMissing { path: PathBuf },
    #[error("{0}")]
    Untrusted(String),
    #[error("store at generation {store} is older than the last one this host wrote ({file}): a restored backup or a rolled-back database; start with `serve --accept-rollback` to serve it anyway")]
    RolledBack { store: u64, file: u64 },
    #[error("cannot manage key files in {path}: {error}")]
    KeyFiles {
        path: PathBuf,
        error: std::io::Error,
    },
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
    #[error("sandbox {id} belongs to host {host}: delete it through the broker of {host}")]
    OtherHost { id: String, host: String },
    #[error("{row} is sealed with key id {id}, which this host does not hold")]
    RowKey { row: String, id: String },
    #[error("database step {step} failed: {error}")]
    Postgres { step: &'static str, error: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("another broker committed generation {head} meanwhile")]
    Moved { head: u64 },
    #[error("store {store} is not usable: {reason}")]
    BadStore { store: String, reason: String },
    #[error("{row} was refused when the store was opened: {reason}")]
    Refused { row: String, reason: String },
    #[error(
        "{row} was refused when the store was opened: set it again with its repositories (--repos)"
    )]
    RefusedNeedsRepos { row: String },
    #[error("the store {0} keeps no API tokens (this backend lacks the tokens migration)")]
    NoTokens(String),
    #[error("no token {0}")]
    TokenNotFound(String),
    /// One entry of an import refused: nothing of the import was stored.
    #[error("entry {index} ({name}) refused; nothing was stored")]
    Entry {
        /// 1-based, in the order the import gave them.
        index: usize,
        name: String,
        #[source]
        source: Box<StoreError>,
    },
}

impl StoreError {
    /// A copy for every member of a failed group commit (a database error keeps its code, so a
    /// full disk still reads as one).
    fn for_each_member(&self) -> StoreError {
        match self {
            StoreError::Sql { step, error } => StoreError::Sql {
                step,
                error: match error {
                    rusqlite::Error::SqliteFailure(e, msg) => {
                        rusqlite::Error::SqliteFailure(*e, msg.clone())
                    }
                    other => rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(other.to_string()),
                    ),
                },
            },
            StoreError::Postgres { step, error } => StoreError::Postgres {
                step,
                error: error.clone(),
            },
            StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
            other => StoreError::Untrusted(other.to_string()),
        }
    }
}

/// How `open` treats a store that looks rolled back.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Serve a store older than the generation file says (a restored backup), after an
    /// operator confirmed it; also rebuilds a manifest that does not verify.
    pub accept_rollback: bool,
}

/// A secret row as kept in memory: sealed, never plaintext, verified when loaded.
#[derive(Clone, Debug)]
struct Row {
    repos: Vec<String>,
    version: u64,
    key_id: Arc<str>,
    sealed: Sealed,
    updated: i64,
    /// Why the row was refused when the store was opened. A refused row is never opened: a
    /// sandbox whose plan names it gets an error naming it (its repository list is not
    /// trusted to grant anything, only to fail closed), and it cannot be updated without
    /// giving its value (and a user secret's repositories) again.
    refused: Option<Arc<str>>,
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRow {
    pub id: String,
    pub user: String,
    pub repo: String,
    pub created: i64,
    /// The broker host that serves it (`serve --host-id`); empty for a sandbox created before
    /// the store had hosts (a single-host store: its broker serves it).
    #[serde(default)]
    pub host: String,
}

impl SandboxRow {
    /// True when the broker of `host` serves this sandbox: its own, or one from before hosts.
    pub fn served_by(&self, host: &str) -> bool {
        self.host.is_empty() || self.host == host
    }
}

/// The result of a sandbox fetch: the values, in name order, zeroized on drop.
pub struct Fetched {
    pub sandbox: SandboxRow,
    /// The store's generation this answer was read at (see [`Store::generation`]).
    pub generation: u64,
    pub secrets: Vec<(String, Zeroizing<Vec<u8>>)>,
}

/// Which keys this host holds and which rows use them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key that seals new rows.
    pub active: String,
    /// Every key id this host holds (active and retired).
    pub held: Vec<String>,
    /// Rows (secrets and sandboxes) per key id.
    pub rows: BTreeMap<String, usize>,
}

type Key = (ScopeKind, String, String);

/// A verified sandbox row in memory, kept small (a host holds tens of thousands): the id is the
/// map's key; user and repository names are shared between sandboxes (`Cache::intern`).
#[derive(Clone, Debug)]
struct SandboxEntry {
    user: Arc<str>,
    repo: Arc<str>,
    host: Arc<str>,
    created: i64,
    version: u64,
    key_id: Arc<str>,
}

impl SandboxEntry {
    fn new(row: SandboxRow, version: u64, key_id: Arc<str>) -> Self {
        Self {
            user: row.user.into(),
            repo: row.repo.into(),
            host: row.host.into(),
            created: row.created,
            version,
            key_id,
        }
    }
    fn row(&self, id: &str) -> SandboxRow {
        SandboxRow {
            id: id.to_owned(),
            user: self.user.to_string(),
            repo: self.repo.to_string(),
            created: self.created,
            host: self.host.to_string(),
        }
    }
}

#[derive(Default)]
struct Cache {
    secrets: BTreeMap<Key, Row>,
    sandboxes: BTreeMap<Box<str>, SandboxEntry>,
    /// One copy of each user and repository name the sandboxes use.
    names: std::collections::HashSet<Arc<str>>,
}

impl Cache {
    /// Adds a sandbox, its user and repository names shared with other sandboxes.
    fn put_sandbox(&mut self, id: Box<str>, mut entry: SandboxEntry) {
        for name in [&mut entry.user, &mut entry.repo, &mut entry.host] {
            match self.names.get(&**name) {
                Some(shared) => *name = Arc::clone(shared),
                None => {
                    self.names.insert(Arc::clone(name));
                }
            }
        }
        self.sandboxes.insert(id, entry);
    }

    /// Forgets names no sandbox uses any more.
    fn prune_names(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

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

// ------------------------------------------------------------------------------------------
// Sealing of each kind of row

pub(crate) fn what(kind: ScopeKind, scope: &str, name: &str) -> String {
    format!("{} secret {name} of {scope}", kind.noun())
}

fn repos_bytes(repos: &[String]) -> Vec<u8> {
    serde_json::to_vec(repos).unwrap_or_default()
}

/// Additional data of a secret row: its place, its repository list, version, key and time.
fn secret_aad(
    kind: ScopeKind,
    scope: &str,
    name: &str,
    repos: &[String],
    version: u64,
    key_id: &str,
    updated: i64,
) -> Vec<u8> {
    aad_v2(
        "secret",
        &[
            kind.as_str().as_bytes(),
            scope.as_bytes(),
            name.as_bytes(),
            &repos_bytes(repos),
            &version.to_be_bytes(),
            key_id.as_bytes(),
            &updated.to_be_bytes(),
        ],
    )
}

/// Additional data of a sandbox row: the whole mapping id -> (user, repository).
fn sandbox_aad(row: &SandboxRow, version: u64, key_id: &str) -> Vec<u8> {
    aad_v2(
        "sandbox",
        &[
            row.id.as_bytes(),
            row.user.as_bytes(),
            row.repo.as_bytes(),
            &row.created.to_be_bytes(),
            &version.to_be_bytes(),
            key_id.as_bytes(),
        ],
    )
}

fn meta_aad(name: &str, key_id: &str) -> Vec<u8> {
    aad_v2("meta", &[name.as_bytes(), key_id.as_bytes()])
}

fn seal_meta(key: &Sealer, name: &str, plain: &[u8]) -> Result<MetaRecord, StoreError> {
    Ok(MetaRecord {
        name: name.to_owned(),
        key_id: key.id().to_string(),
        sealed: key.seal(plain, &meta_aad(name, key.id()), name)?,
    })
}

fn open_meta(ring: &KeyRing, m: &MetaRecord) -> Result<Zeroizing<Vec<u8>>, String> {
    let key = ring.held(&m.key_id)?;
    key.open(&m.sealed, &meta_aad(&m.name, &m.key_id), &m.name)
        .map_err(|_| "its seal does not verify (edited or replaced)".to_owned())
}

fn seal_sandbox(key: &Sealer, row: &SandboxRow, version: u64) -> Result<SandboxRecord, StoreError> {
    let sealed = key.seal(
        b"",
        &sandbox_aad(row, version, key.id()),
        &format!("sandbox {}", row.id),
    )?;
    Ok(SandboxRecord {
        id: row.id.clone(),
        user: row.user.clone(),
        repo: row.repo.clone(),
        created: row.created,
        version,
        key_id: key.id().to_string(),
        sealed,
        host: row.host.clone(),
    })
}

// ------------------------------------------------------------------------------------------
// The manifest: the current version of every row, sealed in buckets under a sealed root.

fn secret_identity(kind: ScopeKind, scope: &str, name: &str) -> String {
    format!("s\0{}\0{scope}\0{name}", kind.as_str())
}
fn sandbox_identity(id: &str) -> String {
    format!("b\0{id}")
}
/// A manifest identity in memory: a sandbox's (hex) id as its 16 bytes, no allocation; any other
/// row as its text. On disk (in the sealed buckets) both are the text form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    Sandbox([u8; 16]),
    Other(Box<str>),
}

impl Ident {
    fn parse(text: &str) -> Self {
        let hex = text.strip_prefix("b\0").filter(|h| h.len() == 32);
        let bytes = hex.and_then(|h| {
            let mut out = [0u8; 16];
            for (i, o) in out.iter_mut().enumerate() {
                let pair = h.get(2 * i..2 * i + 2)?;
                if pair.bytes().any(|c| c.is_ascii_uppercase()) {
                    return None; // only the lower-case form round-trips
                }
                *o = u8::from_str_radix(pair, 16).ok()?;
            }
            Some(out)
        });
        match bytes {
            Some(b) => Ident::Sandbox(b),
            None => Ident::Other(text.into()),
        }
    }
    fn text(&self) -> String {
        match self {
            Ident::Sandbox(b) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut out = String::with_capacity(34);
                out.push_str("b\0");
                for x in b {
                    out.push(HEX[usize::from(x >> 4)] as char);
                    out.push(HEX[usize::from(x & 15)] as char);
                }
                out
            }
            Ident::Other(s) => s.to_string(),
        }
    }
}

/// A manifest identity as a person would name the row.
fn shown_identity(identity: &str) -> String {
    let parts: Vec<&str> = identity.split('\0').collect();
    match parts.as_slice() {
        ["s", kind, scope, name] => match ScopeKind::parse(kind) {
            Some(k) => what(k, scope, name),
            None => identity.replace('\0', " "),
        },
        ["b", id] => format!("sandbox {id}"),
        _ => identity.replace('\0', " "),
    }
}
fn bucket_of(identity: &str) -> usize {
    // FNV-1a: spreads rows over buckets; the buckets are sealed, so this needs no secrecy.
    let mut h: u32 = 0x811c_9dc5;
    for b in identity.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as usize) % BUCKETS
}
fn bucket_name(b: usize) -> String {
    format!("bucket:{b}")
}

#[derive(Serialize, Deserialize)]
struct RootBody {
    generation: u64,
    buckets: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct BucketBody {
    version: u64,
    rows: Vec<(String, u64)>,
}

#[derive(Clone)]
struct Manifest {
    generation: u64,
    bucket_versions: Vec<u64>,
    buckets: Vec<BTreeMap<Ident, u64>>,
}

impl Manifest {
    fn new() -> Self {
        Self {
            generation: 0,
            bucket_versions: vec![0; BUCKETS],
            buckets: vec![BTreeMap::new(); BUCKETS],
        }
    }
    /// Records `identity` at `version` (or its removal) at generation `g`; returns its bucket.
    fn set(&mut self, identity: String, version: Option<u64>, g: u64) -> usize {
        let b = bucket_of(&identity);
        match version {
            Some(v) => self.buckets[b].insert(Ident::parse(&identity), v),
            None => self.buckets[b].remove(&Ident::parse(&identity)),
        };
        self.bucket_versions[b] = g;
        b
    }
    /// The sealed rows of the given buckets and of the root, at the current generation.
    fn sealed(
        &self,
        key: &Sealer,
        buckets: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        for b in buckets {
            let body = BucketBody {
                version: self.bucket_versions[b],
                rows: self.buckets[b]
                    .iter()
                    .map(|(k, v)| (k.text(), *v))
                    .collect(),
            };
            let plain = serde_json::to_vec(&body).unwrap_or_default();
            out.push(Change::PutMeta(seal_meta(key, &bucket_name(b), &plain)?));
        }
        let root = RootBody {
            generation: self.generation,
            buckets: self.bucket_versions.clone(),
        };
        let plain = serde_json::to_vec(&root).unwrap_or_default();
        out.push(Change::PutMeta(seal_meta(key, "root", &plain)?));
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------------
// Group commit

/// One change asked of the store; the writer decides it against the rows and the earlier
/// changes of its batch.
#[derive(Clone)]
enum Op {
    SetSecret {
        kind: ScopeKind,
        scope: String,
        name: String,
        value: Zeroizing<Vec<u8>>,
        repos: Option<Vec<String>>,
    },
    SetAccess {
        user: String,
        name: String,
        repos: Vec<String>,
    },
    DeleteSecret {
        kind: ScopeKind,
        scope: String,
        name: String,
    },
    /// Secrets of one scope set together: all are stored or none ([`Store::import_secrets`]).
    Import {
        kind: ScopeKind,
        scope: String,
        entries: Vec<(String, Zeroizing<Vec<u8>>)>,
        repos: Option<Vec<String>>,
    },
    AddSandbox(SandboxRow),
    /// A sandbox to forget; with a host, only when it is that host's.
    RemoveSandbox(String, Option<String>),
    /// A platform API token (sealed) to add, or one to revoke by id: committed at a new
    /// generation like every other change, so restoring a store from before it is a rollback.
    PutToken(backend::TokenRecord),
    RevokeToken(String),
}

enum Outcome {
    Created(bool),
    /// Of an import: for each entry, whether it was created.
    Imported(Vec<bool>),
    Done,
    Removed(SandboxRow),
}

/// Where a queued change waits: its leader puts the change's result here, or hands it the lead
/// of the next batch. Each waiter sleeps on its own condvar and is woken once, never by a
/// batch that does not hold its change.
#[derive(Default)]
struct Ticket {
    state: Mutex<TicketState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
enum TicketState {
    #[default]
    Waiting,
    /// The change is still queued and its waiter now leads the next batch.
    Lead,
    Done(Result<Outcome, StoreError>),
}

impl Ticket {
    fn set(&self, state: TicketState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.wake.notify_one();
    }
    /// Waits until the change is answered (`Some`) or its waiter is handed the lead (`None`).
    fn wait(&self) -> Option<Result<Outcome, StoreError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match std::mem::take(&mut *state) {
                TicketState::Waiting => {
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                TicketState::Lead => return None,
                TicketState::Done(r) => return Some(r),
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    pending: Vec<(Arc<Ticket>, Op)>,
    /// True while a waiter leads (gathers or commits) a batch; the others wait on their ticket.
    leading: bool,
    /// While the leader waits for its batch to fill ([`Store::gathered`]): the size it waits for.
    gathering: usize,
    /// Changes submitted and not yet answered (queued, being committed, or being woken).
    active: usize,
    /// The most changes in flight at once since the last batch was taken: under a steady load
    /// of N concurrent callers, the batch the next leader waits to gather (PostgreSQL's
    /// `commit_delay` with `commit_siblings`, sized by what was seen). One caller alone never
    /// waits.
    peak: usize,
    /// How long the last commit took: the wait to gather a batch is at most that.
    last_commit: std::time::Duration,
}

/// The most a leader waits for its batch to fill: never longer than the last commit took (a
/// caller waiting to join pays at most about one more commit), and never over this.
const GATHER_AT_MOST: std::time::Duration = std::time::Duration::from_millis(3);

/// The lead of a group commit. [`Lead::answer`] (or, if the commit panicked, dropping it with
/// an error for each change) answers the batch's changes and hands the lead to the first change
/// queued meanwhile.
struct Lead<'a> {
    store: &'a Store,
    tickets: Vec<Arc<Ticket>>,
}

impl Lead<'_> {
    /// Answers each change of the batch (`results` in the batch's order); returns the result of
    /// `own`'s change, which this thread answers itself.
    fn answer(
        &mut self,
        own: &Arc<Ticket>,
        results: Vec<Result<Outcome, StoreError>>,
    ) -> Option<Result<Outcome, StoreError>> {
        let mut mine = None;
        for (ticket, result) in self.tickets.drain(..).zip(results) {
            if Arc::ptr_eq(&ticket, own) {
                mine = Some(result);
            } else {
                ticket.set(TicketState::Done(result));
            }
        }
        let mut q = self.store.queue.lock().unwrap_or_else(|e| e.into_inner());
        match q.pending.first() {
            Some((next, _)) => next.set(TicketState::Lead),
            None => q.leading = false,
        }
        mine
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let failed = self
            .tickets
            .iter()
            .map(|_| {
                Err(StoreError::Untrusted(
                    "the commit of this change did not finish".into(),
                ))
            })
            .collect();
        let none = Arc::new(Ticket::default());
        self.answer(&none, failed);
    }
}

/// What only the writer touches: the backend and the manifest.
struct Writer {
    backend: Box<dyn Backend>,
    manifest: Manifest,
}

/// Runs `f`, which may wait on the writer, without stalling a multi-threaded async runtime's
/// worker: other tasks (more creates joining the next batch) keep running meanwhile.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The store: a backend for durability, an in-memory copy of verified rows for reads, the keys.
pub struct Store {
    state_dir: PathBuf,
    description: String,
    writer: Mutex<Writer>,
    queue: Mutex<Queue>,
    /// Signalled when the batch a leader gathers is full ([`Store::gathered`]).
    turn: std::sync::Condvar,
    cache: RwLock<Cache>,
    keys: RwLock<KeyRing>,
    /// Bumped by every change, under the write lock: answers built at an older generation are
    /// stale.
    generation: AtomicU64,
    /// Rows refused when the store was opened (or last re-read), with the reason.
    refused: Mutex<Vec<String>>,
    /// The platform API's tokens that verified, by hash (`tokens.rs`).
    tokens: RwLock<tokens::TokenCache>,
    /// `sqlite` or `postgres`.
    kind: &'static str,
    /// A shared store's connection state and announced generation.
    link: Option<tokio::sync::watch::Receiver<backend::Link>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.description)
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The state directory as this daemon must find it: ours or root's, not writable by others.
fn check_state_dir(state_dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|error| StoreError::StateDir {
            path: state_dir.to_owned(),
            error,
        })?;
    let meta = std::fs::metadata(state_dir).map_err(|error| StoreError::StateDir {
        path: state_dir.to_owned(),
        error,
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(StoreError::StateDirOwner {
            path: state_dir.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StoreError::StateDirMode {
            path: state_dir.to_owned(),
            mode,
        });
    }
    nix::unistd::access(state_dir, nix::unistd::AccessFlags::W_OK).map_err(|error| {
        StoreError::NotWritable {
            path: state_dir.to_owned(),
            error,
        }
    })?;
    // The database and its journal files: ours, regular files.
    for name in [DB_FILE, "secrets.db-wal", "secrets.db-shm"] {
        let path = state_dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(_) => continue,
            Ok(m) if !m.file_type().is_file() => return Err(StoreError::DbNotFile { path }),
            Ok(m) if m.uid() != euid => {
                return Err(StoreError::DbOwner {
                    path,
                    owner: m.uid(),
                    euid,
                })
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store in `state_dir`, refusing a rolled-back one.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(state_dir, OpenOptions::default())
    }

    /// Opens the store in `state_dir`: checks the directory, database and key files, finishes
    /// or undoes an interrupted key rotation, migrates an older schema (after a backup next to
    /// it), verifies every row against its seal and the manifest (refusing, by name, each row
    /// that does not verify) and compares the generation with the file beside the key.
    pub fn open_with(state_dir: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        check_state_dir(state_dir)?;
        let db_path = state_dir.join(DB_FILE);
        let backend = sqlite::Sqlite::open(&db_path)?;
        Self::open_backend(state_dir, Box::new(backend), options)
    }

    /// Opens the store `store` names: `None` (or `sqlite`) for the SQLite file in `state_dir`,
    /// a `postgres://` URL for a store shared by many brokers. The key and generation files
    /// live in `state_dir` either way.
    pub fn open_at(
        state_dir: &Path,
        store: Option<&str>,
        options: OpenOptions,
    ) -> Result<Self, StoreError> {
        match store {
            None | Some("sqlite") => Self::open_with(state_dir, options),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                #[cfg(feature = "postgres")]
                {
                    check_state_dir(state_dir)?;
                    let backend = postgres::Postgres::open(url)?;
                    Self::open_backend(state_dir, Box::new(backend), options)
                }
                #[cfg(not(feature = "postgres"))]
                Err(StoreError::BadStore {
                    store: "postgres://...".into(),
                    reason: "this build has no PostgreSQL support (cargo feature `postgres`)"
                        .into(),
                })
            }
            Some(_) => Err(StoreError::BadStore {
                store: "given with --store".into(),
                reason: "give a postgres:// URL, or leave --store out for the SQLite file in the state directory".into(),
            }),
        }
    }

    /// Opens the store over any backend; the key and generation files live in `state_dir`.
    pub fn open_backend(
        state_dir: &Path,
        mut backend: Box<dyn Backend>,
        options: OpenOptions,
    ) -> Result<Self, StoreError> {
        let key_path = state_dir.join(KEY_FILE);
        let next_path = state_dir.join(NEXT_KEY_FILE);
        let key_files = |error| StoreError::KeyFiles {
            path: state_dir.to_owned(),
            error,
        };
        let version = backend.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version });
        }
        if version == 0 {
            // A new store: the key is written as key.next first, so a crash before the first
            // commit leaves no `key` without a key check.
            if keys::load_optional(&key_path)?.is_some() {
                return Err(StoreError::KeyCheckMissing { path: key_path });
            }
            let _ = std::fs::remove_file(&next_path);
            let key = Sealer::create(&next_path)?;
            let mut rows = vec![Change::PutMeta(seal_meta(&key, "keycheck", KEY_CHECK)?)];
            let mut manifest = Manifest::new();
            manifest.generation = 1;
            rows.extend(manifest.sealed(&key, [])?);
            backend.migrate(0, &rows)?;
            keys::promote_next(state_dir, None).map_err(key_files)?;
        } else if version == 1 {
            migrate_v1(state_dir, backend.as_mut())?;
        } else if version < SCHEMA_VERSION {
            if backend.link().is_none() {
                let backup = state_dir.join(format!("{DB_FILE}.v{version}-{}.bak", now()));
                backend
                    .backup(&backup)
                    .map_err(|e| StoreError::MigrationBackup(Box::new(e)))?;
                tracing::info!(backup = %backup.display(), "migrating the store from schema {version} to {SCHEMA_VERSION}");
            }
            backend.migrate(version, &[])?;
        }

        let snap = backend.load()?;
        let meta: HashMap<&str, &MetaRecord> =
            snap.meta.iter().map(|m| (m.name.as_str(), m)).collect();

        // Settle the key files against the key check: finish or undo a rotation.
        let key = keys::load_optional(&key_path)?;
        // A `key.next` shorter than a key is a rotation killed between creating the file and
        // writing it: it sealed nothing (a rotation commits only after its key is synced), so
        // it goes. Anything else wrong with it is refused as before.
        if let Ok(m) = std::fs::symlink_metadata(&next_path) {
            if m.file_type().is_file() && (m.len() as usize) < seal::KEY_LEN {
                tracing::warn!(path = %next_path.display(), "removing a key.next cut short by a crash (a rotation that never committed)");
                std::fs::remove_file(&next_path).map_err(key_files)?;
            }
        }
        let next = keys::load_optional(&next_path)?;
        let Some(check) = meta.get("keycheck") else {
            return Err(match key {
                Some(_) => StoreError::KeyCheckMissing { path: key_path },
                None => StoreError::MissingKey {
                    path: key_path,
                    count: snap.secrets.len(),
                },
            });
        };
        let mut ring = match (key, next) {
            (Some(k), next) if **k.id() == *check.key_id => {
                if next.is_some() {
                    // A rotation that never committed: its key sealed nothing.
                    std::fs::remove_file(&next_path).map_err(key_files)?;
                }
                KeyRing::new(k)
            }
            (old, Some(n)) if **n.id() == *check.key_id => {
                // A rotation that committed but did not finish renaming its files.
                keys::promote_next(state_dir, old.as_ref()).map_err(key_files)?;
                let mut ring = KeyRing::new(n);
                if let Some(old) = old {
                    ring.add(old);
                }
                ring
            }
            (None, _) => {
                return Err(StoreError::MissingKey {
                    path: key_path,
                    count: snap.secrets.len(),
                })
            }
            (Some(k), next) => {
                if next.is_some() {
                    std::fs::remove_file(&next_path).map_err(key_files)?;
                }
                KeyRing::new(k)
            }
        };
        keys::add_retired(state_dir, &mut ring);
        let Some(check_key) = ring.get(&check.key_id) else {
            return Err(StoreError::WrongKey {
                path: key_path,
                held: ring.active().id().to_string(),
                wanted: check.key_id.clone(),
            });
        };
        let check_ok = check_key
            .open(
                &check.sealed,
                &meta_aad("keycheck", &check.key_id),
                "key check",
            )
            .is_ok_and(|v| v.as_slice() == KEY_CHECK);
        if !check_ok {
            return Err(StoreError::Untrusted(format!(
                "the key check does not open with key id {}: the database was altered outside the daemon; restore it from a backup",
                check.key_id
            )));
        }

        let Verified {
            manifest,
            cache,
            refused,
            rebuild,
        } = verify(
            snap.meta,
            snap.secrets,
            snap.sandboxes,
            &ring,
            options.accept_rollback,
            false,
        )?;
        for r in &refused {
            tracing::error!(row = %r, "row refused: it is not served; every other row is");
        }

        // Rollback: the generation beside the key must not be ahead of the store's.
        match keys::read_generation(state_dir, &ring) {
            FileGeneration::At(file) if file > manifest.generation => {
                if !options.accept_rollback {
                    return Err(StoreError::RolledBack {
                        store: manifest.generation,
                        file,
                    });
                }
                tracing::warn!(
                    store = manifest.generation,
                    file,
                    "serving a store older than the last one this host wrote (--accept-rollback)"
                );
            }
            FileGeneration::At(file) if file < manifest.generation => {
                tracing::info!(
                    store = manifest.generation,
                    file,
                    "generation file behind the store (sandboxes created since the last other change, or a crash after a commit); updated"
                );
            }
            FileGeneration::At(_) => {}
            FileGeneration::Missing if manifest.generation <= 1 || options.accept_rollback => {}
            FileGeneration::Missing if backend.link().is_some() => {
                // A host joining a shared store: from now on its file guards it too.
                tracing::info!(
                    store = manifest.generation,
                    "first start of this host on the shared store; generation file written"
                );
            }
            FileGeneration::Missing => {
                return Err(StoreError::Untrusted(format!(
                    "generation file {} is missing but the store is at generation {}: it was removed, or this store was copied from another host; start with `serve --accept-rollback` to serve it anyway",
                    state_dir.join(GENERATION_FILE).display(),
                    manifest.generation
                )))
            }
            FileGeneration::Bad(why) if options.accept_rollback => {
                tracing::warn!(reason = %why, "generation file replaced (--accept-rollback)");
            }
            FileGeneration::Bad(why) => {
                return Err(StoreError::Untrusted(format!(
                    "{why}; start with `serve --accept-rollback` to serve the store anyway"
                )))
            }
        }
        let token_cache = tokens::load(backend.as_mut(), &ring)?;
        let mut writer = Writer { backend, manifest };
        if rebuild {
            let g = writer.manifest.generation;
            let all: Vec<usize> = (0..BUCKETS).collect();
            let rows = writer.manifest.sealed(ring.active(), all)?;
            writer.backend.apply(&rows)?;
            writer.manifest.generation = g;
        }
        if let Err(e) = keys::write_generation(state_dir, ring.active(), writer.manifest.generation)
        {
            tracing::warn!(error = %e, "cannot update the generation file");
        }
        let link = writer.backend.link();
        Ok(Self {
            state_dir: state_dir.to_owned(),
            description: writer.backend.describe(),
            kind: if link.is_some() { "postgres" } else { "sqlite" },
            link,
            writer: Mutex::new(writer),
            queue: Mutex::new(Queue::default()),
            turn: std::sync::Condvar::new(),
            cache: RwLock::new(cache),
            keys: RwLock::new(ring),
            generation: AtomicU64::new(1),
            refused: Mutex::new(refused),
            tokens: RwLock::new(token_cache),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }
    fn ring(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation: it changes whenever the store does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The persisted generation of the store (the manifest root's), for status and backups.
    pub fn stored_generation(&self) -> u64 {
        self.lock_writer().manifest.generation
    }

    /// Names every row refused when the store was opened, with the reason (already logged).
    pub fn unreadable(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Where the data lives (a path, or a URL without its password).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// For a store several brokers share: the connection's state and the generation the other
    /// brokers announced; watch it and call [`Store::refresh`] when it moves.
    pub fn link(&self) -> Option<tokio::sync::watch::Receiver<backend::Link>> {
        self.link.clone()
    }

    /// Re-reads a shared store after another broker committed (or the connection came back):
    /// every row verified again against its seal and the manifest, then swapped in at once.
    /// Returns true when the store had moved. A store older than the one already served is
    /// refused (a rollback), and the rows served so far stay.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        blocking(|| {
            let mut writer = self.lock_writer();
            self.refresh_locked(&mut writer)
        })
    }

    fn refresh_locked(&self, writer: &mut Writer) -> Result<bool, StoreError> {
        let base = writer.manifest.generation;
        // First only what changed since `base`; everything when that does not line up.
        if let Some(delta) = writer.backend.load_since(base)? {
            if delta.head.is_some_and(|h| h == base) {
                return Ok(false);
            }
            let rotated = self.take_keys(&delta.meta);
            if !rotated {
                if let Some(changed) = self.merge_delta(writer, delta)? {
                    return Ok(changed);
                }
            }
        }
        let snap = writer.backend.load()?;
        if snap.head.is_some_and(|h| h == writer.manifest.generation) {
            return Ok(false);
        }
        self.take_keys(&snap.meta);
        let verified = {
            let ring = self.ring();
            verify(snap.meta, snap.secrets, snap.sandboxes, &ring, false, false)?
        };
        let g = verified.manifest.generation;
        if g < writer.manifest.generation {
            return Err(StoreError::RolledBack {
                store: g,
                file: writer.manifest.generation,
            });
        }
        if g == writer.manifest.generation {
            return Ok(false);
        }
        {
            let mut old = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            for r in verified.refused.iter().filter(|r| !old.contains(r)) {
                tracing::error!(row = %r, "row refused: it is not served; every other row is");
            }
            *old = verified.refused;
        }
        writer.manifest = verified.manifest;
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            *cache = verified.cache;
        }
        tracing::debug!(generation = g, "store re-read in full");
        self.note_generation(g);
        Ok(true)
    }

    fn note_generation(&self, g: u64) {
        let ring = self.ring();
        if let Err(e) = keys::write_generation(&self.state_dir, ring.active(), g) {
            tracing::warn!(error = %e, "cannot update the generation file");
        }
    }

    /// Keys provisioned since (docs/operations.md, "Keys on many hosts"): retired key files are
    /// picked up, and the key another broker rotated to becomes the active one here too once
    /// this host holds it. True when the store's key check names another key than the active
    /// one had (a rotation: every row was re-sealed, so the store is read in full).
    fn take_keys(&self, meta: &[MetaRecord]) -> bool {
        let mut ring = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys::add_retired(&self.state_dir, &mut ring);
        let Some(check) = meta.iter().find(|m| m.name == "keycheck") else {
            return false;
        };
        if **ring.active().id() == *check.key_id {
            return false;
        }
        if let Some(key) = ring.get(&check.key_id).cloned() {
            tracing::info!(key_id = %check.key_id, "the store was rotated to a key this host holds; sealing with it from now on");
            ring.promote_shared(key);
        }
        true
    }

    /// Catches up from the rows written since the last read: the manifest (root and every
    /// bucket) is verified whole, the new rows against their seals and the manifest; rows the
    /// manifest no longer lists are dropped. `None` (nothing changed here) unless every row the
    /// manifest lists is then held at its version, and no row anywhere is refused: the caller
    /// then reads the whole store.
    fn merge_delta(
        &self,
        writer: &mut Writer,
        delta: backend::Snapshot,
    ) -> Result<Option<bool>, StoreError> {
        let base = writer.manifest.generation;
        if !self.unreadable().is_empty() {
            return Ok(None);
        }
        let verified = {
            let ring = self.ring();
            verify(
                delta.meta,
                delta.secrets,
                delta.sandboxes,
                &ring,
                false,
                true,
            )?
        };
        let g = verified.manifest.generation;
        if g < base {
            return Err(StoreError::RolledBack {
                store: g,
                file: base,
            });
        }
        if g == base {
            return Ok(Some(false));
        }
        if !verified.refused.is_empty() {
            return Ok(None);
        }
        let m = &verified.manifest;
        let new = &verified.cache;
        let listed = |identity: &str| {
            m.buckets[bucket_of(identity)]
                .get(&Ident::parse(identity))
                .copied()
        };
        // Checked under the read lock (fetches go on): only the writer, whose lock is held
        // here, changes the rows.
        let cache = self.read();
        // Every row the manifest lists: new, or held at its version.
        for bucket in &m.buckets {
            for (ident, &v) in bucket {
                let text = ident.text();
                let parts: Vec<&str> = text.split('\0').collect();
                let held = match parts.as_slice() {
                    ["b", id] => new
                        .sandboxes
                        .get(*id)
                        .or_else(|| cache.sandboxes.get(*id))
                        .map(|e| e.version),
                    ["s", kind, scope, name] => ScopeKind::parse(kind).and_then(|k| {
                        let key = (k, (*scope).to_owned(), (*name).to_owned());
                        new.secrets
                            .get(&key)
                            .or_else(|| cache.secrets.get(&key))
                            .map(|r| r.version)
                    }),
                    _ => None,
                };
                if held != Some(v) {
                    tracing::debug!(row = %shown_identity(&text), "the rows read since the last generation do not line up; reading the whole store");
                    return Ok(None);
                }
            }
        }
        // Rows the manifest no longer lists went away.
        let gone_secrets: Vec<Key> = cache
            .secrets
            .keys()
            .filter(|(k, sc, n)| listed(&secret_identity(*k, sc, n)).is_none())
            .cloned()
            .collect();
        let gone_sandboxes: Vec<Box<str>> = cache
            .sandboxes
            .keys()
            .filter(|id| listed(&sandbox_identity(id)).is_none())
            .cloned()
            .collect();
        let (changed, removed) = (
            new.secrets.len() + new.sandboxes.len(),
            gone_secrets.len() + gone_sandboxes.len(),
        );
        drop(cache);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        for k in &gone_secrets {
            cache.secrets.remove(k);
        }
        for id in &gone_sandboxes {
            cache.sandboxes.remove(id);
        }
        let verified_cache = verified.cache;
        for (k, row) in verified_cache.secrets {
            cache.secrets.insert(k, row);
        }
        for (id, entry) in verified_cache.sandboxes {
            cache.put_sandbox(id, entry);
        }
        if !gone_sandboxes.is_empty() {
            cache.prune_names();
        }
        drop(cache);
        writer.manifest = verified.manifest;
        tracing::debug!(
            generation = g,
            changed,
            removed,
            "store re-read from generation {base}: only the rows written since"
        );
        self.note_generation(g);
        Ok(Some(true))
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` and waits until a batch holding it is committed (or refused). A caller that
    /// finds no batch being led leads one: it lets the changes in flight join
    /// ([`Store::gathered`]), commits everything queued by then in one transaction, answers each
    /// change through its ticket and hands the lead to the first change queued meanwhile.
    fn submit(&self, op: Op) -> Result<Outcome, StoreError> {
        let ticket = Arc::new(Ticket::default());
        let lead_now = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push((Arc::clone(&ticket), op));
            q.active += 1;
            q.peak = q.peak.max(q.active);
            if q.gathering > 0 && q.pending.len() >= q.gathering {
                self.turn.notify_one();
            }
            !std::mem::replace(&mut q.leading, true)
        };
        // Counted out however this returns (a commit that panics included), or every later
        // batch would wait for a change that never comes.
        struct InFlight<'a>(&'a Mutex<Queue>);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).active -= 1;
            }
        }
        let _in_flight = InFlight(&self.queue);
        blocking(|| {
            if !lead_now {
                if let Some(r) = ticket.wait() {
                    return r;
                }
            }
            self.lead(&ticket)
        })
    }

    /// Leads one batch holding `own`'s change (queued, not yet taken): gathers, commits,
    /// answers, hands the lead on.
    fn lead(&self, own: &Arc<Ticket>) -> Result<Outcome, StoreError> {
        let batch = {
            let mut q = self.gathered();
            // What is in flight now is what the next batch can expect to gather.
            q.peak = q.active;
            std::mem::take(&mut q.pending)
        };
        let started = std::time::Instant::now();
        let (tickets, ops): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let size = ops.len();
        // Answers every change even if the commit panics, so no waiter waits forever.
        let mut lead = Lead {
            store: self,
            tickets,
        };
        let committed = {
            let mut writer = self.lock_writer();
            self.commit(&mut writer, (0u64..).zip(ops).collect())
        };
        let mut results: Vec<Option<Result<Outcome, StoreError>>> =
            (0..size).map(|_| None).collect();
        for (i, r) in committed {
            results[i as usize] = Some(r);
        }
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Untrusted(
                        "the commit of this change did not finish".into(),
                    ))
                })
            })
            .collect();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_commit = started.elapsed();
        lead.answer(own, results).unwrap_or_else(|| {
            Err(StoreError::Untrusted(
                "the commit of this change did not finish".into(),
            ))
        })
    }

    /// The queue once the batch about to be taken is full: when more changes were in flight at
    /// once than are queued, waits (at most [`GATHER_AT_MOST`], and the last commit's time)
    /// for them to join, as the callers just answered come back under a steady load. One
    /// caller alone never waits.
    fn gathered(&self) -> std::sync::MutexGuard<'_, Queue> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let want = q.peak;
        if want <= 1 || q.pending.len() >= want {
            return q;
        }
        let wait = q.last_commit.min(GATHER_AT_MOST);
        let deadline = std::time::Instant::now() + wait;
        q.gathering = want;
        while q.pending.len() < want {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            q = self
                .turn
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.gathering = 0;
        q
    }

    /// Commits `batch` ([`Store::commit_once`]); when another broker of a shared store
    /// committed first, re-reads the store and decides the batch again against what it holds.
    fn commit(
        &self,
        writer: &mut Writer,
        batch: Vec<(u64, Op)>,
    ) -> Vec<(u64, Result<Outcome, StoreError>)> {
        const ATTEMPTS: usize = 8;
        // First optimistically; after losing the race, under the store's write lock (taken
        // before catching up), so a busier broker cannot starve this one.
        let mut locked = false;
        for _ in 0..ATTEMPTS {
            let results = self.commit_once(writer, batch.clone());
            if locked {
                // Released if the commit did not use it (nothing to write, or an error).
                writer.backend.unlock_writes();
            }
            if let Some(results) = results {
                return results;
            }
            let caught_up = writer
                .backend
                .lock_writes()
                .and_then(|()| self.refresh_locked(writer));
            locked = true;
            if let Err(e) = caught_up {
                writer.backend.unlock_writes();
                return batch
                    .iter()
                    .map(|(t, _)| (*t, Err(e.for_each_member())))
                    .collect();
            }
        }
        batch
            .iter()
            .map(|(t, _)| {
                (
                    *t,
                    Err(StoreError::Unavailable(format!(
                        "other brokers kept committing first ({ATTEMPTS} attempts); try again"
                    ))),
                )
            })
            .collect()
    }

    /// Decides each op of `batch` in order, writes the accepted ones with the touched manifest
    /// buckets and root in one transaction, then makes them visible. `None` when a shared
    /// store moved meanwhile (nothing written, nothing changed here).
    fn commit_once(
        &self,
        writer: &mut Writer,
        batch: Vec<(u64, Op)>,
    ) -> Option<Vec<(u64, Result<Outcome, StoreError>)>> {
        let ring = self.ring();
        let key = Arc::clone(ring.active());
        let g = writer.manifest.generation + 1;
        let mut secrets: BTreeMap<Key, Option<Row>> = BTreeMap::new();
        let mut sandboxes: BTreeMap<String, Option<SandboxEntry>> = BTreeMap::new();
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let mut touched = std::collections::BTreeSet::new();
        {
            let cache = self.read();
            for (ticket, op) in batch {
                let r = decide(
                    &cache,
                    &ring,
                    &key,
                    g,
                    op,
                    &mut secrets,
                    &mut sandboxes,
                    &mut changes,
                );
                results.push((ticket, r));
            }
        }
        if changes.is_empty() {
            return Some(results);
        }
        // Changed in place; the touched buckets are saved first so a failed commit restores them.
        let manifest = &mut writer.manifest;
        let mut saved: BTreeMap<usize, (BTreeMap<Ident, u64>, u64)> = BTreeMap::new();
        let old_generation = manifest.generation;
        for change in &changes {
            let (identity, version) = match change {
                Change::PutSecret(r) => (secret_identity(r.kind, &r.scope, &r.name), Some(g)),
                Change::DeleteSecret { kind, scope, name } => {
                    (secret_identity(*kind, scope, name), None)
                }
                Change::PutSandbox(r) => (sandbox_identity(&r.id), Some(g)),
                Change::DeleteSandbox(id) => (sandbox_identity(id), None),
                // Outside the manifest: the root's new generation is what dates them.
                Change::PutMeta(_) | Change::PutToken(_) | Change::DeleteToken(_) => continue,
            };
            let b = bucket_of(&identity);
            saved
                .entry(b)
                .or_insert_with(|| (manifest.buckets[b].clone(), manifest.bucket_versions[b]));
            touched.insert(manifest.set(identity, version, g));
        }
        manifest.generation = g;
        let written = manifest.sealed(&key, touched).and_then(|meta| {
            changes.extend(meta);
            writer.backend.apply_at(Some(old_generation), &changes)
        });
        if let Err(e) = written {
            let manifest = &mut writer.manifest;
            for (b, (rows, version)) in saved {
                manifest.buckets[b] = rows;
                manifest.bucket_versions[b] = version;
            }
            manifest.generation = old_generation;
            if matches!(e, StoreError::Moved { .. }) {
                return None;
            }
            return Some(
                results
                    .into_iter()
                    .map(|(t, r)| (t, r.and_then(|_| Err(e.for_each_member()))))
                    .collect(),
            );
        }
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            // Bumped while readers are shut out, so no reader pairs the new generation with old
            // contents or the old one with new contents.
            self.generation.fetch_add(1, Ordering::SeqCst);
            for (k, row) in secrets {
                match row {
                    Some(row) => cache.secrets.insert(k, row),
                    None => cache.secrets.remove(&k),
                };
            }
            let mut removed = false;
            for (id, entry) in sandboxes {
                match entry {
                    Some(entry) => cache.put_sandbox(id.into(), entry),
                    None => removed |= cache.sandboxes.remove(id.as_str()).is_some(),
                }
            }
            if removed {
                cache.prune_names();
            }
        }
        // A commit of creates alone may not be on disk until the next commit syncs it: the file
        // follows at that commit, so a power loss never leaves it ahead of the store.
        if !Change::only_adds_sandboxes(&changes) {
            if let Err(e) = keys::write_generation(&self.state_dir, &key, g) {
                tracing::warn!(error = %e, "cannot update the generation file");
            }
        }
        Some(results)
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
        match self.submit(Op::SetSecret {
            kind,
            scope: scope.to_owned(),
            name: name.to_owned(),
            value: Zeroizing::new(value.as_bytes().to_vec()),
            repos,
        })? {
            Outcome::Created(c) => Ok(c),
            _ => Ok(false),
        }
    }

    /// Creates or updates every `(name, value)` of `entries` in one scope, in one transaction:
    /// all are stored, or (the first refused entry named by [`StoreError::Entry`]) none.
    /// `repos` as in [`Store::set_secret`], for each entry. Returns, per entry, whether it was
    /// created.
    pub fn import_secrets(
        &self,
        kind: ScopeKind,
        scope: &str,
        entries: Vec<(String, Zeroizing<Vec<u8>>)>,
        repos: Option<Vec<String>>,
    ) -> Result<Vec<bool>, StoreError> {
        match self.submit(Op::Import {
            kind,
            scope: scope.to_owned(),
            entries,
            repos,
        })? {
            Outcome::Imported(created) => Ok(created),
            _ => Ok(Vec::new()),
        }
    }

    /// Replaces the list of repositories that may read a user secret, without its value.
    pub fn set_access(&self, user: &str, name: &str, repos: Vec<String>) -> Result<(), StoreError> {
        self.submit(Op::SetAccess {
            user: user.to_owned(),
            name: name.to_owned(),
            repos,
        })
        .map(drop)
    }

    /// Deletes a secret.
    pub fn delete_secret(
        &self,
        kind: ScopeKind,
        scope: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        self.submit(Op::DeleteSecret {
            kind,
            scope: scope.to_owned(),
            name: name.to_owned(),
        })
        .map(drop)
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

    /// Records a new sandbox. Concurrent calls share one transaction (group commit); each
    /// returns once its row is durable.
    pub fn add_sandbox(&self, sandbox: SandboxRow) -> Result<(), StoreError> {
        self.submit(Op::AddSandbox(sandbox)).map(drop)
    }

    /// Forgets a sandbox.
    pub fn remove_sandbox(&self, id: &str) -> Result<SandboxRow, StoreError> {
        self.remove_sandbox_on(id, None)
    }

    /// Forgets a sandbox if it is served by `host` (see [`SandboxRow::served_by`]); a sandbox
    /// of another host is refused naming that host, in the same decision as the removal.
    pub fn remove_sandbox_on(
        &self,
        id: &str,
        host: Option<&str>,
    ) -> Result<SandboxRow, StoreError> {
        match self.submit(Op::RemoveSandbox(id.to_owned(), host.map(str::to_owned)))? {
            Outcome::Removed(row) => Ok(row),
            _ => Err(StoreError::SandboxNotFound(id.to_owned())),
        }
    }

    /// Every sandbox, by id.
    pub fn sandboxes(&self) -> Vec<SandboxRow> {
        self.read()
            .sandboxes
            .iter()
            .map(|(id, e)| e.row(id))
            .collect()
    }

    /// One sandbox.
    pub fn sandbox(&self, id: &str) -> Option<SandboxRow> {
        self.read().sandboxes.get(id).map(|e| e.row(id))
    }

    /// The authorized secrets of a sandbox, opened. A value that does not open is an error naming
    /// the secret; nothing else is returned then.
    pub fn fetch(&self, id: &str) -> Result<Fetched, StoreError> {
        let cache = self.read();
        let generation = self.generation();
        let sandbox = cache
            .sandboxes
            .get(id)
            .map(|e| e.row(id))
            .ok_or_else(|| StoreError::SandboxNotFound(id.to_owned()))?;
        let entries = plan_in(&cache, &sandbox.user, &sandbox.repo);
        let ring = self.ring();
        let mut secrets = Vec::with_capacity(entries.len());
        for entry in entries {
            let (kind, scope) = match entry.from {
                acl::Level::User => (ScopeKind::User, sandbox.user.as_str()),
                acl::Level::Repository => (ScopeKind::Repo, sandbox.repo.as_str()),
            };
            let key = (kind, scope.to_owned(), entry.name);
            let row = cache.secrets.get(&key).expect("plan names stored rows");
            let value = open_row(&ring, kind, scope, &key.2, row)?;
            secrets.push((key.2, value));
        }
        Ok(Fetched {
            sandbox,
            generation,
            secrets,
        })
    }

    /// The key ids this host holds and how many rows each seals.
    pub fn key_status(&self) -> KeyStatus {
        let ring = self.ring();
        let cache = self.read();
        let mut rows: BTreeMap<String, usize> = BTreeMap::new();
        for row in cache.secrets.values() {
            *rows.entry(row.key_id.to_string()).or_default() += 1;
        }
        for e in cache.sandboxes.values() {
            *rows.entry(e.key_id.to_string()).or_default() += 1;
        }
        KeyStatus {
            active: ring.active().id().to_string(),
            held: ring.ids(),
            rows,
        }
    }

    /// Rotates the key: writes a new key as `key.next`, re-seals every row, the manifest and
    /// the key check under it in one transaction, then keeps the old key as
    /// `key.retired-<id>` and renames `key.next` to `key`. A crash at any point leaves a store
    /// that `open` settles to one consistent key. Returns the new key id.
    pub fn rotate_key(&self) -> Result<String, StoreError> {
        blocking(|| {
            let rotated = self.rotate_locked();
            // A rotation that failed before its commit gives the store's write lock back.
            self.lock_writer().backend.unlock_writes();
            rotated
        })
    }

    fn rotate_locked(&self) -> Result<String, StoreError> {
        let mut writer = self.lock_writer();
        if self.link.is_some() {
            // Re-seal what the shared store holds now, not what this broker saw last: under the
            // store's write lock, so no other broker commits in between.
            writer.backend.lock_writes()?;
            self.refresh_locked(&mut writer)?;
        }
        let key_files = |error| StoreError::KeyFiles {
            path: self.state_dir.clone(),
            error,
        };
        let next_path = self.state_dir.join(NEXT_KEY_FILE);
        let _ = std::fs::remove_file(&next_path);
        let new = Sealer::create(&next_path)?;
        let old = self.ring();
        let g = writer.manifest.generation + 1;
        let mut changes = vec![Change::PutMeta(seal_meta(&new, "keycheck", KEY_CHECK)?)];
        let mut new_secrets = BTreeMap::new();
        let mut new_sandboxes = BTreeMap::new();
        {
            let cache = self.read();
            for ((kind, scope, name), row) in &cache.secrets {
                if row.refused.is_some() {
                    // Left as it is, under its old key: it stays refused.
                    new_secrets.insert((*kind, scope.clone(), name.clone()), row.clone());
                    continue;
                }
                let value = open_row(&old, *kind, scope, name, row)?;
                let rec = seal_secret(
                    &new,
                    *kind,
                    scope,
                    name,
                    &value,
                    row.repos.clone(),
                    row.version,
                    row.updated,
                )?;
                new_secrets.insert((*kind, scope.clone(), name.clone()), row_of(&rec, new.id()));
                changes.push(Change::PutSecret(rec));
            }
            for (id, e) in &cache.sandboxes {
                changes.push(Change::PutSandbox(seal_sandbox(
                    &new,
                    &e.row(id),
                    e.version,
                )?));
                new_sandboxes.insert(
                    id.clone(),
                    SandboxEntry {
                        key_id: Arc::clone(new.id()),
                        ..e.clone()
                    },
                );
            }
        }
        let mut manifest = writer.manifest.clone();
        manifest.generation = g;
        changes.extend(manifest.sealed(&new, 0..BUCKETS)?);
        drop(old);
        let base = writer.manifest.generation;
        if let Err(e) = writer.backend.apply_at(Some(base), &changes) {
            let _ = std::fs::remove_file(&next_path);
            return Err(e);
        }
        writer.manifest = manifest;
        let old_active = {
            let ring = self.ring();
            Arc::clone(ring.active())
        };
        keys::promote_next(&self.state_dir, Some(&old_active)).map_err(key_files)?;
        let id = new.id().to_string();
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            cache.secrets = new_secrets;
            cache.sandboxes = new_sandboxes;
            self.keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .promote(new);
        }
        let ring = self.ring();
        if let Err(e) = keys::write_generation(&self.state_dir, ring.active(), g) {
            tracing::warn!(error = %e, "cannot update the generation file");
        }
        Ok(id)
    }

    /// Writes a consistent copy of the store to `dest` (which must not exist) while the daemon
    /// keeps serving; returns the generation the copy holds. Restoring it needs the key files
    /// of that generation (`key`, and any `key.retired-*` rotated since).
    pub fn backup(&self, dest: &Path) -> Result<u64, StoreError> {
        blocking(|| {
            let mut writer = self.lock_writer();
            writer.backend.backup(dest)?;
            Ok(writer.manifest.generation)
        })
    }
}

fn row_of(rec: &SecretRecord, key_id: &Arc<str>) -> Row {
    Row {
        repos: rec.repos.clone(),
        version: rec.version,
        key_id: Arc::clone(key_id),
        sealed: rec.sealed.clone(),
        updated: rec.updated,
        refused: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn seal_secret(
    key: &Sealer,
    kind: ScopeKind,
    scope: &str,
    name: &str,
    value: &[u8],
    repos: Vec<String>,
    version: u64,
    updated: i64,
) -> Result<SecretRecord, StoreError> {
    let sealed = key.seal(
        value,
        &secret_aad(kind, scope, name, &repos, version, key.id(), updated),
        &what(kind, scope, name),
    )?;
    Ok(SecretRecord {
        kind,
        scope: scope.to_owned(),
        name: name.to_owned(),
        repos,
        version,
        key_id: key.id().to_string(),
        sealed,
        updated,
    })
}

fn open_row(
    ring: &KeyRing,
    kind: ScopeKind,
    scope: &str,
    name: &str,
    row: &Row,
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    if let Some(reason) = &row.refused {
        return Err(StoreError::Refused {
            row: what(kind, scope, name),
            reason: reason.to_string(),
        });
    }
    let key = ring.get(&row.key_id).ok_or_else(|| StoreError::RowKey {
        row: what(kind, scope, name),
        id: row.key_id.to_string(),
    })?;
    Ok(key.open(
        &row.sealed,
        &secret_aad(
            kind,
            scope,
            name,
            &row.repos,
            row.version,
            &row.key_id,
            row.updated,
        ),
        &what(kind, scope, name),
    )?)
}

/// Decides one op against the rows (`cache`) and the batch's earlier decisions, adding its
/// changes; the rules are those of a store that applies ops one at a time.
#[allow(clippy::too_many_arguments)]
fn decide(
    cache: &Cache,
    ring: &KeyRing,
    key: &Sealer,
    g: u64,
    op: Op,
    secrets: &mut BTreeMap<Key, Option<Row>>,
    sandboxes: &mut BTreeMap<String, Option<SandboxEntry>>,
    changes: &mut Vec<Change>,
) -> Result<Outcome, StoreError> {
    let current = |secrets: &BTreeMap<Key, Option<Row>>, k: &Key| -> Option<Row> {
        match secrets.get(k) {
            Some(r) => r.clone(),
            None => cache.secrets.get(k).cloned(),
        }
    };
    match op {
        Op::SetSecret {
            kind,
            scope,
            name,
            value,
            repos,
        } => {
            let k = (kind, scope.clone(), name.clone());
            let existing = current(secrets, &k);
            let created = existing.is_none();
            if created {
                let mut count = cache.scope_rows(kind, &scope).count();
                for ((kk, ks, kn), r) in secrets.iter() {
                    if *kk == kind && *ks == scope {
                        let in_cache =
                            cache
                                .secrets
                                .contains_key(&(kind, scope.clone(), kn.clone()));
                        match (r.is_some(), in_cache) {
                            (true, false) => count += 1,
                            (false, true) => count -= 1,
                            _ => {}
                        }
                    }
                }
                if count >= MAX_SECRETS_PER_SCOPE {
                    return Err(StoreError::Limit { kind, scope });
                }
            }
            let repos = match (kind, repos, &existing) {
                (ScopeKind::Repo, _, _) => Vec::new(),
                (ScopeKind::User, Some(r), _) => r,
                (ScopeKind::User, None, Some(row)) if row.refused.is_some() => {
                    return Err(StoreError::RefusedNeedsRepos {
                        row: what(kind, &scope, &name),
                    })
                }
                (ScopeKind::User, None, Some(row)) => row.repos.clone(),
                (ScopeKind::User, None, None) => {
                    return Err(StoreError::ReposRequired { user: scope, name })
                }
            };
            let rec = seal_secret(key, kind, &scope, &name, &value, repos, g, now())?;
            secrets.insert(k, Some(row_of(&rec, key.id())));
            changes.push(Change::PutSecret(rec));
            Ok(Outcome::Created(created))
        }
        Op::SetAccess { user, name, repos } => {
            let k = (ScopeKind::User, user.clone(), name.clone());
            let Some(old) = current(secrets, &k) else {
                return Err(StoreError::NotFound {
                    kind: ScopeKind::User,
                    scope: user,
                    name,
                });
            };
            let value = open_row(ring, ScopeKind::User, &user, &name, &old)?;
            let rec = seal_secret(key, ScopeKind::User, &user, &name, &value, repos, g, now())?;
            secrets.insert(k, Some(row_of(&rec, key.id())));
            changes.push(Change::PutSecret(rec));
            Ok(Outcome::Done)
        }
        Op::DeleteSecret { kind, scope, name } => {
            let k = (kind, scope.clone(), name.clone());
            if current(secrets, &k).is_none() {
                return Err(StoreError::NotFound { kind, scope, name });
            }
            secrets.insert(k, None);
            changes.push(Change::DeleteSecret { kind, scope, name });
            Ok(Outcome::Done)
        }
        Op::Import {
            kind,
            scope,
            entries,
            repos,
        } => {
            // Each entry is decided like a set of its own, against the rows and the entries
            // before it; the first refusal takes back this op's decisions, so the rest of the
            // batch sees none of them and the commit writes none of them.
            let saved = secrets.clone();
            let mark = changes.len();
            let mut created = Vec::with_capacity(entries.len());
            for (i, (name, value)) in entries.into_iter().enumerate() {
                let set = Op::SetSecret {
                    kind,
                    scope: scope.clone(),
                    name: name.clone(),
                    value,
                    repos: repos.clone(),
                };
                match decide(cache, ring, key, g, set, secrets, sandboxes, changes) {
                    Ok(Outcome::Created(c)) => created.push(c),
                    Ok(_) => created.push(false),
                    Err(e) => {
                        *secrets = saved;
                        changes.truncate(mark);
                        return Err(StoreError::Entry {
                            index: i + 1,
                            name,
                            source: Box::new(e),
                        });
                    }
                }
            }
            Ok(Outcome::Imported(created))
        }
        Op::AddSandbox(row) => {
            let exists = match sandboxes.get(&row.id) {
                Some(e) => e.is_some(),
                None => cache.sandboxes.contains_key(row.id.as_str()),
            };
            if exists {
                return Err(StoreError::SandboxExists(row.id));
            }
            let rec = seal_sandbox(key, &row, g)?;
            changes.push(Change::PutSandbox(rec));
            sandboxes.insert(
                row.id.clone(),
                Some(SandboxEntry::new(row, g, Arc::clone(key.id()))),
            );
            Ok(Outcome::Done)
        }
        Op::RemoveSandbox(id, host) => {
            let existing = match sandboxes.get(&id) {
                Some(e) => e.clone(),
                None => cache.sandboxes.get(id.as_str()).cloned(),
            };
            let Some(entry) = existing else {
                return Err(StoreError::SandboxNotFound(id));
            };
            if let Some(host) = host {
                if !entry.host.is_empty() && *entry.host != *host {
                    return Err(StoreError::OtherHost {
                        id,
                        host: entry.host.to_string(),
                    });
                }
            }
            sandboxes.insert(id.clone(), None);
            let row = entry.row(&id);
            changes.push(Change::DeleteSandbox(id));
            Ok(Outcome::Removed(row))
        }
        Op::PutToken(t) => {
            changes.push(Change::PutToken(t));
            Ok(Outcome::Done)
        }
        Op::RevokeToken(id) => {
            changes.push(Change::DeleteToken(id));
            Ok(Outcome::Done)
        }
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

/// What [`verify`] found in a snapshot: the manifest, the rows that verify (and the secrets
/// that do not, kept aside), and every refusal with its reason.
struct Verified {
    manifest: Manifest,
    cache: Cache,
    refused: Vec<String>,
    /// The manifest did not verify and was rebuilt from the rows (`--accept-rollback`).
    rebuild: bool,
}

/// Checks a snapshot of the store: the manifest root, each bucket against the root, each row
/// against its seal and the version the manifest holds. Used at open and whenever another
/// broker of a shared store committed.
fn verify(
    meta_rows: Vec<MetaRecord>,
    secrets: Vec<Result<SecretRecord, backend::Malformed>>,
    sandboxes: Vec<Result<SandboxRecord, backend::Malformed>>,
    ring: &KeyRing,
    accept_rollback: bool,
    partial: bool,
) -> Result<Verified, StoreError> {
    let meta: HashMap<&str, &MetaRecord> = meta_rows.iter().map(|m| (m.name.as_str(), m)).collect();
    // The manifest: root, then each bucket against the root.
    let mut refused = Vec::new();
    let mut rebuild = false;
    if let Some(root) = meta.get("root") {
        if ring.get(&root.key_id).is_none() {
            // Not tampering: another broker of a shared store rotated to a key not yet
            // provisioned here (docs/operations.md, "Keys on many hosts").
            return Err(StoreError::RowKey {
                row: "the store's manifest".into(),
                id: root.key_id.clone(),
            });
        }
    }
    let root = meta
        .get("root")
        .ok_or_else(|| "the manifest root is missing".to_owned())
        .and_then(|m| open_meta(ring, m).map_err(|e| format!("the manifest root: {e}")))
        .and_then(|plain| {
            serde_json::from_slice::<RootBody>(&plain)
                .ok()
                .filter(|r| r.buckets.len() == BUCKETS)
                .ok_or_else(|| "the manifest root does not decode".to_owned())
        });
    let root = match root {
        Ok(r) => Some(r),
        Err(why) if accept_rollback => {
            tracing::warn!(reason = %why, "manifest rebuilt from the rows whose seals verify (--accept-rollback)");
            rebuild = true;
            None
        }
        Err(why) => {
            return Err(StoreError::Untrusted(format!(
                "{why}: the database was altered outside the daemon; restore a backup, or start with `serve --accept-rollback` to serve the rows whose seals verify"
            )))
        }
    };
    let mut manifest = Manifest::new();
    let mut bad_buckets = vec![false; BUCKETS];
    if let Some(root) = &root {
        manifest.generation = root.generation;
        manifest.bucket_versions.clone_from(&root.buckets);
        for (b, &want) in root.buckets.iter().enumerate() {
            let body = match meta.get(bucket_name(b).as_str()) {
                None if want == 0 => continue,
                None => Err("is missing".to_owned()),
                Some(m) => open_meta(ring, m).and_then(|p| {
                    serde_json::from_slice::<BucketBody>(&p)
                        .map_err(|_| "does not decode".to_owned())
                }),
            };
            match body {
                Ok(body) if body.version == want => {
                    manifest.buckets[b] = body
                        .rows
                        .into_iter()
                        .map(|(k, v)| (Ident::parse(&k), v))
                        .collect();
                }
                Ok(body) => {
                    bad_buckets[b] = true;
                    refused.push(format!(
                        "manifest bucket {b}: replayed (version {}, the current one is {want})",
                        body.version
                    ));
                }
                Err(why) => {
                    bad_buckets[b] = true;
                    refused.push(format!("manifest bucket {b}: {why}"));
                }
            }
        }
    }
    // Each row must verify against its seal and carry the version the manifest holds.
    let check_version = |identity: &str, version: u64| -> Result<(), String> {
        if rebuild {
            return Ok(());
        }
        let b = bucket_of(identity);
        if bad_buckets[b] {
            return Err(format!(
                "its manifest bucket {b} does not verify, so its version cannot be checked"
            ));
        }
        match manifest.buckets[b].get(&Ident::parse(identity)) {
            None => Err("it is not in the manifest (a deleted row put back, or a row this daemon never wrote)".to_owned()),
            Some(v) if *v != version => Err(format!(
                "replayed: version {version}, the current one is {v}"
            )),
            Some(_) => Ok(()),
        }
    };
    let mut cache = Cache::default();
    let mut seen = Vec::new();
    let mut refused_sandboxes = Vec::new();
    let mut malformed = std::collections::HashSet::new();
    for rec in secrets {
        let rec = match rec {
            Ok(r) => r,
            Err(m) => {
                refused.push(format!("{}: malformed: {}", m.row, m.reason));
                malformed.insert(m.row);
                continue;
            }
        };
        let name = what(rec.kind, &rec.scope, &rec.name);
        let identity = secret_identity(rec.kind, &rec.scope, &rec.name);
        let verdict = check_version(&identity, rec.version).and_then(|()| {
            let key = ring.held(&rec.key_id)?;
            key.open(
                &rec.sealed,
                &secret_aad(
                    rec.kind,
                    &rec.scope,
                    &rec.name,
                    &rec.repos,
                    rec.version,
                    &rec.key_id,
                    rec.updated,
                ),
                &name,
            )
            .map(drop)
            .map_err(|_| {
                "its seal does not verify (value, repository list or place edited, or swapped with another row)"
                    .to_owned()
            })
        });
        let refusal = match verdict {
            Err(why) => {
                refused.push(format!("{name}: {why}"));
                Some(Arc::from(why.as_str()))
            }
            Ok(()) => {
                seen.push((identity, rec.version));
                None
            }
        };
        cache.secrets.insert(
            (rec.kind, rec.scope, rec.name),
            Row {
                repos: rec.repos,
                version: rec.version,
                key_id: Arc::from(rec.key_id.as_str()),
                sealed: rec.sealed,
                updated: rec.updated,
                refused: refusal,
            },
        );
    }
    for rec in sandboxes {
        let rec = match rec {
            Ok(r) => r,
            Err(m) => {
                refused.push(format!("{}: malformed: {}", m.row, m.reason));
                malformed.insert(m.row);
                continue;
            }
        };
        let row = SandboxRow {
            id: rec.id.clone(),
            user: rec.user,
            repo: rec.repo,
            created: rec.created,
            host: rec.host,
        };
        let identity = sandbox_identity(&rec.id);
        let verdict = check_version(&identity, rec.version).and_then(|()| {
            let key = ring.held(&rec.key_id)?;
            key.open(
                &rec.sealed,
                &sandbox_aad(&row, rec.version, &rec.key_id),
                "",
            )
            .map(drop)
            .map_err(|_| {
                "its seal does not verify (user or repository re-pointed, or the row edited)"
                    .to_owned()
            })
        });
        if let Err(why) = verdict {
            refused.push(format!("sandbox {}: {why}", rec.id));
            refused_sandboxes.push(identity);
            continue;
        }
        seen.push((identity, rec.version));
        cache.put_sandbox(
            rec.id.into(),
            SandboxEntry::new(row, rec.version, Arc::from(rec.key_id.as_str())),
        );
    }
    if rebuild {
        manifest = Manifest::new();
        let g = seen.iter().map(|(_, v)| *v).max().unwrap_or(0) + 1;
        for (identity, v) in seen {
            manifest.set(identity, Some(v), g);
        }
        manifest.generation = g;
    }
    if !rebuild && !partial {
        // Rows the manifest expects but the database lacks: deleted outside the daemon.
        let present: std::collections::HashSet<String> = cache
            .secrets
            .keys()
            .map(|(k, sc, n)| secret_identity(*k, sc, n))
            .chain(refused_sandboxes.iter().cloned())
            .chain(cache.sandboxes.keys().map(|id| sandbox_identity(id)))
            .collect();
        for (b, bucket) in manifest.buckets.iter().enumerate() {
            if bad_buckets[b] {
                continue;
            }
            for identity in bucket
                .keys()
                .map(Ident::text)
                .filter(|i| !present.contains(i) && !malformed.contains(&shown_identity(i)))
            {
                tracing::warn!(row = %shown_identity(&identity), "row missing from the database (deleted outside the daemon?)");
            }
        }
    }
    Ok(Verified {
        manifest,
        cache,
        refused,
        rebuild,
    })
}

/// Brings a v1 store to v2: a backup next to the database first, then every row opened with
/// the v1 additional data and re-sealed with the v2 one (version 1, the key's id), the
/// sandboxes sealed, the manifest written, all in one transaction.
fn migrate_v1(state_dir: &Path, backend: &mut dyn Backend) -> Result<(), StoreError> {
    let key_path = state_dir.join(KEY_FILE);
    let v1 = backend.load_v1()?;
    let secrets_count = v1.secrets.len();
    let key = match keys::load_optional(&key_path)? {
        Some(k) => k,
        None if secrets_count == 0 && v1.keycheck.is_none() => {
            // A v1 store that never finished its first start: nothing is sealed yet.
            let _ = std::fs::remove_file(state_dir.join(NEXT_KEY_FILE));
            let k = Sealer::create(&state_dir.join(NEXT_KEY_FILE))?;
            keys::promote_next(state_dir, None).map_err(|error| StoreError::KeyFiles {
                path: state_dir.to_owned(),
                error,
            })?;
            k
        }
        None => {
            return Err(StoreError::MissingKey {
                path: key_path,
                count: secrets_count,
            })
        }
    };
    match &v1.keycheck {
        None if secrets_count > 0 => return Err(StoreError::KeyCheckMissing { path: key_path }),
        None => {}
        Some(check) => {
            let ok = key
                .open(check, &seal::aad("meta", "", "keycheck"), "key check")
                .is_ok_and(|v| v.as_slice() == KEY_CHECK);
            if !ok {
                return Err(StoreError::WrongKey {
                    path: key_path,
                    held: key.id().to_string(),
                    wanted: "of the v1 key check".to_owned(),
                });
            }
        }
    }
    let stamp = now();
    let backup = state_dir.join(format!("{DB_FILE}.v1-{stamp}.bak"));
    backend
        .backup(&backup)
        .map_err(|e| StoreError::MigrationBackup(Box::new(e)))?;
    tracing::info!(backup = %backup.display(), "migrating the store from schema 1 to {SCHEMA_VERSION}");

    let g = 1;
    let mut manifest = Manifest::new();
    let mut rows = vec![Change::PutMeta(seal_meta(&key, "keycheck", KEY_CHECK)?)];
    for s in v1.secrets {
        let s = match s {
            Ok(s) => s,
            Err(m) => {
                tracing::error!(row = %m.row, reason = %m.reason, "malformed v1 row not migrated (it stays in the backup)");
                continue;
            }
        };
        let name = what(s.kind, &s.scope, &s.name);
        let Ok(value) = key.open(
            &s.sealed,
            &seal::aad(s.kind.as_str(), &s.scope, &s.name),
            &name,
        ) else {
            tracing::error!(row = %name, "v1 row whose seal does not open not migrated (it stays in the backup)");
            continue;
        };
        let rec = seal_secret(
            &key, s.kind, &s.scope, &s.name, &value, s.repos, g, s.updated,
        )?;
        manifest.set(secret_identity(s.kind, &s.scope, &s.name), Some(g), g);
        rows.push(Change::PutSecret(rec));
    }
    for sb in v1.sandboxes {
        let (id, user, repo, created) = match sb {
            Ok(t) => t,
            Err(m) => {
                tracing::error!(row = %m.row, reason = %m.reason, "malformed v1 row not migrated (it stays in the backup)");
                continue;
            }
        };
        let row = SandboxRow {
            id,
            user,
            repo,
            created,
            host: String::new(),
        };
        manifest.set(sandbox_identity(&row.id), Some(g), g);
        rows.push(Change::PutSandbox(seal_sandbox(&key, &row, g)?));
    }
    manifest.generation = g;
    rows.extend(manifest.sealed(&key, 0..BUCKETS)?);
    backend.migrate(1, &rows)
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

    /// A batch decides its ops in order, as one-at-a-time would: the limit counts the batch's
    /// own creates, a sandbox added and removed in one batch is gone, and one refused op does
    /// not fail the others.
    #[test]
    fn a_batch_decides_like_ops_applied_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..MAX_SECRETS_PER_SCOPE - 1 {
            store
                .set_secret(ScopeKind::Repo, "o/r", &format!("N{i}"), "v", None)
                .unwrap();
        }
        let sb = SandboxRow {
            host: String::new(),
            id: "a".repeat(32),
            user: "mona".into(),
            repo: "o/r".into(),
            created: 1,
        };
        let mut writer = store.lock_writer();
        let ops = vec![
            (
                1,
                Op::SetSecret {
                    kind: ScopeKind::Repo,
                    scope: "o/r".into(),
                    name: "LAST".into(),
                    value: Zeroizing::new(b"x".to_vec()),
                    repos: None,
                },
            ),
            (
                2,
                Op::SetSecret {
                    kind: ScopeKind::Repo,
                    scope: "o/r".into(),
                    name: "OVER".into(),
                    value: Zeroizing::new(b"x".to_vec()),
                    repos: None,
                },
            ),
            (3, Op::AddSandbox(sb.clone())),
            (4, Op::AddSandbox(sb.clone())),
            (5, Op::RemoveSandbox(sb.id.clone(), None)),
        ];
        let results = store.commit(&mut writer, ops);
        drop(writer);
        let ok: Vec<bool> = results.iter().map(|(_, r)| r.is_ok()).collect();
        assert_eq!(ok, [true, false, true, false, true]);
        assert_eq!(
            store.list(ScopeKind::Repo, "o/r").len(),
            MAX_SECRETS_PER_SCOPE
        );
        assert!(store.sandbox(&sb.id).is_none());
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert!(again.unreadable().is_empty(), "{:?}", again.unreadable());
        assert!(again.sandbox(&sb.id).is_none());
    }

    /// An import is all or nothing inside a batch: a refused entry (here the last, over the
    /// scope's limit) takes back its earlier entries, the ops around it in the same batch are
    /// decided as if it had not been there, and an existing value it would have updated keeps
    /// its old value, also after a reopen.
    #[test]
    fn an_import_is_stored_whole_or_not_at_all_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..MAX_SECRETS_PER_SCOPE - 3 {
            store
                .set_secret(ScopeKind::Repo, "o/r", &format!("N{i}"), "old", None)
                .unwrap();
        }
        let entry = |n: &str, v: &str| (n.to_owned(), Zeroizing::new(v.as_bytes().to_vec()));
        let set = |n: &str| Op::SetSecret {
            kind: ScopeKind::Repo,
            scope: "o/r".into(),
            name: n.into(),
            value: Zeroizing::new(b"s".to_vec()),
            repos: None,
        };
        let import = |names: &[(&str, &str)]| Op::Import {
            kind: ScopeKind::Repo,
            scope: "o/r".into(),
            entries: names.iter().map(|(n, v)| entry(n, v)).collect(),
            repos: None,
        };
        let mut writer = store.lock_writer();
        let ops = vec![
            (1, set("BEFORE")),
            // N0 exists (updated), then three new ones: the third is one too many.
            (
                2,
                import(&[("N0", "new"), ("I1", "x"), ("I2", "y"), ("I3", "z")]),
            ),
            (3, set("AFTER")),
        ];
        let results = store.commit(&mut writer, ops);
        drop(writer);
        assert!(results[0].1.is_ok() && results[2].1.is_ok());
        match &results[1].1 {
            Err(StoreError::Entry {
                index: 4,
                name,
                source,
            }) if name == "I3" && matches!(**source, StoreError::Limit { .. }) => {}
            Err(e) => panic!("wrong refusal: {e}"),
            Ok(_) => panic!("the import over the limit was accepted"),
        }
        let names = |s: &Store| -> Vec<String> {
            s.list(ScopeKind::Repo, "o/r")
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        let check = |s: &Store| {
            let got = names(s);
            assert_eq!(got.len(), MAX_SECRETS_PER_SCOPE - 1, "{got:?}");
            assert!(got.contains(&"BEFORE".into()) && got.contains(&"AFTER".into()));
            assert!(!got.iter().any(|n| n.starts_with('I')), "{got:?}");
            let sb = SandboxRow {
                host: String::new(),
                id: "c".repeat(32),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 1,
            };
            if s.sandbox(&sb.id).is_none() {
                s.add_sandbox(sb.clone()).unwrap();
            }
            let served = s.fetch(&sb.id).unwrap().secrets;
            let n0 = served.iter().find(|(n, _)| n == "N0").unwrap();
            assert_eq!(&n0.1[..], b"old");
        };
        check(&store);
        // A good import after it stores every entry, byte for byte.
        let created = store
            .import_secrets(
                ScopeKind::Repo,
                "o/r",
                vec![entry("N0", "new\n"), entry("I1", " sp ace\t")],
                None,
            )
            .unwrap();
        assert_eq!(created, [false, true]);
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert!(again.unreadable().is_empty(), "{:?}", again.unreadable());
        let served = again.fetch(&"c".repeat(32)).unwrap().secrets;
        let get = |name: &str| served.iter().find(|(n, _)| n == name).unwrap().1.to_vec();
        assert_eq!(get("N0"), b"new\n");
        assert_eq!(get("I1"), b" sp ace\t");
    }

    fn filled(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        store
            .set_secret(
                ScopeKind::User,
                "mona",
                "T",
                "t-val",
                Some(vec!["o/r".into()]),
            )
            .unwrap();
        store
            .set_secret(ScopeKind::Repo, "o/r", "R", "r-val", None)
            .unwrap();
        store
            .add_sandbox(SandboxRow {
                host: String::new(),
                id: "b".repeat(32),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 1,
            })
            .unwrap();
        store
    }

    fn write_key(path: &Path, bytes: &[u8]) {
        let _ = std::fs::remove_file(path);
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }

    fn values(store: &Store) -> Vec<(String, Vec<u8>)> {
        store
            .fetch(&"b".repeat(32))
            .unwrap()
            .secrets
            .into_iter()
            .map(|(n, v)| (n, v.to_vec()))
            .collect()
    }

    /// Rotation re-seals every row under a new key id; the old key is kept retired; every crash
    /// point settles to one consistent key set at the next open.
    #[test]
    fn rotation_re_seals_everything_and_every_crash_point_settles() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s");
        let store = filled(&state);
        let want = values(&store);
        let before = store.key_status();
        assert_eq!(before.rows.get(&before.active), Some(&3));
        let old_key = std::fs::read(state.join(KEY_FILE)).unwrap();
        let old_copy = dir.path().join("before-rotation.db");
        store.backup(&old_copy).unwrap();
        let old_db = std::fs::read(&old_copy).unwrap();
        let new_id = store.rotate_key().unwrap();
        assert_ne!(new_id, before.active);
        let after = store.key_status();
        assert_eq!(after.active, new_id);
        assert_eq!(after.rows.len(), 1, "{after:?}");
        assert_eq!(after.rows.get(&new_id), Some(&3));
        assert_eq!(values(&store), want);
        assert!(state
            .join(format!("key.retired-{}", before.active))
            .exists());
        assert!(!state.join(NEXT_KEY_FILE).exists());
        let new_key = std::fs::read(state.join(KEY_FILE)).unwrap();
        drop(store);
        let again = Store::open(&state).unwrap();
        assert_eq!(values(&again), want);
        assert!(again.unreadable().is_empty(), "{:?}", again.unreadable());
        drop(again);

        // Committed, files not yet renamed: `key` old, `key.next` new.
        write_key(&state.join(NEXT_KEY_FILE), &new_key);
        write_key(&state.join(KEY_FILE), &old_key);
        std::fs::remove_file(state.join(format!("key.retired-{}", before.active))).unwrap();
        let settled = Store::open(&state).unwrap();
        assert_eq!(settled.key_status().active, new_id);
        assert_eq!(values(&settled), want);
        assert_eq!(std::fs::read(state.join(KEY_FILE)).unwrap(), new_key);
        assert!(!state.join(NEXT_KEY_FILE).exists());
        drop(settled);

        // Committed, `key` already moved away (no `key`, only `key.next`).
        std::fs::rename(state.join(KEY_FILE), state.join(NEXT_KEY_FILE)).unwrap();
        let settled = Store::open(&state).unwrap();
        assert_eq!(values(&settled), want);
        drop(settled);

        // Not committed: the database still under the old key, a `key.next` left behind.
        let dir2 = tempfile::tempdir().unwrap();
        let state2 = dir2.path().join("s");
        std::fs::create_dir(&state2).unwrap();
        std::fs::set_permissions(&state2, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        write_key(&state2.join(KEY_FILE), &old_key);
        write_key(&state2.join(NEXT_KEY_FILE), &new_key);
        std::fs::write(state2.join(DB_FILE), &old_db).unwrap();
        // No generation file was copied: this host has never seen the store.
        let undone = Store::open_with(
            &state2,
            OpenOptions {
                accept_rollback: true,
            },
        )
        .unwrap();
        assert_eq!(undone.key_status().active, before.active);
        assert!(!state2.join(NEXT_KEY_FILE).exists());
    }

    /// A backup is a consistent copy that opens (with the key files) as a store.
    #[test]
    fn a_key_next_cut_short_by_a_crash_is_removed_and_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .set_secret(ScopeKind::Repo, "o/r", "N", "v", None)
            .unwrap();
        drop(store);
        for len in [0, 7] {
            std::fs::write(dir.path().join(NEXT_KEY_FILE), vec![1u8; len]).unwrap();
            let store = Store::open(dir.path()).unwrap();
            assert!(!dir.path().join(NEXT_KEY_FILE).exists());
            assert_eq!(store.list(ScopeKind::Repo, "o/r").len(), 1);
        }
    }

    #[test]
    fn a_backup_opens_as_the_store_it_copied() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s");
        let store = filled(&state);
        let want = values(&store);
        let copy = dir.path().join("copy.db");
        let generation = store.backup(&copy).unwrap();
        assert!(generation > 1);
        assert!(
            store.backup(&copy).is_err(),
            "an existing file is never overwritten"
        );
        let restored = dir.path().join("r");
        std::fs::create_dir(&restored).unwrap();
        std::fs::set_permissions(
            &restored,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::copy(&copy, restored.join(DB_FILE)).unwrap();
        std::fs::copy(state.join(KEY_FILE), restored.join(KEY_FILE)).unwrap();
        // A host that never saw this store has no generation for it: the operator confirms.
        let e = Store::open(&restored).unwrap_err().to_string();
        assert!(e.contains("--accept-rollback"), "{e}");
        let opened = Store::open_with(
            &restored,
            OpenOptions {
                accept_rollback: true,
            },
        )
        .unwrap();
        assert_eq!(values(&opened), want);
        assert_eq!(opened.stored_generation(), generation);
    }

    /// Every backend this build has, each fresh in its own directory: the store tests that
    /// speak to a backend run over this list (a PostgreSQL backend joins it).
    fn backends(dir: &Path) -> Vec<(&'static str, Box<dyn Backend>)> {
        vec![(
            "sqlite",
            Box::new(sqlite::Sqlite::open(&dir.join("contract.db")).unwrap()),
        )]
    }

    /// What the store relies on from any backend: an empty store is version 0; `migrate`
    /// records the version and writes the rows; `apply` writes puts and deletes together;
    /// `load` returns what was written; `backup` refuses to overwrite.
    #[test]
    fn every_backend_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mut b) in backends(dir.path()) {
            assert_eq!(b.schema_version().unwrap(), 0, "{name}");
            let key = Sealer::from_key(&[3u8; 32]);
            let sb = SandboxRow {
                host: String::new(),
                id: "c".repeat(32),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 7,
            };
            let secret = seal_secret(
                &key,
                ScopeKind::User,
                "mona",
                "T",
                b"v",
                vec!["o/r".into()],
                1,
                5,
            )
            .unwrap();
            b.migrate(
                0,
                &[
                    Change::PutMeta(seal_meta(&key, "keycheck", KEY_CHECK).unwrap()),
                    Change::PutSecret(secret.clone()),
                ],
            )
            .unwrap();
            assert_eq!(b.schema_version().unwrap(), SCHEMA_VERSION, "{name}");
            b.apply(&[Change::PutSandbox(seal_sandbox(&key, &sb, 2).unwrap())])
                .unwrap();
            let snap = b.load().unwrap();
            assert_eq!(snap.secrets, vec![Ok(secret.clone())], "{name}");
            assert_eq!(snap.sandboxes.len(), 1);
            assert_eq!(snap.meta.len(), 1);
            // One apply: a put and a delete together.
            let other = SecretRecord {
                name: "U".into(),
                ..secret.clone()
            };
            b.apply(&[
                Change::PutSecret(other),
                Change::DeleteSandbox(sb.id.clone()),
            ])
            .unwrap();
            let snap = b.load().unwrap();
            assert_eq!(snap.secrets.len(), 2, "{name}");
            assert!(snap.sandboxes.is_empty(), "{name}");
            let copy = dir.path().join(format!("{name}.bak"));
            b.backup(&copy).unwrap();
            assert!(
                b.backup(&copy).is_err(),
                "{name}: a backup never overwrites"
            );
        }
    }

    #[test]
    fn manifest_identities_round_trip_through_their_text() {
        for text in [
            sandbox_identity(&"0123456789abcdef".repeat(2)),
            sandbox_identity(&"0123456789ABCDEF".repeat(2)),
            sandbox_identity("short"),
            secret_identity(ScopeKind::User, "mona", "TOKEN"),
            secret_identity(ScopeKind::Repo, "o/r", "X"),
        ] {
            assert_eq!(Ident::parse(&text).text(), text);
        }
        assert!(matches!(
            Ident::parse(&sandbox_identity(&"ab".repeat(16))),
            Ident::Sandbox(_)
        ));
    }

    /// 16 threads adding sandboxes share commits: fewer generations than creates. Prints the
    /// store's own rate (no HTTP, no sockets), the ceiling the daemon's create path works under.
    #[test]
    fn concurrent_adds_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let before = store.stored_generation();
        let started = std::time::Instant::now();
        let per = 200;
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..per {
                        store
                            .add_sandbox(SandboxRow {
                                host: String::new(),
                                id: format!("{t:016x}{i:016x}"),
                                user: "mona".into(),
                                repo: "o/r".into(),
                                created: 1,
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = 16 * per;
        let commits = store.stored_generation() - before;
        eprintln!(
            "store: {n} adds from 16 threads in {:?} ({:.0}/s), {commits} commits",
            started.elapsed(),
            n as f64 / started.elapsed().as_secs_f64()
        );
        assert_eq!(store.sandboxes().len(), n);
        assert!((commits as usize) < n, "{commits} commits for {n} adds");
    }
}
