//! The host daemon and its admin client. Nothing here knows about signals of a container or
//! PID 1. Imports run one way, top floor to ground:
//!
//! `server` (listeners, accept loops, shutdown) -> `http` (routing, errors, bodies; `http::sandbox`,
//! `http::admin`) -> `daemon` (state: sandboxes, answer cache, lifecycle) -> `store` (rules,
//! sealing, manifest, keys) -> a `Backend` (`store/sqlite.rs`). Beside them, used from above and
//! importing only downward: `admin` (the admin API's routes and types), `client` (the admin
//! client), `cli` (the admin commands' printing), `sandboxes` (run-directory layout), `acl`
//! (plan), `audit` (log lines).
//!
//! - [`server`]: `run(config, shutdown)`, the serve loops, peer checks, drain.
//! - [`http`]: the sandbox and admin surfaces, the platform API (`serve --http`, tokens,
//!   TLS), error statuses and rule names, zeroizing bodies.
//! - [`web`]: the settings page over the platform API's operations (sessions, CSRF, HTML).
//! - [`daemon`]: live sandboxes, the answer cache, the descriptor budget, create/delete/close.
//! - [`admin`]: the admin routes (a typed enum) and their request and answer types.
//! - [`acl`]: `plan(repo, user secrets, repository secrets)`, pure.
//! - [`store`]: rules, sealing, manifest, migrations, key rotation, group commit over a
//!   `Backend` (`store/sqlite.rs`); `store/seal.rs` holds the key files and XChaCha20-Poly1305.
//! - [`sandboxes`]: run-directory layout, modes, sandbox ids.
//! - [`audit`]: one log line per read or change, names only, rate-limited per sandbox.
//! - [`limits`]: the write deadline of a connection and the byte budget of built answers.
//! - [`client`]: the admin client the CLI uses.
//! - [`cli`]: the `sandbox-secrets` subcommands: call the client, print tables and times.

pub mod acl;
pub mod admin;
pub mod audit;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod http;
pub mod limits;
pub mod sandboxes;
pub mod server;
pub mod store;
pub mod web;
