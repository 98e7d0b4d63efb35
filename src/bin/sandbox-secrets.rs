//! The `sandbox-secrets` binary: clap subcommands to the daemon (`serve`) or the admin client.
//! Thin: parse, run, print the error once, map it to an exit code. Values come from stdin or
//! `--from-file`, never argv, and are never printed.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use zeroize::Zeroizing;

use sandbox_init::broker::api::{
    AccessRequest, BackupAnswer, BackupRequest, ChangeAnswer, IdRequest, KeyRotateAnswer,
    ListAnswer, PlanAnswer, SandboxInfo, SandboxList, ScopeRequest, SetRequest, UserRepoRequest,
};
use sandbox_init::broker::client::AdminClient;
use sandbox_init::broker::server::{self, Config};
use sandbox_init::broker::store::{KeyStatus, ScopeKind};
use sandbox_init::logging::{self, LogFormat};

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
        /// Serve a store older than the last one this host wrote (a restored backup), once.
        #[arg(long, env = "SANDBOX_SECRETS_ACCEPT_ROLLBACK")]
        accept_rollback: bool,
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
    },
    /// Change which repositories may read a user secret, without sending its value again.
    Access {
        name: String,
        #[arg(long)]
        user: String,
        /// The new list (owner/name, comma-separated; "" for none). Replaces the old one.
        #[arg(long)]
        repos: String,
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = if format!("{e:#}").contains("is dangerous") {
                " (pass --allow-dangerous to store it anyway)"
            } else {
                ""
            };
            eprintln!("sandbox-secrets: error: {e:#}{hint}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let level = logging::level_from_env("SANDBOX_SECRETS_LOG", tracing::Level::INFO.into());
    logging::install(level, cli.log_format);
    let admin = || AdminClient::new(&cli.run_dir).context("cannot start the admin client");
    match cli.command {
        Command::Serve {
            state_dir,
            accept_rollback,
        } => serve(state_dir, cli.run_dir.clone(), accept_rollback),
        Command::Set {
            name,
            scope,
            repos,
            from_file,
            allow_dangerous,
        } => {
            let value = read_value(&name, from_file.as_deref())?;
            let text = sandbox_init::protocol::check_value(&value)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("value of {name} refused"))?;
            let request = SetRequest {
                name,
                user: scope.user,
                repo: scope.repo,
                repos: repos.as_deref().map(split_repos),
                value: SecretString::from(text.to_owned()),
                allow_dangerous,
            };
            let a: ChangeAnswer = admin()?.call("secrets/set", &request)?;
            println!(
                "{} {} secret {} of {}",
                a.result,
                a.scope.noun(),
                a.name,
                a.owner
            );
            Ok(())
        }
        Command::Access { name, user, repos } => {
            let request = AccessRequest {
                name,
                user,
                repos: split_repos(&repos),
            };
            let a: ChangeAnswer = admin()?.call("secrets/access", &request)?;
            println!("access changed for user secret {} of {}", a.name, a.owner);
            Ok(())
        }
        Command::List { scope, json } => {
            let request = ScopeRequest {
                name: String::new(),
                user: scope.user,
                repo: scope.repo,
            };
            let a: ListAnswer = admin()?.call("secrets/list", &request)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
                return Ok(());
            }
            if a.secrets.is_empty() {
                eprintln!("no secrets");
                return Ok(());
            }
            let rows: Vec<[String; 4]> = a
                .secrets
                .iter()
                .map(|s| {
                    let repos = if s.repos.is_empty() && s.scope == ScopeKind::User {
                        "(none)".to_owned()
                    } else {
                        s.repos.join(",")
                    };
                    [
                        s.name.clone(),
                        format!("{}:{}", s.scope.noun(), s.owner),
                        repos,
                        utc(s.updated),
                    ]
                })
                .collect();
            print_table(["NAME", "SCOPE", "REPOS", "UPDATED"], &rows);
            Ok(())
        }
        Command::Delete { name, scope, yes } => {
            let (word, owner) = match (&scope.user, &scope.repo) {
                (Some(u), _) => ("user", u.as_str()),
                (_, Some(r)) => ("repository", r.as_str()),
                _ => unreachable!("clap requires one"),
            };
            if !yes && std::io::stdin().is_terminal() {
                eprint!("delete {word} secret {name} of {owner}? [y/N] ");
                std::io::stderr().flush().ok();
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    bail!("not deleted");
                }
            }
            let request = ScopeRequest {
                name,
                user: scope.user,
                repo: scope.repo,
            };
            let a: ChangeAnswer = admin()?.call("secrets/delete", &request)?;
            println!(
                "deleted {} secret {} of {}",
                a.scope.noun(),
                a.name,
                a.owner
            );
            Ok(())
        }
        Command::Plan { user, repo, json } => {
            let a: PlanAnswer = admin()?.call("plan", &UserRepoRequest { user, repo })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
                return Ok(());
            }
            println!(
                "a sandbox of {} on {} gets {} secret{}",
                a.user,
                a.repository,
                a.secrets.len(),
                if a.secrets.len() == 1 { "" } else { "s" }
            );
            let rows: Vec<[String; 3]> = a
                .secrets
                .iter()
                .map(|e| {
                    [
                        e.name.clone(),
                        e.from.as_str().to_owned(),
                        if e.overrides_repository {
                            "user secret wins over the repository secret of the same name".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            if !rows.is_empty() {
                print_table(["NAME", "FROM", "NOTE"], &rows);
            }
            Ok(())
        }
        Command::Key { command } => match command {
            KeyCommand::Rotate => {
                let a: KeyRotateAnswer = admin()?.call("key/rotate", &serde_json::json!({}))?;
                println!(
                    "rotated key {} -> {}; the old key is kept as key.retired-{}",
                    a.previous, a.key_id, a.previous
                );
                Ok(())
            }
            KeyCommand::Status { json } => {
                let a: KeyStatus = admin()?.call("key/status", &serde_json::json!({}))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                    return Ok(());
                }
                let rows: Vec<[String; 3]> = a
                    .held
                    .iter()
                    .map(|id| {
                        [
                            id.clone(),
                            if *id == a.active { "active" } else { "retired" }.to_owned(),
                            a.rows.get(id).copied().unwrap_or(0).to_string(),
                        ]
                    })
                    .chain(
                        a.rows
                            .iter()
                            .filter(|(id, _)| !a.held.contains(id))
                            .map(|(id, n)| [id.clone(), "not held".into(), n.to_string()]),
                    )
                    .collect();
                print_table(["KEY ID", "STATE", "ROWS"], &rows);
                Ok(())
            }
        },
        Command::Backup { file } => {
            let path = std::path::absolute(&file)
                .with_context(|| format!("backup path {}", file.display()))?;
            let a: BackupAnswer = admin()?.call(
                "store/backup",
                &BackupRequest {
                    path: path.display().to_string(),
                },
            )?;
            println!(
                "backup of generation {} written to {}",
                a.generation, a.path
            );
            Ok(())
        }
        Command::Sandbox { command } => match command {
            SandboxCommand::Create { user, repo } => {
                let a: SandboxInfo =
                    admin()?.call("sandboxes/create", &UserRepoRequest { user, repo })?;
                println!("{} {}", a.id, a.dir);
                Ok(())
            }
            SandboxCommand::List { json } => {
                let a: SandboxList = admin()?.call("sandboxes/list", &serde_json::json!({}))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                    return Ok(());
                }
                let rows: Vec<[String; 5]> = a
                    .sandboxes
                    .into_iter()
                    .map(|s| [s.id, s.user, s.repository, utc(s.created), s.dir])
                    .collect();
                if rows.is_empty() {
                    eprintln!("no sandboxes");
                } else {
                    print_table(["ID", "USER", "REPOSITORY", "CREATED", "DIRECTORY"], &rows);
                }
                Ok(())
            }
            SandboxCommand::Delete { id } => {
                let a: SandboxInfo = admin()?.call("sandboxes/delete", &IdRequest { id })?;
                println!("deleted sandbox {}", a.id);
                Ok(())
            }
        },
    }
}

fn serve(state_dir: PathBuf, run_dir: PathBuf, accept_rollback: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        let mut config = Config::new(state_dir, run_dir);
        config.accept_rollback = accept_rollback;
        server::run(config, shutdown)
            .await
            .context("sandbox-secrets serve")
    })
}

/// Splits a comma-separated repository list; empty parts are dropped ("" is no repository).
fn split_repos(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads the value: from `file`, else from stdin (on a terminal: one line, without echo).
fn read_value(name: &str, file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::new());
    if let Some(path) = file {
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("cannot open value file {}", path.display()))?;
        f.read_to_end(&mut value)
            .with_context(|| format!("cannot read value file {}", path.display()))?;
        return Ok(value);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value of {name} (input hidden, end with Enter): ");
        std::io::stderr().flush().ok();
        let line = read_hidden_line(&stdin)?;
        eprintln!();
        return Ok(line);
    }
    stdin
        .lock()
        .read_to_end(&mut value)
        .context("cannot read the value from stdin")?;
    Ok(value)
}

/// Reads one line from the terminal with echo off, restoring the terminal afterwards.
fn read_hidden_line(stdin: &std::io::Stdin) -> Result<Zeroizing<Vec<u8>>> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = tcgetattr(stdin).context("cannot read terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(stdin, SetArg::TCSANOW, &quiet).context("cannot turn off echo")?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(stdin, SetArg::TCSANOW, &saved);
    read.context("cannot read the value from the terminal")?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Zeroizing::new(trimmed.as_bytes().to_vec()))
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_074_525), "2025-11-25T12:42:05Z");
    }

    #[test]
    fn repo_lists_split_on_commas() {
        assert_eq!(split_repos("a/b, c/d,"), ["a/b", "c/d"]);
        assert!(split_repos("").is_empty());
    }
}
