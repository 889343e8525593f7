//! One materialisation at a time per state directory, enforced with
//! `flock(2)` on `STATE_DIR/run.lock`. flock rather than a pid file because
//! the kernel drops the lock when the last descriptor of the open file goes
//! away, so a SIGKILLed or OOM-killed worker cannot leave a stale lock, and
//! the descriptor can be handed from the trigger daemon to the worker it
//! spawns (`QUANTLENS_LOCK_FD`) so there is no window in which neither holds
//! it. The file's content, the holder's run id, is only informational: it
//! lets a loser say who is in the way.
//!
//! Readers probe with a shared non-blocking lock released at once. A worker
//! racing such a probe could see a spurious "locked", so a refused exclusive
//! lock is followed by a shared probe of our own, which only an exclusive
//! holder refuses: if it succeeds a reader was in the way and we try again at
//! once; if not a run holds the lock and we say so immediately, without
//! sleeping (the trigger daemon answers requests on this path).
//!
//! The lock is released by closing, never by `LOCK_UN`: unlocking acts on the
//! open file shared with every copy of the descriptor, so a parent dropping
//! its [`RunLock`] after handing a copy to a worker would unlock the worker.
//! That is also why nix's `Flock` (which unlocks on drop) is not used.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::libc::{LOCK_EX, LOCK_NB, LOCK_SH};

use crate::{RunId, RunsError, StateDir};

/// Environment variable through which a parent hands over a held lock.
pub const LOCK_FD_ENV: &str = "QUANTLENS_LOCK_FD";

/// Retries when only readers' probes were in the way; a probe holds its lock
/// for microseconds, so a few are plenty.
const PROBE_RETRIES: u32 = 3;

/// The most of the lock file we read as the holder's id.
const HOLDER_MAX: usize = 256;

/// The held run lock. Dropping it closes the descriptor, which frees the
/// lock unless a copy of it was handed to another process (then that process
/// holds it until it exits or closes its copy).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock and writes `run_id` into the lock file. `Locked` with
    /// the id found in the file if another process (or another open file in
    /// this one) holds it. Creates the state directory if needed.
    pub fn try_acquire(state: &StateDir, run_id: &RunId) -> Result<RunLock, RunsError> {
        state.create()?;
        let path = state.lock_path();
        // std opens everything O_CLOEXEC, so workers' children never inherit
        // the lock and keep it alive after the worker dies.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RunsError::io(&path, e))?;
        let mut retries = 0;
        loop {
            match flock(&file, LOCK_EX | LOCK_NB) {
                Ok(()) => break,
                Err(Errno::EWOULDBLOCK) => {
                    let held = exclusively_held(&path).map_err(|e| RunsError::io(&path, e))?;
                    if held || retries == PROBE_RETRIES {
                        let holder = read_holder(&file).filter(|h| !h.is_empty());
                        return Err(RunsError::Locked { holder });
                    }
                    retries += 1;
                    std::thread::yield_now();
                }
                Err(errno) => return Err(RunsError::io(path, errno.into())),
            }
        }
        let mut lock = RunLock { file, path };
        lock.set_holder(run_id)?;
        Ok(lock)
    }

    /// The open lock file, for handing the lock to a child process (which
    /// then holds it through its copy of the descriptor). Closing this copy
    /// later does not unlock the child's.
    pub fn into_file(self) -> File {
        self.file
    }

    /// The lock a parent took and passed as the descriptor number in
    /// `QUANTLENS_LOCK_FD`, or `None` when the variable is unset or empty.
    /// The descriptor must be an open file on `STATE_DIR/run.lock` (same
    /// device and inode) whose open file holds the lock, or that can take it
    /// at once; it is made close-on-exec so it goes no further. On error the
    /// descriptor is left open and untouched apart from that flag.
    ///
    /// Whoever spawns further processes should remove the variable from
    /// their environment; the descriptor itself does not survive exec.
    pub fn inherited(state: &StateDir) -> Result<Option<RunLock>, RunsError> {
        inherited_from(state, std::env::var_os(LOCK_FD_ENV))
    }

    /// Replaces the lock file's content with `run_id`.
    pub fn set_holder(&mut self, run_id: &RunId) -> Result<(), RunsError> {
        let content = format!("{run_id}\n");
        self.file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(content.as_bytes(), 0))
            .map_err(|e| RunsError::io(&self.path, e))
    }

    /// The locked descriptor, e.g. to pass on to a child explicitly.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Whether some process holds the lock right now: `Some(run id)` (empty
    /// if it has not written one) or `None` if free. A missing lock file is
    /// free. This process's own [`RunLock`] counts as a holder.
    pub fn holder(state: &StateDir) -> Result<Option<String>, RunsError> {
        probe(state)
    }
}

/// A non-blocking shared-lock probe, released at once.
pub(crate) fn probe(state: &StateDir) -> Result<Option<String>, RunsError> {
    let path = state.lock_path();
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RunsError::io(path, e)),
    };
    // Closing `file` on return releases the shared lock if we got it.
    match flock(&file, LOCK_SH | LOCK_NB) {
        Ok(()) => Ok(None),
        Err(Errno::EWOULDBLOCK) => Ok(Some(read_holder(&file).unwrap_or_default())),
        Err(errno) => Err(RunsError::io(path, errno.into())),
    }
}

/// `flock(2)` on the open file behind `file`.
pub(crate) fn flock(file: &File, operation: nix::libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock only takes the descriptor number, which `file` keeps open.
    Errno::result(unsafe { nix::libc::flock(file.as_raw_fd(), operation) }).map(drop)
}

/// Whether some open file holds the lock exclusively: a shared lock is then
/// refused. The probe is its own open file, released when it closes.
fn exclusively_held(path: &std::path::Path) -> io::Result<bool> {
    let probe = File::open(path)?;
    match flock(&probe, LOCK_SH | LOCK_NB) {
        Ok(()) => Ok(false),
        Err(Errno::EWOULDBLOCK) => Ok(true),
        Err(errno) => Err(errno.into()),
    }
}

/// The run id written in the lock file, if it can be read.
fn read_holder(file: &File) -> Option<String> {
    let mut buf = [0; HOLDER_MAX];
    let n = file.read_at(&mut buf, 0).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

pub(crate) fn inherited_from(
    state: &StateDir,
    value: Option<OsString>,
) -> Result<Option<RunLock>, RunsError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let fd = text
        .parse::<RawFd>()
        .map_err(|_| RunsError::InheritedLock {
            reason: format!("{text:?} is not a file descriptor number"),
        })?;
    adopt_fd(state, fd).map(Some)
}

/// Checks that `fd` is the state dir's lock file and takes ownership of it.
pub(crate) fn adopt_fd(state: &StateDir, fd: RawFd) -> Result<RunLock, RunsError> {
    let path = state.lock_path();
    let fail = |reason: String| RunsError::InheritedLock { reason };
    if fd <= 2 {
        return Err(fail(format!(
            "fd {fd} is stdin, stdout or stderr, not {}",
            path.display()
        )));
    }
    // Asking about a descriptor number is harmless even if it is not open;
    // this is what makes borrowing it below sound.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(fail(format!(
            "fd {fd} is not open ({}), expected {}",
            Errno::last(),
            path.display()
        )));
    }
    // SAFETY: the descriptor is open (checked above) and this borrow ends
    // before anything in this function could close it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let ours =
        nix::sys::stat::fstat(borrowed).map_err(|e| fail(format!("fd {fd}: fstat failed: {e}")))?;
    let theirs = std::fs::metadata(&path)
        .map_err(|e| fail(format!("cannot stat {}: {e}", path.display())))?;
    if ours.st_dev as u64 != theirs.dev() || ours.st_ino as u64 != theirs.ino() {
        return Err(fail(format!(
            "fd {fd} is not {} (different file)",
            path.display()
        )));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| fail(format!("fd {fd}: cannot set FD_CLOEXEC: {e}")))?;

    // SAFETY: the parent handed this descriptor to us through the
    // environment, and it is the lock file, not one of our own files.
    let file = unsafe { File::from_raw_fd(fd) };
    // Re-locking an open file that already holds LOCK_EX succeeds; failing
    // means some other open file holds it.
    match flock(&file, LOCK_EX | LOCK_NB) {
        Ok(()) => Ok(RunLock { file, path }),
        Err(errno) => {
            let holder = read_holder(&file).unwrap_or_default();
            // Leave the descriptor as we found it; ownership was assumed
            // only for success.
            let _ = file.into_raw_fd();
            Err(fail(if errno == Errno::EWOULDBLOCK {
                format!(
                    "fd {fd} does not hold the lock on {}; another open file does (holder {holder:?})",
                    path.display()
                )
            } else {
                format!("fd {fd}: flock on {} failed: {errno}", path.display())
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    use std::time::Instant;

    use super::*;
    use crate::testutil::TempDir;

    fn id(s: &str) -> RunId {
        RunId::parse(s).unwrap()
    }

    fn state(tmp: &TempDir) -> StateDir {
        StateDir::new(tmp.path().join("state"))
    }

    fn open_lock_file(state: &StateDir) -> File {
        state.create().unwrap();
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(state.lock_path())
            .unwrap()
    }

    /// Locks `file`'s open file description without tying the lock to a
    /// Rust value, as a parent process would before handing it over.
    fn raw_lock(file: &File) {
        flock(file, LOCK_EX | LOCK_NB).unwrap();
    }

    fn fd_is_open(fd: RawFd) -> bool {
        unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) != -1 }
    }

    /// Waits for the lock to become free: a process forked concurrently by
    /// another test may hold a copy of our descriptor until it execs.
    fn wait_free(state: &StateDir) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if RunLock::holder(state).unwrap().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn acquire_writes_holder_and_drop_releases() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        assert_eq!(RunLock::holder(&state).unwrap(), None, "no lock file yet");
        let lock = RunLock::try_acquire(&state, &id("run-a")).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.lock_path()).unwrap(),
            "run-a\n"
        );
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-a"));
        assert!(fd_is_open(lock.fd().as_raw_fd()));
        drop(lock);
        assert_eq!(RunLock::holder(&state).unwrap(), None);
    }

    #[test]
    fn contention_reports_the_holder() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let a = RunLock::try_acquire(&state, &id("run-a")).unwrap();
        match RunLock::try_acquire(&state, &id("run-b")) {
            Err(e @ RunsError::Locked { .. }) => {
                assert_eq!(e.to_string(), "another run holds the lock: run-a");
            }
            other => panic!("{other:?}"),
        }
        // The loser must not have clobbered the holder's id.
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-a"));
        drop(a);
        let b = RunLock::try_acquire(&state, &id("run-b")).unwrap();
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-b"));
        drop(b);
    }

    #[test]
    fn holder_unknown_when_lock_file_is_empty() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let file = open_lock_file(&state);
        raw_lock(&file);
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some(""));
        assert!(matches!(
            RunLock::try_acquire(&state, &id("run-b")),
            Err(RunsError::Locked { holder: None })
        ));
        drop(file);
        assert!(RunLock::try_acquire(&state, &id("run-b")).is_ok());
    }

    #[test]
    fn lock_held_by_a_child_is_freed_when_it_is_sigkilled() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let file = open_lock_file(&state);
        raw_lock(&file);
        file.write_all_at(b"child-run\n", 0).unwrap();
        // The child's stdin becomes the locked open file; our copy is closed
        // when the Command is dropped at the end of the statement.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::from(file))
            .spawn()
            .unwrap();

        assert_eq!(
            RunLock::holder(&state).unwrap().as_deref(),
            Some("child-run")
        );
        match RunLock::try_acquire(&state, &id("run-b")) {
            Err(RunsError::Locked { holder }) => assert_eq!(holder.as_deref(), Some("child-run")),
            other => panic!("{other:?}"),
        }

        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(wait_free(&state), "lock still held after its holder died");
        let lock = RunLock::try_acquire(&state, &id("run-b")).unwrap();
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-b"));
        drop(lock);
    }

    #[test]
    fn lock_handed_to_a_child_outlives_the_parents_copy() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let lock = RunLock::try_acquire(&state, &id("handed-over")).unwrap();
        let copy = lock.fd().try_clone_to_owned().unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::from(copy))
            .spawn()
            .unwrap();
        // Dropping the parent's lock closes its descriptor only; the child's
        // copy of the open file still holds the lock.
        drop(lock);
        assert_eq!(
            RunLock::holder(&state).unwrap().as_deref(),
            Some("handed-over")
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(wait_free(&state));
    }

    #[test]
    fn inherited_without_env_is_none() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        assert!(inherited_from(&state, None).unwrap().is_none());
        assert!(inherited_from(&state, Some("".into())).unwrap().is_none());
        if std::env::var_os(LOCK_FD_ENV).is_none() {
            assert!(RunLock::inherited(&state).unwrap().is_none());
        }
        assert!(matches!(
            inherited_from(&state, Some("seven".into())),
            Err(RunsError::InheritedLock { .. })
        ));
    }

    #[test]
    fn adopts_a_locked_descriptor() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let file = open_lock_file(&state);
        raw_lock(&file);
        let fd = file.into_raw_fd();
        // Simulate a descriptor that arrived without close-on-exec.
        fcntl(
            unsafe { BorrowedFd::borrow_raw(fd) },
            FcntlArg::F_SETFD(FdFlag::empty()),
        )
        .unwrap();

        let mut lock = inherited_from(&state, Some(fd.to_string().into()))
            .unwrap()
            .unwrap();
        assert_eq!(lock.fd().as_raw_fd(), fd);
        let flags = fcntl(lock.fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));

        lock.set_holder(&id("run-h")).unwrap();
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-h"));
        assert!(matches!(
            RunLock::try_acquire(&state, &id("run-x")),
            Err(RunsError::Locked { holder: Some(h) }) if h == "run-h"
        ));
        drop(lock);
        assert!(!fd_is_open(fd), "the lock owns and closes the descriptor");
        assert_eq!(RunLock::holder(&state).unwrap(), None);
    }

    #[test]
    fn refuses_a_descriptor_of_another_file() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        state.create().unwrap();
        let _lock_file = open_lock_file(&state);
        let other = File::create(tmp.path().join("other")).unwrap();
        let fd = other.as_raw_fd();
        match adopt_fd(&state, fd) {
            Err(RunsError::InheritedLock { reason }) => {
                assert!(reason.contains("different file"), "{reason}");
                assert!(reason.contains("run.lock"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(fd_is_open(fd), "a refused descriptor stays open");
    }

    #[test]
    fn refuses_a_descriptor_that_does_not_hold_the_lock() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        let holder = RunLock::try_acquire(&state, &id("run-a")).unwrap();
        let stray = open_lock_file(&state);
        let fd = stray.as_raw_fd();
        match adopt_fd(&state, fd) {
            Err(RunsError::InheritedLock { reason }) => {
                assert!(reason.contains("does not hold the lock"), "{reason}");
                assert!(reason.contains("run-a"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(fd_is_open(fd));
        drop(stray);
        drop(holder);
    }

    #[test]
    fn refuses_closed_and_standard_descriptors() {
        let tmp = TempDir::new();
        let state = state(&tmp);
        for fd in [0, 1, 2, -1] {
            assert!(matches!(
                adopt_fd(&state, fd),
                Err(RunsError::InheritedLock { .. })
            ));
        }
        let file = open_lock_file(&state);
        let fd = file.as_raw_fd();
        drop(file);
        // The number may be reused by a concurrent test; only check that a
        // closed or foreign descriptor is refused, never adopted.
        assert!(adopt_fd(&state, fd).is_err() || fd_is_open(fd));
    }

    #[test]
    fn a_readers_probe_alone_does_not_look_like_a_run() {
        let tmp = TempDir::new();
        let state = StateDir::new(tmp.path());
        state.create().unwrap();
        std::fs::write(state.lock_path(), "old-run\n").unwrap();
        let reader = File::open(state.lock_path()).unwrap();
        flock(&reader, LOCK_SH | LOCK_NB).unwrap();
        // A reader that never lets go (real probes hold it for microseconds) exhausts the
        // retries: the answer is still "locked", and it comes without sleeping.
        let started = std::time::Instant::now();
        assert!(matches!(
            RunLock::try_acquire(&state, &RunId::parse("new-run").unwrap()),
            Err(RunsError::Locked { .. })
        ));
        assert!(started.elapsed() < Duration::from_millis(50));
        drop(reader);
        let lock = RunLock::try_acquire(&state, &RunId::parse("new-run").unwrap()).unwrap();
        // Handed over as a plain file, it still excludes everyone else.
        let file = lock.into_file();
        assert!(RunLock::try_acquire(&state, &RunId::parse("other").unwrap()).is_err());
        drop(file);
        assert!(RunLock::try_acquire(&state, &RunId::parse("other").unwrap()).is_ok());
    }
}
