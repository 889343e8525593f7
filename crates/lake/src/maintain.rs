//! Weekly table maintenance: compaction, checkpoint, vacuum. Daily appends leave one small file
//! per run and a growing log; compaction rewrites a table's small files into few large ones (one
//! `OPTIMIZE` commit with `dataChange=false`, carrying the previous commit's lineage metadata so
//! the asset does not turn stale), a checkpoint keeps table open time flat, and vacuum deletes the
//! files no version within the retention period references (time travel stops there).

use chrono::Duration;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::delta;
use crate::table::METADATA_KEY;
use crate::{At, Lake, LakeError, Staged};

/// Rows handed to the writers at a time while compacting, to bound memory.
const COMPACTION_CHUNK_ROWS: usize = 1 << 20;

#[derive(Clone, Debug, Serialize)]
pub struct MaintenanceReport {
    pub table: String,
    pub files_before: usize,
    pub files_after: usize,
    /// The version of the compaction commit, when there was one.
    pub compacted_version: Option<i64>,
    pub checkpoint_version: i64,
    pub files_vacuumed: usize,
}

/// Compacts (when more than one file is smaller than `small_file_bytes`), checkpoints and
/// vacuums one table. Must run under the run lock: it commits to the table.
pub async fn maintain(
    lake: &Lake,
    key: &str,
    small_file_bytes: u64,
    vacuum_retention: Duration,
) -> Result<Option<MaintenanceReport>, LakeError> {
    let Some(table) = lake.load(key, At::Latest).await? else {
        return Ok(None);
    };
    let files_before = table.files()?;
    let small = files_before
        .iter()
        .filter(|f| f.size < small_file_bytes)
        .count();
    let compacted_version = if small > 1 {
        Some(compact(lake, key).await?)
    } else {
        None
    };

    let table = lake
        .load(key, At::Latest)
        .await?
        .expect("the table was just loaded");
    deltalake::checkpoints::create_checkpoint(&table.inner, None)
        .await
        .map_err(delta(key))?;
    let (_, metrics) = table
        .inner
        .clone()
        .vacuum()
        .with_retention_period(vacuum_retention)
        .with_enforce_retention_duration(false)
        .await
        .map_err(delta(key))?;
    Ok(Some(MaintenanceReport {
        table: key.to_string(),
        files_before: files_before.len(),
        files_after: table.files()?.len(),
        compacted_version,
        checkpoint_version: table.version(),
        files_vacuumed: metrics.files_deleted.len(),
    }))
}

/// Rewrites every file of the table into as few as the writers make, in one commit that changes
/// no data.
async fn compact(lake: &Lake, key: &str) -> Result<i64, LakeError> {
    let table = lake
        .load(key, At::Latest)
        .await?
        .expect("compact is called on an existing table");
    let mut staged = Staged::new(table.arrow_schema()?);
    let mut chunk = Vec::new();
    let mut rows = 0;
    let mut batches = table.scan(None)?;
    while let Some(batch) = batches.try_next().await? {
        rows += batch.num_rows();
        chunk.push(batch);
        if rows >= COMPACTION_CHUNK_ROWS {
            lake.stage(key, &mut staged, std::mem::take(&mut chunk))
                .await?;
            rows = 0;
        }
    }
    lake.stage(key, &mut staged, chunk).await?;

    let snapshot = table.inner.snapshot().map_err(delta(key))?;
    let mut actions: Vec<Action> = staged
        .into_adds()
        .into_iter()
        .map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        })
        .collect();
    actions.extend(
        snapshot
            .log_data()
            .into_iter()
            .map(|file| Action::Remove(file.remove_action(false))),
    );
    // Same data, same lineage: keep the last commit's metadata so freshness is unchanged.
    let lineage = table
        .lineage()
        .await?
        .map(|m| serde_json::to_value(m).expect("commit metadata serializes"));
    let properties =
        CommitProperties::default().with_metadata(lineage.map(|m| (METADATA_KEY.to_string(), m)));
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.inner.log_store(),
            DeltaOperation::Optimize {
                predicate: None,
                target_size: 0,
            },
        )
        .await
        .map_err(delta(key))?;
    Ok(finalized.version() as i64)
}
