//! Sealing at rest: key files (opened without following links, owner and mode checked), key ids,
//! XChaCha20-Poly1305 and the additional data that binds every row to what decides access.
//! Never logs, and no error here holds a value or the key.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Bytes in the key file.
pub const KEY_LEN: usize = 32;
/// Bytes in a nonce.
pub const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read key file {path}: {error}")]
    ReadKey {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot create key file {path}: {error}")]
    CreateKey {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "key file {path} is a symbolic link: the key must be a regular file in the state directory"
    )]
    KeySymlink { path: PathBuf },
    #[error("key file {path} is owned by uid {owner}: it must belong to this daemon's uid ({euid}) or root")]
    KeyOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("key file {path} is not a regular file")]
    KeyNotFile { path: PathBuf },
    #[error("key file {path} has mode {mode:04o}; it must not be readable or writable by group or others (chmod 600)")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("key file {path} holds {len} bytes, expected {KEY_LEN}")]
    KeyLength { path: PathBuf, len: usize },
    #[error("cannot get random bytes: {0}")]
    Random(getrandom::Error),
    #[error("cannot seal the value of {what}")]
    Seal { what: String },
    #[error("cannot open the sealed value of {what}: wrong key or tampered ciphertext")]
    Open { what: String },
}

/// One key; the cipher holds the only copy after loading. Its id (a MAC of a constant under the
/// key, so it names the key without revealing it) is recorded with every row it seals.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    id: Arc<str>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({}, [redacted])", self.id)
    }
}

/// Builds the additional data of a v2 row: a domain word, then each part length-prefixed, so no
/// two different rows give the same bytes whatever their fields hold.
pub fn aad_v2(domain: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A sealed value: random nonce and ciphertext with tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The v1 additional data (kept to read and migrate v1 stores) binding a value to where it is stored: scope kind, scope and name, each
/// terminated by a NUL so no two triples give the same bytes.
pub fn aad(kind: &str, scope: &str, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(kind.len() + scope.len() + name.len() + 3);
    for part in [kind, scope, name] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

/// True when a key file exists at `path` (any error other than "not found" counts as existing,
/// so the later read reports it).
pub fn key_exists(path: &Path) -> bool {
    !matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

impl Sealer {
    /// Loads the key file without following a symbolic link, refusing one owned by anyone but
    /// this daemon's uid or root, a mode looser than 0600 and a wrong length.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let read = |error| CryptoError::ReadKey {
            path: path.to_owned(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    CryptoError::KeySymlink {
                        path: path.to_owned(),
                    }
                } else {
                    read(e)
                }
            })?;
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(CryptoError::KeyNotFile {
                path: path.to_owned(),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(CryptoError::KeyOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                euid,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyMode {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
        Read::by_ref(&mut file)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::KeyLength {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(Self::from_key(&bytes))
    }

    /// Creates a new key file of random bytes, mode 0600, failing if one already exists.
    pub fn create(path: &Path) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(key.as_mut()).map_err(CryptoError::Random)?;
        let create = |error| CryptoError::CreateKey {
            path: path.to_owned(),
            error,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create)?;
        file.write_all(key.as_ref()).map_err(create)?;
        file.sync_all().map_err(create)?;
        if let Some(dir) = path.parent() {
            // The new name must survive a crash as well as the bytes.
            File::open(dir).and_then(|d| d.sync_all()).map_err(create)?;
        }
        Ok(Self::from_key(key.as_ref()))
    }

    /// Builds a sealer from raw key bytes (exactly [`KEY_LEN`]).
    pub fn from_key(key: &[u8]) -> Self {
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key));
        let tag = cipher
            .encrypt(
                XNonce::from_slice(&[0u8; NONCE_LEN]),
                Payload {
                    msg: b"",
                    aad: b"sandbox-secrets key id",
                },
            )
            .unwrap_or_default();
        let id: String = tag.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self {
            cipher,
            id: Arc::from(id),
        }
    }

    /// The key's id: 12 hex digits, the same on every host that holds the key.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Seals `plaintext` under a fresh random nonce; `what` names the secret in errors.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8], what: &str) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(CryptoError::Random)?;
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal {
                what: what.to_owned(),
            })?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed value; a wrong key, a tampered ciphertext, nonce or AAD is an error naming
    /// `what`, never garbage.
    pub fn open(
        &self,
        sealed: &Sealed,
        aad: &[u8],
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let err = || CryptoError::Open {
            what: what.to_owned(),
        };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(err());
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| err())
    }
}

/// The keys a store can open: the active one seals, the retired ones still open rows (a restored
/// backup made before a rotation).
#[derive(Debug)]
pub struct KeyRing {
    active: Arc<Sealer>,
    all: BTreeMap<Arc<str>, Arc<Sealer>>,
}

impl KeyRing {
    pub fn new(active: Sealer) -> Self {
        let active = Arc::new(active);
        let mut all = BTreeMap::new();
        all.insert(Arc::clone(active.id()), Arc::clone(&active));
        Self { active, all }
    }
    /// Adds a key that opens rows but does not seal new ones.
    pub fn add(&mut self, key: Sealer) {
        let key = Arc::new(key);
        self.all.entry(Arc::clone(key.id())).or_insert(key);
    }
    pub fn active(&self) -> &Arc<Sealer> {
        &self.active
    }
    /// The key of `id`, or `None` when this host does not hold it.
    pub fn get(&self, id: &str) -> Option<&Arc<Sealer>> {
        self.all.get(id)
    }
    /// The key of `id`, or the reason a row sealed with it is refused (this host lacks it).
    pub fn held(&self, id: &str) -> Result<&Arc<Sealer>, String> {
        self.get(id)
            .ok_or_else(|| format!("sealed with key id {id}, which this host does not hold"))
    }
    /// Every key id this host holds.
    pub fn ids(&self) -> Vec<String> {
        self.all.keys().map(|k| k.to_string()).collect()
    }
    /// Makes `key`, already held, the active one.
    pub fn promote_shared(&mut self, key: Arc<Sealer>) {
        self.all.insert(Arc::clone(key.id()), Arc::clone(&key));
        self.active = key;
    }
    /// Makes `key` the active one; the previous one stays to open old rows.
    pub fn promote(&mut self, key: Sealer) {
        let key = Arc::new(key);
        self.all.insert(Arc::clone(key.id()), Arc::clone(&key));
        self.active = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_distinct_and_v2_aad_is_unambiguous() {
        let a = Sealer::from_key(&[7u8; KEY_LEN]);
        assert_eq!(a.id(), Sealer::from_key(&[7u8; KEY_LEN]).id());
        assert_ne!(a.id(), Sealer::from_key(&[8u8; KEY_LEN]).id());
        assert_eq!(a.id().len(), 12);
        assert_ne!(
            aad_v2("secret", &[b"ab", b"c"]),
            aad_v2("secret", &[b"a", b"bc"])
        );
        assert_ne!(aad_v2("secret", &[b"a"]), aad_v2("sandbox", &[b"a"]));
    }

    #[test]
    fn a_key_behind_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere");
        Sealer::create(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("key")).unwrap();
        let e = Sealer::load(&dir.path().join("key")).unwrap_err();
        assert!(matches!(e, CryptoError::KeySymlink { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let s = Sealer::from_key(&[7u8; KEY_LEN]);
        let a = aad("user", "mona", "TOKEN");
        let x = s.seal(b"v4lue", &a, "TOKEN").unwrap();
        let y = s.seal(b"v4lue", &a, "TOKEN").unwrap();
        assert_ne!(x.nonce, y.nonce);
        assert_ne!(x.ciphertext, y.ciphertext);
        assert_eq!(&s.open(&x, &a, "TOKEN").unwrap()[..], b"v4lue");
    }

    #[test]
    fn swapped_tampered_or_wrong_key_is_refused_by_name() {
        let s = Sealer::from_key(&[7u8; KEY_LEN]);
        let a = aad("user", "mona", "TOKEN");
        let x = s.seal(b"v4lue", &a, "TOKEN").unwrap();
        for other in [
            aad("user", "mona", "OTHER"),
            aad("user", "hubot", "TOKEN"),
            aad("repo", "mona", "TOKEN"),
            aad("user", "mon", "aTOKEN"),
        ] {
            let e = s.open(&x, &other, "TOKEN").unwrap_err().to_string();
            assert!(e.contains("TOKEN") && !e.contains("v4lue"), "{e}");
        }
        let mut t = x.clone();
        t.ciphertext[0] ^= 1;
        assert!(s.open(&t, &a, "TOKEN").is_err());
        let mut t = x.clone();
        t.nonce[3] ^= 1;
        assert!(s.open(&t, &a, "TOKEN").is_err());
        let mut t = x.clone();
        t.nonce.pop();
        assert!(s.open(&t, &a, "TOKEN").is_err());
        let wrong = Sealer::from_key(&[8u8; KEY_LEN]);
        assert!(wrong.open(&x, &a, "TOKEN").is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_loose_modes_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let made = Sealer::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            Sealer::create(&path).is_err(),
            "create_new must not overwrite"
        );
        let loaded = Sealer::load(&path).unwrap();
        let a = aad("repo", "o/r", "X");
        let x = made.seal(b"abc", &a, "X").unwrap();
        assert_eq!(&loaded.open(&x, &a, "X").unwrap()[..], b"abc");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Sealer::load(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Sealer::load(&path).is_ok());
        std::fs::write(dir.path().join("short"), [1u8; 31]).unwrap();
        std::fs::set_permissions(
            dir.path().join("short"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            Sealer::load(&dir.path().join("short")),
            Err(CryptoError::KeyLength { len: 31, .. })
        ));
    }
}
