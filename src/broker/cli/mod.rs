//! The `sandbox-secrets` admin commands, after parsing: read the value (stdin, a file, or a
//! terminal without echo), build the request, call the admin client, print the answer (tables
//! and times through [`table`]). The binary's edge, so errors are `anyhow` with context. Values
//! come from stdin or a file, never argv, and are never printed.

// std's print macros panic when their stream is closed or full (exit 134 under `panic=abort`).
// These shadow them in this module: stderr failures are ignored, a stdout failure is remembered
// by `logging::to_stdout` and makes the command exit 1 (the binary's `main`).
macro_rules! println {
    () => {{ let _ = crate::logging::to_stdout(format_args!("\n")); }};
    ($($t:tt)*) => {{ let _ = crate::logging::to_stdout(format_args!("{}\n", format_args!($($t)*))); }};
}
macro_rules! print {
    ($($t:tt)*) => {{ let _ = crate::logging::to_stdout(format_args!($($t)*)); }};
}
macro_rules! eprintln {
    () => { crate::logging::to_stderr(format_args!("\n")) };
    ($($t:tt)*) => { crate::logging::to_stderr(format_args!("{}\n", format_args!($($t)*))) };
}
macro_rules! eprint {
    ($($t:tt)*) => { crate::logging::to_stderr(format_args!($($t)*)) };
}

pub mod table;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::admin::{
    AccessRequest, BackupRequest, CreateSandboxRequest, DeleteRequest, DeleteSandboxRequest,
    KeyRotateRequest, KeyStatusRequest, ListRequest, ListSandboxesRequest, PlanRequest, SetRequest,
    StatusRequest,
};
use super::client::AdminClient;
use super::server::{self, Config};
use super::store::ScopeKind;
use crate::protocol;

/// Exactly one of a user and a repository, as the command line gave it.
pub struct Scope {
    pub user: Option<String>,
    pub repo: Option<String>,
}

/// `sandbox-secrets set`.
pub fn set(
    admin: &AdminClient,
    name: String,
    scope: Scope,
    repos: Option<&str>,
    from_file: Option<&Path>,
    allow_dangerous: bool,
    json: bool,
) -> Result<()> {
    let value = read_value(&name, from_file)?;
    let text = protocol::check_value(&value)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("value of {name} refused"))?;
    let request = SetRequest {
        name,
        user: scope.user,
        repo: scope.repo,
        repos: repos.map(split_repos),
        value: SecretString::from(text.to_owned()),
        allow_dangerous,
    };
    let a = admin.call(&request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    println!(
        "{} {} secret {} of {}{}",
        a.result,
        a.scope.noun(),
        a.name,
        a.owner,
        a.affected()
    );
    Ok(())
}

/// `sandbox-secrets access`.
pub fn access(
    admin: &AdminClient,
    name: String,
    user: String,
    repos: &str,
    json: bool,
) -> Result<()> {
    let a = admin.call(&AccessRequest {
        name,
        user,
        repos: split_repos(repos),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    println!(
        "access changed for user secret {} of {}{}",
        a.name,
        a.owner,
        a.affected()
    );
    Ok(())
}

/// `sandbox-secrets list`.
pub fn list(admin: &AdminClient, scope: Scope, json: bool) -> Result<()> {
    let a = admin.call(&ListRequest {
        name: String::new(),
        user: scope.user,
        repo: scope.repo,
    })?;
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
                table::utc(s.updated),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(["NAME", "SCOPE", "REPOS", "UPDATED"], &rows)
    );
    Ok(())
}

/// `sandbox-secrets delete`: asks first on a terminal unless `yes`.
pub fn delete(
    admin: &AdminClient,
    name: String,
    scope: Scope,
    yes: bool,
    json: bool,
) -> Result<()> {
    let (word, owner) = match (&scope.user, &scope.repo) {
        (Some(u), _) => ("user", u.as_str()),
        (_, Some(r)) => ("repository", r.as_str()),
        _ => bail!("give exactly one of --user or --repo"),
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
    let a = admin.call(&DeleteRequest {
        name,
        user: scope.user,
        repo: scope.repo,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    println!(
        "deleted {} secret {} of {}{}",
        a.scope.noun(),
        a.name,
        a.owner,
        a.affected()
    );
    Ok(())
}

/// `sandbox-secrets plan`.
pub fn plan(admin: &AdminClient, user: String, repo: String, json: bool) -> Result<()> {
    let a = admin.call(&PlanRequest { user, repo })?;
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
                [
                    (e.overrides_repository)
                        .then_some("user secret wins over the repository secret of the same name"),
                    crate::protocol::is_dangerous(&e.name).then_some(
                        "dangerous name, allowed explicitly (sandbox-init accepts it, saying so)",
                    ),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!("{}", table::render(["NAME", "FROM", "NOTE"], &rows));
    }
    Ok(())
}

/// `sandbox-secrets sandbox create`: prints "<id> <directory-to-mount>".
pub fn sandbox_create(admin: &AdminClient, user: String, repo: String) -> Result<()> {
    let a = admin.call(&CreateSandboxRequest { user, repo })?;
    println!("{} {}", a.id, a.dir);
    Ok(())
}

/// `sandbox-secrets sandbox list`.
pub fn sandbox_list(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&ListSandboxesRequest {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = a
        .sandboxes
        .into_iter()
        .map(|s| {
            let host = if s.host.is_empty() {
                "-".into()
            } else {
                s.host
            };
            [
                s.id,
                s.user,
                s.repository,
                host,
                table::utc(s.created),
                s.dir,
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("no sandboxes");
    } else {
        print!(
            "{}",
            table::render(
                ["ID", "USER", "REPOSITORY", "HOST", "CREATED", "DIRECTORY"],
                &rows
            )
        );
    }
    Ok(())
}

/// `sandbox-secrets sandbox delete`.
pub fn sandbox_delete(admin: &AdminClient, id: String) -> Result<()> {
    let a = admin.call(&DeleteSandboxRequest { id })?;
    println!("deleted sandbox {}", a.id);
    Ok(())
}

/// `sandbox-secrets key rotate`: a new key, every row re-sealed, the old key retired.
pub fn key_rotate(admin: &AdminClient) -> Result<()> {
    let a = admin.call(&KeyRotateRequest {})?;
    println!(
        "rotated key {} -> {}; the old key is kept as key.retired-{}",
        a.previous, a.key_id, a.previous
    );
    Ok(())
}

/// `sandbox-secrets key status`: the active key id, the ids this host holds, rows per id.
pub fn key_status(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&KeyStatusRequest {})?;
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
    print!("{}", table::render(["KEY ID", "STATE", "ROWS"], &rows));
    Ok(())
}

/// `sandbox-secrets status`: the store, its connection, schema, generation, this host's
/// sandboxes and the key ids it holds.
pub fn status(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&StatusRequest {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    let held: Vec<String> = a
        .keys
        .held
        .iter()
        .map(|id| {
            if *id == a.keys.active {
                format!("{id} (active)")
            } else {
                id.clone()
            }
        })
        .collect();
    let rows = [
        ["store".to_owned(), format!("{} {}", a.store, a.location)],
        ["connection".into(), a.connection],
        ["schema version".into(), a.schema_version.to_string()],
        ["generation".into(), a.generation.to_string()],
        ["host".into(), a.host_id],
        [
            "sandboxes".into(),
            format!(
                "{} on this host ({} in the store)",
                a.sandboxes_here, a.sandboxes_total
            ),
        ],
        ["keys held".into(), held.join(", ")],
    ];
    print!("{}", table::render(["WHAT", "STATE"], &rows));
    Ok(())
}

/// `sandbox-secrets backup FILE`: a consistent copy written by the daemon while it serves.
pub fn backup(admin: &AdminClient, file: &Path) -> Result<()> {
    let path =
        std::path::absolute(file).with_context(|| format!("backup path {}", file.display()))?;
    let a = admin.call(&BackupRequest {
        path: path.display().to_string(),
    })?;
    println!(
        "backup of generation {} written to {}",
        a.generation, a.path
    );
    Ok(())
}

/// `sandbox-secrets serve`: the daemon on a multi-threaded runtime until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<()> {
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
        server::run(config, shutdown)
            .await
            .context("sandbox-secrets serve")
    })
}

/// Splits a comma-separated repository list; empty parts are dropped ("" is no repository).
pub fn split_repos(list: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_lists_split_on_commas() {
        assert_eq!(split_repos("a/b, c/d,"), ["a/b", "c/d"]);
        assert!(split_repos("").is_empty());
    }
}
