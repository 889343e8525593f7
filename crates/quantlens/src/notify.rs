//! Telling people (quantlens-notify): at the end of every run the heartbeat (success or failure)
//! and, for a failed run, one notification naming the failed assets and their errors; a failed
//! backup likewise. `quantlens notify` sends for the processes that cannot send themselves: the
//! trigger daemon when a worker crashed or timed out, systemd's OnFailure= hook when a unit died.
//! A process that fails reports its own failure; the others report only deaths it could not.
//! Nothing here ever fails the command it serves: delivery problems are printed, that is all.

use clap::Args;
use quantlens_notify::{heartbeat_ok, notify, Channels, Delivery, Event};
use quantlens_runs::{AssetStatus, RunRecord, RunStatus};

use crate::Failure;

/// The events `quantlens notify --event` sends.
const EVENTS: [&str; 5] = [
    "run_crashed",
    "run_timed_out",
    "run_failed",
    "backup_failed",
    "unit_failed",
];

#[derive(Args)]
pub struct NotifyArgs {
    /// What happened: run_crashed, run_timed_out, run_failed, backup_failed or unit_failed.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(EVENTS))]
    event: String,
    /// The run it is about, if any.
    #[arg(long)]
    run_id: Option<String>,
    /// The error in one sentence.
    #[arg(long)]
    error: String,
}

/// `quantlens notify`: exit 0 once every configured channel was tried (a receiver that is down
/// is reported on stderr, not in the exit code), 2 when the configuration is wrong.
pub async fn run(args: NotifyArgs) -> Result<i32, Failure> {
    let channels = Channels::from_env()?;
    if channels.is_empty() {
        eprintln!("no notification channel configured (see docs/operations.md#notifications)");
        return Ok(quantlens_runs::exit::SUCCEEDED);
    }
    let event = Event {
        kind: args.event,
        run_id: args.run_id,
        assets: Vec::new(),
        error: args.error,
    };
    report(&notify(&channels, &event).await);
    Ok(quantlens_runs::exit::SUCCEEDED)
}

/// The end of a materialize run: a failed run's notification (which also fails the heartbeat),
/// or the heartbeat's ping after a success.
pub async fn after_run(record: &RunRecord) {
    let Some(channels) = configured() else {
        return;
    };
    if record.status == RunStatus::Succeeded {
        let message = format!("run {} succeeded", record.run_id);
        report(
            &heartbeat_ok(&channels, &message)
                .await
                .into_iter()
                .collect::<Vec<_>>(),
        );
        return;
    }
    let assets = record
        .assets
        .iter()
        .filter(|a| a.status == AssetStatus::Failed)
        .map(|a| (a.key.clone(), a.error.clone().unwrap_or_default()))
        .collect();
    let event = Event {
        kind: "run_failed".into(),
        run_id: Some(record.run_id.to_string()),
        assets,
        error: record
            .error
            .clone()
            .unwrap_or_else(|| format!("the run ended {}", record.status)),
    };
    report(&notify(&channels, &event).await);
}

/// A failed backup, told once.
pub async fn backup_failed(error: &anyhow::Error) {
    let Some(channels) = configured() else {
        return;
    };
    let event = Event {
        kind: "backup_failed".into(),
        run_id: None,
        assets: Vec::new(),
        error: format!("{error:#}"),
    };
    report(&notify(&channels, &event).await);
}

/// The configured channels, or `None` (with a warning when the configuration is wrong: a run
/// must not fail because its notifications are misconfigured).
pub fn configured() -> Option<Channels> {
    match Channels::from_env() {
        Ok(channels) if channels.is_empty() => None,
        Ok(channels) => Some(channels),
        Err(err) => {
            eprintln!("warning: notifications: {err:#}");
            None
        }
    }
}

pub fn report(deliveries: &[Delivery]) {
    for delivery in deliveries {
        if delivery.succeeded() {
            eprintln!("notified {delivery}");
        } else {
            eprintln!("warning: notification not delivered: {delivery}");
        }
    }
}
