//! `GET /health` answers "is the pipeline producing data", not only "is the process up": 200
//! while the last successful run finished within `--max-age`, 503 when it is older or there has
//! never been one, so an uptime check catches a stalled pipeline as well as a dead daemon. It
//! also says whether a run is in progress, ours or the timer's or the CLI's (from the lock), and
//! reports the alert markers systemd's OnFailure= hook leaves in `STATE_DIR/alerts/` (a failed
//! timer run, backup or maintenance job): any marker makes the answer 503 until a later
//! successful run of that unit clears it.
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
use quantlens_runs::RunLock;
use serde::Serialize;

use crate::error::chain;
use crate::supervise::Runner;

/// How long a look at the state directory is reused.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// The body of a health answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "ok", "stale", "no_success" or "error".
    pub status: &'static str,
    pub last_success: Option<LastSuccess>,
    pub max_age_seconds: u64,
    pub running: Option<Running>,
    /// The alert markers found, as the hook wrote them (`unit`, `result`, `failed_at`, ...).
    pub alerts: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastSuccess {
    pub run_id: String,
    pub finished_at: DateTime<Utc>,
    pub age_seconds: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Running {
    /// `None` when the lock holder did not write its id.
    pub run_id: Option<String>,
}

/// What the state directory said, and when we looked.
#[derive(Clone)]
struct Observation {
    at: Instant,
    generation: u64,
    last_success: Result<Option<(String, DateTime<Utc>)>, String>,
    holder: Option<String>,
    alerts: Vec<serde_json::Value>,
}

/// The health check and its cache.
pub struct Health {
    max_age: Duration,
    cache: Mutex<Option<Observation>>,
}

impl Health {
    pub fn new(max_age: Duration) -> Health {
        Health {
            max_age,
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
        judge(
            &seen.last_success,
            self.max_age,
            Utc::now(),
            running,
            &seen.alerts,
        )
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
        let last_success = state
            .last_success()
            .map(|found| {
                found.map(|record| {
                    let at = record.finished_at.unwrap_or(record.started_at);
                    (record.run_id.to_string(), at)
                })
            })
            .map_err(|err| chain(&err));
        let holder = RunLock::holder(state).ok().flatten();
        let seen = Observation {
            at: Instant::now(),
            generation,
            last_success,
            holder,
            alerts: read_alerts(&state.root().join(ALERTS_DIR)),
        };
        *cache = Some(seen.clone());
        seen
    }
}

/// Where the OnFailure= hook (`systemd/quantlens-alert`) leaves one `<unit>.json` per failed unit.
const ALERTS_DIR: &str = "alerts";

/// The markers in `dir`, oldest name first; names starting with `.` are the hook's temporary files.
/// A marker that is not valid JSON is still an alert, reported with its file name.
fn read_alerts(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<_> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            std::fs::read_to_string(dir.join(&name))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_else(|| serde_json::json!({"unit": name.trim_end_matches(".json")}))
        })
        .collect()
}

fn judge(
    last_success: &Result<Option<(String, DateTime<Utc>)>, String>,
    max_age: Duration,
    now: DateTime<Utc>,
    running: Option<Running>,
    alerts: &[serde_json::Value],
) -> (StatusCode, Report) {
    let max_age_seconds = max_age.as_secs();
    let report = |status, last_success, error| Report {
        status,
        last_success,
        max_age_seconds,
        running: running.clone(),
        alerts: alerts.to_vec(),
        error,
    };
    match last_success {
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            report(
                "error",
                None,
                Some(format!("cannot read the run records: {err}")),
            ),
        ),
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            report("no_success", None, Some("no run has succeeded yet".into())),
        ),
        Ok(Some((run_id, finished_at))) => {
            let age = now.signed_duration_since(*finished_at);
            let last = LastSuccess {
                run_id: run_id.clone(),
                finished_at: *finished_at,
                age_seconds: age.num_seconds(),
            };
            if age.to_std().is_ok_and(|age| age > max_age) {
                let error = format!(
                    "the last successful run finished {} s ago, more than the {max_age_seconds} s allowed",
                    age.num_seconds()
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    report("stale", Some(last), Some(error)),
                )
            } else if !alerts.is_empty() {
                let units: Vec<&str> = alerts.iter().filter_map(|a| a["unit"].as_str()).collect();
                let error = format!("failed unit(s) not yet recovered: {}", units.join(", "));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    report("alert", Some(last), Some(error)),
                )
            } else {
                (StatusCode::OK, report("ok", Some(last), None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_stale_never_and_unreadable() {
        let now = at("2026-11-29T12:00:00Z");
        let ok = Ok(Some(("r1".to_owned(), at("2026-11-29T06:00:00Z"))));
        let (code, report) = judge(&ok, DAY, now, None, &[]);
        assert_eq!((code, report.status), (StatusCode::OK, "ok"));
        assert_eq!(report.last_success.unwrap().age_seconds, 6 * 3600);

        let old = Ok(Some(("r1".to_owned(), at("2026-11-27T12:00:00Z"))));
        let (code, report) = judge(&old, DAY, now, None, &[]);
        assert_eq!(
            (code, report.status),
            (StatusCode::SERVICE_UNAVAILABLE, "stale")
        );
        assert!(report.error.unwrap().contains("172800 s ago"));

        let (code, report) = judge(&Ok(None), DAY, now, Some(Running { run_id: None }), &[]);
        assert_eq!(
            (code, report.status),
            (StatusCode::SERVICE_UNAVAILABLE, "no_success")
        );
        assert!(report.running.is_some());

        let (code, report) = judge(&Err("permission denied".into()), DAY, now, None, &[]);
        assert_eq!(
            (code, report.status),
            (StatusCode::SERVICE_UNAVAILABLE, "error")
        );
    }

    #[test]
    fn a_clock_behind_the_record_is_not_stale() {
        let now = at("2026-11-29T12:00:00Z");
        let future = Ok(Some(("r1".to_owned(), at("2026-11-29T12:00:05Z"))));
        assert_eq!(judge(&future, DAY, now, None, &[]).0, StatusCode::OK);
    }

    #[test]
    fn alert_markers_turn_a_fresh_pipeline_unhealthy() {
        let dir = crate::testutil::TempDir::new();
        let alerts = dir.path().join(ALERTS_DIR);
        assert!(read_alerts(&alerts).is_empty(), "no directory, no alerts");
        std::fs::create_dir_all(&alerts).unwrap();
        std::fs::write(
            alerts.join("quantlens-backup.service.json"),
            r#"{"unit":"quantlens-backup.service","result":"exit-code","failed_at":"2026-11-29T03:00:00Z"}"#,
        )
        .unwrap();
        std::fs::write(alerts.join(".quantlens-maintain.service.json.tmp"), "{").unwrap();
        std::fs::write(alerts.join("broken.json"), "not json").unwrap();
        let found = read_alerts(&alerts);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0]["unit"], "broken");
        assert_eq!(found[1]["result"], "exit-code");

        let now = at("2026-11-29T12:00:00Z");
        let ok = Ok(Some(("r1".to_owned(), at("2026-11-29T06:00:00Z"))));
        let (code, report) = judge(&ok, DAY, now, None, &found);
        assert_eq!(
            (code, report.status),
            (StatusCode::SERVICE_UNAVAILABLE, "alert")
        );
        assert!(report.error.unwrap().contains("quantlens-backup.service"));
        assert_eq!(report.alerts.len(), 2);
        assert!(report.last_success.is_some());
    }
}
