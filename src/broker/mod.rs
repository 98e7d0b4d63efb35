//! The host daemon: sockets, admin API, access rules, encrypted SQLite store, sandboxes, audit.
//! Nothing here knows about signals of a container or PID 1.
//!
//! - [`server`]: `run(config, shutdown)`, the serve loops, peer checks, drain.
//! - [`api`]: the sandbox and admin routes, their JSON types, error statuses.
//! - [`acl`]: `plan(repo, user secrets, repository secrets)`, pure.
//! - [`store`]: SQLite in WAL mode plus an in-memory copy of the sealed rows.
//! - [`crypto`]: the key file and XChaCha20-Poly1305 sealing.
//! - [`sandboxes`]: run-directory layout, modes, sandbox ids.
//! - [`audit`]: one log line per read or change, names only, rate-limited per sandbox.
//! - [`limits`]: the write deadline of a connection and the byte budget of built answers.
//! - [`client`]: the admin client the CLI uses.

pub mod acl;
pub mod api;
pub mod audit;
pub mod client;
pub mod crypto;
pub mod limits;
pub mod sandboxes;
pub mod server;
pub mod store;
