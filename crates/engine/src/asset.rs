//! What an asset is to the engine: its spec in the graph, the schema its output must have, the
//! checks that guard its commit, how to retry it, and the compute function that produces it. A
//! compute function reads its upstream tables at the versions pinned for this run and returns
//! batches; it never commits: the engine does, after validating them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use quantlens_graph::AssetSpec;
use quantlens_lake::arrow::array::RecordBatch;
use quantlens_lake::arrow::datatypes::SchemaRef;
use quantlens_lake::{At, Lake, LakeError, Staged, Table, WriteMode};

use crate::{Check, RetryPolicy};

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// I/O, storage, commit conflicts: worth another attempt.
    Transient,
    /// Bad data or a bug: the same input gives the same failure.
    Data,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct AssetError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AssetError {
    pub fn data(message: impl Into<String>) -> AssetError {
        AssetError {
            kind: ErrorKind::Data,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> AssetError {
        AssetError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
}

impl From<LakeError> for AssetError {
    fn from(err: LakeError) -> AssetError {
        let kind = if err.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Data
        };
        AssetError {
            kind,
            message: err.to_string(),
        }
    }
}

/// Another table an asset writes beside its own, in the same step (bronze's ledger of landing
/// files, silver's rejects). It is committed after the asset's own table.
pub struct SideWrite {
    pub key: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub mode: WriteMode,
}

/// What a computation produced for its own table.
pub enum Output {
    /// Batches in memory: validated against the schema and checked before the commit.
    Batches(Vec<RecordBatch>),
    /// Files already written but not committed, for output too large to hold in memory (see
    /// `Lake::stage`). The engine commits them; assets that stage cannot have checks.
    Staged(Staged),
}

/// Freshly computed output, not yet validated or committed.
pub struct Materialization {
    pub output: Output,
    pub mode: WriteMode,
    /// Extra commit metadata (e.g. which landing files a bronze append holds).
    pub extra_metadata: serde_json::Map<String, serde_json::Value>,
    pub side_writes: Vec<SideWrite>,
    /// This is one piece of a larger update: commit it, then call the asset again.
    pub more: bool,
    /// The upstream versions to record as read, when not the pinned ones: a piece of an update
    /// records the versions it started from, so that a crash before the last piece leaves the
    /// table marked stale and the next run resumes.
    pub consumed: Option<BTreeMap<String, i64>>,
}

impl Materialization {
    pub fn overwrite(batches: Vec<RecordBatch>) -> Materialization {
        Materialization {
            output: Output::Batches(batches),
            mode: WriteMode::Overwrite,
            extra_metadata: Default::default(),
            side_writes: Vec::new(),
            more: false,
            consumed: None,
        }
    }
}

pub enum Outcome {
    Materialized(Materialization),
    /// Nothing new to commit (e.g. no new landing files); the table stays as it is.
    Unchanged {
        reason: String,
    },
}

/// An inclusive range of dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateRange {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
}

/// Reports progress of a long step (a line on stderr and in worker.log).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// What a compute function gets: the lake, this run, and the upstream versions it must read.
#[derive(Clone)]
pub struct AssetContext {
    pub run_id: String,
    pub key: String,
    pub lake: Lake,
    /// The version of each upstream table, pinned when the asset started.
    pub upstream: BTreeMap<String, i64>,
    /// Rebuild from scratch rather than update incrementally (`--full-refresh`).
    pub full_refresh: bool,
    /// Dates to recompute (`--from/--to`), for assets whose tables are laid out by date.
    pub range: Option<DateRange>,
    pub progress: Progress,
}

impl AssetContext {
    /// An upstream table loaded at its pinned version.
    pub async fn upstream_table(&self, key: &str) -> Result<Table, AssetError> {
        let version = *self.upstream.get(key).ok_or_else(|| {
            AssetError::data(format!(
                "`{}` reads `{key}`, which it does not depend on",
                self.key
            ))
        })?;
        self.lake
            .load(key, At::Version(version))
            .await?
            .ok_or_else(|| AssetError::data(format!("upstream table `{key}` does not exist")))
    }

    /// Reads an upstream table at its pinned version: its schema and all its rows.
    pub async fn read_upstream(
        &self,
        key: &str,
        columns: Option<&[&str]>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), AssetError> {
        let table = self.upstream_table(key).await?;
        let batches = table.read(columns).await?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .map_or_else(|| table.arrow_schema(), Ok)?;
        Ok((schema, batches))
    }
}

pub type ComputeFn =
    Arc<dyn Fn(AssetContext) -> BoxFuture<'static, Result<Outcome, AssetError>> + Send + Sync>;

/// One materialisable asset.
#[derive(Clone)]
pub struct Asset {
    pub spec: AssetSpec,
    /// The output every materialisation must match, column for column.
    pub schema: SchemaRef,
    /// The columns its table is partitioned by (empty: not partitioned).
    pub partition_by: Vec<String>,
    pub checks: Vec<Check>,
    pub retry: RetryPolicy,
    /// Tables written as side writes, listed so that readers (`sql`, `assets`) know them.
    pub side_tables: Vec<String>,
    pub compute: ComputeFn,
}
