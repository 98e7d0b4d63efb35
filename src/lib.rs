//! sandbox-init: a static PID-1 init that injects a sandbox's authorized secrets, and the
//! broker daemon that stores them and serves each sandbox only its own.
//!
//! - [`protocol`]: wire types, secret-name and value rules, the unix-socket HTTP clients (the
//!   init's blocking [`protocol::http1`]; the broker's on hyper); the only module both sides share.
//! - [`cli`]: the `sandbox-init` command line and its multi-call modes (tini, dumb-init); fills
//!   the options of `init` and `inject`, the floor above both.
//! - [`init`]: PID 1: signals, spawn, reaping, privilege drop, the peers' voices; knows nothing
//!   of secrets.
//! - [`inject`]: the init's secrets step: fetch from the socket, child environment, docker
//!   `config.json`, oversized-value spill, `sandbox-init env`.
//! - `broker` (feature `broker`): the host daemon: server, admin API, access rules, SQLite store,
//!   sealing, sandboxes, audit.
//! - [`logging`]: the tracing subscriber both binaries install on stderr.
//! - [`sys`]: every `unsafe` block (libc wrappers, the zeroizing allocator), the floor below
//!   `init` and `inject`.

pub mod cli;
pub mod init;
pub mod inject;
pub mod logging;
pub mod protocol;
pub mod sys;

#[cfg(feature = "broker")]
pub mod broker;
