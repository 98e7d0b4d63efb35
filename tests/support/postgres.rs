//! The test PostgreSQL cluster (`scripts/postgres.sh start`): a fresh database per test, dropped
//! at the end, and psql with the connection in its environment (the password never in argv).

use std::path::Path;
use std::process::{Command, Stdio};

use super::daemon::output;

/// The cluster's URL: `SANDBOX_TEST_POSTGRES`, else the env file `scripts/postgres.sh` writes.
pub fn cluster_url() -> Option<String> {
    if let Ok(url) = std::env::var("SANDBOX_TEST_POSTGRES") {
        return Some(url);
    }
    let dir = std::env::var("SANDBOX_TEST_DIR").unwrap_or_else(|_| "/run/sandbox-init-test".into());
    let text = std::fs::read_to_string(Path::new(&dir).join("postgres.env")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("SANDBOX_TEST_POSTGRES="))
        .map(str::to_owned)
}

/// The parts of a `postgres://user:password@host:port/db?...` URL.
pub struct Parts {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub db: String,
    pub query: String,
}

pub fn parts(url: &str) -> Parts {
    let rest = url.split_once("://").expect("a postgres:// URL").1;
    let (auth, rest) = rest.rsplit_once('@').expect("user and password in the URL");
    let (user, password) = auth.split_once(':').expect("a password in the URL");
    let (hostport, path) = rest.split_once('/').expect("a database in the URL");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let (db, query) = path.split_once('?').unwrap_or((path, ""));
    Parts {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.parse().expect("a port number"),
        db: db.into(),
        query: query.into(),
    }
}

impl Parts {
    pub fn url(&self) -> String {
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        format!(
            "postgres://{}:{}@{}:{}/{}{q}",
            self.user, self.password, self.host, self.port, self.db
        )
    }
}

/// psql on `url`, quiet, unaligned, stopping at the first error.
pub fn psql(url: &str) -> Command {
    let p = parts(url);
    let mut c = Command::new("psql");
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .env("PGHOST", &p.host)
        .env("PGPORT", p.port.to_string())
        .env("PGUSER", &p.user)
        .env("PGPASSWORD", &p.password)
        .env("PGDATABASE", &p.db)
        .env("PGCONNECT_TIMEOUT", "10");
    c
}

/// Runs `sql` on `url`; returns what it printed.
pub fn run_sql(url: &str, sql: &str) -> String {
    let mut cmd = psql(url);
    let out = output(
        cmd.arg("-f").arg("-").stdout(Stdio::piped()),
        Some(sql.as_bytes()),
    );
    assert!(
        out.status.success(),
        "psql failed on {sql}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A database of its own on the test cluster, dropped with this value.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A fresh database; `None` (after `skip`, which fails in CI) without a cluster.
    pub fn new() -> Option<Self> {
        let Some(cluster) = cluster_url() else {
            super::skip(
                "no PostgreSQL: run scripts/postgres.sh start (or set SANDBOX_TEST_POSTGRES)",
            );
            return None;
        };
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        run_sql(&cluster, &format!("CREATE DATABASE {name};"));
        let mut p = parts(&cluster);
        p.db = name.clone();
        Some(TestDb { url: p.url(), name })
    }

    /// Runs `sql` on this database; returns what it printed.
    pub fn sql(&self, sql: &str) -> String {
        run_sql(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(cluster) = cluster_url() {
            let mut c = psql(&cluster);
            c.stderr(Stdio::null());
            let _ = output(
                c.arg("-f").arg("-"),
                Some(format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", self.name).as_bytes()),
            );
        }
    }
}
