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

pub mod dotenv;
pub mod table;
pub mod tokens;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::admin::{
    AccessRequest, BackupRequest, CreateSandboxRequest, DeleteRequest, DeleteSandboxRequest,
    ImportEntry, ImportRequest, KeyRotateRequest, KeyStatusRequest, ListRequest,
    ListSandboxesRequest, PlanRequest, SetRequest, StatusRequest,
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

/// A declined confirmation: the binary prints "canceled" and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("canceled")]
pub struct Canceled;

/// A refusal of the CLI's own, with the rule it names (the `rule` of `--json` errors).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

fn refusal(rule: &'static str, message: impl Into<String>) -> anyhow::Error {
    Refusal {
        rule,
        message: message.into(),
    }
    .into()
}

/// The options `set` and `set --env-file` share.
pub struct SetOptions {
    pub repos: Option<String>,
    pub trim: bool,
    pub allow_dangerous: bool,
    pub json: bool,
}

/// The three names of a registry triplet end in these.
const REGISTRY_SUFFIXES: [&str; 3] = [
    "_CONTAINER_REGISTRY_SERVER",
    "_CONTAINER_REGISTRY_USER",
    "_CONTAINER_REGISTRY_PASSWORD",
];

/// The `<ID>` and part of a registry triplet name (upper-cased), if it is one.
fn registry_part(name: &str) -> Option<(String, &'static str)> {
    let up = name.to_ascii_uppercase();
    REGISTRY_SUFFIXES.iter().find_map(|suffix| {
        up.strip_suffix(suffix)
            .filter(|id| !id.is_empty())
            .map(|id| (id.to_owned(), *suffix))
    })
}

/// What to do with a value's trailing newline. Pure: the value's bytes, the name and `--trim`
/// in, the bytes to store (or the refusal) and a warning out.
pub fn newline_rule(
    name: &str,
    value: &[u8],
    trim: bool,
    from_pipe: bool,
) -> Result<(usize, Option<String>), anyhow::Error> {
    let newline = if value.ends_with(b"\r\n") {
        2
    } else if value.ends_with(b"\n") {
        1
    } else {
        0
    };
    if newline == 0 {
        return Ok((value.len(), None));
    }
    if trim {
        return Ok((value.len() - newline, None));
    }
    if registry_part(name).is_some() {
        return Err(refusal(
            "registry-newline",
            format!(
                "value of {name} ends in a newline: a registry server, user or password never \
                 holds one (it could never log in); pass --trim, or use printf %s instead of echo"
            ),
        ));
    }
    let single = !value[..value.len() - newline].ends_with(b"\n");
    let warning = (from_pipe && single).then(|| {
        format!(
            "warning: the value of {name} ends in a newline, kept (values are stored byte for \
             byte); pass --trim to strip it"
        )
    });
    Ok((value.len(), warning))
}

/// Warnings for the registry triplets among `names` that lack a part, naming the parts.
pub fn incomplete_triplets<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<String, Vec<&'static str>> = Default::default();
    for name in names {
        if let Some((id, part)) = registry_part(name) {
            groups.entry(id).or_default().push(part);
        }
    }
    groups
        .into_iter()
        .filter(|(_, parts)| parts.len() < 3)
        .map(|(id, parts)| {
            let missing: Vec<String> = REGISTRY_SUFFIXES
                .iter()
                .filter(|s| !parts.contains(s))
                .map(|s| format!("{id}{s}"))
                .collect();
            format!(
                "registry credentials {id} are incomplete: {} missing (sandbox-init writes no \
                 docker login for {id} until all three are set)",
                missing.join(", ")
            )
        })
        .collect()
}

/// `sandbox-secrets set NAME`.
pub fn set(
    admin: &AdminClient,
    name: String,
    scope: Scope,
    from_file: Option<&Path>,
    options: &SetOptions,
) -> Result<()> {
    let (value, from_pipe) = read_value(&name, from_file)?;
    let (keep, warning) = newline_rule(&name, &value, options.trim, from_pipe)?;
    let text = protocol::check_value(&value[..keep])
        .map_err(anyhow::Error::from)
        .with_context(|| format!("value of {name} refused"))?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    let request = SetRequest {
        name,
        user: scope.user.clone(),
        repo: scope.repo.clone(),
        repos: options.repos.as_deref().map(split_repos),
        value: SecretString::from(text.to_owned()),
        allow_dangerous: options.allow_dangerous,
    };
    let a = admin.call(&request)?;
    warn_triplets(admin, &scope, &a.name);
    if options.json {
        return print_json(&a);
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

/// After a registry name was set: warns when its triplet is incomplete among the scope's own
/// secrets (a part may still come from the other level: `plan` shows a sandbox's whole set).
fn warn_triplets(admin: &AdminClient, scope: &Scope, name: &str) {
    let Some((id, _)) = registry_part(name) else {
        return;
    };
    let Ok(list) = admin.call(&ListRequest {
        name: String::new(),
        user: scope.user.clone(),
        repo: scope.repo.clone(),
    }) else {
        return;
    };
    let whose = match (&scope.user, &scope.repo) {
        (Some(u), _) => format!("user {u}'s secrets; unless a repository secret supplies it"),
        (_, Some(r)) => format!("repository {r}'s secrets; unless a user secret supplies it"),
        _ => return,
    };
    for w in incomplete_triplets(list.secrets.iter().map(|s| s.name.as_str())) {
        if w.contains(&format!(" {id} ")) {
            eprintln!("warning: {w} [among {whose}]");
        }
    }
}

/// `sandbox-secrets set --env-file FILE`: the file parsed and every entry checked here
/// (syntax, name, value, newline rule), then all sent in one `secrets/import`, which the daemon
/// stores in one transaction: all, or (the scope's limit, a missing `--repos`, any refusal)
/// none. Every refusal names the file's line.
pub fn set_env_file(
    admin: &AdminClient,
    file: &Path,
    scope: Scope,
    options: &SetOptions,
) -> Result<()> {
    let raw = Zeroizing::new(
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let text = std::str::from_utf8(&raw).map_err(|e| {
        refusal(
            "value-utf8",
            format!(
                "{} is not UTF-8 text (at byte {})",
                file.display(),
                e.valid_up_to()
            ),
        )
    })?;
    let entries = dotenv::parse(text).map_err(|e| {
        refusal(
            "dotenv-syntax",
            format!("{}: {e}; nothing was stored", file.display()),
        )
    })?;
    if entries.is_empty() {
        return Err(refusal(
            "dotenv-empty",
            format!(
                "{} holds no NAME=value line; nothing was stored",
                file.display()
            ),
        ));
    }
    let at = |line: usize, e: &dyn std::fmt::Display| {
        format!("{}: line {line}: {e}; nothing was stored", file.display())
    };
    let mut sent = Vec::with_capacity(entries.len());
    for e in &entries {
        protocol::normalize_name(&e.name, options.allow_dangerous)
            .map_err(|err| refusal(rule_of(&err.to_string()), at(e.line, &err)))?;
        let (keep, _) = newline_rule(&e.name, e.value.as_bytes(), options.trim, false)
            .map_err(|err| refusal(rule_of(&err.to_string()), at(e.line, &err)))?;
        let text = protocol::check_value(&e.value.as_bytes()[..keep])
            .map_err(|err| refusal(rule_of(&err.to_string()), at(e.line, &err)))?;
        sent.push(ImportEntry {
            name: e.name.clone(),
            value: SecretString::from(text.to_owned()),
        });
    }
    let request = ImportRequest {
        user: scope.user.clone(),
        repo: scope.repo.clone(),
        repos: options.repos.as_deref().map(split_repos),
        allow_dangerous: options.allow_dangerous,
        entries: sent,
    };
    let a = match admin.call(&request) {
        Ok(a) => a,
        Err(err) => {
            let message = err.to_string();
            let line = entry_index(&message)
                .and_then(|i| entries.get(i.checked_sub(1)?))
                .map(|e| e.line);
            let message = match line {
                Some(line) => format!("{}: line {line}: {message}", file.display()),
                None => format!("{}: {message}", file.display()),
            };
            return Err(refusal(rule_of(&message), message));
        }
    };
    drop(request);
    // Registry triplets among the scope's secrets now (a part may still come from the other
    // level: `plan` shows a sandbox's whole set).
    if let Ok(list) = admin.call(&ListRequest {
        name: String::new(),
        user: scope.user.clone(),
        repo: scope.repo.clone(),
    }) {
        let imported: Vec<&str> = a.secrets.iter().map(|s| s.name.as_str()).collect();
        for w in incomplete_triplets(list.secrets.iter().map(|s| s.name.as_str())) {
            if imported
                .iter()
                .any(|n| registry_part(n).is_some_and(|(id, _)| w.contains(&format!(" {id} "))))
            {
                eprintln!("warning: {w}");
            }
        }
    }
    if options.json {
        return print_json(&a);
    }
    let noun = a.scope.noun();
    for s in &a.secrets {
        println!("{} {noun} secret {} of {}", s.result, s.name, a.owner);
    }
    let created = a.secrets.iter().filter(|s| s.result == "created").count();
    println!(
        "imported {} secret{} from {} in one transaction ({created} created, {} updated){}",
        a.secrets.len(),
        if a.secrets.len() == 1 { "" } else { "s" },
        file.display(),
        a.secrets.len() - created,
        a.affected()
    );
    Ok(())
}

/// The 1-based entry a refused import names (`entry 3 (NAME) refused...`), if any. Pure.
fn entry_index(message: &str) -> Option<usize> {
    let rest = message.strip_prefix("entry ")?;
    let digits = rest.split(' ').next()?;
    digits.parse().ok()
}

/// How `access` changes a user secret's list.
pub enum AccessChange {
    /// `--repos`: the whole new list.
    Replace(Vec<String>),
    /// `--add-repo` / `--remove-repo`.
    Edit {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

/// The list after `change`, from `before`. Pure. Repositories compare case-insensitively
/// (the daemon stores them lower-case); a removal of one not in the list is refused.
pub fn apply_access(before: &[String], change: &AccessChange) -> Result<Vec<String>> {
    match change {
        AccessChange::Replace(list) => Ok(list.clone()),
        AccessChange::Edit { add, remove } => {
            let mut out: Vec<String> = before.to_vec();
            for r in remove {
                let Some(at) = out.iter().position(|x| x.eq_ignore_ascii_case(r)) else {
                    return Err(refusal(
                        "repo-not-listed",
                        format!(
                            "{r} is not among the repositories that may read it ({}); nothing changed",
                            shown_list(before)
                        ),
                    ));
                };
                out.remove(at);
            }
            for r in add {
                if !out.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                    out.push(r.clone());
                }
            }
            Ok(out)
        }
    }
}

fn shown_list(list: &[String]) -> String {
    if list.is_empty() {
        "(none)".into()
    } else {
        list.join(",")
    }
}

/// `sandbox-secrets access`: prints the list before -> after.
pub fn access(
    admin: &AdminClient,
    name: String,
    user: String,
    change: AccessChange,
    json: bool,
) -> Result<()> {
    let current = admin.call(&ListRequest {
        name: String::new(),
        user: Some(user.clone()),
        repo: None,
    })?;
    let upper = name.to_ascii_uppercase();
    let Some(info) = current.secrets.iter().find(|s| s.name == upper) else {
        return Err(refusal(
            "not-found",
            format!("no user secret {upper} for {user}"),
        ));
    };
    let before = info.repos.clone();
    let repos = apply_access(&before, &change)?;
    let a = admin.call(&AccessRequest {
        name,
        user: user.clone(),
        repos,
    })?;
    let after = admin
        .call(&ListRequest {
            name: String::new(),
            user: Some(user),
            repo: None,
        })?
        .secrets
        .into_iter()
        .find(|s| s.name == a.name)
        .map(|s| s.repos)
        .unwrap_or_default();
    if json {
        let mut v = serde_json::to_value(&a)?;
        v["before"] = serde_json::json!(before);
        v["after"] = serde_json::json!(after);
        return print_json(&v);
    }
    println!(
        "access changed for user secret {} of {}: {} -> {}{}",
        a.name,
        a.owner,
        shown_list(&before),
        shown_list(&after),
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
        return print_json(&a);
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
            return Err(Canceled.into());
        }
    }
    let a = admin.call(&DeleteRequest {
        name,
        user: scope.user,
        repo: scope.repo,
    })?;
    if json {
        return print_json(&a);
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
    let warnings = incomplete_triplets(a.secrets.iter().map(|e| e.name.as_str()));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if json {
        let mut v = serde_json::to_value(&a)?;
        v["warnings"] = serde_json::json!(warnings);
        return print_json(&v);
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
pub fn sandbox_create(admin: &AdminClient, user: String, repo: String, json: bool) -> Result<()> {
    let a = admin.call(&CreateSandboxRequest { user, repo })?;
    if json {
        return print_json(&a);
    }
    println!("{} {}", a.id, a.dir);
    Ok(())
}

/// `sandbox-secrets sandbox list`.
pub fn sandbox_list(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&ListSandboxesRequest {})?;
    if json {
        return print_json(&a);
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
pub fn sandbox_delete(admin: &AdminClient, id: String, json: bool) -> Result<()> {
    let a = admin.call(&DeleteSandboxRequest { id })?;
    if json {
        return print_json(&a);
    }
    println!("deleted sandbox {}", a.id);
    Ok(())
}

/// `sandbox-secrets key rotate`: a new key, every row re-sealed, the old key retired.
pub fn key_rotate(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&KeyRotateRequest {})?;
    if json {
        return print_json(&a);
    }
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
        return print_json(&a);
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
pub fn backup(admin: &AdminClient, file: &Path, json: bool) -> Result<()> {
    let path =
        std::path::absolute(file).with_context(|| format!("backup path {}", file.display()))?;
    let a = admin.call(&BackupRequest {
        path: path.display().to_string(),
    })?;
    if json {
        return print_json(&a);
    }
    println!(
        "backup of generation {} written to {}",
        a.generation, a.path
    );
    Ok(())
}

/// `sandbox-secrets serve`: the daemon on a multi-threaded runtime until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<()> {
    super::audit::install_file(&config.state_dir);
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

/// `sandbox-secrets health`: `GET /v1/health` on the admin socket; `Ok` only for a 200 "ok".
/// The probe sends no value, so it needs none of the admin client's peer checks.
pub fn health(run_dir: &Path, json: bool) -> Result<()> {
    let socket = super::sandboxes::Layout::new(run_dir).admin_socket();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let answer = runtime
        .block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                protocol::unix_request(
                    &socket,
                    hyper::Method::GET,
                    super::http::admin::HEALTH_PATH,
                    None,
                    64 * 1024,
                ),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("no health answer from {} in 10 s", socket.display()))?
        .with_context(|| format!("daemon not reachable at {}", socket.display()))?;
    if !answer.status.is_success() {
        bail!("daemon at {} answered {}", socket.display(), answer.status);
    }
    let health: super::http::admin::Health =
        serde_json::from_slice(&answer.body).context("the health answer is not understood")?;
    if health.status != "ok" {
        bail!("daemon at {} is {}", socket.display(), health.status);
    }
    if json {
        return print_json(&health);
    } else {
        println!(
            "ok: sandbox-secrets {} serving {} sandbox{} at {}",
            health.version,
            health.sandboxes,
            if health.sandboxes == 1 { "" } else { "es" },
            socket.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to stdout (completion scripts).
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    print!("{}", String::from_utf8_lossy(bytes));
    Ok(())
}

/// Writes `sandbox-secrets.1` and `sandbox-secrets-<sub>.1` for every visible subcommand (and
/// their subcommands) into `dir`.
pub fn man_pages(command: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fn write(cmd: clap::Command, name: String, dir: &Path) -> Result<()> {
        // clap takes a 'static name; this runs once per page of a one-shot command.
        let cmd = cmd.name(&*Box::leak(name.clone().into_boxed_str()));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut out)
            .context("cannot render a man page")?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            write(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut command = command;
    command.build();
    write(command, "sandbox-secrets".into(), dir)
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
/// The flag says whether it came from a pipe or file (where a trailing newline is likely an
/// accident of `echo` or an editor) rather than the hidden prompt.
fn read_value(name: &str, file: Option<&Path>) -> Result<(Zeroizing<Vec<u8>>, bool)> {
    let mut value = Zeroizing::new(Vec::new());
    if let Some(path) = file {
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("cannot open value file {}", path.display()))?;
        f.read_to_end(&mut value)
            .with_context(|| format!("cannot read value file {}", path.display()))?;
        return Ok((value, true));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value of {name} (input hidden, end with Enter): ");
        std::io::stderr().flush().ok();
        let line = read_hidden_line(&stdin)?;
        eprintln!();
        return Ok((line, false));
    }
    stdin
        .lock()
        .read_to_end(&mut value)
        .context("cannot read the value from stdin")?;
    Ok((value, true))
}

/// What one byte typed at the hidden prompt does. Pure.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Char(u8),
    Erase,
    Kill,
    Done,
    Cancel,
}

fn key(b: u8, empty: bool) -> Key {
    match b {
        b'\r' | b'\n' => Key::Done,
        0x03 | 0x1c => Key::Cancel,   // ^C, ^\\
        0x04 if empty => Key::Cancel, // ^D on an empty line
        0x7f | 0x08 => Key::Erase,    // DEL, ^H
        0x15 => Key::Kill,            // ^U
        _ => Key::Char(b),
    }
}

/// Reads one line from the terminal with echo off and signals off (so ^C and ^\\ arrive as
/// bytes and cancel here, after the terminal is restored, rather than killing the process with
/// echo still off), one byte at a time (erase and kill handled here), restoring the terminal
/// whatever happens.
fn read_hidden_line(stdin: &std::io::Stdin) -> Result<Zeroizing<Vec<u8>>> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, SpecialCharacterIndices};
    let saved = tcgetattr(stdin).context("cannot read terminal settings")?;
    let mut quiet = saved.clone();
    quiet
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG);
    quiet.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    quiet.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    tcsetattr(stdin, SetArg::TCSAFLUSH, &quiet).context("cannot turn off echo")?;
    // Sized once (the value limit and a little): growing would leave copies of what was typed.
    let mut line = Zeroizing::new(Vec::with_capacity(protocol::MAX_VALUE_BYTES + 64));
    let mut byte = [0u8; 1];
    let outcome = loop {
        match stdin.lock().read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) => match key(byte[0], line.is_empty()) {
                Key::Done => break Ok(()),
                Key::Cancel => break Err(anyhow::Error::from(Canceled)),
                Key::Erase => {
                    // Drop a whole UTF-8 character.
                    while let Some(b) = line.pop() {
                        if b & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                Key::Kill => line.clear(),
                Key::Char(b) => line.push(b),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(anyhow::Error::from(e).context("cannot read the value from the terminal"))
            }
        }
    };
    let _ = tcsetattr(stdin, SetArg::TCSANOW, &saved);
    if outcome.is_err() {
        eprintln!();
    }
    outcome.map(|()| line)
}

/// Prints `value` as pretty JSON, with one spelling throughout: scopes `user` / `repository`,
/// times (`created`, `updated`) as RFC 3339 UTC strings.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut v = serde_json::to_value(value)?;
    normalize_json(&mut v);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The rewrite [`print_json`] applies. Pure.
pub fn normalize_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match (k.as_str(), &*x) {
                    ("created" | "updated", Value::Number(n)) => {
                        if let Some(secs) = n.as_i64() {
                            *x = Value::String(table::utc(secs));
                        }
                    }
                    ("scope", Value::String(s)) if s == "repo" => {
                        *x = Value::String("repository".into());
                    }
                    _ => normalize_json(x),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_json),
        _ => {}
    }
}

/// Prints `{"error": message, "rule": rule}` on stdout (with `--json`, stdout is always one
/// JSON document, success or not).
pub fn print_json_error(message: &str, rule: &str) {
    let v = serde_json::json!({ "error": message, "rule": rule });
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// The rule an error message names, for `--json` errors and hints: a short stable word a
/// script can match on. Pure; `error` when the message names none of them.
/// The rule a daemon refusal names (`... (rule: name-dangerous)`, added by the admin client from
/// the answer's `{"rule"}`), so the CLI, its `--json` errors and the platform API agree.
pub fn embedded_rule(message: &str) -> Option<&str> {
    let start = message.rfind("(rule: ")? + "(rule: ".len();
    let len = message[start..].find(')')?;
    Some(&message[start..start + len])
}

/// The rule of an error the CLI found itself (or a daemon refusal without one), from its words.
pub fn rule_of(message: &str) -> &'static str {
    const RULES: &[(&str, &str)] = &[
        ("ends in a newline", "registry-newline"),
        ("is dangerous", "name-dangerous"),
        ("must not start with GITHUB_", "name-reserved-github"),
        ("must not start with SANDBOX_", "name-reserved-sandbox"),
        ("must not start with a digit", "name-leading-digit"),
        (
            "may only contain letters, digits and underscores",
            "name-characters",
        ),
        ("secret name is empty", "name-empty"),
        ("secret name is longer", "name-length"),
        ("-byte limit", "value-size"),
        ("contains a NUL byte", "value-nul"),
        ("not valid UTF-8", "value-utf8"),
        ("is not UTF-8 text", "value-utf8"),
        ("secret value is empty", "value-empty"),
        ("must be owner/name", "repository-name"),
        ("must be 1-39 letters", "user-name"),
        ("secrets (the limit)", "secrets-per-scope"),
        ("more than the limit of", "secrets-per-scope"),
        ("needs --repos", "repositories-required"),
        (
            "give the repositories that may read it",
            "repositories-required",
        ),
        ("given twice in the import", "import-duplicate"),
        (
            "--repos is for user secrets",
            "repositories-on-repository-secret",
        ),
        ("is not among the repositories", "repo-not-listed"),
        ("no user secret", "not-found"),
        ("no repository secret", "not-found"),
        ("no sandbox", "not-found"),
        ("cannot reach the daemon", "daemon-unreachable"),
        ("daemon not reachable", "daemon-unreachable"),
        ("refusing to talk to", "daemon-impostor"),
        ("no NAME=value line", "dotenv-empty"),
        ("never closed", "dotenv-syntax"),
        ("has no '='", "dotenv-syntax"),
        ("expected NAME=value", "dotenv-syntax"),
        ("text after the closing quote", "dotenv-syntax"),
        ("is already set on line", "dotenv-syntax"),
        ("state directory", "state-dir"),
        ("run directory", "run-dir"),
        ("Permission denied", "permission"),
        ("no audit.jsonl", "audit-missing"),
        ("not a time", "usage"),
    ];
    RULES
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("error", |(_, rule)| rule)
}

/// A hint after an error line, for the mistakes with a known way out.
pub fn error_hint(message: &str, rule: &str, root: bool) -> &'static str {
    match rule {
        "name-dangerous" => " (pass --allow-dangerous to store it anyway)",
        _ if !root
            && (rule == "state-dir"
                || rule == "run-dir"
                || (rule == "permission"
                    && (message.contains("/var/lib/sandbox-secrets")
                        || message.contains("/run/sandbox-secrets")))) =>
        {
            "\nhint: the default directories (/var/lib/sandbox-secrets, /run/sandbox-secrets) are \
             root's: run as root (or the packaged service), or choose directories you own with \
             --state-dir and --run-dir (env SANDBOX_SECRETS_STATE_DIR, SANDBOX_SECRETS_RUN_DIR), e.g. \
             --state-dir ~/.local/state/sandbox-secrets --run-dir \"$XDG_RUNTIME_DIR/sandbox-secrets\""
        }
        _ => "",
    }
}

/// A hint after a usage error, from the command line as given: `--repo` where `--repos` was
/// meant (or the other way round).
pub fn usage_hint(args: &[std::ffi::OsString]) -> Option<&'static str> {
    let has = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.to_string_lossy().starts_with(&format!("{flag}=")))
    };
    if has("--user") && has("--repo") {
        return Some(
            "--repo makes a repository secret (every sandbox of that repository reads it) and \
             cannot go with --user; a user secret lists the repositories that may read it with \
             --repos: `set NAME --user U --repos owner/name[,owner/name...]`",
        );
    }
    if has("--repo") && has("--repos") {
        return Some(
            "--repos lists who may read a user secret (with --user); a repository secret \
             (--repo) is read by every sandbox of its repository and takes no --repos",
        );
    }
    None
}

/// What `sandbox-secrets audit` keeps.
pub struct AuditFilter {
    pub since: Option<String>,
    pub sandbox: Option<String>,
    pub name: Option<String>,
}

/// `--since`: RFC 3339, or an age (`90s`, `15m`, `2h`, `7d`) before `now`. Pure.
pub fn parse_since(s: &str, now: time::OffsetDateTime) -> Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| not_a_time(s))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(not_a_time(s)),
    };
    Ok(now - time::Duration::seconds(n.saturating_mul(secs)))
}

fn not_a_time(s: &str) -> anyhow::Error {
    refusal(
        "usage",
        format!("--since {s:?} is not a time: give RFC 3339 (2026-01-31T12:00:00Z) or an age (90s, 15m, 2h, 7d)"),
    )
}

/// `sandbox-secrets audit`: the records of `<state>/audit.jsonl` (and its rotated
/// predecessor) that pass `filter`, oldest first.
pub fn audit(state_dir: &Path, filter: &AuditFilter, json: bool) -> Result<()> {
    use time::format_description::well_known::Rfc3339;
    let since = filter
        .since
        .as_deref()
        .map(|s| parse_since(s, time::OffsetDateTime::now_utc()))
        .transpose()?;
    let records = super::audit::read_records(state_dir).with_context(|| {
        format!(
            "cannot read the audit trail in {} (the daemon's --state-dir; it is written once the daemon has served a read or a change)",
            state_dir.display()
        )
    })?;
    let kept: Vec<_> = records
        .into_iter()
        .filter(|r| {
            since.map_or(true, |t| {
                time::OffsetDateTime::parse(&r.time, &Rfc3339).is_ok_and(|rt| rt >= t)
            })
        })
        .filter(|r| {
            filter
                .sandbox
                .as_deref()
                .map_or(true, |id| r.sandbox.as_deref() == Some(id))
        })
        .filter(|r| filter.name.as_deref().map_or(true, |n| r.mentions_name(n)))
        .collect();
    if json {
        for r in &kept {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if kept.is_empty() {
        eprintln!("no audit records match");
        return Ok(());
    }
    let rows: Vec<[String; 4]> = kept
        .iter()
        .map(|r| {
            let who = match (&r.sandbox, r.uid) {
                (Some(s), _) => format!("sandbox {s}"),
                (None, Some(uid)) => format!("uid {uid}"),
                _ => String::new(),
            };
            let what = match r.event.as_str() {
                "read" => match &r.names {
                    Some(names) => format!(
                        "{} of {}: {}",
                        r.count.unwrap_or(0),
                        r.repository.as_deref().unwrap_or(""),
                        names.join(",")
                    ),
                    None => format!(
                        "{} of {} (same names as before)",
                        r.count.unwrap_or(0),
                        r.repository.as_deref().unwrap_or("")
                    ),
                },
                "suppressed" => format!("{} lines dropped by the rate limit", r.count.unwrap_or(0)),
                _ => [r.action.as_deref(), r.what.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            [r.time.clone(), r.event.clone(), who, what]
        })
        .collect();
    print!("{}", table::render(["TIME", "EVENT", "WHO", "WHAT"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_newline_is_kept_with_a_warning_trimmed_on_request_refused_for_registries() {
        let (n, w) = newline_rule("TOKEN", b"abc\n", false, true).unwrap();
        assert_eq!(n, 4);
        assert!(w.unwrap().contains("--trim"));
        assert_eq!(
            newline_rule("TOKEN", b"abc\n", true, true).unwrap(),
            (3, None)
        );
        assert_eq!(
            newline_rule("TOKEN", b"abc\r\n", true, true).unwrap(),
            (3, None)
        );
        // Two newlines, or one from the prompt, are meant: no warning.
        assert_eq!(
            newline_rule("TOKEN", b"abc\n\n", false, true).unwrap(),
            (5, None)
        );
        assert_eq!(
            newline_rule("TOKEN", b"abc\n", false, false).unwrap(),
            (4, None)
        );
        assert_eq!(
            newline_rule("TOKEN", b"abc", false, true).unwrap(),
            (3, None)
        );
        for name in [
            "CI_CONTAINER_REGISTRY_SERVER",
            "ci_container_registry_user",
            "X_CONTAINER_REGISTRY_PASSWORD",
        ] {
            let e = newline_rule(name, b"pw\n", false, true).unwrap_err();
            assert_eq!(rule_of(&e.to_string()), "registry-newline");
            assert!(!e.to_string().contains("pw\n"));
            assert_eq!(newline_rule(name, b"pw\n", true, true).unwrap(), (2, None));
        }
        // Not a triplet name: the bare suffix.
        assert!(newline_rule("_CONTAINER_REGISTRY_USER", b"x\n", false, true).is_ok());
    }

    #[test]
    fn incomplete_triplets_name_the_missing_parts() {
        let w = incomplete_triplets([
            "CI_CONTAINER_REGISTRY_SERVER",
            "CI_CONTAINER_REGISTRY_USER",
            "GH_CONTAINER_REGISTRY_SERVER",
            "GH_CONTAINER_REGISTRY_USER",
            "GH_CONTAINER_REGISTRY_PASSWORD",
            "OTHER",
        ]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("CI_CONTAINER_REGISTRY_PASSWORD missing"),
            "{w:?}"
        );
        assert!(incomplete_triplets(["A", "B"]).is_empty());
    }

    #[test]
    fn access_edits_add_and_remove_and_refuse_an_unlisted_removal() {
        let before = vec!["octo/a".to_owned(), "octo/b".to_owned()];
        let edit = |add: &[&str], remove: &[&str]| AccessChange::Edit {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            apply_access(&before, &edit(&["octo/c", "OCTO/A"], &["octo/b"])).unwrap(),
            ["octo/a", "octo/c"]
        );
        let e = apply_access(&before, &edit(&[], &["octo/x"])).unwrap_err();
        assert_eq!(rule_of(&e.to_string()), "repo-not-listed");
        assert_eq!(
            apply_access(&before, &AccessChange::Replace(vec![])).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn json_uses_one_spelling_of_scopes_and_rfc3339_times() {
        let mut v = serde_json::json!({
            "secrets": [{"scope": "repo", "updated": 0}, {"scope": "user", "updated": 1764074525}],
            "created": 86400,
            "generation": 5
        });
        normalize_json(&mut v);
        assert_eq!(v["secrets"][0]["scope"], "repository");
        assert_eq!(v["secrets"][0]["updated"], "1970-01-01T00:00:00Z");
        assert_eq!(v["secrets"][1]["scope"], "user");
        assert_eq!(v["created"], "1970-01-02T00:00:00Z");
        assert_eq!(v["generation"], 5);
    }

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        let now = time::macros::datetime!(2026-01-31 12:00 UTC);
        assert_eq!(
            parse_since("2026-01-30T00:00:00Z", now).unwrap(),
            time::macros::datetime!(2026-01-30 0:00 UTC)
        );
        assert_eq!(
            parse_since("2h", now).unwrap(),
            time::macros::datetime!(2026-01-31 10:00 UTC)
        );
        assert_eq!(
            parse_since("7d", now).unwrap(),
            time::macros::datetime!(2026-01-24 12:00 UTC)
        );
        for bad in ["", "h", "2w", "yesterday", "-1h"] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.to_string().contains("not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_hidden_prompt_cancels_on_interrupt_and_edits_on_erase() {
        assert_eq!(key(0x03, false), Key::Cancel);
        assert_eq!(key(0x1c, false), Key::Cancel);
        assert_eq!(key(0x04, true), Key::Cancel);
        assert_eq!(key(0x04, false), Key::Char(0x04));
        assert_eq!(key(b'\r', false), Key::Done);
        assert_eq!(key(0x7f, false), Key::Erase);
        assert_eq!(key(0x15, false), Key::Kill);
        assert_eq!(key(b'a', true), Key::Char(b'a'));
    }

    #[test]
    fn repo_lists_split_on_commas() {
        assert_eq!(split_repos("a/b, c/d,"), ["a/b", "c/d"]);
        assert!(split_repos("").is_empty());
    }
}
