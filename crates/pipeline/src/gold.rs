//! Gold: what the frontend reads. `gold/returns` (per symbol and day: log return, moving averages,
//! volatility; Polars orders the rows) and `gold/market_daily` (per day, over gold/returns: the
//! breadth of the market and its traded value). Both are partitioned by month and updated
//! incrementally, and both rebuild a piece of months at a time, so their memory depends on neither
//! the history nor the number of symbols.

use std::collections::HashMap;
use std::sync::Arc;

use quantlens_engine::dates::{date_of, day_of, month_of, month_start};
use quantlens_engine::AssetError;
use quantlens_lake::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, RecordBatch, StringArray, UInt32Array,
};
use quantlens_lake::arrow::compute::{filter_record_batch, take_record_batch};
use quantlens_lake::arrow::datatypes::{Schema, SchemaRef};

use crate::columns::{typed_column, BATCH_ROWS};

mod exact_sum;
mod market_daily;
mod returns;

pub use market_daily::{asset as market_daily_asset, schema as market_daily_schema};
pub use returns::{asset as returns_asset, schema as returns_schema};

pub const RETURNS: &str = "gold/returns";
pub const MARKET_DAILY: &str = "gold/market_daily";

fn arrow_error(err: quantlens_lake::arrow::error::ArrowError) -> AssetError {
    AssetError::data(format!("Arrow: {err}"))
}

/// A schema without its last column (the partition column, which computations add last).
fn without_month(schema: &SchemaRef) -> SchemaRef {
    let fields = &schema.fields()[..schema.fields().len() - 1];
    Arc::new(Schema::new(fields.to_vec()))
}

/// A batch without its last column (the partition column).
fn drop_month(batch: &RecordBatch) -> Result<RecordBatch, AssetError> {
    batch
        .project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())
        .map_err(arrow_error)
}

/// The rows of `batch` whose date `keep` accepts.
fn keep_days(batch: &RecordBatch, keep: impl Fn(i32) -> bool) -> Result<RecordBatch, AssetError> {
    let dates = typed_column::<Date32Array>(batch, "date")?;
    let mask: BooleanArray = dates.values().iter().map(|day| Some(keep(*day))).collect();
    filter_record_batch(batch, &mask).map_err(arrow_error)
}

/// Splits rows into one batch per month (in month order) and appends the `month` column, giving
/// batches of `schema`. Rows keep their relative order within a month.
fn split_by_month(schema: &SchemaRef, batch: RecordBatch) -> Result<Vec<RecordBatch>, AssetError> {
    let dates = typed_column::<Date32Array>(&batch, "date")?;
    // Days map to a slot per month; each slot collects its rows' indices.
    let mut slot_of_day: HashMap<i32, usize> = HashMap::new();
    let mut slot_of_month: HashMap<String, usize> = HashMap::new();
    let mut slots: Vec<(String, Vec<u32>)> = Vec::new();
    for (row, day) in dates.values().iter().enumerate() {
        let slot = *slot_of_day.entry(*day).or_insert_with(|| {
            let month = month_of(*day);
            *slot_of_month.entry(month.clone()).or_insert_with(|| {
                slots.push((month, Vec::new()));
                slots.len() - 1
            })
        });
        slots[slot].1.push(row as u32);
    }
    slots.sort_by(|a, b| a.0.cmp(&b.0));
    slots
        .into_iter()
        .map(|(month, rows)| {
            let rows = take_record_batch(&batch, &UInt32Array::from(rows)).map_err(arrow_error)?;
            with_month(schema, rows, &month)
        })
        .collect()
}

/// [`split_by_month`] for rows already grouped by month, in month order: a month's rows are slices
/// of `batch`, not a copy, of at most [`BATCH_ROWS`] rows each (their `month` columns stay small).
fn split_grouped_by_month(
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<Vec<RecordBatch>, AssetError> {
    let dates = typed_column::<Date32Array>(batch, "date")?.values();
    let mut months = Vec::new();
    let mut start = 0;
    while start < dates.len() {
        let next_month = day_of(
            date_of(month_start(dates[start]))
                .checked_add_months(chrono::Months::new(1))
                .expect("dates stay in chrono's range"),
        );
        let end = start + dates[start..].partition_point(|day| *day < next_month);
        let month = month_of(dates[start]);
        for offset in (start..end).step_by(BATCH_ROWS) {
            let rows = batch.slice(offset, BATCH_ROWS.min(end - offset));
            months.push(with_month(schema, rows, &month)?);
        }
        start = end;
    }
    Ok(months)
}

/// `rows` of one month with the `month` column appended.
fn with_month(
    schema: &SchemaRef,
    rows: RecordBatch,
    month: &str,
) -> Result<RecordBatch, AssetError> {
    let mut columns = rows.columns().to_vec();
    let month_column = StringArray::from_iter_values(std::iter::repeat_n(month, rows.num_rows()));
    columns.push(Arc::new(month_column) as ArrayRef);
    RecordBatch::try_new(schema.clone(), columns).map_err(arrow_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantlens_lake::arrow::array::Int64Array;
    use quantlens_lake::arrow::datatypes::{DataType, Field};

    /// Rows of (date, n), n numbering them in order.
    fn numbered(days: Vec<i32>) -> RecordBatch {
        let count = days.len() as i64;
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("date", DataType::Date32, false),
                Field::new("n", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Date32Array::from(days)),
                Arc::new(Int64Array::from_iter_values(0..count)),
            ],
        )
        .unwrap()
    }

    /// The schema of [`numbered`] rows with their `month`.
    fn numbered_by_month() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("date", DataType::Date32, false),
            Field::new("n", DataType::Int64, false),
            Field::new("month", DataType::Utf8, false),
        ]))
    }

    #[test]
    fn grouped_rows_split_into_the_same_months_as_any_rows() {
        // Rows grouped by month (January, February, March), in no order within a month.
        let rows = numbered(vec![19_737, 19_723, 19_753, 19_782, 19_754, 19_813, 19_800]);
        let schema = numbered_by_month();
        let grouped = split_grouped_by_month(&schema, &rows).unwrap();
        assert_eq!(grouped, split_by_month(&schema, rows).unwrap());
        let months: Vec<&str> = grouped
            .iter()
            .map(|batch| {
                batch
                    .column(2)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        assert_eq!(months, ["2024-01", "2024-02", "2024-03"]);
        assert_eq!(
            grouped
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>(),
            [3, 2, 2]
        );
    }

    #[test]
    fn a_large_month_comes_in_batches_of_bounded_rows() {
        let batch = numbered(vec![19_737; BATCH_ROWS + 5]);
        let schema = numbered_by_month();
        let grouped = split_grouped_by_month(&schema, &batch).unwrap();
        let sizes: Vec<usize> = grouped.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [BATCH_ROWS, 5]);
        let whole = quantlens_lake::arrow::compute::concat_batches(&schema, &grouped).unwrap();
        assert_eq!(
            drop_month(&whole).unwrap(),
            batch,
            "every row once, in order"
        );
    }
}
