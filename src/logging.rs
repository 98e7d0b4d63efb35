//! Installs the tracing subscriber on stderr for both binaries, and owns the binaries' other
//! writes to stderr and stdout: none of them may panic when the stream is closed or full (std's
//! `eprintln!` and `println!` do, and under `panic=abort` that is exit 134 instead of the
//! binary's own code). It never sees a secret value: callers log names only.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::level_filters::LevelFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// Parses a level name (`error`, `warn`, `info`, `debug`, `trace`, `off`); `None` when unknown.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

/// Reads the level from the environment variable `var`, falling back to `default`.
pub fn level_from_env(var: &str, default: LevelFilter) -> LevelFilter {
    std::env::var(var)
        .ok()
        .and_then(|v| parse_level(&v))
        .unwrap_or(default)
}

/// Installs the global subscriber writing to stderr. Safe to call once; later calls are ignored.
pub fn install(level: LevelFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false)
        // Its default reports a failed write with `eprintln!`, which panics on the same failed
        // stderr: a log line that cannot be written is dropped instead.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Writes to stderr, ignoring a failure: there is nowhere left to report it, and the caller's
/// exit code must stand.
pub fn to_stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// Set when a write to stdout failed: [`stdout_failed`] turns it into the binary's exit code.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes to stdout without panicking. A failure is returned, and remembered for
/// [`stdout_failed`] (for callers inside closures that cannot return it).
pub fn to_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.flush());
    if written.is_err() {
        STDOUT_FAILED.store(true, Ordering::Relaxed);
    }
    written
}

/// Whether a write through [`to_stdout`] has failed: the command's output is incomplete, so it
/// must not exit 0.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_case_insensitively_and_reject_unknown() {
        assert_eq!(parse_level("TRACE"), Some(LevelFilter::TRACE));
        assert_eq!(parse_level(" warn "), Some(LevelFilter::WARN));
        assert_eq!(parse_level("off"), Some(LevelFilter::OFF));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn log_format_names() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
    }
}
