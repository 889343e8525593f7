//! The built-in checks (not_null, unique, accepted_range, accepted_values, row_count) evaluated
//! over the output's Arrow columns in place. Loading the output into DuckDB as `this` costs
//! about as much as computing it (3 s a check for 5M rows), so only `sql:` checks go there; the
//! built-ins give the same verdicts as their failing-rows queries, which `assets check` prepares.

use std::collections::HashMap;

use quantlens_lake::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray,
};
use quantlens_lake::arrow::compute::{cast, is_null, or};
use quantlens_lake::arrow::datatypes::DataType;
use quantlens_lake::arrow::row::{RowConverter, SortField};
use quantlens_lake::arrow::util::display::{ArrayFormatter, FormatOptions};

/// A bound or an accepted value, as the header wrote it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
}

/// A built-in check and what it is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Builtin {
    NotNull(Vec<String>),
    Unique(Vec<String>),
    Range {
        column: String,
        min: Option<Value>,
        max: Option<Value>,
    },
    Values {
        column: String,
        values: Vec<String>,
    },
    RowCount {
        min: Option<u64>,
        max: Option<u64>,
    },
}

/// How many rows fail (for `unique`, how many values repeat) and a few of them as text.
pub type Failing = (u64, Vec<String>);

const SAMPLE_ROWS: usize = 3;

impl Builtin {
    pub fn evaluate(&self, batches: &[RecordBatch]) -> Result<Failing, String> {
        match self {
            Builtin::NotNull(columns) => rows_where(batches, columns, |arrays| {
                let mut nulls = is_null(arrays[0].as_ref()).map_err(|e| e.to_string())?;
                for array in &arrays[1..] {
                    let more = is_null(array.as_ref()).map_err(|e| e.to_string())?;
                    nulls = or(&nulls, &more).map_err(|e| e.to_string())?;
                }
                Ok(nulls)
            }),
            Builtin::Unique(columns) => unique(batches, columns, KEYS_PER_PASS),
            Builtin::Range { column, min, max } => {
                rows_where(batches, std::slice::from_ref(column), |arrays| {
                    outside(&arrays[0], min.as_ref(), max.as_ref())
                })
            }
            Builtin::Values { column, values } => {
                rows_where(batches, std::slice::from_ref(column), |arrays| {
                    let text = as_text(&arrays[0])?;
                    Ok(text
                        .iter()
                        .map(|v| Some(v.is_some_and(|v| !values.iter().any(|a| a == v))))
                        .collect())
                })
            }
            Builtin::RowCount { min, max } => {
                let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
                let wrong = min.is_some_and(|m| rows < m) || max.is_some_and(|m| rows > m);
                Ok(if wrong {
                    (1, vec![format!("{rows} rows")])
                } else {
                    (0, Vec::new())
                })
            }
        }
    }
}

fn columns_of(batch: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, String> {
    names
        .iter()
        .map(|name| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("column `{name}` is not in the output"))
        })
        .collect()
}

/// Rows for which `failing` (given the named columns) is true, and a sample of them.
fn rows_where(
    batches: &[RecordBatch],
    names: &[String],
    failing: impl Fn(&[ArrayRef]) -> Result<BooleanArray, String>,
) -> Result<Failing, String> {
    let mut count = 0;
    let mut sample = Vec::new();
    for batch in batches {
        let arrays = columns_of(batch, names)?;
        let mask = failing(&arrays)?;
        count += mask.true_count() as u64;
        for row in (0..mask.len()).filter(|r| mask.value(*r) && mask.is_valid(*r)) {
            if sample.len() == SAMPLE_ROWS {
                break;
            }
            sample.push(describe(names, &arrays, row)?);
        }
    }
    Ok((count, sample))
}

/// `{a: 1, b: x}` for one row of the named columns.
fn describe(names: &[String], arrays: &[ArrayRef], row: usize) -> Result<String, String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut parts = Vec::new();
    for (name, array) in names.iter().zip(arrays) {
        let formatter =
            ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| e.to_string())?;
        parts.push(format!("{name}: {}", formatter.value(row)));
    }
    Ok(format!("{{{}}}", parts.join(", ")))
}

fn as_text(array: &ArrayRef) -> Result<StringArray, String> {
    let text = cast(array, &DataType::Utf8).map_err(|e| e.to_string())?;
    Ok(text
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives strings")
        .clone())
}

/// Non-null values below `min` or above `max`: compared as numbers for numeric bounds, as text
/// (ISO dates order as text) otherwise.
fn outside(
    array: &ArrayRef,
    min: Option<&Value>,
    max: Option<&Value>,
) -> Result<BooleanArray, String> {
    let numeric = matches!(min.or(max), Some(Value::Number(_)));
    if numeric {
        let numbers = cast(array, &DataType::Float64).map_err(|e| e.to_string())?;
        let numbers = numbers
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64 gives doubles");
        let bound = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => Some(*n),
            _ => None,
        };
        let (low, high) = (bound(min), bound(max));
        return Ok(numbers
            .iter()
            .map(|v| {
                Some(v.is_some_and(|v| low.is_some_and(|l| v < l) || high.is_some_and(|h| v > h)))
            })
            .collect());
    }
    let text = as_text(array)?;
    let bound = |v: Option<&Value>| match v {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let (low, high) = (bound(min), bound(max));
    Ok(text
        .iter()
        .map(|v| {
            Some(v.is_some_and(|v| {
                low.as_deref().is_some_and(|l| v < l) || high.as_deref().is_some_and(|h| v > h)
            }))
        })
        .collect())
}

/// Values of the columns that appear more than once: how many such values, and a sample.
/// A hash of a key that is the same in every pass (the map's own hasher is seeded at random).
fn fingerprint(key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Keys counted per pass of [`unique`]: its hash map holds at most about this many, so checking
/// a 5M-row output costs tens of MB rather than the half GB one map of every key would.
const KEYS_PER_PASS: usize = 1 << 19;

fn unique(
    batches: &[RecordBatch],
    names: &[String],
    keys_per_pass: usize,
) -> Result<Failing, String> {
    let Some(first) = batches.first() else {
        return Ok((0, Vec::new()));
    };
    let fields = columns_of(first, names)?
        .iter()
        .map(|a| SortField::new(a.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
    // Pass `p` counts the keys whose hash is `p` modulo the number of passes: equal keys hash
    // alike, so each repeated key is found whole in exactly one pass.
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let passes = total.div_ceil(keys_per_pass).max(1) as u64;
    let mut repeated: Vec<(usize, usize, u64)> = Vec::new();
    for pass in 0..passes {
        // For each key: how often it occurs, and where it first did.
        let mut seen: HashMap<Box<[u8]>, (u64, usize, usize)> = HashMap::new();
        for (index, batch) in batches.iter().enumerate() {
            let arrays = columns_of(batch, names)?;
            let rows = converter
                .convert_columns(&arrays)
                .map_err(|e| e.to_string())?;
            for row in 0..rows.num_rows() {
                let key = rows.row(row);
                if passes > 1 && fingerprint(key.as_ref()) % passes != pass {
                    continue;
                }
                seen.entry(key.as_ref().into())
                    .and_modify(|(count, _, _)| *count += 1)
                    .or_insert((1, index, row));
            }
        }
        repeated.extend(
            seen.into_values()
                .filter(|(count, _, _)| *count > 1)
                .map(|(count, batch, row)| (batch, row, count)),
        );
    }
    repeated.sort_unstable();
    let mut sample = Vec::new();
    for (batch, row, count) in repeated.iter().take(SAMPLE_ROWS) {
        let arrays = columns_of(&batches[*batch], names)?;
        sample.push(format!("{} x{count}", describe(names, &arrays, *row)?));
    }
    Ok((repeated.len() as u64, sample))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quantlens_lake::arrow::array::Int64Array;
    use quantlens_lake::arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn unique_finds_the_same_repeats_in_one_pass_or_many() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |symbols: Vec<&str>, n: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(symbols)),
                    Arc::new(Int64Array::from(n)),
                ],
            )
            .unwrap()
        };
        let batches = [
            batch(vec!["A", "B", "C", "A"], vec![1, 1, 1, 1]),
            batch(vec!["B", "D", "A", "E"], vec![1, 1, 2, 1]),
        ];
        let names = ["symbol".to_string(), "n".to_string()];
        let once = unique(&batches, &names, KEYS_PER_PASS).unwrap();
        assert_eq!(once.0, 2, "(A, 1) and (B, 1) repeat");
        for keys_per_pass in [1, 2, 3] {
            assert_eq!(unique(&batches, &names, keys_per_pass).unwrap(), once);
        }
    }
}
