//! Signal decisions: names and numbers, which signals the init blocks, `-r` rewrites, where a
//! forwarded signal goes, and how `docker stop` ends an interactive shell. Pure functions only;
//! the syscalls are in [`super::sys`].
//!
//! # `docker stop` of an interactive shell
//!
//! Interactive shells ignore SIGTERM (`bash -i` and busybox `sh -i` both show bit 15 in
//! `SigIgn` of `/proc/<pid>/status`), so forwarding `docker stop`'s SIGTERM alone would leave the
//! container running until the 10 s SIGKILL. The init therefore does, on SIGTERM (after `-r`):
//!
//! 1. send SIGTERM to the child (or its group with `-g`), as always;
//! 2. only if the child's `SigIgn` shows SIGTERM ignored, also send SIGHUP then SIGCONT to the
//!    child's process group: exactly what a terminal hang-up does. Shells exit on SIGHUP and pass
//!    it on to their jobs (bash re-sends SIGHUP to every job; SIGCONT wakes stopped ones).
//!
//! A child that handles SIGTERM (or leaves it at the default) gets SIGTERM only, so a server's
//! graceful shutdown is untouched and its own exit code comes back. The check reads the
//! child's state at the moment of the signal: deterministic, no timer.

use std::fmt;

/// Signals the kernel raises synchronously for a fault. Sent from outside (`kill -SEGV 1`) they
/// are forwarded like any other: the init blocks them too. A real fault in the init is still
/// fatal: the kernel forces a fault signal that is blocked (it unblocks it, resets it to the
/// default action and, for PID 1, lifts the init's protection), and an `abort` that finds
/// SIGABRT blocked ends in a crash instruction, which is such a fault.
pub const SYNCHRONOUS: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
];
const NAMES: [(i32, &str); 31] = [
    (libc::SIGHUP, "HUP"),
    (libc::SIGINT, "INT"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGILL, "ILL"),
    (libc::SIGTRAP, "TRAP"),
    (libc::SIGABRT, "ABRT"),
    (libc::SIGBUS, "BUS"),
    (libc::SIGFPE, "FPE"),
    (libc::SIGKILL, "KILL"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGSEGV, "SEGV"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGTERM, "TERM"),
    (libc::SIGSTKFLT, "STKFLT"),
    (libc::SIGCHLD, "CHLD"),
    (libc::SIGCONT, "CONT"),
    (libc::SIGSTOP, "STOP"),
    (libc::SIGTSTP, "TSTP"),
    (libc::SIGTTIN, "TTIN"),
    (libc::SIGTTOU, "TTOU"),
    (libc::SIGURG, "URG"),
    (libc::SIGXCPU, "XCPU"),
    (libc::SIGXFSZ, "XFSZ"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGWINCH, "WINCH"),
    (libc::SIGIO, "IO"),
    (libc::SIGPWR, "PWR"),
    (libc::SIGSYS, "SYS"),
];

/// The highest signal number (`SIGRTMAX`, 64 on Linux).
pub fn max_signal() -> i32 {
    libc::SIGRTMAX()
}

/// A signal number shown as `SIGTERM`, `SIGRTMIN+3` or, for a number with no name, `signal 33`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigName(pub i32);

impl fmt::Display for SigName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if let Some((_, name)) = NAMES.iter().find(|(s, _)| *s == n) {
            return write!(f, "SIG{name}");
        }
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        if (min..=max).contains(&n) {
            if n == min {
                return f.write_str("SIGRTMIN");
            }
            return write!(f, "SIGRTMIN+{}", n - min);
        }
        write!(f, "signal {n}")
    }
}

/// Parses a signal: a number (`15`), a name with or without `SIG` in any case (`TERM`,
/// `sigterm`), or `RTMIN+n` / `RTMAX-n`. Returns `None` for anything else or out of range.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=max_signal()).contains(n));
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((n, _)) = NAMES.iter().find(|(_, name)| *name == bare) {
        return Some(*n);
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let n = base + sign * off;
        (min..=max).contains(&n).then_some(n)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(off) if !off.is_empty() => rt(min, off, 1),
            None if rest.is_empty() => Some(min),
            _ => None,
        };
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(off) if !off.is_empty() => rt(max, off, -1),
            None if rest.is_empty() => Some(max),
            _ => None,
        };
    }
    None
}

/// Whether the init blocks (and so waits for and forwards) this signal: every signal 1..=SIGRTMAX
/// but the two that cannot be caught, the synchronous ones included ([`SYNCHRONOUS`]).
pub fn is_forwardable(sig: i32) -> bool {
    (1..=max_signal()).contains(&sig) && sig != libc::SIGKILL && sig != libc::SIGSTOP
}

/// The terminal's stop signals: with job control the init stops itself after forwarding one.
pub fn is_job_control_stop(sig: i32) -> bool {
    matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// A dumb-init `-r s:r` rule: `to == 0` drops the signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub from: i32,
    pub to: i32,
}

/// Parses `s:r` (numbers or names; `r` may be `0` to drop).
pub fn parse_rewrite(s: &str) -> Result<Rewrite, String> {
    let (from, to) = s
        .split_once(':')
        .ok_or_else(|| format!("rewrite {s:?} is not of the form s:r"))?;
    let from =
        parse_signal(from).ok_or_else(|| format!("rewrite {s:?}: {from:?} is not a signal"))?;
    let to = if to.trim() == "0" {
        0
    } else {
        parse_signal(to).ok_or_else(|| format!("rewrite {s:?}: {to:?} is not a signal or 0"))?
    };
    Ok(Rewrite { from, to })
}

/// Applies `-r` rules: the last rule for a signal wins (later flags override earlier ones);
/// `None` means the signal is dropped.
pub fn rewrite(sig: i32, rules: &[Rewrite]) -> Option<i32> {
    match rules.iter().rev().find(|r| r.from == sig) {
        Some(r) if r.to == 0 => None,
        Some(r) => Some(r.to),
        None => Some(sig),
    }
}

/// Who receives a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The child process only.
    Child,
    /// The child's process group (the child leads it: pgid == child pid).
    Group,
}

/// One `kill` the supervisor performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub target: Target,
    pub sig: i32,
}

/// Where a (rewritten) signal goes. `group` is `-g`; `child_ignores_term` is what the child's
/// `SigIgn` says about SIGTERM, only consulted for SIGTERM (see the module doc).
pub fn deliveries(sig: i32, group: bool, child_ignores_term: bool) -> Vec<Delivery> {
    let target = if group { Target::Group } else { Target::Child };
    let mut out = vec![Delivery { target, sig }];
    if sig == libc::SIGTERM && child_ignores_term {
        out.push(Delivery {
            target: Target::Group,
            sig: libc::SIGHUP,
        });
        out.push(Delivery {
            target: Target::Group,
            sig: libc::SIGCONT,
        });
    }
    out
}

/// Whether the `SigIgn:` mask in a `/proc/<pid>/status` text has `sig` set. `None` when the
/// line is missing or unreadable (then the caller treats the signal as not ignored).
pub fn ignored_in_status(status: &str, sig: i32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    if !(1..=64).contains(&sig) {
        return Some(false);
    }
    Some(mask & (1u64 << (sig - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_signal() {
        for n in 1..=max_signal() {
            let shown = SigName(n).to_string();
            if shown.starts_with("signal ") {
                // glibc reserves 32 and 33 below SIGRTMIN.
                assert!(n < libc::SIGRTMIN(), "{n}");
                continue;
            }
            assert_eq!(parse_signal(&shown), Some(n), "{shown}");
            assert_eq!(parse_signal(&n.to_string()), Some(n));
        }
    }

    #[test]
    fn parse_signal_forms() {
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("SigHup"), Some(libc::SIGHUP));
        assert_eq!(parse_signal(" 9 "), Some(9));
        assert_eq!(parse_signal("RTMIN"), Some(libc::SIGRTMIN()));
        assert_eq!(parse_signal("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("RTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_signal("rtmax"), Some(libc::SIGRTMAX()));
        for bad in [
            "",
            "0",
            "65",
            "-1",
            "+5",
            "TERMS",
            "SIG",
            "RTMIN+",
            "RTMIN-1",
            "RTMAX+1",
            "RTMIN+99",
            "1.5",
            "99999999999",
        ] {
            assert_eq!(parse_signal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sig_name_display() {
        assert_eq!(SigName(15).to_string(), "SIGTERM");
        assert_eq!(SigName(libc::SIGRTMIN()).to_string(), "SIGRTMIN");
        assert_eq!(SigName(libc::SIGRTMIN() + 3).to_string(), "SIGRTMIN+3");
        assert_eq!(SigName(0).to_string(), "signal 0");
        assert_eq!(SigName(99).to_string(), "signal 99");
    }

    #[test]
    fn forwardable_set_is_all_catchable_but_synchronous() {
        let forwardable: Vec<i32> = (0..=70).filter(|&s| is_forwardable(s)).collect();
        for s in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGCHLD,
            libc::SIGCONT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGWINCH,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(forwardable.contains(&s), "{}", SigName(s));
        }
        for s in SYNCHRONOUS {
            assert!(forwardable.contains(&s), "{}", SigName(s));
        }
        for s in [0, libc::SIGKILL, libc::SIGSTOP, 65] {
            assert!(!forwardable.contains(&s), "{}", SigName(s));
        }
        assert_eq!(forwardable.len(), 64 - 2);
    }

    #[test]
    fn rewrite_rules() {
        let rules = [
            parse_rewrite("15:3").unwrap(),
            parse_rewrite("USR1:0").unwrap(),
            parse_rewrite("2:1").unwrap(),
            parse_rewrite("2:9").unwrap(),
        ];
        assert_eq!(rewrite(15, &rules), Some(3));
        assert_eq!(rewrite(libc::SIGUSR1, &rules), None);
        assert_eq!(rewrite(2, &rules), Some(9), "last rule wins");
        assert_eq!(rewrite(1, &rules), Some(1));
        assert_eq!(rewrite(1, &[]), Some(1));
    }

    #[test]
    fn rewrite_parse_errors() {
        assert!(parse_rewrite("15").unwrap_err().contains("s:r"));
        assert!(parse_rewrite("x:1").unwrap_err().contains("\"x\""));
        assert!(parse_rewrite("15:y").unwrap_err().contains("\"y\""));
        assert!(parse_rewrite("0:1").is_err(), "source 0 is not a signal");
        assert!(parse_rewrite("15:65").is_err());
    }

    #[test]
    fn deliveries_table() {
        use Target::*;
        let d = |target, sig| Delivery { target, sig };
        for sig in 1..=max_signal() {
            for group in [false, true] {
                for ignores in [false, true] {
                    let got = deliveries(sig, group, ignores);
                    let first = d(if group { Group } else { Child }, sig);
                    if sig == libc::SIGTERM && ignores {
                        assert_eq!(
                            got,
                            vec![first, d(Group, libc::SIGHUP), d(Group, libc::SIGCONT)]
                        );
                    } else {
                        assert_eq!(got, vec![first], "{sig} {group} {ignores}");
                    }
                }
            }
        }
    }

    #[test]
    fn sigign_parsing() {
        // Measured: `bash -i` and busybox `sh -i` on a pty.
        let bash = "Name:\tbash\nSigPnd:\t0000000000000000\nSigIgn:\t0000000000384004\nSigCgt:\t000000004b813efb\n";
        let busybox = "SigIgn:\t0000000000284004\n";
        let server = "SigIgn:\t0000000000000000\n";
        for s in [bash, busybox] {
            assert_eq!(ignored_in_status(s, libc::SIGTERM), Some(true));
            assert_eq!(ignored_in_status(s, libc::SIGQUIT), Some(true));
            assert_eq!(ignored_in_status(s, libc::SIGHUP), Some(false));
        }
        assert_eq!(ignored_in_status(server, libc::SIGTERM), Some(false));
        assert_eq!(
            ignored_in_status("SigIgn:\t8000000000000000\n", 64),
            Some(true)
        );
        assert_eq!(ignored_in_status("SigIgn:\t1\n", 1), Some(true));
        assert_eq!(ignored_in_status("SigIgn:\t1\n", 0), Some(false));
        assert_eq!(ignored_in_status("", libc::SIGTERM), None);
        assert_eq!(ignored_in_status("SigIgn:\tzz\n", libc::SIGTERM), None);
    }
}
