//! Files that hold secret bytes: the spill directory for values too large for `execve`, and the
//! atomic create-new-then-rename writer that docker's `config.json` uses too. Nothing here logs
//! or formats a value; every file is created with its final restrictive mode before a byte is
//! written.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

/// Where oversized values go, one file per secret name.
pub const DEFAULT_SPILL_DIR: &str = "/run/sandbox-init/secrets";
/// Overrides [`DEFAULT_SPILL_DIR`] (tests, read-only `/run`).
pub const SPILL_DIR_ENV: &str = "SANDBOX_INIT_SECRETS_DIR";

/// Makes `dir` a real directory (not a symlink) with mode 0700 owned by `uid:gid`, creating its
/// parents (root-owned, 0755) as needed.
pub fn ensure_private_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    chown(dir, uid, gid, &meta)
}

/// Removes files in the spill directory left by an earlier start for secrets that are not
/// spilled now (revoked, or now small enough for the environment): a revoked value must not
/// outlive its grant in a file. Only names that are secret names are touched. A missing
/// directory is fine.
pub fn remove_stale(dir: &Path, keep: &[&str]) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if keep.contains(&name.as_str())
            || crate::protocol::normalize_name(&name, true).as_deref() != Ok(name.as_str())
            || !entry.file_type()?.is_file()
        {
            continue;
        }
        fs::remove_file(entry.path())?;
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

fn chown(path: &Path, uid: u32, gid: u32, meta: &fs::Metadata) -> io::Result<()> {
    if meta.uid() == uid && meta.gid() == gid {
        return Ok(());
    }
    nix::unistd::fchownat(
        None,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `dir` created new with `mode`,
/// owned by `uid:gid`, written fully and synced, then renamed over `dir/name`. On failure the
/// temporary file is removed; `dir/name` is untouched.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<PathBuf> {
    let target = dir.join(name);
    let (tmp, mut file) = create_temp(dir, name, mode)?;
    let written = (|| {
        file.write_all(bytes)?;
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(io::Error::from)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The directory is not synced: the data was synced before the rename, so after a crash the
    // name holds the old file or the new one, both whole; the init writes it again at its next
    // start, and a directory fsync costs a third of a millisecond on every start.
    Ok(target)
}

fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, fs::File)> {
    let mut attempt = 0u32;
    loop {
        // Unique enough with create_new behind it: pid, clock, attempt.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(
            ".{name}.{}.{nanos:x}.{attempt}.tmp",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => {
                // The umask may have taken bits off; never adds any. Set exactly.
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                return Ok((tmp, f));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = write_atomic(dir.path(), "A", b"one", 0o400, uid, gid).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o400);
        let p = write_atomic(dir.path(), "A", b"two", 0o400, uid, gid).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("A")]);
    }

    #[test]
    fn stale_spill_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["OLD", "KEEP", "not-a-name.txt", "lower"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        fs::create_dir(dir.path().join("SUBDIR")).unwrap();
        let removed = remove_stale(dir.path(), &["KEEP"]).unwrap();
        assert_eq!(removed, vec!["OLD".to_string()]);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["KEEP", "SUBDIR", "lower", "not-a-name.txt"]);
        assert!(remove_stale(&dir.path().join("absent"), &[])
            .unwrap()
            .is_empty());
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
