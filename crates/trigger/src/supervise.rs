//! Starting a worker run and minding it until it is over. Starting is one synchronous step under
//! a mutex: take the run lock, write the `starting` record, spawn the worker with the locked
//! descriptor inherited, close our copy. The worker adopts the lock and the record
//! (`QUANTLENS_LOCK_FD`), so at no moment is the lock free while the run is starting, and
//! `GET /runs/{id}` works the moment the 202 is sent. The worker runs in its own process group,
//! with a clean environment and its output appended to its run's `worker.log`.
//!
//! A supervising task then waits for it (Tokio reaps the child; we never `waitpid(-1)`), enforces
//! the run timeout (SIGTERM to the group, SIGKILL after the grace period), stops whatever the
//! worker left behind in its group, and, if the worker could not write its own ending, records
//! one: `timed_out` when our timeout fired, `crashed` with the exit code or signal otherwise.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use quantlens_runs::{
    exit, RunFiles, RunId, RunLock, RunRecord, RunStatus, RunsError, StateDir, LOCK_FD_ENV,
};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::chain;
use crate::server::Activity;

/// The trigger recorded in run.json for runs started over HTTP.
const TRIGGER: &str = "http";

/// Variables passed through to the worker by name; everything else is dropped.
const PASSED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "DATA_ROOT",
    "LANDING_DIR",
    "ASSETS_DIR",
    "QUANTLENS_KEEP_RUNS",
    "QUANTLENS_CACHE_DIR",
    "QUANTLENS_DUCKDB_MEMORY",
    "QUANTLENS_PIECE_ROWS",
    // The status report a run refreshes, and the freshness bound its banner shows.
    "QUANTLENS_REPORT",
    "QUANTLENS_MAX_AGE",
    "QUANTLENS_SCHEDULE",
    "QUANTLENS_SCHEDULE_GRACE",
    "QUANTLENS_MIN_FREE_MB",
    // Object-storage keys for an s3:// DATA_ROOT: a file of KEY=VALUE lines, typically in the
    // systemd credentials directory (LoadCredential=), so they never sit in the environment.
    "QUANTLENS_S3_CREDENTIALS",
    "CREDENTIALS_DIRECTORY",
    // glibc's allocator settings, which only the environment can give a process at start-up: the
    // env file sets `glibc.malloc.hugetlb=1` for the worker's large builds (allocator.rs in
    // quantlens).
    "GLIBC_TUNABLES",
];
/// ... and by prefix: locale categories, and object-storage credentials for an s3:// DATA_ROOT.
const PASSED_PREFIXES: &[&str] = &["LC_", "AWS_"];

/// How often to look whether a stopped process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How the daemon runs workers.
#[derive(Debug)]
pub struct RunnerConfig {
    pub state: StateDir,
    pub worker: PathBuf,
    pub timeout: Duration,
    pub grace: Duration,
}

/// Starts runs, one at a time, and tracks the one in progress.
pub struct Runner {
    config: RunnerConfig,
    /// The worker's environment, computed once.
    env: Vec<(OsString, OsString)>,
    /// Makes check-lock-record-spawn one step even on a multi-threaded runtime.
    starting: Mutex<()>,
    /// The run this daemon is minding, if any.
    active: watch::Sender<Option<RunId>>,
    /// Bumped whenever one of our runs starts or ends, so caches of run state know to refresh.
    generation: AtomicU64,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
}

/// What a start request came to.
#[derive(Debug)]
pub enum Start {
    Started(RunId),
    /// A run is in progress: ours, or one started by the timer or the CLI. Its id if known.
    AlreadyRunning(Option<String>),
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot take the run lock")]
    Lock(#[source] RunsError),
    #[error("cannot write the run record")]
    Record(#[from] RunsError),
    #[error("the trigger daemon is shutting down; no new run is started")]
    ShuttingDown,
    #[error("cannot start the worker {} for run {run_id}", path.display())]
    Spawn {
        path: PathBuf,
        run_id: RunId,
        #[source]
        source: io::Error,
    },
}

impl StartError {
    /// The state directory's file system is full: the lock or the record could not be written.
    pub fn is_no_space(&self) -> bool {
        match self {
            StartError::Lock(err) | StartError::Record(err) => err.is_no_space(),
            _ => false,
        }
    }
}

/// Why the worker is no longer running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// It exited (or was killed) on its own.
    Exited,
    /// Our run timeout fired and we stopped it.
    TimedOut,
    /// The daemon is shutting down and stopped it.
    Shutdown,
}

#[derive(Debug)]
struct Ending {
    status: Result<ExitStatus, String>,
    cause: Cause,
    /// SIGTERM was not enough.
    escalated: bool,
}

impl Ending {
    fn new(status: io::Result<ExitStatus>, cause: Cause, escalated: bool) -> Ending {
        Ending {
            status: status.map_err(|e| e.to_string()),
            cause,
            escalated,
        }
    }
}

impl Runner {
    pub fn new(
        config: RunnerConfig,
        activity: Arc<Activity>,
        shutdown: watch::Receiver<bool>,
    ) -> Runner {
        let env = worker_env(std::env::vars_os(), config.state.root());
        Runner {
            config,
            env,
            starting: Mutex::new(()),
            active: watch::Sender::new(None),
            generation: AtomicU64::new(0),
            activity,
            shutdown,
        }
    }

    pub fn state(&self) -> &StateDir {
        &self.config.state
    }

    /// The run this daemon is minding.
    pub fn active(&self) -> Option<RunId> {
        self.active.borrow().clone()
    }

    /// Changes whenever one of our runs starts or ends.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Resolves once no run of ours is in progress.
    pub async fn wait_idle(&self) {
        let mut rx = self.active.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(Option::is_none).await;
    }

    /// Starts a run of `selection` (already checked against the selection syntax) unless one
    /// is in progress. Must be called within the Tokio runtime.
    pub fn start(self: &Arc<Self>, selection: &str) -> Result<Start, StartError> {
        let _one_at_a_time = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // A request on a connection that was open when shutdown began must not start a run that
        // would be stopped again at once.
        if *self.shutdown.borrow() {
            return Err(StartError::ShuttingDown);
        }
        // Our own run: answer from memory, without touching the file system.
        if let Some(id) = self.active() {
            return Ok(Start::AlreadyRunning(Some(id.to_string())));
        }
        let state = &self.config.state;
        let run_id = RunId::generate();
        let lock = match RunLock::try_acquire(state, &run_id) {
            Ok(lock) => lock.into_file(),
            Err(RunsError::Locked { holder }) => return Ok(Start::AlreadyRunning(holder)),
            Err(err) => return Err(StartError::Lock(err)),
        };
        let files = state.run_files(&run_id);
        let record = RunRecord::new(run_id.clone(), TRIGGER, selection);
        files.write_record(&record)?;

        // Before the spawn: once the worker runs, its own lines may come first.
        note(
            &files,
            &format!(
                "starting {} materialize --select '{selection}' --run-id {run_id}",
                self.config.worker.display()
            ),
        );
        let (child, pid) = match self.spawn(&files, &lock, selection) {
            Ok(child) => child,
            Err(source) => {
                let error = StartError::Spawn {
                    path: self.config.worker.clone(),
                    run_id: run_id.clone(),
                    source,
                };
                record_ending(&files, record, RunStatus::Crashed, None, chain(&error));
                return Err(error);
            }
        };
        // The worker holds the lock now. Closing our copy, without LOCK_UN, leaves it theirs.
        drop(lock);
        self.active.send_replace(Some(run_id.clone()));
        self.generation.fetch_add(1, Ordering::AcqRel);
        let _ = files.append_event(&serde_json::json!({
            "event": "worker_spawned", "by": "quantlens-trigger", "pid": pid,
        }));
        eprintln!(
            "quantlens-trigger: run {run_id} started (select `{selection}`, worker pid {pid})"
        );
        tokio::spawn(Arc::clone(self).supervise(child, pid, files, selection.to_owned()));
        Ok(Start::Started(run_id))
    }

    fn spawn(&self, files: &RunFiles, lock: &File, selection: &str) -> io::Result<(Child, u32)> {
        let log = files.open_log().map_err(io::Error::other)?;
        let fd = lock.as_raw_fd();
        let mut command = Command::new(&self.config.worker);
        command
            .arg("materialize")
            .arg("--select")
            .arg(selection)
            .arg("--run-id")
            .arg(files.run_id().as_str())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(LOCK_FD_ENV, fd.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: signals reach the worker and anything it started, and a Ctrl-C in
            // the daemon's terminal does not.
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // system calls; it allocates nothing.
        unsafe {
            command.pre_exec(move || keep_only_lock_across_exec(fd));
        }
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the worker exited before its pid was read"))?;
        Ok((child, pid))
    }

    async fn supervise(
        self: Arc<Self>,
        mut child: Child,
        pid: u32,
        files: RunFiles,
        selection: String,
    ) {
        // The worker leads its own group, so the group id is its pid.
        let group = Pid::from_raw(pid as i32);
        let ending = self.wait(&mut child, group).await;
        self.stop_leftovers(group, &files).await;
        self.finish(&files, &selection, &ending);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.activity.touch();
        self.active.send_replace(None);
    }

    async fn wait(&self, child: &mut Child, group: Pid) -> Ending {
        let mut shutdown = self.shutdown.clone();
        let cause = tokio::select! {
            status = child.wait() => return Ending::new(status, Cause::Exited, false),
            () = tokio::time::sleep(self.config.timeout) => Cause::TimedOut,
            // An error means the sender is gone, i.e. the daemon is going away as well.
            _ = shutdown.wait_for(|stop| *stop) => Cause::Shutdown,
        };
        signal_group(group, Signal::SIGTERM);
        let (status, escalated) = match tokio::time::timeout(self.config.grace, child.wait()).await
        {
            Ok(status) => (status, false),
            Err(_elapsed) => {
                signal_group(group, Signal::SIGKILL);
                (child.wait().await, true)
            }
        };
        Ending::new(status, cause, escalated)
    }

    /// Whatever the worker started and left in its group (a helper, a stray `sleep` holding the
    /// inherited lock) goes with it: SIGTERM, then SIGKILL after the grace period. They were
    /// reparented when the worker died, so their reaping is their new parent's business.
    async fn stop_leftovers(&self, group: Pid, files: &RunFiles) {
        if !group_alive(group) {
            return;
        }
        note(
            files,
            "the worker left processes in its process group; sending them SIGTERM",
        );
        signal_group(group, Signal::SIGTERM);
        let deadline = Instant::now() + self.config.grace;
        while Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL).await;
            if !group_alive(group) {
                return;
            }
        }
        note(files, "leftover processes ignored SIGTERM; sending SIGKILL");
        signal_group(group, Signal::SIGKILL);
    }

    /// Writes the ending the worker could not, and notes the exit in the log and events.
    fn finish(&self, files: &RunFiles, selection: &str, ending: &Ending) {
        let record = match files.read_record() {
            Ok(record) => record,
            Err(err) => {
                // The worker replaced its record with something unreadable, or removed it:
                // start again from what we know, keeping the reason.
                let mut record = RunRecord::new(files.run_id().clone(), TRIGGER, selection);
                record.pid = None;
                record.error = Some(chain(&err));
                record
            }
        };
        let exit = describe_exit(&ending.status);
        let last_line = last_log_line(files);
        let status = match verdict(
            record.status,
            ending,
            &self.config,
            &exit,
            last_line.as_deref(),
        ) {
            Some((status, error)) => {
                note(
                    files,
                    &format!("worker {}; run recorded as {status}", exit.text),
                );
                crate::alert::run_ended_badly(
                    &self.config.worker,
                    &self.env,
                    files,
                    status,
                    &error,
                );
                record_ending(files, record, status, exit.code, error);
                status
            }
            None => {
                note(files, &format!("worker {}", exit.text));
                record.status
            }
        };
        eprintln!(
            "quantlens-trigger: run {} {status}; the worker {}",
            files.run_id(),
            exit.text
        );
        let _ = files.append_event(&serde_json::json!({
            "event": "worker_exited",
            "by": "quantlens-trigger",
            "exit_code": ending.status.as_ref().ok().and_then(ExitStatus::code),
            "signal": ending.status.as_ref().ok().and_then(ExitStatus::signal),
            "timed_out": ending.cause == Cause::TimedOut,
        }));
    }
}

/// What a worker's exit status says, for people and for `exit_code`.
#[derive(Debug, PartialEq)]
struct ExitDescription {
    text: String,
    /// The exit code, or 128 + the signal number for a killed worker (as a shell reports it).
    code: Option<i32>,
}

fn describe_exit(status: &Result<ExitStatus, String>) -> ExitDescription {
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            return ExitDescription {
                text: format!("could not be waited for ({err})"),
                code: None,
            }
        }
    };
    if let Some(code) = status.code() {
        let meaning = match code {
            exit::SUCCEEDED => " (success)",
            exit::FAILED => " (run failed)",
            exit::USAGE => " (usage or configuration error)",
            exit::LOCKED => " (another run holds the lock)",
            _ => "",
        };
        return ExitDescription {
            text: format!("exited with code {code}{meaning}"),
            code: Some(code),
        };
    }
    let signal = status.signal().unwrap_or(0);
    let name = Signal::try_from(signal).map_or("unknown signal", Signal::as_str);
    ExitDescription {
        text: format!("was killed by signal {signal} ({name})"),
        code: Some(128 + signal),
    }
}

/// The status and error to record for a run whose worker is gone, or `None` to keep the
/// record the worker wrote.
fn verdict(
    current: RunStatus,
    ending: &Ending,
    config: &RunnerConfig,
    exit: &ExitDescription,
    last_log_line: Option<&str>,
) -> Option<(RunStatus, String)> {
    match ending.cause {
        // Finishing during the grace period still counts as finishing.
        Cause::TimedOut if current == RunStatus::Succeeded => None,
        Cause::TimedOut => {
            let how = if ending.escalated {
                format!(
                    "SIGTERM to its process group, then SIGKILL after {}",
                    seconds(config.grace)
                )
            } else {
                "SIGTERM to its process group".to_owned()
            };
            Some((
                RunStatus::TimedOut,
                format!(
                    "timed out after {} ({how}); the worker {}",
                    seconds(config.timeout),
                    exit.text
                ),
            ))
        }
        _ if current.is_terminal() => None,
        Cause::Shutdown => Some((
            RunStatus::Crashed,
            format!(
                "stopped because the trigger daemon shut down; the worker {}",
                exit.text
            ),
        )),
        Cause::Exited => {
            let mut error = format!("the worker {} without finishing the run", exit.text);
            if let Some(line) = last_log_line {
                error.push_str("; last log line: ");
                error.push_str(line);
            }
            Some((RunStatus::Crashed, error))
        }
    }
}

fn record_ending(
    files: &RunFiles,
    mut record: RunRecord,
    status: RunStatus,
    exit_code: Option<i32>,
    error: String,
) {
    record.status = status;
    record.finished_at = Some(Utc::now());
    record.exit_code = exit_code;
    record.error = Some(error);
    if let Err(err) = files.write_record(&record) {
        eprintln!(
            "quantlens-trigger: run {}: cannot record it as {status}: {}",
            files.run_id(),
            chain(&err)
        );
    }
}

/// The worker's last non-empty line in `worker.log`, shortened: usually its error message.
fn last_log_line(files: &RunFiles) -> Option<String> {
    const MAX: usize = 300;
    let tail = files.read_log_tail(5).ok()?;
    let line = tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(NOTE_PREFIX))?;
    let mut end = line.len().min(MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_owned())
}

/// Starts the daemon's own lines in worker.log.
const NOTE_PREFIX: &str = "quantlens-trigger: ";

/// A line in the run's worker.log saying what the daemon did, so the log tells the whole story.
fn note(files: &RunFiles, message: &str) {
    let _ = files.append_log(&format!("{NOTE_PREFIX}{message}"));
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Signals every process in the group. A group that is already gone is fine.
fn signal_group(group: Pid, signal: Signal) {
    let _ = killpg(group, signal);
}

/// Whether a live process is left in `group`. `kill(-group, 0)` alone also counts zombies,
/// which linger until their new parent reaps them: at once under systemd, but some container
/// inits reap lazily, and waiting for them would hold the run slot for the whole grace period.
fn group_alive(group: Pid) -> bool {
    if killpg(group, None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        live_member(&stat, group.as_raw())
    })
}

/// Parses `/proc/PID/stat` (`pid (comm) state ppid pgrp ...`; comm may hold spaces and
/// parentheses, hence the last `)`): is this a process of `group` that is not a zombie?
fn live_member(stat: &str, group: i32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
    pgrp == Some(group) && !matches!(state, Some("Z" | "X"))
}

/// Runs in the child between fork and exec. Everything above stderr becomes close-on-exec,
/// including descriptors our own parent leaked to us without the flag, so the worker inherits
/// nothing by accident; then the lock descriptor (opened close-on-exec, as all of std's are)
/// loses the flag on the child's copy only, so this one exec inherits it.
fn keep_only_lock_across_exec(lock_fd: RawFd) -> io::Result<()> {
    use nix::libc;
    // SAFETY: both are plain system calls on descriptor numbers, async-signal-safe, with no
    // allocation. close_range needs Linux 5.11; on older kernels it fails and only the leak
    // protection is lost, so its result is ignored.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if libc::fcntl(lock_fd, libc::F_SETFD, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The worker's environment: the allow-listed variables of ours, plus what the hand-over needs.
/// Built once; the daemon never modifies its own environment (unsafe once threads exist).
fn worker_env(
    vars: impl Iterator<Item = (OsString, OsString)>,
    state_dir: &Path,
) -> Vec<(OsString, OsString)> {
    let passed = |name: &OsString| {
        name.to_str().is_some_and(|name| {
            PASSED_VARS.contains(&name)
                || crate::alert::CHANNEL_VARS.contains(&name)
                || PASSED_PREFIXES.iter().any(|p| name.starts_with(p))
        })
    };
    let mut env: Vec<_> = vars.filter(|(name, _)| passed(name)).collect();
    env.extend([
        ("STATE_DIR".into(), state_dir.into()),
        ("QUANTLENS_TRIGGER".into(), TRIGGER.into()),
        ("QUANTLENS_LOG_CAPTURED".into(), "1".into()),
    ]);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunnerConfig {
        RunnerConfig {
            state: StateDir::new("/state"),
            worker: "/bin/quantlens".into(),
            timeout: Duration::from_secs(60),
            grace: Duration::from_millis(1500),
        }
    }

    fn status(raw: i32) -> Result<ExitStatus, String> {
        Ok(ExitStatus::from_raw(raw))
    }

    fn ending(raw: i32, cause: Cause, escalated: bool) -> Ending {
        Ending::new(Ok(ExitStatus::from_raw(raw)), cause, escalated)
    }

    #[test]
    fn exit_descriptions() {
        // Raw wait statuses: code << 8 for an exit, the signal number for a kill.
        let d = describe_exit(&status(2 << 8));
        assert_eq!(d.code, Some(2));
        assert_eq!(d.text, "exited with code 2 (usage or configuration error)");
        let d = describe_exit(&status(9));
        assert_eq!(d.code, Some(137));
        assert_eq!(d.text, "was killed by signal 9 (SIGKILL)");
        assert_eq!(describe_exit(&status(3 << 8)).text, "exited with code 3");
        assert_eq!(describe_exit(&Err("ECHILD".into())).code, None);
    }

    #[test]
    fn a_worker_that_finished_its_record_is_believed() {
        let c = config();
        for status in [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Skipped] {
            let e = ending(1 << 8, Cause::Exited, false);
            let exit = describe_exit(&e.status);
            assert_eq!(verdict(status, &e, &c, &exit, None), None);
        }
    }

    #[test]
    fn an_unfinished_record_becomes_crashed_with_the_reason() {
        let c = config();
        let e = ending(11, Cause::Exited, false);
        let exit = describe_exit(&e.status);
        let (status, error) =
            verdict(RunStatus::Running, &e, &c, &exit, Some("error: boom")).unwrap();
        assert_eq!(status, RunStatus::Crashed);
        assert_eq!(
            error,
            "the worker was killed by signal 11 (SIGSEGV) without finishing the run; \
             last log line: error: boom"
        );
        let e = ending(0, Cause::Shutdown, false);
        let exit = describe_exit(&e.status);
        let (status, error) = verdict(RunStatus::Starting, &e, &c, &exit, None).unwrap();
        assert_eq!(status, RunStatus::Crashed);
        assert!(error.contains("trigger daemon shut down"), "{error}");
    }

    #[test]
    fn a_timeout_wins_over_everything_but_success() {
        let c = config();
        let e = ending(9, Cause::TimedOut, true);
        let exit = describe_exit(&e.status);
        let (status, error) = verdict(RunStatus::Failed, &e, &c, &exit, None).unwrap();
        assert_eq!(status, RunStatus::TimedOut);
        assert_eq!(
            error,
            "timed out after 60 s (SIGTERM to its process group, then SIGKILL after 1.5 s); \
             the worker was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(verdict(RunStatus::Succeeded, &e, &c, &exit, None), None);
    }

    #[test]
    fn proc_stat_parsing() {
        let stat = "4242 (odd) name)) S 1 4240 4240 0 -1 4194560 115 0 0 0";
        assert!(live_member(stat, 4240));
        assert!(!live_member(stat, 4242));
        assert!(!live_member(&stat.replace(" S ", " Z "), 4240));
        assert!(!live_member("garbage", 4240));
        // This process is alive and in its own group.
        assert!(group_alive(nix::unistd::getpgrp()));
    }

    #[test]
    fn worker_env_is_an_allow_list() {
        let ours = [
            ("PATH", "/usr/bin"),
            ("DATA_ROOT", "/srv/data"),
            ("AWS_REGION", "eu-central-1"),
            ("LC_ALL", "C.UTF-8"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_PID", "1"),
            ("QUANTLENS_TRIGGER_TOKEN", "secret"),
            ("QUANTLENS_LOCK_FD", "9"),
            ("STATE_DIR", "/somewhere/else"),
            ("RANDOM_THING", "x"),
            ("QUANTLENS_NOTIFY_SLACK", "https://hooks.example/x"),
            ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = worker_env(ours.into_iter(), Path::new("/srv/state"));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "DATA_ROOT",
                "AWS_REGION",
                "LC_ALL",
                "QUANTLENS_NOTIFY_SLACK",
                "GLIBC_TUNABLES",
                "STATE_DIR",
                "QUANTLENS_TRIGGER",
                "QUANTLENS_LOG_CAPTURED"
            ]
        );
        assert!(env.contains(&("STATE_DIR".into(), "/srv/state".into())));
    }
}
