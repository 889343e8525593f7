//! `gold/returns`: per symbol and day over silver/prices, the log return, the 20- and 50-day
//! moving averages of the close and the 20-day volatility of the log returns. Polars orders the
//! rows by symbol and date (on one integer key: symbols are ranked first, as strings would make it
//! sort by comparing bytes); the returns and windows are then computed here, each window summed
//! over exactly its rows, so a value depends on its window alone. That is what lets a rebuild go
//! through silver a piece of months at a time, carrying each symbol's last [`LOOKBACK_ROWS`]
//! closes into the next piece, and an update start [`LOOKBACK_ROWS`] rows before a symbol's
//! earliest change: both give the values of a one-shot computation, bit for bit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use polars::prelude::{ChunkSort, Int64Chunked, SortOptions};
use quantlens_engine::dates::month_start;
use quantlens_engine::incremental::{self, piece_rows, plan, Changes, Piece, Plan, MONTH};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, Materialization, Outcome, Output, OutputSchema,
};
use quantlens_lake::arrow::array::{Array, ArrayRef, Date32Array, Float64Array, RecordBatch};
use quantlens_lake::arrow::array::{BooleanArray, Float64Builder, UInt32Array};
use quantlens_lake::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::Table;

use super::{
    arrow_error, drop_month, split_by_month, split_grouped_by_month, without_month, RETURNS,
};
use crate::columns::{string_column, typed_column};
use crate::silver;

/// A daily move beyond this (in log terms, about +65% / -40%) is worth a warning.
const EXTREME_LOG_RETURN: f64 = 0.5;

/// Rows before a changed date that a recompute reads: the longest window (sma_50) looks 49 rows
/// back, vol_20 looks 20 back (19 plus the close before the first return).
const LOOKBACK_ROWS: usize = 50;

const SILVER_COLUMNS: [&str; 4] = ["symbol", "date", "close", "volume"];

/// The name of the series of sort keys Polars orders (see [`sort_keys`]).
const SORT_KEY: &str = "sort_key";

pub fn schema() -> SchemaRef {
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

pub fn asset() -> Asset {
    Asset::new(RETURNS, OutputSchema::Declared(schema()), compute)
        .deps(&[silver::PRICES])
        .code_version("2")
        .description(
            "Per symbol and day: log return, 20/50-day moving averages, 20-day volatility (Polars).",
        )
        .partitioned_by_month()
        .check(Check::blocking("finite_values", finite_values))
        .check(Check::warning("no_extreme_moves", no_extreme_moves))
}

fn polars_error(err: polars::prelude::PolarsError) -> AssetError {
    AssetError::data(format!("Polars: {err}"))
}

async fn compute(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let silver = ctx.upstream_table(silver::PRICES).await?;
    match plan(&ctx, std::slice::from_ref(&silver)).await? {
        Plan::Unchanged(reason) => Ok(Outcome::Unchanged { reason }),
        Plan::Rebuild => Ok(Outcome::Materialized(Materialization::overwrite_with(
            Output::Pieces(rebuild(silver)),
        ))),
        Plan::Update {
            changes,
            previous,
            piece,
            target,
        } => {
            let (batches, appends) =
                update(&ctx, &silver, &previous.table, &changes, &piece).await?;
            Ok(Outcome::Materialized(
                piece
                    .update_commit(batches, &changes, target, &previous, false)
                    .appending_when(appends),
            ))
        }
    }
}

/// What a rebuild carries from one piece to the next.
struct Rebuild {
    silver: Table,
    done_through: Option<String>,
    /// Each symbol's last closes before the next piece.
    tails: Tails,
}

/// The whole table, a piece of silver's months at a time (about [`piece_rows`] rows).
fn rebuild(silver: Table) -> BoxStream<'static, Result<Vec<RecordBatch>, AssetError>> {
    let start = Rebuild {
        silver,
        done_through: None,
        tails: Tails::new(),
    };
    futures::stream::try_unfold(start, |mut state| async move {
        let Some(piece) =
            Piece::next_by_rows(&state.silver, state.done_through.as_deref(), piece_rows()?)?
        else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        let files = incremental::files_in(&state.silver, &piece.months)?;
        let mut batches = state.silver.scan_files(files, Some(&SILVER_COLUMNS))?;
        while let Some(batch) = batches.try_next().await? {
            rows.push(batch);
        }
        let in_piece = returns_of(rows, &mut state.tails, i32::MIN)?;
        state.done_through = Some(piece.through().to_string());
        Ok(Some((split_grouped_by_month(&schema(), &in_piece)?, state)))
    })
    .boxed()
}

/// Recomputes the changed symbols' rows in the piece's months from their earliest changed date
/// on, reading [`LOOKBACK_ROWS`] rows before so the windows are exact, and keeps every other row
/// of those months as it was; or, when the changes only add days after the table's last
/// (`true`), returns the recomputed rows alone, to be appended.
async fn update(
    ctx: &AssetContext,
    silver: &Table,
    returns: &Table,
    changes: &Changes,
    piece: &Piece,
) -> Result<(Vec<RecordBatch>, bool), AssetError> {
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
                let counts = before_piece || !changes.covers(symbol, dates.value(row));
                match lookback.get_mut(symbol) {
                    Some(before) => *before += usize::from(counts),
                    None => {
                        lookback.insert(symbol.to_string(), usize::from(counts));
                    }
                }
            }
            rows.push(batch);
        }
    }
    let earliest = changes.earliest().expect("an update has changes");
    let recomputed = returns_of(rows, &mut Tails::new(), earliest)?;
    let recomputed = keep_rows(&recomputed, |symbol, day| {
        piece.contains_day(day) && changes.covers(symbol, day)
    })?;
    (ctx.progress)(&format!(
        "recomputing {} row(s) of {} symbol(s) in {first_month} to {}",
        recomputed.num_rows(),
        changes.symbols(),
        piece.through()
    ));

    // Changes that all start after the table's last day (the daily delivery) leave every row
    // it holds as it is: the recomputed rows are appended.
    if incremental::only_adds(returns, earliest)? {
        return Ok((split_by_month(&schema(), recomputed)?, true));
    }
    let mut kept = Vec::new();
    let mut batches = returns.scan_files(incremental::files_in(returns, &piece.months)?, None)?;
    while let Some(batch) = batches.try_next().await? {
        kept.push(keep_rows(&drop_month(&batch)?, |symbol, day| {
            !changes.covers(symbol, day)
        })?);
    }
    kept.push(recomputed);
    let merged = concat_batches(&without_month(&schema()), &kept).map_err(arrow_error)?;
    Ok((split_by_month(&schema(), merged)?, false))
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

/// Each row's sort key, ordering rows by month, then symbol name, then date: the month (as days
/// from the earliest month's first day) in the high bits, the symbol's rank in name order in the
/// middle 32, the day of the month in the low 8. A month's rows are then one contiguous run in
/// the (symbol, date) order its file keeps, written without a copy, and a symbol's rows of
/// consecutive months follow each other through the tails.
fn sort_keys(batches: &[RecordBatch]) -> Result<Vec<i64>, AssetError> {
    let mut ids: foldhash::HashMap<&str, u32> = foldhash::HashMap::default();
    let mut ids_of_rows = Vec::with_capacity(batches.len());
    let mut first_month = i32::MAX;
    for batch in batches {
        let symbols = string_column(batch, "symbol")?;
        let rows: Vec<u32> = symbols
            .iter()
            .map(|symbol| {
                let next = ids.len() as u32;
                *ids.entry(symbol.unwrap_or_default()).or_insert(next)
            })
            .collect();
        ids_of_rows.push(rows);
        let dates = typed_column::<Date32Array>(batch, "date")?;
        if let Some(first) = dates.values().iter().min() {
            first_month = first_month.min(month_start(*first));
        }
    }
    let mut names: Vec<(&str, u32)> = ids.iter().map(|(name, id)| (*name, *id)).collect();
    names.sort_unstable();
    let mut rank_of_id = vec![0i64; names.len()];
    for (rank, (_, id)) in names.iter().enumerate() {
        rank_of_id[*id as usize] = rank as i64;
    }
    // Silver keeps its rows in date order: consecutive rows mostly share their day.
    let mut last = (i32::MIN, 0);
    let mut month_of_day = |day: i32| {
        if day != last.0 {
            last = (day, month_start(day));
        }
        last.1
    };
    let mut keys = Vec::with_capacity(ids_of_rows.iter().map(Vec::len).sum());
    for (batch, ids) in batches.iter().zip(ids_of_rows) {
        let dates = typed_column::<Date32Array>(batch, "date")?.values();
        for (id, day) in ids.into_iter().zip(dates) {
            let month = month_of_day(*day);
            let rank = rank_of_id[id as usize];
            keys.push(
                (i64::from(month - first_month) << 40) | (rank << 8) | i64::from(day - month),
            );
        }
    }
    Ok(keys)
}

/// Each symbol's last closes (at most [`LOOKBACK_ROWS`], oldest first) before the rows being
/// computed: all a window needs from earlier rows, since the returns are recomputed from them.
type Tails = HashMap<String, Vec<f64>>;

/// Returns and windows per symbol, in (month, symbol, date) order, without the month column, for
/// `silver_rows` following the closes in `tails` (which then hold the new last closes). Rows
/// dated before `windows_from` are only there to fill the windows of later ones (a lookback):
/// their own windows are left null.
///
/// Only the new rows go through the sort; the tails are read per symbol, so carrying 50 rows of
/// each of 10,000 symbols costs a lookup per symbol, not half a million more rows to order.
fn returns_of(
    silver_rows: Vec<RecordBatch>,
    tails: &mut Tails,
    windows_from: i32,
) -> Result<RecordBatch, AssetError> {
    let output_schema = without_month(&schema());
    if silver_rows.iter().all(|b| b.num_rows() == 0) {
        return Ok(RecordBatch::new_empty(output_schema));
    }
    let sorted = sorted_by_month_symbol_and_date(silver_rows)?;
    let symbols = string_column(&sorted, "symbol")?;
    let dates = typed_column::<Date32Array>(&sorted, "date")?.values();
    let closes = typed_column::<Float64Array>(&sorted, "close")?.values();
    let mut out = Derived::with_capacity(sorted.num_rows());
    let mut series = Series::default();
    let mut start = 0;
    while start < sorted.num_rows() {
        let symbol = symbols.value(start);
        let end = (start..sorted.num_rows())
            .find(|row| symbols.value(*row) != symbol)
            .unwrap_or(sorted.num_rows());
        let tail = tails.get(symbol).map_or(&[][..], Vec::as_slice);
        series.fill(tail, &closes[start..end]);
        for (index, day) in (tail.len()..).zip(&dates[start..end]) {
            out.push(&series, index, *day >= windows_from);
        }
        let kept = &series.closes[series.closes.len().saturating_sub(LOOKBACK_ROWS)..];
        match tails.get_mut(symbol) {
            Some(tail) => {
                tail.clear();
                tail.extend_from_slice(kept);
            }
            None => {
                tails.insert(symbol.to_string(), kept.to_vec());
            }
        }
        start = end;
    }
    let mut columns: Vec<ArrayRef> = sorted.columns()[..4].to_vec();
    columns.extend(out.into_columns());
    RecordBatch::try_new(output_schema, columns).map_err(arrow_error)
}

/// The silver columns of `silver_rows`, ordered by one integer key (month, symbol rank, date:
/// see [`sort_keys`]). Polars sorts the keys alone (in parallel) and the columns are gathered
/// once in that order: handing it the columns instead would convert the symbols to its string
/// views and back, three copies of a piece where one does.
fn sorted_by_month_symbol_and_date(
    silver_rows: Vec<RecordBatch>,
) -> Result<RecordBatch, AssetError> {
    let keys = Int64Chunked::from_vec(SORT_KEY.into(), sort_keys(&silver_rows)?);
    let order = keys.arg_sort(SortOptions::default());
    let order = UInt32Array::from(order.cont_slice().map_err(polars_error)?.to_vec());
    let silver_schema = Arc::new(Schema::new(schema().fields()[..4].to_vec()));
    let projected = silver_rows
        .iter()
        .map(|batch| {
            let columns = SILVER_COLUMNS
                .iter()
                .map(|name| {
                    batch
                        .column_by_name(name)
                        .cloned()
                        .ok_or_else(|| AssetError::data(format!("silver has no `{name}`")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(silver_schema.clone(), columns).map_err(arrow_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(silver_rows);
    let silver = concat_batches(&silver_schema, &projected).map_err(arrow_error)?;
    drop(projected);
    take_record_batch(&silver, &order).map_err(arrow_error)
}

/// One symbol's closes, its carried tail first, and the log returns between them.
#[derive(Default)]
struct Series {
    closes: Vec<f64>,
    /// `returns[i]` is the return into `closes[i]`; `returns[0]` has none and is never read.
    returns: Vec<f64>,
}

impl Series {
    fn fill(&mut self, tail: &[f64], closes: &[f64]) {
        self.closes.clear();
        self.closes.extend_from_slice(tail);
        self.closes.extend_from_slice(closes);
        self.returns.clear();
        self.returns.push(f64::NAN);
        self.returns.extend(
            self.closes
                .windows(2)
                .map(|pair| (pair[1] / pair[0]).log(std::f64::consts::E)),
        );
    }
}

/// The derived columns, a row at a time.
struct Derived {
    log_return: Float64Builder,
    sma_20: Float64Builder,
    sma_50: Float64Builder,
    vol_20: Float64Builder,
}

impl Derived {
    fn with_capacity(rows: usize) -> Self {
        Derived {
            log_return: Float64Builder::with_capacity(rows),
            sma_20: Float64Builder::with_capacity(rows),
            sma_50: Float64Builder::with_capacity(rows),
            vol_20: Float64Builder::with_capacity(rows),
        }
    }

    /// The values of the row at `index` of `series`: the first row of a symbol has no return,
    /// and a window needs all its rows (vol_20 needs 20 returns, so 21 closes); rows outside
    /// `with_windows` get none.
    fn push(&mut self, series: &Series, index: usize, with_windows: bool) {
        self.log_return
            .append_option((index > 0).then(|| series.returns[index]));
        let window = |values, size, first_valid| {
            window_ending_at(values, index, size, first_valid).filter(|_| with_windows)
        };
        self.sma_20
            .append_option(window(&series.closes, 20, 0).map(mean));
        self.sma_50
            .append_option(window(&series.closes, 50, 0).map(mean));
        self.vol_20
            .append_option(window(&series.returns, 20, 1).map(sample_std));
    }

    fn into_columns(mut self) -> [ArrayRef; 4] {
        [
            Arc::new(self.log_return.finish()),
            Arc::new(self.sma_20.finish()),
            Arc::new(self.sma_50.finish()),
            Arc::new(self.vol_20.finish()),
        ]
    }
}

/// The `size` values ending at `index`, if they all lie at `first_valid` or after.
fn window_ending_at(
    values: &[f64],
    index: usize,
    size: usize,
    first_valid: usize,
) -> Option<&[f64]> {
    let first = (index + 1).checked_sub(size)?;
    (first >= first_valid).then(|| &values[first..=index])
}

/// The mean of a window, summed over exactly its values in row order, so that a recompute that
/// starts later in a symbol's history gives bit-identical values. (Polars' rolling sums carry a
/// running compensated sum from the series' first row, so theirs would differ in the last bits
/// depending on where a computation starts.)
fn mean(window: &[f64]) -> f64 {
    window.iter().sum::<f64>() / window.len() as f64
}

/// The sample standard deviation (n - 1) of a window, computed like [`mean`].
fn sample_std(window: &[f64]) -> f64 {
    let mean = mean(window);
    let squares: f64 = window.iter().map(|v| (v - mean) * (v - mean)).sum();
    (squares / (window.len() - 1) as f64).sqrt()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gold::keep_days;
    use quantlens_lake::arrow::array::Int64Array;
    use quantlens_lake::arrow::array::StringArray;
    use quantlens_lake::arrow::compute::take_record_batch;

    /// Silver rows of a few symbols over `days` days: one listed late, one with a long gap.
    fn silver_rows(days: i32) -> RecordBatch {
        let mut rows: Vec<(String, i32, f64, i64)> = Vec::new();
        for day in 0..days {
            for (index, symbol) in ["AAA", "BBB", "CCC", "DDD"].iter().enumerate() {
                let listed = match *symbol {
                    "BBB" => day >= 130,
                    "CCC" => !(40..160).contains(&day),
                    _ => true,
                };
                if listed {
                    let wave = ((day * (index as i32 + 3)) % 17) as f64 / 7.0;
                    rows.push((
                        symbol.to_string(),
                        18_000 + day,
                        50.0 + wave,
                        100 + day as i64,
                    ));
                }
            }
        }
        RecordBatch::try_new(
            Arc::new(Schema::new(schema().fields()[..4].to_vec())),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )),
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_rebuild_in_pieces_equals_one_computation_bit_for_bit() {
        let silver = silver_rows(300);
        let whole = returns_of(vec![silver.clone()], &mut Tails::new(), i32::MIN).unwrap();
        // Pieces of 1 to 70 days, cut wherever: the tails must make every window exact.
        for size in [1, 7, 31, 70] {
            let mut tails = Tails::new();
            let mut pieces = Vec::new();
            for first_day in (18_000..18_300).step_by(size) {
                let rows = keep_days(&silver, |d| {
                    (first_day..first_day + size as i32).contains(&d)
                })
                .unwrap();
                pieces.push(returns_of(vec![rows], &mut tails, i32::MIN).unwrap());
            }
            let pieced = concat_batches(&whole.schema(), &pieces).unwrap();
            let sorted = |batch: &RecordBatch| {
                let keys = Int64Array::from(sort_keys(std::slice::from_ref(batch)).unwrap());
                let order =
                    quantlens_lake::arrow::compute::sort_to_indices(&keys, None, None).unwrap();
                take_record_batch(batch, &order).unwrap()
            };
            assert_eq!(sorted(&pieced), whole, "pieces of {size} day(s)");
        }
        let vol = typed_column::<Float64Array>(&whole, "vol_20").unwrap();
        assert!(vol.null_count() > 0 && vol.null_count() < vol.len());
    }

    #[test]
    fn the_first_row_of_each_symbol_has_no_return_and_windows_need_full_history() {
        let whole = returns_of(vec![silver_rows(60)], &mut Tails::new(), i32::MIN).unwrap();
        // By symbol, then date (returns_of orders by month first).
        let order = quantlens_lake::arrow::compute::lexsort_to_indices(
            &[0, 1].map(|column| quantlens_lake::arrow::compute::SortColumn {
                values: whole.column(column).clone(),
                options: None,
            }),
            None,
        )
        .unwrap();
        let whole = take_record_batch(&whole, &order).unwrap();
        let symbols = string_column(&whole, "symbol").unwrap();
        let log_return = typed_column::<Float64Array>(&whole, "log_return").unwrap();
        let sma_50 = typed_column::<Float64Array>(&whole, "sma_50").unwrap();
        let firsts: Vec<usize> = (0..whole.num_rows())
            .filter(|row| *row == 0 || symbols.value(*row) != symbols.value(row - 1))
            .collect();
        assert_eq!(firsts.len(), 3, "BBB is listed after day 60");
        for row in 0..whole.num_rows() {
            assert_eq!(log_return.is_null(row), firsts.contains(&row), "row {row}");
        }
        // AAA has 60 rows: sma_50 from its 50th on, and equal to the plain mean.
        let close = typed_column::<Float64Array>(&whole, "close").unwrap();
        assert!(sma_50.is_null(48) && sma_50.is_valid(49));
        let mean = close.values()[0..50].iter().sum::<f64>() / 50.0;
        assert_eq!(sma_50.value(49), mean);
    }
}
