//! What an asset is to the engine: its spec in the graph, the schema its output must have, the
//! checks that guard its commit, how to retry it, and the compute function that produces it. A
//! compute function reads its upstream tables at the versions pinned for this run and returns
//! batches; it never commits: the engine does, after validating them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use quantlens_graph::{AssetKey, AssetSpec};
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
/// files, silver's rejects). It is committed after the asset's own table, with the same lineage
/// and its own extra metadata. Delta has no transaction across tables, so a crash can fall
/// between the two commits: the asset must find out on its next run and repair the side table
/// (bronze and silver record in their commits what the side table should then hold).
pub struct SideWrite {
    pub key: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub mode: WriteMode,
    /// Extra commit metadata of the side table's commit (the main commit's is not copied).
    pub extra_metadata: serde_json::Map<String, serde_json::Value>,
}

/// What a computation produced for its own table.
pub enum Output {
    /// Batches in memory: validated against the schema and checked before the commit.
    Batches(Vec<RecordBatch>),
    /// Batches computed a piece at a time, for output too large to hold in memory at once: the
    /// engine validates, checks and stages each piece as it comes and commits them all as one
    /// version, so memory holds one piece. A check's verdict is the worst of its pieces'.
    Pieces(BoxStream<'static, Result<Vec<RecordBatch>, AssetError>>),
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
        Materialization::overwrite_with(Output::Batches(batches))
    }

    /// Replaces the whole table with `output`.
    pub fn overwrite_with(output: Output) -> Materialization {
        Materialization {
            output,
            mode: WriteMode::Overwrite,
            extra_metadata: Default::default(),
            side_writes: Vec::new(),
            more: false,
            consumed: None,
        }
    }

    /// The same commit, but when `only_adds` (its rows come after everything the table holds,
    /// see [`crate::incremental::only_adds`]) adding them to the table rather than replacing what
    /// they would.
    pub fn appending_when(mut self, only_adds: bool) -> Materialization {
        if only_adds {
            self.mode = WriteMode::Append;
        }
        self
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
    /// The asset's code version, recorded in its commits (a new one means a rebuild).
    pub code_version: String,
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

/// The schema an asset's output must have.
#[derive(Clone)]
pub enum OutputSchema {
    /// Declared in code: every materialisation must match it, column for column.
    Declared(SchemaRef),
    /// Taken from the output of the first build, then locked: while the asset's code version
    /// stays the same, a later build must produce the table's columns and types again.
    Inferred,
}

/// One materialisable asset. Build one with [`Asset::new`].
#[derive(Clone)]
pub struct Asset {
    pub spec: AssetSpec,
    pub schema: OutputSchema,
    /// The columns its table is partitioned by (empty: not partitioned).
    pub partition_by: Vec<String>,
    pub checks: Vec<Check>,
    pub retry: RetryPolicy,
    /// Tables written as side writes, listed so that readers (`sql`, `assets`) know them.
    pub side_tables: Vec<String>,
    /// The file that defines the asset when it is not written in Rust (a SQL asset's file).
    pub defined_in: Option<String>,
    pub compute: ComputeFn,
}

impl Asset {
    /// An asset `key` (`layer/name`) whose output has `schema`, computed by `compute`. The rest
    /// has defaults: no dependencies, the key's layer as its group, code version "1", no
    /// partitions, no checks, the default retry policy. Panics on a malformed key: keys of
    /// assets written in Rust are constants, and the registry's tests load them all.
    pub fn new<F, Fut>(key: &str, schema: OutputSchema, compute: F) -> Asset
    where
        F: Fn(AssetContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Outcome, AssetError>> + Send + 'static,
    {
        let key = AssetKey::new(key).unwrap_or_else(|e| panic!("asset key: {e}"));
        Asset {
            spec: AssetSpec {
                group: key.layer().to_string(),
                key,
                deps: Vec::new(),
                code_version: "1".into(),
                description: String::new(),
            },
            schema,
            partition_by: Vec::new(),
            checks: Vec::new(),
            retry: RetryPolicy::default(),
            side_tables: Vec::new(),
            defined_in: None,
            compute: Arc::new(move |ctx| Box::pin(compute(ctx))),
        }
    }

    /// The tables it reads (by key).
    pub fn deps(mut self, keys: &[&str]) -> Asset {
        self.spec.deps = keys
            .iter()
            .map(|k| AssetKey::new(*k).unwrap_or_else(|e| panic!("dependency key: {e}")))
            .collect();
        self
    }

    /// Bump it whenever the computation changes: the table is then rebuilt, and it and its
    /// downstream read as stale until it is.
    pub fn code_version(mut self, version: &str) -> Asset {
        self.spec.code_version = version.to_string();
        self
    }

    pub fn description(mut self, text: &str) -> Asset {
        self.spec.description = text.to_string();
        self
    }

    pub fn group(mut self, group: &str) -> Asset {
        self.spec.group = group.to_string();
        self
    }

    /// Partitions the table by calendar month (`month`, "YYYY-MM", the output's last column),
    /// as the incremental strategy of [`crate::incremental`] expects.
    pub fn partitioned_by_month(mut self) -> Asset {
        self.partition_by = vec![crate::incremental::MONTH.to_string()];
        self
    }

    pub fn check(mut self, check: Check) -> Asset {
        self.checks.push(check);
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Asset {
        self.retry = retry;
        self
    }

    /// The file the asset comes from, when it is not written in Rust.
    pub fn defined_in(mut self, path: &str) -> Asset {
        self.defined_in = Some(path.to_string());
        self
    }

    /// Another table the asset writes in the same step (see [`SideWrite`]).
    pub fn side_table(mut self, key: &str) -> Asset {
        self.side_tables.push(key.to_string());
        self
    }
}
