//! The init's secrets step: fetch from the sandbox socket, build the child's environment, write
//! docker credentials, spill oversized values. Nothing here forks or handles signals.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

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
    pub vars: Vec<(String, SecretString)>,
}

/// Why the secrets step stopped the init. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secrets step is not implemented yet")]
    Unimplemented,
}

/// Fetches the sandbox's secrets, writes docker credentials for `target`, and returns the
/// variables the child gets on top of `inherited` (the init's own environment).
pub fn prepare(
    _opts: &Options,
    _target: &Target,
    _inherited: &[(OsString, OsString)],
) -> Result<Prepared, Error> {
    Ok(Prepared::default())
}

/// `sandbox-init env`: prints the secrets as shell-quoted `export` lines on stdout.
pub fn print_env(_opts: &Options) -> Result<(), Error> {
    Err(Error::Unimplemented)
}
