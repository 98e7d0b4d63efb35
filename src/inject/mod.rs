//! The init's secrets step: fetch from the sandbox socket, build the child's environment, write
//! docker credentials, spill oversized values. Nothing here forks or handles signals, and no
//! value reaches a log line, an error or the init's own environment.
//!
//! - [`fetch`]: the socket client and the checks on arrival.
//! - [`env`]: the `execve` budget and which values go to files (pure).
//! - [`spill`]: the 0400 spill files and the atomic writer.
//! - [`dockercfg`]: registry triplets to `config.json`.
//! - [`quote`]: shell quoting for `sandbox-init env`.

pub mod dockercfg;
pub mod env;
pub mod fetch;
pub mod helper;
pub mod quote;
pub mod spill;
pub mod watch;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use fetch::{FetchError, Secret};

/// What to do when the socket is missing or the fetch fails (`--secrets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SecretsPolicy {
    /// No socket: start without secrets (info line). Socket there but the fetch fails: stop.
    #[default]
    Auto,
    /// A missing socket is an error too.
    Required,
    /// Any failure: warn and start without secrets.
    Optional,
}

/// How to reach the broker.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    pub policy: SecretsPolicy,
    /// Connect plus whole-answer deadline.
    pub timeout: Duration,
}

/// Where and how the secrets are written besides the environment.
#[derive(Clone, Debug, Default)]
pub struct Files {
    /// `--registry-credentials file|helper`.
    pub registry: dockercfg::CredentialMode,
    /// `--secrets-dir DIR`: one file per secret, kept current.
    pub secrets_dir: Option<PathBuf>,
}

/// The user the child will run as: credentials files are written for and owned by it.
#[derive(Clone, Debug)]
pub struct Target {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Variables to add to (or replace in) the child's environment. Values are zeroized on drop.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Set in the child, replacing an inherited variable of the same name. Sorted by name.
    pub vars: Vec<(String, SecretString)>,
    /// Inherited variables to remove from the child: secrets of that name went to a file
    /// (`NAME_FILE` is in `vars`), so a stale inherited `NAME` must not stay.
    pub unset: Vec<String>,
    /// The answer's entity tag, for the watch (`--on-change`); `None` when nothing was fetched.
    pub etag: Option<String>,
}

/// Why the secrets step stopped the init. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secrets socket {} does not exist (--secrets required)", socket.display())]
    NoSocket { socket: PathBuf },
    #[error("broker not serving {}: start `sandbox-secrets serve`, or pass --secrets optional", dir.display())]
    NotServing { dir: PathBuf },
    #[error("cannot fetch secrets from {}", socket.display())]
    Fetch { socket: PathBuf, source: FetchError },
    #[error("cannot write registry credentials")]
    DockerConfig(#[source] dockercfg::ConfigError),
    #[error("cannot prepare the directory {} for oversized secrets", path.display())]
    SpillDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write secret {name} to {}", path.display())]
    Spill {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the secrets directory {}", path.display())]
    SecretsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the export lines to stdout")]
    Output(#[source] std::io::Error),
}

/// What a policy says about a situation: go on without secrets, or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    Stop,
}

/// No socket at the path: only `required` stops.
pub fn on_missing_socket(policy: SecretsPolicy) -> Decision {
    match policy {
        SecretsPolicy::Required => Decision::Stop,
        SecretsPolicy::Auto | SecretsPolicy::Optional => Decision::Proceed,
    }
}

/// A socket is there but the fetch failed (or a later setup step did): only `optional` goes on.
pub fn on_failure(policy: SecretsPolicy) -> Decision {
    match policy {
        SecretsPolicy::Optional => Decision::Proceed,
        SecretsPolicy::Auto | SecretsPolicy::Required => Decision::Stop,
    }
}

/// Fetches per policy: `Ok(None)` when going on without secrets (already said so in the log).
/// With no socket this is one `stat`: no connection is tried.
fn obtain(opts: &Options) -> Result<Option<fetch::Fetched>, Error> {
    if !fetch::socket_present(&opts.socket) && !awaited(opts)? {
        return match on_missing_socket(opts.policy) {
            Decision::Stop => Err(Error::NoSocket {
                socket: opts.socket.clone(),
            }),
            Decision::Proceed => {
                info(format_args!(
                    "no secrets socket at {}; starting without secrets",
                    opts.socket.display()
                ));
                Ok(None)
            }
        };
    }
    match fetch::fetch_tagged(&opts.socket, opts.timeout) {
        Ok(fetched) => {
            let secrets = &fetched.secrets;
            if tracing::enabled!(tracing::Level::INFO) {
                let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
                info(format_args!(
                    "fetched {} secrets from {}: {}",
                    secrets.len(),
                    opts.socket.display(),
                    names.join(" ")
                ));
            }
            for s in secrets.iter().filter(|s| s.dangerous) {
                info(format_args!(
                    "accepting {}: a dangerous name the broker marks as explicitly allowed",
                    s.name
                ));
            }
            Ok(Some(fetched))
        }
        Err(source) => {
            let err = Error::Fetch {
                socket: opts.socket.clone(),
                source,
            };
            match on_failure(opts.policy) {
                Decision::Stop => Err(err),
                Decision::Proceed => {
                    warn(format_args!(
                        "{}; starting without secrets (--secrets optional)",
                        chain(&err)
                    ));
                    Ok(None)
                }
            }
        }
    }
}

/// No socket: when the daemon's marker says a broker serves the socket's directory (stopping or
/// restarting), waits up to the timeout for the socket (`true` once it is there) and then fails
/// closed, unless `--secrets optional`. Without the marker: `false` at once (one more `lstat`).
fn awaited(opts: &Options) -> Result<bool, Error> {
    let dir = match opts.socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !fetch::marker_present(dir) {
        return Ok(false);
    }
    if opts.policy == SecretsPolicy::Optional {
        warn(format_args!(
            "broker not serving {}; starting without secrets (--secrets optional)",
            dir.display()
        ));
        return Ok(false);
    }
    info(format_args!(
        "broker expected at {} (marker present); waiting up to {}ms for its socket",
        opts.socket.display(),
        opts.timeout.as_millis()
    ));
    if fetch::wait_for_socket(&opts.socket, opts.timeout) {
        return Ok(true);
    }
    Err(Error::NotServing {
        dir: dir.to_owned(),
    })
}

/// Every warning of this module goes through one call site (a smaller static init). Messages
/// hold names and paths, never a value.
#[inline(never)]
fn warn(message: std::fmt::Arguments<'_>) {
    tracing::warn!("{message}");
}

/// Every info line of this module, as [`warn`].
#[inline(never)]
fn info(message: std::fmt::Arguments<'_>) {
    tracing::info!("{message}");
}

/// An error and its sources on one line, `a: b: c`, as the binaries print them.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let msg = e.to_string();
        // Some errors repeat their source in their own message; say it once.
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = e.source();
    }
    out
}

fn lookup<'a>(inherited: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
    inherited
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_os_str())
}

fn spill_dir(var: Option<&OsStr>) -> PathBuf {
    explicit_spill_dir(var).unwrap_or_else(|| PathBuf::from(spill::DEFAULT_SPILL_DIR))
}

/// `SANDBOX_INIT_SECRETS_DIR` when set and non-empty.
fn explicit_spill_dir(var: Option<&OsStr>) -> Option<PathBuf> {
    var.filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// Places the secrets, and when some go to files, chooses the memory-backed directory they go
/// to ([`spill::choose_dir`]) and places them again against its path when it is another one.
/// The error, if any, is the directory's.
fn place_and_choose(
    secrets: &[Secret],
    env: &[(OsString, OsString)],
) -> (Placement, Option<std::io::Result<PathBuf>>) {
    let var = lookup(env, spill::SPILL_DIR_ENV);
    let placement = place(secrets, env, spill_dir(var));
    if !placement.spilled.iter().any(|&s| s) {
        return (placement, None);
    }
    match spill::choose_dir(explicit_spill_dir(var).as_deref()) {
        Ok(dir) if dir != placement.dir => {
            let again = place(secrets, env, dir.clone());
            (again, Some(Ok(dir)))
        }
        chosen => (placement, Some(chosen)),
    }
}

/// The placement of every secret: which stay in the environment, which go to files.
struct Placement {
    spilled: Vec<bool>,
    dir: PathBuf,
}

/// Whether `name` is among `secrets` (sorted by name, as [`fetch::fetch`] returns them).
fn is_secret(secrets: &[Secret], name: &str) -> bool {
    secrets
        .binary_search_by(|s| s.name.as_str().cmp(name))
        .is_ok()
}

fn place(secrets: &[Secret], env: &[(OsString, OsString)], dir: PathBuf) -> Placement {
    let rest: usize = env
        .iter()
        .filter(|(k, _)| !matches!(k.to_str(), Some(k) if is_secret(secrets, k)))
        .map(|(k, v)| env::entry_cost(k.len(), v.len()))
        .sum();
    let lens: Vec<(usize, usize)> = secrets
        .iter()
        .map(|s| (s.name.len(), s.value.expose_secret().len()))
        .collect();
    let spilled = env::plan_spill(rest, &lens, dir.as_os_str().len(), env::Limits::current());
    Placement { spilled, dir }
}

/// Fetches the sandbox's secrets, writes docker credentials for `target`, and returns the
/// variables the child gets on top of `inherited` (the init's own environment).
pub fn prepare(
    opts: &Options,
    target: &Target,
    inherited: &[(OsString, OsString)],
) -> Result<Prepared, Error> {
    prepare_with(opts, &Files::default(), target, inherited)
}

/// [`prepare`], writing `files` too.
pub fn prepare_with(
    opts: &Options,
    files: &Files,
    target: &Target,
    inherited: &[(OsString, OsString)],
) -> Result<Prepared, Error> {
    let Some(fetched) = obtain(opts)? else {
        return Ok(Prepared::default());
    };
    let mut prepared = place_secrets(opts, files, target, inherited, fetched.secrets)?;
    prepared.etag = fetched.etag;
    Ok(prepared)
}

/// Places fetched `secrets` for `target`: spill files, registry credentials (last), and the
/// variables the child gets on top of `inherited`. Also the watch's step for a changed answer.
pub fn place_secrets(
    opts: &Options,
    files: &Files,
    target: &Target,
    inherited: &[(OsString, OsString)],
    secrets: Vec<Secret>,
) -> Result<Prepared, Error> {
    for s in &secrets {
        if lookup(inherited, &s.name).is_some() {
            warn(format_args!(
                "secret {} replaces the inherited variable of the same name",
                s.name
            ));
        }
    }

    let (placement, chosen) = place_and_choose(&secrets, inherited);
    let mut prepared = Prepared {
        vars: Vec::with_capacity(secrets.len()),
        ..Prepared::default()
    };
    let dir_ready =
        chosen.map(|dir| dir.and_then(|dir| spill::open_spill_dir(&dir, target.uid, target.gid)));
    let spilled_names: Vec<String> = secrets
        .iter()
        .zip(&placement.spilled)
        .filter(|(_, &s)| s)
        .map(|(s, _)| s.name.clone())
        .collect();
    // Registry credentials are written last (below): a spill that fails stops the start with no
    // new credentials on disk. Their triplets are taken now, before the values move.
    let (entries, entry_warnings) = registry_entries(&secrets);
    for (secret, _) in secrets.iter().zip(&placement.spilled).filter(|(_, &s)| s) {
        let written = match &dir_ready {
            Some(Ok(d)) => write_spill(d, secret, target.uid, target.gid),
            Some(Err(e)) => Err(Error::SpillDir {
                path: placement.dir.clone(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            }),
            // Unreachable: a spilled secret means the directory was prepared above.
            None => Err(Error::SpillDir {
                path: placement.dir.clone(),
                source: std::io::Error::other("not prepared"),
            }),
        };
        let path = match (written, on_failure(opts.policy)) {
            (Ok(path), _) => path,
            (Err(e), Decision::Stop) => return Err(e),
            (Err(e), Decision::Proceed) => {
                warn(format_args!(
                    "{}; starting without {} (--secrets optional)",
                    chain(&e),
                    secret.name
                ));
                continue;
            }
        };
        let file_var = format!("{}_FILE", secret.name);
        if lookup(inherited, &secret.name).is_some() {
            prepared.unset.push(secret.name.clone());
        }
        if is_secret(&secrets, &file_var) {
            warn(format_args!(
                "secret {} is too large for the environment and went to {}, but {file_var} is \
                 a secret too and keeps its value; read the file directly",
                secret.name,
                path.display()
            ));
            continue;
        }
        if lookup(inherited, &file_var).is_some() {
            warn(format_args!(
                "{file_var} (the file of the oversized secret {}) replaces the inherited variable",
                secret.name
            ));
        }
        info(format_args!(
            "secret {} is too large for the environment: {file_var}={}",
            secret.name,
            path.display()
        ));
        let path = path.into_os_string().into_string().unwrap_or_else(|p| {
            // Only reachable with a non-UTF-8 spill dir; the variable must still be exact.
            String::from_utf8_lossy(p.as_bytes()).into_owned()
        });
        prepared.vars.push((file_var, SecretString::from(path)));
    }
    // The secrets the environment takes move there (names looked up above are no longer
    // needed), unless `--secrets-dir` still needs the values below (then they are copied):
    // two copies less of every secret, which is what a start costs most.
    let values_needed_later = files.secrets_dir.is_some();
    let mut secrets = secrets;
    for (secret, _) in secrets
        .iter_mut()
        .zip(&placement.spilled)
        .filter(|(_, &s)| !s)
    {
        let kept = if values_needed_later {
            let value = secret.value.expose_secret().to_owned();
            (secret.name.clone(), SecretString::from(value))
        } else {
            let value = std::mem::replace(&mut secret.value, SecretString::from(String::new()));
            (std::mem::take(&mut secret.name), value)
        };
        prepared.vars.push(kept);
    }
    let keep: Vec<&str> = spilled_names.iter().map(String::as_str).collect();
    if let Some(dir) = &files.secrets_dir {
        if let Err(e) = write_secrets_dir(dir, &placement.dir, &secrets, target) {
            match on_failure(opts.policy) {
                Decision::Stop => return Err(e),
                Decision::Proceed => {
                    warn(format_args!("{}; going on (--secrets optional)", chain(&e)))
                }
            }
        }
    }
    clean_stale(&placement.dir, &keep);
    if explicit_spill_dir(lookup(inherited, spill::SPILL_DIR_ENV)).is_none() {
        // The other of the two places an earlier start may have used (before /run/sandbox-init
        // became a tmpfs, or before this version refused a disk) keeps nothing either.
        for other in [spill::DEFAULT_SPILL_DIR, spill::FALLBACK_SPILL_DIR] {
            if placement.dir != Path::new(other) {
                clean_stale(Path::new(other), &[]);
            }
        }
    }
    registry_credentials(opts, files, target, inherited, entries, entry_warnings)?;
    // Each name once (a `NAME_FILE` that is also a secret's name was skipped above).
    prepared.vars.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(prepared)
}

/// `--secrets-dir`: every secret as `dir/NAME` (0400, the target's, replaced atomically, on the
/// spill directory's rules: memory-backed storage, a directory of the target's or a new one),
/// and the files of secrets no longer served removed (only those the init wrote, by the
/// directory's manifest). It must not be the spill directory, whose manifest is another list.
fn write_secrets_dir(
    dir: &Path,
    spill_dir: &Path,
    secrets: &[Secret],
    target: &Target,
) -> Result<(), Error> {
    let dir_err = |source| Error::SecretsDir {
        path: dir.to_owned(),
        source,
    };
    if dir == spill_dir {
        return Err(dir_err(std::io::Error::other(format!(
            "it is also the directory of values too large for the environment \
             ({}); choose another",
            spill::SPILL_DIR_ENV
        ))));
    }
    let d = spill::open_spill_dir(dir, target.uid, target.gid).map_err(dir_err)?;
    for secret in secrets {
        write_spill(&d, secret, target.uid, target.gid)?;
    }
    let keep: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    match spill::remove_stale(dir, &keep) {
        Ok(removed) if !removed.is_empty() => info(format_args!(
            "removed files of secrets no longer served from {}: {}",
            dir.display(),
            removed.join(", ")
        )),
        Ok(_) => {}
        Err(e) => return Err(dir_err(e)),
    }
    info(format_args!(
        "{} secrets written as files to {}",
        secrets.len(),
        dir.display()
    ));
    Ok(())
}

/// Removes spill files of secrets not in `keep` from `dir`, saying what it removed.
fn clean_stale(dir: &Path, keep: &[&str]) {
    match spill::remove_stale(dir, keep) {
        Ok(removed) if !removed.is_empty() => info(format_args!(
            "removed files of secrets no longer spilled from {}: {}",
            dir.display(),
            removed.join(", ")
        )),
        Ok(_) => {}
        Err(e) => warn(format_args!(
            "cannot clean the oversized-secrets directory {}: {e}",
            dir.display()
        )),
    }
}

fn write_spill(dir: &spill::Dir, secret: &Secret, uid: u32, gid: u32) -> Result<PathBuf, Error> {
    spill::write_atomic(
        dir,
        &secret.name,
        secret.value.expose_secret().as_bytes(),
        0o400,
        uid,
        gid,
    )
    .map_err(|source| Error::Spill {
        name: secret.name.clone(),
        path: dir.path().join(&secret.name),
        source,
    })
}

/// The registry triplets among the secrets (and warnings about incomplete ones).
fn registry_entries(secrets: &[Secret]) -> (Vec<dockercfg::Entry>, Vec<String>) {
    let pairs: Vec<(&str, &SecretString)> = secrets
        .iter()
        .map(|s| (s.name.as_str(), &s.value))
        .collect();
    dockercfg::entries(&pairs)
}

/// Writes `config.json` when the secrets hold a complete triplet; failures stop the init unless
/// `--secrets optional`.
fn registry_credentials(
    opts: &Options,
    files: &Files,
    target: &Target,
    inherited: &[(OsString, OsString)],
    entries: Vec<dockercfg::Entry>,
    warnings: Vec<String>,
) -> Result<(), Error> {
    for w in warnings {
        warn(format_args!("{w}"));
    }
    let (dir, explicit) = dockercfg::config_dir(lookup(inherited, "DOCKER_CONFIG"), &target.home);
    // No triplet now: only a config sandbox-init wrote into before has entries to remove.
    if entries.is_empty() && !dockercfg::has_ours(&dir) {
        return Ok(());
    }
    if !explicit && !target.home.is_dir() {
        warn(format_args!(
            "home {} of uid {} does not exist and DOCKER_CONFIG is not set: registry \
             credentials not written",
            target.home.display(),
            target.uid
        ));
        return Ok(());
    }
    match dockercfg::write_config_as(&dir, &entries, target.uid, target.gid, files.registry) {
        Ok(written) => {
            for w in written.warnings {
                warn(format_args!("{w}"));
            }
            // The triplets' IDs, not their servers: a server is a secret's value too.
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let how = match files.registry {
                dockercfg::CredentialMode::File => "registry credentials written to",
                dockercfg::CredentialMode::Helper => "credential helper `sandbox` named in",
            };
            info(format_args!(
                "{how} {} for {}",
                written.path.display(),
                ids.join(" ")
            ));
            Ok(())
        }
        Err(e) => {
            let err = Error::DockerConfig(e);
            match on_failure(opts.policy) {
                Decision::Stop => Err(err),
                Decision::Proceed => {
                    warn(format_args!(
                        "{}; going on (--secrets optional)",
                        chain(&err)
                    ));
                    Ok(())
                }
            }
        }
    }
}

/// The output of `sandbox-init env` (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnvFormat {
    /// `export NAME='value'` lines, `unset` for names the previous `env` of this shell exported
    /// that are no longer authorised, and `SANDBOX_SECRETS_NAMES` listing what was exported.
    #[default]
    Sh,
    /// `NAME="value"` lines (see [`quote::push_dotenv`]).
    Dotenv,
    /// One JSON object, `{"NAME":"value",...}`.
    Json,
}

impl std::str::FromStr for EnvFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sh" => Ok(EnvFormat::Sh),
            "dotenv" => Ok(EnvFormat::Dotenv),
            "json" => Ok(EnvFormat::Json),
            other => Err(format!("{other:?} is not one of sh, dotenv, json")),
        }
    }
}

/// The variable in which `sandbox-init env --format sh` records the names it exported, so the
/// next `env` in the same shell unsets those no longer authorised.
pub const NAMES_VAR: &str = "SANDBOX_SECRETS_NAMES";

/// Names of `previous` (the value of [`NAMES_VAR`], space-separated) that are shell names and
/// not in `now`: the `unset` lines of the `sh` format. Anything else in the variable is ignored
/// (it is evaluated by a shell: only `[A-Za-z_][A-Za-z0-9_]*` passes).
pub fn stale_names<'a>(previous: &'a str, now: &[&str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for name in previous.split_ascii_whitespace() {
        let shell_name = !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if shell_name && name != NAMES_VAR && !now.contains(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// `sandbox-init env`: prints the secrets on stdout in `format`, all or nothing. No socket:
/// prints nothing (`{}` as JSON; an error with `--secrets required`). See [`write_env`].
pub fn print_env(opts: &Options, format: EnvFormat) -> Result<(), Error> {
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    write_env(opts, format, &env, &mut std::io::stdout().lock())
}

/// The body of [`print_env`], against the caller's environment `env` (whose size counts against
/// the `execve` budget and whose `SANDBOX_INIT_SECRETS_DIR` and `SANDBOX_SECRETS_NAMES` are
/// honoured) and writing to `out`. A value too large for the environment is written to the
/// spill directory (owned like the directory already is, so the init's child keeps reading it)
/// and exported as `NAME_FILE`.
pub fn write_env(
    opts: &Options,
    format: EnvFormat,
    env: &[(OsString, OsString)],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let Some(fetched) = obtain(opts)? else {
        if format == EnvFormat::Json {
            return out
                .write_all(b"{}\n")
                .and_then(|()| out.flush())
                .map_err(Error::Output);
        }
        return Ok(());
    };
    let secrets = fetched.secrets;
    let (placement, chosen) = place_and_choose(&secrets, env);
    let mut files: Vec<(String, String)> = Vec::new();
    if let Some(chosen) = chosen {
        let spill_err = |source| Error::SpillDir {
            path: placement.dir.clone(),
            source,
        };
        chosen.map_err(spill_err)?;
        let (uid, gid) = match std::fs::metadata(&placement.dir) {
            Ok(m) => (m.uid(), m.gid()),
            Err(_) => (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        };
        let d = spill::open_spill_dir(&placement.dir, uid, gid).map_err(spill_err)?;
        for (secret, _) in secrets.iter().zip(&placement.spilled).filter(|(_, &s)| s) {
            let path = write_spill(&d, secret, uid, gid)?;
            let file_var = format!("{}_FILE", secret.name);
            if is_secret(&secrets, &file_var) {
                warn(format_args!(
                    "secret {} is too large for the environment and went to {}, but {file_var} \
                     is a secret too and keeps its value",
                    secret.name,
                    path.display()
                ));
                continue;
            }
            files.push((file_var, path.to_string_lossy().into_owned()));
        }
    }
    let kept = secrets
        .iter()
        .zip(&placement.spilled)
        .filter(|(_, &s)| !s)
        .map(|(s, _)| (s.name.as_str(), s.value.expose_secret()));
    let lines: Vec<(&str, &str)> = kept
        .chain(files.iter().map(|(n, p)| (n.as_str(), p.as_str())))
        .collect();
    // Exact size up front for the values: no reallocation leaves a copy of a value behind (the
    // binary's allocator zeroes freed blocks too, for the escaping formats' growth).
    let size: usize = lines
        .iter()
        .map(|(n, v)| "export =''\n".len() + n.len() + v.len() + 3 * v.matches('\'').count())
        .sum();
    let mut text = Zeroizing::new(String::with_capacity(size));
    match format {
        EnvFormat::Sh => {
            let exported: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
            let previous = lookup(env, NAMES_VAR)
                .and_then(OsStr::to_str)
                .unwrap_or_default();
            for name in stale_names(previous, &exported) {
                quote::push_unset(&mut text, name);
            }
            for (name, value) in &lines {
                quote::push_export(&mut text, name, value);
            }
            quote::push_export(&mut text, NAMES_VAR, &exported.join(" "));
        }
        EnvFormat::Dotenv => {
            for (name, value) in &lines {
                quote::push_dotenv(&mut text, name, value);
            }
        }
        EnvFormat::Json => {
            text.push('{');
            for (i, (name, value)) in lines.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                quote::push_json_string(&mut text, name);
                text.push(':');
                quote::push_json_string(&mut text, value);
            }
            text.push_str("}\n");
        }
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_exhaustively() {
        use Decision::*;
        use SecretsPolicy::*;
        let table = [
            (Auto, Proceed, Stop),
            (Required, Stop, Stop),
            (Optional, Proceed, Proceed),
        ];
        for (policy, missing, failed) in table {
            assert_eq!(on_missing_socket(policy), missing, "{policy:?}");
            assert_eq!(on_failure(policy), failed, "{policy:?}");
        }
        assert_eq!(SecretsPolicy::default(), Auto);
    }

    #[test]
    fn stale_names_are_shell_names_no_longer_exported() {
        assert_eq!(stale_names("A B C", &["B"]), vec!["A", "C"]);
        assert_eq!(stale_names("", &["B"]), Vec::<&str>::new());
        assert_eq!(
            stale_names("A  A\tX;rm 1B $(id) _OK SANDBOX_SECRETS_NAMES", &[]),
            vec!["A", "_OK"]
        );
        assert_eq!("json".parse(), Ok(EnvFormat::Json));
        assert_eq!("dotenv".parse(), Ok(EnvFormat::Dotenv));
        assert_eq!(EnvFormat::default(), EnvFormat::Sh);
        assert!("yaml"
            .parse::<EnvFormat>()
            .unwrap_err()
            .contains("sh, dotenv, json"));
    }

    #[test]
    fn errors_chain_and_name_the_step() {
        let e = Error::Fetch {
            socket: "/run/sandbox/secrets.sock".into(),
            source: FetchError::Timeout(Duration::from_millis(1500)),
        };
        assert_eq!(
            chain(&e),
            "cannot fetch secrets from /run/sandbox/secrets.sock: no complete answer within 1500ms"
        );
        let e = Error::NoSocket {
            socket: "/x.sock".into(),
        };
        assert_eq!(
            chain(&e),
            "secrets socket /x.sock does not exist (--secrets required)"
        );
    }

    #[test]
    fn lookup_takes_the_last_and_spill_dir_defaults() {
        let env = vec![
            (OsString::from("A"), OsString::from("1")),
            (OsString::from("A"), OsString::from("2")),
        ];
        assert_eq!(lookup(&env, "A"), Some(OsStr::new("2")));
        assert_eq!(lookup(&env, "B"), None);
        assert_eq!(spill_dir(None), PathBuf::from(spill::DEFAULT_SPILL_DIR));
        assert_eq!(
            spill_dir(Some(OsStr::new(""))),
            PathBuf::from(spill::DEFAULT_SPILL_DIR)
        );
        assert_eq!(spill_dir(Some(OsStr::new("/t"))), PathBuf::from("/t"));
    }
}
