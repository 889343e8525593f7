//! The contents of `run.json`: what a run was asked to do, how far it got and
//! how each asset fared. The worker rewrites the whole record at every change
//! instead of patching it, so a reader always sees one consistent snapshot.
//! Fields added later must be optional (or defaulted) so an older daemon can
//! still read a newer worker's records and vice versa.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::RunId;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Starting,
    Running,
    Succeeded,
    Failed,
    /// The worker went away without writing a final status. Readers report
    /// this for dead workers; the next worker to take the lock persists it.
    Crashed,
    TimedOut,
    /// Nothing needed doing (or the run was refused before it started).
    Skipped,
}

impl RunStatus {
    /// True once the run can no longer change on its own.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Starting | RunStatus::Running)
    }

    /// The name used in `run.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Crashed => "crashed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one asset within a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// Not recomputed because it was already up to date.
    Fresh,
}

impl AssetStatus {
    /// The name used in `run.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetStatus::Pending => "pending",
            AssetStatus::Running => "running",
            AssetStatus::Succeeded => "succeeded",
            AssetStatus::Failed => "failed",
            AssetStatus::Skipped => "skipped",
            AssetStatus::Fresh => "fresh",
        }
    }
}

impl fmt::Display for AssetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one data-quality check on an asset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// A failed blocking check fails the asset; a non-blocking one only warns.
    pub blocking: bool,
    pub detail: String,
}

/// One asset's part in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetRun {
    pub key: String,
    pub status: AssetStatus,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The Delta table version this run committed, if it committed one.
    pub table_version: Option<i64>,
    pub rows_written: Option<u64>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// The failure, or for a skipped asset the reason, e.g.
    /// "upstream failed: silver/prices".
    pub error: Option<String>,
}

impl AssetRun {
    /// An asset that is selected but not started.
    pub fn pending(key: &str) -> AssetRun {
        AssetRun {
            key: key.to_owned(),
            status: AssetStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            table_version: None,
            rows_written: None,
            checks: Vec::new(),
            error: None,
        }
    }
}

/// The whole of `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub status: RunStatus,
    /// Who asked for the run: "cli", "http", "timer", ...
    pub trigger: String,
    /// The asset selection as the user wrote it.
    pub selection: String,
    /// The worker's pid, used to tell a live run from a dead one.
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    #[serde(default)]
    pub assets: Vec<AssetRun>,
}

impl RunRecord {
    /// A record for a run this process is starting now.
    pub fn new(run_id: RunId, trigger: &str, selection: &str) -> RunRecord {
        RunRecord {
            run_id,
            status: RunStatus::Starting,
            trigger: trigger.to_owned(),
            selection: selection.to_owned(),
            pid: Some(std::process::id()),
            started_at: Utc::now(),
            finished_at: None,
            exit_code: None,
            error: None,
            assets: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_serde() {
        for s in [
            RunStatus::Starting,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Crashed,
            RunStatus::TimedOut,
            RunStatus::Skipped,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(
                s.is_terminal(),
                !matches!(s, RunStatus::Starting | RunStatus::Running)
            );
        }
        for s in [
            AssetStatus::Pending,
            AssetStatus::Running,
            AssetStatus::Succeeded,
            AssetStatus::Failed,
            AssetStatus::Skipped,
            AssetStatus::Fresh,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(RunStatus::TimedOut.to_string(), "timed_out");
    }

    #[test]
    fn new_record_describes_this_process() {
        let rec = RunRecord::new(RunId::parse("r1").unwrap(), "cli", "gold/*");
        assert_eq!(rec.status, RunStatus::Starting);
        assert_eq!(rec.pid, Some(std::process::id()));
        assert_eq!(rec.trigger, "cli");
        assert_eq!(rec.selection, "gold/*");
        assert!(rec.assets.is_empty() && rec.finished_at.is_none());
        let pending = AssetRun::pending("silver/prices");
        assert_eq!(pending.status, AssetStatus::Pending);
        assert_eq!(pending.attempts, 0);
    }

    #[test]
    fn tolerates_missing_optional_fields_and_unknown_ones() {
        let json = r#"{"run_id":"r1","status":"running","trigger":"http",
            "selection":"*","started_at":"2026-11-29T12:15:00Z","future_field":1}"#;
        let rec: RunRecord = serde_json::from_str(json).unwrap();
        assert_eq!(rec.status, RunStatus::Running);
        assert_eq!(rec.pid, None);
        assert!(rec.assets.is_empty());
    }
}
