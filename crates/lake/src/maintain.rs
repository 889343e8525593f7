//! Weekly table maintenance: compaction, checkpoint, vacuum. Daily appends leave one small file
//! per run and a growing log; compaction rewrites each partition's small files into few large ones (one
//! `OPTIMIZE` commit with `dataChange=false`, carrying the previous commit's lineage metadata so
//! the asset does not turn stale), a checkpoint keeps table open time flat, and vacuum deletes the
//! files no version within the retention period references (time travel stops there).

use std::collections::{BTreeMap, HashSet};

use chrono::Duration;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::delta;
use crate::table::METADATA_KEY;
use crate::{At, Lake, LakeError, Staged, Table, TableFile};

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
    let files_before = table.files()?.len();
    let compacted_version = compact(lake, &table, small_file_bytes).await?;

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
        files_before,
        files_after: table.files()?.len(),
        compacted_version,
        checkpoint_version: table.version(),
        files_vacuumed: metrics.files_deleted.len(),
    }))
}

/// Rewrites the small files of each partition that has more than one into as few as the writers
/// make, in one commit that changes no data; `None` when no partition needed it. Partitions are
/// compacted separately so that a partition replace keeps touching only its own files.
async fn compact(
    lake: &Lake,
    table: &Table,
    small_file_bytes: u64,
) -> Result<Option<i64>, LakeError> {
    let key = table.key();
    let mut partitions: BTreeMap<_, Vec<TableFile>> = BTreeMap::new();
    for file in table.files()? {
        if file.size < small_file_bytes {
            partitions
                .entry(file.partition.clone())
                .or_default()
                .push(file);
        }
    }
    let rewritten: Vec<TableFile> = partitions
        .into_values()
        .filter(|files| files.len() > 1)
        .flatten()
        .collect();
    if rewritten.is_empty() {
        return Ok(None);
    }
    let mut staged = Staged::partitioned(table.arrow_schema()?, table.partition_columns()?);
    let mut chunk = Vec::new();
    let mut rows = 0;
    let mut batches = table.scan_files(rewritten.clone(), None)?;
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
    let rewritten_paths: HashSet<&str> = rewritten.iter().map(|f| f.path.as_ref()).collect();
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
            .filter(|file| rewritten_paths.contains(file.object_store_path().as_ref()))
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
    Ok(Some(finalized.version() as i64))
}
