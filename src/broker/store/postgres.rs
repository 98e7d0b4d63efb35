//! The PostgreSQL backend: the store shared by the brokers of many hosts. The same tables and
//! schema versions as SQLite, migrated once under an advisory lock; one extra row, `head`, holds
//! the store's generation in plain so a commit can refuse to build on a state it has not seen
//! (the sealed manifest root stays the authority), and every commit sends `NOTIFY
//! sandbox_secrets, '<generation>'`. A listening connection turns those into [`Link`] updates,
//! reconnecting with capped backoff. Stores sealed rows as given; knows nothing of keys or rules.
//!
//! The [`Backend`] trait is synchronous (the store calls it from blocking threads, see
//! `store::blocking`); this backend owns a small tokio runtime of its own and runs each call
//! there, the caller waiting on a channel. So a call works from any thread, inside another
//! runtime or not, and the pool and the listener live on one runtime that never blocks.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

pub use super::backend::Link;
use super::backend::{
    Backend, Change, Malformed, MetaRecord, SandboxRecord, SecretRecord, Snapshot, TokenRecord,
    V1Snapshot, SCHEMA_VERSION,
};
use super::seal::Sealed;
use super::{what, ScopeKind, StoreError};

/// The channel every commit notifies.
pub const CHANNEL: &str = "sandbox_secrets";
/// The payload announcing a token change (not a generation: tokens are outside the manifest).
const TOKENS_CHANGED: &str = "tokens";
/// The advisory lock key under which migrations run (one broker migrates, the others wait).
const MIGRATION_LOCK: i64 = 0x5ec2_e75e_c2e7;
/// How long a call waits for a connection, and a statement for its answer, before the store
/// is called unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the listener checks its connection, and the cap of its reconnect backoff.
const PING_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

const SCHEMA_V2: &str = "
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
    applied BIGINT NOT NULL);
CREATE TABLE meta (
    key TEXT PRIMARY KEY, key_id TEXT NOT NULL, nonce BYTEA NOT NULL, ciphertext BYTEA NOT NULL);
CREATE TABLE secrets (
    kind TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL, repos TEXT NOT NULL,
    version BIGINT NOT NULL, key_id TEXT NOT NULL, nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL, updated BIGINT NOT NULL, PRIMARY KEY (kind, scope, name));
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY, \"user\" TEXT NOT NULL, repo TEXT NOT NULL, created BIGINT NOT NULL,
    version BIGINT NOT NULL, key_id TEXT NOT NULL, nonce BYTEA NOT NULL, mac BYTEA NOT NULL);
CREATE TABLE head (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    generation BIGINT NOT NULL);
INSERT INTO head (generation) VALUES (1);
INSERT INTO schema_migrations (version, name, applied)
    VALUES (2, 'v2', extract(epoch from now())::bigint);
";

/// The PostgreSQL store.
pub struct Postgres {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// A pooled connection in a transaction holding the head row (`lock_writes`). It goes back
    /// to the pool only after its COMMIT or ROLLBACK succeeded; otherwise it is taken out of
    /// the pool and closed, so no half-done transaction is ever reused.
    locked: Option<deadpool_postgres::Object>,
    shown: String,
    link: watch::Receiver<Link>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime's thread would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `url` with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://(unparsed)".to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    match auth {
        Some(auth) => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{host}"),
    }
}

fn pg(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |error| {
        // A broken or refused connection, a server shutting down or starting up, or out of
        // resources: the store is unavailable (503), not broken. SQLSTATE classes 08
        // (connection), 53 (resources), 57 (operator intervention), 58 (system).
        let class = error.code().map(|c| &c.code()[..2]);
        if error.is_closed() || matches!(class, None | Some("08" | "53" | "57" | "58")) {
            StoreError::Unavailable(format!("{step}: {}", chain(&error)))
        } else {
            StoreError::Postgres {
                step,
                error: chain(&error),
            }
        }
    }
}

/// An error and its causes on one line (tokio-postgres keeps the server's words in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// TLS through rustls (ring): whenever TLS is used, the server's certificate chain and host name
/// (or IP address) are verified, against the system's CA store plus every certificate of
/// `sslrootcert` when given.
fn tls(root: Option<&str>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's store (SSL_CERT_FILE / SSL_CERT_DIR, else the distribution's bundle); a host
    // without one still reaches a store whose CA comes by `sslrootcert`.
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(
        added,
        unreadable = system.errors.len(),
        "system CA certificates"
    );
    if let Some(path) = root {
        let bad = |reason: String| StoreError::BadStore {
            store: "given".into(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("sslrootcert {path} is not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "sslrootcert {path} is not a PEM certificate: it holds none"
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                bad(format!(
                    "sslrootcert {path} is not a usable CA certificate: {e}"
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Unavailable(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The URL as tokio-postgres reads it, and the CA file to trust: libpq's `sslmode=verify-ca`
/// and `verify-full` become `require` (which verifies the chain and the host name here), and
/// `sslrootcert=PATH` is taken out for [`tls`].
fn split_tls(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<String> = query
        .split('&')
        .filter_map(|kv| match kv.split_once('=') {
            Some(("sslrootcert", v)) => {
                root = Some(v.to_owned());
                None
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => Some("sslmode=require".to_owned()),
            _ => Some(kv.to_owned()),
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

impl Postgres {
    /// Connects to the store at `url` (`postgres://user:password@host:port/db?sslmode=...`;
    /// libpq's keywords work too). Checks the connection once, then starts the listener.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let (url, root) = split_tls(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::BadStore {
            store: shown.clone(),
            reason: format!("{e}"),
        })?;
        if config.get_password().is_none() {
            // As libpq does: the password from the environment, so it need not be in the URL.
            if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        config
            .application_name("sandbox-secrets")
            .connect_timeout(CALL_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sandbox-secrets-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's runtime: {e}"))
            })?;
        let tls = tls(root.as_deref())?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _enter = runtime.enter();
            Pool::builder(manager)
                .max_size(4)
                .wait_timeout(Some(CALL_TIMEOUT))
                .create_timeout(Some(CALL_TIMEOUT))
                .recycle_timeout(Some(CALL_TIMEOUT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Unavailable(format!("connection pool: {e}")))?
        };
        let (tx, link) = watch::channel(Link::default());
        runtime.spawn(listen(config, tls, tx));
        let mut this = Self {
            runtime: Some(runtime),
            pool,
            locked: None,
            shown,
            link,
        };
        // Fail at start, clearly, when the store cannot be reached at all.
        this.run(|client| async move {
            client
                .simple_query("SELECT 1")
                .await
                .map_err(pg("connect"))
                .map(drop)
        })?;
        Ok(this)
    }

    /// Runs `f` with a pooled connection on the backend's runtime and waits for its result.
    fn run<T, F, Fut>(&mut self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(chain(&e)))?;
            match tokio::time::timeout(CALL_TIMEOUT * 2, f(client)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {:?}",
                    CALL_TIMEOUT * 2
                ))),
            }
        })
    }

    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = &self.runtime else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the store call was lost".into())))
    }
}

impl Postgres {
    /// Every meta row, the head, and the secret and sandbox rows of a version above `since`
    /// (`None`: every row, malformed ones included), in one snapshot.
    fn load_where(&mut self, since: Option<i64>) -> Result<Snapshot, StoreError> {
        self.run(move |mut client| async move {
            // One snapshot of all three tables.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg("load"))?;
            let mut snap = Snapshot::default();
            for row in tx
                .query("SELECT key, key_id, nonce, ciphertext FROM meta", &[])
                .await
                .map_err(pg("load meta"))?
            {
                if let (Ok(name), Ok(key_id), Ok(nonce), Ok(ciphertext)) =
                    (get(&row, 0), get(&row, 1), get(&row, 2), get(&row, 3))
                {
                    snap.meta.push(MetaRecord {
                        name,
                        key_id,
                        sealed: Sealed { nonce, ciphertext },
                    });
                }
            }
            snap.secrets = tx
                .query(
                    "SELECT kind, scope, name, repos, version, key_id, nonce, ciphertext, updated
                     FROM secrets WHERE $1::bigint IS NULL OR version > $1",
                    &[&since],
                )
                .await
                .map_err(pg("load secrets"))?
                .iter()
                .map(decode_secret)
                .collect();
            snap.sandboxes = tx
                .query(
                    "SELECT id, \"user\", repo, created, version, key_id, nonce, mac, host
                     FROM sandboxes WHERE $1::bigint IS NULL OR version > $1",
                    &[&since],
                )
                .await
                .map_err(pg("load sandboxes"))?
                .iter()
                .map(decode_sandbox)
                .collect();
            let head: i64 = tx
                .query_one("SELECT generation FROM head", &[])
                .await
                .map_err(pg("load head"))?
                .get(0);
            snap.head = u64::try_from(head).ok();
            tx.commit().await.map_err(pg("load"))?;
            Ok(snap)
        })
    }
}

/// Keeps one connection listening on [`CHANNEL`]; publishes its state and every announced
/// generation. Reconnects with a doubling backoff capped at [`BACKOFF_CAP`].
async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, tx: watch::Sender<Link>) {
    let mut backoff = Duration::from_millis(100);
    let down = |reason: String| {
        tx.send_if_modified(|l| {
            let was = l.connected || l.reason.is_none();
            if was {
                tracing::warn!(reason = %reason, "store connection lost; serving the answers cached so far, admin changes refused until it is back");
            }
            l.connected = false;
            let changed = l.reason.as_deref() != Some(reason.as_str());
            l.reason = Some(reason);
            was || changed
        });
    };
    loop {
        if tx.is_closed() {
            return;
        }
        match config.connect(tls.clone()).await {
            Err(e) => down(chain(&e)),
            Ok((client, mut conn)) => {
                let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                // A generation, or TOKENS_CHANGED (it parses as no number).
                                let _ = ntx.send(Ok(n.payload().parse().unwrap_or(0)));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                let _ = ntx.send(Err(chain(&e)));
                                return;
                            }
                            None => {
                                let _ = ntx.send(Err("the connection closed".into()));
                                return;
                            }
                        }
                    }
                });
                let started = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    // Read after LISTEN: a commit in between is announced, not missed.
                    let head = client
                        .query_opt("SELECT generation FROM head", &[])
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |r| r.get::<_, i64>(0));
                    Ok::<_, tokio_postgres::Error>(head)
                };
                match tokio::time::timeout(CALL_TIMEOUT, started).await {
                    Ok(Ok(head)) => {
                        backoff = Duration::from_millis(100);
                        let head = u64::try_from(head).unwrap_or(0);
                        tx.send_modify(|l| {
                            if !l.connected && l.reason.is_some() {
                                tracing::info!("store connection back; re-reading the store");
                            }
                            l.connected = true;
                            l.reason = None;
                            l.head = l.head.max(head);
                            l.epoch += 1;
                        });
                        let mut ping = tokio::time::interval(PING_EVERY);
                        ping.tick().await;
                        let reason = loop {
                            tokio::select! {
                                m = nrx.recv() => match m {
                                    Some(Ok(0)) => tx.send_modify(|l| l.tokens += 1),
                                    Some(Ok(g)) => {
                                        tx.send_if_modified(|l| {
                                            let moved = g > l.head;
                                            l.head = l.head.max(g);
                                            moved
                                        });
                                    }
                                    Some(Err(e)) => break e,
                                    None => break "the connection closed".to_owned(),
                                },
                                _ = ping.tick() => {
                                    match tokio::time::timeout(CALL_TIMEOUT, client.simple_query("")).await {
                                        Ok(Ok(_)) => {}
                                        Ok(Err(e)) => break chain(&e),
                                        Err(_) => break format!("no answer to a ping within {CALL_TIMEOUT:?}"),
                                    }
                                }
                                _ = tx.closed() => { driver.abort(); return; }
                            }
                        };
                        down(reason);
                    }
                    Ok(Err(e)) => down(chain(&e)),
                    Err(_) => down(format!("no answer to LISTEN within {CALL_TIMEOUT:?}")),
                }
                driver.abort();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

// ------------------------------------------------------------------------------------------
// Rows

fn repos(raw: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(raw)
        .map_err(|e| format!("repository list is not a list of names ({e})"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, String> {
    row.try_get(i).map_err(|e| format!("column {i}: {e}"))
}

fn secret_row_name(row: &Row) -> String {
    match (
        get::<String>(row, 0),
        get::<String>(row, 1),
        get::<String>(row, 2),
    ) {
        (Ok(k), Ok(s), Ok(n)) => match ScopeKind::parse(&k) {
            Some(k) => what(k, &s, &n),
            None => format!("secret {n} of {s} (kind {k:?})"),
        },
        _ => "secret row with unreadable key columns".to_owned(),
    }
}

fn version(v: i64) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("negative version {v}"))
}

fn decode_secret(row: &Row) -> Result<SecretRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: secret_row_name(row),
        reason,
    };
    let kind = get::<String>(row, 0).map_err(bad)?;
    Ok(SecretRecord {
        kind: ScopeKind::parse(&kind).ok_or_else(|| bad(format!("unknown scope kind {kind:?}")))?,
        scope: get(row, 1).map_err(bad)?,
        name: get(row, 2).map_err(bad)?,
        repos: repos(&get::<String>(row, 3).map_err(bad)?).map_err(bad)?,
        version: version(get(row, 4).map_err(bad)?).map_err(bad)?,
        key_id: get(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: get(row, 6).map_err(bad)?,
            ciphertext: get(row, 7).map_err(bad)?,
        },
        updated: get(row, 8).map_err(bad)?,
    })
}

fn decode_sandbox(row: &Row) -> Result<SandboxRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: match get::<String>(row, 0) {
            Ok(id) => format!("sandbox {id}"),
            Err(_) => "sandbox row with an unreadable id".to_owned(),
        },
        reason,
    };
    Ok(SandboxRecord {
        id: get(row, 0).map_err(bad)?,
        user: get(row, 1).map_err(bad)?,
        repo: get(row, 2).map_err(bad)?,
        created: get(row, 3).map_err(bad)?,
        version: version(get(row, 4).map_err(bad)?).map_err(bad)?,
        key_id: get(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: get(row, 6).map_err(bad)?,
            ciphertext: get(row, 7).map_err(bad)?,
        },
        host: get(row, 8).map_err(bad)?,
    })
}

/// Migration 3, "hosts": each sandbox records the broker host that serves it.
async fn migrate_hosts(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(
        "ALTER TABLE sandboxes ADD COLUMN host TEXT NOT NULL DEFAULT '';
         INSERT INTO schema_migrations (version, name, applied)
             VALUES (3, 'hosts', extract(epoch from now())::bigint);",
    )
    .await
    .map_err(pg("migrate: hosts"))
}

/// Migration 4, "tokens": the platform API's token rows (hashes under a seal), shared by every
/// broker of the store.
async fn migrate_tokens(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, scope TEXT NOT NULL,
            created BIGINT NOT NULL, expires BIGINT NOT NULL, key_id TEXT NOT NULL,
            nonce BYTEA NOT NULL, mac BYTEA NOT NULL);
         INSERT INTO schema_migrations (version, name, applied)
             VALUES (4, 'tokens', extract(epoch from now())::bigint);",
    )
    .await
    .map_err(pg("migrate: tokens"))
}

/// Tells the other brokers that the tokens changed: they read them again.
fn decode_token(row: &Row) -> Result<TokenRecord, Malformed> {
    let bad = |reason: String| Malformed {
        row: match get::<String>(row, 0) {
            Ok(id) => format!("token {id}"),
            Err(_) => "token row with an unreadable id".to_owned(),
        },
        reason,
    };
    Ok(TokenRecord {
        id: get(row, 0).map_err(bad)?,
        hash: get(row, 1).map_err(bad)?,
        scope: get(row, 2).map_err(bad)?,
        created: get(row, 3).map_err(bad)?,
        expires: get(row, 4).map_err(bad)?,
        key_id: get(row, 5).map_err(bad)?,
        sealed: Sealed {
            nonce: get(row, 6).map_err(bad)?,
            ciphertext: get(row, 7).map_err(bad)?,
        },
    })
}

async fn write<C: deadpool_postgres::GenericClient>(
    tx: &C,
    change: &Change,
) -> Result<(), tokio_postgres::Error> {
    match change {
        Change::PutSecret(r) => {
            let repos = serde_json::to_string(&r.repos).unwrap_or_else(|_| "[]".into());
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO secrets (kind, scope, name, repos, version, key_id, nonce,
                         ciphertext, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (kind, scope, name) DO UPDATE SET repos = excluded.repos,
                         version = excluded.version, key_id = excluded.key_id,
                         nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                         updated = excluded.updated",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &r.kind.as_str(),
                    &r.scope,
                    &r.name,
                    &repos,
                    &(r.version as i64),
                    &r.key_id,
                    &r.sealed.nonce,
                    &r.sealed.ciphertext,
                    &r.updated,
                ],
            )
            .await?;
        }
        Change::DeleteSecret { kind, scope, name } => {
            let stmt = tx
                .prepare_cached("DELETE FROM secrets WHERE kind = $1 AND scope = $2 AND name = $3")
                .await?;
            tx.execute(&stmt, &[&kind.as_str(), scope, name]).await?;
        }
        Change::PutSandbox(r) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO sandboxes (id, \"user\", repo, created, version, key_id, nonce,
                         mac, host) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO UPDATE SET \"user\" = excluded.\"user\",
                         repo = excluded.repo, created = excluded.created,
                         version = excluded.version, key_id = excluded.key_id,
                         nonce = excluded.nonce, mac = excluded.mac, host = excluded.host",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &r.id,
                    &r.user,
                    &r.repo,
                    &r.created,
                    &(r.version as i64),
                    &r.key_id,
                    &r.sealed.nonce,
                    &r.sealed.ciphertext,
                    &r.host,
                ],
            )
            .await?;
        }
        Change::DeleteSandbox(id) => {
            let stmt = tx
                .prepare_cached("DELETE FROM sandboxes WHERE id = $1")
                .await?;
            tx.execute(&stmt, &[id]).await?;
        }
        Change::PutToken(t) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO tokens (id, hash, scope, created, expires, key_id, nonce, mac)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET hash = excluded.hash,
                         scope = excluded.scope, created = excluded.created,
                         expires = excluded.expires, key_id = excluded.key_id,
                         nonce = excluded.nonce, mac = excluded.mac",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &t.id,
                    &t.hash,
                    &t.scope,
                    &t.created,
                    &t.expires,
                    &t.key_id,
                    &t.sealed.nonce,
                    &t.sealed.ciphertext,
                ],
            )
            .await?;
        }
        Change::DeleteToken(id) => {
            tx.execute("DELETE FROM tokens WHERE id = $1", &[id])
                .await?;
        }
        Change::PutMeta(m) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO meta (key, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (key) DO UPDATE SET key_id = excluded.key_id,
                         nonce = excluded.nonce, ciphertext = excluded.ciphertext",
                )
                .await?;
            tx.execute(
                &stmt,
                &[&m.name, &m.key_id, &m.sealed.nonce, &m.sealed.ciphertext],
            )
            .await?;
        }
    }
    if matches!(change, Change::PutToken(_) | Change::DeleteToken(_)) {
        // Delivered at commit: every broker reads its tokens again.
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &TOKENS_CHANGED])
            .await?;
    }
    Ok(())
}

/// Ends the write lock's transaction with `sql` (COMMIT or ROLLBACK); a connection where that
/// fails is closed rather than returned to the pool.
async fn end(client: deadpool_postgres::Object, sql: &str) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(e) => {
            drop(deadpool_postgres::Object::take(client));
            Err(e)
        }
    }
}

async fn schema_version_of(client: &tokio_postgres::Transaction<'_>) -> Result<u32, StoreError> {
    let exists = |table: &'static str| async move {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(pg("read schema"))
    };
    if exists("schema_migrations").await? {
        let v: Option<i32> = client
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await
            .map_err(pg("read schema version"))?
            .get(0);
        return Ok(v.unwrap_or(0).max(0) as u32);
    }
    // PostgreSQL stores never had an unversioned first release.
    Ok(0)
}

impl Backend for Postgres {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn schema_version(&mut self) -> Result<u32, StoreError> {
        self.run(|mut client| async move {
            let tx = client.transaction().await.map_err(pg("read schema"))?;
            schema_version_of(&tx).await
        })
    }

    fn load_v1(&mut self) -> Result<V1Snapshot, StoreError> {
        Ok(V1Snapshot::default())
    }

    fn migrate(&mut self, from: u32, rows: &[Change]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg("migrate"))?;
            // Brokers starting together: one migrates, the others wait here and then find it
            // done.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg("migrate: take the migration lock"))?;
            let now = schema_version_of(&tx).await?;
            if now != from {
                // Another broker migrated meanwhile: its rows stand, ours are not written.
                tracing::info!(
                    found = now,
                    "another broker migrated the store first; using its schema"
                );
                return Ok(());
            }
            if from == 0 {
                tx.batch_execute(SCHEMA_V2)
                    .await
                    .map_err(pg("migrate: create v2 tables"))?;
            }
            if from <= 2 {
                migrate_hosts(&tx).await?;
            }
            if from <= 3 {
                migrate_tokens(&tx).await?;
            }
            debug_assert_eq!(SCHEMA_VERSION, 4, "a new migration goes above");
            for change in &rows {
                write(&tx, change)
                    .await
                    .map_err(pg("migrate: write rows"))?;
            }
            tx.commit().await.map_err(pg("migrate: commit"))
        })
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.load_where(None)
    }

    fn load_since(&mut self, since: u64) -> Result<Option<Snapshot>, StoreError> {
        self.load_where(Some(i64::try_from(since).unwrap_or(i64::MAX)))
            .map(Some)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.apply_at(None, changes)
    }

    fn load_tokens(&mut self) -> Result<Vec<Result<TokenRecord, Malformed>>, StoreError> {
        self.run(|client| async move {
            let rows = client
                .query(
                    "SELECT id, hash, scope, created, expires, key_id, nonce, mac FROM tokens",
                    &[],
                )
                .await
                .map_err(pg("load tokens"))?;
            Ok(rows.iter().map(decode_token).collect())
        })
    }

    fn apply_at(&mut self, base: Option<u64>, changes: &[Change]) -> Result<(), StoreError> {
        let step = Change::step(changes);
        let changes = changes.to_vec();
        if let Some(client) = self.locked.take() {
            // Under the write lock: no other broker committed since it was taken.
            return self.block(async move {
                let done = async {
                    for change in &changes {
                        write(&client, change).await?;
                    }
                    let head: i64 = client
                        .query_one("SELECT generation FROM head", &[])
                        .await?
                        .get(0);
                    Ok::<_, tokio_postgres::Error>(u64::try_from(head).unwrap_or(0))
                };
                let head = match tokio::time::timeout(CALL_TIMEOUT * 2, done).await {
                    Ok(Ok(h)) => h,
                    Ok(Err(e)) => {
                        let _ = end(client, "ROLLBACK").await;
                        return Err(pg(step)(e));
                    }
                    Err(_) => {
                        drop(deadpool_postgres::Object::take(client));
                        return Err(StoreError::Unavailable(format!(
                            "no answer within {:?}",
                            CALL_TIMEOUT * 2
                        )));
                    }
                };
                if let Some(base) = base {
                    if head != base {
                        let _ = end(client, "ROLLBACK").await;
                        return Err(StoreError::Moved { head });
                    }
                }
                let next = base.map_or(head, |b| b + 1);
                let finish = async {
                    client
                        .execute("UPDATE head SET generation = $1", &[&(next as i64)])
                        .await?;
                    client
                        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
                        .await
                        .map(drop)
                };
                match tokio::time::timeout(CALL_TIMEOUT * 2, finish).await {
                    Ok(Ok(())) => end(client, "COMMIT").await.map_err(pg(step)),
                    Ok(Err(e)) => {
                        let _ = end(client, "ROLLBACK").await;
                        Err(pg(step)(e))
                    }
                    Err(_) => {
                        drop(deadpool_postgres::Object::take(client));
                        Err(StoreError::Unavailable(format!(
                            "no answer within {:?}",
                            CALL_TIMEOUT * 2
                        )))
                    }
                }
            });
        }
        self.run(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg(step))?;
            // The head row is the store's write lock: commits of every broker queue here.
            let head: i64 = tx
                .query_one("SELECT generation FROM head FOR UPDATE", &[])
                .await
                .map_err(pg(step))?
                .get(0);
            let head = u64::try_from(head).unwrap_or(0);
            if let Some(base) = base {
                if head != base {
                    return Err(StoreError::Moved { head });
                }
            }
            for change in &changes {
                write(&tx, change).await.map_err(pg(step))?;
            }
            let next = base.map_or(head, |b| b + 1);
            tx.execute("UPDATE head SET generation = $1", &[&(next as i64)])
                .await
                .map_err(pg(step))?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
                .await
                .map_err(pg(step))?;
            tx.commit().await.map_err(pg(step))
        })
    }

    fn lock_writes(&mut self) -> Result<(), StoreError> {
        self.unlock_writes();
        let pool = self.pool.clone();
        let client = self.block(async move {
            let client = pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(chain(&e)))?;
            let lock = async {
                client.batch_execute("BEGIN").await?;
                client
                    .query_one("SELECT generation FROM head FOR UPDATE", &[])
                    .await
                    .map(drop)
            };
            match tokio::time::timeout(CALL_TIMEOUT * 2, lock).await {
                Ok(Ok(())) => Ok(client),
                Ok(Err(e)) => {
                    let _ = end(client, "ROLLBACK").await;
                    Err(pg("lock the store for writing")(e))
                }
                Err(_) => {
                    drop(deadpool_postgres::Object::take(client));
                    Err(StoreError::Unavailable(format!(
                        "the store's write lock was not granted within {:?}",
                        CALL_TIMEOUT * 2
                    )))
                }
            }
        })?;
        self.locked = Some(client);
        Ok(())
    }

    fn unlock_writes(&mut self) {
        if let Some(client) = self.locked.take() {
            let _ = self.block(async move {
                let _ = end(client, "ROLLBACK").await;
                Ok(())
            });
        }
    }

    fn backup(&mut self, dest: &Path) -> Result<(), StoreError> {
        Err(StoreError::Backup {
            path: dest.to_owned(),
            error: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a PostgreSQL store is backed up with PostgreSQL's tools (pg_dump, or base backups and WAL archiving); see docs/operations.md",
            ),
        })
    }

    fn link(&self) -> Option<watch::Receiver<Link>> {
        Some(self.link.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, split_tls, tls};
    use crate::broker::store::StoreError;

    #[test]
    fn libpq_tls_words_map_to_verified_tls() {
        assert_eq!(
            split_tls("postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            (
                "postgres://h/db?sslmode=require".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            split_tls("postgres://h/db"),
            ("postgres://h/db".to_owned(), None)
        );
        assert_eq!(
            split_tls("postgres://h/db?sslrootcert=/ca.pem"),
            ("postgres://h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            split_tls("postgres://h/db?sslmode=disable&application_name=x").0,
            "postgres://h/db?sslmode=disable&application_name=x"
        );
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact("postgresql://u:p@ss@h/db"),
            "postgresql://u:***@h/db"
        );
        assert!(!redact("host=h password=x").contains('x'));
    }

    /// An `sslrootcert` that is missing, empty or not PEM is refused at start, naming the file;
    /// without one, the system's store is enough to build the connector.
    #[test]
    fn a_bad_sslrootcert_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, says) in [
            (&junk, "is not a PEM certificate"),
            (&empty, "is not a PEM certificate"),
            (&missing, "No such file"),
        ] {
            let path = path.to_str().unwrap();
            match tls(Some(path)) {
                Err(StoreError::BadStore { reason, .. }) => {
                    assert!(reason.contains(path) && reason.contains(says), "{reason}")
                }
                Err(e) => panic!("{path}: {e}"),
                Ok(_) => panic!("{path} accepted as a CA"),
            }
        }
        assert!(tls(None).is_ok());
    }
}
