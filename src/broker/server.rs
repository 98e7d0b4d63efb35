//! The daemon: binds the admin socket and one socket per sandbox, runs `serve(listener, stop)`
//! loops with a task per connection and a connection limit per socket, checks admin peers by
//! SO_PEERCRED, drains gracefully on shutdown and removes its sockets. Routing is `api`'s; this
//! module never sees a value.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, Semaphore};

use super::api::{self, ApiError};
use super::sandboxes::{self, Layout, SandboxError};
use super::store::{SandboxRow, Store, StoreError};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Connections served at once on one sandbox socket; more wait in the backlog.
    pub sandbox_connections: usize,
    /// Connections served at once on the admin socket.
    pub admin_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time an admin client has to send its request body, once the headers are in.
    pub body_timeout: Duration,
    /// Time given to open connections to finish at shutdown.
    pub drain_timeout: Duration,
    /// Serve a store older than the generation beside its key (`serve --accept-rollback`).
    pub accept_rollback: bool,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            sandbox_connections: 1024,
            admin_connections: 16,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            accept_rollback: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cannot register listener {path} with the runtime: {source}")]
    Listener {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which socket a connection arrived on: that is how the daemon knows the sandbox.
#[derive(Clone, Debug)]
enum Socket {
    Admin,
    Sandbox(Arc<str>),
}

/// Everything the routes need: the store, the layout, and the running sandbox listeners.
pub struct Daemon {
    store: Store,
    layout: Layout,
    config: Config,
    euid: u32,
    /// Stop switch per running sandbox listener.
    listeners: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Built sandbox answers, per store generation.
    answers: api::AnswerCache,
    /// Held by every serve loop and connection; the drain waits until all are dropped.
    drain: Mutex<Option<mpsc::Sender<()>>>,
}

impl Daemon {
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn answers(&self) -> &api::AnswerCache {
        &self.answers
    }
    /// Time an admin client has to send its request body.
    pub fn body_timeout(&self) -> Duration {
        self.config.body_timeout
    }

    fn drain_guard(&self) -> Option<mpsc::Sender<()>> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Binds a sandbox's socket and starts serving it.
    fn start_sandbox(self: &Arc<Self>, id: &str) -> Result<(), ServerError> {
        let std_listener = self.layout.bind_sandbox(id)?;
        let listener =
            UnixListener::from_std(std_listener).map_err(|source| ServerError::Listener {
                path: self.layout.sandbox_socket(id).unwrap_or_default(),
                source,
            })?;
        let (tx, rx) = watch::channel(false);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), tx);
        let Some(guard) = self.drain_guard() else {
            return Ok(()); // shutting down
        };
        tokio::spawn(serve(
            listener,
            Socket::Sandbox(Arc::from(id)),
            Arc::clone(self),
            rx,
            Arc::new(Semaphore::new(self.config.sandbox_connections)),
            guard,
        ));
        Ok(())
    }

    /// Creates a sandbox for (user, repo): a random id, its directory and socket, its row.
    pub fn create_sandbox(
        self: &Arc<Self>,
        user: &str,
        repo: &str,
    ) -> Result<SandboxRow, ApiError> {
        let id = sandboxes::new_id()?;
        let row = SandboxRow {
            id: id.clone(),
            user: user.to_owned(),
            repo: repo.to_owned(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        self.store.add_sandbox(row.clone())?;
        if let Err(e) = self.start_sandbox(&id) {
            self.stop_listener(&id);
            let _ = self.layout.remove_sandbox(&id);
            let _ = self.store.remove_sandbox(&id);
            return Err(match e {
                ServerError::Sandbox(e) => ApiError::Sandbox(e),
                ServerError::Store(e) => ApiError::Store(e),
                ServerError::Listener { source, .. } => ApiError::Sandbox(SandboxError::Bind {
                    path: self.layout.sandbox_socket(&id).unwrap_or_default(),
                    source,
                }),
            });
        }
        Ok(row)
    }

    fn stop_listener(&self, id: &str) {
        if let Some(tx) = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        {
            let _ = tx.send(true);
        }
    }

    /// Deletes a sandbox: its row, its listener, its socket and directory.
    pub fn delete_sandbox(&self, id: &str) -> Result<SandboxRow, ApiError> {
        sandboxes::check_id(id)?;
        let row = self.store.remove_sandbox(id)?;
        self.stop_listener(id);
        self.answers.sync(self.store.generation());
        self.layout.remove_sandbox(id)?;
        Ok(row)
    }
}

/// Runs the daemon until `shutdown` completes, then drains connections and removes its sockets.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    harden();
    let store = Store::open_with(
        &config.state_dir,
        super::store::OpenOptions {
            accept_rollback: config.accept_rollback,
        },
    )?;
    for what in store.unreadable() {
        tracing::error!(secret = %what, "sealed value does not open (tampered?); sandboxes that read it will get an error");
    }
    let layout = Layout::new(&config.run_dir);
    layout.prepare()?;
    let admin_std = layout.bind_admin()?;
    let admin_path = layout.admin_socket();
    let admin = UnixListener::from_std(admin_std).map_err(|source| ServerError::Listener {
        path: admin_path.clone(),
        source,
    })?;
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let daemon = Arc::new(Daemon {
        store,
        layout: layout.clone(),
        config: config.clone(),
        euid: nix::unistd::geteuid().as_raw(),
        listeners: Mutex::new(HashMap::new()),
        answers: api::AnswerCache::default(),
        drain: Mutex::new(Some(drain_tx.clone())),
    });
    daemon.answers.sync(daemon.store.generation());

    let mut started = 0usize;
    for sandbox in daemon.store.sandboxes() {
        match daemon.start_sandbox(&sandbox.id) {
            Ok(()) => started += 1,
            Err(e) => {
                // One broken sandbox must not keep the others down; say which.
                tracing::error!(sandbox = %sandbox.id, error = %e, "cannot re-create sandbox socket");
            }
        }
    }
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    tokio::spawn(serve(
        admin,
        Socket::Admin,
        Arc::clone(&daemon),
        admin_stop_rx,
        Arc::new(Semaphore::new(config.admin_connections)),
        drain_tx.clone(),
    ));
    tracing::info!(
        admin = %admin_path.display(),
        state = %config.state_dir.display(),
        sandboxes = started,
        "sandbox-secrets listening"
    );

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining open ones");
    let _ = admin_stop_tx.send(true);
    let ids: Vec<String> = {
        let mut map = daemon.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.drain()
            .map(|(id, tx)| {
                let _ = tx.send(true);
                id
            })
            .collect()
    };
    daemon
        .drain
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    drop(drain_tx);
    // Sockets go first so no client connects to a daemon that will not answer.
    let _ = sandboxes::remove_file_quietly(&admin_path);
    for id in &ids {
        if let Ok(path) = layout.sandbox_socket(id) {
            let _ = sandboxes::remove_file_quietly(&path);
        }
    }
    if tokio::time::timeout(config.drain_timeout, drain_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps plaintext that passes through this process out of core dumps and away from same-uid
/// debuggers: no core file, not dumpable (also closes /proc/<pid>/mem to non-root peers). Raises
/// the soft descriptor limit to the hard one, so one sandbox filling its connection limit cannot
/// run the whole daemon out of descriptors (a systemd service starts with a soft limit of 1024,
/// the same as one sandbox socket's connection limit).
fn harden() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the descriptor limit"),
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the daemon not dumpable");
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections on `listener` until `stop` turns true, a task per connection, at most
/// `limit` at once. Each connection is told to finish its current request when `stop` turns.
async fn serve(
    listener: UnixListener,
    socket: Socket,
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    drain: mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => { backoff = Duration::from_millis(10); stream }
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let daemon = Arc::clone(&daemon);
        let socket = socket.clone();
        let stop = stop.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            connection(stream, socket, daemon, stop).await;
            drop(permit);
            drop(drain);
        });
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    socket: Socket,
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(daemon.config.header_timeout)
        // A sandbox request is a bare GET: a small buffer keeps a flood of connections each
        // sending huge headers from costing the daemon its buffer size per connection.
        .max_buf_size(match socket {
            Socket::Admin => api::MAX_ADMIN_BODY + 64 * 1024,
            Socket::Sandbox(_) => api::MAX_SANDBOX_REQUEST,
        });
    let admin_uid = match socket {
        Socket::Admin => {
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
                    return;
                }
            };
            if uid != 0 && uid != daemon.euid {
                super::audit::admin_refused(uid);
                // Answer every request with a clear 403 rather than a silent close.
                let euid = daemon.euid;
                let svc = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(ApiError::Forbidden { uid, daemon: euid }.response())
                });
                let _ = builder
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                return;
            }
            Some(uid)
        }
        Socket::Sandbox(_) => None,
    };
    let svc_daemon = Arc::clone(&daemon);
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let daemon = Arc::clone(&svc_daemon);
        let socket = socket.clone();
        async move {
            let response = match (&socket, admin_uid) {
                (Socket::Sandbox(id), _) => {
                    let has_body = !hyper::body::Body::is_end_stream(req.body());
                    api::sandbox_request(&daemon, id, req.method(), req.uri().path(), has_body)
                }
                (Socket::Admin, Some(uid)) => api::admin_request(&daemon, uid, req).await,
                (Socket::Admin, None) => unreachable!("admin connections carry a uid"),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
