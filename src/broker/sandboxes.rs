//! The run directory: admin socket path, each sandbox's directory and socket, their modes, and
//! sandbox ids (random lower-case hex, checked before any path use). Knows nothing of secrets.

use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Hex digits in a sandbox id (128 random bits).
pub const ID_LEN: usize = 32;
/// Mode of the run directory.
pub const RUN_DIR_MODE: u32 = 0o755;
/// Mode of `sandboxes/`: host users cannot reach any sandbox socket.
pub const SANDBOXES_DIR_MODE: u32 = 0o700;
/// Mode of one sandbox's directory (bind-mounted into the container).
pub const SANDBOX_DIR_MODE: u32 = 0o755;
/// Mode of a sandbox socket: any user inside the container may connect.
pub const SANDBOX_SOCKET_MODE: u32 = 0o666;
/// Mode of the admin socket.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;
/// File name of a sandbox's socket inside its directory.
pub const SOCKET_NAME: &str = "secrets.sock";
/// File name of the marker beside it: "a broker serves this directory".
pub const MARKER_NAME: &str = crate::protocol::MARKER_NAME;
/// Mode of the marker: read-only for everyone.
pub const MARKER_MODE: u32 = 0o444;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox id {0:?} is not {ID_LEN} lower-case hex digits")]
    BadId(String),
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set mode {mode:04o} on {path}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("cannot remove stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move the socket {from} to {to}")]
    Place {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run directory {path} has mode {mode:04o}: group or others may write it (use a directory of its own, mode 0755)")]
    RunDirWritable { path: PathBuf, mode: u32 },
    #[error("run directory {path} is owned by uid {owner}: it must belong to this daemon's uid ({euid}) or root, or that user could replace the admin socket")]
    RunDirOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("refusing to use {path}: it is {what}, not a directory of this daemon's uid")]
    NotOwnDirectory { path: PathBuf, what: String },
    #[error("cannot open directory {path}")]
    OpenDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot get random bytes for a sandbox id: {0}")]
    Random(getrandom::Error),
}

/// Whether a directory owned by `owner` may hold this daemon's sockets or state, for a daemon
/// running as `euid`: only its own or root's.
pub fn owner_trusted(owner: u32, euid: u32) -> bool {
    owner == 0 || owner == euid
}

/// A fresh random sandbox id.
pub fn new_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; ID_LEN / 2];
    getrandom::getrandom(&mut bytes).map_err(SandboxError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks an id is exactly [`ID_LEN`] lower-case hex digits (so it is safe as a path component).
pub fn check_id(id: &str) -> Result<&str, SandboxError> {
    if id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id)
    } else {
        Err(SandboxError::BadId(id.to_owned()))
    }
}

fn chmod(path: &Path, mode: u32) -> Result<(), SandboxError> {
    std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
        SandboxError::Chmod {
            path: path.to_owned(),
            mode,
            source,
        }
    })
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SandboxError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| SandboxError::CreateDir {
            path: path.to_owned(),
            source,
        })?;
    chmod(path, mode)
}

/// Creates the directory `path` (its parent must exist) with `mode`, never through a symlink:
/// mkdir(2) does not follow a final symlink, the result is opened with `O_NOFOLLOW |
/// O_DIRECTORY`, checked to be a directory owned by this process's uid, and its mode is set
/// through that descriptor, so an entry swapped in between cannot redirect the chmod. An existing
/// directory of ours is reused (restart); anything else at `path` is refused and left alone.
///
/// Returns true when the directory was made by this call (false: an existing one reused).
pub fn mkdir_nofollow(path: &Path, mode: u32) -> Result<bool, SandboxError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Every sandbox at a restart: a directory of ours with its mode already, seen without
    // following a symlink, is reused as it is (one lstat(2) instead of open, fstat, close).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.is_dir() && meta.uid() == euid() && meta.mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    // An existing directory is opened at once; only a missing one is made first.
    let mut made = false;
    let opened = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(mode).create(path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(SandboxError::CreateDir {
                        path: path.to_owned(),
                        source: e,
                    })
                }
                Err(_) => open(),
                Ok(()) => {
                    made = true;
                    open()
                }
            }
        }
        other => other,
    };
    let refuse = |what: String| SandboxError::NotOwnDirectory {
        path: path.to_owned(),
        what,
    };
    let dir = opened.map_err(|source| match source.raw_os_error() {
        // Linux answers ENOTDIR rather than ELOOP for a symlink under O_DIRECTORY.
        Some(libc::ELOOP | libc::ENOTDIR) => {
            let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
            refuse(
                if symlink {
                    "a symlink"
                } else {
                    "another kind of file"
                }
                .into(),
            )
        }
        _ => SandboxError::OpenDir {
            path: path.to_owned(),
            source,
        },
    })?;
    let meta = dir.metadata().map_err(|source| SandboxError::OpenDir {
        path: path.to_owned(),
        source,
    })?;
    if meta.uid() != euid() {
        return Err(refuse(format!("a directory of uid {}", meta.uid())));
    }
    if meta.mode() & 0o7777 != mode {
        dir.set_permissions(Permissions::from_mode(mode))
            .map_err(|source| SandboxError::Chmod {
                path: path.to_owned(),
                mode,
                source,
            })?;
    }
    Ok(made)
}

/// This process's effective uid, asked of the kernel once (it never changes in the daemon).
fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| nix::unistd::geteuid().as_raw())
}

/// Binds a unix socket at `path` with `mode`. An existing socket that answers a connect is a
/// running daemon (error); one that does not is stale and removed; anything else is refused.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, SandboxError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SandboxError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| SandboxError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => return Err(SandboxError::NotSocket(path.to_owned())),
        Err(_) => {}
    }
    bind_in_own_dir(path, mode)
}

/// Binds a unix socket at `path` and sets its mode by path: only for a path whose directory no
/// one but this daemon can write, or the chmod could be redirected through a swapped-in symlink.
fn bind_in_own_dir(path: &Path, mode: u32) -> Result<UnixListener, SandboxError> {
    let listener = listen_nonblocking(path).map_err(|source| SandboxError::Bind {
        path: path.to_owned(),
        source,
    })?;
    chmod(path, mode)?;
    Ok(listener)
}

/// A listening unix socket at `path`, made non-blocking and close-on-exec by socket(2) itself
/// (no fcntl or ioctl after it: a restart makes tens of thousands).
fn listen_nonblocking(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    socket::listen(&fd, Backlog::MAXCONN)?;
    Ok(UnixListener::from(fd))
}

/// Writes a new marker file at `path` (never through an existing name), mode [`MARKER_MODE`].
fn write_marker(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MARKER_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(MARKER_MODE))?;
    f.write_all(b"served by sandbox-secrets\n")
}

/// True when the sandbox directory `dir` already holds a marker the daemon wrote (every sandbox
/// at a restart): a regular file of this uid, mode [`MARKER_MODE`], one link, seen without
/// following a symlink. It is kept as it is; anything else is replaced.
fn marker_in_place(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir.join(MARKER_NAME)).is_ok_and(|m| {
        m.is_file() && m.uid() == euid() && m.mode() & 0o7777 == MARKER_MODE && m.nlink() == 1
    })
}

/// Paths under the run directory.
#[derive(Clone, Debug)]
pub struct Layout {
    run_dir: PathBuf,
}

impl Layout {
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
        }
    }
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.run_dir.join("admin.sock")
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.run_dir.join("sandboxes")
    }
    /// The directory the platform bind-mounts at `/run/sandbox`. `id` must be checked.
    pub fn sandbox_dir(&self, id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.sandboxes_dir().join(check_id(id)?))
    }
    pub fn sandbox_socket(&self, id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.sandbox_dir(id)?.join(SOCKET_NAME))
    }

    /// Creates the run directory (0755) if missing, and `sandboxes/` (0700, mode enforced). An
    /// existing run directory keeps its mode, but one that others may write, or that is owned by
    /// a uid other than this daemon's or root, is refused: they could replace the admin socket.
    pub fn prepare(&self) -> Result<(), SandboxError> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.run_dir) {
            Ok(meta) if meta.is_dir() => {
                let euid = nix::unistd::geteuid().as_raw();
                if !owner_trusted(meta.uid(), euid) {
                    return Err(SandboxError::RunDirOwner {
                        path: self.run_dir.clone(),
                        owner: meta.uid(),
                        euid,
                    });
                }
                let mode = meta.mode() & 0o7777;
                if mode & 0o022 != 0 {
                    return Err(SandboxError::RunDirWritable {
                        path: self.run_dir.clone(),
                        mode,
                    });
                }
            }
            _ => mkdir(&self.run_dir, RUN_DIR_MODE)?,
        }
        mkdir_nofollow(&self.sandboxes_dir(), SANDBOXES_DIR_MODE)?;
        self.resume_removals();
        Ok(())
    }

    /// Binds the admin socket, mode 0600.
    pub fn bind_admin(&self) -> Result<UnixListener, SandboxError> {
        bind_socket(&self.admin_socket(), ADMIN_SOCKET_MODE)
    }

    /// Where a sandbox's socket is bound and chmodded before it is moved into the sandbox's
    /// directory: directly in `sandboxes/` (0700, never mounted), under a name no id can take.
    fn staging_socket(&self, id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self
            .sandboxes_dir()
            .join(format!(".{}.sock", check_id(id)?)))
    }

    /// Creates (or re-creates) a sandbox's directory (0755) and binds its socket (0666).
    ///
    /// Root in the container can write the sandbox's directory, so nothing in it is touched by
    /// path: the socket is bound and chmodded in `sandboxes/`, then renamed to `secrets.sock`.
    /// rename(2) replaces whatever the container put under that name (a symlink is replaced
    /// itself, never followed; a directory makes it fail). Only one daemon runs per run
    /// directory (the admin socket says so), so an old socket there is always stale.
    pub fn bind_sandbox(&self, id: &str) -> Result<UnixListener, SandboxError> {
        self.bind(id, false)
    }

    /// [`Layout::bind_sandbox`] for a sandbox being created, whose id no one has been told yet.
    /// When this call makes its directory, nobody but this daemon's uid can write it and no
    /// container has it mounted (the platform learns the id only from the answer, sent once the
    /// socket is live), so the marker and the socket are made in place, without staging and
    /// renames. A directory that was already there takes the staged way.
    pub fn bind_new_sandbox(&self, id: &str) -> Result<UnixListener, SandboxError> {
        self.bind(id, true)
    }

    fn bind(&self, id: &str, new: bool) -> Result<UnixListener, SandboxError> {
        let dir = self.sandbox_dir(id)?;
        let made = mkdir_nofollow(&dir, SANDBOX_DIR_MODE)?;
        if new && made {
            let marker = dir.join(MARKER_NAME);
            write_marker(&marker).map_err(|source| SandboxError::Place {
                from: marker.clone(),
                to: marker,
                source,
            })?;
            return bind_in_own_dir(&dir.join(SOCKET_NAME), SANDBOX_SOCKET_MODE);
        }
        if !marker_in_place(&dir) {
            self.place_marker(id, &dir)?;
        }
        let staging = self.staging_socket(id)?;
        // A staging socket left by a daemon killed mid-create is removed and the bind retried.
        let listener = match bind_in_own_dir(&staging, SANDBOX_SOCKET_MODE) {
            Err(SandboxError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                remove_file_quietly(&staging)?;
                bind_in_own_dir(&staging, SANDBOX_SOCKET_MODE)?
            }
            other => other?,
        };
        let to = dir.join(SOCKET_NAME);
        if let Err(source) = std::fs::rename(&staging, &to) {
            let _ = std::fs::remove_file(&staging);
            return Err(SandboxError::Place {
                from: staging,
                to,
                source,
            });
        }
        Ok(listener)
    }

    /// Writes the marker (`protocol::MARKER_NAME`, 0444) that tells the init a broker serves
    /// this directory, before the socket exists and kept when the daemon stops. Like the socket
    /// it is written in `sandboxes/` and renamed into place: a symlink or file the container put
    /// under that name is replaced, never followed or written through.
    fn place_marker(&self, id: &str, dir: &Path) -> Result<(), SandboxError> {
        let staging = self
            .sandboxes_dir()
            .join(format!(".{}.marker", check_id(id)?));
        remove_file_quietly(&staging)?;
        let to = dir.join(MARKER_NAME);
        let place = |source| SandboxError::Place {
            from: staging.clone(),
            to: to.clone(),
            source,
        };
        write_marker(&staging).map_err(place)?;
        std::fs::rename(&staging, &to).map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            place(e)
        })
    }

    /// Where deleted sandboxes' directories wait for their removal: in `sandboxes/` (0700,
    /// never mounted), under a name no id can take.
    pub fn removing_dir(&self) -> PathBuf {
        self.sandboxes_dir().join(REMOVING_DIR)
    }

    /// Removes a sandbox's socket and directory (a missing one is not an error). Anything but a
    /// real directory under the sandbox's name (a symlink put there) is unlinked itself, never
    /// followed.
    ///
    /// The directory was the container's to write: it may hold a tree deeper than any stack or
    /// more files than a request may wait for. So it is only renamed here, into a fresh
    /// directory of [`Layout::removing_dir`] (one cheap call), and emptied by the removal thread
    /// with [`remove_tree`], off the daemon's async workers.
    pub fn remove_sandbox(&self, id: &str) -> Result<(), SandboxError> {
        if let Some(retired) = self.retire_sandbox(id)? {
            removal::queue(retired);
        }
        Ok(())
    }

    /// Moves a sandbox's directory aside into `removing/<random>/t` after unlinking its socket;
    /// returns the `removing/<random>` directory to hand to [`remove_tree`], `None` when there
    /// was no directory.
    fn retire_sandbox(&self, id: &str) -> Result<Option<PathBuf>, SandboxError> {
        let dir = self.sandbox_dir(id)?;
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Ok(meta) if !meta.is_dir() => return remove_file_quietly(&dir).map(|()| None),
            _ => {}
        }
        remove_file_quietly(&self.staging_socket(id)?)?;
        remove_file_quietly(&dir.join(SOCKET_NAME))?;
        remove_file_quietly(&dir.join(MARKER_NAME))?;
        mkdir_nofollow(&self.removing_dir(), SANDBOXES_DIR_MODE)?;
        let aside = self.removing_dir().join(new_id()?);
        mkdir_nofollow(&aside, SANDBOXES_DIR_MODE)?;
        match std::fs::rename(&dir, aside.join(RETIRED_NAME)) {
            Ok(()) => Ok(Some(aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir(&aside);
                Ok(None)
            }
            Err(source) => {
                let _ = std::fs::remove_dir(&aside);
                Err(SandboxError::Remove { path: dir, source })
            }
        }
    }

    /// Queues for removal whatever a previous run left in [`Layout::removing_dir`] (a daemon
    /// stopped in the middle of a removal).
    pub fn resume_removals(&self) {
        let Ok(entries) = std::fs::read_dir(self.removing_dir()) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                removal::queue(e.path());
            }
        }
    }
}

/// Directory in `sandboxes/` holding deleted sandboxes' directories until they are removed.
pub const REMOVING_DIR: &str = ".removing";
/// The name a retired sandbox directory takes inside its own directory of [`REMOVING_DIR`].
const RETIRED_NAME: &str = "t";
/// Errors of one removal that are logged one by one; the rest are counted.
const REMOVAL_ERRORS_SHOWN: usize = 8;
/// Passes over a directory that keeps refilling (a container process still inside it) before
/// it is given up and reported.
const REMOVAL_PASSES: usize = 3;

/// What [`remove_tree`] did.
#[derive(Debug, Default)]
pub struct Removal {
    /// Entries removed (files, symlinks, sockets, device nodes, directories).
    pub removed: u64,
    /// Entries that could not be removed.
    pub failed: u64,
    /// The first few of those, with their error.
    pub errors: Vec<String>,
}

impl Removal {
    fn fail(&mut self, path: &Path, e: &std::io::Error) {
        self.failed += 1;
        if self.errors.len() < REMOVAL_ERRORS_SHOWN {
            self.errors.push(format!("{}: {e}", path.display()));
        }
    }
}

/// Removes the directory `aside` and everything under it, where `aside` is a directory only
/// this daemon can write (its parent is `sandboxes/`, 0700) holding a tree the container wrote.
///
/// No recursion and no depth: every subdirectory met is first renamed up into `aside` itself
/// under a fresh name, so the walk is a queue of directories one level below `aside`, whatever
/// the depth of the tree. Nothing is followed: files, symlinks and nodes are unlinked (unlink
/// never follows), a directory is renamed (rename never follows) and checked again with
/// `lstat` once it sits in `aside`, where the container cannot swap it. A container process
/// still holding a directory open may refill it; such a directory gets a few passes, then is
/// reported. Errors are counted, the first few kept for the log.
pub fn remove_tree(aside: &Path) -> Removal {
    let mut report = Removal::default();
    let mut queue: std::collections::VecDeque<(PathBuf, usize)> = std::fs::read_dir(aside)
        .map(|rd| rd.flatten().map(|e| (e.path(), 0)).collect())
        .unwrap_or_default();
    let mut fresh = 0u64;
    while let Some((dir, pass)) = queue.pop_front() {
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                match std::fs::remove_file(&dir) {
                    Ok(()) => report.removed += 1,
                    Err(e) => report.fail(&dir, &e),
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.fail(&dir, &e);
                continue;
            }
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                report.fail(&dir, &e);
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    report.fail(&dir, &e);
                    break;
                }
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    report.removed += 1;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() != Some(libc::EISDIR) => {
                    report.fail(&path, &e);
                    continue;
                }
                Err(_) => {}
            }
            fresh += 1;
            let up = aside.join(format!("d{fresh}"));
            match std::fs::rename(&path, &up) {
                Ok(()) => queue.push_back((up, 0)),
                Err(e) => report.fail(&path, &e),
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => report.removed += 1,
            Err(_) if pass + 1 < REMOVAL_PASSES => queue.push_back((dir, pass + 1)),
            Err(e) => report.fail(&dir, &e),
        }
    }
    if let Err(e) = std::fs::remove_dir(aside) {
        if e.kind() != std::io::ErrorKind::NotFound {
            report.fail(aside, &e);
        }
    }
    report
}

/// The removal thread: one per daemon, started on first use, removing retired directories
/// one at a time with [`remove_tree`] and logging what it could not remove.
mod removal {
    use std::path::PathBuf;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};

    static QUEUE: OnceLock<Mutex<Option<Sender<PathBuf>>>> = OnceLock::new();

    /// Hands `aside` to the removal thread (started here on first use). If no thread can be
    /// started the directory stays where it is, out of every container's reach, and is logged.
    pub fn queue(aside: PathBuf) {
        let slot = QUEUE.get_or_init(|| Mutex::new(None));
        let mut tx = slot.lock().unwrap_or_else(|e| e.into_inner());
        if tx.is_none() {
            let (sender, receiver) = channel::<PathBuf>();
            let started = std::thread::Builder::new()
                .name("sandbox-removal".into())
                .spawn(move || {
                    for aside in receiver {
                        remove_one(&aside);
                    }
                });
            match started {
                Ok(_) => *tx = Some(sender),
                Err(e) => {
                    tracing::error!(path = %aside.display(), error = %e, "cannot start the removal thread; the deleted sandbox's directory is left aside");
                    return;
                }
            }
        }
        if let Some(Err(e)) = tx.as_ref().map(|t| t.send(aside)) {
            tracing::error!(path = %e.0.display(), "removal thread gone; the deleted sandbox's directory is left aside");
        }
    }

    fn remove_one(aside: &std::path::Path) {
        let started = std::time::Instant::now();
        let report = super::remove_tree(aside);
        for error in &report.errors {
            tracing::warn!(%error, "cannot remove part of a deleted sandbox's directory");
        }
        if report.failed > 0 {
            tracing::warn!(
                path = %aside.display(),
                removed = report.removed,
                failed = report.failed,
                "deleted sandbox's directory not fully removed"
            );
        } else {
            tracing::debug!(
                path = %aside.display(),
                removed = report.removed,
                took_ms = started.elapsed().as_millis() as u64,
                "deleted sandbox's directory removed"
            );
        }
    }
}

/// Removes a file, treating "not found" as done.
pub fn remove_file_quietly(path: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Remove {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_checked() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(check_id(&a).unwrap(), a);
        for bad in [
            "",
            "../etc",
            "ABCDEF0123456789abcdef0123456789",
            &"a".repeat(ID_LEN - 1),
            &"a".repeat(ID_LEN + 1),
            &format!("{}/", "a".repeat(ID_LEN - 1)),
            &format!("{}g", "a".repeat(ID_LEN - 1)),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
            assert!(Layout::new("/run/x").sandbox_dir(bad).is_err());
        }
    }

    #[test]
    fn a_run_directory_others_can_write_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, Permissions::from_mode(0o1777)).unwrap();
        let e = Layout::new(&run).prepare().unwrap_err().to_string();
        assert!(e.contains("1777"), "{e}");
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        let fresh = dir.path().join("a/b");
        Layout::new(&fresh).prepare().unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777,
            RUN_DIR_MODE
        );
        assert_eq!(
            std::fs::metadata(fresh.join("sandboxes"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            SANDBOXES_DIR_MODE
        );
    }

    #[test]
    fn stale_socket_is_replaced_live_one_refused_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = bind_socket(&path, 0o600).unwrap();
        assert!(matches!(
            bind_socket(&path, 0o600),
            Err(SandboxError::InUse(_))
        ));
        drop(live); // the file stays behind: stale
        assert!(path.exists());
        let _again = bind_socket(&path, 0o600).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            bind_socket(&file, 0o600),
            Err(SandboxError::NotSocket(_))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn a_sandbox_directory_is_never_made_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        layout.prepare().unwrap();
        // Another directory an attacker wants the daemon to chmod and bind into.
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o700)).unwrap();
        let id = new_id().unwrap();
        let at = layout.sandbox_dir(&id).unwrap();
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        let e = layout.bind_sandbox(&id).unwrap_err();
        assert!(
            matches!(e, SandboxError::NotOwnDirectory { .. }) && e.to_string().contains("symlink"),
            "{e}"
        );
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert!(!victim.join(SOCKET_NAME).exists());
        // Deleting the sandbox unlinks the symlink, never what it points to.
        std::fs::write(victim.join(SOCKET_NAME), "keep").unwrap();
        layout.remove_sandbox(&id).unwrap();
        assert!(std::fs::symlink_metadata(&at).is_err());
        assert_eq!(std::fs::read(victim.join(SOCKET_NAME)).unwrap(), b"keep");

        // A plain file under the id is refused too; a real directory of ours is reused.
        std::fs::write(&at, "x").unwrap();
        let e = layout.bind_sandbox(&id).unwrap_err().to_string();
        assert!(e.contains("another kind of file"), "{e}");
        std::fs::remove_file(&at).unwrap();
        std::fs::create_dir(&at).unwrap();
        std::fs::set_permissions(&at, Permissions::from_mode(0o700)).unwrap();
        let _l = layout.bind_sandbox(&id).unwrap();
        assert_eq!(
            std::fs::metadata(&at).unwrap().permissions().mode() & 0o7777,
            SANDBOX_DIR_MODE
        );

        // `sandboxes/` itself swapped for a symlink is refused at start.
        let run2 = dir.path().join("run2");
        std::fs::create_dir(&run2).unwrap();
        std::os::unix::fs::symlink(&victim, run2.join("sandboxes")).unwrap();
        let e = Layout::new(&run2).prepare().unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
            0o700
        );
    }

    #[test]
    fn a_symlink_planted_as_the_socket_is_replaced_never_followed() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        layout.prepare().unwrap();
        let id = new_id().unwrap();
        let sandbox = layout.sandbox_dir(&id).unwrap();
        std::fs::create_dir(&sandbox).unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "root:x").unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o600)).unwrap();
        let at = layout.sandbox_socket(&id).unwrap();
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        let _l = layout.bind_sandbox(&id).unwrap();
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"root:x");
        let meta = std::fs::symlink_metadata(&at).unwrap();
        assert!(meta.file_type().is_socket(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o7777, SANDBOX_SOCKET_MODE);
        assert!(UnixStream::connect(&at).is_ok());
        // Nothing is left behind in `sandboxes/` but the sandbox's directory.
        let names: Vec<_> = std::fs::read_dir(layout.sandboxes_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&id)]);
        // A directory planted as the socket makes the bind fail, and is left alone.
        drop(_l);
        std::fs::remove_file(&at).unwrap();
        std::fs::create_dir(&at).unwrap();
        std::fs::write(at.join("keep"), "x").unwrap();
        let e = layout.bind_sandbox(&id).unwrap_err().to_string();
        assert!(e.contains("cannot move the socket"), "{e}");
        assert_eq!(std::fs::read(at.join("keep")).unwrap(), b"x");
        assert!(!layout.staging_socket(&id).unwrap().exists());
    }

    /// A chain of `levels` directories `d` under `top`, built through descriptors (the path is
    /// far beyond PATH_MAX), with `leaf` done in the deepest one.
    fn deep_chain(top: &Path, levels: usize, leaf: impl FnOnce(std::os::fd::RawFd)) {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut fd = openat(None, top, flags, Mode::empty()).unwrap();
        for _ in 0..levels {
            mkdirat(Some(fd), "d", Mode::from_bits_truncate(0o755)).unwrap();
            let next = openat(Some(fd), "d", flags, Mode::empty()).unwrap();
            nix::unistd::close(fd).unwrap();
            fd = next;
        }
        leaf(fd);
        nix::unistd::close(fd).unwrap();
    }

    #[test]
    fn a_tree_of_any_depth_is_removed_without_recursion_or_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "host").unwrap();
        let aside = dir.path().join("aside");
        let tree = aside.join(RETIRED_NAME);
        std::fs::create_dir_all(&tree).unwrap();
        // 20,000 levels: a recursive walk overflows this test thread's 2 MiB stack long before.
        let target = outside.clone();
        deep_chain(&tree, 20_000, |fd| {
            nix::unistd::symlinkat(&target, Some(fd), "out").unwrap();
            nix::unistd::mkfifoat(Some(fd), "fifo", nix::sys::stat::Mode::S_IRWXU).unwrap();
        });
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        for i in 0..100 {
            std::fs::write(tree.join(format!("f{i}")), "x").unwrap();
        }
        let report = remove_tree(&aside);
        assert_eq!(report.failed, 0, "{:?}", report.errors);
        assert_eq!(report.removed, 20_000 + 1 + 2 + 1 + 100);
        assert!(!aside.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "host"
        );
    }

    #[test]
    fn a_deleted_sandbox_is_moved_aside_at_once_and_removed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        layout.prepare().unwrap();
        let id = new_id().unwrap();
        let _l = layout.bind_sandbox(&id).unwrap();
        let sandbox = layout.sandbox_dir(&id).unwrap();
        deep_chain(&sandbox, 5_000, |_| {});
        layout.remove_sandbox(&id).unwrap();
        assert!(!sandbox.exists(), "still in place");
        assert_eq!(
            mode(&layout.removing_dir()),
            SANDBOXES_DIR_MODE,
            "the removal area is the daemon's only"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::read_dir(layout.removing_dir())
            .unwrap()
            .next()
            .is_some()
        {
            assert!(std::time::Instant::now() < deadline, "not removed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A leftover of a stopped daemon is removed at the next start.
        let left = layout.removing_dir().join("x");
        std::fs::create_dir_all(left.join("t/a/b")).unwrap();
        layout.prepare().unwrap();
        while left.exists() {
            assert!(std::time::Instant::now() < deadline, "leftover not removed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_marker_is_read_only_replaces_what_the_container_planted_and_outlives_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        layout.prepare().unwrap();
        let id = new_id().unwrap();
        let sandbox = layout.sandbox_dir(&id).unwrap();
        std::fs::create_dir(&sandbox).unwrap();
        let victim = dir.path().join("host-file");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, sandbox.join(MARKER_NAME)).unwrap();
        let listener = layout.bind_sandbox(&id).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let marker = sandbox.join(MARKER_NAME);
        let meta = std::fs::symlink_metadata(&marker).unwrap();
        assert!(meta.is_file(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o7777, MARKER_MODE);
        // The daemon stopping removes the socket, never the marker.
        drop(listener);
        std::fs::remove_file(layout.sandbox_socket(&id).unwrap()).unwrap();
        assert!(marker.is_file());
        let names: Vec<_> = std::fs::read_dir(layout.sandboxes_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&id)]);
        layout.remove_sandbox(&id).unwrap();
        assert!(!sandbox.exists());
    }

    #[test]
    fn a_new_sandbox_is_made_in_place_and_an_existing_directory_takes_the_staged_way() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        layout.prepare().unwrap();
        let check = |id: &str| {
            let socket = layout.sandbox_socket(id).unwrap();
            let meta = std::fs::symlink_metadata(&socket).unwrap();
            assert!(meta.file_type().is_socket(), "{meta:?}");
            assert_eq!(meta.permissions().mode() & 0o7777, SANDBOX_SOCKET_MODE);
            assert!(UnixStream::connect(&socket).is_ok());
            let marker = layout.sandbox_dir(id).unwrap().join(MARKER_NAME);
            let meta = std::fs::symlink_metadata(&marker).unwrap();
            assert!(meta.is_file(), "{meta:?}");
            assert_eq!(meta.permissions().mode() & 0o7777, MARKER_MODE);
            assert_eq!(mode(&layout.sandbox_dir(id).unwrap()), SANDBOX_DIR_MODE);
        };
        let fresh = new_id().unwrap();
        let _a = layout.bind_new_sandbox(&fresh).unwrap();
        check(&fresh);
        // A directory already there (a container could hold it) is never written in place:
        // what was planted in it is replaced, never followed.
        let id = new_id().unwrap();
        let sandbox = layout.sandbox_dir(&id).unwrap();
        std::fs::create_dir(&sandbox).unwrap();
        let victim = dir.path().join("host-file");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, sandbox.join(SOCKET_NAME)).unwrap();
        std::os::unix::fs::symlink(&victim, sandbox.join(MARKER_NAME)).unwrap();
        let _b = layout.bind_new_sandbox(&id).unwrap();
        check(&id);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(mode(&victim), 0o600);
        // At a restart a marker the daemon wrote is kept; one with another mode is replaced.
        drop(_b);
        std::fs::remove_file(layout.sandbox_socket(&id).unwrap()).unwrap();
        let marker = sandbox.join(MARKER_NAME);
        std::fs::set_permissions(&marker, Permissions::from_mode(0o644)).unwrap();
        let _c = layout.bind_sandbox(&id).unwrap();
        check(&id);
        // Nothing is left behind in `sandboxes/` but the sandboxes' directories.
        let mut names: Vec<_> = std::fs::read_dir(layout.sandboxes_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut want = vec![
            std::ffi::OsString::from(&fresh),
            std::ffi::OsString::from(&id),
        ];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn only_the_daemons_uid_or_root_may_own_its_directories() {
        for euid in [0u32, 1000, 65534] {
            for owner in [0u32, 1, 999, 1000, 1001, 65534, u32::MAX] {
                assert_eq!(owner_trusted(owner, euid), owner == 0 || owner == euid);
            }
        }
    }

    #[test]
    fn a_run_directory_of_another_uid_is_refused_and_left_alone() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
        let e = Layout::new(&run).prepare().unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534") && e.contains(&run.display().to_string()),
            "{e}"
        );
        assert!(!run.join("sandboxes").exists());
        std::os::unix::fs::chown(&run, Some(0), Some(0)).unwrap();
        Layout::new(&run).prepare().unwrap();
    }

    #[test]
    fn a_directory_of_another_owner_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let e = mkdir_nofollow(&path, 0o755).unwrap_err().to_string();
        assert!(e.contains("a directory of uid 65534"), "{e}");
    }
}
