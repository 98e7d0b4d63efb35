//! The `sandbox-secrets` binary: clap subcommands to the daemon (`serve`) or the admin commands
//! of `broker::cli`. Thin: parse, call, print the error once, map it to an exit code. Values
//! come from stdin or `--from-file`, never argv, and are never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

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
    /// A user secret of this user (readable by the repositories it lists: --repos).
    #[arg(long)]
    user: Option<String>,
    /// A repository secret of this repository (owner/name): every sandbox of it reads it.
    #[arg(long)]
    repo: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker daemon.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets serve\n  sandbox-secrets serve --state-dir ~/.local/state/sandbox-secrets --run-dir \"$XDG_RUNTIME_DIR/sandbox-secrets\""
    )]
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
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets status\n  sandbox-secrets status --json")]
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the platform API's tokens (shown once, stored as a hash, expiring).
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets token create --user mona --expires 7d\n  sandbox-secrets token list"
    )]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Create or update a secret; the value is read from stdin or --from-file (byte for byte),
    /// or many secrets from a dotenv file (--env-file), every line checked before any is stored.
    #[command(after_help = SET_EXAMPLES)]
    Set {
        /// The secret's name ([A-Za-z0-9_], case-insensitive, stored upper-case). Omitted with
        /// --env-file, which names its secrets.
        #[arg(required_unless_present = "env_file")]
        name: Option<String>,
        #[command(flatten)]
        scope: Scope,
        /// For a user secret: the repositories that may read it (owner/name, comma-separated).
        /// Required when the secret is new; when updating, omitted keeps the current list.
        #[arg(long, conflicts_with = "repo")]
        repos: Option<String>,
        /// Read the value from this file instead of stdin.
        #[arg(long, conflicts_with = "env_file")]
        from_file: Option<PathBuf>,
        /// Import every NAME=value of this dotenv file (quotes, `export` prefixes, multi-line
        /// quoted values, comments) in one go: all are checked before any is stored, and a
        /// refusal names its line.
        #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "name")]
        env_file: Option<PathBuf>,
        /// Strip one trailing newline (\n or \r\n) from the value (what `echo` and editors add).
        #[arg(long)]
        trim: bool,
        /// Allow a name that changes how programs start (LD_PRELOAD, PATH, ...).
        #[arg(long)]
        allow_dangerous: bool,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// Change which repositories may read a user secret, without sending its value again.
    /// Prints the list before -> after.
    #[command(after_help = ACCESS_EXAMPLES)]
    Access {
        /// The user secret's name.
        name: String,
        /// The user the secret belongs to.
        #[arg(long)]
        user: String,
        /// The new list (owner/name, comma-separated; "" for none). Replaces the old one.
        #[arg(long, required_unless_present_any = ["add_repo", "remove_repo"], conflicts_with_all = ["add_repo", "remove_repo"])]
        repos: Option<String>,
        /// Add this repository to the list (repeatable, or comma-separated).
        #[arg(long, value_name = "OWNER/NAME")]
        add_repo: Vec<String>,
        /// Remove this repository from the list (repeatable, or comma-separated).
        #[arg(long, value_name = "OWNER/NAME")]
        remove_repo: Vec<String>,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// List the secrets of a user or a repository: names, scope, repositories, last update.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets list --user mona\n  sandbox-secrets list --repo octo/app --json"
    )]
    List {
        #[command(flatten)]
        scope: Scope,
        /// Print the list as JSON (times in RFC 3339).
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret (asks first when stdin is a terminal, unless --yes; declined: exit 2).
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets delete API_TOKEN --user mona\n  sandbox-secrets delete DB_URL --repo octo/app --yes"
    )]
    Delete {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        scope: Scope,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print the answer as JSON (with the ids of the sandboxes that see the change).
        #[arg(long)]
        json: bool,
    },
    /// Manage sandboxes: the sockets the platform mounts into containers.
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
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets backup /var/lib/sandbox-secrets/backup-$(date +%F).db"
    )]
    Backup {
        /// Where the daemon writes the copy (an absolute path is sent; it must not exist).
        file: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query the audit trail the daemon keeps in its state directory (audit.jsonl, rotated):
    /// sandbox reads, refusals and admin changes, by names only.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets audit --since 1h\n  sandbox-secrets audit --name API_TOKEN --since 2026-01-31T00:00:00Z\n  sandbox-secrets audit --sandbox 3f2a9c0d1e --json"
    )]
    Audit {
        /// State directory of the daemon (where audit.jsonl is).
        #[arg(
            long,
            env = "SANDBOX_SECRETS_STATE_DIR",
            default_value = "/var/lib/sandbox-secrets"
        )]
        state_dir: PathBuf,
        /// Only records at or after T: RFC 3339 (2026-01-31T12:00:00Z) or an age (90s, 15m, 2h,
        /// 7d).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only records of this sandbox.
        #[arg(long, value_name = "ID")]
        sandbox: Option<String>,
        /// Only records naming this secret.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon whether it serves (GET /v1/health on the admin socket); exit 0 when it
    /// answers "ok", 1 otherwise. For container HEALTHCHECKs and service probes.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets health\n  sandbox-secrets health --json --run-dir /srv/run"
    )]
    Health {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL on stdout.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets completion bash > /etc/bash_completion.d/sandbox-secrets\n  sandbox-secrets completion zsh > \"${fpath[1]}/_sandbox-secrets\"\n  sandbox-secrets completion fish > ~/.config/fish/completions/sandbox-secrets.fish"
    )]
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sandbox-secrets.1 and one per subcommand) into DIR (packaging).
    #[command(hide = true)]
    Man {
        /// The directory to write into (created when missing).
        dir: PathBuf,
    },
    /// Show which names a sandbox of (user, repo) would get, and from which level; warns about
    /// an incomplete registry triplet.
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets plan --user mona --repo octo/app\n  sandbox-secrets plan --user mona --repo octo/app --json"
    )]
    Plan {
        /// The sandbox's user.
        #[arg(long)]
        user: String,
        /// The sandbox's repository (owner/name).
        #[arg(long)]
        repo: String,
        /// Print the plan as JSON.
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
    #[command(
        after_help = "EXAMPLES:\n  TOKEN=$(sandbox-secrets token create --platform | tail -n1)\n  sandbox-secrets token create --user mona --expires 12h\n  sandbox-secrets token create --repo-admin octo/app"
    )]
    Create {
        #[command(flatten)]
        scope: TokenFor,
        /// How long it is valid: 30d, 12h, 90m, 3600s (at most 366d).
        #[arg(long, default_value = "30d")]
        expires: String,
    },
    /// List tokens: id, scope, created, expires (never the token).
    #[command(
        after_help = "EXAMPLES:\n  sandbox-secrets token list\n  sandbox-secrets token list --json"
    )]
    List {
        /// Print the tokens as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it authenticates nothing from the next request on.
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets token revoke 5f0c2a9e")]
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}
const SET_EXAMPLES: &str = "EXAMPLES:
  printf %s \"$TOKEN\" | sandbox-secrets set API_TOKEN --user mona --repos octo/app,octo/lib
  sandbox-secrets set DB_URL --repo octo/app --from-file ./db-url.txt
  sandbox-secrets set API_TOKEN --user mona --repos octo/app      # on a terminal: hidden prompt
  echo \"$TOKEN\" | sandbox-secrets set API_TOKEN --user mona --trim  # strip echo's newline
  sandbox-secrets set --repo octo/app --env-file .env              # many at once, all checked first";

const ACCESS_EXAMPLES: &str = "EXAMPLES:
  sandbox-secrets access API_TOKEN --user mona --add-repo octo/new
  sandbox-secrets access API_TOKEN --user mona --remove-repo octo/old
  sandbox-secrets access API_TOKEN --user mona --repos octo/app,octo/lib
  sandbox-secrets access API_TOKEN --user mona --repos \"\"        # no repository may read it";

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new key, re-seal every row under it in one transaction, retire the old key file
    /// (kept as key.retired-<id>).
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets key rotate")]
    Rotate {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the active key id, every key id this host holds, and the rows each seals.
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets key status --json")]
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Create a sandbox; prints "<id> <directory-to-mount>".
    #[command(
        after_help = "EXAMPLES:\n  read -r id dir < <(sandbox-secrets sandbox create --user mona --repo octo/app)\n  docker run -v \"$dir:/run/sandbox:ro\" my-sandbox-image"
    )]
    Create {
        /// The user working in the sandbox.
        #[arg(long)]
        user: String,
        /// The repository the sandbox is for (owner/name).
        #[arg(long)]
        repo: String,
        /// Print {"id", "dir"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sandboxes.
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets sandbox list --json")]
    List {
        /// Print the list as JSON (times in RFC 3339).
        #[arg(long)]
        json: bool,
    },
    /// Delete a sandbox: its socket and directory are removed.
    #[command(after_help = "EXAMPLES:\n  sandbox-secrets sandbox delete 3f2a9c0d1e")]
    Delete {
        /// The sandbox id `sandbox create` printed.
        id: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = args.iter().any(|a| a == "--json");
    // clap's own `parse` exits 0 when `--help` cannot be written; the text is lost, so it is 1.
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let usage = !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if usage && json {
                let message = e.kind().as_str().unwrap_or("usage error").to_owned();
                cli::print_json_error(
                    &format!("{message}: {}", first_line(&e.to_string())),
                    "usage",
                );
                return ExitCode::from(2);
            }
            let code = if e.print().is_err() && e.exit_code() == 0 {
                1
            } else {
                e.exit_code()
            };
            if usage {
                if let Some(hint) = cli::usage_hint(&args) {
                    eprintln!("hint: {hint}");
                }
            }
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
    };
    match run(cli) {
        Ok(()) if logging::stdout_failed() => {
            eprintln!("sandbox-secrets: error: cannot write to stdout");
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<cli::Canceled>() => {
            if json {
                cli::print_json_error("canceled", "canceled");
            } else {
                eprintln!("canceled");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            // Each cause once, whether an error names it in its message or returns it as its
            // source (or both).
            let line = chain::join_causes(e.chain().map(ToString::to_string));
            let rule = cli::embedded_rule(&line).unwrap_or_else(|| cli::rule_of(&line));
            // The rule's name, when the daemon gave one, ends the line (after any hint); JSON
            // carries it in its own field.
            let (message, named) = line
                .rfind(" (rule: ")
                .map_or((line.as_str(), ""), |i| line.split_at(i));
            if json {
                cli::print_json_error(message, rule);
            } else {
                let hint = cli::error_hint(message, rule, nix::unistd::geteuid().is_root());
                eprintln!("sandbox-secrets: error: {message}{hint}{named}");
            }
            ExitCode::FAILURE
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim_start_matches("error: ")
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
            store,
            host_id,
            tls_cert,
            tls_key,
        } => {
            let mut config = Config::new(state_dir, cli.run_dir.clone());
            config.http = http;
            config.tls = tls_cert.zip(tls_key);
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
            env_file,
            trim,
            allow_dangerous,
            json,
        } => {
            let options = cli::SetOptions {
                repos,
                trim,
                allow_dangerous,
                json,
            };
            match (name, env_file) {
                (_, Some(file)) => cli::set_env_file(&admin()?, &file, scope(s), &options),
                (Some(name), None) => {
                    cli::set(&admin()?, name, scope(s), from_file.as_deref(), &options)
                }
                (None, None) => anyhow::bail!("give a NAME, or --env-file FILE"),
            }
        }
        Command::Access {
            name,
            user,
            repos,
            add_repo,
            remove_repo,
            json,
        } => {
            let change = match repos {
                Some(list) => cli::AccessChange::Replace(cli::split_repos(&list)),
                None => cli::AccessChange::Edit {
                    add: add_repo.iter().flat_map(|r| cli::split_repos(r)).collect(),
                    remove: remove_repo
                        .iter()
                        .flat_map(|r| cli::split_repos(r))
                        .collect(),
                },
            };
            cli::access(&admin()?, name, user, change, json)
        }
        Command::List { scope: s, json } => cli::list(&admin()?, scope(s), json),
        Command::Delete {
            name,
            scope: s,
            yes,
            json,
        } => cli::delete(&admin()?, name, scope(s), yes, json),
        Command::Plan { user, repo, json } => cli::plan(&admin()?, user, repo, json),
        Command::Health { json } => cli::health(&cli.run_dir, json),
        Command::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sandbox-secrets", &mut out);
            cli::write_stdout(&out)
        }
        Command::Man { dir } => cli::man_pages(Cli::command(), &dir),
        Command::Key { command } => match command {
            KeyCommand::Rotate { json } => cli::key_rotate(&admin()?, json),
            KeyCommand::Status { json } => cli::key_status(&admin()?, json),
        },
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
        Command::Backup { file, json } => cli::backup(&admin()?, &file, json),
        Command::Audit {
            state_dir,
            since,
            sandbox,
            name,
            json,
        } => cli::audit(
            &state_dir,
            &cli::AuditFilter {
                since,
                sandbox,
                name,
            },
            json,
        ),
        Command::Status { json } => cli::status(&admin()?, json),
        Command::Sandbox { command } => match command {
            SandboxCommand::Create { user, repo, json } => {
                cli::sandbox_create(&admin()?, user, repo, json)
            }
            SandboxCommand::List { json } => cli::sandbox_list(&admin()?, json),
            SandboxCommand::Delete { id, json } => cli::sandbox_delete(&admin()?, id, json),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand has an EXAMPLES section and every argument a help line.
    #[test]
    fn every_subcommand_has_examples_and_every_argument_is_documented() {
        fn walk(cmd: &clap::Command, path: String) {
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path}: argument {} has no help",
                    arg.get_id()
                );
            }
            let subs: Vec<_> = cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let after = cmd
                    .get_after_help()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                assert!(after.starts_with("EXAMPLES:"), "{path} has no EXAMPLES");
            }
            for sub in subs {
                walk(sub, format!("{path} {}", sub.get_name()));
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        walk(&cmd, "sandbox-secrets".into());
    }
}
