//! The one fuzz runner of the integration tests (`broker_fuzz`, `fuzz_init`): proptest batches
//! on stable Rust. Under `cargo test` each target runs one batch (`PROPTEST_CASES`, default
//! 256); `scripts/fuzz.sh SECONDS` sets `FUZZ_SECONDS` to repeat fresh batches for that long.
//! A failure panics with the shrunk input, and its seed is kept in
//! `tests/<file>.proptest-regressions`, replayed on every run.

use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Runs `test` over `strategy` for target `target` of the test file `source` (`file!()`), then
/// prints `fuzz: <target>: <n> executions in <b> batches, <s>s` and returns the executions.
pub fn run<S>(
    target: &str,
    source: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(budget);
    let executions = Cell::new(0u64);
    let mut batches = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            source_file: Some(source),
            ..Config::default()
        });
        let result = runner.run(&strategy, |v| {
            executions.set(executions.get() + 1);
            test(v)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                panic!("fuzz target {target} failed: {why}\nminimal failing input: {input:#?}")
            }
            Err(TestError::Abort(why)) => panic!("fuzz target {target} aborted: {why}"),
        }
        batches += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    println!(
        "fuzz: {target}: {} executions in {batches} batches, {:.1}s",
        executions.get(),
        started.elapsed().as_secs_f64()
    );
    executions.get()
}
