//! Typed access to the columns of Arrow batches, shared by the assets: a missing column or one of
//! the wrong type is a data error naming the column, never a panic.

use quantlens_engine::AssetError;
use quantlens_lake::arrow::array::{Array, RecordBatch, StringArray};
use quantlens_lake::arrow::datatypes::{DataType, TimeUnit};

/// Rows of one batch the assets build for the lake. A month of 10,000 symbols has 210,000 rows: as
/// one batch its float columns (1.7 MB each) would pass the worker's 1 MiB mmap threshold and be
/// mapped, zeroed by the kernel and unmapped month after month, a cost that grows with the number
/// of symbols; batches of 64 Ki rows (512 KiB a float column) reuse the heap at any size.
pub const BATCH_ROWS: usize = 64 * 1024;

/// The lake's timestamp type: microseconds in UTC, the only kind Delta accepts.
pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The column `name` of `batch` as the array type `T`.
pub fn typed_column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, AssetError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            AssetError::data(format!(
                "column `{name}` is missing or has an unexpected type"
            ))
        })
}

/// The column `name` of `batch` as strings.
pub fn string_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a StringArray, AssetError> {
    typed_column::<StringArray>(batch, name)
}
