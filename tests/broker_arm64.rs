//! The arm64 broker (`scripts/build-broker.sh --target aarch64`: aarch64-unknown-linux-gnu,
//! dynamically linked against glibc) run under Debian's `qemu-aarch64-static -L
//! /usr/aarch64-linux-gnu` (the cross glibc of libc6-arm64-cross) on this x86_64 host: `serve` on
//! a temp state and run directory, its own admin commands (`set` with the value on stdin,
//! `sandbox create`, `list`) against it, and the secret fetched through the sandbox socket by
//! the host's init and by the arm64 init (under qemu too), as on an arm64 host; then SIGTERM
//! stops it cleanly. Skips, saying so, only when the arm64 broker, the cross glibc or qemu is
//! missing; CI (scripts/test.sh) has all three.
//!
//! The binaries: `SANDBOX_SECRETS_ARM64`, else
//! `target/aarch64-unknown-linux-gnu/release/sandbox-secrets`; the arm64 init as in
//! tests/pid1_arm64.rs (`SANDBOX_INIT_ARM64`, else `target/static/aarch64/sandbox-init`).

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-aarch64-static";
/// The aarch64 glibc of Debian's libc6-arm64-cross: qemu's `-L` prefix for the dynamic loader.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
fn from_env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default))
}

/// The arm64 broker, once qemu and the cross glibc are there; `None` after a `skipped:` line.
fn arm64_broker(test: &str) -> Option<PathBuf> {
    let path = from_env_or(
        "SANDBOX_SECRETS_ARM64",
        "target/aarch64-unknown-linux-gnu/release/sandbox-secrets",
    );
    if !path.exists() {
        support::skip(&format!(
            "{test}: no arm64 broker at {} (scripts/build-broker.sh --target aarch64)",
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
    if !Path::new(SYSROOT)
        .join("lib/ld-linux-aarch64.so.1")
        .exists()
    {
        support::skip(&format!(
            "{test}: no aarch64 glibc under {SYSROOT} (apt-get install libc6-dev-arm64-cross)"
        ));
        return None;
    }
    Some(path)
}

/// `qemu-aarch64-static -L SYSROOT BIN`, ready for arguments.
fn qemu(bin: &Path) -> Command {
    let mut c = Command::new(QEMU);
    c.arg("-L").arg(SYSROOT).arg(bin);
    c.env_remove("SANDBOX_SECRETS_STORE")
        .env_remove("SANDBOX_SECRETS_RUN_DIR")
        .env_remove("SANDBOX_SECRETS_STATE_DIR");
    c
}

fn explain(what: &str, out: &Output) -> String {
    format!(
        "command: {what}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `stdin`; the output and its description for assertion messages.
fn output(mut cmd: Command, stdin: &[u8]) -> (Output, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let desc = explain(&what, &out);
    (out, desc)
}

/// The arm64 daemon under qemu; killed on drop unless stopped.
struct Broker {
    child: Option<Child>,
    log: PathBuf,
}

impl Broker {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `serve` under qemu and waits (hang guard: 120 s, emulation is slow) for its admin
/// socket and its "listening" line.
fn serve(bin: &Path, state: &Path, run: &Path, log: PathBuf) -> Broker {
    let file = fs::File::create(&log).unwrap();
    let child = qemu(bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(run)
        .env("SANDBOX_SECRETS_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut broker = Broker {
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = broker.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the arm64 broker exited with {status}\nlog:\n{}",
                broker.log_text()
            );
        }
        if UnixStream::connect(run.join("admin.sock")).is_ok()
            && broker.log_text().contains("listening")
        {
            return broker;
        }
        assert!(
            Instant::now() < deadline,
            "the arm64 broker did not come up\nlog:\n{}",
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_binary_is_an_aarch64_elf_for_glibc() {
    let Some(bin) = arm64_broker("arm64 broker ELF") else {
        return;
    };
    // Dynamically linked: its PT_INTERP names glibc's aarch64 loader (what the .deb's
    // `Depends: libc6` provides on an arm64 Debian).
    let interp = support::aarch64_elf_interp(&bin);
    assert_eq!(interp.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
    let (out, desc) = output(
        {
            let mut c = qemu(&bin);
            c.arg("--version");
            c
        },
        b"",
    );
    assert!(out.status.success(), "{desc}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{desc}"
    );
}

/// The arm64 broker serves a secret end to end: set through its own admin CLI (value on stdin),
/// a sandbox made, the value fetched byte for byte through the sandbox socket by the host's
/// init and by the arm64 init (`exec`); no log holds the value; SIGTERM stops it with status 0.
#[test]
fn the_arm64_broker_serves_a_secret_to_the_init() {
    let Some(bin) = arm64_broker("arm64 broker serves") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    let mut broker = serve(&bin, &state, &run, dir.path().join("broker.log"));

    let admin = |args: &[&str], stdin: &[u8]| {
        let mut c = qemu(&bin);
        c.arg("--run-dir").arg(&run).args(args);
        let (out, desc) = output(c, stdin);
        assert!(out.status.success(), "{desc}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = "arm64-broker-7c2 $HOME \"q\" 'sq'\nline2";
    admin(
        &["set", "ARM_TOKEN", "--user", "mona", "--repos", "octo/arm"],
        value.as_bytes(),
    );
    let listed = admin(&["list", "--user", "mona", "--json"], b"");
    assert!(listed.contains("ARM_TOKEN"), "{listed}");
    assert!(!listed.contains("arm64-broker-7c2"), "list shows no value");
    let line = admin(
        &["sandbox", "create", "--user", "mona", "--repo", "octo/arm"],
        b"",
    );
    let (id, sandbox) = line
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("sandbox create printed {line:?}"));
    assert_eq!(Path::new(sandbox), run.join("sandboxes").join(id));
    let socket = Path::new(sandbox).join("secrets.sock");

    let fetch = |mut init: Command, who: &str| {
        init.env("SANDBOX_SECRETS_SOCKET", &socket)
            .env_remove("SANDBOX_INIT_USER")
            .env_remove("SANDBOX_INIT_LOG")
            .args([
                "--secrets",
                "required",
                "--",
                "sh",
                "-c",
                "printf '%s' \"$ARM_TOKEN\"",
            ]);
        let (out, desc) = output(init, b"");
        assert_eq!(out.status.code(), Some(0), "{who}\n{desc}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{who}\n{desc}");
    };
    fetch(
        Command::new(env!("CARGO_BIN_EXE_sandbox-init")),
        "the host's init",
    );
    let arm_init = from_env_or("SANDBOX_INIT_ARM64", "target/static/aarch64/sandbox-init");
    if arm_init.exists() {
        // `exec` (fetch, then execve the command): qemu-user refuses the child subreaper that
        // supervision asks for (tests/pid1_arm64.rs runs that part as PID 1 instead).
        let mut c = Command::new(QEMU);
        c.arg(&arm_init).arg("exec");
        fetch(c, "the arm64 init (exec)");
    } else {
        support::skip(&format!(
            "arm64 broker serves: no arm64 init at {} for the second fetch \
             (scripts/build-static.sh --target aarch64)",
            arm_init.display()
        ));
    }

    let mut child = broker.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the arm64 broker ignored SIGTERM\n{}", broker.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = broker.log_text();
    assert!(status.success(), "exit {status}\n{log}");
    assert!(log.contains("listening"), "{log}");
    support::daemon::assert_no_values(
        "the arm64 broker's log",
        log.as_bytes(),
        &[value, "arm64-broker-7c2"],
    );
}
