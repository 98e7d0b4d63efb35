//! The daemon's outer floor: opens the store, binds the admin socket and one socket per sandbox,
//! runs the accept loops (a task per connection; a cap per socket and one over all sockets),
//! checks admin peers by SO_PEERCRED, and at shutdown closes the daemon, drains connections and
//! removes its sockets. Routing is `http`'s, state is `daemon`'s; this module never sees a value.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;

pub use super::daemon::Config;
use super::daemon::{self, Daemon, DrainGuard, Slot, DESCRIPTOR_RESERVE};
use super::http::{self, ApiError};
use super::limits::WriteDeadline;
use super::sandboxes::{self, Layout, SandboxError};
use super::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Tls(#[from] http::platform_tls::TlsError),
    #[error("cannot listen for the platform API on {addr}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register listener {path} with the runtime")]
    Listener {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which socket a connection arrived on: that is how the daemon knows the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Admin,
    Sandbox,
}

/// Runs the daemon until `shutdown` completes, then drains connections and removes its sockets.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let fd_limit = harden();
    let store = Store::open_at(
        &config.state_dir,
        config.store.as_deref(),
        super::store::OpenOptions {
            accept_rollback: config.accept_rollback,
        },
    )?;
    // The platform API's listener and TLS configuration, before any socket: a busy port or a bad
    // key stops the start with nothing left behind.
    let http_listener = match config.http {
        None => None,
        Some(addr) => {
            let tls = match &config.tls {
                Some((cert, key)) => Some(http::platform_tls::config(cert, key)?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Http { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Http { addr, source })?;
            Some((listener, tls, bound))
        }
    };
    let layout = Layout::new(&config.run_dir);
    layout.prepare()?;
    let admin_std = layout.bind_admin()?;
    let admin_path = layout.admin_socket();
    let admin = UnixListener::from_std(admin_std).map_err(|source| ServerError::Listener {
        path: admin_path.clone(),
        source,
    })?;
    let (daemon, mut drain_rx) = Daemon::new(
        store,
        layout.clone(),
        config.clone(),
        Box::new(|daemon, slot, listener, guard| {
            tokio::spawn(serve(listener, Kind::Sandbox, slot, daemon, guard));
        }),
        fd_limit,
    );

    let host = config.host_id.clone();
    let ids: Vec<String> = daemon
        .store()
        .sandboxes()
        .into_iter()
        .filter(|s| s.served_by(&host))
        .map(|s| s.id)
        .collect();
    let started = restart_sandboxes(&daemon, &ids);
    if let Some(link) = daemon.store().link() {
        tokio::spawn(follow_store(Arc::clone(&daemon), link));
    }
    let admin_slot = Arc::new(Slot::new(""));
    if let Some(guard) = daemon.drain_guard() {
        tokio::spawn(serve(
            admin,
            Kind::Admin,
            Arc::clone(&admin_slot),
            Arc::clone(&daemon),
            guard,
        ));
    }
    // The platform API and settings page (`--http`): off unless asked for.
    let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
    let mut http_task = None;
    if let Some((listener, tls, bound)) = http_listener {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %bound, "platform API listening on {scheme}://{bound}");
        let mut stopped = http_stopped;
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        http_task = Some(tokio::spawn(http::platform::serve(
            listener,
            Arc::clone(&daemon),
            tls,
            stop,
        )));
    }

    tracing::info!(
        admin = %admin_path.display(),
        state = %config.state_dir.display(),
        store = %daemon.store().describe(),
        host = %host,
        sandboxes = started,
        descriptor_limit = fd_limit,
        sandbox_ceiling = (fd_limit as usize).saturating_sub(daemon::open_descriptors() + DESCRIPTOR_RESERVE),
        "sandbox-secrets listening (descriptor limit {fd_limit}: raise LimitNOFILE for more sandboxes)"
    );

    shutdown.await;
    tracing::info!("shutting down: no new connections or sandboxes, draining open ones");
    let _ = http_stop.send(true);
    if let Some(task) = http_task {
        if tokio::time::timeout(config.drain_timeout, task)
            .await
            .is_err()
        {
            tracing::warn!("platform API connections still open after the drain timeout");
        }
    }
    admin_slot.stop();
    let ids = daemon.close();
    // Sockets go first so no client connects to a daemon that will not answer.
    let _ = sandboxes::remove_file_quietly(&admin_path);
    for id in &ids {
        if let Ok(path) = layout.sandbox_socket(id) {
            let _ = sandboxes::remove_file_quietly(&path);
        }
    }
    drop(daemon);
    if tokio::time::timeout(config.drain_timeout, drain_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    tracing::info!("stopped");
    Ok(())
}

/// For a store several brokers share: whenever another broker commits (or the connection comes
/// back), re-reads the store, drops the cached answers of older generations and wakes the
/// watchers whose answer changed. While the connection is down, the answers cached so far keep
/// being served (they were valid when cached); the listener logs the loss and the return. Once
/// it is back, answers wait for the re-read ([`Daemon::reread`]).
async fn follow_store(
    daemon: Arc<Daemon>,
    mut link: tokio::sync::watch::Receiver<super::store::backend::Link>,
) {
    let mut epoch = 0;
    let mut tokens_seen = 0;
    loop {
        let (connected, head, now, tokens) = {
            let l = link.borrow_and_update();
            (l.connected, l.head, l.epoch, l.tokens)
        };
        // Tokens first: a revocation announced by another broker holds here before anything
        // else is read (and again after a reconnect, when an announcement may have been missed).
        if connected && (tokens != tokens_seen || now != epoch) {
            tokens_seen = tokens;
            let d = Arc::clone(&daemon);
            match tokio::task::spawn_blocking(move || d.store().reload_tokens()).await {
                Ok(Ok(n)) => tracing::debug!(tokens = n, "tokens read again"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot read the tokens again"),
                Err(_) => return,
            }
        }
        let behind = head > daemon.store().stored_generation() || now != epoch;
        if connected && behind {
            epoch = now;
            let d = Arc::clone(&daemon);
            let read = tokio::task::spawn_blocking(move || d.store().refresh()).await;
            match read {
                Ok(Ok(true)) => {
                    daemon.answers().sync(daemon.store().generation());
                    daemon.reread_in(now);
                    let woken = daemon.wake_watchers();
                    tracing::debug!(
                        generation = daemon.store().stored_generation(),
                        woken = woken.len(),
                        "store changed by another broker"
                    );
                }
                Ok(Ok(false)) => daemon.reread_in(now),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot re-read the store; serving what was read before");
                    // Try again at the next announcement, or after a pause.
                    epoch = 0;
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
                Err(_) => return,
            }
        }
        if link.changed().await.is_err() {
            return;
        }
    }
}

/// Re-creates the sockets of the stored sandboxes at start and serves them; returns how many
/// run. The filesystem half (directory, bind, rename: most of a restart's time) runs on a few
/// threads at once for as many sandboxes as fit under the descriptor ceiling; the rest meet the
/// ceiling one by one. One sandbox that fails is logged by id and skipped; the others run.
fn restart_sandboxes(daemon: &Arc<Daemon>, ids: &[String]) -> usize {
    let room = daemon.sandbox_room().min(ids.len());
    let (now, over) = ids.split_at(room);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = now.len().div_ceil(threads).max(1);
    let bound: Vec<_> = std::thread::scope(|scope| {
        let parts: Vec<_> = now
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|id| daemon.bind_sandbox(id))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut started = 0usize;
    let results = now
        .iter()
        .zip(bound)
        .map(|(id, bound)| (id, bound.and_then(|l| daemon.start_bound(id, l))))
        .chain(over.iter().map(|id| (id, daemon.start_sandbox(id))));
    for (id, result) in results {
        match result {
            Ok(()) => started += 1,
            // One broken sandbox must not keep the others down; say which.
            Err(e) => {
                tracing::error!(sandbox = %id, error = %http::chain(&e), "cannot re-create sandbox socket")
            }
        }
    }
    started
}

/// Keeps plaintext that passes through this process out of core dumps and away from same-uid
/// debuggers: no core file, not dumpable (also closes /proc/<pid>/mem to non-root peers). Raises
/// the soft descriptor limit to the hard one (a systemd service starts with a soft limit of
/// 1024) and returns the limit it runs with: each sandbox holds one descriptor.
fn harden() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit");
            1024
        }
    };
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the daemon not dumpable");
    }
    limit
}

/// The answer given to a connection past the global cap, written best-effort before closing.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 58\r\nconnection: close\r\n\r\n{\"error\":\"too many connections to the daemon; try again\"}\n";

/// Accepts connections on `listener` until `slot` is stopped, a task per connection, at most
/// the socket's cap at once (more wait in the backlog) and at most the daemon's global cap over
/// all sockets (one more gets a 503 and is closed). Each connection is told to finish its
/// current request when the slot stops.
async fn serve(
    listener: UnixListener,
    kind: Kind,
    slot: Arc<Slot>,
    daemon: Arc<Daemon>,
    drain: DrainGuard,
) {
    let cap = match kind {
        Kind::Admin => daemon.config().admin_connections,
        Kind::Sandbox => daemon.config().sandbox_connections,
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        // The rare waits are boxed, so the future that every live sandbox keeps while it waits
        // in accept stays small (it is most of a sandbox's memory).
        while !slot.try_enter(cap) {
            if Box::pin(wait_for_place(&slot)).await {
                return;
            }
        }
        let stream = match next_connection(&listener, &slot).await {
            Some(Ok(stream)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Some(Err(e)) => {
                slot.leave();
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                Box::pin(tokio::time::sleep(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            None => {
                slot.leave();
                return;
            }
        };
        if !daemon.try_connection() {
            slot.leave();
            let _ = stream.try_write(BUSY);
            continue;
        }
        let daemon = Arc::clone(&daemon);
        let slot = Arc::clone(&slot);
        let drain = drain.clone();
        tokio::spawn(async move {
            connection(stream, kind, &slot, &daemon).await;
            daemon.end_connection();
            slot.leave();
            drop(drain);
        });
    }
}

/// The next connection on `listener`, or `None` once `slot` is stopped. Polls the listener
/// directly rather than through `accept()`, whose future would double the size of the state
/// every idle sandbox keeps.
async fn next_connection(
    listener: &UnixListener,
    slot: &Slot,
) -> Option<std::io::Result<tokio::net::UnixStream>> {
    let stopped = slot.stopped();
    tokio::pin!(stopped);
    std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        listener
            .poll_accept(cx)
            .map(|r| Some(r.map(|(stream, _)| stream)))
    })
    .await
}

/// Waits until a connection place of `slot` may be free (false) or the slot is stopped (true).
async fn wait_for_place(slot: &Slot) -> bool {
    tokio::select! {
        _ = slot.freed() => false,
        _ = slot.stopped() => true,
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    kind: Kind,
    slot: &Arc<Slot>,
    daemon: &Arc<Daemon>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(daemon.config().header_timeout)
        // A sandbox request is a bare GET: a small buffer keeps a flood of connections each
        // sending huge headers from costing the daemon its buffer size per connection.
        .max_buf_size(match kind {
            Kind::Admin => http::MAX_ADMIN_BODY + 64 * 1024,
            Kind::Sandbox => http::MAX_SANDBOX_REQUEST,
        });
    let admin_uid = match kind {
        Kind::Admin => {
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
                    return;
                }
            };
            let euid = daemon.euid();
            if uid != 0 && uid != euid {
                super::audit::admin_refused(uid);
                // Answer every request with a clear 403 rather than a silent close.
                let svc = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(ApiError::Forbidden { uid, daemon: euid }.response())
                });
                let _ = builder
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                return;
            }
            uid
        }
        Kind::Sandbox => 0,
    };
    let svc_daemon = Arc::clone(daemon);
    let svc_slot = Arc::clone(slot);
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let daemon = Arc::clone(&svc_daemon);
        let slot = Arc::clone(&svc_slot);
        async move {
            let response = match kind {
                Kind::Sandbox => {
                    let has_body = !hyper::body::Body::is_end_stream(req.body());
                    let watching = http::sandbox::Watching::from_headers(req.headers());
                    http::sandbox::answer(
                        &daemon,
                        &slot,
                        req.method(),
                        req.uri().path(),
                        has_body,
                        watching,
                    )
                    .await
                }
                Kind::Admin => http::admin::answer(&daemon, admin_uid, req).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    // A client that stops reading its answer is cut off, and the answer it held released.
    let stream = WriteDeadline::new(stream, daemon.config().write_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = slot.stopped() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every live sandbox keeps one accept loop waiting: its future is most of what a sandbox
    /// costs the daemon (the task holding it is rounded up to 128 bytes), so it must stay small.
    #[test]
    fn the_state_an_idle_sandbox_keeps_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("state")).unwrap();
            let layout = Layout::new(dir.path().join("run"));
            layout.prepare().unwrap();
            let (daemon, _drained) = Daemon::new(
                store,
                layout.clone(),
                Config::new(dir.path().join("state"), dir.path().join("run")),
                Box::new(|_, _, _, _| {}),
                1024,
            );
            let listener = UnixListener::bind(dir.path().join("s.sock")).unwrap();
            let serving = serve(
                listener,
                Kind::Sandbox,
                Arc::new(Slot::new("x")),
                Arc::clone(&daemon),
                daemon.drain_guard().unwrap(),
            );
            let size = std::mem::size_of_val(&serving);
            assert!(size <= 384, "the accept loop's future is {size} bytes");
        });
    }
}
