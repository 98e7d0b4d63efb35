//! How the init speaks when it stands in for a peer: tini's `[WARN  tini (pid)] ...` lines (warn
//! and fatal on stderr, info, debug and trace on stdout, by verbosity) and dumb-init's
//! `[dumb-init] ...` lines on stderr, so scripts that read them keep working. In its own mode the
//! init logs through `tracing` only and this module prints nothing. Only pids, signal numbers,
//! exit codes and the command's file name are ever passed here.

use std::fmt::Arguments;
use std::io::Write;

/// Whose interface the init presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Voice {
    /// `sandbox-init`: `tracing` lines only.
    #[default]
    Ours,
    /// `tini`: `verbosity` as tini counts it (1 = warnings, the default; 2 info; 3 debug; 4 trace).
    Tini { verbosity: u8 },
    /// `dumb-init`: `debug` is `-v` (or `DUMB_INIT_DEBUG=1`).
    DumbInit { debug: bool },
}

/// tini's levels, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Fatal,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Voice {
    /// A tini line at `level`, as tini `pid` (tini prints an exec failure from its child).
    pub fn tini_as(self, pid: u32, level: Level, msg: Arguments) {
        let Voice::Tini { verbosity } = self else {
            return;
        };
        if level > Level::Fatal && u8::try_from(level as usize).unwrap_or(u8::MAX) > verbosity {
            return;
        }
        let label = ["FATAL", "WARN ", "INFO ", "DEBUG", "TRACE"][level as usize];
        let line = format!("[{label} tini ({pid})] {msg}\n");
        if level <= Level::Warn {
            let _ = std::io::stderr().write_all(line.as_bytes());
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }

    /// A tini line at `level` from the init itself.
    pub fn tini(self, level: Level, msg: Arguments) {
        self.tini_as(std::process::id(), level, msg);
    }

    /// A dumb-init debug line (`-v`): `[dumb-init] msg`.
    pub fn dumb_debug(self, msg: Arguments) {
        if self == (Voice::DumbInit { debug: true }) {
            self.dumb_error(msg);
        }
    }

    /// A dumb-init line printed whatever the verbosity (its errors).
    pub fn dumb_error(self, msg: Arguments) {
        if let Voice::DumbInit { .. } = self {
            let _ = std::io::stderr().write_all(format!("[dumb-init] {msg}\n").as_bytes());
        }
    }

    /// Whether `tracing` carries the init's own lines (the peers' voices replace them).
    pub fn is_ours(self) -> bool {
        self == Voice::Ours
    }
}

/// tini's warning when it is neither PID 1 nor a child subreaper.
pub const TINI_REAPER_WARNING: &str = "Tini is not running as PID 1 and isn't registered as a \
child subreaper.\nZombie processes will not be re-parented to Tini, so zombie reaping won't \
work.\nTo fix the problem, use the -s option or set the environment variable TINI_SUBREAPER to \
register Tini as a child subreaper, or run Tini as PID 1.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_like_tini() {
        assert!(Level::Fatal < Level::Warn && Level::Warn < Level::Info);
        assert!(Level::Info < Level::Debug && Level::Debug < Level::Trace);
        assert_eq!(Level::Trace as usize, 4);
        assert!(TINI_REAPER_WARNING.contains("zombie reaping won't work"));
        assert!(Voice::Ours.is_ours() && !Voice::DumbInit { debug: false }.is_ours());
    }
}
