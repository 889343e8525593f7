//! Run bookkeeping shared by the `quantlens materialize` worker and the HTTP
//! trigger daemon: run ids ([`RunId`]), the run-record files a worker leaves
//! behind ([`RunRecord`], [`RunFiles`]), the layout of the state directory
//! ([`StateDir`]), the one-run-at-a-time lock ([`RunLock`]), the worker's
//! exit codes ([`exit`]), the health verdict ([`health`]) and the format of
//! the credential files systemd hands to units ([`credentials`]). Everything
//! is plain files so the daemon can answer "what ran, what is running, did it
//! work" without talking to the worker, and the crate stays tiny because the
//! daemon links it.
//!
//! ```text
//! STATE_DIR/run.lock                     flock'd by the running worker; holds its run id
//! STATE_DIR/runs/<run_id>/run.json       the run record, replaced atomically at each change
//! STATE_DIR/runs/<run_id>/events.ndjson  append-only event log, one JSON object per line
//! STATE_DIR/runs/<run_id>/worker.log     the worker's stdout and stderr
//! ```
//!
//! Errors name the path they are about; the underlying OS or JSON error is
//! their [`std::error::Error::source`], so print them with a chain-aware
//! formatter (`{:#}` under anyhow).

pub mod credentials;
pub mod exit;
pub mod health;
pub mod schedule;

mod error;
mod files;
mod id;
mod lock;
mod record;
mod state;

pub use crate::error::{chain, RunsError};
pub use crate::files::{replace_atomically, RunFiles};
pub use crate::id::RunId;
pub use crate::lock::{RunLock, LOCK_FD_ENV};
pub use crate::record::{AssetRun, AssetStatus, CheckResult, RunRecord, RunStatus};
pub use crate::state::{ScannedRun, StateDir, DEFAULT_RETENTION};

#[cfg(test)]
mod testutil;
