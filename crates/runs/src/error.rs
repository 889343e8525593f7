//! The one error type of this crate. Each variant carries what a person needs
//! to act on it (the path, the run id, the lock holder); the OS or JSON error
//! underneath is kept as the source rather than repeated in the message, so
//! chain-printing reporters do not show it twice.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing run state.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// A file system call on `path` failed.
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `path` exists but is not a valid run record.
    #[error("corrupt run record {}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// There is no record for this run.
    #[error("run {run_id} not found")]
    NotFound { run_id: String },
    /// A user-supplied run id that could escape the runs directory or is
    /// otherwise not one we would generate.
    #[error("invalid run id {value:?}: expected 1 to 64 characters from [A-Za-z0-9._-], starting with a letter or digit")]
    InvalidRunId { value: String },
    /// Another process holds the state directory's lock. `holder` is the run
    /// id it wrote into the lock file, when it had written one.
    #[error("{}", locked_message(holder.as_deref()))]
    Locked { holder: Option<String> },
    /// `QUANTLENS_LOCK_FD` was set but does not name a usable lock.
    #[error("inherited lock ({}): {reason}", crate::LOCK_FD_ENV)]
    InheritedLock { reason: String },
}

impl RunsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> RunsError {
        RunsError::Io {
            path: path.into(),
            source,
        }
    }

    /// The file system is full (or over quota): nothing is wrong with the request or the
    /// records, and trying again helps only once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, RunsError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }
}

fn locked_message(holder: Option<&str>) -> String {
    match holder {
        Some(id) => format!("another run holds the lock: {id}"),
        None => "another run holds the lock".to_owned(),
    }
}

/// `err` and its sources, joined by ": ".
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_is_involved() {
        let err = RunsError::io(
            "/state/runs/x/run.json",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(err.to_string(), "I/O error on /state/runs/x/run.json");
        assert!(std::error::Error::source(&err).is_some());

        let err = RunsError::Locked {
            holder: Some("20261129T121500Z-3f9a1c".into()),
        };
        assert_eq!(
            err.to_string(),
            "another run holds the lock: 20261129T121500Z-3f9a1c"
        );
        let err = RunsError::Locked { holder: None };
        assert_eq!(err.to_string(), "another run holds the lock");
        assert!(!err.is_no_space());
        let full = RunsError::io("/state", std::io::Error::from_raw_os_error(28));
        assert!(full.is_no_space());
    }
}
