//! The SQLite backend: one file in the state directory, WAL mode, `synchronous = FULL`, schema
//! versions in a `schema_migrations` table. Stores sealed rows as given; decodes each row on its
//! own so one malformed row is named, never fatal. Knows nothing of keys or access rules.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::backend::{
    Backend, Change, Malformed, MetaRecord, SandboxRecord, SecretRecord, Snapshot, TokenRecord,
    V1Secret, V1Snapshot, SCHEMA_VERSION,
};
use super::seal::Sealed;
use super::{what, ScopeKind, StoreError};

const SCHEMA_V2: &str = "
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL);
CREATE TABLE meta (
    key TEXT PRIMARY KEY, key_id TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL);
CREATE TABLE secrets (
    kind TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL, repos TEXT NOT NULL,
    version INTEGER NOT NULL, key_id TEXT NOT NULL, nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL, updated INTEGER NOT NULL, PRIMARY KEY (kind, scope, name));
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, repo TEXT NOT NULL, created INTEGER NOT NULL,
    version INTEGER NOT NULL, key_id TEXT NOT NULL, nonce BLOB NOT NULL, mac BLOB NOT NULL);
";

/// Migration 4, "tokens": the platform API's token rows. Self-contained: it only adds its
/// table, whatever migrations ran before it.
fn migrate_tokens(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, scope TEXT NOT NULL,
            created INTEGER NOT NULL, expires INTEGER NOT NULL, key_id TEXT NOT NULL,
            nonce BLOB NOT NULL, mac BLOB NOT NULL);",
    )
    .map_err(sql("migrate: create tokens table"))?;
    tx.execute(
        "INSERT INTO schema_migrations (version, applied) VALUES (4, strftime('%s','now'))",
        [],
    )
    .map_err(sql("migrate: record version"))?;
    Ok(())
}

fn decode_token(row: &Row<'_>) -> Result<TokenRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: match text(row, 0) {
            Ok(id) => format!("token {id}"),
            Err(_) => "token row with an unreadable id".to_owned(),
        },
        reason,
    };
    Ok(TokenRecord {
        id: text(row, 0).map_err(bad)?,
        hash: text(row, 1).map_err(bad)?,
        scope: text(row, 2).map_err(bad)?,
        created: int(row, 3).map_err(bad)?,
        expires: int(row, 4).map_err(bad)?,
        key_id: text(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: blob(row, 6).map_err(bad)?,
            ciphertext: blob(row, 7).map_err(bad)?,
        },
    })
}

/// The SQLite store file.
pub struct Sqlite {
    path: PathBuf,
    conn: Connection,
    /// `synchronous = NORMAL` set for a commit that only adds sandboxes
    /// ([`Change::only_adds_sandboxes`]); `FULL` for every other commit.
    relaxed: bool,
}

fn sql(step: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |error| StoreError::Sql { step, error }
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` in WAL mode with full syncs. The page
    /// cache is kept small (256 KiB): every read is served from the store's own copy, so SQLite
    /// only needs the pages a write touches, and memory does not grow with the store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = |error| StoreError::Open {
            path: path.to_owned(),
            error,
        };
        // Created 0600 before SQLite sees it, so the file never exists with a looser mode.
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|error| StoreError::DbFile {
                    path: path.to_owned(),
                    error,
                })?;
        }
        let conn = Connection::open(path).map_err(open)?;
        // The store keeps every row in memory and reads the database only at start, so SQLite's
        // page cache (2 MB by default) would only duplicate it: 256 KiB serves the writes.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             PRAGMA cache_size = -256;",
        )
        .map_err(open)?;
        Ok(Self {
            path: path.to_owned(),
            conn,
            relaxed: false,
        })
    }

    fn table_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(sql("read schema"))
    }
}

/// Column `i` of `row` as text, or why not.
fn text(row: &Row<'_>, i: usize) -> Result<String, String> {
    match row.get_ref(i).map(|v| v.into()) {
        Ok(Value::Text(s)) => Ok(s),
        Ok(other) => Err(format!(
            "column {i} holds {:?}, not text",
            other.data_type()
        )),
        Err(e) => Err(e.to_string()),
    }
}
fn int(row: &Row<'_>, i: usize) -> Result<i64, String> {
    match row.get_ref(i).map(|v| v.into()) {
        Ok(Value::Integer(n)) => Ok(n),
        Ok(other) => Err(format!(
            "column {i} holds {:?}, not an integer",
            other.data_type()
        )),
        Err(e) => Err(e.to_string()),
    }
}
fn blob(row: &Row<'_>, i: usize) -> Result<Vec<u8>, String> {
    match row.get_ref(i).map(|v| v.into()) {
        Ok(Value::Blob(b)) => Ok(b),
        Ok(other) => Err(format!(
            "column {i} holds {:?}, not bytes",
            other.data_type()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A stored repository list: a JSON array of strings, or an error naming what is wrong (never
/// an empty list in its place).
fn repos(raw: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(raw)
        .map_err(|e| format!("repository list is not a list of names ({e})"))
}

fn kind(raw: &str) -> Result<ScopeKind, String> {
    ScopeKind::parse(raw).ok_or_else(|| format!("unknown scope kind {raw:?}"))
}

/// The name of a secret row for messages, from whatever of its key columns decode.
fn secret_row_name(row: &Row<'_>) -> String {
    match (text(row, 0), text(row, 1), text(row, 2)) {
        (Ok(k), Ok(s), Ok(n)) => match ScopeKind::parse(&k) {
            Some(k) => what(k, &s, &n),
            None => format!("secret {n} of {s} (kind {k:?})"),
        },
        _ => "secret row with unreadable key columns".to_owned(),
    }
}

fn decode_secret(row: &Row<'_>) -> Result<SecretRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: secret_row_name(row),
        reason,
    };
    let k = kind(&text(row, 0).map_err(bad)?).map_err(bad)?;
    let version = int(row, 4).map_err(bad)?;
    Ok(SecretRecord {
        kind: k,
        scope: text(row, 1).map_err(bad)?,
        name: text(row, 2).map_err(bad)?,
        repos: repos(&text(row, 3).map_err(bad)?).map_err(bad)?,
        version: u64::try_from(version).map_err(|_| bad(format!("negative version {version}")))?,
        key_id: text(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: blob(row, 6).map_err(bad)?,
            ciphertext: blob(row, 7).map_err(bad)?,
        },
        updated: int(row, 8).map_err(bad)?,
    })
}

fn decode_sandbox(row: &Row<'_>) -> Result<SandboxRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: match text(row, 0) {
            Ok(id) => format!("sandbox {id}"),
            Err(_) => "sandbox row with an unreadable id".to_owned(),
        },
        reason,
    };
    let version = int(row, 4).map_err(bad)?;
    Ok(SandboxRecord {
        id: text(row, 0).map_err(bad)?,
        user: text(row, 1).map_err(bad)?,
        repo: text(row, 2).map_err(bad)?,
        created: int(row, 3).map_err(bad)?,
        version: u64::try_from(version).map_err(|_| bad(format!("negative version {version}")))?,
        key_id: text(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: blob(row, 6).map_err(bad)?,
            ciphertext: blob(row, 7).map_err(bad)?,
        },
        host: text(row, 8).map_err(bad)?,
    })
}

/// Migration 3, "hosts": each sandbox records the broker host that serves it; the sandboxes
/// of a store from before hosts get none (their single broker keeps serving them).
fn migrate_hosts(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE sandboxes ADD COLUMN host TEXT NOT NULL DEFAULT ''")
        .map_err(sql("migrate: hosts"))?;
    tx.execute(
        "INSERT INTO schema_migrations (version, applied) VALUES (3, strftime('%s','now'))",
        [],
    )
    .map_err(sql("migrate: record version"))?;
    Ok(())
}

fn write(tx: &rusqlite::Transaction<'_>, change: &Change) -> Result<(), rusqlite::Error> {
    match change {
        Change::PutSecret(r) => {
            let repos = serde_json::to_string(&r.repos).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "INSERT INTO secrets (kind, scope, name, repos, version, key_id, nonce,
                     ciphertext, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (kind, scope, name) DO UPDATE SET repos = excluded.repos,
                     version = excluded.version, key_id = excluded.key_id,
                     nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                     updated = excluded.updated",
            )?
            .execute(params![
                r.kind.as_str(),
                r.scope,
                r.name,
                repos,
                r.version as i64,
                r.key_id,
                r.sealed.nonce,
                r.sealed.ciphertext,
                r.updated
            ])?;
        }
        Change::DeleteSecret { kind, scope, name } => {
            tx.prepare_cached("DELETE FROM secrets WHERE kind = ?1 AND scope = ?2 AND name = ?3")?
                .execute(params![kind.as_str(), scope, name])?;
        }
        Change::PutSandbox(r) => {
            tx.prepare_cached(
                "INSERT INTO sandboxes (id, user, repo, created, version, key_id, nonce, mac,
                     host) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET user = excluded.user, repo = excluded.repo,
                     created = excluded.created, version = excluded.version,
                     key_id = excluded.key_id, nonce = excluded.nonce, mac = excluded.mac,
                     host = excluded.host",
            )?
            .execute(params![
                r.id,
                r.user,
                r.repo,
                r.created,
                r.version as i64,
                r.key_id,
                r.sealed.nonce,
                r.sealed.ciphertext,
                r.host
            ])?;
        }
        Change::DeleteSandbox(id) => {
            tx.prepare_cached("DELETE FROM sandboxes WHERE id = ?1")?
                .execute([id])?;
        }
        Change::PutToken(t) => {
            tx.prepare_cached(
                "INSERT INTO tokens (id, hash, scope, created, expires, key_id, nonce, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, scope = excluded.scope,
                     created = excluded.created, expires = excluded.expires,
                     key_id = excluded.key_id, nonce = excluded.nonce, mac = excluded.mac",
            )?
            .execute(params![
                t.id,
                t.hash,
                t.scope,
                t.created,
                t.expires,
                t.key_id,
                t.sealed.nonce,
                t.sealed.ciphertext
            ])?;
        }
        Change::DeleteToken(id) => {
            tx.prepare_cached("DELETE FROM tokens WHERE id = ?1")?
                .execute([id])?;
        }
        Change::PutMeta(m) => {
            tx.prepare_cached(
                "INSERT INTO meta (key, key_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET key_id = excluded.key_id,
                     nonce = excluded.nonce, ciphertext = excluded.ciphertext",
            )?
            .execute(params![
                m.name,
                m.key_id,
                m.sealed.nonce,
                m.sealed.ciphertext
            ])?;
        }
    }
    Ok(())
}

impl Backend for Sqlite {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn schema_version(&mut self) -> Result<u32, StoreError> {
        if self.table_exists("schema_migrations")? {
            let v: Option<i64> = self
                .conn
                .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
                    r.get(0)
                })
                .map_err(sql("read schema version"))?;
            return Ok(v.unwrap_or(0).clamp(0, u32::MAX as i64) as u32);
        }
        Ok(if self.table_exists("secrets")? { 1 } else { 0 })
    }

    fn load_v1(&mut self) -> Result<V1Snapshot, StoreError> {
        let mut out = V1Snapshot::default();
        if self.table_exists("meta")? {
            out.keycheck = self
                .conn
                .query_row(
                    "SELECT nonce, ciphertext FROM meta WHERE key = 'keycheck'",
                    [],
                    |r| {
                        Ok(Sealed {
                            nonce: r.get(0)?,
                            ciphertext: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(sql("read v1 key check"))?;
        }
        let mut stmt = self
            .conn
            .prepare("SELECT kind, scope, name, repos, nonce, ciphertext, updated FROM secrets")
            .map_err(sql("read v1 secrets"))?;
        let mut rows = stmt.query([]).map_err(sql("read v1 secrets"))?;
        while let Some(row) = rows.next().map_err(sql("read v1 secrets"))? {
            let bad = |reason: String| Malformed {
                row: secret_row_name(row),
                reason,
            };
            let decoded = (|| {
                Ok(V1Secret {
                    kind: kind(&text(row, 0).map_err(bad)?).map_err(bad)?,
                    scope: text(row, 1).map_err(bad)?,
                    name: text(row, 2).map_err(bad)?,
                    repos: repos(&text(row, 3).map_err(bad)?).map_err(bad)?,
                    sealed: Sealed {
                        nonce: blob(row, 4).map_err(bad)?,
                        ciphertext: blob(row, 5).map_err(bad)?,
                    },
                    updated: int(row, 6).map_err(bad)?,
                })
            })();
            out.secrets.push(decoded);
        }
        drop(rows);
        drop(stmt);
        if self.table_exists("sandboxes")? {
            let mut stmt = self
                .conn
                .prepare("SELECT id, user, repo, created FROM sandboxes")
                .map_err(sql("read v1 sandboxes"))?;
            let mut rows = stmt.query([]).map_err(sql("read v1 sandboxes"))?;
            while let Some(row) = rows.next().map_err(sql("read v1 sandboxes"))? {
                let decoded = (|| -> Result<_, String> {
                    Ok((text(row, 0)?, text(row, 1)?, text(row, 2)?, int(row, 3)?))
                })()
                .map_err(|reason| Malformed {
                    row: format!("sandbox {}", text(row, 0).unwrap_or_default()),
                    reason,
                });
                out.sandboxes.push(decoded);
            }
        }
        Ok(out)
    }

    fn migrate(&mut self, from: u32, rows: &[Change]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql("migrate"))?;
        if from == 1 {
            tx.execute_batch(
                "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS secrets;
                 DROP TABLE IF EXISTS sandboxes;",
            )
            .map_err(sql("migrate: drop v1 tables"))?;
        }
        if from <= 1 {
            tx.execute_batch(SCHEMA_V2)
                .map_err(sql("migrate: create v2 tables"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES (2, strftime('%s','now'))",
                [],
            )
            .map_err(sql("migrate: record version"))?;
        }
        if from <= 2 {
            migrate_hosts(&tx)?;
        }
        if from <= 3 {
            migrate_tokens(&tx)?;
        }
        debug_assert_eq!(SCHEMA_VERSION, 4, "a new migration goes above");
        for change in rows {
            write(&tx, change).map_err(sql("migrate: write rows"))?;
        }
        tx.commit().map_err(sql("migrate: commit"))
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        let mut stmt = self
            .conn
            .prepare("SELECT key, key_id, nonce, ciphertext FROM meta")
            .map_err(sql("load meta"))?;
        let mut rows = stmt.query([]).map_err(sql("load meta"))?;
        while let Some(row) = rows.next().map_err(sql("load meta"))? {
            // A malformed bookkeeping row is the same as a missing one: the checks that need it
            // name it.
            if let (Ok(name), Ok(key_id), Ok(nonce), Ok(ciphertext)) =
                (text(row, 0), text(row, 1), blob(row, 2), blob(row, 3))
            {
                snap.meta.push(MetaRecord {
                    name,
                    key_id,
                    sealed: Sealed { nonce, ciphertext },
                });
            }
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, scope, name, repos, version, key_id, nonce, ciphertext, updated
                 FROM secrets",
            )
            .map_err(sql("load secrets"))?;
        let mut rows = stmt.query([]).map_err(sql("load secrets"))?;
        while let Some(row) = rows.next().map_err(sql("load secrets"))? {
            snap.secrets.push(decode_secret(row));
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, user, repo, created, version, key_id, nonce, mac, host FROM sandboxes",
            )
            .map_err(sql("load sandboxes"))?;
        let mut rows = stmt.query([]).map_err(sql("load sandboxes"))?;
        while let Some(row) = rows.next().map_err(sql("load sandboxes"))? {
            snap.sandboxes.push(decode_sandbox(row));
        }
        Ok(snap)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        // Errors name what the commit was for (its first change): "write secret", "add sandbox".
        let step = Change::step(changes);
        // In WAL mode NORMAL still writes the commit before answering (a killed daemon loses
        // nothing) but leaves the fsync to the next FULL commit, which syncs this one with it.
        let relaxed = Change::only_adds_sandboxes(changes);
        if relaxed != self.relaxed {
            self.conn
                .execute_batch(if relaxed {
                    "PRAGMA synchronous = NORMAL"
                } else {
                    "PRAGMA synchronous = FULL"
                })
                .map_err(sql(step))?;
            self.relaxed = relaxed;
        }
        let tx = self.conn.transaction().map_err(sql(step))?;
        for change in changes {
            write(&tx, change).map_err(sql(step))?;
        }
        tx.commit().map_err(sql(step))
    }

    fn load_tokens(&mut self) -> Result<Vec<Result<TokenRecord, Malformed>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, hash, scope, created, expires, key_id, nonce, mac FROM tokens")
            .map_err(sql("load tokens"))?;
        let mut rows = stmt.query([]).map_err(sql("load tokens"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql("load tokens"))? {
            out.push(decode_token(row));
        }
        Ok(out)
    }

    fn backup(&mut self, dest: &Path) -> Result<(), StoreError> {
        let file = |error| StoreError::Backup {
            path: dest.to_owned(),
            error,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(file)?;
        let mut target = Connection::open(dest).map_err(sql("open backup file"))?;
        let copy =
            rusqlite::backup::Backup::new(&self.conn, &mut target).map_err(sql("start backup"))?;
        // All pages in one step: the copy is one consistent snapshot.
        loop {
            match copy.step(-1).map_err(sql("copy backup"))? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        drop(copy);
        target
            .execute_batch("PRAGMA journal_mode = DELETE;")
            .map_err(sql("finish backup"))?;
        drop(target);
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(file)
    }
}
