//! The one test harness: the skip policy, the corpus of bad wire answers, and the shared parts
//! every integration test uses: [`daemon`] (the real `sandbox-secrets serve` in temp dirs, the
//! CLI, raw HTTP over its sockets), [`peer`] (the fake broker), [`fuzz`] (the fuzz runner),
//! [`registry`] (the test registry's address and credentials).
// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

#[cfg(feature = "broker")]
pub mod daemon;
pub mod fuzz;
pub mod peer;
pub mod postgres;
pub mod registry;
pub mod world;

/// Prints `skipped: <why>` for a test (or part of one) that needs what this machine lacks (root,
/// a PID namespace, docker, the test registry). With `SANDBOX_INIT_REQUIRE_ALL=1`, which
/// `scripts/test.sh` sets because it installs and starts everything, the skip fails the test
/// instead: CI never passes by skipping.
pub fn skip(why: &str) {
    if std::env::var_os("SANDBOX_INIT_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("skipped: {why} (SANDBOX_INIT_REQUIRE_ALL=1: every test must run here)");
    }
    println!("skipped: {why}");
}

/// A value-like marker put in every hostile body: no error or log may echo it.
pub const MARK: &str = "hostileValQ9z7Kx2";

/// One bad `GET /v1/secrets` answer of `tests/corpus/bad-answers/`.
pub struct BadAnswer {
    pub name: String,
    pub body: Vec<u8>,
    /// Words the refusal must contain.
    pub why: String,
}

/// Every bad answer of the corpus, in file-name order.
pub fn bad_answers() -> Vec<BadAnswer> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-answers");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|path| {
            let why_path = path.with_extension("why");
            let why = std::fs::read_to_string(&why_path)
                .unwrap_or_else(|e| panic!("{}: {e}", why_path.display()));
            BadAnswer {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                body: std::fs::read(&path).unwrap(),
                why: why.trim_end().to_owned(),
            }
        })
        .collect()
}

/// The dangerous-name policy of issue 10, written out independently of `protocol::DANGEROUS`.
pub fn dangerous_oracle(up: &str) -> bool {
    const PREFIXES: [&str; 13] = [
        "LD_", "BASH", "GIT_", "PYTHON", "PERL", "RUBY", "NODE_", "JAVA_", "_JAVA_", "JDK_",
        "DOTNET_", "SSL_", "CURL_CA_",
    ];
    const NAMES: [&str; 26] = [
        "GCONV_PATH",
        "SHELLOPTS",
        "PS0",
        "PS1",
        "PS2",
        "PS3",
        "PS4",
        "ENV",
        "PROMPT_COMMAND",
        "ZDOTDIR",
        "IFS",
        "XDG_CONFIG_HOME",
        "REQUESTS_CA_BUNDLE",
        "BROWSER",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "MANPAGER",
        "LESSOPEN",
        "LESSCLOSE",
        "TMPDIR",
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
    ];
    PREFIXES.iter().any(|p| up.starts_with(p)) || NAMES.contains(&up) || up.ends_with("_PROXY")
}

/// Why the init cannot run as real PID 1 here (`unshare -pf --mount-proc` fails), or `None`;
/// asked once per test binary.
pub fn pid1_unavailable() -> Option<String> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(|| {
        match std::process::Command::new("unshare")
            .args(["-pf", "--mount-proc", "true"])
            .output()
        {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "unshare -pf --mount-proc failed (not root?): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("unshare not available: {e}")),
        }
    })
    .clone()
}

/// Checks that `path` is a 64-bit AArch64 ELF file; returns its `PT_INTERP` (the dynamic loader
/// it asks for), `None` for a static binary.
pub fn aarch64_elf_interp(path: &std::path::Path) -> Option<String> {
    const EM_AARCH64: u16 = 183;
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is an ELF file", path.display());
    assert_eq!(bytes[4], 2, "64-bit");
    assert_eq!(u16_at(18), EM_AARCH64 as usize, "e_machine is AArch64");
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&at| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == PT_INTERP)
        .map(|at| {
            let (off, size) = (u64_at(at + 8), u64_at(at + 32));
            String::from_utf8_lossy(&bytes[off..off + size])
                .trim_end_matches('\0')
                .to_owned()
        })
}
