//! The `sandbox-secrets` command line as a user meets it, against the real daemon: the health
//! probe, trailing newlines, registry triplets, `access` edits, dotenv imports, `--json` on
//! success and failure, RFC 3339 times, completions and man pages, the declined `delete`, the
//! hidden prompt under Ctrl-C (in tmux), the hints for `serve` as non-root and for `--repo`
//! vs `--repos`, and `audit`. Each failure prints the command, stdout and stderr.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::daemon::{fetch, run, served, Daemon, BIN};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn health_answers_while_serving_and_fails_clearly_without_a_daemon() {
    let d = Daemon::new();
    let out = d.cli(&["health"], None).ok();
    assert!(
        out.stdout().starts_with("ok: sandbox-secrets "),
        "{}",
        out.explain()
    );
    let h = json(&d.cli(&["health", "--json"], None).ok().stdout());
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["sandboxes"], 0);
    d.sandbox("mona", "octo/h");
    let h = json(&d.cli(&["health", "--json"], None).ok().stdout());
    assert_eq!(h["sandboxes"], 1);

    let gone = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.arg("--run-dir").arg(gone.path()).arg("health");
    let out = run(c, None);
    assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
    assert!(
        out.stderr().contains("daemon not reachable"),
        "{}",
        out.explain()
    );
    let mut c = Command::new(BIN);
    c.arg("--run-dir")
        .arg(gone.path())
        .args(["health", "--json"]);
    let out = run(c, None);
    let e = json(&out.stdout());
    assert_eq!(e["rule"], "daemon-unreachable", "{}", out.explain());
}

#[test]
fn a_piped_trailing_newline_is_kept_with_a_warning_or_trimmed_and_refused_for_registries() {
    let d = Daemon::traced();
    let (_, dir) = d.sandbox("mona", "octo/nl");
    let out = d.cli(
        &["set", "NL_TOKEN", "--user", "mona", "--repos", "octo/nl"],
        Some(b"nl-VALUE\n"),
    );
    let out = out.ok();
    assert!(
        out.stderr().contains("ends in a newline") && out.stderr().contains("--trim"),
        "{}",
        out.explain()
    );
    assert!(!out.stderr().contains("nl-VALUE"), "{}", out.explain());
    assert_eq!(served(&dir), pairs(&[("NL_TOKEN", "nl-VALUE\n")]));

    let out = d
        .cli(
            &["set", "NL_TOKEN", "--user", "mona", "--trim"],
            Some(b"nl-VALUE\n"),
        )
        .ok();
    assert!(!out.stderr().contains("warning"), "{}", out.explain());
    assert_eq!(served(&dir), pairs(&[("NL_TOKEN", "nl-VALUE")]));

    // Two newlines are meant: no warning.
    let out = d
        .cli(&["set", "TWO", "--repo", "octo/nl"], Some(b"a\n\n"))
        .ok();
    assert!(!out.stderr().contains("warning"), "{}", out.explain());

    // A registry name: refused, named rule, nothing stored.
    let before = d.list_json("--repo", "octo/nl");
    for args in [
        vec!["set", "CI_CONTAINER_REGISTRY_PASSWORD", "--repo", "octo/nl"],
        vec![
            "set",
            "CI_CONTAINER_REGISTRY_PASSWORD",
            "--repo",
            "octo/nl",
            "--json",
        ],
    ] {
        let out = d.cli(&args, Some(b"pw-SECRET\n"));
        assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
        let all = format!("{}{}", out.stdout(), out.stderr());
        assert!(all.contains("never holds one"), "{}", out.explain());
        assert!(!all.contains("pw-SECRET"), "{}", out.explain());
        if args.contains(&"--json") {
            let e = json(&out.stdout());
            assert_eq!(e["rule"], "registry-newline");
        }
    }
    assert_eq!(d.list_json("--repo", "octo/nl"), before);
    d.cli(
        &[
            "set",
            "CI_CONTAINER_REGISTRY_PASSWORD",
            "--repo",
            "octo/nl",
            "--trim",
        ],
        Some(b"pw-SECRET\n"),
    )
    .ok();
}

#[test]
fn an_incomplete_registry_triplet_is_warned_at_set_and_plan() {
    let d = Daemon::new();
    let out = d
        .cli(
            &["set", "GH_CONTAINER_REGISTRY_SERVER", "--repo", "octo/t"],
            Some(b"ghcr.io"),
        )
        .ok();
    assert!(
        out.stderr()
            .contains("GH_CONTAINER_REGISTRY_USER, GH_CONTAINER_REGISTRY_PASSWORD missing"),
        "{}",
        out.explain()
    );
    d.set_user("GH_CONTAINER_REGISTRY_USER", "mona", "octo/t", "robot");
    let out = d
        .cli(&["plan", "--user", "mona", "--repo", "octo/t"], None)
        .ok();
    assert!(
        out.stderr()
            .contains("GH_CONTAINER_REGISTRY_PASSWORD missing"),
        "{}",
        out.explain()
    );
    let plan = json(
        &d.cli(
            &["plan", "--user", "mona", "--repo", "octo/t", "--json"],
            None,
        )
        .ok()
        .stdout(),
    );
    assert!(plan["warnings"][0]
        .as_str()
        .unwrap()
        .contains("GH_CONTAINER_REGISTRY_PASSWORD missing"));
    // At set time the check is the scope's own secrets: the user part lives elsewhere, said so.
    let out = d
        .cli(
            &["set", "GH_CONTAINER_REGISTRY_PASSWORD", "--repo", "octo/t"],
            Some(b"pw"),
        )
        .ok();
    assert!(
        out.stderr().contains("GH_CONTAINER_REGISTRY_USER missing")
            && out.stderr().contains("unless a user secret supplies it"),
        "{}",
        out.explain()
    );
    // The plan merges both levels: complete, no warning.
    let out = d
        .cli(&["plan", "--user", "mona", "--repo", "octo/t"], None)
        .ok();
    assert!(!out.stderr().contains("warning"), "{}", out.explain());
    let plan = json(
        &d.cli(
            &["plan", "--user", "mona", "--repo", "octo/t", "--json"],
            None,
        )
        .ok()
        .stdout(),
    );
    assert_eq!(plan["warnings"], serde_json::json!([]));
}

#[test]
fn access_adds_and_removes_repositories_and_prints_before_and_after() {
    let d = Daemon::new();
    d.set_user("ACC", "mona", "octo/a", "acc-VALUE");
    let (_, b_dir) = d.sandbox("mona", "octo/b");
    let out = d
        .cli(
            &["access", "ACC", "--user", "mona", "--add-repo", "octo/b"],
            None,
        )
        .ok();
    assert!(
        out.stdout().contains("octo/a -> octo/a,octo/b"),
        "{}",
        out.explain()
    );
    assert_eq!(served(&b_dir), pairs(&[("ACC", "acc-VALUE")]));
    let a = json(
        &d.cli(
            &[
                "access",
                "ACC",
                "--user",
                "mona",
                "--remove-repo",
                "octo/a",
                "--json",
            ],
            None,
        )
        .ok()
        .stdout(),
    );
    assert_eq!(a["before"], serde_json::json!(["octo/a", "octo/b"]));
    assert_eq!(a["after"], serde_json::json!(["octo/b"]));
    let out = d.cli(
        &[
            "access",
            "ACC",
            "--user",
            "mona",
            "--remove-repo",
            "octo/zzz",
        ],
        None,
    );
    assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
    assert!(
        out.stderr().contains("octo/zzz is not among"),
        "{}",
        out.explain()
    );
    let out = d
        .cli(&["access", "ACC", "--user", "mona", "--repos", ""], None)
        .ok();
    assert!(
        out.stdout().contains("octo/b -> (none)"),
        "{}",
        out.explain()
    );
    assert!(served(&b_dir).is_empty());
    // --repos and --add-repo do not mix; one of them is needed.
    let out = d.cli(
        &[
            "access",
            "ACC",
            "--user",
            "mona",
            "--repos",
            "a/b",
            "--add-repo",
            "c/d",
        ],
        None,
    );
    assert_eq!(out.out.status.code(), Some(2), "{}", out.explain());
    let out = d.cli(&["access", "ACC", "--user", "mona"], None);
    assert_eq!(out.out.status.code(), Some(2), "{}", out.explain());
}

#[test]
fn an_env_file_imports_all_or_nothing_and_names_the_refused_line() {
    let d = Daemon::traced();
    let (_, dir) = d.sandbox("mona", "octo/env");
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.env");
    std::fs::write(
        &good,
        "# settings\nexport DB_URL=postgres://u:p@db/x # the db\nAPI_KEY='single $HOME'\nCERT=\"line1\nline2\"\nEMPTYISH=\"a\\tb\"\n",
    )
    .unwrap();
    let out = d
        .cli(
            &[
                "set",
                "--repo",
                "octo/env",
                "--env-file",
                good.to_str().unwrap(),
            ],
            None,
        )
        .ok();
    assert!(
        out.stdout().contains("imported 4 secrets"),
        "{}",
        out.explain()
    );
    assert_eq!(
        served(&dir),
        pairs(&[
            ("API_KEY", "single $HOME"),
            ("CERT", "line1\nline2"),
            ("DB_URL", "postgres://u:p@db/x"),
            ("EMPTYISH", "a\tb"),
        ])
    );

    let before = d.list_json("--repo", "octo/env");
    for (text, line, words) in [
        (
            "NEW1=ok-VALUE1\nNEW2=ok-VALUE2\nLD_PRELOAD=bad-VALUE3\n",
            3,
            "dangerous",
        ),
        ("NEW1=ok-VALUE1\nGITHUB_X=bad-VALUE3\n", 2, "GITHUB_"),
        (
            "NEW1=ok-VALUE1\nNEW2=\"unclosed-VALUE3\n",
            2,
            "never closed",
        ),
        (
            "NEW1=ok-VALUE1\nX_CONTAINER_REGISTRY_USER=\"robot-VALUE3\n\"\n",
            2,
            "newline",
        ),
        ("NEW1=ok-VALUE1\nNEW3=\n", 2, "empty"),
    ] {
        let bad = files.path().join("bad.env");
        std::fs::write(&bad, text).unwrap();
        let out = d.cli(
            &["set", "--repo", "octo/env", "-f", bad.to_str().unwrap()],
            None,
        );
        assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
        let err = out.stderr();
        assert!(
            err.contains(&format!("line {line}")) && err.contains(words),
            "{text:?}\n{}",
            out.explain()
        );
        assert!(err.contains("nothing was stored"), "{}", out.explain());
        assert!(
            !err.contains("VALUE"),
            "no value in the error\n{}",
            out.explain()
        );
        assert_eq!(d.list_json("--repo", "octo/env"), before, "{text:?}");
    }
    // A new user secret needs --repos: the daemon refuses the import, naming the first entry's
    // line (line 2: the comment is line 1); nothing is stored.
    let out = d.cli(
        &[
            "set",
            "--user",
            "mona",
            "--env-file",
            good.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
    let err = out.stderr();
    assert!(
        err.contains("line 2: entry 1 (DB_URL) refused; nothing was stored")
            && err.contains("(--repos)")
            && err.contains("rule: repositories-required"),
        "{}",
        out.explain()
    );
    assert!(!d.list_json("--user", "mona").contains("DB_URL"));
    let log = d.log_text();
    for v in ["postgres://u:p@db/x", "single $HOME", "line1", "VALUE"] {
        assert!(!log.contains(v), "value {v:?} in the daemon's log");
    }
}

/// The daemon decides an import whole: the scope's limit broken by the file's last entry (which
/// the CLI cannot see coming) stores nothing, not the entries before it, and an existing value
/// the file would have updated keeps its bytes; the same file minus that entry stores all,
/// byte for byte, and says so in one line with the sandboxes that see it.
#[test]
fn an_import_over_the_scope_limit_stores_nothing_and_names_the_line() {
    let d = Daemon::traced();
    let (_, dir) = d.sandbox("mona", "octo/lim");
    let files = tempfile::tempdir().unwrap();
    let limit = 100; // protocol::MAX_SECRETS_PER_SCOPE
    let fill: String = (0..limit - 2)
        .map(|i| format!("FILL{i}=fill-VALUE{i}\n"))
        .collect();
    let first = files.path().join("fill.env");
    std::fs::write(&first, fill).unwrap();
    d.cli(
        &["set", "--repo", "octo/lim", "-f", first.to_str().unwrap()],
        None,
    )
    .ok();
    let before = d.list_json("--repo", "octo/lim");
    let served_before = served(&dir);
    assert_eq!(served_before.len(), limit - 2);

    // FILL0 updated, three new: the third new one (line 7) is one over the limit.
    let text =
        "# over\nFILL0='upd-VALUE'\nNEW_A=a-VALUE\n\nNEW_B=\"b-VALUE\nmulti\"\nNEW_C=c-VALUE\n";
    let over = files.path().join("over.env");
    std::fs::write(&over, text).unwrap();
    let out = d.cli(
        &["set", "--repo", "octo/lim", "-f", over.to_str().unwrap()],
        None,
    );
    assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
    let err = out.stderr();
    assert!(
        err.contains("line 7: entry 4 (NEW_C) refused; nothing was stored")
            && err.contains("rule: secrets-per-scope"),
        "{}",
        out.explain()
    );
    assert!(
        !err.contains("VALUE") && !out.stdout().contains("VALUE"),
        "{}",
        out.explain()
    );
    assert_eq!(d.list_json("--repo", "octo/lim"), before);
    assert_eq!(served(&dir), served_before, "values unchanged");

    // The same with --json: the error as JSON, naming the rule.
    let out = d.cli(
        &[
            "set",
            "--repo",
            "octo/lim",
            "-f",
            over.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let e = json(&out.stdout());
    assert_eq!(e["rule"], "secrets-per-scope", "{}", out.explain());
    assert!(
        e["error"].as_str().unwrap().contains("line 7"),
        "{}",
        out.explain()
    );

    // Without the last entry it fits: all stored, byte-exact, one answer.
    let fits = files.path().join("fits.env");
    std::fs::write(&fits, &text[..text.find("NEW_C").unwrap()]).unwrap();
    let out = d
        .cli(
            &["set", "--repo", "octo/lim", "-f", fits.to_str().unwrap()],
            None,
        )
        .ok();
    let said = out.stdout();
    assert!(
        said.contains("imported 3 secrets")
            && said.contains("(2 created, 1 updated): 1 sandbox sees the change"),
        "{}",
        out.explain()
    );
    assert!(!said.contains("VALUE"), "{}", out.explain());
    let now = served(&dir);
    assert_eq!(now.len(), limit);
    let get = |n: &str| now.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get("FILL0"), "upd-VALUE");
    assert_eq!(get("NEW_A"), "a-VALUE");
    assert_eq!(get("NEW_B"), "b-VALUE\nmulti");
    assert_eq!(get("FILL1"), "fill-VALUE1");
    let log = d.log_text();
    assert!(!log.contains("-VALUE"), "a value in the daemon's log");
    assert!(log.contains("NEW_A"), "the audit names what was imported");
}

#[test]
fn json_everywhere_with_rfc3339_times_and_errors_naming_their_rule() {
    let d = Daemon::new();
    d.set_repo("J", "octo/j", "j");
    for args in [
        vec!["list", "--repo", "octo/j", "--json"],
        vec!["plan", "--user", "mona", "--repo", "octo/j", "--json"],
        vec![
            "sandbox", "create", "--user", "mona", "--repo", "octo/j", "--json",
        ],
        vec!["sandbox", "list", "--json"],
        vec!["key", "status", "--json"],
        vec!["health", "--json"],
    ] {
        let out = d.cli(&args, None).ok();
        json(&out.stdout());
    }
    let list = json(
        &d.cli(&["list", "--repo", "octo/j", "--json"], None)
            .ok()
            .stdout(),
    );
    assert_eq!(list["secrets"][0]["scope"], "repository");
    let t = list["secrets"][0]["updated"].as_str().unwrap();
    assert!(
        t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{t}"
    );
    let sb = json(&d.cli(&["sandbox", "list", "--json"], None).ok().stdout());
    assert!(sb["sandboxes"][0]["created"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let table = d.cli(&["list", "--repo", "octo/j"], None).ok().stdout();
    assert!(table.contains(&t[..10]), "{table}");
    let id = sb["sandboxes"][0]["id"].as_str().unwrap().to_owned();
    let del = json(
        &d.cli(&["sandbox", "delete", &id, "--json"], None)
            .ok()
            .stdout(),
    );
    assert_eq!(del["id"], id.as_str());
    let out = d
        .cli(&["set", "J", "--repo", "octo/j", "--json"], Some(b"j2"))
        .ok();
    assert_eq!(json(&out.stdout())["result"], "updated");

    for (args, stdin, rule) in [
        (
            vec!["set", "9BAD", "--repo", "o/r", "--json"],
            Some(&b"v"[..]),
            "name-leading-digit",
        ),
        (
            vec!["set", "LD_PRELOAD", "--repo", "o/r", "--json"],
            Some(b"v"),
            "name-dangerous",
        ),
        (
            vec!["set", "OK", "--repo", "nope", "--json"],
            Some(b"v"),
            "repository-name",
        ),
        (
            vec!["delete", "MISSING", "--repo", "o/r", "--json"],
            None,
            "not-found",
        ),
        (
            vec!["list", "--user", "mona", "--repo", "o/r", "--json"],
            None,
            "usage",
        ),
        (
            vec![
                "audit",
                "--since",
                "yesterday",
                "--json",
                "--state-dir",
                "/nonexistent",
            ],
            None,
            "usage",
        ),
    ] {
        let out = d.cli(&args, stdin);
        assert!(!out.out.status.success(), "{}", out.explain());
        let e = json(&out.stdout());
        assert_eq!(e["rule"], rule, "{}", out.explain());
        assert!(e["error"].as_str().is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    for (shell, needle) in [
        ("bash", "complete -F _sandbox__secrets"),
        ("zsh", "#compdef sandbox-secrets"),
        ("fish", "complete -c sandbox-secrets"),
    ] {
        let mut c = Command::new(BIN);
        c.args(["completion", shell]);
        let out = run(c, None).ok();
        assert!(out.stdout().contains(needle), "{}", out.explain());
        assert!(out.stdout().contains("access"), "{}", out.explain());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.arg("man").arg(dir.path());
    run(c, None).ok();
    for page in [
        "sandbox-secrets.1",
        "sandbox-secrets-set.1",
        "sandbox-secrets-sandbox-create.1",
        "sandbox-secrets-audit.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let set = std::fs::read_to_string(dir.path().join("sandbox-secrets-set.1")).unwrap();
    assert!(
        set.contains("EXAMPLES") && set.contains("env\\-file"),
        "{set}"
    );
}

#[test]
fn the_repo_flag_where_repos_was_meant_gets_a_hint() {
    let d = Daemon::new();
    let out = d.cli(
        &["set", "T", "--user", "mona", "--repo", "octo/x"],
        Some(b"v"),
    );
    assert_eq!(out.out.status.code(), Some(2), "{}", out.explain());
    assert!(
        out.stderr()
            .contains("hint: --repo makes a repository secret")
            && out.stderr().contains("--repos owner/name"),
        "{}",
        out.explain()
    );
}

#[test]
fn serve_as_non_root_without_its_directories_says_which_flags_to_use() {
    if !nix::unistd::geteuid().is_root() {
        support::skip("serve as nobody needs root to switch user");
        return;
    }
    // A root-owned directory nobody cannot write: the state directory cannot be made there.
    let root_only = tempfile::tempdir().unwrap();
    let mut c = support::daemon::as_nobody(&[BIN]);
    c.env_clear()
        .arg("serve")
        .arg("--state-dir")
        .arg(root_only.path().join("state"))
        .arg("--run-dir")
        .arg(root_only.path().join("run"));
    let out = run(c, None);
    assert_eq!(out.out.status.code(), Some(1), "{}", out.explain());
    assert!(
        out.stderr().contains("hint:")
            && out.stderr().contains("--state-dir")
            && out.stderr().contains("--run-dir")
            && out.stderr().contains("SANDBOX_SECRETS_STATE_DIR"),
        "{}",
        out.explain()
    );
}

#[test]
fn audit_queries_the_trail_the_daemon_keeps() {
    let d = Daemon::traced();
    d.set_user("AUD_TOKEN", "mona", "octo/aud", "aud-VALUE");
    d.set_repo("OTHER", "octo/aud", "other-VALUE");
    let (id, dir) = d.sandbox("mona", "octo/aud");
    let (_, other_dir) = d.sandbox("mona", "octo/other");
    assert_eq!(fetch(&dir).0, 200);
    assert_eq!(fetch(&other_dir).0, 200);
    let state = d.state.to_str().unwrap().to_owned();
    let audit = |extra: &[&str]| {
        let mut args = vec!["audit", "--state-dir", &state, "--json"];
        args.extend_from_slice(extra);
        let out = d.cli(&args, None).ok();
        out.stdout()
            .lines()
            .map(json)
            .collect::<Vec<serde_json::Value>>()
    };
    let all = audit(&[]);
    assert!(all
        .iter()
        .any(|r| r["event"] == "admin" && r["what"].as_str().unwrap().contains("AUD_TOKEN")));
    let reads = audit(&["--sandbox", &id]);
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|r| r["sandbox"] == id.as_str()));
    assert!(reads
        .iter()
        .any(|r| r["event"] == "read" && r["names"] == serde_json::json!(["AUD_TOKEN", "OTHER"])));
    let named = audit(&["--name", "aud_token"]);
    assert!(named.len() >= 2, "the set and the read: {named:?}");
    assert!(named.iter().all(|r| r.to_string().contains("AUD_TOKEN")));
    assert!(audit(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(audit(&["--since", "1h"]).len(), all.len());
    // The trail holds names, never values; the file is the daemon's alone.
    let file = d.state.join("audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("VALUE"), "{text}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The table.
    let out = d
        .cli(&["audit", "--state-dir", &state, "--name", "OTHER"], None)
        .ok();
    assert!(out.stdout().starts_with("TIME"), "{}", out.explain());
}

/// tmux: `set` at the hidden prompt, a few characters typed, then Ctrl-C: the command says
/// "canceled", exits 2, nothing is stored, and the terminal echoes again. Then `delete` declined
/// at its prompt: exit 2 "canceled".
#[test]
fn ctrl_c_at_the_hidden_prompt_restores_echo_and_cancels() {
    if Command::new("tmux").arg("-V").output().is_err() {
        support::skip("tmux not installed (apt-get install tmux)");
        return;
    }
    let d = Daemon::new();
    d.set_repo("KEEP", "octo/tty", "keep");
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("tmux.sock");
    let report = tmp.path().join("report");
    let session = format!("pkg-cli-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&socket).args(args);
        run(c, None)
    };
    let script = format!(
        "{BIN} --run-dir {run} set TYPED --repo octo/tty; echo \"rc=$?\" > {r}; stty -a >> {r}; \
         {BIN} --run-dir {run} delete KEEP --repo octo/tty; echo \"delete-rc=$?\" >> {r}; sleep 30",
        run = d.run_dir().display(),
        r = report.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "20",
        "sh",
        "-c",
        &script,
    ])
    .ok();
    let wait_pane = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pane = tmux(&["capture-pane", "-p", "-t", &session]).stdout();
            if pane.contains(needle) {
                return pane;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the pane:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_pane("input hidden");
    tmux(&["send-keys", "-t", &session, "-l", "typed-VALUE"]).ok();
    tmux(&["send-keys", "-t", &session, "C-c"]).ok();
    let pane = wait_pane("[y/N]");
    assert!(pane.contains("canceled"), "{pane}");
    assert!(
        !pane.contains("typed-VALUE"),
        "no echo of the typed text:\n{pane}"
    );
    tmux(&["send-keys", "-t", &session, "n", "Enter"]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        if text.contains("delete-rc=") {
            break text;
        }
        assert!(Instant::now() < deadline, "report:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = tmux(&["kill-session", "-t", &session]);
    assert!(text.starts_with("rc=2\n"), "{text}");
    assert!(
        text.split_whitespace().any(|w| w == "echo")
            && text.split_whitespace().any(|w| w == "isig"),
        "echo and signals back on after Ctrl-C:\n{text}"
    );
    assert!(text.contains("delete-rc=2"), "{text}");
    assert!(!d.list_json("--repo", "octo/tty").contains("TYPED"));
    assert!(d.list_json("--repo", "octo/tty").contains("KEEP"));
}
