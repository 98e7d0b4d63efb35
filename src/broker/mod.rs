//! The host daemon: sockets, admin API, access rules, encrypted SQLite store, sandboxes, audit.
//! Nothing here knows about signals of a container or PID 1.
//!
//! - [`server`]: `run(config, shutdown)`, the serve loops, peer checks, drain.
//! - [`api`]: the sandbox and admin routes, their JSON types, error statuses.
//! - [`acl`]: `plan(repo, user secrets, repository secrets)`, pure.
//! - [`store`]: rules, sealing, manifest, migrations, key rotation, group commit over a
//!   `Backend` (`store/sqlite.rs`); `store/seal.rs` holds the key files and XChaCha20-Poly1305.
//! - [`sandboxes`]: run-directory layout, modes, sandbox ids.
//! - [`audit`]: one log line per read or change, names only.
//! - [`client`]: the admin client the CLI uses.

pub mod acl;
pub mod api;
pub mod audit;
pub mod client;
pub mod sandboxes;
pub mod server;
pub mod store;
