//! The daemon's life from listener to exit. Signal handlers are in place before READY=1, so a
//! SIGTERM that arrives at once is not lost. Shutdown, whether from SIGTERM/SIGINT or from
//! `--idle-exit`, is one path: STOPPING=1, stop accepting, let requests in flight finish (at
//! most [`DRAIN_LIMIT`]), stop a run in progress the way a timeout does and record it, exit 0.
//! Idle means no request in flight, no run in progress, and none of either for the configured
//! time; the end of a run counts as activity, so a client polling for its result is not cut off
//! the moment the run ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quantlens_runs::StateDir;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::api::{self, App};
use crate::config::Config;
use crate::connections::{self, wait_stop};
use crate::error::StartupError;
use crate::health::Health;
use crate::listener::{self, Origin};
use crate::notify;
use crate::supervise::{Runner, RunnerConfig};

/// How long open connections get to finish once shutdown has begun.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// When the daemon last did something, and whether it is doing something now.
pub struct Activity {
    last: Mutex<Instant>,
    in_flight: AtomicUsize,
}

/// A request in flight; dropping it ends it.
pub struct Busy<'a>(&'a Activity);

impl Activity {
    pub fn new() -> Activity {
        Activity {
            last: Mutex::new(Instant::now()),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn begin(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self)
    }

    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How long nothing has happened; `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed(),
        )
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves until told to stop, then shuts down cleanly.
pub async fn run(config: Config) -> Result<(), StartupError> {
    let state = StateDir::new(&config.state_dir);
    state.create()?;
    // The worker gets an absolute STATE_DIR, so it agrees with us whatever its working directory.
    let state = StateDir::new(std::fs::canonicalize(&config.state_dir).unwrap_or(config.state_dir));
    let (listener, origin) = listener::open(config.listen).await?;
    let mut terminate = signal(SignalKind::terminate()).map_err(StartupError::Serve)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartupError::Serve)?;

    let (stop, stopped) = watch::channel(false);
    let activity = Arc::new(Activity::new());
    let runner = Arc::new(Runner::new(
        RunnerConfig {
            state,
            worker: config.worker,
            timeout: config.run_timeout,
            grace: config.kill_grace,
        },
        Arc::clone(&activity),
        stopped.clone(),
    ));
    let app = App::new(
        Arc::clone(&runner),
        Health::new(config.bound.clone(), config.disks.clone()),
        config.token,
        Arc::clone(&activity),
    );
    let router = api::router(Arc::new(app));

    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let origin = match origin {
        Origin::Activated => "socket from systemd",
        Origin::Bound => "bound by us",
    };
    eprintln!(
        "quantlens-trigger {}: serving on http://{addr} ({origin}); state {}",
        env!("CARGO_PKG_VERSION"),
        runner.state().root().display()
    );
    notify::ready();
    tokio::spawn(notify::watchdog());
    tokio::spawn(trim_after_bursts(Arc::clone(&activity)));

    let idle_limit = config.idle_exit;
    let idle_runner = Arc::clone(&runner);
    tokio::spawn(async move {
        let reason = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = idle(&activity, &idle_runner, idle_limit) => "idle",
        };
        notify::stopping();
        eprintln!("quantlens-trigger: shutting down ({reason})");
        stop.send_replace(true);
    });

    let server = connections::serve(listener, router, stopped.clone());
    tokio::select! {
        () = server => {},
        () = async { wait_stop(stopped).await; tokio::time::sleep(DRAIN_LIMIT).await } => {
            eprintln!("quantlens-trigger: connections still open after {DRAIN_LIMIT:?}; closing them");
        }
    }
    // The supervisor saw the same signal and is stopping the run, if there is one.
    runner.wait_idle().await;
    eprintln!("quantlens-trigger: stopped");
    Ok(())
}

/// Gives memory freed after a burst of connections back to the OS. glibc keeps freed heap
/// pages mapped, so without this a daemon that once served 500 concurrent connections would
/// hold their buffers' pages for the rest of its life. Checked every few seconds, and only
/// when something happened since the last trim and nothing is in flight; a trim of this
/// daemon's small heap takes microseconds.
async fn trim_after_bursts(activity: Arc<Activity>) {
    const EVERY: Duration = Duration::from_secs(5);
    let mut trimmed_at = Instant::now();
    loop {
        tokio::time::sleep(EVERY).await;
        let quiet = activity.idle_for();
        let busy_since_trim = quiet.is_some_and(|idle| trimmed_at.elapsed() > idle);
        if busy_since_trim {
            trim_heap();
            trimmed_at = Instant::now();
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

/// Resolves once the daemon has been idle for `limit`; never without a limit.
async fn idle(activity: &Activity, runner: &Runner, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let idle_for = match runner.active() {
            Some(_) => None,
            None => activity.idle_for(),
        };
        match idle_for {
            Some(d) if d >= limit => return,
            Some(d) => tokio::time::sleep(limit - d).await,
            None => tokio::time::sleep(limit).await,
        }
    }
}
