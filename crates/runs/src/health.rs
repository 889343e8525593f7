//! Whether the pipeline is producing data, judged from the state directory: healthy while the
//! last successful run finished within the freshness bound (`max_age`) and no alert marker is
//! waiting, and why not otherwise. The trigger daemon answers `GET /health` with it (200 or 503)
//! and the static report shows the same verdict, so both say the same thing of the same files.
//! Alert markers are what systemd's OnFailure= hook (`systemd/quantlens-alert`) leaves in
//! `STATE_DIR/alerts/` for a failed timer run, backup or maintenance job; a later successful run
//! of that unit clears its marker. A filesystem the pipeline writes to (the state directory, a
//! local DATA_ROOT) with less than the minimum free space is unhealthy too: the next run would
//! fail to write its record or its tables, so the check says so before it does.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::schedule::Schedule;
use crate::{chain, StateDir};

/// The body of a health answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "ok", "stale", "no_success", "alert", "disk_full" or "error".
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
    /// Free space where the pipeline writes: the state directory, and DATA_ROOT when local.
    pub disks: Vec<Disk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The free space of the filesystem holding one directory the pipeline writes to.
#[derive(Clone, Debug, Serialize)]
pub struct Disk {
    /// "state" (STATE_DIR) or "data" (DATA_ROOT).
    pub role: &'static str,
    pub path: String,
    /// What an unprivileged writer can still use (statvfs' f_bavail).
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Under the minimum free space the check was given.
    pub low: bool,
}

/// Below this much free space a filesystem the pipeline writes to makes the verdict `disk_full`,
/// unless QUANTLENS_MIN_FREE_MB says otherwise: room for a day's tables and run records.
pub const DEFAULT_MIN_FREE_MB: u64 = 64;

impl Disk {
    /// Measures the filesystem holding `path` (or its nearest existing ancestor: a DATA_ROOT
    /// not created yet is on its parent's disk); `None` if not even that can be read.
    pub fn measure(
        role: &'static str,
        path: &std::path::Path,
        min_free_bytes: u64,
    ) -> Option<Disk> {
        let existing = path.ancestors().find(|p| p.exists())?;
        let stats = nix::sys::statvfs::statvfs(existing).ok()?;
        let block = stats.fragment_size() as u64;
        let free_bytes = stats.blocks_available() as u64 * block;
        Some(Disk {
            role,
            path: path.display().to_string(),
            free_bytes,
            total_bytes: stats.blocks() as u64 * block,
            low: free_bytes < min_free_bytes,
        })
    }

    fn problem(&self) -> String {
        let what = match self.role {
            "state" => "the state directory",
            "data" => "DATA_ROOT",
            other => other,
        };
        format!(
            "{what} ({}) has {} free of {}: runs fail when they cannot write",
            self.path,
            human_bytes(self.free_bytes),
            human_bytes(self.total_bytes)
        )
    }
}

/// Which filesystems a health check watches, and the free space each must keep.
#[derive(Clone, Debug)]
pub struct DiskCheck {
    /// DATA_ROOT when it is a local directory; object storage has no disk to fill.
    pub data_root: Option<std::path::PathBuf>,
    pub min_free_bytes: u64,
}

impl DiskCheck {
    /// `data_root` as DATA_ROOT spells it (a path, `file://...`, or `s3://...`).
    pub fn new(data_root: Option<&str>, min_free_mb: u64) -> DiskCheck {
        let data_root = data_root.and_then(|root| match root.strip_prefix("file://") {
            Some(path) => Some(path.into()),
            None if root.contains("://") => None,
            None => Some(root.into()),
        });
        DiskCheck {
            data_root,
            min_free_bytes: min_free_mb.saturating_mul(1024 * 1024),
        }
    }

    /// The state directory's filesystem, then DATA_ROOT's if local.
    pub fn measure(&self, state_dir: &std::path::Path) -> Vec<Disk> {
        let state = Disk::measure("state", state_dir, self.min_free_bytes);
        let data = self
            .data_root
            .as_deref()
            .and_then(|root| Disk::measure("data", root, self.min_free_bytes));
        state.into_iter().chain(data).collect()
    }
}

/// `bytes` in the largest binary unit that keeps it at or above 1.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
    disks: &[Disk],
) -> Report {
    let mut report = judge_freshness(last_success, bound, now, running, alerts);
    report.disks = disks.to_vec();
    let full: Vec<String> = disks.iter().filter(|d| d.low).map(Disk::problem).collect();
    // A full disk is what will break the next run, so it comes first; records that cannot be
    // read at all stay the verdict, as nothing else can be judged then.
    if !full.is_empty() && report.status != "error" {
        let mut error = full.join("; ");
        if let Some(other) = report.error.take() {
            error = format!("{error}; and {other}");
        }
        report.status = "disk_full";
        report.error = Some(error);
    }
    report
}

fn judge_freshness(
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
        disks: Vec::new(),
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
        let report = judge(&ok, &Bound::MaxAge(DAY), now, None, &[], &[]);
        assert_eq!(report.status, "ok");
        assert_eq!(report.last_success.unwrap().age_seconds, 6 * 3600);

        let old = Ok(Some(("r1".to_owned(), at("2026-11-27T12:00:00Z"))));
        let report = judge(&old, &Bound::MaxAge(DAY), now, None, &[], &[]);
        assert_eq!(report.status, "stale");
        assert!(report.error.unwrap().contains("172800 s ago"));

        let report = judge(
            &Ok(None),
            &Bound::MaxAge(DAY),
            now,
            Some(Running { run_id: None }),
            &[],
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
            let report = judge(&friday, &bound, at(now), None, &[], &[]);
            assert_eq!(report.status, "ok", "{now}");
            assert_eq!(report.max_age_seconds, None);
        }
        // Monday's run was due at 22:30 and has not succeeded two hours later.
        let report = judge(&friday, &bound, at("2026-12-08T00:30:00Z"), None, &[], &[]);
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
            &[],
        );
        assert_eq!(report.status, "stale");
    }

    #[test]
    fn a_clock_behind_the_record_is_not_stale() {
        let now = at("2026-11-29T12:00:00Z");
        let future = Ok(Some(("r1".to_owned(), at("2026-11-29T12:00:05Z"))));
        assert_eq!(
            judge(&future, &Bound::MaxAge(DAY), now, None, &[], &[]).status,
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
        let report = judge(&ok, &Bound::MaxAge(DAY), now, None, &found, &[]);
        assert_eq!(report.status, "alert");
        assert!(report.error.unwrap().contains("quantlens-backup.service"));
        assert_eq!(report.alerts.len(), 2);
        assert!(report.last_success.is_some());
    }

    #[test]
    fn a_full_disk_is_the_verdict_and_keeps_the_other_reason() {
        let dir = crate::testutil::TempDir::new();
        let measured = Disk::measure("state", &dir.path().join("not/yet/created"), 0).unwrap();
        assert!(!measured.low && measured.total_bytes > 0);
        assert!(Disk::measure("state", dir.path(), u64::MAX).unwrap().low);

        let now = at("2026-11-29T12:00:00Z");
        let full = Disk {
            role: "state",
            path: "/var/lib/quantlens/state".into(),
            free_bytes: 12 * 1024,
            total_bytes: 1 << 30,
            low: true,
        };
        let with_full_disk = |last_success: &Result<Option<(String, DateTime<Utc>)>, String>| {
            judge(
                last_success,
                &Bound::MaxAge(DAY),
                now,
                None,
                &[],
                std::slice::from_ref(&full),
            )
        };
        let report = with_full_disk(&Ok(Some(("r1".to_owned(), at("2026-11-29T06:00:00Z")))));
        assert_eq!(report.status, "disk_full");
        assert_eq!(
            report.error.unwrap(),
            "the state directory (/var/lib/quantlens/state) has 12.0 KiB free of 1.0 GiB: \
             runs fail when they cannot write"
        );
        let report = with_full_disk(&Ok(Some(("r1".to_owned(), at("2026-11-27T12:00:00Z")))));
        assert_eq!(report.status, "disk_full");
        assert!(report
            .error
            .unwrap()
            .contains("; and the last successful run finished"));
        let report = with_full_disk(&Err("permission denied".into()));
        assert_eq!(report.status, "error");
        assert_eq!(human_bytes(1023), "1023 B");

        let check = DiskCheck::new(Some("s3://bucket/lake"), 1);
        assert!(check.data_root.is_none());
        assert_eq!(check.min_free_bytes, 1 << 20);
        let check = DiskCheck::new(Some(&format!("file://{}", dir.path().display())), 0);
        let disks = check.measure(dir.path());
        assert_eq!(
            disks.iter().map(|d| d.role).collect::<Vec<_>>(),
            ["state", "data"]
        );
    }
}
