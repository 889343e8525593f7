//! Telling systemd how we are (sd_notify): READY=1 once the listener serves, so a unit that
//! orders after us does not start early; STOPPING=1 when shutdown begins; and WATCHDOG=1 at
//! half the `WatchdogSec=` period from a task on the same single runtime thread that serves
//! requests, so a wedged event loop stops the pings and systemd restarts us. Without
//! NOTIFY_SOCKET each call does nothing. Failures are reported once and otherwise ignored:
//! a lost notification must not take the service down.

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the watchdog forever if systemd asked for it (WATCHDOG_USEC for this process).
pub async fn watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut ticks = tokio::time::interval(period / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(states: &[NotifyState]) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if let Err(err) = sd_notify::notify(states) {
        if !REPORTED.swap(true, Ordering::Relaxed) {
            eprintln!("quantlens-trigger: cannot notify systemd (NOTIFY_SOCKET): {err}");
        }
    }
}
