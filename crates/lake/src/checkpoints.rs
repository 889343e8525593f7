//! When tables write their checkpoints. Opening a table replays its commits since the last
//! checkpoint, so each table checkpoints every `delta.checkpointInterval` commits (10 here, or
//! fewer if a table's property says so).
//! delta-rs writes one inside the commit that reaches a multiple of the interval; but a daily run
//! commits once to every table, so all six reached it in the same run, which then took about
//! 250 ms longer than the runs around it, every interval. The lake writes them instead, at most one
//! per process: a table that is due when another was checkpointed by this process waits for a
//! later commit, so the tables' checkpoints spread over consecutive runs. A table a whole interval
//! past due is checkpointed anyway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deltalake::TableProperty;
use object_store::ObjectStoreExt;

use crate::error::delta;
use crate::table::CHECKPOINT_INTERVAL;
use crate::{At, Lake, LakeError, Table};

/// The interval Delta's protocol assumes when a table sets none.
const DEFAULT_INTERVAL: i64 = 100;

/// Whether this process has written a checkpoint yet (shared by every clone of a [`Lake`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct CheckpointTurn(Arc<AtomicBool>);

impl Lake {
    /// Writes the checkpoint of the table for `key` at its latest version when it is due: an
    /// interval of commits since its last checkpoint, and no checkpoint written by this process
    /// yet (or two intervals). Returns the version checkpointed, if one was.
    pub async fn checkpoint_if_due(&self, key: &str) -> Result<Option<i64>, LakeError> {
        let Some(table) = self.load(key, At::Latest).await? else {
            return Ok(None);
        };
        // Tables made when the lake's interval was longer keep that property; the lake's own
        // interval applies to them too (it is the sole writer), a shorter one of theirs still wins.
        let interval = table.checkpoint_interval()?.min(CHECKPOINT_INTERVAL);
        let behind = table.version() - table.last_checkpoint().await?.unwrap_or(-1);
        let my_turn = !self.checkpoint_turn.0.load(Ordering::SeqCst);
        if behind < interval || !(my_turn || behind >= 2 * interval) {
            return Ok(None);
        }
        deltalake::checkpoints::create_checkpoint(&table.inner, None)
            .await
            .map_err(delta(key))?;
        self.checkpoint_turn.0.store(true, Ordering::SeqCst);
        Ok(Some(table.version()))
    }
}

impl Table {
    /// Commits between checkpoints, as the table's configuration says.
    fn checkpoint_interval(&self) -> Result<i64, LakeError> {
        let snapshot = self.inner.snapshot().map_err(delta(self.key()))?;
        Ok(snapshot
            .metadata()
            .configuration()
            .get(TableProperty::CheckpointInterval.as_ref())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_INTERVAL))
    }

    /// The version of the table's last checkpoint, from `_delta_log/_last_checkpoint`.
    pub(crate) async fn last_checkpoint(&self) -> Result<Option<i64>, LakeError> {
        let store = self.inner.log_store();
        let path = store.log_path().clone().join("_last_checkpoint");
        match store.object_store(None).get(&path).await {
            Ok(found) => {
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| delta(self.key())(e.into()))?;
                Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|hint| hint.get("version").and_then(|v| v.as_i64())))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(delta(self.key())(err.into())),
        }
    }
}
