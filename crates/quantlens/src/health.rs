//! `quantlens health`: the verdict `GET /health` gives, judged from the same state directory
//! with the same freshness rule (quantlens_runs::health), for a shell, a monitoring agent, and
//! the hourly `quantlens-health.timer`, which runs it with `--notify` so that data older than its
//! bound reaches a person even when no run fails (the timer never fired, the VM was off, a run
//! hangs). Stale data is told once per episode: the episode is named by the last successful run,
//! remembered in `STATE_DIR/stale-notified.json`, and ends (the file goes) when a newer run
//! succeeds. A delivery that reached no receiver is tried again at the next check.

use std::time::Duration;

use clap::Args;
use quantlens_notify::{notify, Event};
use quantlens_runs::health::{
    judge, last_success, read_alerts, Bound, DiskCheck, Report, Running, ALERTS_DIR,
    DEFAULT_MIN_FREE_MB,
};
use quantlens_runs::schedule::Schedule;
use quantlens_runs::{exit, replace_atomically, RunLock, StateDir};

use crate::{Failure, Locations};

/// The freshness bound when none is given: the trigger daemon's default `--max-age` (26 h).
pub const DEFAULT_MAX_AGE: u64 = 26 * 3600;

/// Where the stale episode already told is remembered.
const STALE_NOTIFIED: &str = "stale-notified.json";

/// The freshness rule, read from the variables the trigger daemon reads, so every judge of the
/// same state directory says the same thing.
#[derive(Args, Clone)]
pub struct FreshnessArgs {
    /// The freshness bound in seconds (the trigger daemon's --max-age, from the same variable).
    #[arg(long, env = "QUANTLENS_MAX_AGE", default_value_t = DEFAULT_MAX_AGE, value_name = "SECONDS")]
    pub max_age: u64,
    /// The timer's calendar the bound follows instead of --max-age (the trigger daemon's
    /// --schedule, from the same variable), e.g. `Mon..Fri *-*-* 22:30:00 UTC`.
    #[arg(long, env = "QUANTLENS_SCHEDULE", value_name = "CALENDAR")]
    pub schedule: Option<Schedule>,
    /// With --schedule: how long a scheduled run may take to succeed, in seconds.
    #[arg(
        long,
        env = "QUANTLENS_SCHEDULE_GRACE",
        default_value_t = 7200,
        value_name = "SECONDS"
    )]
    pub schedule_grace: u64,
    /// Unhealthy (`disk_full`) when the state directory's filesystem, or a local DATA_ROOT's,
    /// has less free space than this many MiB (the trigger daemon's --min-free-mb).
    #[arg(long, env = "QUANTLENS_MIN_FREE_MB", default_value_t = DEFAULT_MIN_FREE_MB, value_name = "MB")]
    pub min_free_mb: u64,
}

impl FreshnessArgs {
    fn bound(&self) -> Bound {
        match &self.schedule {
            Some(schedule) => Bound::Schedule {
                schedule: schedule.clone(),
                grace: Duration::from_secs(self.schedule_grace),
            },
            None => Bound::MaxAge(Duration::from_secs(self.max_age)),
        }
    }

    /// The verdict on `state` (and the disk of `data_root`) now.
    pub fn judge(&self, state: &StateDir, data_root: &str) -> Report {
        let running = RunLock::holder(state).ok().flatten().map(|holder| Running {
            run_id: Some(holder).filter(|h| !h.is_empty()),
        });
        judge(
            &last_success(state),
            &self.bound(),
            chrono::Utc::now(),
            running,
            &read_alerts(&state.root().join(ALERTS_DIR)),
            &DiskCheck::new(Some(data_root), self.min_free_mb).measure(state.root()),
        )
    }
}

#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    freshness: FreshnessArgs,
    /// Tell the notification channels when the data is stale, once per episode (the hourly
    /// quantlens-health.timer does this).
    #[arg(long)]
    notify: bool,
    /// Print the verdict as JSON, as GET /health answers it.
    #[arg(long)]
    json: bool,
}

/// Exit 0 when healthy, 1 when not (stale, never succeeded, a failed unit not yet recovered,
/// a disk under the free-space minimum, unreadable records), 2 on a usage or configuration error.
pub async fn run(locations: &Locations, args: HealthArgs) -> Result<i32, Failure> {
    let state = StateDir::new(&locations.state_dir);
    let report = args.freshness.judge(&state, &locations.data_root);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", describe(&report));
    }
    if args.notify {
        tell_once(&state, &report).await?;
    }
    Ok(if report.is_ok() {
        exit::SUCCEEDED
    } else {
        exit::FAILED
    })
}

fn describe(report: &Report) -> String {
    let last = match &report.last_success {
        Some(last) => format!(
            "last success: run {} finished {} ({} s ago)",
            last.run_id, last.finished_at, last.age_seconds
        ),
        None => "no successful run".to_owned(),
    };
    match &report.error {
        Some(error) => format!("{}: {error}; {last}", report.status),
        None => format!("{}: {last}", report.status),
    }
}

/// Tells a stale verdict once per episode, and forgets the episode once the data is fresh again.
async fn tell_once(state: &StateDir, report: &Report) -> anyhow::Result<()> {
    let marker = state.root().join(STALE_NOTIFIED);
    if report.status != "stale" {
        if report.is_ok() && marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        return Ok(());
    }
    let episode = report.last_success.as_ref().map(|l| l.run_id.clone());
    let told: Option<serde_json::Value> = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    if told.is_some_and(|t| t["last_success_run_id"].as_str() == episode.as_deref()) {
        eprintln!(
            "stale data already told for this episode ({})",
            marker.display()
        );
        return Ok(());
    }
    let Some(channels) = crate::notify::configured() else {
        eprintln!("no notification channel configured (see docs/operations.md#notifications)");
        return Ok(());
    };
    let event = Event {
        kind: "data_stale".into(),
        run_id: episode.clone(),
        assets: Vec::new(),
        error: report.error.clone().unwrap_or_default(),
    };
    let deliveries = notify(&channels, &event).await;
    crate::notify::report(&deliveries);
    if deliveries.iter().any(|d| d.succeeded()) {
        let remembered = serde_json::json!({
            "last_success_run_id": episode,
            "notified_at": chrono::Utc::now(),
            "error": event.error,
        });
        replace_atomically(&marker, remembered.to_string().as_bytes())?;
    }
    Ok(())
}
