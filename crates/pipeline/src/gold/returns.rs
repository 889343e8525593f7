//! `gold/returns`: per symbol and day over silver/prices, the log return, the 20- and 50-day
//! moving averages of the close and the 20-day volatility of the log returns. Polars orders the
//! rows by symbol and date (on one integer key: symbols are ranked first, as strings would make it
//! sort by comparing bytes) and takes the log returns; the windows are then summed here, each over
//! exactly its rows, so a value depends on its window alone. That is what lets a rebuild go
//! through silver a piece of months at a time, carrying each symbol's last [`LOOKBACK_ROWS`] rows
//! into the next piece, and an update start [`LOOKBACK_ROWS`] rows before a symbol's earliest
//! change: both give the values of a one-shot computation, bit for bit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use polars::prelude::{col, lit, IntoLazy, SortMultipleOptions};
use quantlens_engine::dates::day_of;
use quantlens_engine::incremental::{self, piece_rows, plan, Changes, Piece, Plan, MONTH};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, Materialization, Outcome, Output, OutputSchema,
};
use quantlens_lake::arrow::array::{
    Array, ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch,
};
use quantlens_lake::arrow::array::{BooleanArray, UInt32Array};
use quantlens_lake::arrow::buffer::NullBuffer;
use quantlens_lake::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{batches_to_polars, polars_to_batches, Table};

use super::{arrow_error, drop_month, keep_days, split_by_month, without_month, RETURNS};
use crate::columns::{string_column, typed_column};
use crate::silver;

/// A daily move beyond this (in log terms, about +65% / -40%) is worth a warning.
const EXTREME_LOG_RETURN: f64 = 0.5;

/// Rows before a changed date that a recompute reads: the longest window (sma_50) looks 49 rows
/// back, vol_20 looks 20 back (19 plus the close before the first return).
const LOOKBACK_ROWS: usize = 50;

const SILVER_COLUMNS: [&str; 4] = ["symbol", "date", "close", "volume"];

/// The column Polars sorts by: the symbol's rank in name order, then the date.
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
    /// Each symbol's last [`LOOKBACK_ROWS`] silver rows before the next piece.
    carry: Vec<RecordBatch>,
}

/// The whole table, a piece of silver's months at a time (about [`piece_rows`] rows).
fn rebuild(silver: Table) -> BoxStream<'static, Result<Vec<RecordBatch>, AssetError>> {
    let start = Rebuild {
        silver,
        done_through: None,
        carry: Vec::new(),
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
        let carry = std::mem::take(&mut state.carry);
        let (in_piece, carry) = returns_of_piece(carry, rows, first_day_of(&piece))?;
        state.carry = vec![carry];
        state.done_through = Some(piece.through().to_string());
        Ok(Some((split_by_month(&schema(), in_piece)?, state)))
    })
    .boxed()
}

/// The returns of a piece's silver `rows` (dated `first_day` or later), computed with the rows
/// `carry` holds from before the piece, and the carry for the next piece.
fn returns_of_piece(
    carry: Vec<RecordBatch>,
    rows: Vec<RecordBatch>,
    first_day: i32,
) -> Result<(RecordBatch, RecordBatch), AssetError> {
    let computed = returns_of(carry.into_iter().chain(rows).collect(), first_day)?;
    let carry = last_rows_of_each_symbol(&computed, LOOKBACK_ROWS)?;
    Ok((keep_days(&computed, |day| day >= first_day)?, carry))
}

fn first_day_of(piece: &Piece) -> i32 {
    let first = piece.months.first().expect("a piece has months");
    day_of(
        chrono::NaiveDate::parse_from_str(&format!("{first}-01"), "%Y-%m-%d")
            .expect("partition values are YYYY-MM"),
    )
}

/// The silver columns of the last `count` rows of each symbol (rows in symbol, date order).
fn last_rows_of_each_symbol(rows: &RecordBatch, count: usize) -> Result<RecordBatch, AssetError> {
    let symbols = string_column(rows, "symbol")?;
    let keep: Vec<u32> = (0..rows.num_rows())
        .filter(|row| {
            let later = row + count;
            later >= rows.num_rows() || symbols.value(later) != symbols.value(*row)
        })
        .map(|row| row as u32)
        .collect();
    let kept = take_record_batch(rows, &UInt32Array::from(keep)).map_err(arrow_error)?;
    kept.project(&[0, 1, 2, 3]).map_err(arrow_error)
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
    let recomputed = returns_of(rows, earliest)?;
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

/// Each row's sort key: the rank of its symbol in name order in the high 32 bits, its date
/// (shifted to be non-negative) in the low ones.
fn sort_keys(batches: &[RecordBatch]) -> Result<Vec<Int64Array>, AssetError> {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    for batch in batches {
        for symbol in string_column(batch, "symbol")?.iter().flatten() {
            let next = ids.len() as u32;
            ids.entry(symbol).or_insert(next);
        }
    }
    let mut names: Vec<(&str, u32)> = ids.iter().map(|(name, id)| (*name, *id)).collect();
    names.sort_unstable();
    let mut rank_of_id = vec![0i64; names.len()];
    for (rank, (_, id)) in names.iter().enumerate() {
        rank_of_id[*id as usize] = rank as i64;
    }
    batches
        .iter()
        .map(|batch| {
            let symbols = string_column(batch, "symbol")?;
            let dates = typed_column::<Date32Array>(batch, "date")?;
            Ok(Int64Array::from_iter_values(
                symbols.iter().zip(dates.values()).map(|(symbol, day)| {
                    let rank = rank_of_id[ids[symbol.unwrap_or_default()] as usize];
                    (rank << 32) | (*day as i64 - i32::MIN as i64)
                }),
            ))
        })
        .collect()
}

/// Returns and windows per symbol, in (symbol, date) order, without the month column. Rows
/// dated before `windows_from` are only there to fill the windows of later ones (a carry, a
/// lookback): their own windows are left null.
fn returns_of(silver_rows: Vec<RecordBatch>, windows_from: i32) -> Result<RecordBatch, AssetError> {
    let output_schema = without_month(&schema());
    if silver_rows.iter().all(|b| b.num_rows() == 0) {
        return Ok(RecordBatch::new_empty(output_schema));
    }
    let keys = sort_keys(&silver_rows)?;
    let mut fields: Vec<Field> = schema().fields()[..4]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SORT_KEY, DataType::Int64, false));
    let keyed_schema = Arc::new(Schema::new(fields));
    let keyed = silver_rows
        .iter()
        .zip(keys)
        .map(|(batch, key)| {
            let mut columns: Vec<ArrayRef> = SILVER_COLUMNS
                .iter()
                .map(|name| {
                    batch
                        .column_by_name(name)
                        .cloned()
                        .ok_or_else(|| AssetError::data(format!("silver has no `{name}`")))
                })
                .collect::<Result<_, _>>()?;
            columns.push(Arc::new(key));
            RecordBatch::try_new(keyed_schema.clone(), columns).map_err(arrow_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(silver_rows);
    let frame = batches_to_polars(&keyed_schema, &keyed)?;
    drop(keyed);
    let mut sorted = frame
        .lazy()
        .sort([SORT_KEY], SortMultipleOptions::default())
        .with_column(
            (col("close") / col("close").shift(lit(1)))
                .log(lit(std::f64::consts::E))
                .alias("log_return"),
        )
        .collect()
        .map_err(polars_error)?;
    let mut sorted_fields: Vec<Field> = keyed_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    sorted_fields.push(Field::new("log_return", DataType::Float64, true));
    let sorted_schema = Arc::new(Schema::new(sorted_fields));
    let batches = polars_to_batches(&mut sorted, &sorted_schema)?;
    drop(sorted);
    let sorted = concat_batches(&sorted_schema, &batches).map_err(arrow_error)?;
    drop(batches);

    let keys = typed_column::<Int64Array>(&sorted, SORT_KEY)?;
    let runs = symbol_runs(keys);
    // The first row of each symbol has no return (Polars divided by the row before, another
    // symbol's).
    let ratios = typed_column::<Float64Array>(&sorted, "log_return")?;
    let starts = NullBuffer::from_iter((0..ratios.len()).map(|row| runs[row] != row));
    let log_return = Float64Array::new(ratios.values().clone(), Some(starts));
    let close = typed_column::<Float64Array>(&sorted, "close")?;
    let windows = Windows {
        runs: &runs,
        dates: typed_column::<Date32Array>(&sorted, "date")?.values(),
        from: windows_from,
    };
    let mut columns: Vec<ArrayRef> = sorted.columns()[..4].to_vec();
    columns.push(Arc::new(windows.means(close, 20)));
    columns.push(Arc::new(windows.means(close, 50)));
    columns.push(Arc::new(windows.std(&log_return, 20)));
    columns.insert(4, Arc::new(log_return));
    RecordBatch::try_new(output_schema, columns).map_err(arrow_error)
}

/// For each row, the index of the first row of its symbol (rows sorted by key: symbol first).
fn symbol_runs(keys: &Int64Array) -> Vec<usize> {
    let keys = keys.values();
    let mut start = 0;
    (0..keys.len())
        .map(|row| {
            if row > 0 && keys[row] >> 32 != keys[row - 1] >> 32 {
                start = row;
            }
            start
        })
        .collect()
}

/// Rolling windows over rows sorted by symbol then date.
struct Windows<'a> {
    /// For each row, the index of the first row of its symbol.
    runs: &'a [usize],
    /// Each row's date: rows dated before `from` get no window of their own.
    dates: &'a [i32],
    from: i32,
}

impl Windows<'_> {
    /// `reduce` over each window of `size` rows ending at a row dated `from` or later, where the
    /// symbol has that many rows by then and none of them is null; null elsewhere.
    fn rolling(
        &self,
        values: &Float64Array,
        size: usize,
        reduce: impl Fn(&[f64]) -> f64,
    ) -> Float64Array {
        let mut valid_from = 0;
        (0..values.len())
            .map(|row| {
                if values.is_null(row) {
                    valid_from = row + 1;
                }
                let first = (row + 1).checked_sub(size)?;
                (first >= valid_from.max(self.runs[row]) && self.dates[row] >= self.from)
                    .then(|| reduce(&values.values()[first..=row]))
            })
            .collect()
    }

    /// Rolling means whose every value is a sum over exactly its window, in row order, so that
    /// a recompute that starts later in a symbol's history gives bit-identical values. (Polars'
    /// rolling sums carry a running compensated sum from the series' first row, so theirs would
    /// differ in the last bits depending on where a computation starts.)
    fn means(&self, values: &Float64Array, size: usize) -> Float64Array {
        self.rolling(values, size, |w| w.iter().sum::<f64>() / size as f64)
    }

    /// Rolling sample standard deviations (n - 1), computed like [`Windows::means`].
    fn std(&self, values: &Float64Array, size: usize) -> Float64Array {
        self.rolling(values, size, |w| {
            let mean = w.iter().sum::<f64>() / size as f64;
            let squares: f64 = w.iter().map(|v| (v - mean) * (v - mean)).sum();
            (squares / (size - 1) as f64).sqrt()
        })
    }
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
    use quantlens_lake::arrow::array::StringArray;

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
        let whole = returns_of(vec![silver.clone()], i32::MIN).unwrap();
        // Pieces of 1 to 70 days, cut wherever: the carry must make every window exact.
        for size in [1, 7, 31, 70] {
            let mut carry = Vec::new();
            let mut pieces = Vec::new();
            for first_day in (18_000..18_300).step_by(size) {
                let rows = keep_days(&silver, |d| {
                    (first_day..first_day + size as i32).contains(&d)
                })
                .unwrap();
                let (piece, next) = returns_of_piece(carry, vec![rows], first_day).unwrap();
                pieces.push(piece);
                carry = vec![next];
            }
            let pieced = concat_batches(&whole.schema(), &pieces).unwrap();
            let sorted = |batch: &RecordBatch| {
                let keys = sort_keys(std::slice::from_ref(batch)).unwrap().remove(0);
                let order =
                    quantlens_lake::arrow::compute::sort_to_indices(&keys, None, None).unwrap();
                quantlens_lake::arrow::compute::take_record_batch(batch, &order).unwrap()
            };
            assert_eq!(sorted(&pieced), whole, "pieces of {size} day(s)");
        }
        let vol = typed_column::<Float64Array>(&whole, "vol_20").unwrap();
        assert!(vol.null_count() > 0 && vol.null_count() < vol.len());
    }

    #[test]
    fn the_first_row_of_each_symbol_has_no_return_and_windows_need_full_history() {
        let whole = returns_of(vec![silver_rows(60)], i32::MIN).unwrap();
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
