//! Gold: what the frontend reads. `gold/returns` is computed with Polars (per-symbol order and log
//! returns over silver) plus fixed-order window sums; `gold/market_daily` with DuckDB SQL over the
//! snapshot of gold/returns. Both are partitioned by month and updated incrementally: returns from
//! [`LOOKBACK_ROWS`] rows before each symbol's earliest changed date onward, market_daily for the
//! months whose returns changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::TryStreamExt;
use polars::prelude::{col, lit, IntoLazy, SortMultipleOptions};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, Materialization, Outcome, OutputSchema,
};
use quantlens_lake::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, RecordBatch, StringArray, UInt32Array,
};
use quantlens_lake::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{batches_to_polars, duckdb_to_lake, polars_to_batches, Table};

use crate::columns::{string_column, typed_column};
use crate::silver;
use quantlens_engine::dates::{date_of, month_of};
use quantlens_engine::incremental::{self, plan, Changes, Piece, Plan, MONTH};

pub const RETURNS: &str = "gold/returns";
pub const MARKET_DAILY: &str = "gold/market_daily";

/// A daily move beyond this (in log terms, about +65% / -40%) is worth a warning.
const EXTREME_LOG_RETURN: f64 = 0.5;

/// Rows before a changed date that a recompute reads: the longest window (sma_50) looks 49 rows
/// back, vol_20 looks 20 back (19 plus the close before the first return).
const LOOKBACK_ROWS: usize = 50;

const SILVER_COLUMNS: [&str; 4] = ["symbol", "date", "close", "volume"];

pub fn returns_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
        Field::new("close", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("log_return", DataType::Float64, true),
        Field::new("sma_20", DataType::Float64, true),
        Field::new("sma_50", DataType::Float64, true),
        Field::new("vol_20", DataType::Float64, true),
        Field::new(MONTH, DataType::Utf8, false),
    ]))
}

pub fn market_daily_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("date", DataType::Date32, false),
        Field::new("symbols", DataType::Int64, false),
        Field::new("mean_return", DataType::Float64, true),
        Field::new("advancers", DataType::Int64, false),
        Field::new("decliners", DataType::Int64, false),
        Field::new("dollar_volume", DataType::Float64, true),
        Field::new(MONTH, DataType::Utf8, false),
    ]))
}

/// A schema without its last column (the partition column, which computations add last).
fn without_month(schema: &SchemaRef) -> SchemaRef {
    let fields = &schema.fields()[..schema.fields().len() - 1];
    Arc::new(Schema::new(fields.to_vec()))
}

pub fn returns_asset() -> Asset {
    Asset::new(
        RETURNS,
        OutputSchema::Declared(returns_schema()),
        compute_returns,
    )
    .deps(&[silver::PRICES])
    .code_version("2")
    .description(
        "Per symbol and day: log return, 20/50-day moving averages, 20-day volatility (Polars).",
    )
    .partitioned_by_month()
    .check(Check::blocking("finite_values", finite_values))
    .check(Check::warning("no_extreme_moves", no_extreme_moves))
}

pub fn market_daily_asset() -> Asset {
    Asset::new(
        MARKET_DAILY,
        OutputSchema::Declared(market_daily_schema()),
        compute_market_daily,
    )
    .deps(&[RETURNS])
    .code_version("2")
    .description("Per day: symbols, mean return, advancers, decliners, dollar volume (DuckDB).")
    .partitioned_by_month()
}

fn polars_error(err: polars::prelude::PolarsError) -> AssetError {
    AssetError::data(format!("Polars: {err}"))
}

fn arrow_error(err: quantlens_lake::arrow::error::ArrowError) -> AssetError {
    AssetError::data(format!("Arrow: {err}"))
}

async fn compute_returns(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let silver = ctx.upstream_table(silver::PRICES).await?;
    match plan(&ctx, std::slice::from_ref(&silver)).await? {
        Plan::Unchanged(reason) => Ok(Outcome::Unchanged { reason }),
        Plan::Rebuild => {
            let rows = silver.read(Some(&SILVER_COLUMNS)).await?;
            let returns = split_by_month(&returns_schema(), returns_of(rows)?)?;
            Ok(Outcome::Materialized(Materialization::overwrite(returns)))
        }
        Plan::Update {
            changes,
            previous,
            piece,
            target,
        } => {
            let batches = update_returns(&ctx, &silver, &previous.table, &changes, &piece).await?;
            Ok(Outcome::Materialized(piece.update_commit(
                batches, &changes, target, &previous, false,
            )))
        }
    }
}

/// Recomputes the changed symbols' rows in the piece's months from their earliest changed date
/// on, reading [`LOOKBACK_ROWS`] rows before so the windows are exact, and keeps every other row
/// of those months as it was.
async fn update_returns(
    ctx: &AssetContext,
    silver: &Table,
    returns: &Table,
    changes: &Changes,
    piece: &Piece,
) -> Result<Vec<RecordBatch>, AssetError> {
    let first_month = piece.months.first().expect("a piece has months").clone();
    let mut rows = Vec::new();
    let mut lookback: HashMap<String, usize> = HashMap::new();
    let mut months: Vec<String> = silver
        .partition_values(MONTH)?
        .into_iter()
        .filter(|m| m.as_str() <= piece.through())
        .collect();
    months.reverse();
    for month in months {
        let enough = lookback.len() == changes.symbols()
            && lookback.values().all(|rows| *rows >= LOOKBACK_ROWS);
        if month < first_month && enough {
            break;
        }
        let before_piece = month < first_month;
        let files = incremental::files_in(silver, &BTreeSet::from([month]))?;
        let mut batches = silver.scan_files(files, Some(&SILVER_COLUMNS))?;
        while let Some(batch) = batches.try_next().await? {
            let batch = keep_rows(&batch, |symbol, _| changes.from(symbol).is_some())?;
            let symbols = string_column(&batch, "symbol")?;
            let dates = typed_column::<Date32Array>(&batch, "date")?;
            for row in 0..batch.num_rows() {
                let symbol = symbols.value(row);
                let before = lookback.entry(symbol.to_string()).or_default();
                if before_piece || !changes.covers(symbol, dates.value(row)) {
                    *before += 1;
                }
            }
            rows.push(batch);
        }
    }
    let recomputed = returns_of(rows)?;
    let recomputed = keep_rows(&recomputed, |symbol, day| {
        piece.contains_day(day) && changes.covers(symbol, day)
    })?;
    (ctx.progress)(&format!(
        "recomputing {} row(s) of {} symbol(s) in {first_month} to {}",
        recomputed.num_rows(),
        changes.symbols(),
        piece.through()
    ));

    let mut kept = Vec::new();
    let mut batches = returns.scan_files(incremental::files_in(returns, &piece.months)?, None)?;
    while let Some(batch) = batches.try_next().await? {
        let batch = batch
            .project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())
            .map_err(arrow_error)?;
        kept.push(keep_rows(&batch, |symbol, day| {
            !changes.covers(symbol, day)
        })?);
    }
    kept.push(recomputed);
    let merged = concat_batches(&without_month(&returns_schema()), &kept).map_err(arrow_error)?;
    split_by_month(&returns_schema(), merged)
}

/// The rows of `batch` for which `keep(symbol, date)` holds.
fn keep_rows(
    batch: &RecordBatch,
    keep: impl Fn(&str, i32) -> bool,
) -> Result<RecordBatch, AssetError> {
    let symbols = string_column(batch, "symbol")?;
    let dates = typed_column::<Date32Array>(batch, "date")?;
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|row| Some(keep(symbols.value(row), dates.value(row))))
        .collect();
    filter_record_batch(batch, &mask).map_err(arrow_error)
}

/// Splits rows into one batch per month (in month order) and appends the `month` column, giving
/// batches of `schema`. Rows keep their relative order within a month.
fn split_by_month(schema: &SchemaRef, batch: RecordBatch) -> Result<Vec<RecordBatch>, AssetError> {
    let dates = typed_column::<Date32Array>(&batch, "date")?;
    let mut month_of_day: HashMap<i32, String> = HashMap::new();
    let mut rows_of_month: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let day = dates.value(row);
        let month = month_of_day.entry(day).or_insert_with(|| month_of(day));
        rows_of_month
            .entry(month.clone())
            .or_default()
            .push(row as u32);
    }
    rows_of_month
        .into_iter()
        .map(|(month, rows)| {
            let rows = take_record_batch(&batch, &UInt32Array::from(rows)).map_err(arrow_error)?;
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![month; rows.num_rows()])) as ArrayRef);
            RecordBatch::try_new(schema.clone(), columns).map_err(arrow_error)
        })
        .collect()
}

/// Returns and windows per symbol, in (symbol, date) order, without the month column. Polars sorts
/// and takes the log returns; the windows are summed in a fixed order over exactly their rows
/// (see [`window_means`]).
fn returns_of(silver_rows: Vec<RecordBatch>) -> Result<RecordBatch, AssetError> {
    let output_schema = without_month(&returns_schema());
    let Some(first) = silver_rows.first() else {
        return Ok(RecordBatch::new_empty(output_schema));
    };
    let silver = batches_to_polars(&first.schema(), &silver_rows)?;
    drop(silver_rows);
    let mut sorted = silver
        .lazy()
        .sort(["symbol", "date"], SortMultipleOptions::default())
        .with_column(
            (col("close") / col("close").shift(lit(1)))
                .log(lit(std::f64::consts::E))
                .over([col("symbol")])
                .map_err(polars_error)?
                .alias("log_return"),
        )
        .collect()
        .map_err(polars_error)?;
    let sorted_schema = Arc::new(Schema::new(output_schema.fields()[..5].to_vec()));
    let batches = polars_to_batches(&mut sorted, &sorted_schema)?;
    drop(sorted);
    let sorted = concat_batches(&sorted_schema, &batches).map_err(arrow_error)?;
    drop(batches);

    let symbols = string_column(&sorted, "symbol")?;
    let close = typed_column::<Float64Array>(&sorted, "close")?;
    let log_return = typed_column::<Float64Array>(&sorted, "log_return")?;
    let runs = symbol_runs(symbols);
    let mut columns = sorted.columns().to_vec();
    columns.push(Arc::new(window_means(&runs, close, 20)));
    columns.push(Arc::new(window_means(&runs, close, 50)));
    columns.push(Arc::new(window_std(&runs, log_return, 20)));
    RecordBatch::try_new(output_schema, columns).map_err(arrow_error)
}

/// For each row, the index of the first row of its symbol (rows sorted by symbol).
fn symbol_runs(symbols: &StringArray) -> Vec<usize> {
    let mut start = 0;
    (0..symbols.len())
        .map(|row| {
            if row > 0 && symbols.value(row) != symbols.value(row - 1) {
                start = row;
            }
            start
        })
        .collect()
}

/// The window of `size` rows ending at `row`, if the symbol has that many rows by then and none
/// of them is null.
fn window<'a>(
    runs: &[usize],
    values: &'a Float64Array,
    row: usize,
    size: usize,
) -> Option<&'a [f64]> {
    let first = (row + 1).checked_sub(size)?;
    if first < runs[row] || (first..=row).any(|i| values.is_null(i)) {
        return None;
    }
    Some(&values.values()[first..=row])
}

/// Rolling means whose every value is a sum over exactly its window, in row order, so that a
/// recompute that starts later in a symbol's history gives bit-identical values. (Polars' rolling
/// sums carry a running compensated sum from the series' first row, so theirs would differ in the
/// last bits depending on where a computation starts.)
fn window_means(runs: &[usize], values: &Float64Array, size: usize) -> Float64Array {
    (0..values.len())
        .map(|row| window(runs, values, row, size).map(|w| w.iter().sum::<f64>() / size as f64))
        .collect()
}

/// Rolling sample standard deviations (n - 1), computed like [`window_means`].
fn window_std(runs: &[usize], values: &Float64Array, size: usize) -> Float64Array {
    (0..values.len())
        .map(|row| {
            window(runs, values, row, size).map(|w| {
                let mean = w.iter().sum::<f64>() / size as f64;
                let squares: f64 = w.iter().map(|v| (v - mean) * (v - mean)).sum();
                (squares / (size - 1) as f64).sqrt()
            })
        })
        .collect()
}

async fn compute_market_daily(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let returns = ctx.upstream_table(RETURNS).await?;
    match plan(&ctx, std::slice::from_ref(&returns)).await? {
        Plan::Unchanged(reason) => Ok(Outcome::Unchanged { reason }),
        Plan::Rebuild => {
            // A year of returns at a time keeps DuckDB's sorted aggregates small.
            let months = returns.partition_values(MONTH)?;
            let mut daily = Vec::new();
            let mut done: Option<String> = None;
            while let Some(piece) = Piece::next(&months, done.as_deref()) {
                let files = incremental::files_in(&returns, &piece.months)?;
                daily.extend(market_daily_of(&returns, files, None).await?);
                done = Some(piece.through().to_string());
            }
            Ok(Outcome::Materialized(Materialization::overwrite(daily)))
        }
        Plan::Update {
            changes,
            previous,
            piece,
            target,
        } => {
            let from = changes.earliest().expect("changes are not empty");
            let files = incremental::files_in(&returns, &piece.months)?;
            let mut days = Vec::new();
            // The days before the first change keep their rows; the others are recomputed.
            let mut kept = previous
                .table
                .scan_files(incremental::files_in(&previous.table, &piece.months)?, None)?;
            while let Some(batch) = kept.try_next().await? {
                let dates = typed_column::<Date32Array>(&batch, "date")?;
                let before: BooleanArray = dates.iter().map(|d| Some(d < Some(from))).collect();
                days.push(filter_record_batch(&batch, &before).map_err(arrow_error)?);
            }
            days.extend(market_daily_of(&returns, files, Some(from)).await?);
            let days = concat_batches(&market_daily_schema(), &days).map_err(arrow_error)?;
            let without = days
                .project(&(0..days.num_columns() - 1).collect::<Vec<_>>())
                .map_err(arrow_error)?;
            let daily = split_by_month(&market_daily_schema(), without)?;
            Ok(Outcome::Materialized(
                piece.update_commit(daily, &changes, target, &previous, false),
            ))
        }
    }
}

/// The market_daily rows of the dates in `files` (files of gold/returns), from the day `from` on
/// when given, one batch per month.
async fn market_daily_of(
    returns: &Table,
    files: Vec<quantlens_lake::TableFile>,
    from: Option<i32>,
) -> Result<Vec<RecordBatch>, AssetError> {
    let paths = returns.local_paths(files).await?;
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    // Floating-point sums depend on the order of their terms, and an incremental run stores a
    // month's rows in another order than a rebuild: summing in symbol order makes every value a
    // function of the day's rows alone.
    let sql = format!(
        "SELECT date,
                count(*)::BIGINT AS symbols,
                avg(log_return ORDER BY symbol) AS mean_return,
                count(*) FILTER (WHERE log_return > 0)::BIGINT AS advancers,
                count(*) FILTER (WHERE log_return < 0)::BIGINT AS decliners,
                sum(close * volume::DOUBLE ORDER BY symbol) AS dollar_volume
         FROM read_parquet({})
         {}
         GROUP BY date
         ORDER BY date",
        quantlens_lake::duck::parquet_list(&paths),
        from.map_or(String::new(), |day| format!(
            "WHERE date >= DATE '{}'",
            date_of(day)
        )),
    );
    let duck_error = |e: duckdb::Error| AssetError::data(format!("DuckDB: {e}"));
    let conn = quantlens_lake::duck::connect().map_err(duck_error)?;
    let mut statement = conn.prepare(&sql).map_err(duck_error)?;
    let schema = without_month(&market_daily_schema());
    let batches = statement
        .query_arrow([])
        .map_err(duck_error)?
        .map(|batch| duckdb_to_lake(batch, &schema))
        .collect::<Result<Vec<RecordBatch>, _>>()?;
    let daily = concat_batches(&schema, &batches).map_err(arrow_error)?;
    split_by_month(&market_daily_schema(), daily)
}

fn float_columns(batch: &RecordBatch) -> impl Iterator<Item = (&str, &Float64Array)> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter_map(|(field, column)| {
            column
                .as_any()
                .downcast_ref::<Float64Array>()
                .map(|values| (field.name().as_str(), values))
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// Blocking: no infinite or NaN value in any numeric column (a bad tick upstream shows up here).
fn finite_values(batches: &[RecordBatch]) -> Result<String, String> {
    for batch in batches {
        for (name, values) in float_columns(batch) {
            if let Some(bad) = values.iter().flatten().find(|v| !v.is_finite()) {
                return Err(format!("`{name}` holds {bad}"));
            }
        }
    }
    Ok("all values finite".into())
}

/// Warning: daily moves larger than EXTREME_LOG_RETURN usually mean a bad tick or a split.
fn no_extreme_moves(batches: &[RecordBatch]) -> Result<String, String> {
    let extreme: usize = batches
        .iter()
        .filter_map(|b| b.column_by_name("log_return"))
        .filter_map(|c| c.as_any().downcast_ref::<Float64Array>())
        .map(|values| {
            values
                .iter()
                .flatten()
                .filter(|v| v.abs() > EXTREME_LOG_RETURN)
                .count()
        })
        .sum();
    if extreme > 0 {
        Err(format!(
            "{extreme} row(s) with |log_return| > {EXTREME_LOG_RETURN}"
        ))
    } else {
        Ok(format!("no |log_return| above {EXTREME_LOG_RETURN}"))
    }
}
