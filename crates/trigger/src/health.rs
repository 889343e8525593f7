//! `GET /health` answers "is the pipeline producing data", not only "is the process up": 200
//! while the last successful run finished within `--max-age`, 503 when it is older or there has
//! never been one, so an uptime check catches a stalled pipeline as well as a dead daemon. It
//! also says whether a run is in progress, ours or the timer's or the CLI's (from the lock), and
//! reports the alert markers systemd's OnFailure= hook leaves in `STATE_DIR/alerts/` (a failed
//! timer run, backup or maintenance job): any marker makes the answer 503 until a later
//! successful run of that unit clears it. A state directory (or local DATA_ROOT) with less than
//! `--min-free-mb` free makes it 503 `disk_full`: the daemon itself keeps answering on a full
//! disk, but the next run could not write.
//!
//! Finding the last success means reading the run records (all of them: the runs crate orders
//! them by start time, about 4 ms for the default 200), and this daemon has one thread, so the
//! answer is cached for a few seconds and dropped as soon as one of our own runs starts or ends;
//! runs started elsewhere (the timer, the CLI) show within [`CACHE_TTL`]. However often an
//! uptime check or a dashboard polls, the state directory is scanned at most once per TTL.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use quantlens_runs::health::{
    judge, last_success, read_alerts, Bound, Disk, DiskCheck, Report, Running, ALERTS_DIR,
};
use quantlens_runs::RunLock;

use crate::supervise::Runner;

/// How long a look at the state directory is reused.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// What the state directory said, and when we looked.
#[derive(Clone)]
struct Observation {
    at: Instant,
    generation: u64,
    last_success: Result<Option<(String, DateTime<Utc>)>, String>,
    holder: Option<String>,
    alerts: Vec<serde_json::Value>,
    disks: Vec<Disk>,
}

/// The health check and its cache.
pub struct Health {
    bound: Bound,
    disks: DiskCheck,
    cache: Mutex<Option<Observation>>,
}

impl Health {
    pub fn new(bound: Bound, disks: DiskCheck) -> Health {
        Health {
            bound,
            disks,
            cache: Mutex::new(None),
        }
    }

    pub fn check(&self, runner: &Runner) -> (StatusCode, Report) {
        let seen = self.observe(runner);
        let running = match runner.active() {
            Some(id) => Some(Running {
                run_id: Some(id.to_string()),
            }),
            None => seen.holder.clone().map(|holder| Running {
                run_id: Some(holder).filter(|h| !h.is_empty()),
            }),
        };
        let report = judge(
            &seen.last_success,
            &self.bound,
            Utc::now(),
            running,
            &seen.alerts,
            &seen.disks,
        );
        let status = if report.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, report)
    }

    fn observe(&self, runner: &Runner) -> Observation {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = runner.generation();
        if let Some(seen) = cache.as_ref() {
            if seen.generation == generation && seen.at.elapsed() < CACHE_TTL {
                return seen.clone();
            }
        }
        let state = runner.state();
        let last_success = last_success(state);
        let holder = RunLock::holder(state).ok().flatten();
        let seen = Observation {
            at: Instant::now(),
            generation,
            last_success,
            holder,
            alerts: read_alerts(&state.root().join(ALERTS_DIR)),
            disks: self.disks.measure(state.root()),
        };
        *cache = Some(seen.clone());
        seen
    }
}
