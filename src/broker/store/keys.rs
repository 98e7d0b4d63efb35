//! Files beside the database: the key (`key`), a key being introduced (`key.next`), retired keys
//! (`key.retired-<id>`) and the sealed generation file that detects a rolled-back store. Every
//! step that replaces one of them is a rename followed by a directory sync, so a crash leaves
//! either the old or the new file. Never holds a value.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::seal::{aad_v2, CryptoError, KeyRing, Sealed, Sealer};

/// File name of the active key inside the state directory.
pub const KEY_FILE: &str = "key";
/// File name of a key being introduced by a rotation (or a first start).
pub const NEXT_KEY_FILE: &str = "key.next";
/// Prefix of a retired key's file name; the key id follows.
pub const RETIRED_PREFIX: &str = "key.retired-";
/// File name of the sealed generation kept outside the database.
pub const GENERATION_FILE: &str = "generation";

/// The key at `path`, `None` when there is no file there (a symlink is not "no file").
pub fn load_optional(path: &Path) -> Result<Option<Sealer>, CryptoError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => Sealer::load(path).map(Some),
    }
}

/// Path of the retired copy of key `id`.
pub fn retired_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{RETIRED_PREFIX}{id}"))
}

/// Adds every retired key in `dir` to `ring`; one that does not load is reported, not fatal.
pub fn add_retired(dir: &Path, ring: &mut KeyRing) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(RETIRED_PREFIX) {
            continue;
        }
        match Sealer::load(&entry.path()) {
            Ok(key) => ring.add(key),
            Err(e) => tracing::warn!(error = %e, "retired key not loaded"),
        }
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `key.next` the active key: keeps the old key as `key.retired-<id>` (a hard link, so
/// `key` is never missing), then renames `key.next` over `key`.
pub fn promote_next(dir: &Path, old: Option<&Sealer>) -> std::io::Result<()> {
    if let Some(old) = old {
        match std::fs::hard_link(dir.join(KEY_FILE), retired_path(dir, old.id())) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(dir.join(NEXT_KEY_FILE), dir.join(KEY_FILE))?;
    sync_dir(dir)
}

#[derive(Serialize, Deserialize)]
struct GenerationFile {
    key_id: String,
    nonce: String,
    ciphertext: String,
}

fn generation_aad(key_id: &str) -> Vec<u8> {
    aad_v2("generation-file", &[key_id.as_bytes()])
}

/// Bytes of the generation file: one record padded to a fixed size, rewritten in place.
const GENERATION_LEN: usize = 512;

/// Writes the store's generation beside the key, sealed. The file is created once (0600, by
/// rename) and then rewritten in place: one small write at offset 0, no new inode per commit.
/// Not synced: after a power loss the file can be older than the database (no false alarm),
/// never newer.
pub fn write_generation(dir: &Path, key: &Sealer, generation: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let sealed = key
        .seal(
            generation.to_string().as_bytes(),
            &generation_aad(key.id()),
            "generation file",
        )
        .map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut body = serde_json::to_vec(&GenerationFile {
        key_id: key.id().to_string(),
        nonce: b64.encode(&sealed.nonce),
        ciphertext: b64.encode(&sealed.ciphertext),
    })
    .map_err(|e| e.to_string())?;
    body.resize(GENERATION_LEN, b' ');
    let path = dir.join(GENERATION_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) if f.metadata().is_ok_and(|m| m.len() == GENERATION_LEN as u64) => {
            return f
                .write_all_at(&body, 0)
                .map_err(|e| format!("cannot write {}: {e}", path.display()));
        }
        _ => {}
    }
    let tmp = dir.join(format!("{GENERATION_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(&body)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// What the generation file says.
#[derive(Debug, PartialEq, Eq)]
pub enum FileGeneration {
    Missing,
    /// Present but unreadable or not sealed by a key this host holds: why.
    Bad(String),
    At(u64),
}

pub fn read_generation(dir: &Path, ring: &KeyRing) -> FileGeneration {
    let path = dir.join(GENERATION_FILE);
    let raw = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|f| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut s).map(|_| s)
        }) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileGeneration::Missing,
        Err(e) => return FileGeneration::Bad(format!("cannot read {}: {e}", path.display())),
        Ok(s) => s,
    };
    let bad = |why: &str| FileGeneration::Bad(format!("{} {why}", path.display()));
    let Ok(file) = serde_json::from_str::<GenerationFile>(&raw) else {
        return bad("is not a generation file");
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(nonce), Ok(ciphertext)) = (b64.decode(&file.nonce), b64.decode(&file.ciphertext))
    else {
        return bad("is not a generation file");
    };
    let Some(key) = ring.get(&file.key_id) else {
        return bad(&format!(
            "is sealed with key id {}, which this host does not hold",
            file.key_id
        ));
    };
    let Ok(plain) = key.open(
        &Sealed { nonce, ciphertext },
        &generation_aad(&file.key_id),
        "generation file",
    ) else {
        return bad("does not open with its key (tampered?)");
    };
    match std::str::from_utf8(&plain)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(g) => FileGeneration::At(g),
        None => bad("holds no generation"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_file_round_trips_and_refuses_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = Sealer::from_key(&[1u8; 32]);
        let ring = KeyRing::new(Sealer::from_key(&[1u8; 32]));
        assert_eq!(read_generation(dir.path(), &ring), FileGeneration::Missing);
        write_generation(dir.path(), &key, 42).unwrap();
        assert_eq!(read_generation(dir.path(), &ring), FileGeneration::At(42));
        write_generation(dir.path(), &key, 43).unwrap();
        assert_eq!(read_generation(dir.path(), &ring), FileGeneration::At(43));
        let other = KeyRing::new(Sealer::from_key(&[2u8; 32]));
        match read_generation(dir.path(), &other) {
            FileGeneration::Bad(why) => assert!(why.contains(key.id().as_ref()), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
