//! Executes a selection of assets in dependency order and keeps the run record honest: run.json is
//! rewritten at every state change, every step appends an event, and progress lines go to stderr
//! (and to worker.log unless a supervisor already captures stderr there). The caller holds the
//! run lock; this module never takes it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use quantlens_lake::arrow::array::RecordBatch;
use quantlens_lake::{At, CommitMetadata, Lake, Staged};
use quantlens_runs::{
    AssetRun, AssetStatus, CheckResult, RunFiles, RunRecord, RunStatus, RunsError,
};
use serde_json::json;

use crate::retry::jitter_seed;
use crate::validate::{check_schema, expected_schema, merge_checks, run_checks};
use crate::{
    freshness, Asset, AssetContext, AssetError, DateRange, ErrorKind, Materialization, Outcome,
    Output, OutputSchema, Registry,
};

pub struct RunOptions {
    /// Selected asset keys, in topological order.
    pub selected: Vec<String>,
    /// Skip assets whose tables are already fresh.
    pub only_stale: bool,
    /// Ask every asset to rebuild its table from scratch instead of updating it incrementally.
    pub full_refresh: bool,
    /// Ask date-ranged assets to recompute these dates (a backfill), after catching up.
    pub range: Option<DateRange>,
    /// Also copy progress lines into worker.log (off when a supervisor redirects stderr there).
    pub log_to_file: bool,
}

/// Runs the selected assets and returns the final record. The record must already exist on disk
/// (status starting); errors are only returned when the run record itself cannot be written.
pub async fn run(
    registry: &Registry,
    lake: &Lake,
    files: &RunFiles,
    mut record: RunRecord,
    options: &RunOptions,
) -> Result<RunRecord, RunsError> {
    let log = Log {
        files: files.clone(),
        to_file: options.log_to_file,
    };
    record.status = RunStatus::Running;
    record.assets = options
        .selected
        .iter()
        .map(|k| AssetRun::pending(k))
        .collect();
    files.write_record(&record)?;
    files.append_event(&json!({"event": "run_started", "run_id": record.run_id.as_str(), "selection": record.selection, "assets": options.selected}))?;
    log.line(&format!(
        "run {} started: {} asset(s) selected ({})",
        record.run_id,
        options.selected.len(),
        record.selection
    ));

    let mut failed: HashSet<String> = HashSet::new();
    let total = options.selected.len();
    for (index, key) in options.selected.iter().enumerate() {
        let asset = registry
            .get(key)
            .expect("selection only holds registered assets");
        let position = format!("[{}/{}]", index + 1, total);

        if let Some(blocked_by) = asset.spec.deps.iter().find(|d| failed.contains(d.as_str())) {
            failed.insert(key.clone());
            let reason = format!("upstream failed: {blocked_by}");
            let entry = &mut record.assets[index];
            entry.status = AssetStatus::Skipped;
            entry.error = Some(reason.clone());
            files.write_record(&record)?;
            files
                .append_event(&json!({"event": "asset_skipped", "asset": key, "reason": reason}))?;
            log.line(&format!("{position} {key}: skipped ({reason})"));
            continue;
        }

        let started = Instant::now();
        let entry = &mut record.assets[index];
        entry.status = AssetStatus::Running;
        entry.started_at = Some(Utc::now());
        files.write_record(&record)?;
        files.append_event(&json!({"event": "asset_started", "asset": key}))?;
        log.line(&format!("{position} {key}: running"));

        let progress_log = log.clone();
        let progress_prefix = format!("{position} {key}: ");
        let progress: crate::asset::Progress = Arc::new(move |message: &str| {
            progress_log.line(&format!("{progress_prefix}{message}"))
        });
        let result = materialize_asset(asset, lake, record.run_id.as_str(), options, progress, &mut |attempt, err| {
            let _ = files.append_event(&json!({"event": "asset_retry", "asset": key, "attempt": attempt, "error": err.message}));
            log.line(&format!("{position} {key}: attempt {attempt} failed, retrying: {}", err.message));
        })
        .await;
        release_freed_memory();
        let seconds = started.elapsed().as_secs_f64();

        let (status, line) = match &result.status {
            Done::Committed { version, rows, .. } => (
                AssetStatus::Succeeded,
                format!("committed version {version}, {rows} rows in {seconds:.2}s"),
            ),
            Done::Unchanged(reason) => (
                AssetStatus::Succeeded,
                format!("nothing to commit ({reason})"),
            ),
            Done::Fresh => (AssetStatus::Fresh, "fresh, not recomputed".to_string()),
            Done::Failed(message) => {
                failed.insert(key.clone());
                (AssetStatus::Failed, format!("FAILED: {message}"))
            }
        };
        let entry = &mut record.assets[index];
        entry.status = status;
        entry.attempts = result.attempts;
        entry.finished_at = Some(Utc::now());
        entry.checks = result.checks.clone();
        if let Done::Committed { version, rows, .. } = result.status {
            entry.table_version = Some(version);
            entry.rows_written = Some(rows);
        }
        if let Done::Failed(message) | Done::Unchanged(message) = &result.status {
            entry.error = Some(message.clone());
        }
        files.write_record(&record)?;
        for check in &result.checks {
            files.append_event(&json!({"event": "check", "asset": key, "check": check}))?;
            if !check.passed {
                let level = if check.blocking {
                    "blocking"
                } else {
                    "warning"
                };
                log.line(&format!(
                    "{position} {key}: check {} failed ({level}): {}",
                    check.name, check.detail
                ));
            }
        }
        files.append_event(&json!({
            "event": "asset_finished", "asset": key, "status": status, "attempts": result.attempts,
            "seconds": seconds, "detail": line,
        }))?;
        log.line(&format!("{position} {key}: {line}"));
    }

    record.status = if failed.is_empty() {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    record.finished_at = Some(Utc::now());
    record.exit_code = Some(if failed.is_empty() {
        quantlens_runs::exit::SUCCEEDED
    } else {
        quantlens_runs::exit::FAILED
    });
    if !failed.is_empty() {
        let mut names: Vec<_> = failed.into_iter().collect();
        names.sort();
        record.error = Some(format!("failed or skipped: {}", names.join(", ")));
    }
    files.write_record(&record)?;
    files.append_event(&json!({"event": "run_finished", "status": record.status}))?;
    log.line(&format!("run {} {}", record.run_id, record.status.as_str()));
    Ok(record)
}

enum Done {
    Committed { version: i64, rows: u64, more: bool },
    Unchanged(String),
    Fresh,
    Failed(String),
}

struct AssetResult {
    status: Done,
    attempts: u32,
    checks: Vec<CheckResult>,
}

async fn materialize_asset(
    asset: &Asset,
    lake: &Lake,
    run_id: &str,
    options: &RunOptions,
    progress: crate::asset::Progress,
    on_retry: &mut (dyn FnMut(u32, &AssetError) + Send),
) -> AssetResult {
    let key = asset.spec.key.to_string();
    let failed = |message: String, attempts| AssetResult {
        status: Done::Failed(message),
        attempts,
        checks: Vec::new(),
    };
    if options.only_stale {
        match asset_freshness(asset, lake).await {
            Ok(state) if state.is_fresh() => {
                return AssetResult {
                    status: Done::Fresh,
                    attempts: 0,
                    checks: Vec::new(),
                }
            }
            Ok(_) => {}
            Err(err) => return failed(err.message, 0),
        }
    }
    let upstream = match upstream_versions(asset, lake, Versions::Latest).await {
        Ok(upstream) => upstream,
        Err(err) => return failed(err.message, 0),
    };

    let context = AssetContext {
        run_id: run_id.to_string(),
        key: key.clone(),
        lake: lake.clone(),
        code_version: asset.spec.code_version.clone(),
        upstream: upstream.clone(),
        full_refresh: options.full_refresh,
        range: options.range,
        progress,
    };
    // An asset may commit its update in pieces (bounded memory on a long catch-up): it asks to
    // be called again after each commit, and every piece gets its own attempts.
    let mut pieces: Option<(i64, u64)> = None;
    let mut checks = Vec::new();
    let mut attempts = 0;
    loop {
        let mut done = match attempt_with_retries(asset, &context, on_retry).await {
            Ok(done) => done,
            Err((message, attempt)) => return failed(message, attempts + attempt),
        };
        attempts += done.attempts;
        checks.append(&mut done.checks);
        match done.status {
            Done::Committed {
                version,
                rows,
                more,
            } => {
                let rows = rows + pieces.map_or(0, |(_, rows)| rows);
                pieces = Some((version, rows));
                if more {
                    (context.progress)(&format!("committed version {version}; continuing"));
                    continue;
                }
            }
            Done::Unchanged(_) if pieces.is_some() => {}
            status => {
                return AssetResult {
                    status,
                    attempts,
                    checks,
                }
            }
        }
        let (version, rows) = pieces.expect("a piece was committed");
        return AssetResult {
            status: Done::Committed {
                version,
                rows,
                more: false,
            },
            attempts,
            checks,
        };
    }
}

/// One piece of an asset's work, retried while its errors are transient; on failure, the last
/// error and the attempts made.
async fn attempt_with_retries(
    asset: &Asset,
    context: &AssetContext,
    on_retry: &mut (dyn FnMut(u32, &AssetError) + Send),
) -> Result<AssetResult, (String, u32)> {
    let mut seed = jitter_seed();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match attempt_once(asset, context).await {
            Err(err) if is_no_space(&err.message) => {
                let message = format!(
                    "no space left on the device: free some, then run again; {}",
                    err.message
                );
                return Err((message, attempt));
            }
            Err(err) if err.kind == ErrorKind::Transient && attempt < asset.retry.max_attempts => {
                on_retry(attempt, &err);
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                tokio::time::sleep(asset.retry.delay_after(attempt, seed >> 11)).await;
            }
            Err(err) => return Err((err.message, attempt)),
            Ok(mut done) => {
                done.attempts = attempt;
                return Ok(done);
            }
        }
    }
}

/// Whether a failure is a full filesystem (ENOSPC, or EDQUOT for a quota): retrying cannot help
/// until someone frees space, so it is reported as such at once. Errors reach the engine as text
/// from delta-rs, Parquet, Polars and DuckDB alike, and the OS's own words are what they share.
fn is_no_space(message: &str) -> bool {
    [
        "No space left on device",
        "(os error 28)",
        "Disk quota exceeded",
        "(os error 122)",
    ]
    .iter()
    .any(|words| message.contains(words))
}

/// One attempt: compute, validate, check, commit. Failed blocking checks are an outcome, not an
/// error, so they are never retried.
async fn attempt_once(asset: &Asset, context: &AssetContext) -> Result<AssetResult, AssetError> {
    let outcome = (asset.compute)(context.clone()).await?;
    let materialization = match outcome {
        Outcome::Unchanged { reason } => {
            return Ok(AssetResult {
                status: Done::Unchanged(reason),
                attempts: 0,
                checks: Vec::new(),
            })
        }
        Outcome::Materialized(m) => m,
    };
    let Materialization {
        output,
        mode,
        extra_metadata,
        side_writes,
        more,
        consumed,
    } = materialization;
    let (staged, checks) = match output {
        Output::Batches(batches) => {
            stage_checked(asset, context, futures::stream::iter([Ok(batches)]).boxed()).await?
        }
        Output::Pieces(pieces) => stage_checked(asset, context, pieces).await?,
        Output::Staged(staged) => {
            // Staged output was never in memory as a whole, so checks could not see it.
            if !asset.checks.is_empty() {
                return Err(AssetError::data(format!(
                    "`{}` stages its output, so its checks cannot run; return batches instead",
                    context.key
                )));
            }
            if matches!(&asset.schema, OutputSchema::Declared(s) if s != staged.schema()) {
                return Err(AssetError::data(format!(
                    "`{}` staged files with a schema other than the one it declares",
                    context.key
                )));
            }
            (Some(staged), Vec::new())
        }
    };
    let Some(staged) = staged else {
        let blocking = checks
            .iter()
            .find(|c| c.blocking && !c.passed)
            .expect("nothing staged only when a blocking check failed");
        return Ok(AssetResult {
            status: Done::Failed(format!(
                "blocking check `{}` failed: {}; nothing committed",
                blocking.name, blocking.detail
            )),
            attempts: 0,
            checks,
        });
    };

    let metadata = CommitMetadata {
        run_id: context.run_id.clone(),
        asset: context.key.clone(),
        code_version: asset.spec.code_version.clone(),
        upstream: consumed.unwrap_or_else(|| context.upstream.clone()),
        extra: extra_metadata,
    };
    let rows = staged.rows();
    let version = context
        .lake
        .commit_staged(&context.key, staged, mode, &metadata)
        .await?;
    let mut committed = vec![context.key.clone()];
    for side in side_writes {
        committed.push(side.key.clone());
        let side_metadata = CommitMetadata {
            asset: side.key.clone(),
            extra: side.extra_metadata,
            ..metadata.clone()
        };
        context
            .lake
            .write(
                &side.key,
                side.schema,
                side.batches,
                side.mode,
                &side_metadata,
            )
            .await?;
    }
    for key in committed {
        if let Err(err) = context.lake.checkpoint_if_due(&key).await {
            // A checkpoint only makes the table quicker to open; a later commit writes it.
            (context.progress)(&format!("`{key}`: checkpoint not written ({err})"));
        }
    }
    Ok(AssetResult {
        status: Done::Committed {
            version,
            rows,
            more,
        },
        attempts: 0,
        checks,
    })
}

/// Validates, checks and stages output one piece at a time, so that only one piece is in memory;
/// `None` staged when a blocking check failed (pieces already staged stay unreferenced files, as
/// after a crash, and nothing is committed).
async fn stage_checked(
    asset: &Asset,
    context: &AssetContext,
    mut pieces: BoxStream<'static, Result<Vec<RecordBatch>, AssetError>>,
) -> Result<(Option<Staged>, Vec<CheckResult>), AssetError> {
    let mut staged: Option<Staged> = None;
    let mut checks = Vec::new();
    let mut count = 0;
    while let Some(batches) = pieces.try_next().await? {
        count += 1;
        let (schema, origin) = match &staged {
            Some(staged) => (staged.schema().clone(), "the earlier pieces have"),
            None => expected_schema(asset, context, &batches).await?,
        };
        check_schema(&context.key, &schema, origin, &batches)?;
        merge_checks(&mut checks, run_checks(asset, &batches));
        if checks.iter().any(|c| c.blocking && !c.passed) {
            return Ok((None, checks));
        }
        let staged =
            staged.get_or_insert_with(|| Staged::partitioned(schema, asset.partition_by.clone()));
        context.lake.stage(&context.key, staged, batches).await?;
    }
    if staged.is_none() {
        // No piece at all: an empty table, with the schema it must have.
        let (schema, _) = expected_schema(asset, context, &[]).await?;
        checks = run_checks(asset, &[]);
        if checks.iter().any(|c| c.blocking && !c.passed) {
            return Ok((None, checks));
        }
        staged = Some(Staged::partitioned(schema, asset.partition_by.clone()));
    }
    if count > 1 {
        for check in checks.iter_mut().filter(|c| c.passed) {
            check.detail = format!(
                "{} (the first of {count} pieces; each passed)",
                check.detail
            );
        }
    }
    Ok((staged, checks))
}

/// Hands memory freed by the last asset back to the OS. glibc keeps freed heap in its arenas,
/// so without this a run's peak RSS is the sum of its assets' peaks rather than the largest.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Which version of an upstream table to name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Versions {
    /// The latest: what a computation reads.
    Latest,
    /// The last that changed data: what staleness compares (maintenance changes none).
    Content,
}

async fn upstream_versions(
    asset: &Asset,
    lake: &Lake,
    which: Versions,
) -> Result<BTreeMap<String, i64>, AssetError> {
    let mut versions = BTreeMap::new();
    for dep in &asset.spec.deps {
        let table = lake.load(dep.as_str(), At::Latest).await?.ok_or_else(|| {
            AssetError::data(format!(
                "upstream `{dep}` has never been materialised; select it too (e.g. `+{}`)",
                asset.spec.key
            ))
        })?;
        let version = match which {
            Versions::Latest => table.version(),
            Versions::Content => table.content_version().await?,
        };
        versions.insert(dep.to_string(), version);
    }
    Ok(versions)
}

/// Whether `asset` needs to run, judged from the lake as it is now.
pub async fn asset_freshness(asset: &Asset, lake: &Lake) -> Result<crate::Freshness, AssetError> {
    let upstream = upstream_versions(asset, lake, Versions::Content).await?;
    let lineage = match lake.load(asset.spec.key.as_str(), At::Latest).await? {
        Some(table) => table.lineage().await?,
        None => None,
    };
    Ok(freshness(
        &asset.spec.code_version,
        lineage.as_ref(),
        &upstream,
    ))
}

/// Progress lines: stderr always, worker.log unless a supervisor captures stderr there already.
#[derive(Clone)]
struct Log {
    files: RunFiles,
    to_file: bool,
}

impl Log {
    fn line(&self, message: &str) {
        let line = format!("{} {message}", Utc::now().format("%H:%M:%S%.3f"));
        let _ = writeln!(std::io::stderr(), "{line}");
        if self.to_file {
            let _ = self.files.append_log(&line);
        }
    }
}
