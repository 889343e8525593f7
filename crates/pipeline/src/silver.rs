//! `silver/prices`: typed, validated, one row per (symbol, date). Every bronze row either becomes a
//! candidate price or goes to `silver/prices_rejects` with the first rule it broke, so nothing is
//! silently dropped. Among candidates for the same (symbol, date), the latest delivery wins:
//! greatest ingested_at, then source_file, then source_line. Each row keeps those three columns,
//! so a daily run can apply the same rule to only the new bronze rows and the silver rows they
//! compete with: the months they fall in are re-derived and replaced, nothing else. New days after
//! the table's last (the daily delivery) compete with no silver row and are simply appended.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use futures::TryStreamExt;
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, DateRange, Materialization, Outcome, Output,
    OutputSchema,
};
use quantlens_lake::arrow::array::{Array, Date32Array, RecordBatch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{At, CommitMetadata, Table, TableFile, WriteMode};

use crate::bronze;
use crate::columns::{string_column, typed_column, utc_timestamp};
use crate::rejects::{self, RejectsBuilder};
use derivation::Derivation;
use quantlens_engine::dates::months_between;
use quantlens_engine::incremental::{self, Backfill, Changes, Piece, Previous, Progress, MONTH};

mod derivation;
mod spill;

pub const PRICES: &str = "silver/prices";

/// Bumped whenever the rows silver derives would change; a new version rebuilds the table.
const CODE_VERSION: &str = "2";

pub fn prices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
        Field::new("open", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
        Field::new("close", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_line", DataType::Int64, false),
        Field::new("ingested_at", utc_timestamp(), false),
        Field::new(MONTH, DataType::Utf8, false),
    ]))
}

pub fn asset() -> Asset {
    Asset::new(PRICES, OutputSchema::Declared(prices_schema()), compute)
        .deps(&[bronze::PRICES])
        .code_version(CODE_VERSION)
        .description("Validated daily prices, one row per (symbol, date), latest delivery wins.")
        .partitioned_by_month()
        .check(Check::blocking("unique_symbol_date", unique_symbol_date))
        .check(Check::blocking("no_null_prices", no_null_prices))
        .side_table(rejects::REJECTS)
}

async fn compute(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let bronze = ctx.upstream_table(bronze::PRICES).await?;
    let Some(previous) = incremental::previous(&ctx, bronze::PRICES).await? else {
        return rebuild(&bronze).await;
    };
    let rejects_through = catch_up_rejects(&ctx, &previous).await?;
    // Catch up with bronze first, so that a backfill starts from an up-to-date table.
    if previous.upstream_version != bronze.version() {
        return match bronze.appended_since(previous.upstream_version).await? {
            Some(new_files) => update(&ctx, &bronze, new_files, &previous, rejects_through).await,
            None => {
                (ctx.progress)(&format!(
                    "bronze did more than append since version {}: rebuilding",
                    previous.upstream_version
                ));
                rebuild(&bronze).await
            }
        };
    }
    match ctx.range {
        Some(range) => backfill(&ctx, &bronze, &previous, range).await,
        None => Ok(Outcome::Unchanged {
            reason: format!("no bronze rows since version {}", bronze.version()),
        }),
    }
}

/// Derives the whole table from every bronze row: one pass over bronze keeps the candidates on
/// disk by month, then the engine takes the rows a piece of months at a time.
async fn rebuild(bronze: &Table) -> Result<Outcome, AssetError> {
    let mut derivation = Derivation::spilling()?;
    let mut batches = bronze.scan(None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |_| true)?;
    }
    let rejects = std::mem::replace(&mut derivation.rejects, RejectsBuilder::new()).finish()?;
    let mut silver = Materialization::overwrite_with(Output::Pieces(derivation.into_pieces()));
    silver.side_writes.push(rejects::side_write(
        rejects,
        WriteMode::Overwrite,
        bronze.version(),
    ));
    Ok(Outcome::Materialized(silver))
}

/// Makes the rejects table complete up to the bronze version silver last read, when a crash
/// between a silver commit and its rejects commit left it behind, and returns the bronze version
/// it is complete up to (which may be ahead of silver's: an update in pieces writes its rejects
/// with the first piece).
async fn catch_up_rejects(ctx: &AssetContext, previous: &Previous) -> Result<i64, AssetError> {
    let silver_read = previous.upstream_version;
    let through = rejects::recorded_through(&ctx.lake, silver_read).await?;
    if through.is_some_and(|through| through >= silver_read) {
        return Ok(through.expect("checked"));
    }
    let bronze = ctx
        .lake
        .load(bronze::PRICES, At::Version(silver_read))
        .await?
        .ok_or_else(|| AssetError::data("bronze/prices is gone"))?;
    let missing = match through {
        Some(through) => bronze.appended_since(through).await?,
        None => None,
    };
    // Without a clean trail of appends, the rejects of every bronze row replace the table.
    let (files, mode) = match missing {
        Some(files) => (files, WriteMode::Append),
        None => (bronze.files()?, WriteMode::Overwrite),
    };
    let mut derivation = Derivation::with_capacity(0);
    let mut batches = bronze.scan_files(files, None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |_| false)?;
    }
    let found = derivation.rejects.len();
    let repair = rejects::side_write(derivation.rejects.finish()?, mode, silver_read);
    let metadata = CommitMetadata {
        run_id: ctx.run_id.clone(),
        asset: repair.key.clone(),
        code_version: ctx.code_version.clone(),
        upstream: previous.upstream.clone(),
        extra: repair.extra_metadata,
    };
    ctx.lake
        .write(
            &repair.key,
            repair.schema,
            repair.batches,
            repair.mode,
            &metadata,
        )
        .await?;
    (ctx.progress)(&format!(
        "rejects table repaired up to bronze version {silver_read} with {found} reject(s) an \
         interrupted run did not record"
    ));
    Ok(silver_read)
}

/// Applies the bronze rows appended since the last run: the months they fall in are derived
/// again from those rows plus the silver rows already there, and replaced, a piece at a time.
/// The rejects of bronze rows after `rejects_through` go with the first commit.
async fn update(
    ctx: &AssetContext,
    bronze: &Table,
    new_files: Vec<TableFile>,
    previous: &Previous,
    rejects_through: i64,
) -> Result<Outcome, AssetError> {
    let rejects_due = rejects_through < bronze.version();
    let unrecorded: HashSet<String> = match rejects_due {
        true => bronze
            .appended_since(rejects_through)
            .await?
            .ok_or_else(|| AssetError::data("bronze did more than append after its rejects"))?
            .into_iter()
            .map(|f| f.path.to_string())
            .collect(),
        false => HashSet::new(),
    };
    let (with_rejects, without): (Vec<_>, Vec<_>) = new_files
        .into_iter()
        .partition(|f| unrecorded.contains(f.path.as_ref()));
    let mut derivation = Derivation::with_capacity(0);
    for (files, record_rejects) in [(with_rejects, true), (without, false)] {
        derivation.record_rejects = record_rejects;
        let mut batches = bronze.scan_files(files, None)?;
        while let Some(batch) = batches.try_next().await? {
            derivation.add_bronze(&batch, |_| true)?;
        }
    }
    let months = derivation.months();
    let resume_after = previous.resume_after(bronze.version());
    let rejects_of = |rejects: RecordBatch, output: Materialization| {
        let mut output = output;
        if rejects_due {
            output.side_writes.push(rejects::side_write(
                rejects,
                WriteMode::Append,
                bronze.version(),
            ));
        }
        Outcome::Materialized(output)
    };
    let Some(piece) = Piece::next(&months, resume_after.as_deref()) else {
        // Only rejects, or a crash right after the last piece: record the bronze version read.
        let output = Piece::materialization(
            Vec::new(),
            &Changes::default(),
            None,
            None,
            ctx.range.is_some(),
        );
        return Ok(rejects_of(derivation.rejects.finish()?, output));
    };
    (ctx.progress)(&format!(
        "{} new bronze row(s) touch {} month(s); deriving {} to {}",
        derivation.candidates.len() + derivation.rejects.len(),
        months.len(),
        piece.months.first().expect("a piece has months"),
        piece.through()
    ));
    derivation.candidates.retain(|c| piece.contains_day(c.date));
    // Days after the table's last one (the daily delivery) compete with no silver row: the new
    // rows are appended, and the months they fall in are neither read back nor rewritten.
    let appends = match derivation.candidates.iter().map(|c| c.date).min() {
        Some(first_day) => incremental::only_adds(&previous.table, first_day)?,
        None => false,
    };
    if !appends {
        let mut batches = previous
            .table
            .scan_files(incremental::files_in(&previous.table, &piece.months)?, None)?;
        while let Some(batch) = batches.try_next().await? {
            derivation.add_silver(&batch)?;
        }
    }
    let derived = derivation.finish()?;
    let output = piece
        .update_commit(
            derived.batches,
            &derived.changes,
            bronze.version(),
            previous,
            ctx.range.is_some(),
        )
        .appending_when(appends);
    Ok(rejects_of(derived.rejects, output))
}

/// `--from/--to`: derives the months of the range again from every bronze row, a piece at a time
/// (one bronze scan per piece), replacing them. Rejects are left as they are.
async fn backfill(
    ctx: &AssetContext,
    bronze: &Table,
    previous: &Previous,
    range: DateRange,
) -> Result<Outcome, AssetError> {
    let months = months_between(range.from, range.to);
    let (first, last) = (
        months.first().cloned().unwrap_or_default(),
        months.last().cloned().unwrap_or_default(),
    );
    let started = previous.progress.as_ref().filter(|p| {
        p.target == bronze.version()
            && p.backfill
                .as_ref()
                .is_some_and(|b| (&b.first, &b.last) == (&first, &last))
    });
    let resume_after = match started {
        Some(p)
            if p.through == last && p.backfill.as_ref().is_some_and(|b| b.run_id == ctx.run_id) =>
        {
            return Ok(Outcome::Unchanged {
                reason: format!("backfill of {first} to {last} done"),
            })
        }
        Some(p) if p.through != last => Some(p.through.clone()),
        _ => None,
    };
    let piece = Piece::next(&months, resume_after.as_deref())
        .expect("an unfinished backfill has months left");
    (ctx.progress)(&format!(
        "backfill: deriving {} to {} from every bronze row",
        piece.months.first().expect("a piece has months"),
        piece.through()
    ));
    let mut derivation = Derivation::with_capacity(0);
    derivation.record_rejects = false;
    let mut batches = bronze.scan(None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |day| piece.contains_day(day))?;
    }
    let derived = derivation.finish()?;
    let progress = Progress {
        target: bronze.version(),
        through: piece.through().to_string(),
        backfill: Some(Backfill {
            first,
            last,
            run_id: ctx.run_id.clone(),
        }),
    };
    Ok(Outcome::Materialized(Piece::materialization(
        derived.batches,
        &derived.changes,
        Some(progress),
        None,
        !piece.last,
    )))
}

/// Blocking: at most one row per (symbol, date). Silver is written sorted by (date, symbol), which
/// makes this a single pass; unsorted input falls back to a hash set.
fn unique_symbol_date(batches: &[RecordBatch]) -> Result<String, String> {
    let mut previous: Option<(i32, &str)> = None;
    let mut sorted = true;
    let mut rows = 0usize;
    for batch in batches {
        let symbols = string_column(batch, "symbol").map_err(|e| e.message)?;
        let dates = typed_column::<Date32Array>(batch, "date").map_err(|e| e.message)?;
        for i in 0..batch.num_rows() {
            rows += 1;
            let key = (dates.value(i), symbols.value(i));
            if let Some(previous) = previous {
                match previous.cmp(&key) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(format!("duplicate row for ({}, day {})", key.1, key.0));
                    }
                    Ordering::Greater => sorted = false,
                }
            }
            previous = Some(key);
        }
    }
    if !sorted {
        let mut seen = std::collections::HashSet::new();
        for batch in batches {
            let symbols = string_column(batch, "symbol").map_err(|e| e.message)?;
            let dates = typed_column::<Date32Array>(batch, "date").map_err(|e| e.message)?;
            for i in 0..batch.num_rows() {
                if !seen.insert((symbols.value(i).to_string(), dates.value(i))) {
                    return Err(format!(
                        "duplicate row for ({}, day {})",
                        symbols.value(i),
                        dates.value(i)
                    ));
                }
            }
        }
    }
    Ok(format!("{rows} rows, all (symbol, date) unique"))
}

/// Blocking: every price column is fully populated.
fn no_null_prices(batches: &[RecordBatch]) -> Result<String, String> {
    for name in ["open", "high", "low", "close"] {
        let nulls: usize = batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .map_or(b.num_rows(), |c| c.null_count())
            })
            .sum();
        if nulls > 0 {
            return Err(format!("`{name}` has {nulls} null(s)"));
        }
    }
    Ok("open, high, low, close have no nulls".into())
}
