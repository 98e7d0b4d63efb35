//! The audit trail: one tracing line per sandbox read and per admin change, naming sandbox,
//! repository, caller and secret names. Takes names only; it has no way to receive a value.
//!
//! Reads are what a sandbox controls, so their lines are bounded: the name list is written when
//! it differs from the one last written for that sandbox (otherwise its count and digest), each
//! sandbox gets a bucket of [`READ_LINE_BURST`] lines refilled at [`READ_LINES_PER_SEC`], and
//! the lines a full bucket drops are counted and said in the sandbox's next line.
//!
//! Every line written is also appended, as one JSON object, to the daemon's audit file
//! (`<state>/audit.jsonl`, 0600, [`install_file`]) which `sandbox-secrets audit` queries. The
//! file is bounded: past [`MAX_FILE_BYTES`] it is renamed `audit.jsonl.1` (replacing the older
//! one) and a new one started, so the trail holds at most twice that. It is not the store: a
//! lost or full audit file never fails a read or a change (the failure is logged once).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The audit file's name in the state directory.
pub const FILE_NAME: &str = "audit.jsonl";
/// The rotated file's name (the previous [`FILE_NAME`]).
pub const OLD_FILE_NAME: &str = "audit.jsonl.1";
/// Size past which the audit file is rotated.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// One line of the audit file. Names only: there is no field a value could go in.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339 UTC.
    pub time: String,
    /// `read`, `read-refused`, `suppressed`, `admin` or `admin-refused`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// For a read: the names served, when they differ from the last line of that sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// For an admin change: `created`, `updated`, `access`, `deleted`, `sandbox-created`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// What the change or refusal was about, by names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

impl Record {
    fn new(event: &str) -> Self {
        Record {
            time: now_rfc3339(),
            event: event.to_owned(),
            ..Default::default()
        }
    }

    /// Whether this record concerns secret `name` (a read that served it, a change naming it).
    pub fn mentions_name(&self, name: &str) -> bool {
        let name = name.to_ascii_uppercase();
        self.names.as_ref().is_some_and(|n| n.contains(&name))
            || self
                .what
                .as_deref()
                .is_some_and(|w| w.split([' ', ',', ':']).any(|word| word == name))
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The open audit file and its size.
struct Sink {
    dir: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    failed: bool,
}

impl Sink {
    fn open(&mut self) -> std::io::Result<&mut std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.dir.join(FILE_NAME))?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size + line.len() as u64 > MAX_FILE_BYTES && self.size > 0 {
            self.file = None;
            std::fs::rename(self.dir.join(FILE_NAME), self.dir.join(OLD_FILE_NAME))?;
        }
        let f = self.open()?;
        f.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

fn sink() -> &'static Mutex<Option<Sink>> {
    static SINK: OnceLock<Mutex<Option<Sink>>> = OnceLock::new();
    SINK.get_or_init(|| Mutex::new(None))
}

/// Makes every audit line also go to `<state_dir>/audit.jsonl` (opened at the first line, so
/// after the daemon has checked and created its state directory).
pub fn install_file(state_dir: &Path) {
    *sink().lock().unwrap_or_else(|e| e.into_inner()) = Some(Sink {
        dir: state_dir.to_owned(),
        file: None,
        size: 0,
        failed: false,
    });
}

/// Appends `record` to the audit file, if one is installed. A failure is logged once (until a
/// write succeeds again), never passed on.
fn record(record: Record) {
    let mut guard = sink().lock().unwrap_or_else(|e| e.into_inner());
    let Some(sink) = guard.as_mut() else {
        return;
    };
    let Ok(mut line) = serde_json::to_vec(&record) else {
        return;
    };
    line.push(b'\n');
    match sink.append(&line) {
        Ok(()) => sink.failed = false,
        Err(e) => {
            sink.file = None;
            if !std::mem::replace(&mut sink.failed, true) {
                tracing::error!(error = %e, dir = %sink.dir.display(), "cannot write the audit file; audit lines go to the log only");
            }
        }
    }
}

/// The records of the audit files in `state_dir`, oldest first (the rotated file, then the
/// current one). A line that is not a record (a torn last line) is skipped.
pub fn read_records(state_dir: &Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut found = false;
    for name in [OLD_FILE_NAME, FILE_NAME] {
        let text = match std::fs::read_to_string(state_dir.join(name)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found = true;
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    if !found {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {FILE_NAME} in {}", state_dir.display()),
        ));
    }
    Ok(out)
}

/// Read lines a sandbox may write at once.
pub const READ_LINE_BURST: f64 = 10.0;
/// Read lines a sandbox may write per second, sustained.
pub const READ_LINES_PER_SEC: f64 = 1.0;
/// Sandboxes whose read state is kept; past this the state is dropped (name lists are then
/// written again), so the limiter's memory is bounded whatever the number of sandboxes.
const TRACKED_SANDBOXES: usize = 65_536;

/// What the limiter remembers of one sandbox.
struct ReadState {
    tokens: f64,
    at: Instant,
    suppressed: u64,
    names_logged: Option<u64>,
}

/// The decision for one read line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Write it: with the names when they differ from the last written, and the count of lines
    /// dropped since the last one written.
    Write {
        names: bool,
        suppressed: u64,
    },
    Drop,
}

/// Per-sandbox buckets and last written name digests.
#[derive(Default)]
struct Limiter {
    map: HashMap<Box<str>, ReadState>,
}

impl Limiter {
    fn decide(&mut self, sandbox: &str, digest: Option<u64>, now: Instant) -> Line {
        if self.map.len() >= TRACKED_SANDBOXES && !self.map.contains_key(sandbox) {
            self.map.clear();
        }
        let st = self.map.entry(sandbox.into()).or_insert(ReadState {
            tokens: READ_LINE_BURST,
            at: now,
            suppressed: 0,
            names_logged: None,
        });
        let refill = now.saturating_duration_since(st.at).as_secs_f64() * READ_LINES_PER_SEC;
        st.tokens = (st.tokens + refill).min(READ_LINE_BURST);
        st.at = now;
        if st.tokens < 1.0 {
            st.suppressed += 1;
            return Line::Drop;
        }
        st.tokens -= 1.0;
        let names = digest.is_some() && st.names_logged != digest;
        if digest.is_some() {
            st.names_logged = digest;
        }
        Line::Write {
            names,
            suppressed: std::mem::take(&mut st.suppressed),
        }
    }
}

fn limiter() -> std::sync::MutexGuard<'static, Limiter> {
    static LIMITER: OnceLock<Mutex<Limiter>> = OnceLock::new();
    LIMITER
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// FNV-1a of the name list: a short stable digest to tell lists apart in the log.
fn digest(names: &str) -> u64 {
    names.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Says how many of a sandbox's lines the limiter dropped, before its next line.
fn say_suppressed(sandbox: &str, suppressed: u64) {
    if suppressed > 0 {
        record(Record {
            sandbox: Some(sandbox.to_owned()),
            count: Some(suppressed as usize),
            ..Record::new("suppressed")
        });
        tracing::warn!(
            audit = "suppressed",
            sandbox,
            suppressed,
            "audit lines of this sandbox were suppressed by the rate limit"
        );
    }
}

/// A sandbox read its secrets; `names` is the comma-separated list of the `count` names served.
pub fn secrets_read(sandbox: &str, repository: &str, count: usize, names: &str) {
    let d = digest(names);
    let Line::Write {
        names: with_names,
        suppressed,
    } = limiter().decide(sandbox, Some(d), Instant::now())
    else {
        return;
    };
    say_suppressed(sandbox, suppressed);
    record(Record {
        sandbox: Some(sandbox.to_owned()),
        repository: Some(repository.to_owned()),
        count: Some(count),
        names: with_names.then(|| {
            names
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        ..Record::new("read")
    });
    let digest = format!("{d:016x}");
    if with_names {
        tracing::info!(
            audit = "read",
            sandbox,
            repository,
            count,
            digest,
            names,
            "sandbox read its secrets"
        );
    } else {
        tracing::info!(
            audit = "read",
            sandbox,
            repository,
            count,
            digest,
            "sandbox read its secrets (the names last logged for it)"
        );
    }
}

/// A sandbox read was refused; `reason` names a secret at most, never a value.
pub fn read_refused(sandbox: &str, reason: &dyn fmt::Display) {
    let Line::Write { suppressed, .. } = limiter().decide(sandbox, None, Instant::now()) else {
        return;
    };
    say_suppressed(sandbox, suppressed);
    record(Record {
        sandbox: Some(sandbox.to_owned()),
        what: Some(reason.to_string()),
        ..Record::new("read-refused")
    });
    tracing::error!(audit = "read-refused", sandbox, %reason, "sandbox read refused");
}

/// An admin change was made by `uid`; `what` describes it by names only.
pub fn admin_change(uid: u32, action: &str, what: &str) {
    record(Record {
        uid: Some(uid),
        action: Some(action.to_owned()),
        what: Some(what.to_owned()),
        ..Record::new("admin")
    });
    tracing::info!(audit = "admin", uid, action, what, "admin change");
}

/// A change made through the platform API, by the token of `token` (its id, never the token).
pub fn api_change(token: &str, action: &str, what: &str) {
    tracing::info!(audit = "api", token, action, what, "api change");
}

/// A platform API request whose token did not authenticate (never the token itself).
pub fn api_refused(peer: &str, reason: &str) {
    tracing::warn!(audit = "api-refused", peer, reason, "api request refused");
}

/// An admin connection was refused for its uid.
pub fn admin_refused(uid: u32) {
    record(Record {
        uid: Some(uid),
        ..Record::new("admin-refused")
    });
    tracing::warn!(audit = "admin-refused", uid, "admin connection refused");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_audit_file_rotates_past_its_bound_and_reads_back_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink {
            dir: dir.path().to_owned(),
            file: None,
            size: 0,
            failed: false,
        };
        let line = |n: usize| {
            let mut l = serde_json::to_vec(&Record {
                count: Some(n),
                ..Record::new("read")
            })
            .unwrap();
            l.push(b'\n');
            l
        };
        let per = line(0).len() as u64;
        let fits = (MAX_FILE_BYTES / per) as usize;
        for n in 0..fits + 10 {
            sink.append(&line(n)).unwrap();
        }
        let cur = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        let old = std::fs::metadata(dir.path().join(OLD_FILE_NAME))
            .unwrap()
            .len();
        assert!(
            cur <= MAX_FILE_BYTES && old <= MAX_FILE_BYTES,
            "{cur} {old}"
        );
        let records = read_records(dir.path()).unwrap();
        assert_eq!(records.len(), fits + 10);
        assert!(records.windows(2).all(|w| w[0].count < w[1].count));
        // Another rotation drops the oldest file: the trail stays bounded.
        for n in 0..fits {
            sink.append(&line(n)).unwrap();
        }
        let total: u64 = [FILE_NAME, OLD_FILE_NAME]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        assert!(total <= 2 * MAX_FILE_BYTES);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_record_mentions_a_name_by_whole_word_only() {
        let r = Record {
            what: Some("user secret API_TOKEN of mona".into()),
            ..Record::new("admin")
        };
        assert!(r.mentions_name("api_token"));
        assert!(!r.mentions_name("API"));
        let r = Record {
            names: Some(vec!["A".into(), "B_C".into()]),
            ..Record::new("read")
        };
        assert!(r.mentions_name("b_c"));
        assert!(!r.mentions_name("B"));
    }

    #[test]
    fn names_are_written_when_they_change_and_a_flood_is_counted_then_said() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let a = Some(digest("A,B"));
        let b = Some(digest("A,C"));
        assert_ne!(a, b);
        // The first line of a sandbox carries its names; the same list again does not.
        assert_eq!(
            l.decide("s1", a, t0),
            Line::Write {
                names: true,
                suppressed: 0
            }
        );
        assert_eq!(
            l.decide("s1", a, t0),
            Line::Write {
                names: false,
                suppressed: 0
            }
        );
        // A flood at one instant: the burst is written, the rest dropped and counted.
        let mut written = 2;
        let mut dropped = 0;
        for _ in 0..1000 {
            match l.decide("s1", a, t0) {
                Line::Write { .. } => written += 1,
                Line::Drop => dropped += 1,
            }
        }
        assert_eq!(written, READ_LINE_BURST as u64);
        assert_eq!(dropped, 1002 - written);
        // Another sandbox is not affected.
        assert!(matches!(
            l.decide("s2", a, t0),
            Line::Write { names: true, .. }
        ));
        // A second later one line is allowed again, saying what was dropped; a changed list is
        // written with its names.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.decide("s1", b, t1),
            Line::Write {
                names: true,
                suppressed: dropped
            }
        );
        assert_eq!(l.decide("s1", b, t1), Line::Drop);
        // A list that changed while its lines were dropped is written once a line is allowed.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(l.decide("s1", a, t1), Line::Drop);
        assert_eq!(
            l.decide("s1", a, t2),
            Line::Write {
                names: true,
                suppressed: 2
            }
        );
        // Refusals share the bucket and never carry names.
        let t3 = t2 + Duration::from_secs(100);
        assert_eq!(
            l.decide("s1", None, t3),
            Line::Write {
                names: false,
                suppressed: 0
            }
        );
    }
}
