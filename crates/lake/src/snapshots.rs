//! The table snapshots this process has loaded, the newest per table, shared by every clone of a
//! [`crate::Lake`]. Loading a Delta table reads its last checkpoint and every commit since; a run
//! looks at each table many times (the asset writing it, the assets reading it, freshness, the
//! catalog at the end), and loading from scratch each time read every silver commit file 26 times
//! in a daily run. A later load starts from the cached snapshot and reads only the commits made
//! since (delta-rs' `update_incremental`), so each commit file is read about once per process.
//! A commit keeps the snapshot it produced. A process that holds the run lock is the lake's only
//! writer ([`crate::Lake::assume_sole_writer`]): its cached snapshots are the latest, and loading
//! the latest version costs nothing (before, each such load listed the log and replayed the
//! commits since the last checkpoint, 35 times in a daily run). A snapshot older than the cached
//! one is loaded from scratch, as is any table whose cached snapshot cannot be brought forward. The commit files themselves are kept by the store the
//! tables are opened with ([`crate::log_cache`]), which this cache owns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use deltalake::DeltaTable;

use crate::log_cache::CommitFiles;

#[derive(Clone, Default)]
pub struct Snapshots {
    tables: Arc<Mutex<HashMap<String, DeltaTable>>>,
    /// Set while this process is the lake's only writer: the cached snapshots are the latest.
    sole_writer: Arc<AtomicBool>,
    pub(crate) commit_files: CommitFiles,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.lock().len();
        write!(f, "Snapshots({tables} table(s))")
    }
}

impl Snapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeltaTable>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The snapshot of `key` at `version` (the newest when `None`) from the cached one, or `None`
    /// when there is none to start from: not cached, newer than asked, or not updatable.
    pub(crate) async fn load(&self, key: &str, version: Option<u64>) -> Option<DeltaTable> {
        let mut table = self.lock().get(key).cloned()?;
        let have = table.version()?;
        match version {
            Some(wanted) if wanted < have => return None,
            Some(wanted) if wanted == have => return Some(table),
            None if self.sole_writer.load(Ordering::SeqCst) => return Some(table),
            _ => {}
        }
        table.update_incremental(version).await.ok()?;
        if version.is_some_and(|wanted| table.version() != Some(wanted)) {
            return None;
        }
        self.remember(key, &table);
        Some(table)
    }

    /// Keeps `table` as the snapshot of `key` unless a newer one is cached.
    pub(crate) fn remember(&self, key: &str, table: &DeltaTable) {
        let mut cached = self.lock();
        let newer = cached
            .get(key)
            .is_none_or(|old| old.version() <= table.version());
        if newer {
            cached.insert(key.to_string(), table.clone());
        }
    }

    /// From now on the cached snapshot of a table is its latest: no other process commits to the
    /// lake, and this one keeps the snapshot after each of its commits.
    pub(crate) fn assume_sole_writer(&self) {
        self.sole_writer.store(true, Ordering::SeqCst);
    }

    /// Drops every cached snapshot: after something other than a commit changed the tables'
    /// logs (a restore replaces them).
    pub fn forget(&self) {
        self.lock().clear();
        self.commit_files.clear();
    }
}
