//! Arrow bridges between the worker's three columnar libraries. deltalake speaks arrow-rs 59,
//! DuckDB arrow-rs 60 and Polars its own polars-arrow; all three implement the Arrow C Data
//! Interface, whose `ArrowArray`/`ArrowSchema` structs are `#[repr(C)]` and identical across them,
//! so a column crosses by exporting it from one side and importing the very same struct on the
//! other, without copying the buffers.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayRef, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use polars::prelude::{Column, CompatLevel, DataFrame, Series};

use crate::LakeError;

fn bridge_error(what: &str, err: impl std::fmt::Display) -> LakeError {
    LakeError::Bridge(format!("{what}: {err}"))
}

/// Moves lake batches into one Polars DataFrame with the same columns.
pub fn batches_to_polars(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<DataFrame, LakeError> {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let chunks = batches
                .iter()
                .map(|batch| arrow_to_polars_array(batch.column(index)))
                .collect::<Result<Vec<_>, _>>()?;
            let series = if chunks.is_empty() {
                let empty = arrow::array::new_empty_array(field.data_type());
                Series::from_arrow(field.name().as_str().into(), arrow_to_polars_array(&empty)?)
            } else {
                Series::from_arrow_chunks(field.name().as_str().into(), chunks)
            }
            .map_err(|e| bridge_error(&format!("column `{}` into Polars", field.name()), e))?;
            Ok(Column::from(series))
        })
        .collect::<Result<Vec<_>, LakeError>>()?;
    DataFrame::new_infer_height(columns).map_err(|e| bridge_error("building a DataFrame", e))
}

fn arrow_to_polars_array(
    array: &ArrayRef,
) -> Result<Box<dyn polars_arrow::array::Array>, LakeError> {
    let (ffi_array, ffi_schema) =
        arrow::ffi::to_ffi(&array.to_data()).map_err(|e| bridge_error("exporting arrow", e))?;
    // SAFETY: both are the C Data Interface structs (#[repr(C)], same fields); ownership of the
    // release callbacks moves with them, and polars-arrow's Drop impls call them.
    let (polars_array, polars_schema) = unsafe {
        (
            std::mem::transmute::<arrow::ffi::FFI_ArrowArray, polars_arrow::ffi::ArrowArray>(
                ffi_array,
            ),
            std::mem::transmute::<arrow::ffi::FFI_ArrowSchema, polars_arrow::ffi::ArrowSchema>(
                ffi_schema,
            ),
        )
    };
    // SAFETY: the structs were just produced by arrow-rs' exporter and are valid.
    unsafe {
        let field = polars_arrow::ffi::import_field_from_c(&polars_schema)
            .map_err(|e| bridge_error("importing a field into Polars", e))?;
        polars_arrow::ffi::import_array_from_c(polars_array, field.dtype)
            .map_err(|e| bridge_error("importing an array into Polars", e))
    }
}

/// Moves a Polars DataFrame back into lake batches conforming to `schema`: columns are taken by
/// name and string representations (Polars' large or view strings) become plain `Utf8`. Any other
/// difference is left in place for the engine's schema check to report.
pub fn polars_to_batches(
    df: &mut DataFrame,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, LakeError> {
    df.align_chunks();
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut batches = Vec::new();
    for chunk in df.iter_chunks(CompatLevel::newest(), false) {
        let columns = chunk
            .arrays()
            .iter()
            .zip(&names)
            .map(|(array, name)| {
                let field = polars_arrow::datatypes::Field::new(
                    name.as_str().into(),
                    array.dtype().clone(),
                    true,
                );
                let exported = polars_arrow::ffi::export_array_to_c(array.clone());
                let exported_schema = polars_arrow::ffi::export_field_to_c(&field);
                // SAFETY: as in `arrow_to_polars_array`, the other way round.
                let data = unsafe {
                    let ffi_array = std::mem::transmute::<
                        polars_arrow::ffi::ArrowArray,
                        arrow::ffi::FFI_ArrowArray,
                    >(exported);
                    let ffi_schema = std::mem::transmute::<
                        polars_arrow::ffi::ArrowSchema,
                        arrow::ffi::FFI_ArrowSchema,
                    >(exported_schema);
                    arrow::ffi::from_ffi(ffi_array, &ffi_schema)
                        .map_err(|e| bridge_error(&format!("column `{name}` out of Polars"), e))?
                };
                Ok((name.clone(), make_array(data)))
            })
            .collect::<Result<Vec<_>, LakeError>>()?;
        batches.push(conform(columns, schema)?);
    }
    Ok(batches)
}

/// Moves a DuckDB (arrow 60) batch into a lake batch conforming to `schema`, as `polars_to_batches`.
pub fn duckdb_to_lake(
    batch: duckdb::arrow::record_batch::RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let structs = duckdb::arrow::array::StructArray::from(batch);
    let (ffi_array, ffi_schema) =
        duckdb::arrow::ffi::to_ffi(&duckdb::arrow::array::Array::to_data(&structs))
            .map_err(|e| bridge_error("exporting from DuckDB", e))?;
    // SAFETY: arrow 60 and arrow 59 C Data Interface structs are the same #[repr(C)] layout.
    let data = unsafe {
        let ffi_array = std::mem::transmute::<
            duckdb::arrow::ffi::FFI_ArrowArray,
            arrow::ffi::FFI_ArrowArray,
        >(ffi_array);
        let ffi_schema = std::mem::transmute::<
            duckdb::arrow::ffi::FFI_ArrowSchema,
            arrow::ffi::FFI_ArrowSchema,
        >(ffi_schema);
        arrow::ffi::from_ffi(ffi_array, &ffi_schema)
            .map_err(|e| bridge_error("importing from DuckDB", e))?
    };
    let structs = StructArray::from(data);
    let columns = names
        .into_iter()
        .zip(structs.columns().iter().cloned())
        .collect();
    conform(columns, schema)
}

/// Moves a lake (arrow 59) batch into DuckDB's arrow 60, for a query over data in memory.
pub fn lake_to_duckdb(
    batch: &RecordBatch,
) -> Result<duckdb::arrow::record_batch::RecordBatch, LakeError> {
    let structs = StructArray::from(batch.clone());
    let (ffi_array, ffi_schema) = arrow::ffi::to_ffi(&structs.to_data())
        .map_err(|e| bridge_error("exporting to DuckDB", e))?;
    // SAFETY: arrow 59 and arrow 60 C Data Interface structs are the same #[repr(C)] layout.
    let data = unsafe {
        let ffi_array = std::mem::transmute::<
            arrow::ffi::FFI_ArrowArray,
            duckdb::arrow::ffi::FFI_ArrowArray,
        >(ffi_array);
        let ffi_schema = std::mem::transmute::<
            arrow::ffi::FFI_ArrowSchema,
            duckdb::arrow::ffi::FFI_ArrowSchema,
        >(ffi_schema);
        duckdb::arrow::ffi::from_ffi(ffi_array, &ffi_schema)
            .map_err(|e| bridge_error("importing into DuckDB", e))?
    };
    let structs = duckdb::arrow::array::StructArray::from(data);
    Ok(duckdb::arrow::record_batch::RecordBatch::from(structs))
}

/// Orders named columns as `schema` says and turns alternative string encodings into `Utf8`.
/// Columns `schema` does not know are kept at the end, so the schema check can name them.
fn conform(columns: Vec<(String, ArrayRef)>, schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
    let mut remaining = columns;
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for target in schema.fields() {
        let Some(position) = remaining.iter().position(|(name, _)| name == target.name()) else {
            continue;
        };
        let (name, array) = remaining.remove(position);
        let array = match (array.data_type(), target.data_type()) {
            (DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8) => {
                arrow::compute::cast(&array, &DataType::Utf8).map_err(|e| bridge_error(&name, e))?
            }
            _ => array,
        };
        fields.push(Field::new(
            name,
            array.data_type().clone(),
            target.is_nullable(),
        ));
        arrays.push(array);
    }
    for (name, array) in remaining {
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| bridge_error("assembling a batch", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    fn sample() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("close", DataType::Float64, true),
            Field::new("volume", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["AAA", "BBB", "CCC"])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(3.25)])),
                Arc::new(Int64Array::from(vec![10, 20, 30])),
            ],
        )
        .unwrap();
        (schema, batch)
    }

    #[test]
    fn round_trip_through_polars_keeps_values_and_nulls() {
        let (schema, batch) = sample();
        let mut df = batches_to_polars(&schema, &[batch.clone(), batch.clone()]).unwrap();
        assert_eq!(df.height(), 6);
        let back = polars_to_batches(&mut df, &schema).unwrap();
        let back = arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
        assert_eq!(back.num_rows(), 6);
        assert_eq!(back.schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(back.column(1).null_count(), 2);
        let expected = arrow::compute::concat_batches(&schema, &[batch.clone(), batch]).unwrap();
        for i in 0..3 {
            assert_eq!(
                back.column(i).to_data(),
                expected.column(i).to_data(),
                "column {i}"
            );
        }
    }

    #[test]
    fn duckdb_results_cross_into_lake_batches() {
        let (schema, _) = sample();
        let conn = crate::duck::connect().unwrap();
        let mut stmt = conn
            .prepare("SELECT 'AAA' AS symbol, 2.5::DOUBLE AS close, 7::BIGINT AS volume")
            .unwrap();
        let batches: Vec<_> = stmt.query_arrow([]).unwrap().collect();
        let lake = duckdb_to_lake(batches.into_iter().next().unwrap(), &schema).unwrap();
        assert_eq!(lake.num_rows(), 1);
        let close = lake
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(close.value(0), 2.5);
        assert_eq!(lake.schema().field(0).name(), "symbol");
    }
}
