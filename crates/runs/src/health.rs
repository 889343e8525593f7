//! Whether the pipeline is producing data, judged from the state directory: healthy while the
//! last successful run finished within the freshness bound (`max_age`) and no alert marker is
//! waiting, and why not otherwise. The trigger daemon answers `GET /health` with it (200 or 503)
//! and the static report shows the same verdict, so both say the same thing of the same files.
//! Alert markers are what systemd's OnFailure= hook (`systemd/quantlens-alert`) leaves in
//! `STATE_DIR/alerts/` for a failed timer run, backup or maintenance job; a later successful run
//! of that unit clears its marker.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::schedule::Schedule;
use crate::{chain, StateDir};

/// The body of a health answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "ok", "stale", "no_success" or "error".
    pub status: &'static str,
    pub last_success: Option<LastSuccess>,
    /// The bound without a schedule; `null` with one.
    pub max_age_seconds: Option<u64>,
    /// The timer's calendar the bound follows, if one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// With a schedule: the scheduled run a success must have finished after (the latest one
    /// that started at least the grace period ago).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
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

impl Report {
    /// Whether the verdict is "healthy".
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// How old the last success may be.
#[derive(Clone, Debug)]
pub enum Bound {
    /// At most this old, whatever the day.
    MaxAge(Duration),
    /// Finished after the latest scheduled run that started at least `grace` ago: a timer that
    /// does not run at weekends leaves Friday's data fresh until Monday's run is due.
    Schedule { schedule: Schedule, grace: Duration },
}

/// The id and end of the last successful run in `state`, or why the records cannot be read.
pub fn last_success(state: &StateDir) -> Result<Option<(String, DateTime<Utc>)>, String> {
    match state.last_success() {
        Ok(found) => Ok(found.map(|record| {
            let at = record.finished_at.unwrap_or(record.started_at);
            (record.run_id.to_string(), at)
        })),
        Err(err) => Err(chain(&err)),
    }
}

/// Where the OnFailure= hook (`systemd/quantlens-alert`) leaves one `<unit>.json` per failed unit.
pub const ALERTS_DIR: &str = "alerts";

/// The markers in `dir`, oldest name first; names starting with `.` are the hook's temporary files.
/// A marker that is not valid JSON is still an alert, reported with its file name.
pub fn read_alerts(dir: &std::path::Path) -> Vec<serde_json::Value> {
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

pub fn judge(
    last_success: &Result<Option<(String, DateTime<Utc>)>, String>,
    bound: &Bound,
    now: DateTime<Utc>,
    running: Option<Running>,
    alerts: &[serde_json::Value],
) -> Report {
    let (max_age_seconds, schedule, due) = match bound {
        Bound::MaxAge(max_age) => (Some(max_age.as_secs()), None, None),
        Bound::Schedule { schedule, grace } => {
            let started_by = now - chrono::Duration::from_std(*grace).unwrap_or_default();
            let due = schedule.latest_at_or_before(started_by);
            (None, Some(schedule.to_string()), Some(due))
        }
    };
    let report = |status, last_success, error| Report {
        status,
        last_success,
        max_age_seconds,
        schedule: schedule.clone(),
        due,
        running: running.clone(),
        alerts: alerts.to_vec(),
        error,
    };
    match last_success {
        Err(err) => report(
            "error",
            None,
            Some(format!("cannot read the run records: {err}")),
        ),
        Ok(None) => report("no_success", None, Some("no run has succeeded yet".into())),
        Ok(Some((run_id, finished_at))) => {
            let age = now.signed_duration_since(*finished_at);
            let last = LastSuccess {
                run_id: run_id.clone(),
                finished_at: *finished_at,
                age_seconds: age.num_seconds(),
            };
            let stale = match (bound, due) {
                (Bound::Schedule { grace, .. }, Some(due)) => (*finished_at < due).then(|| {
                    format!(
                        "the run due at {due} (schedule `{}`, {} s of grace) has not succeeded: \
                         the last success finished at {finished_at}",
                        schedule.as_deref().unwrap_or_default(),
                        grace.as_secs()
                    )
                }),
                (Bound::MaxAge(max_age), _) => {
                    age.to_std().is_ok_and(|age| age > *max_age).then(|| {
                        format!(
                            "the last successful run finished {} s ago, more than the {} s allowed",
                            age.num_seconds(),
                            max_age.as_secs()
                        )
                    })
                }
                (Bound::Schedule { .. }, None) => None,
            };
            if let Some(error) = stale {
                report("stale", Some(last), Some(error))
            } else if !alerts.is_empty() {
                let units: Vec<&str> = alerts.iter().filter_map(|a| a["unit"].as_str()).collect();
                let error = format!("failed unit(s) not yet recovered: {}", units.join(", "));
                report("alert", Some(last), Some(error))
            } else {
                report("ok", Some(last), None)
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
        let report = judge(&ok, &Bound::MaxAge(DAY), now, None, &[]);
        assert_eq!(report.status, "ok");
        assert_eq!(report.last_success.unwrap().age_seconds, 6 * 3600);

        let old = Ok(Some(("r1".to_owned(), at("2026-11-27T12:00:00Z"))));
        let report = judge(&old, &Bound::MaxAge(DAY), now, None, &[]);
        assert_eq!(report.status, "stale");
        assert!(report.error.unwrap().contains("172800 s ago"));

        let report = judge(
            &Ok(None),
            &Bound::MaxAge(DAY),
            now,
            Some(Running { run_id: None }),
            &[],
        );
        assert_eq!(report.status, "no_success");
        assert!(report.running.is_some());

        let report = judge(
            &Err("permission denied".into()),
            &Bound::MaxAge(DAY),
            now,
            None,
            &[],
        );
        assert_eq!(report.status, "error");
    }

    #[test]
    fn a_schedule_leaves_the_weekend_fresh() {
        let bound = Bound::Schedule {
            schedule: "Mon..Fri *-*-* 22:30:00 UTC".parse().unwrap(),
            grace: Duration::from_secs(2 * 3600),
        };
        // Friday's run finished at 22:31 (2026-12-04); Monday 2026-12-07 until its run is due.
        let friday = Ok(Some(("fri".to_owned(), at("2026-12-04T22:31:00Z"))));
        for now in [
            "2026-12-05T12:00:00Z",
            "2026-12-07T00:30:00Z",
            "2026-12-08T00:29:59Z",
        ] {
            let report = judge(&friday, &bound, at(now), None, &[]);
            assert_eq!(report.status, "ok", "{now}");
            assert_eq!(report.max_age_seconds, None);
        }
        // Monday's run was due at 22:30 and has not succeeded two hours later.
        let report = judge(&friday, &bound, at("2026-12-08T00:30:00Z"), None, &[]);
        assert_eq!(report.status, "stale");
        assert_eq!(report.due, Some(at("2026-12-07T22:30:00Z")));
        assert!(report
            .error
            .unwrap()
            .contains("the run due at 2026-12-07 22:30:00 UTC"));
        // The same data under a 26-hour bound is stale all weekend.
        let report = judge(
            &friday,
            &Bound::MaxAge(Duration::from_secs(93_600)),
            at("2026-12-06T12:00:00Z"),
            None,
            &[],
        );
        assert_eq!(report.status, "stale");
    }

    #[test]
    fn a_clock_behind_the_record_is_not_stale() {
        let now = at("2026-11-29T12:00:00Z");
        let future = Ok(Some(("r1".to_owned(), at("2026-11-29T12:00:05Z"))));
        assert_eq!(
            judge(&future, &Bound::MaxAge(DAY), now, None, &[]).status,
            "ok"
        );
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
        let report = judge(&ok, &Bound::MaxAge(DAY), now, None, &found);
        assert_eq!(report.status, "alert");
        assert!(report.error.unwrap().contains("quantlens-backup.service"));
        assert_eq!(report.alerts.len(), 2);
        assert!(report.last_success.is_some());
    }
}
