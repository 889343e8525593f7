//! Taking the run lock on the request path. It is the same `flock(2)` on `STATE_DIR/run.lock`
//! as `quantlens_runs::RunLock`, so the daemon, the timer's worker and an operator's CLI exclude
//! one another, but it answers at once: `RunLock::try_acquire` sleeps up to ~50 ms to ride out
//! readers' shared probes, which would stall this single-threaded daemon under a burst of POSTs.
//! Here a refused exclusive lock is followed by one shared probe: if that succeeds nobody holds
//! the lock exclusively (only a reader was in the way) and we try again; if it fails a run is in
//! progress and we say so immediately.
//!
//! The open file is handed to the worker (see `supervise`), so like `RunLock` it is released by
//! closing, never with `LOCK_UN`, which would unlock the worker's copy too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc::{LOCK_EX, LOCK_NB, LOCK_SH};
use quantlens_runs::{RunId, StateDir};

/// How often to retry when only shared probes were in the way. A probe holds its lock for
/// microseconds, so a couple of retries are plenty.
const PROBE_RETRIES: u32 = 3;

/// The most of the lock file we read as the holder's run id.
const HOLDER_MAX: usize = 256;

/// The outcome of an attempt.
#[derive(Debug)]
pub enum Attempt {
    /// We hold the lock through this open file, with our run id written into it.
    Acquired(File),
    /// Another open file holds it; the run id it wrote, if any.
    Held(Option<String>),
}

/// Tries to take the run lock without waiting and, on success, records `run_id` as the holder.
pub fn try_lock(state: &StateDir, run_id: &RunId) -> io::Result<Attempt> {
    let path = state.lock_path();
    // std opens with O_CLOEXEC: only the worker we hand it to explicitly inherits it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let mut retries = 0;
    loop {
        match flock(&file, LOCK_EX | LOCK_NB) {
            Ok(()) => break,
            Err(Errno::EWOULDBLOCK) => {
                if retries == PROBE_RETRIES || exclusively_held(&path)? {
                    return Ok(Attempt::Held(read_holder(&file)));
                }
                retries += 1;
                std::thread::yield_now();
            }
            Err(errno) => return Err(errno.into()),
        }
    }
    file.set_len(0)?;
    file.write_all_at(format!("{run_id}\n").as_bytes(), 0)?;
    Ok(Attempt::Acquired(file))
}

/// Whether some open file holds an exclusive lock: a shared lock is then refused. The probe is
/// its own open file, released when it closes.
fn exclusively_held(path: &Path) -> io::Result<bool> {
    let probe = File::open(path)?;
    match flock(&probe, LOCK_SH | LOCK_NB) {
        Ok(()) => Ok(false),
        Err(Errno::EWOULDBLOCK) => Ok(true),
        Err(errno) => Err(errno.into()),
    }
}

fn flock(file: &File, operation: nix::libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    Errno::result(unsafe { nix::libc::flock(file.as_raw_fd(), operation) }).map(drop)
}

fn read_holder(file: &File) -> Option<String> {
    let mut buf = [0; HOLDER_MAX];
    let n = file.read_at(&mut buf, 0).ok()?;
    let holder = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    Some(holder).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use quantlens_runs::RunLock;

    fn id(s: &str) -> RunId {
        RunId::parse(s).unwrap()
    }

    #[test]
    fn acquires_writes_holder_and_excludes_others() {
        let tmp = TempDir::new();
        let state = StateDir::new(tmp.path());
        let Attempt::Acquired(file) = try_lock(&state, &id("run-a")).unwrap() else {
            panic!("free lock not acquired");
        };
        assert_eq!(
            std::fs::read_to_string(state.lock_path()).unwrap(),
            "run-a\n"
        );
        // The worker crate's view agrees, and so does a second attempt of ours.
        assert_eq!(RunLock::holder(&state).unwrap().as_deref(), Some("run-a"));
        match try_lock(&state, &id("run-b")).unwrap() {
            Attempt::Held(holder) => assert_eq!(holder.as_deref(), Some("run-a")),
            other => panic!("{other:?}"),
        }
        drop(file);
        assert!(matches!(
            try_lock(&state, &id("run-b")).unwrap(),
            Attempt::Acquired(_)
        ));
    }

    #[test]
    fn a_lock_taken_by_the_runs_crate_is_respected_and_vice_versa() {
        let tmp = TempDir::new();
        let state = StateDir::new(tmp.path());
        let theirs = RunLock::try_acquire(&state, &id("cli-run")).unwrap();
        match try_lock(&state, &id("http-run")).unwrap() {
            Attempt::Held(holder) => assert_eq!(holder.as_deref(), Some("cli-run")),
            other => panic!("{other:?}"),
        }
        drop(theirs);
        let ours = try_lock(&state, &id("http-run")).unwrap();
        assert!(RunLock::try_acquire(&state, &id("cli-run")).is_err());
        drop(ours);
    }

    #[test]
    fn a_shared_probe_alone_does_not_look_like_a_run() {
        let tmp = TempDir::new();
        let state = StateDir::new(tmp.path());
        std::fs::write(state.lock_path(), "old-run\n").unwrap();
        let reader = File::open(state.lock_path()).unwrap();
        flock(&reader, LOCK_SH | LOCK_NB).unwrap();
        // A reader that never lets go (real probes hold it for microseconds) exhausts the
        // retries: the answer must still come at once, without blocking the daemon.
        let started = std::time::Instant::now();
        let attempt = try_lock(&state, &id("new-run")).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert!(matches!(attempt, Attempt::Held(_)));
        drop(reader);
        assert!(matches!(
            try_lock(&state, &id("new-run")).unwrap(),
            Attempt::Acquired(_)
        ));
    }
}
