//! The state directory: where run records live and how readers interpret
//! them. A worker that is SIGKILLed, OOM-killed or loses its machine cannot
//! write its own obituary, so readers infer it: a record that still says
//! Starting/Running is reported as Crashed when its pid is gone *and* nobody
//! holds the run lock. Both are needed because pids get reused (a live pid
//! proves little) and the lock is released only when its holder dies (a free
//! lock alone could be a worker that has not taken it yet). Reading never
//! rewrites a record; the next worker to take the lock does, with
//! [`StateDir::mark_orphans_crashed`].
//!
//! Listing is by directory name, which for generated ids is start time, so no
//! record has to be opened to order or prune runs. A record that cannot be
//! read (missing, truncated by hand, from a future format) is that run's
//! problem: [`StateDir::list_runs`] skips it, and [`StateDir::scan_runs`]
//! returns it as an error next to the good ones.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::{lock, RunFiles, RunId, RunRecord, RunStatus, RunsError};

/// How many run directories the worker keeps by default.
pub const DEFAULT_RETENTION: usize = 200;

const RUNS_DIR: &str = "runs";
const LOCK_FILE: &str = "run.lock";

const DIED: &str = "worker died without finishing";

/// One entry of [`StateDir::scan_runs`]: a run directory and its record or
/// the error reading it.
pub type ScannedRun = (RunId, Result<RunRecord, RunsError>);

const CATALOG_FILE: &str = "catalog.json";
const CATALOG_TMP_FILE: &str = "catalog.json.tmp";

/// A `STATE_DIR`: the lock file, the catalog snapshot and one directory per run.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Names the directory; does no I/O.
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// Creates the root and its `runs` directory if missing.
    pub fn create(&self) -> Result<(), RunsError> {
        let runs = self.runs_dir();
        fs::create_dir_all(&runs).map_err(|e| RunsError::io(runs, e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `catalog.json`: what the last run saw of every asset (see [`StateDir::write_catalog`]).
    pub fn catalog_path(&self) -> PathBuf {
        self.root.join(CATALOG_FILE)
    }

    /// Replaces the catalog snapshot, which the worker writes at the end of each run so that
    /// the daemon can serve the state of every asset without reading the lake (`GET /assets`).
    pub fn write_catalog(&self, catalog: &serde_json::Value) -> Result<(), RunsError> {
        let path = self.catalog_path();
        let mut json =
            serde_json::to_vec_pretty(catalog).map_err(|e| RunsError::io(&path, e.into()))?;
        json.push(b'\n');
        let tmp = self.root.join(CATALOG_TMP_FILE);
        crate::files::replace_file(&self.root, &tmp, &path, &json)
    }

    /// The catalog snapshot as the last run wrote it, or `None` before any run wrote one.
    pub fn read_catalog(&self) -> Result<Option<Vec<u8>>, RunsError> {
        let path = self.catalog_path();
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RunsError::io(path, e)),
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    pub fn run_dir(&self, id: &RunId) -> PathBuf {
        self.runs_dir().join(id.as_str())
    }

    pub fn run_files(&self, id: &RunId) -> RunFiles {
        RunFiles::new(id.clone(), self.run_dir(id))
    }

    /// Reads one record with crash detection applied. `NotFound` if the run
    /// has no record.
    pub fn read_run(&self, id: &RunId) -> Result<RunRecord, RunsError> {
        let mut record = self.run_files(id).read_record()?;
        detect_crash(&mut record, &mut LockProbe::new(self));
        Ok(record)
    }

    /// The newest `limit` readable records, newest first, with crash
    /// detection applied. Unreadable records are skipped (see
    /// [`StateDir::scan_runs`] to see them).
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, RunsError> {
        Ok(self
            .scan_runs(usize::MAX)?
            .into_iter()
            .filter_map(|(_, record)| record.ok())
            .take(limit)
            .collect())
    }

    /// The newest `limit` run directories, newest first, each with its record
    /// (crash detection applied) or the error reading it.
    pub fn scan_runs(&self, limit: usize) -> Result<Vec<ScannedRun>, RunsError> {
        let mut probe = LockProbe::new(self);
        Ok(self
            .runs_oldest_first()?
            .into_iter()
            .rev()
            .take(limit)
            .map(|(id, record)| {
                let record = record.map(|mut r| {
                    detect_crash(&mut r, &mut probe);
                    r
                });
                (id, record)
            })
            .collect())
    }

    /// The newest record with status Succeeded, if any.
    pub fn last_success(&self) -> Result<Option<RunRecord>, RunsError> {
        Ok(self
            .runs_oldest_first()?
            .into_iter()
            .rev()
            .filter_map(|(_, record)| record.ok())
            .find(|record| record.status == RunStatus::Succeeded))
    }

    /// Deletes the oldest run directories until at most `keep` remain, never
    /// deleting `except` (which still counts towards `keep`). Returns how many
    /// were deleted.
    pub fn prune(&self, keep: usize, except: Option<&RunId>) -> Result<usize, RunsError> {
        let ids: Vec<RunId> = self
            .runs_oldest_first()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let excess = ids.len().saturating_sub(keep);
        let mut removed = 0;
        for id in ids.iter().filter(|id| Some(*id) != except).take(excess) {
            let dir = self.run_dir(id);
            match fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                // Someone else (another prune) got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RunsError::io(dir, e)),
            }
        }
        Ok(removed)
    }

    /// For a worker holding the lock: every other record still Starting or
    /// Running belongs to a worker that died, since a live one would hold the
    /// lock. Rewrites each as Crashed and returns their ids. Unreadable
    /// records are left alone.
    pub fn mark_orphans_crashed(&self, current: &RunId) -> Result<Vec<RunId>, RunsError> {
        let mut marked = Vec::new();
        for id in self.run_ids()? {
            if &id == current {
                continue;
            }
            let files = self.run_files(&id);
            let Ok(mut record) = files.read_record() else {
                continue;
            };
            if record.status.is_terminal() {
                continue;
            }
            record.status = RunStatus::Crashed;
            record.finished_at = Some(Utc::now());
            record.error = Some(format!("{DIED} (found by run {current})"));
            files.write_record(&record)?;
            marked.push(id);
        }
        Ok(marked)
    }

    fn runs_dir(&self) -> PathBuf {
        self.root.join(RUNS_DIR)
    }

    /// Every run with its record (or the error reading it), oldest first by
    /// `started_at`: ids given with `--run-id` need not sort by time, and two
    /// generated ids of the same millisecond need not either. Unreadable
    /// records sort first, by id, so pruning removes them early.
    fn runs_oldest_first(&self) -> Result<Vec<ScannedRun>, RunsError> {
        let mut runs: Vec<_> = self
            .run_ids()?
            .into_iter()
            .map(|id| {
                let record = self.run_files(&id).read_record();
                (id, record)
            })
            .collect();
        runs.sort_by(|(a_id, a), (b_id, b)| {
            let started = |r: &Result<RunRecord, RunsError>| r.as_ref().ok().map(|r| r.started_at);
            started(a).cmp(&started(b)).then_with(|| a_id.cmp(b_id))
        });
        Ok(runs)
    }

    /// Run ids of the directories under `runs/`. Entries whose names are
    /// not run ids are not ours and are ignored.
    fn run_ids(&self) -> Result<Vec<RunId>, RunsError> {
        let runs = self.runs_dir();
        let entries = match fs::read_dir(&runs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunsError::io(runs, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RunsError::io(&runs, e))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let id = entry
                .file_name()
                .to_str()
                .and_then(|s| RunId::parse(s).ok());
            if let (true, Some(id)) = (is_dir, id) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Asks at most once per listing whether the lock is free, and only if some
/// record needs the answer.
struct LockProbe<'a> {
    state: &'a StateDir,
    free: Option<bool>,
}

impl<'a> LockProbe<'a> {
    fn new(state: &'a StateDir) -> LockProbe<'a> {
        LockProbe { state, free: None }
    }

    fn is_free(&mut self) -> bool {
        // When the probe itself fails we cannot tell; saying "held" keeps a
        // possibly live run from being reported dead.
        *self
            .free
            .get_or_insert_with(|| matches!(lock::probe(self.state), Ok(None)))
    }
}

fn detect_crash(record: &mut RunRecord, probe: &mut LockProbe<'_>) {
    if !record.status.is_terminal() && !pid_alive(record.pid) && probe.is_free() {
        record.status = RunStatus::Crashed;
        record.error = Some(DIED.to_owned());
    }
}

/// Whether a process with this pid exists. A zombie counts as alive, so a
/// parent must reap its workers for their crashes to show.
fn pid_alive(pid: Option<u32>) -> bool {
    // 0 and values beyond i32 are not pids; kill() would treat them as
    // process groups.
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0) else {
        return false;
    };
    // EPERM means it exists but is not ours.
    kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;
    use crate::testutil::TempDir;
    use crate::RunLock;

    fn id(s: &str) -> RunId {
        RunId::parse(s).unwrap()
    }

    fn state(tmp: &TempDir) -> StateDir {
        let state = StateDir::new(tmp.path().join("state"));
        state.create().unwrap();
        state
    }

    fn put(state: &StateDir, run: &str, status: RunStatus, pid: Option<u32>) -> RunRecord {
        let mut rec = RunRecord::new(id(run), "cli", "*");
        rec.status = status;
        rec.pid = pid;
        state.run_files(&rec.run_id).write_record(&rec).unwrap();
        rec
    }

    /// A pid that existed and is now gone (reaped).
    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn layout() {
        let state = StateDir::new("/srv/ql");
        let r = id("20261129T121500Z-3f9a1c");
        assert_eq!(state.root(), Path::new("/srv/ql"));
        assert_eq!(state.lock_path(), Path::new("/srv/ql/run.lock"));
        assert_eq!(
            state.run_dir(&r),
            Path::new("/srv/ql/runs/20261129T121500Z-3f9a1c")
        );
        let files = state.run_files(&r);
        assert_eq!(files.dir(), state.run_dir(&r));
        assert_eq!(files.record_path(), state.run_dir(&r).join("run.json"));
        assert_eq!(files.events_path(), state.run_dir(&r).join("events.ndjson"));
        assert_eq!(files.log_path(), state.run_dir(&r).join("worker.log"));
    }

    #[test]
    fn missing_state_dir_lists_nothing() {
        let tmp = TempDir::new();
        let state = StateDir::new(tmp.path().join("nope"));
        assert!(state.list_runs(10).unwrap().is_empty());
        assert!(state.last_success().unwrap().is_none());
        assert_eq!(state.prune(0, None).unwrap(), 0);
        assert!(matches!(
            state.read_run(&id("r1")),
            Err(RunsError::NotFound { .. })
        ));
    }

    #[test]
    fn list_is_newest_first_and_limited() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        // Ids given by users need not sort by time: the start time decides.
        for (run, second) in [
            ("zzz-oldest", 0),
            ("aaa-newest", 3),
            ("mmm", 2),
            ("20261129T121500.000Z-ffffff", 1),
        ] {
            let mut rec = RunRecord::new(id(run), "cli", "*");
            rec.status = RunStatus::Succeeded;
            rec.started_at = chrono::DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap();
            state.run_files(&rec.run_id).write_record(&rec).unwrap();
        }
        // Not run directories: ignored.
        fs::write(state.runs_dir().join("stray-file"), "").unwrap();
        fs::create_dir(state.runs_dir().join(".hidden")).unwrap();

        let ids = |v: Vec<RunRecord>| -> Vec<String> {
            v.into_iter().map(|r| r.run_id.to_string()).collect()
        };
        assert_eq!(
            ids(state.list_runs(10).unwrap()),
            [
                "aaa-newest",
                "mmm",
                "20261129T121500.000Z-ffffff",
                "zzz-oldest"
            ]
        );
        assert_eq!(ids(state.list_runs(2).unwrap()), ["aaa-newest", "mmm"]);
        assert!(state.list_runs(0).unwrap().is_empty());
        // Pruning removes the oldest by start time, not by name.
        assert_eq!(state.prune(2, None).unwrap(), 2);
        assert_eq!(ids(state.list_runs(10).unwrap()), ["aaa-newest", "mmm"]);
    }

    #[test]
    fn corrupt_record_is_skipped_by_list_and_reported_by_scan() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        put(&state, "r1", RunStatus::Succeeded, None);
        put(&state, "r3", RunStatus::Failed, None);
        let broken = id("r2");
        fs::create_dir_all(state.run_dir(&broken)).unwrap();
        fs::write(state.run_files(&broken).record_path(), "{not json").unwrap();
        // A directory whose record was never written.
        fs::create_dir_all(state.run_dir(&id("r4"))).unwrap();

        let listed: Vec<_> = state
            .list_runs(2)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id.to_string())
            .collect();
        assert_eq!(listed, ["r3", "r1"], "limit counts readable records");

        // Readable records newest first, then unreadable ones (which sort as oldest).
        let scanned = state.scan_runs(10).unwrap();
        assert_eq!(scanned.len(), 4);
        assert!(scanned[0].1.is_ok() && scanned[1].1.is_ok());
        assert!(
            matches!(scanned[2], (ref i, Err(RunsError::NotFound { .. })) if i.as_str() == "r4")
        );
        match &scanned[3] {
            (i, Err(RunsError::Corrupt { path, .. })) => {
                assert_eq!(i.as_str(), "r2");
                assert_eq!(path, &state.run_files(&broken).record_path());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state.read_run(&broken),
            Err(RunsError::Corrupt { .. })
        ));
    }

    #[test]
    fn last_success_is_the_newest_succeeded() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        assert!(state.last_success().unwrap().is_none());
        put(&state, "r1", RunStatus::Succeeded, None);
        put(&state, "r2", RunStatus::Succeeded, None);
        put(&state, "r3", RunStatus::Failed, None);
        put(&state, "r4", RunStatus::Running, Some(std::process::id()));
        let last = state.last_success().unwrap().unwrap();
        assert_eq!(last.run_id.as_str(), "r2");
    }

    #[test]
    fn prune_keeps_the_newest_and_never_the_current() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        for i in 0..6 {
            put(&state, &format!("r{i}"), RunStatus::Succeeded, None);
        }
        // The current run is the oldest: it survives and counts towards keep.
        let current = id("r0");
        assert_eq!(state.prune(3, Some(&current)).unwrap(), 3);
        let left: Vec<_> = state
            .run_ids()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(left, ["r0", "r4", "r5"]);

        assert_eq!(state.prune(3, Some(&current)).unwrap(), 0);
        assert_eq!(state.prune(0, Some(&current)).unwrap(), 2);
        let left: Vec<_> = state
            .run_ids()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(left, ["r0"]);
        assert_eq!(state.prune(0, None).unwrap(), 1);
        assert!(state.run_ids().unwrap().is_empty());
    }

    #[test]
    fn dead_worker_with_free_lock_reads_as_crashed_without_rewriting() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let rec = put(&state, "r1", RunStatus::Running, Some(dead_pid()));
        put(&state, "r2", RunStatus::Starting, None);
        let before = fs::read(state.run_files(&rec.run_id).record_path()).unwrap();

        let read = state.read_run(&rec.run_id).unwrap();
        assert_eq!(read.status, RunStatus::Crashed);
        assert_eq!(read.error.as_deref(), Some(DIED));
        let listed = state.list_runs(10).unwrap();
        assert!(listed.iter().all(|r| r.status == RunStatus::Crashed));

        let after = fs::read(state.run_files(&rec.run_id).record_path()).unwrap();
        assert_eq!(before, after, "reading must not rewrite the record");
    }

    #[test]
    fn dead_pid_but_held_lock_stays_running() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let rec = put(&state, "r1", RunStatus::Running, Some(dead_pid()));
        let _lock = RunLock::try_acquire(&state, &id("r2")).unwrap();
        assert_eq!(
            state.read_run(&rec.run_id).unwrap().status,
            RunStatus::Running
        );
        assert_eq!(state.list_runs(1).unwrap()[0].status, RunStatus::Running);
    }

    #[test]
    fn live_pid_with_free_lock_stays_running() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let rec = put(&state, "r1", RunStatus::Starting, Some(std::process::id()));
        assert_eq!(
            state.read_run(&rec.run_id).unwrap().status,
            RunStatus::Starting
        );
    }

    #[test]
    fn terminal_records_are_never_reinterpreted() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let rec = put(&state, "r1", RunStatus::Failed, Some(dead_pid()));
        assert_eq!(state.read_run(&rec.run_id).unwrap(), rec);
    }

    #[test]
    fn orphans_are_marked_crashed_by_the_lock_holder() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let current = id("r9");
        put(&state, "r1", RunStatus::Running, Some(dead_pid()));
        put(&state, "r2", RunStatus::Starting, None);
        let done = put(&state, "r3", RunStatus::Succeeded, None);
        put(&state, "r9", RunStatus::Running, Some(std::process::id()));
        let _lock = RunLock::try_acquire(&state, &current).unwrap();

        let marked = state.mark_orphans_crashed(&current).unwrap();
        assert_eq!(marked, vec![id("r1"), id("r2")]);
        for orphan in &marked {
            let rec = state.run_files(orphan).read_record().unwrap();
            assert_eq!(rec.status, RunStatus::Crashed);
            assert!(rec.finished_at.is_some());
            assert_eq!(
                rec.error.as_deref(),
                Some("worker died without finishing (found by run r9)")
            );
        }
        assert_eq!(state.run_files(&done.run_id).read_record().unwrap(), done);
        assert_eq!(
            state.run_files(&current).read_record().unwrap().status,
            RunStatus::Running
        );
        assert!(state.mark_orphans_crashed(&current).unwrap().is_empty());
    }

    #[test]
    fn killed_worker_process_is_detected_as_crashed() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        // A "worker" that holds the lock: a child whose stdin is the locked
        // open file description, the way a worker holds its own.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(state.lock_path())
            .unwrap();
        lock::flock(&file, nix::libc::LOCK_EX | nix::libc::LOCK_NB).unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::from(file))
            .spawn()
            .unwrap();
        let rec = put(&state, "r1", RunStatus::Running, Some(child.id()));
        assert_eq!(
            state.read_run(&rec.run_id).unwrap().status,
            RunStatus::Running
        );

        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            state.read_run(&rec.run_id).unwrap().status,
            RunStatus::Crashed
        );
    }
}
