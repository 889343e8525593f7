//! Delta tables: load a snapshot (latest, a version, or a point in time), read it into Arrow batches,
//! list its files and history, and write batches as exactly one commit. Writes go through
//! deltalake's `RecordBatchWriter`, which only writes Parquet files; the commit that makes them
//! visible (plus the removes of an overwrite) is ours, so a crash before it leaves the table at its
//! previous version with nothing but unreferenced files behind.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use chrono::{DateTime, TimeZone, Utc};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{new_metadata, Action, Add, LogicalFileView, MetadataExt, StructType};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode as WriterMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, Path};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::delta;
use crate::{Lake, LakeError};

/// The commitInfo key under which QuantLens records its lineage.
pub(crate) const METADATA_KEY: &str = "quantlens";

/// Commits looked at to find the latest lineage: a maintenance run adds at most a compaction
/// (which carries it) and the two vacuum commits (which do not).
const LINEAGE_LOOKBACK: usize = 8;

/// Commits between checkpoints. Opening a table replays every commit since its last checkpoint,
/// about a third of a millisecond each: delta-rs' default of 100 let a daily run slow down
/// threefold before each checkpoint, and at 20 a run opening six tables still took 40 ms more
/// before a checkpoint than after it. At 10 that swing halves, for a checkpoint (about 20 ms)
/// every tenth commit of each table. When they are written: crate::checkpoints.
pub(crate) const CHECKPOINT_INTERVAL: i64 = 10;

/// A table configuration with [`CHECKPOINT_INTERVAL`] set, unless it sets its own.
fn with_checkpoint_interval(
    mut configuration: std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    configuration
        .entry(deltalake::TableProperty::CheckpointInterval.as_ref().into())
        .or_insert_with(|| CHECKPOINT_INTERVAL.to_string());
    configuration
}

/// Rows per batch when reading a snapshot.
pub const SCAN_BATCH_ROWS: usize = 64 * 1024;

/// Decoded batches a scan may hold ahead of its consumer.
const SCAN_BUFFER_BATCHES: usize = 4;

/// Files a scan fetches ahead of the one it decodes: a month collects a small file per daily
/// run, and fetching them one after the other paid each one's latency in turn.
const FILES_AHEAD: usize = 1;

/// Rows handed to a Parquet writer at a time when a write is split across writers.
const ROWS_PER_SLICE: usize = 128 * 1024;

/// Parallel Parquet writers for one write, at most (and at most one per core).
const MAX_PARALLEL_WRITERS: usize = 4;

/// Which snapshot of a table to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Latest,
    Version(i64),
    Timestamp(DateTime<Utc>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Add the batches to what the table holds.
    Append,
    /// Replace everything the table holds with the batches; the table takes the staged schema and
    /// partitioning (so a full refresh can change a table's layout).
    Overwrite,
    /// Replace exactly these partitions (values of the table's one partition column) with the
    /// staged files, in one commit: Delta's replaceWhere on a partition predicate. The commit is
    /// refused unless every staged file falls in the set and every partition in the set gets
    /// files, so a wrong predicate can neither delete a partition nor overwrite the table.
    ReplacePartitions(BTreeSet<String>),
}

/// What every QuantLens commit records about itself, so lineage and staleness come from the tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitMetadata {
    pub run_id: String,
    pub asset: String,
    pub code_version: String,
    /// The version of each upstream table this commit was computed from.
    pub upstream: BTreeMap<String, i64>,
    /// Anything else the asset wants to remember (e.g. the landing files a bronze commit ingested).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of a table's history, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct Commit {
    pub version: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub operation: String,
    pub quantlens: Option<CommitMetadata>,
}

/// One Parquet file of a snapshot.
#[derive(Clone, Debug)]
pub struct TableFile {
    pub path: Path,
    pub size: u64,
    pub rows: Option<u64>,
    /// The file's value of each partition column (Delta keeps them in the log, not in the file).
    pub partition: BTreeMap<String, Option<String>>,
}

impl TableFile {
    /// The file's value of the partition column `column`, if it has one.
    pub fn partition_value(&self, column: &str) -> Option<&str> {
        self.partition.get(column).and_then(|v| v.as_deref())
    }
}

/// Parquet files written for a table but not yet committed.
#[derive(Debug)]
pub struct Staged {
    schema: SchemaRef,
    partition_columns: Vec<String>,
    adds: Vec<Add>,
    rows: u64,
}

impl Staged {
    pub fn new(schema: SchemaRef) -> Staged {
        Staged::partitioned(schema, Vec::new())
    }

    /// Files for a table partitioned by `partition_columns` (columns of `schema`): each written
    /// batch is split by their values, one directory per partition.
    pub fn partitioned(schema: SchemaRef, partition_columns: Vec<String>) -> Staged {
        Staged {
            schema,
            partition_columns,
            adds: Vec::new(),
            rows: 0,
        }
    }

    pub fn partition_columns(&self) -> &[String] {
        &self.partition_columns
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub(crate) fn into_adds(self) -> Vec<Add> {
        self.adds
    }
}

/// A loaded snapshot of one table.
pub struct Table {
    key: String,
    pub(crate) inner: DeltaTable,
}

impl Lake {
    /// Tables are opened with the lake's root store, so that they share its commit file cache.
    fn builder(&self, key: &str) -> Result<DeltaTableBuilder, LakeError> {
        let url = self.table_url(key);
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(delta(key))?
            .with_storage_options(self.storage_options().clone())
            .with_storage_backend(self.root_store()?, url))
    }

    /// Loads the table for `key`, or `None` when nothing has been committed there yet.
    pub async fn load(&self, key: &str, at: At) -> Result<Option<Table>, LakeError> {
        let cacheable = match at {
            At::Latest => Some(None),
            At::Version(version) if version >= 0 => Some(Some(version as u64)),
            _ => None,
        };
        if let Some(version) = cacheable {
            if let Some(inner) = self.snapshots.load(key, version).await {
                return Ok(Some(Table {
                    key: key.to_string(),
                    inner,
                }));
            }
        }
        let builder = self.builder(key)?;
        let builder = match at {
            At::Version(version) if version < 0 => {
                let latest = Box::pin(self.load(key, At::Latest)).await?;
                return match latest {
                    None => Ok(None),
                    Some(latest) => Err(LakeError::NoSuchVersion {
                        table: key.to_string(),
                        version,
                        latest: latest.version(),
                    }),
                };
            }
            At::Version(version) => builder.with_version(version as u64),
            At::Timestamp(ts) => builder.with_timestamp(ts),
            At::Latest => builder,
        };
        match builder.load().await {
            Ok(inner) => {
                if cacheable.is_some() {
                    self.snapshots.remember(key, &inner);
                }
                Ok(Some(Table {
                    key: key.to_string(),
                    inner,
                }))
            }
            Err(DeltaTableError::NotATable(_))
            | Err(DeltaTableError::InvalidTableLocation(_))
            | Err(DeltaTableError::KernelError(delta_kernel::Error::InvalidTableLocation(_))) => {
                Ok(None)
            }
            Err(err) => {
                if let At::Version(version) = at {
                    // Distinguish "no such version" from a broken table, with the latest for context.
                    if let Some(latest) = Box::pin(self.load(key, At::Latest)).await? {
                        if version > latest.version() {
                            return Err(LakeError::NoSuchVersion {
                                table: key.to_string(),
                                version,
                                latest: latest.version(),
                            });
                        }
                    }
                }
                Err(delta(key)(err))
            }
        }
    }

    /// Writes `batches` to the table for `key` as one commit and returns the new version. The table
    /// is created (version 0) on its first write, with `schema`.
    pub async fn write(
        &self,
        key: &str,
        schema: SchemaRef,
        batches: impl IntoIterator<Item = RecordBatch>,
        mode: WriteMode,
        metadata: &CommitMetadata,
    ) -> Result<i64, LakeError> {
        let mut staged = Staged::new(schema);
        self.stage(key, &mut staged, batches).await?;
        self.commit_staged(key, staged, mode, metadata).await
    }

    /// Writes batches as Parquet files of the table for `key` without making them part of any
    /// version, adding them to `staged`. A producer too large to hold in memory stages its output
    /// piece by piece and commits once with [`Lake::commit_staged`]; until then readers see
    /// nothing of it, and a crash leaves only unreferenced files.
    pub async fn stage(
        &self,
        key: &str,
        staged: &mut Staged,
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> Result<(), LakeError> {
        let batches: Vec<RecordBatch> = batches.into_iter().collect();
        staged.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        let adds = self
            .write_files(
                key,
                staged.schema.clone(),
                &staged.partition_columns,
                batches,
            )
            .await?;
        staged.adds.extend(adds);
        Ok(())
    }

    /// Commits staged files as one new version of the table for `key` (created with the staged
    /// schema on first use); an overwrite also removes every file of the current version.
    pub async fn commit_staged(
        &self,
        key: &str,
        staged: Staged,
        mode: WriteMode,
        metadata: &CommitMetadata,
    ) -> Result<i64, LakeError> {
        let existing = self.load(key, At::Latest).await?;
        let Staged {
            schema,
            partition_columns,
            adds,
            ..
        } = staged;
        if let WriteMode::ReplacePartitions(replaced) = &mode {
            validate_replace(key, &partition_columns, replaced, &adds)?;
        }
        let columns: StructType = schema.as_ref().try_into_kernel().map_err(|e| {
            delta(key)(DeltaTableError::Generic(format!(
                "schema not supported by Delta: {e}"
            )))
        })?;
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        // Checkpoints are the lake's to schedule (crate::checkpoints), not the commit's.
        let properties = CommitProperties::default()
            .with_create_checkpoint(false)
            .with_metadata([(
                METADATA_KEY.to_string(),
                serde_json::to_value(metadata).expect("commit metadata serializes"),
            )]);

        let Some(table) = existing else {
            let created = deltalake::operations::create::CreateBuilder::new()
                .with_location(self.table_url(key).as_str())
                .with_storage_options(self.storage_options().clone())
                .with_columns(columns.fields().cloned())
                .with_partition_columns(partition_columns)
                .with_configuration_property(
                    deltalake::TableProperty::CheckpointInterval,
                    Some(CHECKPOINT_INTERVAL.to_string()),
                )
                .with_actions(actions)
                .with_commit_properties(properties)
                .await
                .map_err(delta(key))?;
            return Ok(created.version().unwrap_or(0) as i64);
        };

        let snapshot = table.inner.snapshot().map_err(delta(key))?;
        let current = snapshot.metadata();
        let same_layout = current.partition_columns() == partition_columns
            && current.parse_schema().ok().as_ref() == Some(&columns);
        let mut predicate = None;
        match &mode {
            WriteMode::Append | WriteMode::ReplacePartitions(_) if !same_layout => {
                return Err(delta(key)(DeltaTableError::Generic(format!(
                    "the write's schema or partitioning ({partition_columns:?}) differs from the \
                     table's ({:?}); only a full overwrite may change them",
                    current.partition_columns()
                ))));
            }
            WriteMode::Append => {}
            WriteMode::Overwrite => {
                if !same_layout {
                    let metadata = new_metadata(
                        &columns,
                        &partition_columns,
                        with_checkpoint_interval(current.configuration().clone()),
                    )
                    .and_then(|m| m.with_table_id(current.id().to_string()))
                    .map_err(|e| delta(key)(DeltaTableError::Generic(e.to_string())))?;
                    actions.push(Action::Metadata(metadata));
                }
                actions.extend(
                    snapshot
                        .log_data()
                        .into_iter()
                        .map(|file| Action::Remove(file.remove_action(true))),
                );
            }
            WriteMode::ReplacePartitions(replaced) => {
                let column = &partition_columns[0];
                actions.extend(
                    snapshot
                        .log_data()
                        .into_iter()
                        .filter(|file| {
                            file.partition_values_map()
                                .get(column)
                                .and_then(|v| v.as_ref())
                                .is_some_and(|v| replaced.contains(v))
                        })
                        .map(|file| Action::Remove(file.remove_action(true))),
                );
                let values: Vec<String> = replaced
                    .iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect();
                predicate = Some(format!("{column} IN ({})", values.join(", ")));
            }
        }
        let save_mode = match mode {
            WriteMode::Append => SaveMode::Append,
            WriteMode::Overwrite | WriteMode::ReplacePartitions(_) => SaveMode::Overwrite,
        };
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(snapshot),
                table.inner.log_store(),
                DeltaOperation::Write {
                    mode: save_mode,
                    partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
                    predicate,
                },
            )
            .await
            .map_err(delta(key))?;
        // The snapshot after the commit, so that the next load of this table need not replay it.
        let mut committed = table.inner.clone();
        committed.state = Some(finalized.snapshot());
        self.snapshots.remember(key, &committed);
        Ok(finalized.version() as i64)
    }
}

/// The partition values of a batch whose rows all lie in one partition, when its partition
/// columns are strings (the lake's are).
fn single_partition(
    batch: &RecordBatch,
    columns: &[String],
) -> Option<indexmap::IndexMap<String, delta_kernel::expressions::Scalar>> {
    let mut values = indexmap::IndexMap::new();
    for column in columns {
        let array = batch
            .column_by_name(column)?
            .as_any()
            .downcast_ref::<StringArray>()?;
        if array.is_empty() || array.null_count() > 0 {
            return None;
        }
        let first = array.value(0);
        if (1..array.len()).any(|i| array.value(i) != first) {
            return None;
        }
        values.insert(
            column.clone(),
            delta_kernel::expressions::Scalar::String(first.to_string()),
        );
    }
    Some(values)
}

/// Refuses a partition replace that would touch anything outside the partitions it names.
fn validate_replace(
    key: &str,
    partition_columns: &[String],
    replaced: &BTreeSet<String>,
    adds: &[Add],
) -> Result<(), LakeError> {
    let refuse = |reason: String| {
        Err(LakeError::InvalidReplace {
            table: key.to_string(),
            reason,
        })
    };
    let [column] = partition_columns else {
        return refuse(format!(
            "a partition replace needs exactly one partition column, not {partition_columns:?}"
        ));
    };
    if replaced.is_empty() {
        return refuse("no partition named".into());
    }
    let mut written = BTreeSet::new();
    for add in adds {
        let value = add.partition_values.get(column).cloned().flatten();
        match value {
            Some(value) if replaced.contains(&value) => {
                written.insert(value);
            }
            other => {
                return refuse(format!(
                "a staged file belongs to partition {column}={other:?}, outside the replaced set"
            ))
            }
        }
    }
    if let Some(missing) = replaced.difference(&written).next() {
        return refuse(format!(
            "partition {column}={missing} would be emptied: no rows were written for it"
        ));
    }
    Ok(())
}

impl Lake {
    /// Writes the batches as Parquet files (not yet part of any version) and returns their Add
    /// actions. Encoding is the expensive part of a write, so the rows are cut into contiguous
    /// runs encoded in parallel, one writer per core; contiguous so that a table written in
    /// sorted order keeps tight per-file statistics and reads back in order.
    async fn write_files(
        &self,
        key: &str,
        schema: SchemaRef,
        partition_columns: &[String],
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> Result<Vec<Add>, LakeError> {
        let slices: Vec<RecordBatch> = batches
            .into_iter()
            .flat_map(|batch| {
                let rows = batch.num_rows();
                (0..rows)
                    .step_by(ROWS_PER_SLICE)
                    .map(move |offset| batch.slice(offset, ROWS_PER_SLICE.min(rows - offset)))
            })
            .collect();
        let total_rows: usize = slices.iter().map(|b| b.num_rows()).sum();
        let writers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_PARALLEL_WRITERS)
            .min(total_rows.div_ceil(ROWS_PER_SLICE))
            .max(1);
        let mut runs: Vec<Vec<RecordBatch>> = vec![Vec::new()];
        let mut rows_in_run = 0;
        for slice in slices {
            if rows_in_run >= total_rows.div_ceil(writers) {
                runs.push(Vec::new());
                rows_in_run = 0;
            }
            rows_in_run += slice.num_rows();
            runs.last_mut().expect("never empty").push(slice);
        }
        let tasks: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let url = self.table_url(key).to_string();
                let options = self.storage_options().clone();
                let schema = schema.clone();
                let partitions =
                    (!partition_columns.is_empty()).then(|| partition_columns.to_vec());
                let properties = writer_properties(&schema);
                tokio::spawn(async move {
                    let mut writer =
                        RecordBatchWriter::try_new(url, schema, partitions.clone(), Some(options))?
                            .with_writer_properties(properties);
                    let mut adds = Vec::new();
                    let mut open_partition = None;
                    for batch in run {
                        // The writer splits a batch by partition with a copy of every row; a
                        // batch already in one partition (the usual case) goes in as it is, and
                        // each partition's file is finished before the next one starts, so the
                        // writer never buffers more than one partition.
                        match partitions
                            .as_deref()
                            .and_then(|p| single_partition(&batch, p))
                        {
                            Some(values) => {
                                if open_partition.as_ref().is_some_and(|open| *open != values) {
                                    adds.extend(writer.flush().await?);
                                }
                                writer
                                    .write_partition(batch, &values, WriterMode::Default)
                                    .await?;
                                open_partition = Some(values);
                            }
                            None => writer.write(batch).await?,
                        }
                    }
                    adds.extend(writer.flush().await?);
                    Ok::<_, DeltaTableError>(adds)
                })
            })
            .collect();
        let mut adds = Vec::new();
        for task in tasks {
            let written = task.await.map_err(|e| LakeError::Task {
                table: key.to_string(),
                message: e.to_string(),
            })?;
            adds.extend(written.map_err(delta(key))?);
        }
        Ok(adds)
    }
}

impl Table {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn version(&self) -> i64 {
        self.inner.version().unwrap_or(0) as i64
    }

    pub fn url(&self) -> &url::Url {
        self.inner.table_url()
    }

    /// The table's schema as Arrow sees it.
    pub fn arrow_schema(&self) -> Result<SchemaRef, LakeError> {
        use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
        let snapshot = self.inner.snapshot().map_err(delta(&self.key))?;
        let schema: arrow::datatypes::Schema = snapshot
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e| LakeError::Bridge(format!("table `{}` schema: {e}", self.key)))?;
        Ok(Arc::new(schema))
    }

    /// The Parquet files of this snapshot.
    pub fn files(&self) -> Result<Vec<TableFile>, LakeError> {
        let snapshot = self.inner.snapshot().map_err(delta(&self.key))?;
        Ok(snapshot
            .log_data()
            .into_iter()
            .map(|file| TableFile {
                path: file.object_store_path(),
                size: file.size().max(0) as u64,
                rows: file.num_records().map(|n| n as u64),
                partition: file.partition_values_map().into_iter().collect(),
            })
            .collect())
    }

    /// The latest value of the date column `column`, from the statistics the log keeps for each
    /// file (no data file is read). Only the files of the greatest value of `partition_column`
    /// are looked at: the table must be partitioned by a coarser form of that date, such as its
    /// month. `None` when the table is empty or one of those files has no statistics for it.
    pub fn latest_date(
        &self,
        partition_column: &str,
        column: &str,
    ) -> Result<Option<i32>, LakeError> {
        let snapshot = self.inner.snapshot().map_err(delta(&self.key))?;
        let files: Vec<_> = snapshot.log_data().into_iter().collect();
        let partition_of = |file: &LogicalFileView| {
            file.partition_values_map()
                .get(partition_column)
                .cloned()
                .flatten()
        };
        let Some(last) = files.iter().filter_map(partition_of).max() else {
            return Ok(None);
        };
        let mut latest = None;
        for file in files
            .iter()
            .filter(|f| partition_of(f).as_ref() == Some(&last))
        {
            let Some(day) = max_date(file, column) else {
                return Ok(None);
            };
            latest = latest.max(Some(day));
        }
        Ok(latest)
    }

    /// The files among `files` that may hold a row whose date column `column` is `day` or later:
    /// those whose statistics say so, and those without statistics. Lets a reader of the newest
    /// days skip a month's older files (one per daily run until compaction) unopened.
    pub fn files_reaching(
        &self,
        files: Vec<TableFile>,
        column: &str,
        day: i32,
    ) -> Result<Vec<TableFile>, LakeError> {
        let snapshot = self.inner.snapshot().map_err(delta(&self.key))?;
        let asked: HashSet<&Path> = files.iter().map(|file| &file.path).collect();
        let older: HashSet<Path> = snapshot
            .log_data()
            .into_iter()
            .map(|file| (file.object_store_path(), file))
            .filter(|(path, file)| {
                asked.contains(path) && max_date(file, column).is_some_and(|max| max < day)
            })
            .map(|(path, _)| path)
            .collect();
        Ok(files
            .into_iter()
            .filter(|file| !older.contains(&file.path))
            .collect())
    }

    /// The columns the table is partitioned by (empty when it is not).
    pub fn partition_columns(&self) -> Result<Vec<String>, LakeError> {
        let snapshot = self.inner.snapshot().map_err(delta(&self.key))?;
        Ok(snapshot.metadata().partition_columns().to_vec())
    }

    /// The distinct values of the partition column `column` in this snapshot, sorted.
    pub fn partition_values(&self, column: &str) -> Result<BTreeSet<String>, LakeError> {
        Ok(self
            .files()?
            .iter()
            .filter_map(|f| f.partition_value(column).map(str::to_string))
            .collect())
    }

    /// The data files appended since `version` that are still live, or `None` when the table did
    /// more than append since then (an overwrite, a partition replace, a compaction of those very
    /// files) or a commit in between is no longer in the log. A reader that keeps up with an
    /// append-only table reads only what is new; on `None` it starts over from the whole table.
    pub async fn appended_since(&self, version: i64) -> Result<Option<Vec<TableFile>>, LakeError> {
        let mut appended = HashSet::new();
        for v in version + 1..=self.version() {
            let Some(bytes) = self.commit_entry(v).await? else {
                return Ok(None);
            };
            let actions =
                deltalake::logstore::get_actions(v as u64, &bytes).map_err(delta(&self.key))?;
            for action in actions {
                match action {
                    Action::Add(add) if add.data_change => {
                        appended.insert(add.path);
                    }
                    Action::Remove(remove)
                        if remove.data_change || appended.contains(&remove.path) =>
                    {
                        return Ok(None);
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(
            self.files()?
                .into_iter()
                .filter(|f| appended.contains(f.path.as_ref()))
                .collect(),
        ))
    }

    /// Rows in this snapshot, from the file statistics (no data is read).
    pub fn row_count(&self) -> Result<u64, LakeError> {
        Ok(self.files()?.iter().filter_map(|f| f.rows).sum())
    }

    /// Local paths of this snapshot's files, for engines (DuckDB) that scan Parquet by path. Files
    /// of a remote table are downloaded into the local cache first (`QUANTLENS_CACHE_DIR`, default
    /// a `quantlens-cache` folder in the temp directory); data files are immutable and uniquely
    /// named, so a cached copy never goes stale.
    pub async fn local_files(&self) -> Result<Vec<PathBuf>, LakeError> {
        self.local_paths(self.files()?).await
    }

    /// Like [`Table::local_files`], for some of the snapshot's files only.
    pub async fn local_paths(&self, files: Vec<TableFile>) -> Result<Vec<PathBuf>, LakeError> {
        let url = self.url().clone();
        if let Ok(root) = url.to_file_path() {
            return Ok(files
                .into_iter()
                .map(|f| root.join(f.path.as_ref()))
                .collect());
        }
        let cache = std::env::var_os("QUANTLENS_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("quantlens-cache"))
            .join(url.host_str().unwrap_or("_"))
            .join(url.path().trim_matches('/'));
        let store = self.inner.object_store();
        let mut paths = Vec::with_capacity(files.len());
        for file in files {
            let local = cache.join(file.path.as_ref());
            if !local.exists() {
                let bytes = fetch(&self.key, &store, &file).await?;
                write_atomically(&local, &bytes).map_err(|e| LakeError::InvalidRoot {
                    root: local.display().to_string(),
                    reason: format!("cannot write the local cache: {e}"),
                })?;
            }
            paths.push(local);
        }
        Ok(paths)
    }

    /// Reads the whole snapshot, optionally only some columns, as Arrow batches in file order.
    pub async fn read(&self, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>, LakeError> {
        self.scan(columns)?.try_collect().await
    }

    /// Streams the snapshot in batches of at most [`SCAN_BATCH_ROWS`] rows, in file order, so a
    /// table larger than memory can be processed. A background task fetches each file and decodes
    /// it on a blocking thread a few batches ahead of the consumer, so decoding and the
    /// consumer's work overlap while memory stays bounded by the channel.
    pub fn scan(
        &self,
        columns: Option<&[&str]>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, LakeError>>, LakeError> {
        self.scan_files(self.files()?, columns)
    }

    /// Like [`Table::scan`], over some of the snapshot's files only (e.g. a few partitions). The
    /// values of wanted partition columns, which live in the log rather than in the files, are
    /// appended to each batch as the last columns, as the table's schema has them.
    pub fn scan_files(
        &self,
        files: Vec<TableFile>,
        columns: Option<&[&str]>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, LakeError>>, LakeError> {
        let store = self.inner.object_store();
        let partition_columns = self.partition_columns()?;
        // Only a table with partition columns wanted needs its batches reassembled.
        let output: Option<Arc<Schema>> = if partition_columns
            .iter()
            .any(|c| columns.is_none_or(|wanted| wanted.contains(&c.as_str())))
        {
            let schema = self.arrow_schema()?;
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .filter(|f| columns.is_none_or(|wanted| wanted.contains(&f.name().as_str())))
                .map(|f| f.as_ref().clone())
                .collect();
            Some(Arc::new(Schema::new(fields)))
        } else {
            None
        };
        let columns: Option<Vec<String>> =
            columns.map(|c| c.iter().map(|s| s.to_string()).collect());
        let key = self.key.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(SCAN_BUFFER_BATCHES);
        tokio::spawn(async move {
            // The next file is fetched while this one is decoded.
            let mut fetched = futures::stream::iter(files)
                .map(|file| {
                    let (key, store) = (key.clone(), store.clone());
                    tokio::spawn(async move {
                        let bytes = fetch(&key, &store, &file).await;
                        (file, bytes)
                    })
                })
                .buffered(FILES_AHEAD + 1);
            while let Some(next) = fetched.next().await {
                let (file, bytes) = match next {
                    Ok((file, Ok(bytes))) => (file, bytes),
                    Ok((_, Err(err))) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                    Err(err) => {
                        let _ = sender.send(Err(task_failed(&key, err))).await;
                        return;
                    }
                };
                let (decoder_sender, decoder_key, columns, output) =
                    (sender.clone(), key.clone(), columns.clone(), output.clone());
                let decoded = tokio::task::spawn_blocking(move || {
                    decode(&decoder_key, &file, bytes, columns.as_deref(), |batch| {
                        let batch = match &output {
                            Some(output) => batch.and_then(|batch| {
                                with_partition_values(&decoder_key, &file, batch, output)
                            }),
                            None => batch,
                        };
                        decoder_sender.blocking_send(batch).is_ok()
                    })
                })
                .await;
                let keep_going = match decoded {
                    Ok(keep_going) => keep_going,
                    Err(err) => {
                        let _ = sender.send(Err(task_failed(&key, err))).await;
                        false
                    }
                };
                if !keep_going {
                    return;
                }
            }
        });
        Ok(
            futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|item| (item, receiver))
            })
            .boxed(),
        )
    }

    /// Commits newest first, at most `limit` of them (all still in the log without one).
    pub async fn history(&self, limit: Option<usize>) -> Result<Vec<Commit>, LakeError> {
        self.commits(limit).try_collect().await
    }

    /// Like [`Table::history`], read one commit file at a time as the stream is polled: a caller
    /// looking for the newest commit of some kind stops reading there. (A table's first commit
    /// can be large, bronze's lists every landing file of a full build, and most searches end
    /// at the newest commit.)
    pub fn commits(&self, limit: Option<usize>) -> BoxStream<'_, Result<Commit, LakeError>> {
        let latest = self.version();
        let oldest = limit.map_or(0, |n| (latest - n as i64 + 1).max(0));
        futures::stream::try_unfold(latest, move |mut next| async move {
            while next >= oldest {
                let version = next;
                next -= 1;
                // Older commits may have been cleaned up after a checkpoint: the history ends there.
                let Some(bytes) = self.commit_entry(version).await? else {
                    return Ok(None);
                };
                if let Some(commit) = self.commit_of(version, &bytes)? {
                    return Ok(Some((commit, next)));
                }
            }
            Ok(None)
        })
        .boxed()
    }

    /// The commit information of the commit file `bytes` of `version`, if it has any.
    fn commit_of(&self, version: i64, bytes: &bytes::Bytes) -> Result<Option<Commit>, LakeError> {
        let actions =
            deltalake::logstore::get_actions(version as u64, bytes).map_err(delta(&self.key))?;
        Ok(actions.into_iter().find_map(|action| match action {
            Action::CommitInfo(info) => Some(Commit {
                version,
                timestamp: info
                    .timestamp
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                operation: info.operation.unwrap_or_default(),
                quantlens: info
                    .info
                    .get(METADATA_KEY)
                    .and_then(|v| serde_json::from_value(v.clone()).ok()),
            }),
            _ => None,
        }))
    }

    /// The bytes of the commit file of `version`, or `None` when it is not in the log.
    async fn commit_entry(&self, version: i64) -> Result<Option<bytes::Bytes>, LakeError> {
        self.inner
            .log_store()
            .read_commit_entry(version as u64)
            .await
            .map_err(delta(&self.key))
    }

    /// The lineage of the newest commit QuantLens wrote: what the table's content was computed
    /// from. Maintenance commits that change no data (a vacuum's) carry none and are skipped; a
    /// compaction carries the lineage of the data it rewrote.
    pub async fn lineage(&self) -> Result<Option<CommitMetadata>, LakeError> {
        let newest = self.newest_recent_commit(|c| c.quantlens.is_some()).await?;
        Ok(newest.and_then(|commit| commit.quantlens))
    }

    /// The newest version whose commit changed data: maintenance commits (compaction, vacuum)
    /// rewrite or delete files without changing what the table holds.
    pub async fn content_version(&self) -> Result<i64, LakeError> {
        const NO_DATA_CHANGE: [&str; 3] = ["OPTIMIZE", "VACUUM START", "VACUUM END"];
        let newest = self
            .newest_recent_commit(|c| !NO_DATA_CHANGE.contains(&c.operation.as_str()))
            .await?;
        Ok(newest.map_or(self.version(), |commit| commit.version))
    }

    /// The newest of the last [`LINEAGE_LOOKBACK`] commits that `wanted` accepts.
    async fn newest_recent_commit(
        &self,
        wanted: impl Fn(&Commit) -> bool,
    ) -> Result<Option<Commit>, LakeError> {
        let mut commits = self.commits(Some(LINEAGE_LOOKBACK));
        while let Some(commit) = commits.try_next().await? {
            if wanted(&commit) {
                return Ok(Some(commit));
            }
        }
        Ok(None)
    }

    /// The commit timestamp of this snapshot's version.
    pub fn version_timestamp(&self) -> Option<DateTime<Utc>> {
        let snapshot = self.inner.snapshot().ok()?;
        let ms = snapshot.version_timestamp(self.version() as u64)?;
        Utc.timestamp_millis_opt(ms).single()
    }
}

/// Parquet settings of the files the lake writes: delta-rs' (Snappy), without dictionary encoding
/// for floating-point columns. Prices, returns and averages hardly repeat, so their dictionary
/// only filled up (a hash and a comparison per value) before the writer fell back to plain
/// encoding: about a tenth of a full build's time.
fn writer_properties(schema: &Schema) -> WriterProperties {
    schema
        .fields()
        .iter()
        .filter(|field| field.data_type().is_floating())
        .fold(
            WriterProperties::builder()
                .set_created_by(format!("quantlens {}", env!("CARGO_PKG_VERSION")))
                .set_compression(Compression::SNAPPY),
            |builder, field| {
                builder
                    .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false)
            },
        )
        .build()
}

/// A scan's fetch or decode task that panicked or was cancelled.
fn task_failed(table: &str, err: tokio::task::JoinError) -> LakeError {
    LakeError::Task {
        table: table.to_string(),
        message: err.to_string(),
    }
}

/// The greatest value of the date column `column` in `file`, from its statistics in the log.
fn max_date(file: &LogicalFileView, column: &str) -> Option<i32> {
    use delta_kernel::expressions::Scalar;
    let Some(Scalar::Struct(max)) = file.max_values() else {
        return None;
    };
    max.fields()
        .iter()
        .zip(max.values())
        .find(|(field, _)| field.name() == column)
        .and_then(|(_, value)| match value {
            Scalar::Date(day) => Some(*day),
            _ => None,
        })
}

/// Reassembles a batch decoded from `file` into the `output` columns, in the table's order: the
/// file's own columns, plus its partition values as constant columns.
fn with_partition_values(
    key: &str,
    file: &TableFile,
    batch: RecordBatch,
    output: &Arc<Schema>,
) -> Result<RecordBatch, LakeError> {
    let bridge_error = |e: arrow::error::ArrowError| {
        LakeError::Bridge(format!(
            "table `{key}`, file {}: partition values: {e}",
            file.path
        ))
    };
    let columns = output
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => Ok(column.clone()),
            None => {
                let value = file.partition_value(field.name());
                let text = StringArray::from(vec![value; batch.num_rows()]);
                arrow::compute::cast(&text, field.data_type()).map_err(bridge_error)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(output.clone(), columns).map_err(bridge_error)
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a directory");
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{}.part", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

async fn fetch(
    key: &str,
    store: &Arc<dyn ObjectStore>,
    file: &TableFile,
) -> Result<bytes::Bytes, LakeError> {
    let store_error = |source| LakeError::Store {
        url: format!("{key}/{}", file.path),
        source: Box::new(source),
    };
    // One GET per file: files are written at a bounded size, and a whole-object read is the
    // cheapest access pattern on object storage too.
    store
        .get(&file.path)
        .await
        .map_err(store_error)?
        .bytes()
        .await
        .map_err(store_error)
}

/// Decodes one Parquet file, handing each batch to `deliver`; stops early when it returns false.
/// Errors are delivered too. Returns whether the consumer still wants more.
fn decode(
    key: &str,
    file: &TableFile,
    bytes: bytes::Bytes,
    columns: Option<&[String]>,
    mut deliver: impl FnMut(Result<RecordBatch, LakeError>) -> bool,
) -> bool {
    let parquet_error = |source| LakeError::Parquet {
        table: key.to_string(),
        file: file.path.to_string(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|builder| {
        let builder = builder.with_batch_size(SCAN_BATCH_ROWS);
        let builder = match columns {
            Some(columns) => {
                let wanted: HashSet<&str> = columns.iter().map(String::as_str).collect();
                let schema = builder.parquet_schema();
                let indices = schema
                    .root_schema()
                    .get_fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, field)| wanted.contains(field.name()))
                    .map(|(i, _)| i);
                let mask = ProjectionMask::roots(schema, indices);
                builder.with_projection(mask)
            }
            None => builder,
        };
        builder.build()
    });
    let reader = match reader {
        Ok(reader) => reader,
        Err(err) => return deliver(Err(parquet_error(err))),
    };
    for batch in reader {
        if !deliver(batch.map_err(|e| parquet_error(e.into()))) {
            return false;
        }
    }
    true
}
