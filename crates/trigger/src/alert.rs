//! Telling people about a run that ended badly without the worker saying so (it crashed, was
//! killed, or timed out): the daemon has no HTTP client of its own, so it runs the worker binary
//! as `quantlens notify`, which sends to the channels the environment names (see
//! crates/notify). Only when a channel is configured; the child writes to the run's log and is
//! reaped in the background, so the daemon never waits for a slow receiver.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use quantlens_runs::{RunFiles, RunStatus};
use tokio::process::Command;

/// The variables that name a channel (crates/notify reads them; the daemon only passes them on
/// to its workers and looks whether one is set).
pub const CHANNEL_VARS: [&str; 4] = [
    "QUANTLENS_NOTIFY_WEBHOOK",
    "QUANTLENS_NOTIFY_SLACK",
    "QUANTLENS_HEARTBEAT_URL",
    "QUANTLENS_NOTIFY_CREDENTIALS",
];

/// Has `worker`, run with the workers' environment `env`, notify of `status` (crashed or timed
/// out) for the run of `files`.
pub fn run_ended_badly(
    worker: &Path,
    env: &[(OsString, OsString)],
    files: &RunFiles,
    status: RunStatus,
    error: &str,
) {
    let configured = env
        .iter()
        .any(|(name, value)| CHANNEL_VARS.iter().any(|c| name == c) && !value.is_empty());
    if !configured {
        return;
    }
    let event = match status {
        RunStatus::TimedOut => "run_timed_out",
        _ => "run_crashed",
    };
    let mut command = Command::new(worker);
    command
        .args(["notify", "--event", event, "--run-id"])
        .arg(files.run_id().to_string())
        .args(["--error", error])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Ok(log) = files.open_log() {
        if let Ok(copy) = log.try_clone() {
            command.stdout(copy);
        }
        command.stderr(log);
    }
    match command.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(err) => {
            let _ = files.append_log(&format!(
                "quantlens-trigger: could not run `{} notify`: {err}",
                worker.display()
            ));
        }
    }
}
