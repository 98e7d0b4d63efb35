//! The arm64 init (`scripts/build-static.sh --target aarch64`: static aarch64-unknown-linux-musl)
//! run under Debian's `qemu-aarch64-static` on this x86_64 host, as real PID 1 under `unshare -pf
//! --mount-proc` (as in a container), the PID-1 duties (exit codes, 127, orphans reaped,
//! signals forwarded) and the secrets step against the real broker. The commands it starts are
//! the host's own (x86_64) programs, as in a multi-arch image. Not as a child subreaper: qemu-user
//! (7.2, bookworm) answers `prctl(PR_SET_CHILD_SUBREAPER)` with EINVAL, which the init rightly
//! treats as fatal; that mode is the x86_64 suite's (tests/pid1.rs). Skips, saying so, only when
//! the arm64 binary, qemu or a PID namespace is missing; CI (scripts/test.sh) has all three.
//!
//! The binary: `SANDBOX_INIT_ARM64`, else `target/static/aarch64/sandbox-init`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::daemon::Daemon;

const QEMU: &str = "qemu-aarch64-static";
/// The arm64 init and the emulator, or `None` after a `skipped:` line.
fn arm64_init(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("SANDBOX_INIT_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/static/aarch64/sandbox-init")
        });
    if !path.exists() {
        support::skip(&format!(
            "{test}: no arm64 init at {} (scripts/build-static.sh --target aarch64)",
            path.display()
        ));
        return None;
    }
    if Command::new(QEMU).arg("--version").output().is_err() {
        support::skip(&format!(
            "{test}: {QEMU} missing (apt-get install qemu-user-static)"
        ));
        return None;
    }
    Some(path)
}

/// PID-1 mode, or nothing (with a `skipped:` line) where `unshare` cannot make a PID namespace.
fn modes(test: &str) -> Vec<bool> {
    match support::pid1_unavailable() {
        None => vec![true],
        Some(why) => {
            support::skip(&format!("{test} as PID 1: {why}"));
            vec![]
        }
    }
}

/// Runs the arm64 init under qemu with `args`; as PID 1 of a new PID namespace when `pid1`.
fn run(init: &Path, pid1: bool, dir: &Path, args: &[&str]) -> (Output, String) {
    let mut argv: Vec<String> = Vec::new();
    if pid1 {
        argv.extend(["unshare", "-pf", "--mount-proc"].map(String::from));
    }
    argv.push(QEMU.into());
    argv.push(init.display().to_string());
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env("D", dir)
        .env("SANDBOX_SECRETS_SOCKET", dir.join("no-broker.sock"))
        .env_remove("SANDBOX_INIT_USER")
        .env_remove("SANDBOX_INIT_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    let desc = format!(
        "command: {argv:?}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, desc)
}

fn tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn the_binary_is_a_static_aarch64_elf() {
    let Some(init) = arm64_init("arm64 ELF") else {
        return;
    };
    // Static: no PT_INTERP program header (no dynamic loader is asked for).
    let interp = support::aarch64_elf_interp(&init);
    assert_eq!(
        interp, None,
        "PT_INTERP found: the arm64 init is not static"
    );
    let bytes = fs::read(&init).unwrap();
    assert!(
        bytes.len() <= 1_000_000,
        "the arm64 init is {} bytes, over the 1,000,000-byte budget",
        bytes.len()
    );
    let dir = tempdir();
    let (out, desc) = run(&init, true, dir.path(), &["--version"]);
    assert!(out.status.success(), "{desc}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{desc}"
    );
}

#[test]
fn exit_codes_are_the_childs_or_128_plus_signal_and_127_for_not_found() {
    let Some(init) = arm64_init("arm64 exit codes") else {
        return;
    };
    for pid1 in modes("arm64 exit codes") {
        let dir = tempdir();
        for (script, want) in [
            ("exit 0", 0),
            ("exit 3", 3),
            ("kill -TERM $$", 143),
            ("kill -KILL $$", 137),
        ] {
            let (out, desc) = run(&init, pid1, dir.path(), &["--", "sh", "-c", script]);
            assert_eq!(out.status.code(), Some(want), "{desc}");
        }
        let (out, desc) = run(&init, pid1, dir.path(), &["--", "no-such-command-3f9a"]);
        assert_eq!(out.status.code(), Some(127), "{desc}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No such file or directory"),
            "{desc}"
        );
    }
}

/// 200 orphans (their parent subshell exits at once) are reparented to the init, then all exit
/// together; the command counts what is left.
#[test]
fn orphans_are_reaped() {
    let Some(init) = arm64_init("arm64 orphans") else {
        return;
    };
    let script = r#"
F="$D/fifo.$$"; mkfifo "$F"; exec 3<>"$F"
i=0
while [ $i -lt 200 ]; do (cat "$F" >/dev/null 3>&- &); i=$((i+1)); done
count() {
  a=0; z=0
  for f in /proc/[0-9]*/stat; do
    read -r pid comm st ppid rest 2>/dev/null <"$f" || continue
    [ "$ppid" = "$PPID" ] || continue
    [ "$pid" = "$$" ] && continue
    a=$((a+1)); [ "$st" = Z ] && z=$((z+1))
  done
}
n=0; count
while [ $a -lt 200 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); count; done
echo "orphans=$a"
exec 3>&-
n=0; count
while [ $a -gt 0 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); count; done
echo "left=$a zombies=$z"
rm -f "$F"
"#;
    for pid1 in modes("arm64 orphans") {
        let dir = tempdir();
        let s = dir.path().join("orphans.sh");
        fs::write(&s, script).unwrap();
        let (out, desc) = run(&init, pid1, dir.path(), &["--", "sh", &s.to_string_lossy()]);
        assert_eq!(out.status.code(), Some(0), "{desc}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("orphans=200\n"), "reparented\n{desc}");
        assert!(stdout.contains("left=0 zombies=0\n"), "reaped\n{desc}");
    }
}

/// The command signals its parent (the init: PID 1 in the namespace) and gets the signal back,
/// forwarded; its exit code is the init's.
#[test]
fn signals_sent_to_the_init_reach_the_command() {
    let Some(init) = arm64_init("arm64 signals") else {
        return;
    };
    for pid1 in modes("arm64 signals") {
        let dir = tempdir();
        for (sig, code) in [("USR1", 7), ("HUP", 8), ("TERM", 9)] {
            let script = format!(
                "trap 'echo got-{sig}; exit {code}' {sig}\n\
                 kill -{sig} $PPID\n\
                 i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
                 echo never; exit 1"
            );
            let (out, desc) = run(&init, pid1, dir.path(), &["--", "sh", "-c", &script]);
            assert_eq!(out.status.code(), Some(code), "{desc}");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&format!("got-{sig}")),
                "{desc}"
            );
        }
    }
}

/// The arm64 init fetches from the real broker (x86_64, on this host), hands the command the
/// secret, and prints it for other sessions; `--secrets required` with no socket stops it.
#[test]
fn secrets_arrive_from_the_real_broker() {
    let Some(init) = arm64_init("arm64 secrets") else {
        return;
    };
    let daemon = Daemon::new();
    let value = "arm64-value-5e1 $HOME \"q\" 'sq'\nline2";
    daemon.set_user("ARM_TOKEN", "mona", "octo/arm", value);
    let (_id, sandbox) = daemon.sandbox("mona", "octo/arm");
    let socket = sandbox.join("secrets.sock");
    let socket = socket.to_string_lossy();
    for pid1 in modes("arm64 secrets") {
        let dir = tempdir();
        let (out, desc) = run(
            &init,
            pid1,
            dir.path(),
            &[
                "--secrets",
                "required",
                "--socket",
                &socket,
                "--",
                "sh",
                "-c",
                "printf '%s' \"$ARM_TOKEN\"",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{desc}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{desc}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("arm64-value-5e1"),
            "no value on stderr\n{desc}"
        );

        let (out, desc) = run(
            &init,
            pid1,
            dir.path(),
            &["--socket", &socket, "env", "--format", "json"],
        );
        assert_eq!(out.status.code(), Some(0), "{desc}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["ARM_TOKEN"], value, "{desc}");

        let missing = dir.path().join("absent.sock");
        let (out, desc) = run(
            &init,
            pid1,
            dir.path(),
            &[
                "--secrets",
                "required",
                "--socket",
                &missing.to_string_lossy(),
                "--",
                "sh",
                "-c",
                "echo started",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "fail closed\n{desc}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("started"),
            "{desc}"
        );
    }
}
