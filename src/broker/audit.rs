//! The audit trail: one tracing line per sandbox read and per admin change, naming sandbox,
//! repository, caller and secret names. Takes names only; it has no way to receive a value.
//!
//! Reads are what a sandbox controls, so their lines are bounded: the name list is written when
//! it differs from the one last written for that sandbox (otherwise its count and digest), each
//! sandbox gets a bucket of [`READ_LINE_BURST`] lines refilled at [`READ_LINES_PER_SEC`], and
//! the lines a full bucket drops are counted and said in the sandbox's next line.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

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
    tracing::error!(audit = "read-refused", sandbox, %reason, "sandbox read refused");
}

/// An admin change was made by `uid`; `what` describes it by names only.
pub fn admin_change(uid: u32, action: &str, what: &str) {
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
    tracing::warn!(audit = "admin-refused", uid, "admin connection refused");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
