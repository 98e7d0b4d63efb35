//! sandbox-init: a static PID-1 init that injects a sandbox's authorized secrets, and the
//! broker daemon that stores them and serves each sandbox only its own.
//!
//! - [`protocol`]: wire types, secret-name and value rules, the unix-socket HTTP client; the only
//!   module both sides share.
//! - [`init`]: PID 1: command line, signals, spawn, reaping, privilege drop (all `unsafe` lives in
//!   `init::sys`).
//! - [`inject`]: the init's secrets step: fetch from the socket, child environment, docker
//!   `config.json`, oversized-value spill, `sandbox-init env`.
//! - `broker` (feature `broker`): the host daemon: server, admin API, access rules, SQLite store,
//!   sealing, sandboxes, audit.
//! - [`logging`]: the tracing subscriber both binaries install on stderr.

pub mod init;
pub mod inject;
pub mod logging;
pub mod protocol;

#[cfg(feature = "broker")]
pub mod broker;
