//! Exit codes of `quantlens materialize`. They are the worker's only channel
//! back to a parent that did not read the run record, so the trigger daemon
//! and shell scripts can tell "the run failed" from "you called it wrong" from
//! "another run is in progress, try later" (75 is `EX_TEMPFAIL` from
//! sysexits.h, which retry wrappers already understand).

/// The run finished and every selected asset succeeded or was fresh.
pub const SUCCEEDED: i32 = 0;
/// The run finished (or stopped) with at least one failure.
pub const FAILED: i32 = 1;
/// Bad command line or configuration; nothing was run.
pub const USAGE: i32 = 2;
/// Another run holds the state directory's lock; nothing was run.
pub const LOCKED: i32 = 75;
