//! The contract both sides share: wire types of `GET /v1/secrets`, the secret-name, value and
//! repository rules, and the HTTP/1.1 clients over a unix socket: the init's blocking one
//! ([`http1`]), and the broker's async one on hyper (feature `broker`). Nothing here touches
//! signals, the store or the environment; no function here logs or formats a secret value.

use std::fmt;
#[cfg(feature = "broker")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(feature = "broker")]
use http_body_util::{BodyExt, Full};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

mod answer;
pub mod http1;

/// Path of the sandbox API.
pub const SECRETS_PATH: &str = "/v1/secrets";
/// Where `sandbox-init` looks for the sandbox socket by default.
pub const DEFAULT_SANDBOX_SOCKET: &str = "/run/sandbox/secrets.sock";
/// The marker file the daemon keeps beside a sandbox's socket, in the directory the platform
/// mounts: present with no socket means a broker serves this directory but is not up (stopping,
/// restarting), so the init waits for the socket and then fails closed rather than start without
/// secrets.
pub const MARKER_NAME: &str = "broker";
/// Largest secret value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 48 * 1024;
/// Most secrets one user, or one repository, may hold.
pub const MAX_SECRETS_PER_SCOPE: usize = 100;
/// Most secrets one `GET /v1/secrets` answer may hold. Our broker serves at most 200 (100 of the
/// user, 100 of the repository); a platform's own broker may serve more, up to this bound, past
/// which the init refuses the answer as garbage.
pub const MAX_SECRETS_PER_ANSWER: usize = 1000;
/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// The largest `GET /v1/secrets` answer a client reads: 200 secrets at the value limit, plus
/// JSON escaping (at most 6 bytes per input byte for control characters) would be larger, so
/// this is a hard cap rather than an exact bound; anything above is refused as garbage.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What a watching init does when its answer changes, as its watch declares it in `Prefer`
/// (RFC 7240, beside `wait`): `on-change=restart` (the command is restarted) or
/// `on-change=signal` (the command is signalled and keeps running). The broker only reports it
/// (`set` says which sandboxes restart their command); it changes nothing it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    Restart,
    Signal,
}

impl Reaction {
    /// The preference's name in `Prefer`.
    pub const PREFERENCE: &'static str = "on-change";

    /// The preference's value on the wire.
    pub fn token(self) -> &'static str {
        match self {
            Reaction::Restart => "restart",
            Reaction::Signal => "signal",
        }
    }

    /// The `on-change` preference of a request's `Prefer` header values, if one names a known
    /// reaction. Pure and lenient, since any client may send anything: the first `on-change`
    /// preference counts (RFC 7240 section 2), its name compared without case, its value bare or
    /// quoted, parameters after `;` ignored; an unknown or malformed value is no reaction.
    pub fn from_prefer<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Reaction> {
        let value = values
            .into_iter()
            .flat_map(|v| v.split(','))
            .find_map(|p| {
                let p = p.split(';').next().unwrap_or("");
                let (name, value) = p.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case(Self::PREFERENCE)
                    .then(|| value.trim())
            })?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        [Reaction::Restart, Reaction::Signal]
            .into_iter()
            .find(|r| value.eq_ignore_ascii_case(r.token()))
    }
}

/// How a rule of [`DANGEROUS`] matches an (upper-case) secret name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// This name only.
    Exact(&'static str),
    /// Every name starting with this.
    Prefix(&'static str),
    /// Every name ending with this (names are upper-cased first, so any case).
    Suffix(&'static str),
}

impl Pattern {
    /// A name this pattern refuses (`GIT_X` for `GIT_*`), for documentation and tests.
    pub fn example(self) -> String {
        match self {
            Pattern::Exact(p) => p.to_owned(),
            Pattern::Prefix(p) => format!("{p}X"),
            Pattern::Suffix(p) => format!("X{p}"),
        }
    }

    /// Whether the upper-case `name` falls under this pattern.
    pub fn matches(self, name: &str) -> bool {
        match self {
            Pattern::Exact(p) => name == p,
            Pattern::Prefix(p) => name.starts_with(p),
            Pattern::Suffix(p) => name.ends_with(p),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(p) => f.write_str(p),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Suffix(p) => write!(f, "*{p}"),
        }
    }
}

/// One family of dangerous names and why: a repository secret under such a name would run code
/// in, or redirect the traffic or files of, every sandbox of that repository (other users'
/// among them), since the variable reaches every program the child starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Danger {
    pub pattern: Pattern,
    pub reason: &'static str,
}

const fn rule(pattern: Pattern, reason: &'static str) -> Danger {
    Danger { pattern, reason }
}

/// The dangerous-name policy, one table for both sides: the broker refuses these names at `set`
/// (unless `--allow-dangerous`) and the init refuses them on arrival. README.md shows it.
pub const DANGEROUS: &[Danger] = {
    use Pattern::{Exact, Prefix, Suffix};
    &[
        rule(
            Prefix("LD_"),
            "the dynamic loader loads code into every program (LD_PRELOAD, LD_AUDIT)",
        ),
        rule(
            Exact("GCONV_PATH"),
            "glibc's iconv loads conversion modules (code) from it",
        ),
        rule(
            Prefix("BASH"),
            "bash runs the file in BASH_ENV at start, takes options from BASHOPTS",
        ),
        rule(
            Exact("SHELLOPTS"),
            "tracing on in every bash: it expands PS4 and runs the $(...) in it",
        ),
        rule(
            Exact("PS0"),
            "bash expands prompts, and so runs $(...) in them",
        ),
        rule(
            Exact("PS1"),
            "bash expands prompts, and so runs $(...) in them",
        ),
        rule(
            Exact("PS2"),
            "bash expands prompts, and so runs $(...) in them",
        ),
        rule(
            Exact("PS3"),
            "bash expands prompts, and so runs $(...) in them",
        ),
        rule(
            Exact("PS4"),
            "bash expands it for every traced command, and so runs $(...) in it",
        ),
        rule(
            Exact("ENV"),
            "sh, dash and bash in POSIX mode run the file in ENV at start",
        ),
        rule(Exact("PROMPT_COMMAND"), "bash runs it before every prompt"),
        rule(
            Exact("ZDOTDIR"),
            "zsh runs the startup files of that directory",
        ),
        rule(Exact("IFS"), "changes how every shell script splits words"),
        rule(
            Prefix("GIT_"),
            "git runs commands from them (GIT_CONFIG_* core.fsmonitor, GIT_SSH_COMMAND)",
        ),
        rule(
            Exact("XDG_CONFIG_HOME"),
            "git and others read configuration, commands among it, from there",
        ),
        rule(
            Prefix("PYTHON"),
            "python imports or runs code from them (PYTHONPATH, PYTHONWARNINGS)",
        ),
        rule(
            Prefix("PERL"),
            "perl loads code from them (PERL5OPT -M, PERL5LIB)",
        ),
        rule(
            Prefix("RUBY"),
            "ruby loads code from them (RUBYOPT -r, RUBYLIB)",
        ),
        rule(
            Prefix("NODE_"),
            "node loads code from them (NODE_OPTIONS --require, NODE_PATH)",
        ),
        rule(
            Prefix("JAVA_"),
            "the JVM takes -javaagent (code) from JAVA_TOOL_OPTIONS",
        ),
        rule(
            Prefix("_JAVA_"),
            "the JVM takes -javaagent (code) from _JAVA_OPTIONS",
        ),
        rule(
            Prefix("JDK_"),
            "the java launcher takes -javaagent (code) from JDK_JAVA_OPTIONS",
        ),
        rule(
            Prefix("DOTNET_"),
            ".NET loads assemblies (code) from DOTNET_STARTUP_HOOKS",
        ),
        rule(
            Suffix("_PROXY"),
            "HTTP clients send their traffic, tokens in it, through that proxy",
        ),
        rule(
            Prefix("SSL_"),
            "OpenSSL trusts the certificates they name (SSL_CERT_FILE)",
        ),
        rule(Prefix("CURL_CA_"), "curl trusts the certificates it names"),
        rule(
            Exact("REQUESTS_CA_BUNDLE"),
            "python requests trusts the certificates it names",
        ),
        rule(
            Exact("BROWSER"),
            "python's webbrowser, xdg-open and others run it as a command",
        ),
        rule(
            Exact("EDITOR"),
            "git, crontab and others run it as a command",
        ),
        rule(
            Exact("VISUAL"),
            "git, crontab and others run it as a command",
        ),
        rule(Exact("PAGER"), "git, man and others run it as a command"),
        rule(Exact("MANPAGER"), "man runs it as a command"),
        rule(Exact("LESSOPEN"), "less runs it as an input preprocessor"),
        rule(Exact("LESSCLOSE"), "less runs it after a preprocessed file"),
        rule(
            Exact("TMPDIR"),
            "moves every program's temporary files where the secret says",
        ),
        rule(
            Exact("PATH"),
            "decides which program runs for every command name",
        ),
        rule(
            Exact("HOME"),
            "whose startup files run; the init sets it for the target user",
        ),
        rule(
            Exact("SHELL"),
            "programs run it as the shell; the init sets it for the target user",
        ),
        rule(
            Exact("USER"),
            "identity programs trust; the init sets it for the target user",
        ),
        rule(
            Exact("LOGNAME"),
            "identity programs trust; the init sets it for the target user",
        ),
    ]
};

/// The rule of [`DANGEROUS`] that refuses the upper-case `name`, if any: the first in the
/// table's order.
pub fn dangerous(name: &str) -> Option<&'static Danger> {
    // Only the rules that can match a name of this first byte are tried, in the table's order
    // (every name of an answer is checked against the table: trying all of it was the larger
    // half of the cost of a name).
    let mut rules = match name.as_bytes().first() {
        Some(&b) if b.is_ascii() => RULES_BY_FIRST_BYTE[usize::from(b)],
        _ => SUFFIX_RULES,
    };
    while rules != 0 {
        let d = &DANGEROUS[rules.trailing_zeros() as usize];
        if d.pattern.matches(name) {
            return Some(d);
        }
        rules &= rules - 1;
    }
    None
}

/// The rules of [`DANGEROUS`] (bit `i` for rule `i`) that can match a name by its first byte:
/// the exact and prefix rules starting with it, and every suffix rule.
const RULES_BY_FIRST_BYTE: [u64; 128] = {
    assert!(DANGEROUS.len() <= 64, "one bit per rule");
    let mut table = [SUFFIX_RULES; 128];
    let mut i = 0;
    while i < DANGEROUS.len() {
        if let Pattern::Exact(p) | Pattern::Prefix(p) = DANGEROUS[i].pattern {
            let first = p.as_bytes()[0];
            assert!(first.is_ascii(), "patterns are ASCII");
            table[first as usize] |= 1 << i;
        }
        i += 1;
    }
    table
};

/// The suffix rules of [`DANGEROUS`], one bit each: the only ones an empty name, or one not
/// starting with ASCII, could match.
const SUFFIX_RULES: u64 = {
    let mut mask = 0;
    let mut i = 0;
    while i < DANGEROUS.len() {
        if let Pattern::Suffix(_) = DANGEROUS[i].pattern {
            mask |= 1 << i;
        }
        i += 1;
    }
    mask
};

/// Why a secret name was refused. The message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("secret name is empty")]
    Empty,
    #[error("secret name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("secret name {0:?} may only contain letters, digits and underscores")]
    BadCharacter(String),
    #[error("secret name {0:?} must not start with a digit")]
    LeadingDigit(String),
    #[error("secret name {0:?} must not start with GITHUB_ (reserved)")]
    ReservedGithub(String),
    #[error("secret name {0:?} must not start with SANDBOX_ (reserved for sandbox-init)")]
    ReservedSandbox(String),
    #[error("secret name {0:?} is dangerous ({why}); allow it explicitly", why = why_dangerous(.0))]
    Dangerous(String),
}

/// `PATTERN: reason` of the rule refusing `name`, for [`NameError::Dangerous`].
fn why_dangerous(name: &str) -> String {
    match dangerous(name) {
        Some(d) => format!("{}: {}", d.pattern, d.reason),
        None => "it changes how programs start".to_owned(),
    }
}

/// Checks a secret name against SPEC's rules and returns its stored (upper-case) form.
pub fn normalize_name(raw: &str, allow_dangerous: bool) -> Result<String, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(NameError::BadCharacter(raw.to_owned()));
    }
    let name = raw.to_ascii_uppercase();
    if name.as_bytes()[0].is_ascii_digit() {
        return Err(NameError::LeadingDigit(name));
    }
    if name.starts_with("GITHUB_") {
        return Err(NameError::ReservedGithub(name));
    }
    if name.starts_with("SANDBOX_") {
        return Err(NameError::ReservedSandbox(name));
    }
    if !allow_dangerous && dangerous(&name).is_some() {
        return Err(NameError::Dangerous(name));
    }
    Ok(name)
}

/// True for a name the dangerous-name policy refuses unless explicitly allowed (valid
/// otherwise). The broker stores such a name only with `--allow-dangerous`, so every one it
/// serves was allowed: [`encode_answer`] marks it `"dangerous": true`, and [`decode_answer`]
/// accepts a dangerous name only when so marked.
pub fn is_dangerous(name: &str) -> bool {
    matches!(normalize_name(name, false), Err(NameError::Dangerous(_)))
}

/// Why a secret value was refused. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("secret value is {len} bytes, more than the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("secret value contains a NUL byte at offset {offset}")]
    Nul { offset: usize },
    #[error("secret value is not valid UTF-8 (at byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("secret value is empty")]
    Empty,
}

/// Checks raw value bytes (as read from stdin or a file) and returns them as text.
pub fn check_value(raw: &[u8]) -> Result<&str, ValueError> {
    if raw.is_empty() {
        return Err(ValueError::Empty);
    }
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ValueError::TooLarge { len: raw.len() });
    }
    if let Some(offset) = raw.iter().position(|&b| b == 0) {
        return Err(ValueError::Nul { offset });
    }
    std::str::from_utf8(raw).map_err(|e| ValueError::NotUtf8 {
        offset: e.valid_up_to(),
    })
}

/// Why a repository or user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("repository {0:?} must be owner/name (letters, digits, '-', '_', '.'; no '..')")]
    BadRepository(String),
    #[error("user {0:?} must be 1-39 letters, digits or '-' (not starting with '-')")]
    BadUser(String),
}

/// At most this many characters of a refused repository or user name are quoted back.
const SHOWN_CHARS: usize = 100;

/// The refused input as an error quotes it: cut to [`SHOWN_CHARS`] characters, so a hostile
/// 300 KB "repository" does not come back in the error.
fn shown(raw: &str) -> String {
    match raw.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", &raw[..cut]),
        None => raw.to_owned(),
    }
}

fn repo_part_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks an `owner/name` repository and returns its stored (lower-case) form: repository names
/// are case-insensitive, as on GitHub.
pub fn normalize_repo(raw: &str) -> Result<String, ScopeError> {
    let mut parts = raw.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(name), None) if repo_part_ok(owner) && repo_part_ok(name) => {
            Ok(raw.to_ascii_lowercase())
        }
        _ => Err(ScopeError::BadRepository(shown(raw))),
    }
}

/// Checks a user name (GitHub's login rules) and returns its stored (lower-case) form.
pub fn normalize_user(raw: &str) -> Result<String, ScopeError> {
    let ok = !raw.is_empty()
        && raw.len() <= 39
        && !raw.starts_with('-')
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ScopeError::BadUser(shown(raw)))
    }
}

/// One secret on the wire. `Debug` never shows the value; the value is zeroized on drop.
#[derive(Serialize, Deserialize)]
pub struct WireSecret {
    pub name: String,
    #[serde(serialize_with = "expose_value", deserialize_with = "secret_value")]
    pub value: SecretString,
    /// The name is dangerous ([`is_dangerous`]) and the broker marked it explicitly allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dangerous: bool,
}

impl fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireSecret")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .field("dangerous", &self.dangerous)
            .finish()
    }
}

fn expose_value<S: Serializer>(value: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.expose_secret())
}

fn secret_value<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// One secret as the daemon encodes it, borrowed from its opened row. Encoded as
/// `{"name","value"}`, plus `"dangerous":true` when the name is dangerous (it was stored with
/// `--allow-dangerous`, the only way such a name is stored).
pub struct WireSecretRef<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl Serialize for WireSecretRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let dangerous = is_dangerous(self.name);
        let mut m = s.serialize_struct("WireSecret", 2 + usize::from(dangerous))?;
        m.serialize_field("name", self.name)?;
        m.serialize_field("value", self.value)?;
        if dangerous {
            m.serialize_field("dangerous", &true)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct AnswerRef<'a> {
    sandbox: &'a str,
    repository: &'a str,
    secrets: &'a [WireSecretRef<'a>],
}

/// Encodes the body of `200 GET /v1/secrets` (the daemon's half of the wire format; the init's
/// half is [`decode_answer`]). The buffer is zeroized on drop.
pub fn encode_answer(
    sandbox: &str,
    repository: &str,
    secrets: &[WireSecretRef<'_>],
) -> Zeroizing<Vec<u8>> {
    // Exactly the size it will have: one allocation, never grown (a grown buffer would leave
    // copies of values behind, and cost up to twice its size in passing).
    let mut body = Zeroizing::new(Vec::with_capacity(encoded_answer_len(
        sandbox, repository, secrets,
    )));
    let answer = AnswerRef {
        sandbox,
        repository,
        secrets,
    };
    // Writing to a Vec cannot fail, and every field is a string.
    let _ = serde_json::to_writer(&mut *body, &answer);
    body
}

/// The exact length of [`encode_answer`]`(sandbox, repository, secrets)`, without building it
/// (the daemon checks a plan against [`MAX_RESPONSE_BYTES`] before it stores a change).
pub fn encoded_answer_len(sandbox: &str, repository: &str, secrets: &[WireSecretRef<'_>]) -> usize {
    const ENVELOPE: usize = r#"{"sandbox":,"repository":,"secrets":[]}"#.len();
    const SECRET: usize = r#"{"name":,"value":}"#.len();
    const MARK: usize = r#","dangerous":true"#.len();
    ENVELOPE
        + json_str_len(sandbox)
        + json_str_len(repository)
        + secrets
            .iter()
            .map(|s| {
                SECRET
                    + json_str_len(s.name)
                    + json_str_len(s.value)
                    + if is_dangerous(s.name) { MARK } else { 0 }
            })
            .sum::<usize>()
        + secrets.len().saturating_sub(1)
}

/// Length of `s` as a JSON string the way `serde_json` writes it: quotes, two-byte escapes for
/// `"`, `\` and `\b \f \n \r \t`, `\u00XX` for the other control characters, every other
/// byte as it is.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Most JSON values a 200 answer may hold: 5 for the envelope, 5 per secret, with room to spare.
pub const MAX_JSON_VALUES: usize = 8 * MAX_SECRETS_PER_ANSWER + 64;

/// Why a `200 GET /v1/secrets` body was refused. Names the field or rule, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("not a secrets answer: {0}")]
    Shape(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("value of {name} contains a NUL byte at offset {offset}")]
    Nul { name: String, offset: usize },
    #[error("secret name {0:?} appears more than once")]
    Duplicate(String),
}

/// Decodes the body of `200 GET /v1/secrets`: exactly `{"sandbox","repository","secrets":
/// [{"name","value"}]}` (fields of later versions are refused under `/v1`: docs/wire-format.md),
/// at most [`MAX_SECRETS_PER_ANSWER`] secrets, every name passing [`normalize_name`] (a
/// dangerous name only when marked `"dangerous": true`, which is then kept) and appearing once,
/// no value holding a NUL. Returned sorted by name. Read in one pass straight into the secrets
/// (`protocol::answer`), no tree of JSON values; the shape is checked by hand, because serde's
/// own messages quote the offending string (`invalid type: string "..."`), which could be a
/// value. Each value is copied once, into its `SecretString`.
pub fn decode_answer(body: &[u8]) -> Result<Vec<WireSecret>, AnswerError> {
    // Bound the work on a hostile body (and keep its refusal the same): count the values first.
    if json_values_over(body, MAX_JSON_VALUES) {
        return Err(AnswerError::Shape(format!(
            "more than {MAX_JSON_VALUES} JSON values (an answer holds at most \
             {MAX_SECRETS_PER_ANSWER} secrets)"
        )));
    }
    let mut out = answer::read(body)?;
    // Names are unique once the answer is accepted, so an unstable sort gives the same order
    // (and allocates nothing).
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(AnswerError::Duplicate(w[0].name.clone()));
    }
    Ok(out)
}

/// The message of an error answer (`{"error": "..."}`), if the body is one. By contract it never
/// holds a value; the caller still escapes and bounds what it shows.
pub fn decode_error(body: &[u8]) -> Option<String> {
    let doc = ScrubbedJson(serde_json::from_slice::<serde_json::Value>(body).ok()?);
    doc.0.get("error")?.as_str().map(str::to_owned)
}

/// A parsed JSON document whose strings (values, `auth` entries) are zeroized when dropped: the
/// answer's decoder and the init's `config.json` merge both hold secrets in one.
pub struct ScrubbedJson(pub serde_json::Value);

impl Drop for ScrubbedJson {
    fn drop(&mut self) {
        fn scrub(v: &mut serde_json::Value) {
            use serde_json::Value;
            match v {
                Value::String(s) => zeroize::Zeroize::zeroize(s),
                Value::Array(a) => a.iter_mut().for_each(scrub),
                Value::Object(m) => m.values_mut().for_each(scrub),
                _ => {}
            }
        }
        scrub(&mut self.0);
    }
}

/// Whether `body` holds more than `limit` JSON values, counted as one plus the commas and colons
/// outside strings (every value but the first follows one of them): an upper bound, found in one
/// pass without allocating. Bytes need not be valid JSON or UTF-8.
pub fn json_values_over(body: &[u8], limit: usize) -> bool {
    // A search for the next byte that matters rather than a state per byte: most bytes are
    // inside strings, which are skipped to their closing quote an escape at a time.
    let mut count = 1usize;
    let mut i = 0;
    while let Some(at) = body[i..]
        .iter()
        .position(|&b| matches!(b, b'"' | b',' | b':'))
    {
        i += at + 1;
        if body[i - 1] != b'"' {
            count += 1;
            if count > limit {
                return true;
            }
            continue;
        }
        loop {
            match body[i..].iter().position(|&b| b == b'"' || b == b'\\') {
                None => return false,
                // The escaped byte, whatever it is, is skipped with its backslash.
                Some(at) if body[i + at] == b'\\' => i = (i + at + 2).min(body.len()),
                Some(at) => {
                    i += at + 1;
                    break;
                }
            }
        }
    }
    false
}

/// The body of every error answer. Never holds a value.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request over a unix socket failed. Messages name the socket, never a body.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {socket}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {socket} failed")]
    Http { socket: PathBuf, source: HttpError },
    #[error("answer from {socket} is larger than {limit} bytes")]
    TooLarge { socket: PathBuf, limit: usize },
    /// The deadline of [`http1::get`] passed before the answer was complete.
    #[error("no complete answer from {socket} in time")]
    Deadline { socket: PathBuf },
    #[cfg(feature = "broker")]
    #[error("cannot build request for {path}")]
    Request {
        path: String,
        source: hyper::http::Error,
    },
}

/// What broke an HTTP exchange: the socket, or an answer that is not HTTP/1.1 (named, never
/// quoted).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error("{0}")]
    Malformed(&'static str),
    #[cfg(feature = "broker")]
    #[error(transparent)]
    Hyper(hyper::Error),
}

/// A complete answer: status, headers (names lower-case) and body. The body is zeroized on drop
/// because it may hold secrets.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Zeroizing<Vec<u8>>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        // `Zeroizing` wipes a Vec's elements one volatile write at a time but its spare capacity
        // in bulk: emptied first, the whole body is spare capacity, wiped at memset speed.
        self.body.clear();
    }
}

impl Answer {
    /// The value of the first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request over the unix socket at `socket` and reads the whole answer,
/// refusing bodies larger than `limit`. Timeouts are the caller's (wrap in `tokio::time::timeout`).
/// Must run inside a tokio runtime (current-thread is enough). The broker's admin client; the
/// init uses [`http1::get`].
#[cfg(feature = "broker")]
pub async fn unix_request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
    limit: usize,
) -> Result<Answer, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    request_on(stream, socket, method, path, body, limit).await
}

/// [`unix_request`] on a stream the caller has already connected (and checked, e.g. its peer's
/// credentials); `socket` only names it in errors.
#[cfg(feature = "broker")]
pub async fn request_on(
    stream: tokio::net::UnixStream,
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
    limit: usize,
) -> Result<Answer, ClientError> {
    let http = |source| ClientError::Http {
        socket: socket.to_owned(),
        source: HttpError::Hyper(source),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    let conn = tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .map_err(|source| ClientError::Request {
            path: path.to_owned(),
            source,
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), v)
        })
        .collect();
    let mut incoming = response.into_body();
    let mut out = Zeroizing::new(Vec::new());
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(http)?;
        if let Ok(chunk) = frame.into_data() {
            if out.len() + chunk.len() > limit {
                conn.abort();
                return Err(ClientError::TooLarge {
                    socket: socket.to_owned(),
                    limit,
                });
            }
            if out.capacity() < out.len() + chunk.len() {
                // Grow by hand so no unzeroized copy of earlier bytes is left behind.
                let mut grown = Zeroizing::new(Vec::with_capacity(
                    (out.len() + chunk.len()).max(out.capacity() * 2).min(limit),
                ));
                grown.extend_from_slice(&out);
                out = grown;
            }
            out.extend_from_slice(&chunk);
        }
    }
    conn.abort();
    Ok(Answer {
        status,
        headers,
        body: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_on_change_preference_is_read_leniently_and_unknown_ones_are_none() {
        let r = |v: &[&str]| Reaction::from_prefer(v.iter().copied());
        for reaction in [Reaction::Restart, Reaction::Signal] {
            let sent = format!("wait=300, {}={}", Reaction::PREFERENCE, reaction.token());
            assert_eq!(r(&[&sent]), Some(reaction), "{sent}");
        }
        assert_eq!(
            r(&["ON-Change = \"Restart\" ; x=1"]),
            Some(Reaction::Restart)
        );
        assert_eq!(r(&["wait=5", "on-change=signal"]), Some(Reaction::Signal));
        // The first instance counts, even when a later one is readable.
        assert_eq!(r(&["on-change=reboot, on-change=restart"]), None);
        assert_eq!(
            r(&["on-change=signal, on-change=restart"]),
            Some(Reaction::Signal)
        );
        let long = "on-change=".to_owned() + &"r".repeat(10_000);
        for bad in [
            "",
            "on-change",
            "on-change=",
            "on-change=none",
            "on-change=\"restart",
            "on-changed=restart",
            "restart",
            "wait=300",
            ",,,;;;===",
            long.as_str(),
        ] {
            assert_eq!(r(&[bad]), None, "{bad:.40}");
        }
    }

    #[test]
    fn names_are_upper_cased_and_checked_rule_by_rule() {
        assert_eq!(normalize_name("api_Token", false).unwrap(), "API_TOKEN");
        assert_eq!(normalize_name("_x1", false).unwrap(), "_X1");
        assert_eq!(normalize_name("", false), Err(NameError::Empty));
        assert!(matches!(
            normalize_name("A-B", false),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            normalize_name("A B", false),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            normalize_name("é", false),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            normalize_name("1ABC", false),
            Err(NameError::LeadingDigit(_))
        ));
        assert!(matches!(
            normalize_name("github_token", false),
            Err(NameError::ReservedGithub(_))
        ));
        assert!(matches!(
            normalize_name("Sandbox_X", false),
            Err(NameError::ReservedSandbox(_))
        ));
        assert_eq!(
            normalize_name(&"A".repeat(MAX_NAME_LEN + 1), false),
            Err(NameError::TooLong)
        );
        for d in DANGEROUS {
            let example = d.pattern.example();
            let lower = example.to_ascii_lowercase();
            assert!(
                matches!(normalize_name(&lower, false), Err(NameError::Dangerous(_))),
                "{example}"
            );
            assert_eq!(normalize_name(&lower, true).unwrap(), example);
            assert!(d.pattern.matches(&example), "{example}");
        }
        // Prefixes of dangerous names, and names that only look alike, are ordinary names.
        for fine in [
            "PATHS",
            "MY_PATH",
            "GITLAB_TOKEN",
            "API_TOKEN",
            "NPM_TOKEN",
            "DATABASE_URL",
            "PS5",
            "HOMEBREW_TOKEN",
            "SHELLY",
            "PROXY",
            "PROXY_URL",
            "ENVIRONMENT",
            "AWS_SECRET_KEY",
        ] {
            assert_eq!(normalize_name(fine, false).as_deref(), Ok(fine));
        }
    }

    #[test]
    fn every_family_of_the_issue_is_refused_by_prefix_or_name() {
        // Issue 10 item 6, name by name; `*_PROXY` in any case.
        let refused = [
            "LD_PRELOAD",
            "LD_ANYTHING",
            "BASH_ENV",
            "BASHOPTS",
            "BASH_FUNC_X",
            "SHELLOPTS",
            "PS1",
            "PS2",
            "PS3",
            "PS4",
            "ENV",
            "PROMPT_COMMAND",
            "IFS",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "GIT_CONFIG_VALUE_0",
            "GIT_SSH_COMMAND",
            "GIT_TOKEN",
            "PYTHONWARNINGS",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "PERL5LIB",
            "RUBYOPT",
            "RUBYLIB",
            "NODE_OPTIONS",
            "NODE_PATH",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "DOTNET_STARTUP_HOOKS",
            "HTTPS_PROXY",
            "https_proxy",
            "Http_Proxy",
            "ALL_PROXY",
            "no_proxy",
            "FTP_PROXY",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "BROWSER",
            "EDITOR",
            "VISUAL",
            "PAGER",
            "GCONV_PATH",
            "TMPDIR",
            "HOME",
            "PATH",
            "SHELL",
            "USER",
            "LOGNAME",
        ];
        for name in refused {
            let e = normalize_name(name, false).unwrap_err();
            assert_eq!(e, NameError::Dangerous(name.to_ascii_uppercase()), "{name}");
            // The message names the family and its reason.
            let msg = e.to_string();
            let d = dangerous(&name.to_ascii_uppercase()).unwrap();
            assert!(
                msg.contains(&d.pattern.to_string()) && msg.contains(d.reason),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_rule_found_is_the_first_of_the_table_that_matches() {
        let mut names: Vec<String> = vec![String::new(), "é".into(), "NODE_PROXY".into()];
        for d in DANGEROUS {
            let example = d.pattern.example();
            for name in [
                example.clone(),
                format!("{example}_X"),
                format!("X{example}"),
                example[1..].to_owned(),
                example[..example.len() - 1].to_owned(),
            ] {
                names.push(name);
            }
        }
        for first in 0u8..=255 {
            names
                .push(String::from_utf8_lossy(&[first, b'_', b'P', b'R', b'O', b'X', b'Y']).into());
        }
        for name in &names {
            let scanned = DANGEROUS.iter().find(|d| d.pattern.matches(name));
            assert_eq!(dangerous(name), scanned, "{name:?}");
        }
        assert_eq!(
            dangerous("NODE_PROXY").unwrap().pattern,
            Pattern::Prefix("NODE_")
        );
    }

    #[test]
    fn name_errors_name_the_rule() {
        let e = normalize_name("GITHUB_X", false).unwrap_err().to_string();
        assert!(e.contains("GITHUB_") && e.contains("reserved"), "{e}");
        let e = normalize_name("LD_PRELOAD", false).unwrap_err().to_string();
        assert!(e.contains("dangerous"), "{e}");
    }

    #[test]
    fn values_are_checked_without_echoing_them() {
        assert_eq!(
            check_value(b"line1\nline2 $'\"\\").unwrap(),
            "line1\nline2 $'\"\\"
        );
        assert_eq!(check_value(b""), Err(ValueError::Empty));
        assert_eq!(check_value(b"ab\0cd"), Err(ValueError::Nul { offset: 2 }));
        assert_eq!(
            check_value(&[b'a', 0xff]),
            Err(ValueError::NotUtf8 { offset: 1 })
        );
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert_eq!(
            check_value(&big),
            Err(ValueError::TooLarge {
                len: MAX_VALUE_BYTES + 1
            })
        );
        assert!(check_value(&vec![b'x'; MAX_VALUE_BYTES]).is_ok());
        let msg = check_value(b"hunter2\0").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"));
    }

    #[test]
    fn repositories_and_users() {
        assert_eq!(
            normalize_repo("Octo-Org/Hello.World").unwrap(),
            "octo-org/hello.world"
        );
        for bad in [
            "", "a", "a/", "/b", "a/b/c", "a/..", "../b", "a b/c", "a/b\n",
        ] {
            assert!(normalize_repo(bad).is_err(), "{bad:?}");
        }
        let long = format!("o/{}", "é".repeat(100_000));
        let e = normalize_repo(&long).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("..."), "{e}");
        assert_eq!(normalize_user("Mona").unwrap(), "mona");
        for bad in ["", "-mona", "mo na", "mona/x", &"m".repeat(40)] {
            assert!(normalize_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wire_secret_debug_is_redacted_and_round_trips() {
        let body = r#"{"sandbox":"s1","repository":"o/r","secrets":[{"name":"A","value":"s3cr3t\n\"x\""}]}"#;
        let parsed = decode_answer(body.as_bytes()).unwrap();
        assert_eq!(parsed[0].value.expose_secret(), "s3cr3t\n\"x\"");
        assert!(!format!("{parsed:?}").contains("s3cr3t"));
        let secrets: Vec<WireSecretRef> = parsed
            .iter()
            .map(|s| WireSecretRef {
                name: &s.name,
                value: s.value.expose_secret(),
            })
            .collect();
        assert_eq!(&encode_answer("s1", "o/r", &secrets)[..], body.as_bytes());
    }

    #[test]
    fn json_values_are_counted_outside_strings_only() {
        assert!(!json_values_over(b"", 1));
        assert!(!json_values_over(b"[1,2]", 2));
        assert!(json_values_over(b"[1,2,3]", 2));
        assert!(!json_values_over(br#"{"a":"x,y:z"}"#, 2));
        assert!(json_values_over(br#"{"a":"x","b":1}"#, 3));
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        assert!(!json_values_over(br#"["\",,,,"]"#, 1));
        assert!(json_values_over(br#"["\\",1,2]"#, 2));
        assert!(!json_values_over(b"\xff,\"", 2));
        let answer = format!(
            r#"{{"sandbox":"s","repository":"o/r","secrets":[{}]}}"#,
            vec![r#"{"name":"A","value":"x,:"}"#; MAX_SECRETS_PER_ANSWER].join(",")
        );
        assert!(!json_values_over(answer.as_bytes(), MAX_JSON_VALUES));
    }

    #[test]
    fn a_dangerous_name_is_marked_by_the_encoder_and_accepted_only_when_marked() {
        assert!(is_dangerous("PATH") && is_dangerous("ld_preload"));
        assert!(!is_dangerous("API_TOKEN") && !is_dangerous("GITHUB_X") && !is_dangerous(""));
        let refs = [
            WireSecretRef {
                name: "API_TOKEN",
                value: "a",
            },
            WireSecretRef {
                name: "PATH",
                value: "/opt/bin:/usr/bin",
            },
        ];
        let body = encode_answer(&"a".repeat(32), "o/r", &refs);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(r#"{"name":"PATH","value":"/opt/bin:/usr/bin","dangerous":true}"#)
                && text.contains(r#"{"name":"API_TOKEN","value":"a"}"#),
            "{text}"
        );
        assert_eq!(
            encoded_answer_len(&"a".repeat(32), "o/r", &refs),
            body.len()
        );
        let got = decode_answer(&body).unwrap();
        assert_eq!(
            got.iter()
                .map(|s| (s.name.as_str(), s.dangerous))
                .collect::<Vec<_>>(),
            [("API_TOKEN", false), ("PATH", true)]
        );
        // Unmarked, or marked false, a dangerous name is refused; a mark on an ordinary name
        // changes nothing; a mark that is not a boolean is refused.
        let one =
            |secret: &str| format!(r#"{{"sandbox":"s","repository":"o/r","secrets":[{secret}]}}"#);
        for refused in [
            r#"{"name":"PATH","value":"x"}"#,
            r#"{"name":"PATH","value":"x","dangerous":false}"#,
        ] {
            let e = decode_answer(one(refused).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains("dangerous"), "{e}");
        }
        let got =
            decode_answer(one(r#"{"name":"B","value":"x","dangerous":true}"#).as_bytes()).unwrap();
        assert!(!got[0].dangerous);
        let e = decode_answer(one(r#"{"name":"PATH","value":"x","dangerous":"yes"}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("dangerous` is not true or false"), "{e}");
    }

    proptest::proptest! {
        /// The search-based count agrees with a state per byte on any bytes.
        #[test]
        fn json_values_are_counted_as_a_state_machine_counts_them(
            body in proptest::collection::vec(
                proptest::sample::select(b"\"\\,:a{[ \xff".to_vec()),
                0..60,
            ),
            limit in 0usize..12,
        ) {
            let mut count = 1usize;
            let (mut in_string, mut escaped, mut over) = (false, false, false);
            for &b in &body {
                if in_string {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                } else if b == b'"' {
                    in_string = true;
                } else if b == b',' || b == b':' {
                    count += 1;
                    over |= count > limit;
                }
            }
            proptest::prop_assert_eq!(json_values_over(&body, limit), over);
        }
    }

    proptest::proptest! {
        /// Every answer the daemon encodes decodes to the same secrets (names valid and unique,
        /// values any text without NUL, up to the value limit).
        #[test]
        fn every_encoded_answer_decodes_to_the_same_secrets(
            sandbox in "[0-9a-f]{32}",
            repository in "[a-z0-9][a-z0-9._-]{0,20}/[a-z0-9._-]{1,20}",
            secrets in proptest::collection::btree_map(
                "[A-Z_][A-Z0-9_]{0,40}",
                proptest::string::string_regex("[^\\x00]{0,200}").unwrap(),
                0..40,
            ),
        ) {
            let secrets: Vec<(String, String)> = secrets
                .into_iter()
                .filter(|(n, _)| normalize_name(n, false).as_deref() == Ok(n.as_str()))
                .collect();
            let refs: Vec<WireSecretRef> = secrets
                .iter()
                .map(|(name, value)| WireSecretRef { name, value })
                .collect();
            let body = encode_answer(&sandbox, &repository, &refs);
            proptest::prop_assert_eq!(encoded_answer_len(&sandbox, &repository, &refs), body.len());
            let got = decode_answer(&body).unwrap();
            let got: Vec<(String, String)> = got
                .iter()
                .map(|s| (s.name.clone(), s.value.expose_secret().to_owned()))
                .collect();
            proptest::prop_assert_eq!(got, secrets);
        }
    }
}
