//! The `sandbox-secrets` binary: clap subcommands to the daemon (`serve`) or the admin commands
//! of `broker::cli`. Thin: parse, call, print the error once, map it to an exit code. Values
//! come from stdin or `--from-file`, never argv, and are never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use sandbox_init::broker::cli;
use sandbox_init::broker::client::AdminClient;
use sandbox_init::broker::daemon::Config;
use sandbox_init::broker::http as chain;
use sandbox_init::logging::{self, LogFormat};

// std's eprintln! panics when stderr is closed or full (exit 134 under `panic=abort`); this one
// ignores the failure. The commands' own output goes through the same kind of macros in
// `broker::cli`, where a stdout failure makes the command exit 1 (`main`).
macro_rules! eprintln {
    () => { logging::to_stderr(format_args!("\n")) };
    ($($t:tt)*) => { logging::to_stderr(format_args!("{}\n", format_args!($($t)*))) };
}

#[derive(Parser)]
#[command(
    name = "sandbox-secrets",
    version,
    about = "Host-side secrets broker for sandbox-init: the daemon and its admin commands"
)]
struct Cli {
    /// Run directory: admin socket and sandbox directories.
    #[arg(
        long,
        global = true,
        env = "SANDBOX_SECRETS_RUN_DIR",
        default_value = "/run/sandbox-secrets"
    )]
    run_dir: PathBuf,
    /// Log line format on stderr: text or json (level from SANDBOX_SECRETS_LOG, default info).
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Scope {
    /// A user secret of this user.
    #[arg(long)]
    user: Option<String>,
    /// A repository secret of this repository (owner/name).
    #[arg(long)]
    repo: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker daemon.
    Serve {
        /// State directory: SQLite store and key file.
        #[arg(
            long,
            env = "SANDBOX_SECRETS_STATE_DIR",
            default_value = "/var/lib/sandbox-secrets"
        )]
        state_dir: PathBuf,
        /// Connections served at once over all sockets; one more gets a 503 and is closed.
        #[arg(long, env = "SANDBOX_SECRETS_MAX_CONNECTIONS", default_value_t = 4096)]
        max_connections: usize,
        /// Serve a store older than the last one this host wrote (a restored backup), once.
        #[arg(long, env = "SANDBOX_SECRETS_ACCEPT_ROLLBACK")]
        accept_rollback: bool,
        /// The store: a `postgres://user@host/db?sslmode=require` URL shared by the brokers of
        /// many hosts (the password from PGPASSWORD, or the env form of this option, never argv);
        /// by default the SQLite file in the state directory.
        #[arg(long, env = "SANDBOX_SECRETS_STORE", hide_env_values = true)]
        store: Option<String>,
        /// This broker's host id (default: the hostname). Sandboxes belong to the host that
        /// created them; a broker serves and deletes only its own host's.
        #[arg(long, env = "SANDBOX_SECRETS_HOST_ID")]
        host_id: Option<String>,
    },
    /// Show the store (kind, connection), schema version, generation, this host's sandboxes
    /// and the key ids it holds.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Create or update a secret; the value is read from stdin or --from-file.
    Set {
        name: String,
        #[command(flatten)]
        scope: Scope,
        /// For a user secret: the repositories that may read it (owner/name, comma-separated).
        /// Required when the secret is new; when updating, omitted keeps the current list.
        #[arg(long, conflicts_with = "repo")]
        repos: Option<String>,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Allow a name that changes how programs start (LD_PRELOAD, PATH, ...).
        #[arg(long)]
        allow_dangerous: bool,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// Change which repositories may read a user secret, without sending its value again.
    Access {
        name: String,
        #[arg(long)]
        user: String,
        /// The new list (owner/name, comma-separated; "" for none). Replaces the old one.
        #[arg(long)]
        repos: String,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// List the secrets of a user or a repository: names, scope, repositories, last update.
    List {
        #[command(flatten)]
        scope: Scope,
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret (asks first when stdin is a terminal, unless --yes).
    Delete {
        name: String,
        #[command(flatten)]
        scope: Scope,
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// Manage sandboxes.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Show or rotate the store's key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Write a consistent copy of the store to FILE (which must not exist) while the daemon
    /// serves. Keep it with the key files: it opens only with them.
    Backup { file: PathBuf },
    /// Show which names a sandbox of (user, repo) would get, and from which level.
    Plan {
        #[arg(long)]
        user: String,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new key, re-seal every row under it in one transaction, retire the old key file
    /// (kept as key.retired-<id>).
    Rotate,
    /// Show the active key id, every key id this host holds, and the rows each seals.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Create a sandbox; prints "<id> <directory-to-mount>".
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        repo: String,
    },
    /// List sandboxes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a sandbox: its socket and directory are removed.
    Delete { id: String },
}

fn main() -> ExitCode {
    // clap's own `parse` exits 0 when `--help` cannot be written; the text is lost, so it is 1.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.print().is_err() && e.exit_code() == 0 {
                1
            } else {
                e.exit_code()
            };
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
    };
    match run(cli) {
        Ok(()) if logging::stdout_failed() => {
            eprintln!("sandbox-secrets: error: cannot write to stdout");
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once, whether an error names it in its message or returns it as its
            // source (or both).
            let line = chain::join_causes(e.chain().map(ToString::to_string));
            let hint = if line.contains("is dangerous") {
                " (pass --allow-dangerous to store it anyway)"
            } else {
                ""
            };
            eprintln!("sandbox-secrets: error: {line}{hint}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let level = logging::level_from_env("SANDBOX_SECRETS_LOG", tracing::Level::INFO.into());
    logging::install(level, cli.log_format);
    let admin = || AdminClient::new(&cli.run_dir).context("cannot start the admin client");
    let scope = |s: Scope| cli::Scope {
        user: s.user,
        repo: s.repo,
    };
    match cli.command {
        Command::Serve {
            state_dir,
            max_connections,
            accept_rollback,
            store,
            host_id,
        } => {
            let mut config = Config::new(state_dir, cli.run_dir.clone());
            config.global_connections = max_connections.max(1);
            config.accept_rollback = accept_rollback;
            config.store = store.filter(|s| !s.is_empty());
            let on_argv = std::env::args().any(|a| a == "--store" || a.starts_with("--store="));
            let with_password = config.store.as_deref().is_some_and(|u| {
                u.split_once("://")
                    .and_then(|(_, rest)| rest.rsplit_once('@'))
                    .is_some_and(|(auth, _)| auth.contains(':'))
            });
            if on_argv && with_password {
                tracing::warn!("the --store URL holds a password, which other users can read in /proc while the daemon runs: give it in SANDBOX_SECRETS_STORE or PGPASSWORD instead");
            }
            if let Some(id) = host_id {
                sandbox_init::broker::daemon::check_host_id(&id)
                    .map_err(|e| anyhow::anyhow!("--host-id: {e}"))?;
                config.host_id = id;
            }
            cli::serve(config)
        }
        Command::Set {
            name,
            scope: s,
            repos,
            from_file,
            allow_dangerous,
            json,
        } => cli::set(
            &admin()?,
            name,
            scope(s),
            repos.as_deref(),
            from_file.as_deref(),
            allow_dangerous,
            json,
        ),
        Command::Access {
            name,
            user,
            repos,
            json,
        } => cli::access(&admin()?, name, user, &repos, json),
        Command::List { scope: s, json } => cli::list(&admin()?, scope(s), json),
        Command::Delete {
            name,
            scope: s,
            yes,
            json,
        } => cli::delete(&admin()?, name, scope(s), yes, json),
        Command::Plan { user, repo, json } => cli::plan(&admin()?, user, repo, json),
        Command::Key { command } => match command {
            KeyCommand::Rotate => cli::key_rotate(&admin()?),
            KeyCommand::Status { json } => cli::key_status(&admin()?, json),
        },
        Command::Backup { file } => cli::backup(&admin()?, &file),
        Command::Status { json } => cli::status(&admin()?, json),
        Command::Sandbox { command } => match command {
            SandboxCommand::Create { user, repo } => cli::sandbox_create(&admin()?, user, repo),
            SandboxCommand::List { json } => cli::sandbox_list(&admin()?, json),
            SandboxCommand::Delete { id } => cli::sandbox_delete(&admin()?, id),
        },
    }
}
