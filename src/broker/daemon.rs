//! The daemon's state: the store, the run-directory layout, the live sandboxes (one lean
//! [`Slot`] each), the answer cache per store generation, the descriptor budget, and the sandbox
//! lifecycle (create, delete, close at shutdown). Knows nothing of HTTP: the server hands it a
//! function that serves a sandbox's listener, and the HTTP layer calls its methods. No error or
//! log line here holds a value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, Notify};
use zeroize::Zeroizing;

use super::acl::Level;
use super::audit;
use super::limits::{self, AnswerBudget, OverBudget};
use super::sandboxes::{self, Layout, SandboxError};
use super::store::{SandboxRow, ScopeKind, Store, StoreError};
use crate::protocol::{self, WireSecretRef};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Connections served at once on one sandbox socket; more wait in the backlog. A sandbox
    /// makes one request at start and one per `sandbox-init env`: tens are plenty.
    pub sandbox_connections: usize,
    /// Connections served at once on the admin socket.
    pub admin_connections: usize,
    /// Connections served at once over all sockets; one past it gets a 503 and is closed.
    pub global_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time an admin client has to send its request body, once the headers are in.
    pub body_timeout: Duration,
    /// Time given to open connections to finish at shutdown.
    pub drain_timeout: Duration,
    /// Serve a store older than the generation beside its key (`serve --accept-rollback`).
    pub accept_rollback: bool,
    /// Time a client may leave a write of its answer waiting (not reading) before it is cut off.
    pub write_timeout: Duration,
    /// Bytes of built answers alive at once (cached, or held by responses being written).
    pub answer_budget: usize,
    /// Where the platform API and settings page listen (`serve --http`); off when `None`.
    pub http: Option<std::net::SocketAddr>,
    /// The store: `None` for the SQLite file in the state directory, or a `postgres://` URL
    /// (`serve --store`, env `SANDBOX_SECRETS_STORE`).
    pub store: Option<String>,
    /// This broker's host (`serve --host-id`, default the hostname): it creates and serves the
    /// sandboxes of this host only.
    pub host_id: String,
    /// PEM certificate chain and private key: the platform API over TLS (`--tls-cert/--tls-key`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The host id a broker takes when none is given: the kernel's hostname.
pub fn default_host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| check_host_id(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A host id: 1 to 64 of `[A-Za-z0-9._-]`, so it reads the same in tables, logs and errors.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "host id must be 1 to 64 characters, got {}",
            id.len()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "host id {id:?} holds {c:?}: use letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            sandbox_connections: 32,
            admin_connections: 16,
            global_connections: 4096,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            accept_rollback: false,
            write_timeout: limits::DEFAULT_WRITE_TIMEOUT,
            answer_budget: limits::DEFAULT_ANSWER_BUDGET,
            http: None,
            store: None,
            host_id: default_host_id(),
            tls: None,
        }
    }
}

/// Answers built at once, but for sandboxes whose last answer was small: building opens and
/// encodes up to 16 MiB, so the memory it takes in passing is bounded by this many, requests for
/// the same sandbox wait for the one build, and small answers never wait behind large ones.
pub const BUILDS_AT_ONCE: usize = 1;

/// Descriptors kept free for connections, the store's files and a create in flight: a create
/// that would eat into them is refused, so existing sandboxes stay served.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// How long an answer waits, once a shared store's connection is back, for the store to be
/// re-read ([`Daemon::reread`]) before the answer cached before is served anyway (as while
/// disconnected); under the init's default `--secrets-timeout` (5 s).
pub const REREAD_WAIT: Duration = Duration::from_secs(2);

/// Why a daemon operation failed. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("sandbox {0} no longer exists")]
    SandboxGone(String),
    #[error("cannot serve secrets")]
    Unservable(#[source] StoreError),
    #[error("value of {0} is not valid UTF-8")]
    NotText(String),
    #[error(transparent)]
    Busy(#[from] OverBudget),
    #[error("secret {name} would make the answer of {user}'s sandboxes of {repo} {size} bytes (as encoded, escaping counted), over the {limit} bytes sandbox-init accepts; nothing was changed")]
    PlanTooLarge {
        name: String,
        user: String,
        repo: String,
        size: usize,
        limit: usize,
    },
    #[error("the answer of this sandbox would be {size} bytes, over the {limit} bytes sandbox-init accepts; remove or shorten secrets of its user or repository")]
    AnswerTooLarge { size: usize, limit: usize },
    #[error("the daemon is shutting down; no sandbox is created")]
    ShuttingDown,
    #[error("descriptor limit reached: {limit} open files allowed, {in_use} in use by {sandboxes} sandboxes and their connections; no sandbox is created (raise LimitNOFILE of the service, or `ulimit -n`, and restart the daemon)")]
    DescriptorCeiling {
        limit: u64,
        in_use: usize,
        sandboxes: usize,
    },
    #[error("cannot register the listener of sandbox {id} with the runtime")]
    Register {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// A live socket (a sandbox's, or the admin socket): its stop switch and its connection count.
/// Kept small: one per sandbox, and a host may hold tens of thousands.
pub struct Slot {
    id: Box<str>,
    stopped: AtomicBool,
    stop: Notify,
    active: AtomicUsize,
    freed: Notify,
}

impl Slot {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
            active: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }
    /// The sandbox id ("" for the admin socket).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Stops the listener; its connections finish their current request.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
    /// Resolves once [`Slot::stop`] was called.
    pub async fn stopped(&self) {
        loop {
            let notified = self.stop.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
    /// Takes one of `cap` connection places, if one is free.
    pub fn try_enter(&self, cap: usize) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }
    /// Gives a connection place back.
    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
    /// Resolves when a place may have been freed since the last call.
    pub async fn freed(&self) {
        self.freed.notified().await
    }
}

/// Held by every serve loop and connection; the drain at shutdown waits until all are dropped.
#[derive(Clone)]
pub struct DrainGuard(#[allow(dead_code)] mpsc::Sender<()>);

/// Serves one sandbox's listener (provided by the server, which owns the accept loop).
pub type ServeSandbox = Box<dyn Fn(Arc<Daemon>, Arc<Slot>, UnixListener, DrainGuard) + Send + Sync>;

struct Live {
    /// False from [`Daemon::close`] on: no sandbox is created or started.
    open: bool,
    slots: HashMap<Box<str>, Arc<Slot>>,
    drain: Option<DrainGuard>,
}

/// Everything the routes need: the store, the layout, the live sandboxes and the answer cache.
pub struct Daemon {
    store: Store,
    layout: Layout,
    config: Config,
    euid: u32,
    live: Mutex<Live>,
    /// Built sandbox answers, per store generation.
    answers: AnswerCache,
    /// Sandboxes with a watch (a long-polling `GET /v1/secrets`) open: woken after a change
    /// that alters their answer ([`Daemon::wake_watchers`]). One entry per watched sandbox,
    /// bounded by the connections the daemon serves.
    watches: Mutex<HashMap<Box<str>, Arc<Watch>>>,
    /// Bytes of built answers alive at once, cached or being written.
    budget: AnswerBudget,
    /// Answers being built at once (each may transiently hold its opened values and encoding).
    builds: tokio::sync::Semaphore,
    serve: ServeSandbox,
    /// Connections open over all sockets.
    connections: AtomicUsize,
    /// For a shared store: the connection epoch (`Link::epoch`) since which the store was last
    /// re-read, published by `server::follow_store`.
    reread: tokio::sync::watch::Sender<u64>,
    /// The connection epoch whose late re-read was last logged (once per epoch, not per fetch).
    reread_warned: AtomicU64,
    /// The soft descriptor limit the daemon runs with, and the descriptors it held at start.
    fd_limit: u64,
    fd_base: usize,
}

impl Daemon {
    /// The daemon over an open store; `serve` starts the accept loop of each sandbox started.
    /// Returns the receiver the drain waits on (it closes when every [`DrainGuard`] is gone).
    pub fn new(
        store: Store,
        layout: Layout,
        config: Config,
        serve: ServeSandbox,
        fd_limit: u64,
    ) -> (Arc<Self>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        let answer_budget = config.answer_budget;
        let daemon = Arc::new(Daemon {
            store,
            layout,
            config,
            euid: nix::unistd::geteuid().as_raw(),
            live: Mutex::new(Live {
                open: true,
                slots: HashMap::new(),
                drain: Some(DrainGuard(tx)),
            }),
            answers: AnswerCache::default(),
            watches: Mutex::new(HashMap::new()),
            budget: AnswerBudget::new(answer_budget),
            builds: tokio::sync::Semaphore::new(BUILDS_AT_ONCE),
            serve,
            connections: AtomicUsize::new(0),
            reread: tokio::sync::watch::Sender::new(0),
            reread_warned: AtomicU64::new(0),
            fd_limit,
            fd_base: open_descriptors(),
        });
        daemon.answers.sync(daemon.store.generation());
        (daemon, rx)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn euid(&self) -> u32 {
        self.euid
    }
    pub fn answers(&self) -> &AnswerCache {
        &self.answers
    }

    /// Records that a shared store was re-read during connection epoch `epoch`.
    pub fn reread_in(&self, epoch: u64) {
        self.reread.send_if_modified(|e| {
            let moved = epoch > *e;
            *e = (*e).max(epoch);
            moved
        });
    }

    /// Once a shared store's connection is (back) up, waits until the store was re-read since
    /// (at most [`REREAD_WAIT`]): what was committed while this broker was away (a secret
    /// deleted, an access removed) holds before any answer is served. Returns at once for a
    /// private store, while disconnected (the answers cached so far are served), or when re-read.
    pub async fn reread(&self) {
        let Some(link) = self.store.link() else {
            return;
        };
        let epoch = {
            let l = link.borrow();
            if !l.connected {
                return;
            }
            l.epoch
        };
        let mut done = self.reread.subscribe();
        if tokio::time::timeout(REREAD_WAIT, done.wait_for(|e| *e >= epoch))
            .await
            .is_err()
            && self.reread_warned.swap(epoch, Ordering::Relaxed) != epoch
        {
            tracing::warn!(
                "the store was not re-read within {REREAD_WAIT:?} of its connection coming back; serving the answer read before"
            );
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A guard for a serve loop or connection, unless the daemon is closing.
    pub fn drain_guard(&self) -> Option<DrainGuard> {
        self.live().drain.clone()
    }

    /// Takes one of the global connection places, if one is free.
    pub fn try_connection(&self) -> bool {
        let cap = self.config.global_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }
    pub fn end_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Live sandboxes.
    pub fn sandbox_count(&self) -> usize {
        self.live().slots.len()
    }

    /// Refuses a new sandbox when its socket would eat into [`DESCRIPTOR_RESERVE`].
    fn check_descriptors(&self, sandboxes: usize) -> Result<(), DaemonError> {
        let in_use = self.fd_base + sandboxes + self.connections.load(Ordering::Acquire);
        if (in_use + 1 + DESCRIPTOR_RESERVE) as u64 > self.fd_limit {
            return Err(DaemonError::DescriptorCeiling {
                limit: self.fd_limit,
                in_use,
                sandboxes,
            });
        }
        Ok(())
    }

    /// How many more sandboxes fit under the descriptor ceiling now.
    pub fn sandbox_room(&self) -> usize {
        let in_use = self.fd_base + self.sandbox_count() + self.connections.load(Ordering::Acquire);
        (self.fd_limit as usize).saturating_sub(in_use + DESCRIPTOR_RESERVE)
    }

    /// Binds a sandbox's socket and starts serving it. A bind that fails for want of
    /// descriptors is the descriptor ceiling, named as such.
    pub fn start_sandbox(self: &Arc<Self>, id: &str) -> Result<(), DaemonError> {
        self.start(id, false)
    }

    /// [`Daemon::start_sandbox`]; `new`: the sandbox is being created and its id was never
    /// answered ([`Layout::bind_new_sandbox`]).
    fn start(self: &Arc<Self>, id: &str, new: bool) -> Result<(), DaemonError> {
        let (sandboxes, open) = {
            let live = self.live();
            (live.slots.len(), live.open)
        };
        if !open {
            return Err(DaemonError::ShuttingDown);
        }
        self.check_descriptors(sandboxes)?;
        let std_listener = self.bind_with(id, new)?;
        self.start_bound(id, std_listener)
    }

    /// The filesystem half of a start: makes (or reuses) the sandbox's directory and binds its
    /// socket there, without serving it yet, so a restart can bind many at once on several
    /// threads. A bind that fails for want of descriptors is the descriptor ceiling.
    pub fn bind_sandbox(&self, id: &str) -> Result<std::os::unix::net::UnixListener, DaemonError> {
        self.bind_with(id, false)
    }

    fn bind_with(
        &self,
        id: &str,
        new: bool,
    ) -> Result<std::os::unix::net::UnixListener, DaemonError> {
        let bound = if new {
            self.layout.bind_new_sandbox(id)
        } else {
            self.layout.bind_sandbox(id)
        };
        bound.map_err(|e| match &e {
            SandboxError::Bind { source, .. } | SandboxError::OpenDir { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                let sandboxes = self.sandbox_count();
                DaemonError::DescriptorCeiling {
                    limit: self.fd_limit,
                    in_use: self.fd_base + sandboxes,
                    sandboxes,
                }
            }
            _ => DaemonError::Sandbox(e),
        })
    }

    /// Serves a listener bound by [`Daemon::bind_sandbox`] (refused, and the socket removed,
    /// once the daemon is closing).
    pub fn start_bound(
        self: &Arc<Self>,
        id: &str,
        std_listener: std::os::unix::net::UnixListener,
    ) -> Result<(), DaemonError> {
        let listener =
            UnixListener::from_std(std_listener).map_err(|source| DaemonError::Register {
                id: id.to_owned(),
                source,
            })?;
        let slot = Arc::new(Slot::new(id));
        let guard = {
            let mut live = self.live();
            match (&live.drain, live.open) {
                (Some(guard), true) => {
                    let guard = guard.clone();
                    live.slots.insert(id.into(), Arc::clone(&slot));
                    guard
                }
                _ => {
                    drop(live);
                    drop(listener);
                    let _ = self.layout.remove_sandbox(id);
                    return Err(DaemonError::ShuttingDown);
                }
            }
        };
        (self.serve)(Arc::clone(self), slot, listener, guard);
        Ok(())
    }

    /// Creates a sandbox for (user, repo): a random id, its row, its directory and socket. An
    /// OK means the socket is live; a create refused (shutting down, descriptor ceiling) leaves
    /// no row, directory or socket behind.
    pub fn create_sandbox(
        self: &Arc<Self>,
        user: &str,
        repo: &str,
    ) -> Result<SandboxRow, DaemonError> {
        {
            let live = self.live();
            if !live.open {
                return Err(DaemonError::ShuttingDown);
            }
            self.check_descriptors(live.slots.len())?;
        }
        let id = sandboxes::new_id()?;
        let row = SandboxRow {
            host: self.config.host_id.clone(),
            id: id.clone(),
            user: user.to_owned(),
            repo: repo.to_owned(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        self.store.add_sandbox(row.clone())?;
        if let Err(e) = self.start(&id, true) {
            self.stop_slot(&id);
            let _ = self.layout.remove_sandbox(&id);
            let _ = self.store.remove_sandbox(&id);
            self.answers.sync(self.store.generation());
            return Err(e);
        }
        Ok(row)
    }

    fn stop_slot(&self, id: &str) {
        if let Some(slot) = self.live().slots.remove(id) {
            slot.stop();
        }
    }

    /// Deletes a sandbox: its row, its listener, its socket and directory.
    pub fn delete_sandbox(&self, id: &str) -> Result<SandboxRow, DaemonError> {
        sandboxes::check_id(id)?;
        let row = self
            .store
            .remove_sandbox_on(id, Some(&self.config.host_id))?;
        self.stop_slot(id);
        self.answers.sync(self.store.generation());
        self.layout.remove_sandbox(id)?;
        Ok(row)
    }

    /// Shutdown: no sandbox is created or started from now on; every live sandbox is stopped.
    /// Returns the ids that were live (their sockets are the server's to remove).
    pub fn close(&self) -> Vec<Box<str>> {
        let mut live = self.live();
        live.open = false;
        live.drain = None;
        live.slots
            .drain()
            .map(|(id, slot)| {
                slot.stop();
                id
            })
            .collect()
    }

    /// Opens a watch on sandbox `id` (one more waiter; the entry goes with the last one);
    /// `restarts`: the watcher declared that it restarts its command on a change.
    pub fn watch(self: &Arc<Self>, id: &str, restarts: bool) -> WatchGuard {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let watch = Arc::clone(
            watches
                .entry(id.into())
                .or_insert_with(|| Arc::new(Watch::default())),
        );
        watch.waiters.fetch_add(1, Ordering::AcqRel);
        if restarts {
            watch.restarting.fetch_add(1, Ordering::AcqRel);
        }
        WatchGuard {
            daemon: Arc::clone(self),
            id: id.into(),
            watch,
            restarts,
        }
    }

    /// After a change to the store: every watched sandbox whose answer now differs from the one
    /// its watchers hold is woken. Returns the sandboxes woken (sorted by id), each with whether
    /// one of its watchers declared it restarts its command (read before waking, while they all
    /// still wait). No polling: this runs once per change, and only for sandboxes with a watch
    /// open.
    pub fn wake_watchers(&self) -> Vec<Woken> {
        let watched: Vec<(Box<str>, Arc<Watch>)> = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, w)| (id.clone(), Arc::clone(w)))
            .collect();
        let mut woken = Vec::new();
        for (id, watch) in watched {
            // Gone or unservable (0): the watchers learn it from their next answer.
            let now = self.answer_tag(&id).unwrap_or(0);
            if now != watch.etag.load(Ordering::Acquire) {
                watch.etag.store(now, Ordering::Release);
                let restarts = watch.restarting.load(Ordering::Acquire) > 0;
                watch.changed.notify_waiters();
                woken.push(Woken {
                    id: id.into(),
                    restarts,
                });
            }
        }
        woken.sort_by(|a, b| a.id.cmp(&b.id));
        woken
    }

    /// Where secret `name` comes from (user or repository level, or not served) for every live
    /// sandbox `pick` selects, by its row: compare before and after a change
    /// ([`changed_between`]). From the plans only: nothing is opened.
    pub fn live_sources(
        &self,
        pick: impl Fn(&SandboxRow) -> bool,
        name: &str,
    ) -> Vec<(String, Option<Level>)> {
        // A set, not a list: this runs for every change, over every sandbox of the host.
        let live: std::collections::HashSet<Box<str>> = self.live().slots.keys().cloned().collect();
        let mut out: Vec<(String, Option<Level>)> = self
            .store
            .sandboxes()
            .into_iter()
            .filter(|row| live.contains(row.id.as_str()) && pick(row))
            .map(|row| {
                let from = self
                    .store
                    .plan(&row.user, &row.repo)
                    .into_iter()
                    .find(|e| e.name == name)
                    .map(|e| e.from);
                (row.id, from)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Refuses setting secret `name` (of `kind` and `scope`, readable by `repos` when a user
    /// secret; `None` keeps its current list) to `value` when the answer of an existing sandbox
    /// it reaches would then be larger than the init accepts ([`protocol::MAX_RESPONSE_BYTES`]):
    /// the answer is encoded exactly as it would be served, so escaping is counted. Checked per
    /// (user, repository) with a sandbox; a sandbox created later, or a concurrent change, is
    /// caught when it is served ([`DaemonError::AnswerTooLarge`]).
    pub fn check_set_fits(
        &self,
        kind: ScopeKind,
        scope: &str,
        name: &str,
        value: &str,
        repos: Option<&[String]>,
    ) -> Result<(), DaemonError> {
        self.check_sets_fit(kind, scope, &[(name, value)], repos)
            .map_err(|(_, e)| e)
    }

    /// [`Daemon::check_set_fits`] for several secrets of one scope set together (an import):
    /// each reached sandbox's answer is encoded with all of them at once. A refusal comes with
    /// the index (0-based) of the last entry in that answer.
    pub fn check_sets_fit(
        &self,
        kind: ScopeKind,
        scope: &str,
        entries: &[(&str, &str)],
        repos: Option<&[String]>,
    ) -> Result<(), (usize, DaemonError)> {
        let listed = match (kind, repos) {
            (ScopeKind::User, None) => self.store.list(ScopeKind::User, scope),
            _ => Vec::new(),
        };
        // The repositories each entry reaches (`None`: every sandbox of the repository scope).
        let reach: Vec<Option<&[String]>> = entries
            .iter()
            .map(|(name, _)| match (kind, repos) {
                (ScopeKind::User, Some(r)) => Some(r),
                (ScopeKind::User, None) => Some(
                    listed
                        .iter()
                        .find(|s| s.name == *name)
                        .map_or(&[][..], |s| s.repos.as_slice()),
                ),
                (ScopeKind::Repo, _) => None,
            })
            .collect();
        let mut pairs: std::collections::BTreeMap<(String, String), String> = Default::default();
        for row in self.store.sandboxes() {
            let reached = reach.iter().any(|r| match r {
                Some(repos) => row.user == scope && repos.contains(&row.repo),
                None => row.repo == scope,
            });
            if reached {
                pairs.entry((row.user, row.repo)).or_insert(row.id);
            }
        }
        for ((user, repo), id) in pairs {
            let plan = self.store.plan(&user, &repo);
            // The entries this answer holds: those reaching (user, repo), less a repository
            // secret hidden by the user's secret of the same name (it changes nothing).
            let here: Vec<usize> = (0..entries.len())
                .filter(|&i| match reach[i] {
                    Some(repos) => user == scope && repos.contains(&repo),
                    None => {
                        repo == scope
                            && !plan
                                .iter()
                                .any(|e| e.name == entries[i].0 && e.from == Level::User)
                    }
                })
                .collect();
            let Some(&last) = here.last() else {
                continue;
            };
            let fetched = match self.store.fetch(&id) {
                Ok(f) => f,
                // Gone meanwhile, or unservable anyway: nothing this change makes worse.
                Err(_) => continue,
            };
            let mut secrets = Vec::with_capacity(fetched.secrets.len() + here.len());
            for (n, v) in &fetched.secrets {
                if !here.iter().any(|&i| entries[i].0 == n) {
                    let v = std::str::from_utf8(v)
                        .map_err(|_| (last, DaemonError::NotText(n.clone())))?;
                    secrets.push(WireSecretRef { name: n, value: v });
                }
            }
            for &i in &here {
                let (name, value) = entries[i];
                secrets.push(WireSecretRef { name, value });
            }
            let size = protocol::encoded_answer_len(&id, &repo, &secrets);
            if size > protocol::MAX_RESPONSE_BYTES {
                return Err((
                    last,
                    DaemonError::PlanTooLarge {
                        name: entries[last].0.to_owned(),
                        user,
                        repo,
                        size,
                        limit: protocol::MAX_RESPONSE_BYTES,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Taken while an answer is built ([`BUILDS_AT_ONCE`]).
    pub fn builds(&self) -> &tokio::sync::Semaphore {
        &self.builds
    }

    /// Refuses at once a request whose answer was refused by the budget at the current
    /// generation and still would be, so a hostile sandbox cannot make the daemon rebuild a
    /// large answer per request.
    pub fn still_over_budget(&self, id: &str) -> Result<(), DaemonError> {
        let Some(asked) = self.answers.refused_size(id, self.store.generation()) else {
            return Ok(());
        };
        let held = self.budget.held();
        if held + asked > self.budget.budget() {
            return Err(DaemonError::Busy(OverBudget {
                held,
                asked,
                budget: self.budget.budget(),
            }));
        }
        Ok(())
    }

    /// The answer of sandbox `id` when the cache holds it at the current generation (audited);
    /// cheap, so it runs on an async worker, while building one ([`Daemon::answer`]) opens and
    /// encodes up to megabytes and runs on a blocking thread.
    pub fn cached_answer(&self, id: &str) -> Option<Arc<Zeroizing<Vec<u8>>>> {
        let c = self.answers.get(id, self.store.generation())?;
        audit::secrets_read(id, &c.repository, c.count, &c.names);
        Some(Arc::clone(&c.body))
    }

    /// The `GET /v1/secrets` answer of sandbox `id`: from the cache when built at the current
    /// generation, else opened, encoded by [`protocol::encode_answer`] and cached. Audited.
    pub fn answer(&self, id: &str) -> Result<Arc<Zeroizing<Vec<u8>>>, DaemonError> {
        self.build(id, true)
    }

    /// The [`etag`] of sandbox `id`'s answer now, not audited (nothing is sent).
    pub fn answer_tag(&self, id: &str) -> Result<u64, DaemonError> {
        self.build(id, false).map(|body| etag(&body))
    }

    /// [`Daemon::answer`], audited as a read or not (the daemon's own check for a change).
    fn build(&self, id: &str, audited: bool) -> Result<Arc<Zeroizing<Vec<u8>>>, DaemonError> {
        if let Some(c) = self.answers.get(id, self.store.generation()) {
            if audited {
                audit::secrets_read(id, &c.repository, c.count, &c.names);
            }
            return Ok(Arc::clone(&c.body));
        }
        let fetched = self.store.fetch(id).map_err(|e| match e {
            StoreError::SandboxNotFound(id) => DaemonError::SandboxGone(id),
            other => DaemonError::Unservable(other),
        })?;
        let mut secrets = Vec::with_capacity(fetched.secrets.len());
        for (name, value) in &fetched.secrets {
            let value =
                std::str::from_utf8(value).map_err(|_| DaemonError::NotText(name.to_owned()))?;
            secrets.push(WireSecretRef { name, value });
        }
        let body = Arc::new(protocol::encode_answer(
            &fetched.sandbox.id,
            &fetched.sandbox.repo,
            &secrets,
        ));
        let names: Vec<&str> = fetched.secrets.iter().map(|(n, _)| n.as_str()).collect();
        let names = names.join(",");
        let count = fetched.secrets.len();
        drop(secrets);
        drop(fetched.secrets);
        self.answers.built(id, body.len());
        if body.len() > protocol::MAX_RESPONSE_BYTES {
            return Err(DaemonError::AnswerTooLarge {
                size: body.len(),
                limit: protocol::MAX_RESPONSE_BYTES,
            });
        }
        // One copy per sandbox, shared by every response writing it; when the answers alive
        // would pass the budget, the cache gives its copies up first.
        if let Err(e) = self.budget.admit(&body, || {
            self.answers.drop_larger_than(limits::ALWAYS_ADMITTED)
        }) {
            // Later requests at this generation are refused without building it again.
            self.answers.refused(id, fetched.generation, body.len());
            return Err(e.into());
        }
        if audited {
            audit::secrets_read(&fetched.sandbox.id, &fetched.sandbox.repo, count, &names);
        }
        self.answers.put(
            id,
            CachedAnswer {
                generation: fetched.generation,
                body: Arc::clone(&body),
                repository: fetched.sandbox.repo.clone(),
                count,
                names,
            },
        );
        Ok(body)
    }
}

/// The sandboxes a change of secret (`level`) sees, from two [`Daemon::live_sources`] readings:
/// those where the name's source moved (created, deleted, granted, revoked, shadowed), and, when
/// the value itself changed (`value_changed`: set), those served it from `level` now. Pure.
pub fn changed_between(
    before: &[(String, Option<Level>)],
    after: &[(String, Option<Level>)],
    level: Level,
    value_changed: bool,
) -> Vec<String> {
    after
        .iter()
        .filter(|(id, now)| {
            let was = before.iter().find(|(b, _)| b == id).and_then(|(_, w)| *w);
            was != *now || (value_changed && *now == Some(level))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// A sandbox [`Daemon::wake_watchers`] woke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Woken {
    pub id: String,
    /// At least one of its watchers restarts its command on a change (`on-change=restart`).
    pub restarts: bool,
}

/// One watched sandbox: the digest of the answer its watchers hold, their wake-up, how many
/// wait and how many of those restart their command on a change.
#[derive(Default)]
pub struct Watch {
    etag: std::sync::atomic::AtomicU64,
    changed: Notify,
    waiters: AtomicUsize,
    restarting: AtomicUsize,
}

/// A watcher's hold on its sandbox's [`Watch`]; the entry is removed with the last holder.
pub struct WatchGuard {
    daemon: Arc<Daemon>,
    id: Box<str>,
    watch: Arc<Watch>,
    restarts: bool,
}

impl WatchGuard {
    /// Records the answer this watcher holds (its digest), so a change is measured against it.
    pub fn holds(&self, etag: u64) {
        self.watch.etag.store(etag, Ordering::Release);
    }
    /// Resolves when [`Daemon::wake_watchers`] found the sandbox's answer changed. Create it
    /// (and `enable` it) before reading the answer, so no change falls in between.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.watch.changed.notified()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut watches = self
            .daemon
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.restarts {
            self.watch.restarting.fetch_sub(1, Ordering::AcqRel);
        }
        if self.watch.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            watches.remove(&self.id);
        }
    }
}

/// The entity tag of an answer: a 64-bit SipHash of its bytes (stable across daemon restarts,
/// so a watcher that reconnects after one is not woken for nothing). Only the sandbox that holds
/// the answer ever sees it.
pub fn etag(body: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(body);
    h.finish().max(1)
}

/// Descriptors this process holds now (0 when /proc cannot say).
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// Most answers kept; the cache is emptied when it would grow past this.
pub const MAX_CACHED_ANSWERS: usize = 4096;

/// Lets go of answers taken out of the cache, outside its lock, the large ones zeroized off the
/// async workers ([`limits::release`]).
fn release_all(gone: impl IntoIterator<Item = Arc<CachedAnswer>>) {
    for entry in gone {
        if let Ok(entry) = Arc::try_unwrap(entry) {
            limits::release(entry.body);
        }
    }
}

/// Built `GET /v1/secrets` answers per sandbox, all of one store generation, so a sandbox's
/// answer is opened and encoded once per change rather than once per request, and a large
/// answer exists once however many connections write it (their bytes are bounded by the
/// daemon's [`AnswerBudget`]). Every change to
/// the store empties the whole cache ([`AnswerCache::sync`]); an entry built at any other
/// generation is refused. Entries are zeroized when dropped (a response still being written
/// keeps its own reference until it is done).
#[derive(Default)]
pub struct AnswerCache {
    inner: std::sync::RwLock<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// The store generation every entry was built at; 0 until the first [`AnswerCache::sync`].
    generation: u64,
    map: HashMap<String, Arc<CachedAnswer>>,
    /// Sizes of answers the budget refused at this generation, per sandbox.
    refused: HashMap<String, usize>,
    /// The size of each sandbox's last built answer, kept across generations: a sandbox whose
    /// answer was small is rebuilt at once, without queueing behind large builds.
    sizes: HashMap<String, usize>,
}

struct CachedAnswer {
    generation: u64,
    body: Arc<Zeroizing<Vec<u8>>>,
    repository: String,
    count: usize,
    names: String,
}

impl AnswerCache {
    fn get(&self, id: &str, generation: u64) -> Option<Arc<CachedAnswer>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .map
            .get(id)
            .filter(|c| c.generation == generation)
            .map(Arc::clone)
    }

    /// Keeps an answer, unless it was built at a generation other than the one last synced (the
    /// store changed since: a secret, an access list or the sandbox itself may be gone).
    fn put(&self, id: &str, entry: CachedAnswer) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if entry.generation != inner.generation {
            return false;
        }
        if inner.map.len() >= MAX_CACHED_ANSWERS && !inner.map.contains_key(id) {
            inner.map.clear();
        }
        inner.map.insert(id.to_owned(), Arc::new(entry));
        true
    }

    /// Called after every (attempted) change to the store with its generation: if it moved, every
    /// entry is dropped (and so zeroized) and only answers of the new generation are kept from
    /// now on. A change bumps the generation before it starts, so an answer built before it is
    /// either refused here or removed by this call.
    pub fn sync(&self, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation {
            let gone = std::mem::take(&mut inner.map);
            inner.refused.clear();
            inner.generation = generation;
            drop(inner);
            release_all(gone.into_values());
        }
    }

    /// Drops every answer kept (each is zeroized once no response holds it any more).
    pub fn clear(&self) {
        let gone = std::mem::take(&mut self.inner.write().unwrap_or_else(|e| e.into_inner()).map);
        release_all(gone.into_values());
    }

    /// Drops the answers kept that are larger than `size`: room for the budget, while small
    /// answers stay served from the cache.
    pub fn drop_larger_than(&self, size: usize) {
        let mut gone = Vec::new();
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .retain(|_, c| {
                let keep = c.body.len() <= size;
                if !keep {
                    gone.push(Arc::clone(c));
                }
                keep
            });
        release_all(gone);
    }

    /// Remembers the size of sandbox `id`'s last built answer.
    fn built(&self, id: &str, size: usize) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.sizes.len() >= 4 * MAX_CACHED_ANSWERS && !inner.sizes.contains_key(id) {
            inner.sizes.clear();
        }
        inner.sizes.insert(id.to_owned(), size);
    }

    /// True when sandbox `id`'s last built answer was small ([`limits::ALWAYS_ADMITTED`]).
    pub fn small(&self, id: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .sizes
            .get(id)
            .is_some_and(|&n| n <= limits::ALWAYS_ADMITTED)
    }

    /// Remembers that sandbox `id`'s answer of `size` bytes, built at `generation`, was refused.
    fn refused(&self, id: &str, generation: u64, size: usize) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation == generation {
            if inner.refused.len() >= MAX_CACHED_ANSWERS {
                inner.refused.clear();
            }
            inner.refused.insert(id.to_owned(), size);
        }
    }

    /// The size of sandbox `id`'s answer the budget refused at `generation`, if it did.
    fn refused_size(&self, id: &str, generation: u64) -> Option<usize> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.generation == generation)
            .then(|| inner.refused.get(id).copied())
            .flatten()
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// True when no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::store::ScopeKind;

    fn answer(generation: u64, text: &str) -> CachedAnswer {
        CachedAnswer {
            generation,
            body: Arc::new(Zeroizing::new(text.as_bytes().to_vec())),
            repository: "o/r".into(),
            count: 1,
            names: "N".into(),
        }
    }

    #[test]
    fn a_change_empties_the_answer_cache_and_old_answers_are_refused() {
        let cache = AnswerCache::default();
        cache.sync(5);
        assert!(cache.put("a", answer(5, "A")));
        assert!(cache.put("b", answer(5, "B")));
        assert!(!cache.put("c", answer(4, "C")), "an older generation");
        assert!(
            !cache.put("c", answer(6, "C")),
            "a generation not synced yet"
        );
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a", 5).is_some());
        // A change to anything (here: any generation move) drops every sandbox's answer.
        cache.sync(6);
        assert!(cache.is_empty());
        assert!(cache.get("b", 5).is_none());
        assert!(!cache.put("a", answer(5, "A")));
        assert!(cache.is_empty());
        assert!(cache.put("a", answer(6, "A")));
        // A sync at the same generation (a read-only admin command) keeps what is there.
        cache.sync(6);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_answer_built_before_its_sandbox_was_deleted_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = sandboxes::new_id().unwrap();
        store
            .add_sandbox(SandboxRow {
                host: String::new(),
                id: id.clone(),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 0,
            })
            .unwrap();
        store
            .set_secret(ScopeKind::Repo, "o/r", "N", "cache-VALUE-1", None)
            .unwrap();
        let cache = AnswerCache::default();
        cache.sync(store.generation());
        // Two readers fetch; then the sandbox is deleted, and one put lands before the
        // daemon syncs the cache and one after.
        let early = store.fetch(&id).unwrap().generation;
        let late = store.fetch(&id).unwrap().generation;
        store.remove_sandbox(&id).unwrap();
        assert!(cache.put(&id, answer(early, "cache-VALUE-1")));
        cache.sync(store.generation());
        assert!(
            cache.is_empty(),
            "the delete dropped the answer put before it was synced"
        );
        assert!(!cache.put(&id, answer(late, "cache-VALUE-1")));
        assert!(cache.is_empty());
        assert!(cache.get(&id, store.generation()).is_none());
        // Deleting a secret, likewise, drops every other sandbox's answer.
        let other = sandboxes::new_id().unwrap();
        store
            .add_sandbox(SandboxRow {
                host: String::new(),
                id: other.clone(),
                user: "mona".into(),
                repo: "o/r".into(),
                created: 0,
            })
            .unwrap();
        cache.sync(store.generation());
        assert!(cache.put(&other, answer(store.fetch(&other).unwrap().generation, "v")));
        store.delete_secret(ScopeKind::Repo, "o/r", "N").unwrap();
        cache.sync(store.generation());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_change_is_seen_where_the_source_moved_or_the_served_value_changed() {
        use Level::{Repository as R, User as U};
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let at = |v: &[(&str, Option<Level>)]| {
            v.iter()
                .map(|(id, l)| (id.to_string(), *l))
                .collect::<Vec<_>>()
        };
        let before = at(&[("a", None), ("b", Some(U)), ("c", Some(R)), ("d", Some(U))]);
        // A user secret set: a new grant (a), a new value (b, d), shadowing the repository's (c).
        let after = at(&[
            ("a", Some(U)),
            ("b", Some(U)),
            ("c", Some(U)),
            ("d", Some(U)),
        ]);
        assert_eq!(
            changed_between(&before, &after, U, true),
            ids(&["a", "b", "c", "d"])
        );
        // The same sources after an access change that kept them: nobody sees it.
        assert!(changed_between(&before, &before, U, false).is_empty());
        // A repository secret set where a user secret shadows it: only c (served from it).
        assert_eq!(changed_between(&before, &before, R, true), ids(&["c"]));
        // A user secret deleted: b and d lose it, the rest keep what they had.
        let after = at(&[("a", None), ("b", None), ("c", Some(R)), ("d", Some(R))]);
        assert_eq!(changed_between(&before, &after, U, false), ids(&["b", "d"]));
    }

    #[test]
    fn connection_places_are_capped_and_given_back() {
        let slot = Slot::new("x");
        assert!(slot.try_enter(2) && slot.try_enter(2));
        assert!(!slot.try_enter(2));
        slot.leave();
        assert!(slot.try_enter(2));
        assert!(!slot.is_stopped());
        slot.stop();
        assert!(slot.is_stopped());
    }
}
