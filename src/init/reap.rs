//! Reaping: collects every zombie the init inherited (its own child's or an orphan's) and turns
//! the child's wait status into the init's exit code. Never exits and never signals anyone.

use super::signals::SigName;
use super::voice::{Level, Voice};
use crate::sys;
use nix::errno::Errno;

/// How a process ended, decoded from a raw `waitpid` status. Own type rather than nix's
/// `WaitStatus`, which cannot represent a death by a realtime signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(u8),
    Signaled { sig: i32, core: bool },
}

impl Ended {
    /// Decodes a raw status; `None` for stop/continue reports (never asked for here).
    pub fn from_raw(status: i32) -> Option<Ended> {
        if libc::WIFEXITED(status) {
            Some(Ended::Exited(libc::WEXITSTATUS(status) as u8))
        } else if libc::WIFSIGNALED(status) {
            Some(Ended::Signaled {
                sig: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exited with {c}"),
            Ended::Signaled { sig, core: false } => write!(f, "killed by {}", SigName(*sig)),
            Ended::Signaled { sig, core: true } => {
                write!(f, "killed by {} (core dumped)", SigName(*sig))
            }
        }
    }
}

/// The init's exit code for its child's end: the exit code, or 128 + signal (wrapping into a
/// byte like a shell's `$?`), then tini's `-e` remaps, which turn listed codes into 0.
pub fn exit_code(ended: Ended, remaps: &[u8]) -> u8 {
    let code = match ended {
        Ended::Exited(c) => c,
        Ended::Signaled { sig, .. } => (128 + sig).clamp(0, 255) as u8,
    };
    if remaps.contains(&code) {
        0
    } else {
        code
    }
}

/// Reaps every zombie that is ready, without blocking, until the kernel says there is none left
/// (0) or no child at all (ECHILD). Returns how the child `child` ended if it was among them.
/// Others are logged (at warn with `-w`, else debug), in the peer's words when the init stands
/// in for one. Errors are logged, never returned: the init must keep running.
pub fn reap_all(child: i32, warn_others: bool, voice: Voice) -> Option<Ended> {
    let mut child_end = None;
    loop {
        match sys::wait_any_nohang() {
            Ok(None) => {
                voice.tini(Level::Trace, format_args!("No child to reap"));
                return child_end;
            }
            Err(Errno::ECHILD) => {
                voice.tini(Level::Trace, format_args!("No child to wait"));
                return child_end;
            }
            Ok(Some((pid, raw))) => {
                let Some(ended) = Ended::from_raw(raw) else {
                    continue;
                };
                voice.tini(Level::Debug, format_args!("Reaped child with pid: '{pid}'"));
                match ended {
                    Ended::Exited(c) => voice.dumb_debug(format_args!(
                        "A child with PID {pid} exited with exit status {c}."
                    )),
                    Ended::Signaled { sig, .. } => voice.dumb_debug(format_args!(
                        "A child with PID {pid} was terminated by signal {sig}."
                    )),
                }
                if pid == child {
                    match ended {
                        Ended::Exited(c) => voice.tini(
                            Level::Info,
                            format_args!("Main child exited normally (with status '{c}')"),
                        ),
                        Ended::Signaled { sig, .. } => voice.tini(
                            Level::Info,
                            format_args!(
                                "Main child exited with signal (with signal '{}')",
                                SigName(sig)
                            ),
                        ),
                    }
                    tracing::info!(pid, "child {ended}");
                    child_end = Some(ended);
                } else if warn_others && !voice.is_ours() {
                    voice.tini(
                        Level::Warn,
                        format_args!("Reaped zombie process with pid={pid}"),
                    );
                } else if warn_others {
                    tracing::warn!(pid, "reaped zombie that is not the child ({ended})");
                } else {
                    tracing::debug!(pid, "reaped orphan ({ended})");
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("waitpid(-1, WNOHANG): {e}");
                return child_end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> i32 {
        (code & 0xff) << 8
    }
    fn signaled(sig: i32, core: bool) -> i32 {
        sig | if core { 0x80 } else { 0 }
    }

    #[test]
    fn decodes_raw_statuses() {
        for c in 0..=255 {
            assert_eq!(Ended::from_raw(exited(c)), Some(Ended::Exited(c as u8)));
        }
        for sig in 1..=64 {
            for core in [false, true] {
                assert_eq!(
                    Ended::from_raw(signaled(sig, core)),
                    Some(Ended::Signaled { sig, core })
                );
            }
        }
        // Stopped (0x7f) and continued (0xffff) are not ends.
        assert_eq!(Ended::from_raw((libc::SIGTSTP << 8) | 0x7f), None);
        assert_eq!(Ended::from_raw(0xffff), None);
    }

    #[test]
    fn exit_codes_without_remap() {
        for c in 0..=255u8 {
            assert_eq!(exit_code(Ended::Exited(c), &[]), c);
        }
        for (sig, want) in [(1, 129), (9, 137), (11, 139), (15, 143), (64, 192)] {
            for core in [false, true] {
                assert_eq!(exit_code(Ended::Signaled { sig, core }, &[]), want);
            }
        }
    }

    #[test]
    fn remaps_apply_to_exit_codes_and_signal_codes() {
        let remaps = [3, 143];
        assert_eq!(exit_code(Ended::Exited(3), &remaps), 0);
        assert_eq!(exit_code(Ended::Exited(4), &remaps), 4);
        assert_eq!(exit_code(Ended::Exited(0), &remaps), 0);
        assert_eq!(
            exit_code(
                Ended::Signaled {
                    sig: 15,
                    core: false
                },
                &remaps
            ),
            0
        );
        assert_eq!(
            exit_code(
                Ended::Signaled {
                    sig: 9,
                    core: false
                },
                &remaps
            ),
            137
        );
        for c in 0..=255u8 {
            assert_eq!(exit_code(Ended::Exited(c), &[c]), 0);
        }
    }

    #[test]
    fn display_names_the_end() {
        assert_eq!(Ended::Exited(3).to_string(), "exited with 3");
        assert_eq!(
            Ended::Signaled {
                sig: 11,
                core: true
            }
            .to_string(),
            "killed by SIGSEGV (core dumped)"
        );
    }
}
