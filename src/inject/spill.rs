//! Files that hold secret bytes: the spill directory for values too large for `execve` (only
//! ever on memory-backed storage: tmpfs or ramfs), and the atomic create-new-then-rename writer
//! that docker's `config.json` uses too. Nothing here logs or formats a value; every file is
//! created with its final restrictive mode before a byte is written. Every step inside a
//! directory goes through one descriptor of it opened without following a symlink: a path
//! swapped after the check never redirects a root write.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Where oversized values go, one file per secret name.
pub const DEFAULT_SPILL_DIR: &str = "/run/sandbox-init/secrets";
/// Where oversized values go when [`DEFAULT_SPILL_DIR`] is not on memory-backed storage (the
/// container's writable layer, say): `/dev/shm` is a tmpfs in every Docker container.
pub const FALLBACK_SPILL_DIR: &str = "/dev/shm/sandbox-init/secrets";
/// Overrides [`DEFAULT_SPILL_DIR`] (tests, read-only `/run`); it must be on tmpfs or ramfs too.
pub const SPILL_DIR_ENV: &str = "SANDBOX_INIT_SECRETS_DIR";

/// `statfs` magic numbers of the memory-backed filesystems (linux/magic.h).
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// The filesystem type of a `statfs` answer, as linux/magic.h spells it.
fn fs_type(st: &nix::sys::statfs::Statfs) -> u64 {
    // The field's width differs between libcs; the magic numbers are 32-bit.
    (st.filesystem_type().0 as u64) & 0xffff_ffff
}

/// Whether a filesystem of type `magic` keeps its files in memory only: a value spilled there
/// never reaches a disk and is gone when the container stops.
pub fn memory_backed(magic: u64) -> bool {
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

/// The filesystem type of `path`, or of its nearest existing ancestor (where it would be
/// created).
fn fs_type_of(path: &Path) -> io::Result<u64> {
    for p in path.ancestors() {
        match nix::sys::statfs::statfs(p) {
            Ok(st) => return Ok(fs_type(&st)),
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

fn on_disk(path: &Path, magic: u64, fix: &str) -> io::Error {
    io::Error::other(format!(
        "{} is not on memory-backed storage (filesystem type {magic:#x}, not tmpfs or ramfs) and \
         a secret must not reach a disk; {fix}",
        path.display()
    ))
}

/// Where this start spills: `explicit` (`SANDBOX_INIT_SECRETS_DIR`) when memory-backed, else
/// an error; without it [`DEFAULT_SPILL_DIR`] when memory-backed, else [`FALLBACK_SPILL_DIR`]
/// when that is, else an error naming the fix (`--tmpfs /run/sandbox-init`). Checked where the
/// directory is or would be created; [`open_spill_dir`] checks the opened directory again.
pub fn choose_dir(explicit: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(dir) = explicit {
        let magic = fs_type_of(dir)?;
        if !memory_backed(magic) {
            return Err(on_disk(
                dir,
                magic,
                &format!("point {SPILL_DIR_ENV} at a tmpfs, or unset it"),
            ));
        }
        return Ok(dir.to_owned());
    }
    let default = Path::new(DEFAULT_SPILL_DIR);
    let magic = fs_type_of(default)?;
    if memory_backed(magic) {
        return Ok(default.to_owned());
    }
    let fallback = Path::new(FALLBACK_SPILL_DIR);
    match fs_type_of(fallback) {
        Ok(m) if memory_backed(m) => Ok(fallback.to_owned()),
        _ => Err(on_disk(
            default,
            magic,
            "/dev/shm is not a tmpfs either: run the container with --tmpfs /run/sandbox-init",
        )),
    }
}

/// [`ensure_private_dir`] for the spill directory, refused unless the directory opened is on
/// tmpfs or ramfs (a disk mounted there after [`choose_dir`] looked does not count), and
/// unless it is the target's already or an empty one of root's (as the init makes it): the init
/// never chmods and chowns to the target a directory holding someone else's files
/// (`SANDBOX_INIT_SECRETS_DIR=/dev/shm`, say).
pub fn open_spill_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<Dir> {
    let d = open_dir(dir, true, None)?;
    let st = nix::sys::statfs::fstatfs(&d.fd)?;
    if !memory_backed(fs_type(&st)) {
        return Err(on_disk(
            dir,
            fs_type(&st),
            "mount a tmpfs there (docker run --tmpfs /run/sandbox-init)",
        ));
    }
    let owner = d.stat()?.st_uid;
    if owner != uid && !(owner == 0 && is_empty(&d)?) {
        return Err(io::Error::other(format!(
            "it belongs to uid {owner}, not to the target uid {uid}, and is not empty: the init \
             does not take over another user's directory; point {SPILL_DIR_ENV} at a new one"
        )));
    }
    // A directory the init did not make (a shared SANDBOX_INIT_SECRETS_DIR, an image's) keeps
    // its mode and owner: the files in it are 0400 and the target's anyway.
    if d.created {
        d.make_private(uid, gid)?;
    }
    Ok(d)
}

/// Whether the open directory `d` has no entry, read through its descriptor where `/proc` is
/// mounted.
fn is_empty(d: &Dir) -> io::Result<bool> {
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", d.raw()));
    let path = if by_fd.exists() {
        by_fd.as_path()
    } else {
        d.path()
    };
    Ok(fs::read_dir(path)?.next().is_none())
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A directory opened once: its last component was not a symlink, and every later step
/// (fstat, fchmod, fchown, openat, renameat, unlinkat) goes through this descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// This open made the directory (its last component); only such a directory is ever
    /// chmodded or chowned by the spill step.
    created: bool,
}

impl Dir {
    /// The path it was opened by (for messages and the paths handed to the child).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, for `*at` calls.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Its owner, type and mode, read through the descriptor.
    pub fn stat(&self) -> io::Result<FileStat> {
        nix::sys::stat::fstat(self.raw()).map_err(io::Error::from)
    }

    /// Sets mode 0700 and owner `uid:gid` through the descriptor.
    pub fn make_private(&self, uid: u32, gid: u32) -> io::Result<()> {
        nix::sys::stat::fchmod(self.raw(), Mode::from_bits_truncate(0o700))?;
        let st = self.stat()?;
        if st.st_uid != uid || st.st_gid != gid {
            fchown(self.raw(), uid, gid)?;
        }
        Ok(())
    }
}

fn own(fd: RawFd) -> OwnedFd {
    crate::sys::own_fd(fd)
}

fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(io::Error::from)
}

/// Opens `dir` (absolute) component by component from `/`, each with `O_NOFOLLOW`. A missing
/// component is created (mkdirat relative to its parent's descriptor; 0755 for parents, 0700
/// for `dir` itself) when `create` is set, and chowned to `owner` through its new descriptor
/// when given (else it stays the init's). A symlink is followed only in the middle of the path
/// and only when root made it in a directory only root can change (`/var/run`, a root-owned
/// home link); `dir` itself is never a symlink.
pub fn open_dir(dir: &Path, create: bool, owner: Option<(u32, u32)>) -> io::Result<Dir> {
    if !dir.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path",
        ));
    }
    let names: Vec<&OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::ParentDir => Some(Err(())),
            _ => None,
        })
        .collect::<Result<_, ()>>()
        .map_err(|()| io::Error::new(io::ErrorKind::InvalidInput, "path contains .."))?;
    let mut cur = own(nix::fcntl::open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let mut created = false;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        (cur, created) = step(&cur, name, last, create, owner)?;
    }
    Ok(Dir {
        fd: cur,
        path: dir.to_owned(),
        created,
    })
}

fn step(
    parent: &OwnedFd,
    name: &OsStr,
    last: bool,
    create: bool,
    owner: Option<(u32, u32)>,
) -> io::Result<(OwnedFd, bool)> {
    let at = Some(parent.as_raw_fd());
    match nix::fcntl::openat(at, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok((own(fd), false)),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ELOOP | Errno::ENOTDIR) if !last && trusted_symlink(parent, name)? => {
            let follow = DIR_FLAGS.difference(OFlag::O_NOFOLLOW);
            return Ok((
                own(nix::fcntl::openat(at, name, follow, Mode::empty())?),
                false,
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mode = Mode::from_bits_truncate(if last { 0o700 } else { 0o755 });
    let created = match nix::sys::stat::mkdirat(at, name, mode) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = own(nix::fcntl::openat(at, name, DIR_FLAGS, Mode::empty())?);
    if created {
        // The umask may have taken bits off; set exactly, then hand it to its owner.
        nix::sys::stat::fchmod(fd.as_raw_fd(), mode)?;
        if let Some((uid, gid)) = owner {
            fchown(fd.as_raw_fd(), uid, gid)?;
        }
    }
    Ok((fd, created))
}

/// A symlink root made in a directory only root can change: following it cannot be a user's
/// redirection.
fn trusted_symlink(parent: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    let link =
        nix::sys::stat::fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let dir = nix::sys::stat::fstat(parent.as_raw_fd())?;
    let sticky_or_closed = dir.st_mode & 0o1000 != 0 || dir.st_mode & 0o022 == 0;
    Ok(is_type(&link, SFlag::S_IFLNK) && link.st_uid == 0 && dir.st_uid == 0 && sticky_or_closed)
}

fn is_type(st: &FileStat, t: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == t.bits()
}

/// Makes `dir` a real directory (not a symlink) with mode 0700 owned by `uid:gid`, creating its
/// parents (the init's, 0755) as needed, and returns it open.
pub fn ensure_private_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<Dir> {
    let d = open_dir(dir, true, None)?;
    d.make_private(uid, gid)?;
    Ok(d)
}

/// The file in a spill directory listing the spill files the init wrote there (one name a line):
/// only those are ever removed. Not a secret name (it starts with a dot).
pub const MANIFEST: &str = ".sandbox-init-spilled";

/// Removes files in the spill directory left by an earlier start for secrets that are not
/// spilled now (revoked, or now small enough for the environment): a revoked value must not
/// outlive its grant in a file. Only files the init wrote are touched (the names in
/// [`MANIFEST`], each a secret name and a regular file), unlinked through the directory's
/// descriptor; anything else in a shared directory stays. The manifest is then rewritten to
/// `keep` (removed when empty). A missing directory is fine.
pub fn remove_stale(dir: &Path, keep: &[&str]) -> io::Result<Vec<String>> {
    let d = match open_dir(dir, false, None) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let listed = match nix::fcntl::openat(
        Some(d.raw()),
        MANIFEST,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut file = fs::File::from(own(fd));
            // Only a manifest this uid wrote is believed: in a shared (sticky) directory another
            // user could plant one naming their neighbour's files.
            let st = nix::sys::stat::fstat(file.as_raw_fd())?;
            let mut text = String::new();
            if st.st_uid == nix::unistd::geteuid().as_raw() && is_type(&st, SFlag::S_IFREG) {
                io::Read::read_to_string(&mut file, &mut text)?;
            }
            text
        }
        Err(Errno::ENOENT) => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut removed = Vec::new();
    for name in listed.lines() {
        if keep.contains(&name)
            || crate::protocol::normalize_name(name, true).as_deref() != Ok(name)
        {
            continue;
        }
        match nix::sys::stat::fstatat(Some(d.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_type(&st, SFlag::S_IFREG) => {}
            Ok(_) | Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        }
        nix::unistd::unlinkat(Some(d.raw()), name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        removed.push(name.to_owned());
    }
    if keep.is_empty() {
        match nix::unistd::unlinkat(
            Some(d.raw()),
            MANIFEST,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        let mut text = keep.join("\n");
        text.push('\n');
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        write_atomic(
            &d,
            MANIFEST,
            text.as_bytes(),
            0o400,
            uid.as_raw(),
            gid.as_raw(),
        )?;
    }
    removed.sort();
    Ok(removed)
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `dir` created new with `mode`
/// (openat `O_CREAT|O_EXCL|O_NOFOLLOW`), owned by `uid:gid`, written fully and synced, then
/// renamed over `name` with renameat, all relative to `dir`'s descriptor. On failure the
/// temporary file is removed; `dir/name` is untouched.
pub fn write_atomic(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<PathBuf> {
    write_atomic_with(dir, name, bytes, (mode, uid, gid), true)
}

/// [`write_atomic`] without the fsync, for a file whose loss after a crash is harmless (the
/// record of what sandbox-init wrote into `config.json`: lost, nothing is removed; a
/// `config.json` that holds only sandbox-init's entries: written again at the next start).
pub fn write_atomic_unsynced(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<PathBuf> {
    write_atomic_with(dir, name, bytes, (mode, uid, gid), false)
}

fn write_atomic_with(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    (mode, uid, gid): (u32, u32, u32),
    sync: bool,
) -> io::Result<PathBuf> {
    let (tmp, mut file) = create_temp(dir, name, mode)?;
    let written = (|| {
        file.write_all(bytes)?;
        fchown(file.as_raw_fd(), uid, gid)?;
        if sync {
            file.sync_all()?;
        }
        nix::fcntl::renameat(Some(dir.raw()), tmp.as_str(), Some(dir.raw()), name)
            .map_err(io::Error::from)
    })();
    drop(file);
    if let Err(e) = written {
        let _ = nix::unistd::unlinkat(
            Some(dir.raw()),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(e);
    }
    // The directory is not synced: the data was synced before the rename, so after a crash the
    // name holds the old file or the new one, both whole; the init writes it again at its next
    // start, and a directory fsync costs a third of a millisecond on every start.
    Ok(dir.path().join(name))
}

fn create_temp(dir: &Dir, name: &str, mode: u32) -> io::Result<(String, fs::File)> {
    let mut attempt = 0u32;
    loop {
        // Unique enough with O_EXCL behind it: pid, clock, attempt.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = format!(".{name}.{}.{nanos:x}.{attempt}.tmp", std::process::id());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(
            Some(dir.raw()),
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => {
                let f = fs::File::from(own(fd));
                // The umask may have taken bits off; never adds any. Set exactly.
                nix::sys::stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode))?;
                return Ok((tmp, f));
            }
            Err(Errno::EEXIST) if attempt < 8 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    #[test]
    fn atomic_write_replaces_with_exact_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let d = open_dir(dir.path(), false, None).unwrap();
        let p = write_atomic(&d, "A", b"one", 0o400, uid, gid).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o400);
        let p = write_atomic(&d, "A", b"two", 0o400, uid, gid).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("A")]);
    }

    #[test]
    fn only_spill_files_the_init_wrote_are_removed_never_a_shared_directorys_own() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "OLD",
            "KEEP",
            "README",
            "LICENSE",
            "not-a-name.txt",
            "lower",
        ] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        fs::create_dir(dir.path().join("SUBDIR")).unwrap();
        // A start that wrote OLD and KEEP records them; nothing else is ever listed.
        assert!(remove_stale(dir.path(), &["OLD", "KEEP"])
            .unwrap()
            .is_empty());
        let removed = remove_stale(dir.path(), &["KEEP"]).unwrap();
        assert_eq!(removed, vec!["OLD".to_string()]);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                MANIFEST,
                "KEEP",
                "LICENSE",
                "README",
                "SUBDIR",
                "lower",
                "not-a-name.txt"
            ]
        );
        // Nothing spilled any more: KEEP goes, and the manifest with it.
        assert_eq!(remove_stale(dir.path(), &[]).unwrap(), vec!["KEEP"]);
        assert!(!dir.path().join(MANIFEST).exists());
        assert!(dir.path().join("README").exists() && dir.path().join("LICENSE").exists());
        // A manifest another uid planted is not believed.
        if nix::unistd::geteuid().is_root() {
            fs::write(dir.path().join(MANIFEST), "README\nLICENSE\n").unwrap();
            std::os::unix::fs::chown(dir.path().join(MANIFEST), Some(65534), None).unwrap();
            assert!(remove_stale(dir.path(), &[]).unwrap().is_empty());
            assert!(dir.path().join("README").exists());
        }
        assert!(remove_stale(&dir.path().join("absent"), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_tmpfs_and_ramfs_are_memory_backed() {
        assert!(memory_backed(0x0102_1994));
        assert!(memory_backed(0x8584_58f6));
        for disk in [0xef53, 0x9123_683e, 0x5846_5342, 0x794c_7630, 0x6969, 0] {
            assert!(!memory_backed(disk), "{disk:#x}");
        }
    }

    #[test]
    fn a_spill_dir_on_disk_is_refused_naming_the_fix() {
        let disk = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        if memory_backed(fs_type_of(disk.path()).unwrap()) {
            return; // the target directory is on a tmpfs here: nothing on disk to try
        }
        let dir = disk.path().join("spill");
        let e = choose_dir(Some(&dir)).unwrap_err().to_string();
        assert!(
            e.contains("not on memory-backed storage") && e.contains(SPILL_DIR_ENV),
            "{e}"
        );
        let (uid, gid) = me();
        let e = open_spill_dir(&dir, uid, gid).unwrap_err().to_string();
        assert!(e.contains("--tmpfs /run/sandbox-init"), "{e}");
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = shm.path().join("spill");
        assert_eq!(choose_dir(Some(&dir)).unwrap(), dir);
        open_spill_dir(&dir, uid, gid).unwrap();
    }

    #[test]
    fn private_dir_is_created_0700_and_a_file_in_its_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let d = dir.path().join("run/sandbox-init/secrets");
        ensure_private_dir(&d, uid, gid).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&d, uid, gid).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o700);
        let f = dir.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(ensure_private_dir(&f, uid, gid).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link, uid, gid).is_err());
    }
}
