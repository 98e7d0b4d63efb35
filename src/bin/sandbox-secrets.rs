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
        /// Serve the platform API and the settings page on this address (host:port; off by
        /// default). Every request needs a token (`token create`).
        #[arg(long, env = "SANDBOX_SECRETS_HTTP")]
        http: Option<std::net::SocketAddr>,
        /// Serve --http over TLS with this PEM certificate chain (leaf first); needs --tls-key.
        #[arg(long, requires_all = ["http", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Manage the platform API's tokens (shown once, stored as a hash, expiring).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TokenFor {
    /// May manage this user's secrets only.
    #[arg(long)]
    user: Option<String>,
    /// May manage this repository's secrets only (owner/name).
    #[arg(long)]
    repo_admin: Option<String>,
    /// May do everything, sandboxes included.
    #[arg(long)]
    platform: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed alone on the last line of stdout, once.
    Create {
        #[command(flatten)]
        scope: TokenFor,
        /// How long it is valid: 30d, 12h, 90m, 3600s (at most 366d).
        #[arg(long, default_value = "30d")]
        expires: String,
    },
    /// List tokens: id, scope, created, expires (never the token).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it authenticates nothing from the next request on.
    Revoke { id: String },
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
            // The rule's name, when the daemon gave one, ends the line.
            let (message, rule) = line
                .rfind(" (rule: ")
                .map_or((line.as_str(), ""), |i| line.split_at(i));
            eprintln!("sandbox-secrets: error: {message}{hint}{rule}");
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
            http,
            tls_cert,
            tls_key,
        } => {
            let mut config = Config::new(state_dir, cli.run_dir.clone());
            config.http = http;
            config.tls = tls_cert.zip(tls_key);
            config.global_connections = max_connections.max(1);
            config.accept_rollback = accept_rollback;
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
        Command::Token { command } => match command {
            TokenCommand::Create { scope, expires } => cli::tokens::create(
                &admin()?,
                cli::tokens::TokenFor {
                    user: scope.user,
                    repo_admin: scope.repo_admin,
                    platform: scope.platform,
                },
                &expires,
            ),
            TokenCommand::List { json } => cli::tokens::list(&admin()?, json),
            TokenCommand::Revoke { id } => cli::tokens::revoke(&admin()?, id),
        },
        Command::Sandbox { command } => match command {
            SandboxCommand::Create { user, repo } => cli::sandbox_create(&admin()?, user, repo),
            SandboxCommand::List { json } => cli::sandbox_list(&admin()?, json),
            SandboxCommand::Delete { id } => cli::sandbox_delete(&admin()?, id),
        },
    }
}
