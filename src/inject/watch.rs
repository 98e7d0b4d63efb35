//! The `--on-change` watch: one thread that keeps a long-poll (`If-None-Match` + `Prefer:
//! wait, on-change`, [`fetch::watch`]) open on the sandbox socket, places every changed answer (files and
//! registry credentials current at once) and hands the new variables to the supervisor through a
//! one-slot mailbox, then calls the supervisor's wake function. While the broker is away it
//! reconnects with capped exponential backoff and full jitter; the command keeps its last good
//! values meanwhile, and the change made while the broker was down arrives with the first answer
//! after it is back (the tag it holds differs). No timer of its own: while connected, the only
//! wakeup is the end of each wait ([`WAIT`]). It never forks or signals (the wake function does)
//! and logs names, never values.

use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fetch;
use super::{chain, info, place_secrets, warn, Files, Options, Prepared, Target};
pub use crate::protocol::Reaction;

/// How long one watch asks the broker to hold it (`Prefer: wait=300`): one wakeup per wait
/// while nothing changes.
pub const WAIT: Duration = Duration::from_secs(300);
/// Added to [`WAIT`] for the exchange's deadline: a broker that holds longer is given up on
/// and the watch reconnects.
pub const SLACK: Duration = Duration::from_secs(15);
/// The first retry waits up to this long after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Retries are never further apart than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The delay before retry number `failures` (1 for the first): `min(cap, base * 2^(n-1))`,
/// scaled by `jitter` (0.0 to 1.0 as a fraction in thousandths, so 500..=1000 keeps at least
/// half). Pure.
pub fn backoff(failures: u32, jitter_permille: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let full = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    let permille = 500 + jitter_permille.min(1000) / 2;
    full * permille / 1000
}

/// A random permille (0..1000) from the system's random source; 500 if it fails.
fn jitter() -> u32 {
    let mut b = [0u8; 4];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u32::from_le_bytes(b) % 1001,
        Err(_) => 500,
    }
}

/// The supervisor's side of the watch: the latest placed change, taken once.
pub struct Watch {
    mailbox: Arc<Mutex<Option<Prepared>>>,
}

impl Watch {
    /// The latest change not yet taken (a burst of changes leaves only the last).
    pub fn take(&self) -> Option<Prepared> {
        self.mailbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Starts the watch thread for the answer tagged `holds`. Each change is placed for `target`
/// against `inherited` (as at start) and then `wake` is called. `reaction` (what the
/// supervisor does on a change) is declared to the broker with every watch request.
pub fn start(
    opts: Options,
    files: Files,
    target: Target,
    inherited: Vec<(OsString, OsString)>,
    holds: String,
    reaction: Reaction,
    wake: fn(),
) -> std::io::Result<Watch> {
    let mailbox = Arc::new(Mutex::new(None));
    let theirs = Arc::clone(&mailbox);
    std::thread::Builder::new()
        .name("watch".into())
        // As deep as a spawned thread's default: the thread parses the target's config.json,
        // whose nesting serde_json allows to 128 levels. Virtual size; only touched pages count.
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let place = |secrets| place_secrets(&opts, &files, &target, &inherited, secrets);
            watch_loop(&opts.socket, &place, holds, reaction, &theirs, wake)
        })?;
    Ok(Watch { mailbox })
}

/// How a changed answer is placed (files written, variables returned).
type Place<'a> = dyn Fn(Vec<fetch::Secret>) -> Result<Prepared, super::Error> + 'a;

fn watch_loop(
    socket: &Path,
    place: &Place<'_>,
    mut holds: String,
    reaction: Reaction,
    mailbox: &Mutex<Option<Prepared>>,
    wake: fn(),
) {
    info(format_args!(
        "watching {} for changes of the secrets",
        socket.display()
    ));
    let mut failures: u32 = 0;
    loop {
        let failed = match fetch::watch(socket, &holds, WAIT, SLACK, reaction) {
            Ok(None) => None,
            Ok(Some(f)) => match f.etag {
                Some(tag) if tag != holds => {
                    changed(place, f.secrets, mailbox, wake);
                    holds = tag;
                    None
                }
                // The same tag (a broker that ignores `If-None-Match`) or none at all: nothing
                // to act on, and no reason to ask again at once.
                _ => Some("the broker answered without waiting or without a new ETag".to_owned()),
            },
            Err(e) => Some(chain(&e)),
        };
        match failed {
            None => {
                if failures > 0 {
                    info(format_args!("watch of {} reconnected", socket.display()));
                }
                failures = 0;
            }
            Some(why) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures, jitter());
                if failures == 1 {
                    warn(format_args!(
                        "watch of {}: {why}; the command keeps its values, retrying with \
                         backoff (at most {}ms apart)",
                        socket.display(),
                        BACKOFF_CAP.as_millis()
                    ));
                } else {
                    tracing::debug!(
                        failures,
                        delay_ms = delay.as_millis() as u64,
                        "watch: {why}"
                    );
                }
                std::thread::sleep(delay);
            }
        }
    }
}

/// Places a changed answer and reports it; a change that cannot be placed is said and the
/// command keeps its values.
fn changed(
    place: &Place<'_>,
    secrets: Vec<fetch::Secret>,
    mailbox: &Mutex<Option<Prepared>>,
    wake: fn(),
) {
    let names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
    match place(secrets) {
        Ok(prepared) => {
            info(format_args!(
                "secrets changed; now {}: {}",
                names.len(),
                names.join(" ")
            ));
            *mailbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(prepared);
            wake();
        }
        Err(e) => warn(format_args!(
            "the secrets changed but cannot be placed: {}; the command keeps its values",
            chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_keeps_at_least_half() {
        assert_eq!(backoff(1, 1000), BACKOFF_BASE);
        assert_eq!(backoff(2, 1000), BACKOFF_BASE * 2);
        assert_eq!(backoff(1, 0), BACKOFF_BASE / 2);
        assert_eq!(backoff(30, 1000), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX, 1000), BACKOFF_CAP);
        for n in 1..40 {
            for j in [0, 1, 499, 500, 999, 1000, 5000] {
                let d = backoff(n, j);
                assert!(d <= BACKOFF_CAP && d >= BACKOFF_BASE / 2, "{n} {j} {d:?}");
                assert!(backoff(n + 1, j) >= d, "{n} {j}");
            }
        }
    }
}
