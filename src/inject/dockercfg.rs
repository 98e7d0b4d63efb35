//! Docker registry credentials: `<ID>_CONTAINER_REGISTRY_SERVER/_USER/_PASSWORD` triplets become
//! `auths` entries merged into `config.json`. Owns server normalisation, triplet grouping, the
//! merge and the atomic write; it never logs a user name, password or `auth` string, and never
//! drops an existing file silently. The read-merge-write runs with the target user's
//! filesystem identity (`setfsuid`/`setfsgid`, no supplementary groups): a root init never reads
//! for the target what the target could not read, nor writes where the target could not.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::spill;
use crate::protocol::ScrubbedJson;

/// Suffixes of the three parts of a triplet, in the order they are reported.
pub const SERVER_SUFFIX: &str = "_CONTAINER_REGISTRY_SERVER";
pub const USER_SUFFIX: &str = "_CONTAINER_REGISTRY_USER";
pub const PASSWORD_SUFFIX: &str = "_CONTAINER_REGISTRY_PASSWORD";
/// Docker Hub's key in `auths`, the one the docker CLI looks up for hub images.
pub const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// Normalises a registry server for `auths`: surrounding whitespace, an `http://` or `https://`
/// scheme (any case) and trailing slashes are stripped, the host (with its port) is lower-cased,
/// a path is kept. Docker Hub under any of its names (`docker.io`, `index.docker.io`,
/// `registry-1.docker.io`, bare or with `/v1`) becomes [`DOCKER_HUB`]. `None` for an empty
/// server or one with whitespace or control characters inside.
pub fn normalize_registry(server: &str) -> Option<String> {
    let s = server.trim();
    let lower = s.to_ascii_lowercase();
    let s = if lower.starts_with("https://") {
        &s["https://".len()..]
    } else if lower.starts_with("http://") {
        &s["http://".len()..]
    } else {
        s
    };
    let s = s.trim_end_matches('/');
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    if host.is_empty() {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let hub = matches!(
        host.as_str(),
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    if hub && (path.is_empty() || path.eq_ignore_ascii_case("/v1")) {
        return Some(DOCKER_HUB.to_owned());
    }
    Some(format!("{host}{path}"))
}

/// The host part docker and credential helpers key on: scheme and path dropped, lower-cased.
fn hostname(server: &str) -> String {
    let lower = server.trim().to_ascii_lowercase();
    let s = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    s.split('/').next().unwrap_or("").to_owned()
}

/// A complete triplet: indices into the names it was grouped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    pub id: String,
    pub server: usize,
    pub user: usize,
    pub password: usize,
}

/// Groups names into triplets by their `<ID>` (sorted by ID). Incomplete groups come back as
/// warnings naming each missing variable.
pub fn group_triplets(names: &[&str]) -> (Vec<Triplet>, Vec<String>) {
    let mut groups: BTreeMap<&str, [Option<usize>; 3]> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        for (part, suffix) in [SERVER_SUFFIX, USER_SUFFIX, PASSWORD_SUFFIX]
            .iter()
            .enumerate()
        {
            if let Some(id) = name.strip_suffix(suffix) {
                if !id.is_empty() {
                    groups.entry(id).or_default()[part] = Some(i);
                }
            }
        }
    }
    let mut complete = Vec::new();
    let mut warnings = Vec::new();
    for (id, parts) in groups {
        match parts {
            [Some(server), Some(user), Some(password)] => complete.push(Triplet {
                id: id.to_owned(),
                server,
                user,
                password,
            }),
            _ => {
                let missing: Vec<String> = [SERVER_SUFFIX, USER_SUFFIX, PASSWORD_SUFFIX]
                    .iter()
                    .zip(parts)
                    .filter(|(_, p)| p.is_none())
                    .map(|(suffix, _)| format!("{id}{suffix}"))
                    .collect();
                warnings.push(format!(
                    "{} missing: registry credentials for {id} not written",
                    missing.join(", ")
                ));
            }
        }
    }
    (complete, warnings)
}

/// One `auths` entry to write. The `auth` string is zeroized on drop.
pub struct Entry {
    pub id: String,
    pub server: String,
    pub auth: Zeroizing<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("server", &self.server)
            .field("auth", &"[redacted]")
            .finish()
    }
}

/// `base64(user:password)` (standard alphabet, padded), built in zeroized buffers of exact
/// size. Written out here rather than with the `base64` crate: a smaller static init.
pub fn basic_auth(user: &str, password: &str) -> Zeroizing<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut plain = Zeroizing::new(Vec::with_capacity(user.len() + 1 + password.len()));
    plain.extend_from_slice(user.as_bytes());
    plain.push(b':');
    plain.extend_from_slice(password.as_bytes());
    let mut out = Zeroizing::new(String::with_capacity(plain.len().div_ceil(3) * 4));
    for chunk in plain.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Turns the secrets into entries: triplets grouped, servers normalised, checked. Returns the
/// entries (one per server; a later ID wins) and warnings, none holding a value.
pub fn entries(secrets: &[(&str, &SecretString)]) -> (Vec<Entry>, Vec<String>) {
    let names: Vec<&str> = secrets.iter().map(|(n, _)| *n).collect();
    let (triplets, mut warnings) = group_triplets(&names);
    let mut out: Vec<Entry> = Vec::new();
    for t in triplets {
        let server_name = secrets[t.server].0;
        let Some(server) = normalize_registry(secrets[t.server].1.expose_secret()) else {
            warnings.push(format!(
                "{server_name} is not a registry server (empty, or holds whitespace): \
                 registry credentials for {} not written",
                t.id
            ));
            continue;
        };
        let user = secrets[t.user].1.expose_secret();
        if user.is_empty() || user.contains(':') {
            warnings.push(format!(
                "{} is empty or holds ':': registry credentials for {} not written",
                secrets[t.user].0, t.id
            ));
            continue;
        }
        let auth = basic_auth(user, secrets[t.password].1.expose_secret());
        if let Some(prev) = out.iter_mut().find(|e| e.server == server) {
            warnings.push(format!(
                "{} and {} give credentials for the same registry server: {} wins",
                prev.id, t.id, t.id
            ));
            prev.id = t.id;
            prev.auth = auth;
        } else {
            out.push(Entry {
                id: t.id,
                server,
                auth,
            });
        }
    }
    (out, warnings)
}

/// A parsed `config.json` whose strings (other registries' `auth` among them) are zeroized when
/// it is dropped.
pub struct Config(pub Map<String, Value>);

impl Drop for Config {
    fn drop(&mut self) {
        drop(ScrubbedJson(Value::Object(std::mem::take(&mut self.0))));
    }
}

/// Merges `entries` into `config.auths` (other keys and entries kept; an entry for the same
/// server is replaced, also under a different spelling of it) and returns warnings for a
/// `credsStore` or `credHelpers` entry that docker would consult instead.
pub fn merge(config: &mut Map<String, Value>, entries: &[Entry], path: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(store) = config.get("credsStore").and_then(Value::as_str) {
        if !store.is_empty() {
            warnings.push(format!(
                "{} sets credsStore {store:?}: docker asks that helper first, so it may shadow \
                 the registry credentials written to auths",
                path.display()
            ));
        }
    }
    if let Some(helpers) = config.get("credHelpers").and_then(Value::as_object) {
        for e in entries {
            let host = hostname(&e.server);
            if let Some((key, helper)) = helpers.iter().find(|(k, _)| hostname(k) == host) {
                warnings.push(format!(
                    "{} sets credHelpers[{key:?}] = {helper}: it shadows the registry \
                     credentials of {}",
                    path.display(),
                    e.id,
                ));
            }
        }
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let Value::Object(auths) = auths else {
        unreachable!("auths was just made an object")
    };
    for e in entries {
        // Another spelling of the same server (`https://Reg.example/`) would make docker pick
        // either; the new entry replaces it.
        let same: Vec<String> = auths
            .keys()
            .filter(|k| {
                k.as_str() != e.server && normalize_registry(k).as_deref() == Some(&e.server)
            })
            .cloned()
            .collect();
        for k in same {
            if let Some(mut old) = auths.remove(&k) {
                scrub_value(&mut old);
            }
        }
        let mut entry = Map::new();
        entry.insert("auth".into(), Value::String(e.auth.as_str().to_owned()));
        if let Some(mut old) = auths.insert(e.server.clone(), Value::Object(entry)) {
            scrub_value(&mut old);
        }
    }
    warnings
}

fn scrub_value(v: &mut Value) {
    drop(ScrubbedJson(std::mem::take(v)));
}

/// Where `config.json` goes: `$DOCKER_CONFIG` (from the child's inherited environment) when set
/// and non-empty, else `<home>/.docker`.
pub fn config_dir(docker_config: Option<&std::ffi::OsStr>, home: &Path) -> (PathBuf, bool) {
    match docker_config {
        Some(d) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (home.join(".docker"), false),
    }
}

/// What [`write_config`] did.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub warnings: Vec<String>,
}

/// Why `config.json` could not be written. Names the path and the step, never content.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot take the filesystem identity of uid {uid} to write its docker config")]
    Identity { uid: u32, source: io::Error },
    #[error("cannot prepare docker config directory {} as uid {uid}", path.display())]
    Dir {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
    #[error(
        "docker config directory {} belongs to uid {owner}, not to the target uid {uid}: \
         credentials are only written into a directory the target owns (set DOCKER_CONFIG to one)",
        path.display()
    )]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("cannot read {} as uid {uid}", path.display())]
    Read {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
    #[error("cannot keep corrupt {} aside", path.display())]
    KeepAside { path: PathBuf, source: io::Error },
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot serialise {}", path.display())]
    Serialise {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The init's filesystem identity while it works on the target's docker config: the target's
/// uid and gid, no supplementary groups (the kernel then drops the init's `CAP_DAC_OVERRIDE`,
/// `CAP_FOWNER` and `CAP_CHOWN` for file access). Only switched when the init is root and the
/// target is not; restored on drop. The fs ids are per thread; the groups are the process's (libc
/// sets them on every thread), which the `--on-change` watcher thread may change while the
/// command restarts: harmless, as this only switches with `--user`, and then the child sets its
/// groups from scratch.
struct AsTarget {
    saved_groups: Option<Vec<Gid>>,
    /// The thread's parent-death signal (tini `-p`): the kernel clears it when the filesystem
    /// ids change, so it is set again when they are restored.
    pdeathsig: i32,
}

impl AsTarget {
    fn enter(uid: u32, gid: u32) -> io::Result<AsTarget> {
        if !nix::unistd::geteuid().is_root() || uid == 0 {
            return Ok(AsTarget {
                saved_groups: None,
                pdeathsig: 0,
            });
        }
        let pdeathsig = crate::sys::pdeathsig().unwrap_or(0);
        let saved = nix::unistd::getgroups()?;
        nix::unistd::setgroups(&[])?;
        let guard = AsTarget {
            saved_groups: Some(saved),
            pdeathsig,
        };
        nix::unistd::setfsgid(Gid::from_raw(gid));
        nix::unistd::setfsuid(Uid::from_raw(uid));
        // Both calls return the previous id and report no error: ask again to see it took.
        let (fsuid, fsgid) = (
            nix::unistd::setfsuid(Uid::from_raw(uid)),
            nix::unistd::setfsgid(Gid::from_raw(gid)),
        );
        if fsuid.as_raw() != uid || fsgid.as_raw() != gid {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(guard)
    }
}

impl Drop for AsTarget {
    fn drop(&mut self) {
        if let Some(groups) = self.saved_groups.take() {
            nix::unistd::setfsuid(nix::unistd::geteuid());
            nix::unistd::setfsgid(nix::unistd::getegid());
            // Cannot fail for root (CAP_SETGID is not a filesystem capability); the privilege
            // drop sets the child's groups from scratch anyway.
            let _ = nix::unistd::setgroups(&groups);
            if self.pdeathsig != 0 {
                let _ = crate::sys::set_pdeathsig(self.pdeathsig);
            }
        }
    }
}

/// Merges `entries` into `dir/config.json` for `uid:gid` as files (`auths`), see
/// [`write_config_as`].
pub fn write_config(
    dir: &Path,
    entries: &[Entry],
    uid: u32,
    gid: u32,
) -> Result<Written, ConfigError> {
    write_config_as(dir, entries, uid, gid, CredentialMode::File)
}

/// How registry credentials reach docker (`--registry-credentials`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialMode {
    /// `auths[server] = {"auth": base64(user:password)}` in `config.json` (the default).
    #[default]
    File,
    /// `credHelpers[host] = "sandbox"`: docker runs `docker-credential-sandbox get`, which asks
    /// the sandbox socket each time; no password in any file.
    Helper,
}

impl std::str::FromStr for CredentialMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(CredentialMode::File),
            "helper" => Ok(CredentialMode::Helper),
            other => Err(format!("{other:?} is not one of file, helper")),
        }
    }
}

/// The helper's name in `credHelpers` (docker runs `docker-credential-<name>`).
pub const HELPER_NAME: &str = "sandbox";
/// The file beside `config.json` recording which of its entries sandbox-init wrote: `auth
/// <server fingerprint> <auth fingerprint>` and `helper <host fingerprint>` lines (no server
/// name: a server is a secret's value too). Only those entries are ever removed, and an `auths`
/// entry only while it still holds what sandbox-init wrote (a `docker login` since then made it
/// the user's).
pub const OURS_MANIFEST: &str = "config.json.sandbox-init";

/// What sandbox-init wrote into a `config.json`, by [`OURS_MANIFEST`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ours {
    /// Fingerprint of an `auths` server -> fingerprint of the `auth` string written
    /// ([`fingerprint`]).
    pub auths: BTreeMap<String, String>,
    /// Fingerprints of the `credHelpers` hosts set to [`HELPER_NAME`].
    pub helpers: Vec<String>,
}

impl Ours {
    /// Reads the manifest's lines; anything else is ignored.
    pub fn parse(text: &str) -> Ours {
        let mut ours = Ours::default();
        for line in text.lines() {
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("auth"), Some(server), Some(fp), None) if !server.is_empty() => {
                    ours.auths.insert(server.to_owned(), fp.to_owned());
                }
                (Some("helper"), Some(host), None, None) if !host.is_empty() => {
                    ours.helpers.push(host.to_owned())
                }
                _ => {}
            }
        }
        ours
    }

    /// The manifest's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (server, fp) in &self.auths {
            out.push_str(&format!("auth {server} {fp}\n"));
        }
        for host in &self.helpers {
            out.push_str(&format!("helper {host}\n"));
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.auths.is_empty() && self.helpers.is_empty()
    }
}

/// A fingerprint of a server name or an `auth` string (FNV-1a, 64 bits, hex): enough to know an
/// entry again and to see that it still holds what sandbox-init wrote. It sits beside the file
/// that holds the strings themselves, and goes with them.
pub fn fingerprint(auth: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in auth.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Brings `config` to `entries` in `mode`, given what sandbox-init wrote before (`ours`), and
/// returns what it owns now, with warnings. File mode merges `entries` into `auths` ([`merge`]);
/// helper mode sets `credHelpers[host] = "sandbox"` and writes no password. In both, an entry of
/// ours that is no longer wanted is removed (an `auths` entry only while it holds what we
/// wrote, a `credHelpers` entry only while it names our helper); nothing else is touched.
pub fn reconcile(
    config: &mut Map<String, Value>,
    entries: &[Entry],
    mode: CredentialMode,
    ours: &Ours,
    path: &Path,
) -> (Ours, Vec<String>) {
    let mut now = Ours::default();
    let mut warnings = Vec::new();
    let file = mode == CredentialMode::File;
    if let Some(Value::Object(auths)) = config.get_mut("auths") {
        let stale: Vec<String> = auths
            .iter()
            .filter(|(server, v)| {
                let wanted = file && entries.iter().any(|e| &e.server == *server);
                let held = v.get("auth").and_then(Value::as_str).map(fingerprint);
                !wanted && held.is_some() && ours.auths.get(&fingerprint(server)) == held.as_ref()
            })
            .map(|(server, _)| server.clone())
            .collect();
        for server in stale {
            if let Some(mut old) = auths.remove(&server) {
                scrub_value(&mut old);
            }
        }
    }
    if file {
        warnings = merge(config, entries, path);
        for e in entries {
            now.auths
                .insert(fingerprint(&e.server), fingerprint(&e.auth));
        }
    }
    let wanted: Vec<String> = if file {
        Vec::new()
    } else {
        entries.iter().map(|e| hostname(&e.server)).collect()
    };
    if !ours.helpers.is_empty() || !wanted.is_empty() {
        let helpers = config
            .entry("credHelpers")
            .or_insert_with(|| Value::Object(Map::new()));
        if !helpers.is_object() {
            *helpers = Value::Object(Map::new());
        }
        if let Value::Object(helpers) = helpers {
            let stale: Vec<String> = helpers
                .iter()
                .filter(|(host, v)| {
                    v.as_str() == Some(HELPER_NAME)
                        && !wanted.contains(host)
                        && ours.helpers.contains(&fingerprint(host))
                })
                .map(|(host, _)| host.clone())
                .collect();
            for host in stale {
                helpers.remove(&host);
            }
            for host in &wanted {
                if let Some(other) = helpers.get(host).and_then(Value::as_str) {
                    if other != HELPER_NAME {
                        warnings.push(format!(
                            "{} sets credHelpers[{host:?}] = {other:?}: replaced by {HELPER_NAME:?} \
                             (--registry-credentials helper)",
                            path.display()
                        ));
                    }
                }
                helpers.insert(host.clone(), Value::String(HELPER_NAME.into()));
            }
            if helpers.is_empty() {
                config.remove("credHelpers");
            }
        }
        now.helpers = wanted.iter().map(|h| fingerprint(h)).collect();
    }
    (now, warnings)
}

/// Brings `dir/config.json` for `uid:gid` to `entries` in `mode` ([`reconcile`]), as that user
/// (see [`AsTarget`]): directories missing on the way are created as the target (so only where
/// it may), the directory must belong to the target and is made 0700, the file is replaced
/// atomically, 0600, owned by them, and only when its content changes; then [`OURS_MANIFEST`]
/// beside it, the same way. A directory of anyone else (`/etc`, `/etc/docker`, another user's
/// `.docker`) is refused, and so is a `config.json` the target cannot read: the init never
/// hands the target what it could not reach itself. A corrupt file (not JSON, not an object,
/// `auths` not an object, a symlink) is renamed to `config.json.corrupt-<unix-ts>` with a
/// warning.
pub fn write_config_as(
    dir: &Path,
    entries: &[Entry],
    uid: u32,
    gid: u32,
    mode: CredentialMode,
) -> Result<Written, ConfigError> {
    let mut warnings = Vec::new();
    let dir_err = |source| ConfigError::Dir {
        path: dir.to_owned(),
        uid,
        source,
    };
    let _as_target =
        AsTarget::enter(uid, gid).map_err(|source| ConfigError::Identity { uid, source })?;
    // Opened once, never through a symlink at its last component; directories created on the
    // way belong to the target. Every step below goes through this descriptor.
    let d = spill::open_dir(dir, true, Some((uid, gid))).map_err(dir_err)?;
    let meta = d.stat().map_err(dir_err)?;
    if meta.st_uid != uid {
        return Err(ConfigError::NotOwned {
            path: dir.to_owned(),
            owner: meta.st_uid,
            uid,
        });
    }
    d.make_private(uid, gid).map_err(dir_err)?;
    let path = dir.join("config.json");
    let mut existed = true;
    let mut config = match read_existing(&d) {
        Ok(Some(c)) => c,
        Ok(None) => {
            existed = false;
            Config(Map::new())
        }
        Err(Corrupt::Io(source)) => {
            return Err(ConfigError::Read {
                path: path.clone(),
                uid,
                source,
            })
        }
        Err(Corrupt::Bad(why)) => {
            let aside = keep_aside(&d, uid).map_err(|source| ConfigError::KeepAside {
                path: path.clone(),
                source,
            })?;
            warnings.push(format!(
                "{} is corrupt ({why}); kept it as {} and started a new one",
                path.display(),
                aside.display()
            ));
            existed = false;
            Config(Map::new())
        }
    };
    let ours = read_ours(&d, uid);
    let serialise_err = |source| ConfigError::Serialise {
        path: path.clone(),
        source,
    };
    let before = if existed {
        Some(serialise(&config.0).map_err(serialise_err)?)
    } else {
        None
    };
    let (now, more) = reconcile(&mut config.0, entries, mode, &ours, &path);
    warnings.extend(more);
    let bytes = serialise(&config.0).map_err(serialise_err)?;
    // Unchanged content is not written again (no fsync), unless the file is not yet 0600 and
    // the target's.
    let private = || {
        nix::sys::stat::fstatat(Some(d.raw()), CONFIG, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & 0o7777 == 0o600 && st.st_uid == uid)
    };
    let changed = !(before
        .as_ref()
        .is_some_and(|b| b.as_slice() == bytes.as_slice())
        && private());
    if changed && (existed || !config.0.is_empty()) {
        // Synced only when the file held the user's own entries: a crash must not lose them. A
        // file that is ours alone is rewritten by the next start if a crash leaves it empty or
        // short (it is then corrupt, kept aside and written anew), so it costs no fsync.
        let write = if existed {
            spill::write_atomic
        } else {
            spill::write_atomic_unsynced
        };
        write(&d, CONFIG, &bytes, 0o600, uid, gid).map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if now != ours {
        let written = if now.is_empty() {
            match nix::unistd::unlinkat(
                Some(d.raw()),
                OURS_MANIFEST,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(io::Error::from(e)),
            }
        } else {
            // Not synced: lost in a crash, it only makes sandbox-init forget what it wrote
            // (nothing is removed then), and a start saves an fsync.
            spill::write_atomic_unsynced(
                &d,
                OURS_MANIFEST,
                now.render().as_bytes(),
                0o600,
                uid,
                gid,
            )
            .map(drop)
        };
        written.map_err(|source| ConfigError::Write {
            path: dir.join(OURS_MANIFEST),
            source,
        })?;
    }
    Ok(Written { path, warnings })
}

/// What [`OURS_MANIFEST`] in `d` records, believed only from a regular file of the target
/// (`uid`), the owner of the directory and of `config.json` itself; else nothing is ours.
fn read_ours(d: &spill::Dir, uid: u32) -> Ours {
    match open_regular(d, OURS_MANIFEST) {
        Ok(Some((mut file, len))) if len <= 64 * 1024 => {
            let owned = nix::sys::stat::fstat(file.as_raw_fd()).is_ok_and(|st| st.st_uid == uid);
            let mut text = String::new();
            if owned && file.read_to_string(&mut text).is_ok() {
                Ours::parse(&text)
            } else {
                Ours::default()
            }
        }
        _ => Ours::default(),
    }
}

/// Whether `dir` holds an [`OURS_MANIFEST`] (one `lstat`): with no registry triplet now, the
/// config is only worth reading when sandbox-init wrote into it before.
pub fn has_ours(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(OURS_MANIFEST)).is_ok()
}

const CONFIG: &str = "config.json";

enum Corrupt {
    Io(io::Error),
    Bad(String),
}

/// Opens `name` in `d` without following a symlink and without blocking (a FIFO planted there
/// must not hang PID 1); only a regular file with no other hard link is read.
fn open_regular(d: &spill::Dir, name: &str) -> Result<Option<(fs::File, u64)>, Corrupt> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(Some(d.raw()), name, flags, Mode::empty()) {
        Ok(fd) => crate::sys::own_fd(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(Corrupt::Bad("a symlink".into())),
        Err(e) => return Err(Corrupt::Io(e.into())),
    };
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| Corrupt::Io(e.into()))?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(Corrupt::Bad("not a regular file".into()));
    }
    if st.st_nlink > 1 {
        return Err(Corrupt::Bad("it has other hard links".into()));
    }
    Ok(Some((fs::File::from(fd), st.st_size as u64)))
}

fn read_existing(d: &spill::Dir) -> Result<Option<Config>, Corrupt> {
    let Some((mut file, len)) = open_regular(d, CONFIG)? else {
        return Ok(None);
    };
    let len = len as usize;
    let mut raw = Zeroizing::new(Vec::with_capacity(len + 1));
    // Never grow past the preallocation: a file that grows while read is read in part only.
    (&mut file)
        .take(len as u64)
        .read_to_end(&mut raw)
        .map_err(Corrupt::Io)?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(&raw).map_err(|e| Corrupt::Bad(format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        let mut value = value;
        scrub_value(&mut value);
        return Err(Corrupt::Bad("not a JSON object".into()));
    };
    let config = Config(map);
    if config.0.get("auths").is_some_and(|a| !a.is_object()) {
        return Err(Corrupt::Bad("auths is not an object".into()));
    }
    Ok(Some(config))
}

/// Renames `config.json` to a free `config.json.corrupt-<ts>[-n]` within `d` and, when it is a
/// regular file of `uid`'s, makes it 0600 through its own descriptor.
fn keep_aside(d: &spill::Dir, uid: u32) -> io::Result<PathBuf> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{CONFIG}.corrupt-{ts}");
    for n in 0..100 {
        let aside = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        match nix::sys::stat::fstatat(Some(d.raw()), aside.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => {}
            Ok(_) => continue,
            Err(e) => return Err(e.into()),
        }
        nix::fcntl::renameat(Some(d.raw()), CONFIG, Some(d.raw()), aside.as_str())?;
        // Keep it as private as the file it replaces is going to be.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        if let Ok(fd) = nix::fcntl::openat(Some(d.raw()), aside.as_str(), flags, Mode::empty()) {
            let fd = crate::sys::own_fd(fd);
            if nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| {
                st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() && st.st_uid == uid
            }) {
                let _ = nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o600));
            }
        }
        return Ok(d.path().join(aside));
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many corrupt copies kept aside",
    ))
}

/// Serialises into one zeroized buffer of exactly the right size, so no reallocation leaves a
/// copy of an `auth` string behind.
fn serialise(config: &Map<String, Value>) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, config)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0 + 1));
    serde_json::to_writer(&mut *out, config)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_matches_standard_base64_for_every_length_and_byte() {
        use base64::Engine as _;
        let std64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(basic_auth("", "").as_str(), "Og==");
        assert_eq!(basic_auth("mona", "pw").as_str(), std64("mona:pw"));
        for len in 0..12 {
            let pw: String = "é✓\u{0}~\u{7f}xyz🦀".chars().cycle().take(len).collect();
            assert_eq!(
                basic_auth("u", &pw).as_str(),
                std64(&format!("u:{pw}")),
                "{len}"
            );
        }
        let all: String = (0u8..128).map(char::from).collect();
        assert_eq!(
            basic_auth(&all, &all).as_str(),
            std64(&format!("{all}:{all}"))
        );
    }

    #[test]
    fn registry_servers_normalise() {
        let cases = [
            ("ghcr.io", "ghcr.io"),
            ("GHCR.IO", "ghcr.io"),
            ("https://ghcr.io", "ghcr.io"),
            ("https://ghcr.io/", "ghcr.io"),
            ("HTTPS://GHCR.io//", "ghcr.io"),
            ("http://ghcr.io", "ghcr.io"),
            ("  ghcr.io \n", "ghcr.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
            ("Registry.Example.COM:8443", "registry.example.com:8443"),
            (
                "registry.example.com/Team/Path/",
                "registry.example.com/Team/Path",
            ),
            (
                "https://Registry.example.com/v2/",
                "registry.example.com/v2",
            ),
            ("[::1]:5000", "[::1]:5000"),
            ("docker.io", DOCKER_HUB),
            ("DOCKER.IO", DOCKER_HUB),
            ("https://docker.io/", DOCKER_HUB),
            ("index.docker.io", DOCKER_HUB),
            ("https://index.docker.io/v1/", DOCKER_HUB),
            ("https://index.docker.io/v1", DOCKER_HUB),
            ("http://Index.Docker.IO/V1/", DOCKER_HUB),
            ("registry-1.docker.io", DOCKER_HUB),
            ("https://registry-1.docker.io/", DOCKER_HUB),
            ("registry-1.docker.io/v1/", DOCKER_HUB),
            ("docker.io/v1", DOCKER_HUB),
            // Not Hub: other paths, ports, look-alike hosts stay as they are.
            ("docker.io/library", "docker.io/library"),
            ("docker.io:443", "docker.io:443"),
            ("mydocker.io", "mydocker.io"),
            ("docker.io.evil.example", "docker.io.evil.example"),
            ("index.docker.io/v2/", "index.docker.io/v2"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_registry(raw).as_deref(), Some(want), "{raw:?}");
        }
        for bad in [
            "",
            "   ",
            "/",
            "https://",
            "http:///",
            "https:///path",
            "a b",
            "a\tb",
            "a\u{0}b",
            "reg\u{7f}",
        ] {
            assert_eq!(normalize_registry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn normalising_is_idempotent() {
        for raw in ["HTTPS://Reg.Example:5000/p/", "docker.io", "ghcr.io/x"] {
            let once = normalize_registry(raw).unwrap();
            assert_eq!(normalize_registry(&once).as_deref(), Some(once.as_str()));
        }
    }

    #[test]
    fn triplets_group_by_id_and_incomplete_ones_name_what_is_missing() {
        let names = [
            "ACME_CONTAINER_REGISTRY_SERVER",
            "OTHER",
            "ACME_CONTAINER_REGISTRY_PASSWORD",
            "ACME_CONTAINER_REGISTRY_USER",
            "HALF_CONTAINER_REGISTRY_SERVER",
            "HALF_CONTAINER_REGISTRY_USER",
            "LONE_CONTAINER_REGISTRY_PASSWORD",
            "A_B_CONTAINER_REGISTRY_SERVER",
            "A_B_CONTAINER_REGISTRY_USER",
            "A_B_CONTAINER_REGISTRY_PASSWORD",
            "CONTAINER_REGISTRY_SERVER",
            "X_CONTAINER_REGISTRY_SERVERS",
        ];
        let (complete, warnings) = group_triplets(&names);
        assert_eq!(
            complete,
            vec![
                Triplet {
                    id: "ACME".into(),
                    server: 0,
                    user: 3,
                    password: 2
                },
                Triplet {
                    id: "A_B".into(),
                    server: 7,
                    user: 8,
                    password: 9
                },
            ]
        );
        assert_eq!(
            warnings,
            vec![
                "HALF_CONTAINER_REGISTRY_PASSWORD missing: registry credentials for HALF not \
                 written",
                "LONE_CONTAINER_REGISTRY_SERVER, LONE_CONTAINER_REGISTRY_USER missing: registry \
                 credentials for LONE not written",
            ]
        );
        assert_eq!(group_triplets(&[]), (vec![], vec![]));
    }

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn entries_encode_basic_auth_and_check_values() {
        use base64::Engine as _;
        let (srv, usr, pw) = (s("HTTPS://Reg.Example/"), s("mona"), s("pa:ss wörd"));
        let (bad_srv, bad_usr) = (s(" "), s("a:b"));
        let secrets = vec![
            ("A_CONTAINER_REGISTRY_SERVER", &srv),
            ("A_CONTAINER_REGISTRY_USER", &usr),
            ("A_CONTAINER_REGISTRY_PASSWORD", &pw),
            ("B_CONTAINER_REGISTRY_SERVER", &bad_srv),
            ("B_CONTAINER_REGISTRY_USER", &usr),
            ("B_CONTAINER_REGISTRY_PASSWORD", &pw),
            ("C_CONTAINER_REGISTRY_SERVER", &srv),
            ("C_CONTAINER_REGISTRY_USER", &bad_usr),
            ("C_CONTAINER_REGISTRY_PASSWORD", &pw),
        ];
        let (entries, warnings) = entries(&secrets);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].server, "reg.example");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(entries[0].auth.as_bytes())
                .unwrap(),
            "mona:pa:ss wörd".as_bytes()
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("B_CONTAINER_REGISTRY_SERVER is not"));
        assert!(warnings[1].starts_with("C_CONTAINER_REGISTRY_USER is empty or holds ':'"));
        let all = warnings.join("\n") + &format!("{entries:?}");
        assert!(!all.contains("pa:ss") && !all.contains("mona"), "{all}");
    }

    #[test]
    fn two_ids_for_one_server_the_later_wins_with_a_warning() {
        let (srv, srv2, u1, u2, pw) = (
            s("ghcr.io"),
            s("https://GHCR.io/"),
            s("one"),
            s("two"),
            s("p"),
        );
        let secrets = vec![
            ("A_CONTAINER_REGISTRY_SERVER", &srv),
            ("A_CONTAINER_REGISTRY_USER", &u1),
            ("A_CONTAINER_REGISTRY_PASSWORD", &pw),
            ("B_CONTAINER_REGISTRY_SERVER", &srv2),
            ("B_CONTAINER_REGISTRY_USER", &u2),
            ("B_CONTAINER_REGISTRY_PASSWORD", &pw),
        ];
        let (entries, warnings) = entries(&secrets);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].auth.as_str(), basic_auth("two", "p").as_str());
        assert_eq!(
            warnings,
            vec!["A and B give credentials for the same registry server: B wins"]
        );
    }

    fn entry(server: &str, auth: &str) -> Entry {
        Entry {
            id: "ID".into(),
            server: server.into(),
            auth: Zeroizing::new(auth.into()),
        }
    }

    #[test]
    fn merge_keeps_others_replaces_spellings_and_warns_on_shadowing() {
        let mut config: Map<String, Value> = serde_json::from_str(
            r#"{"auths":{"other.example":{"auth":"b3RoZXI="},"https://Reg.Example/":{"auth":"old"},
                "reg.example":{"auth":"old2"}},
               "credsStore":"desktop","credHelpers":{"https://reg.example":"ecr-login","gcr.io":"gcloud"},
               "proxies":{"default":{}}}"#,
        )
        .unwrap();
        let warnings = merge(
            &mut config,
            &[entry("reg.example", "bmV3")],
            Path::new("/h/.docker/config.json"),
        );
        let auths = config["auths"].as_object().unwrap();
        assert_eq!(auths.len(), 2, "{auths:?}");
        assert_eq!(auths["other.example"]["auth"], "b3RoZXI=");
        assert_eq!(auths["reg.example"]["auth"], "bmV3");
        assert!(config.contains_key("proxies"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("credsStore \"desktop\""),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].contains("credHelpers[\"https://reg.example\"]"),
            "{}",
            warnings[1]
        );

        // No auths yet, an empty credsStore: no warning.
        let mut config: Map<String, Value> = serde_json::from_str(r#"{"credsStore":""}"#).unwrap();
        assert!(merge(&mut config, &[entry(DOCKER_HUB, "eA==")], Path::new("c")).is_empty());
        assert_eq!(config["auths"][DOCKER_HUB]["auth"], "eA==");
    }

    #[test]
    fn reconcile_removes_only_what_it_wrote_and_still_holds_and_helper_mode_writes_no_password() {
        let path = Path::new("/h/.docker/config.json");
        let mut config: Map<String, Value> = serde_json::from_str(
            r#"{"auths":{"theirs.example":{"auth":"dGhlaXJz"}},"credHelpers":{"gcr.io":"gcloud"}}"#,
        )
        .unwrap();
        // File mode: two entries of ours.
        let (ours, _) = reconcile(
            &mut config,
            &[entry("a.example", "YTox"), entry("b.example", "Yjox")],
            CredentialMode::File,
            &Ours::default(),
            path,
        );
        assert_eq!(ours.auths.len(), 2);
        assert_eq!(
            Ours::parse(&ours.render()),
            ours,
            "the manifest round-trips"
        );
        // A rotation replaces ours; the user re-logs into b by hand (b is theirs from now on).
        config["auths"]["b.example"] = serde_json::json!({"auth": "YnktaGFuZA=="});
        let (ours, _) = reconcile(
            &mut config,
            &[entry("a.example", "YToy")],
            CredentialMode::File,
            &ours,
            path,
        );
        let auths = config["auths"].as_object().unwrap();
        assert_eq!(auths["a.example"]["auth"], "YToy");
        assert_eq!(
            auths["b.example"]["auth"], "YnktaGFuZA==",
            "not ours any more: kept"
        );
        assert_eq!(auths["theirs.example"]["auth"], "dGhlaXJz");
        let fp = fingerprint("a.example");
        assert_eq!(ours.auths.keys().collect::<Vec<_>>(), [&fp]);
        assert!(
            !ours.render().contains("example"),
            "no server name in the manifest"
        );
        // Helper mode: our auths entry goes, credHelpers names our helper, no password written.
        let (ours, warnings) = reconcile(
            &mut config,
            &[entry("a.example", "YToz")],
            CredentialMode::Helper,
            &ours,
            path,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(config["auths"].get("a.example").is_none());
        assert_eq!(config["credHelpers"]["a.example"], HELPER_NAME);
        assert_eq!(config["credHelpers"]["gcr.io"], "gcloud");
        assert!(!serde_json::to_string(&config).unwrap().contains("YToz"));
        assert_eq!(ours.helpers, [fingerprint("a.example")]);
        // The triplet is deleted: our helper entry goes, theirs stay; nothing is ours.
        let (ours, _) = reconcile(&mut config, &[], CredentialMode::Helper, &ours, path);
        assert_eq!(ours, Ours::default());
        assert!(config["credHelpers"].get("a.example").is_none());
        assert_eq!(config["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(config["auths"]["theirs.example"]["auth"], "dGhlaXJz");
        assert_eq!(config["auths"]["b.example"]["auth"], "YnktaGFuZA==");
    }

    #[test]
    fn the_manifest_ignores_what_it_does_not_know() {
        let ours = Ours::parse("auth a.example 0011\nhelper h\njunk\nauth  x\nauth a b c\n");
        assert_eq!(ours.auths.len(), 1);
        assert_eq!(ours.helpers, ["h"]);
        assert_eq!(fingerprint("x"), fingerprint("x"));
        assert_ne!(fingerprint("x"), fingerprint("y"));
        assert_eq!("helper".parse(), Ok(CredentialMode::Helper));
        assert!("vault"
            .parse::<CredentialMode>()
            .unwrap_err()
            .contains("file, helper"));
    }

    #[test]
    fn config_dir_prefers_a_non_empty_docker_config() {
        let home = Path::new("/home/u");
        assert_eq!(
            config_dir(Some("/cfg".as_ref()), home),
            (PathBuf::from("/cfg"), true)
        );
        assert_eq!(
            config_dir(Some("".as_ref()), home),
            (PathBuf::from("/home/u/.docker"), false)
        );
        assert_eq!(
            config_dir(None, home),
            (PathBuf::from("/home/u/.docker"), false)
        );
    }
}
