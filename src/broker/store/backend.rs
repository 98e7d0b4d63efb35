//! The seam between the store's rules and a database: the `Backend` trait, the sealed records it
//! keeps, and the schema versions every backend migrates through. A backend stores and returns
//! sealed rows as they are; it never opens a seal, decides access or sees a value.

use std::path::Path;

use tokio::sync::watch;

use super::seal::Sealed;
use super::{ScopeKind, StoreError};

/// The schema version this build writes. 1 is the unversioned store of the first release; 2
/// sealed every row; 3 ("hosts") records the broker host of each sandbox; 4 ("tokens") adds the
/// platform API's tokens.
pub const SCHEMA_VERSION: u32 = 4;

/// A secret row: who owns it, who may read it, and its sealed value. Everything but `sealed`
/// is bound into the seal's additional data, so changing any field breaks the seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    pub kind: ScopeKind,
    pub scope: String,
    pub name: String,
    /// For a user secret, the repositories that may read it; empty for a repository secret.
    pub repos: Vec<String>,
    /// The store generation that wrote this row; the manifest holds the current one.
    pub version: u64,
    pub key_id: String,
    pub sealed: Sealed,
    pub updated: i64,
}

/// A sandbox row: the mapping id -> (user, repository), authenticated by a seal of no plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub user: String,
    pub repo: String,
    pub created: i64,
    pub version: u64,
    pub key_id: String,
    pub sealed: Sealed,
    /// The broker host that created it and serves its socket (`serve --host-id`); empty for a
    /// sandbox of a store that had no hosts yet (schema 2). Not sealed: it places a socket,
    /// it grants nothing (see ARCHITECTURE.md).
    pub host: String,
}

/// A sealed row of bookkeeping: the key check, the manifest root, one manifest bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRecord {
    /// `keycheck`, `root` or `bucket:<n>`.
    pub name: String,
    pub key_id: String,
    pub sealed: Sealed,
}

/// A row the backend could not decode (wrong type, bad list): named, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The row as a person would name it (`repository secret X of o/r`, `sandbox <id>`).
    pub row: String,
    pub reason: String,
}

/// Everything a v2 store holds, each row decoded on its own.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// A shared store's plain generation counter ([`Backend::apply_at`]); `None` for a private
    /// store.
    pub head: Option<u64>,
    pub meta: Vec<MetaRecord>,
    pub secrets: Vec<Result<SecretRecord, Malformed>>,
    pub sandboxes: Vec<Result<SandboxRecord, Malformed>>,
}

/// A platform API token row: never the token, only its SHA-256, what it may do and until when.
/// Everything is bound into `sealed` (a seal of no plaintext), so an edited or inserted row is
/// refused when the store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// `user:<login>`, `repo-admin:<owner/name>` or `platform`.
    pub scope: String,
    pub created: i64,
    pub expires: i64,
    pub key_id: String,
    pub sealed: Sealed,
}

/// A secret row of a v1 store: sealed with the v1 additional data (kind, scope, name only).
#[derive(Debug)]
pub struct V1Secret {
    pub kind: ScopeKind,
    pub scope: String,
    pub name: String,
    pub repos: Vec<String>,
    pub sealed: Sealed,
    pub updated: i64,
}

/// A v1 store's rows, read for the migration.
#[derive(Debug, Default)]
pub struct V1Snapshot {
    pub keycheck: Option<Sealed>,
    pub secrets: Vec<Result<V1Secret, Malformed>>,
    /// Sandboxes: (id, user, repository, created).
    pub sandboxes: Vec<Result<(String, String, String, i64), Malformed>>,
}

/// One change of a commit. A commit's changes are applied in one transaction, all or none.
#[derive(Clone, Debug)]
pub enum Change {
    PutSecret(SecretRecord),
    DeleteSecret {
        kind: ScopeKind,
        scope: String,
        name: String,
    },
    PutSandbox(SandboxRecord),
    DeleteSandbox(String),
    PutMeta(MetaRecord),
    /// A platform API token created: committed with the manifest root at a new generation, so a
    /// store restored from before it (or from before its revocation) is a rollback.
    PutToken(TokenRecord),
    /// A platform API token revoked (by id).
    DeleteToken(String),
}

impl Change {
    /// A commit that only adds sandboxes (with the manifest rows that list them). A backend may
    /// make it durable against a crash of the daemon (`kill -9`: the write is in the kernel)
    /// rather than a power loss, and leave the fsync to the next commit that changes anything
    /// else: a sandbox lost with the machine's power fails closed (its socket is gone too), and
    /// every change of secrets, access, tokens or a sandbox's removal is synced, with the creates
    /// written before it. The generation file is not advanced by such a commit, so it is never
    /// newer than what a power loss leaves.
    pub fn only_adds_sandboxes(changes: &[Change]) -> bool {
        changes.iter().any(|c| matches!(c, Change::PutSandbox(_)))
            && changes
                .iter()
                .all(|c| matches!(c, Change::PutSandbox(_) | Change::PutMeta(_)))
    }

    /// What a commit was for, named by its first change, for errors ("write secret").
    pub fn step(changes: &[Change]) -> &'static str {
        match changes.first() {
            Some(Change::PutSecret(_)) => "write secret",
            Some(Change::DeleteSecret { .. }) => "delete secret",
            Some(Change::PutSandbox(_)) => "add sandbox",
            Some(Change::DeleteSandbox(_)) => "remove sandbox",
            Some(Change::PutToken(_)) => "add token",
            Some(Change::DeleteToken(_)) => "revoke token",
            Some(Change::PutMeta(_)) | None => "write manifest",
        }
    }
}

/// A database behind the store. Methods run on one connection held by the store's writer; a
/// second backend (PostgreSQL) implements the same calls with the same schema versions and is
/// run through the same tests (`tests/store_v2.rs`).
pub trait Backend: Send {
    /// Where the data lives, for messages (a path or a redacted URL).
    fn describe(&self) -> String;
    /// The schema version present: 0 for an empty database, 1 for an unversioned first-release
    /// store, else the highest recorded migration.
    fn schema_version(&mut self) -> Result<u32, StoreError>;
    /// Reads a v1 store's rows for the migration.
    fn load_v1(&mut self) -> Result<V1Snapshot, StoreError>;
    /// Brings the schema from `from` to [`SCHEMA_VERSION`] and writes `rows` (the resealed
    /// contents), in one transaction: after a crash the store is wholly old or wholly new.
    fn migrate(&mut self, from: u32, rows: &[Change]) -> Result<(), StoreError>;
    /// Reads every row of a current store.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Applies `changes` in one durable transaction.
    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Writes a consistent copy of the whole store to `dest` (a new file, mode 0600) while
    /// writers may keep going.
    fn backup(&mut self, dest: &Path) -> Result<(), StoreError>;
    /// Every API token row, each decoded on its own.
    fn load_tokens(&mut self) -> Result<Vec<Result<TokenRecord, Malformed>>, StoreError> {
        Err(StoreError::NoTokens(self.describe()))
    }
    /// Replaces one API token row sealed again under another key (after a rotation), durably;
    /// it adds no token: a new one is a [`Change::PutToken`] of a commit.
    fn put_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.apply(&[Change::PutToken(token.clone())])
    }

    /// For a store several brokers share: applies `changes` only if the store is still at
    /// generation `base` (the last commit this broker has seen), moving it to `base + 1`, and
    /// announces the commit to the other brokers; else nothing is written and the answer is
    /// [`StoreError::Moved`] (re-read, decide again). A private store has no other writer:
    /// the default is [`Backend::apply`].
    fn apply_at(&mut self, base: Option<u64>, changes: &[Change]) -> Result<(), StoreError> {
        let _ = base;
        self.apply(changes)
    }

    /// For a store several brokers share: takes the store's write lock (the other brokers'
    /// commits wait) and holds it until the next [`Backend::apply_at`] commits or
    /// [`Backend::unlock_writes`]. A broker that lost the race to commit takes it, catches up
    /// and commits, so it cannot be starved by a busier one. A private store: nothing to do.
    fn lock_writes(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Gives the write lock of [`Backend::lock_writes`] back without committing (if held).
    fn unlock_writes(&mut self) {}

    /// For a store several brokers share: what a broker that last read the store at generation
    /// `since` needs to catch up: every meta row, the head, and only the rows written after
    /// `since` (`version > since`). `None` when the backend cannot (the store reads everything).
    fn load_since(&mut self, since: u64) -> Result<Option<Snapshot>, StoreError> {
        let _ = since;
        Ok(None)
    }

    /// For a store several brokers share: the state of the connection and the generation the
    /// other brokers announced. `None` for a private store.
    fn link(&self) -> Option<watch::Receiver<Link>> {
        None
    }
}

/// The state of the connection to PostgreSQL, as the listener sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// True while the listening connection is up.
    pub connected: bool,
    /// Why it is down (the last error), when it is.
    pub reason: Option<String>,
    /// The highest generation announced by a commit (or read when the connection came up).
    pub head: u64,
    /// Bumped each time the connection comes (back) up: the store re-reads then.
    pub epoch: u64,
    /// Bumped by each announced token change (create, revoke) of any broker: the store reads
    /// its tokens again, so a revocation holds on every host.
    pub tokens: u64,
}
