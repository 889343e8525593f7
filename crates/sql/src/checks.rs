//! The checks a SQL asset's header declares. Each one becomes a query that returns the failing
//! rows of `this`, the output just computed (as dbt compiles its tests): no rows means it passed.
//! They run in DuckDB over the batches before the commit, as engine checks, so a failing
//! blocking one leaves the table at its previous version.

use std::sync::Arc;

use quantlens_engine::Check;
use quantlens_lake::arrow::array::RecordBatch;
use serde::Deserialize;

use crate::builtin::{Builtin, Value};

/// One entry of the header's `checks:` list: exactly one kind, plus options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    not_null: Option<Vec<String>>,
    unique: Option<Vec<String>>,
    accepted_range: Option<Range>,
    accepted_values: Option<Values>,
    row_count: Option<RowCount>,
    sql: Option<String>,
    /// A failing blocking check vetoes the commit; a non-blocking one is a recorded warning.
    #[serde(default = "blocking_by_default")]
    blocking: bool,
    /// The name in run records [default: the kind and its columns].
    name: Option<String>,
}

fn blocking_by_default() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    column: String,
    min: Option<Literal>,
    max: Option<Literal>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Values {
    column: String,
    values: Vec<Literal>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowCount {
    min: Option<u64>,
    max: Option<u64>,
}

/// A constant in a check: a number, a string (quoted for SQL) or a boolean.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Literal {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl Literal {
    fn sql(&self) -> String {
        match self {
            Literal::Bool(b) => b.to_string(),
            Literal::Number(n) => n.to_string(),
            Literal::Text(t) => format!("'{}'", t.replace('\'', "''")),
        }
    }

    /// The value as the built-in checks compare it: numbers as numbers, the rest as text.
    fn value(&self) -> Value {
        match self {
            Literal::Number(n) => Value::Number(*n),
            Literal::Bool(b) => Value::Text(b.to_string()),
            Literal::Text(t) => Value::Text(t.clone()),
        }
    }

    /// The value as a column's text shows it (`accepted_values` compares text).
    fn text(&self) -> String {
        match self {
            Literal::Text(t) => t.clone(),
            other => other.sql(),
        }
    }
}

/// A check compiled to its failing-rows query over `this`; a built-in kind is also evaluated
/// directly over the output's columns (see [`crate::builtin`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SqlCheck {
    pub name: String,
    pub blocking: bool,
    pub failing_rows: String,
    builtin: Option<Builtin>,
}

/// A SQL identifier, quoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl CheckSpec {
    /// The check's query, or what is wrong with the entry.
    pub fn compile(&self) -> Result<SqlCheck, String> {
        let kinds = [
            self.not_null.is_some(),
            self.unique.is_some(),
            self.accepted_range.is_some(),
            self.accepted_values.is_some(),
            self.row_count.is_some(),
            self.sql.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "a check names exactly one of not_null, unique, accepted_range, \
                        accepted_values, row_count, sql"
                    .into(),
            );
        }
        let columns = |list: &[String], kind: &str| -> Result<Vec<String>, String> {
            if list.is_empty() {
                return Err(format!("{kind} needs at least one column"));
            }
            Ok(list.iter().map(|c| ident(c)).collect())
        };
        let (default_name, failing_rows) = if let Some(list) = &self.not_null {
            let quoted = columns(list, "not_null")?;
            let nulls: Vec<String> = quoted.iter().map(|c| format!("{c} IS NULL")).collect();
            (
                format!("not_null({})", list.join(", ")),
                format!("SELECT * FROM this WHERE {}", nulls.join(" OR ")),
            )
        } else if let Some(list) = &self.unique {
            let quoted = columns(list, "unique")?.join(", ");
            (
                format!("unique({})", list.join(", ")),
                format!(
                    "SELECT {quoted}, count(*) AS copies FROM this GROUP BY {quoted} \
                     HAVING count(*) > 1"
                ),
            )
        } else if let Some(range) = &self.accepted_range {
            let column = ident(&range.column);
            let mut outside = Vec::new();
            if let Some(min) = &range.min {
                outside.push(format!("{column} < {}", min.sql()));
            }
            if let Some(max) = &range.max {
                outside.push(format!("{column} > {}", max.sql()));
            }
            if outside.is_empty() {
                return Err("accepted_range needs min, max or both".into());
            }
            (
                format!("accepted_range({})", range.column),
                format!("SELECT * FROM this WHERE {}", outside.join(" OR ")),
            )
        } else if let Some(values) = &self.accepted_values {
            if values.values.is_empty() {
                return Err("accepted_values needs at least one value".into());
            }
            let listed: Vec<String> = values.values.iter().map(Literal::sql).collect();
            let column = ident(&values.column);
            (
                format!("accepted_values({})", values.column),
                format!(
                    "SELECT * FROM this WHERE {column} IS NOT NULL AND {column} NOT IN ({})",
                    listed.join(", ")
                ),
            )
        } else if let Some(count) = &self.row_count {
            let mut wrong = Vec::new();
            if let Some(min) = count.min {
                wrong.push(format!("count(*) < {min}"));
            }
            if let Some(max) = count.max {
                wrong.push(format!("count(*) > {max}"));
            }
            if wrong.is_empty() {
                return Err("row_count needs min, max or both".into());
            }
            (
                "row_count".to_string(),
                format!(
                    "SELECT count(*) AS rows FROM this HAVING {}",
                    wrong.join(" OR ")
                ),
            )
        } else {
            let sql = self.sql.as_deref().unwrap_or_default().trim();
            let sql = sql.strip_suffix(';').unwrap_or(sql).to_string();
            ("sql".to_string(), sql)
        };
        Ok(SqlCheck {
            name: self.name.clone().unwrap_or(default_name),
            blocking: self.blocking,
            failing_rows,
            builtin: self.builtin(),
        })
    }

    fn builtin(&self) -> Option<Builtin> {
        if let Some(columns) = &self.not_null {
            return Some(Builtin::NotNull(columns.clone()));
        }
        if let Some(columns) = &self.unique {
            return Some(Builtin::Unique(columns.clone()));
        }
        if let Some(range) = &self.accepted_range {
            return Some(Builtin::Range {
                column: range.column.clone(),
                min: range.min.as_ref().map(Literal::value),
                max: range.max.as_ref().map(Literal::value),
            });
        }
        if let Some(values) = &self.accepted_values {
            return Some(Builtin::Values {
                column: values.column.clone(),
                values: values.values.iter().map(Literal::text).collect(),
            });
        }
        self.row_count.as_ref().map(|count| Builtin::RowCount {
            min: count.min,
            max: count.max,
        })
    }
}

/// Rows of a failing check shown in its detail.
const SAMPLE_ROWS: usize = 3;

impl SqlCheck {
    /// The engine check: loads the output as `this` into DuckDB and counts the failing rows.
    pub fn to_check(&self) -> Check {
        let check = self.clone();
        let run = move |batches: &[RecordBatch]| check.run(batches);
        Check {
            name: self.name.clone(),
            blocking: self.blocking,
            run: Arc::new(run),
        }
    }

    fn run(&self, batches: &[RecordBatch]) -> Result<String, String> {
        let (failing, sample) = match &self.builtin {
            Some(builtin) => builtin.evaluate(batches)?,
            None => {
                let conn = this_table(batches).map_err(|e| format!("DuckDB: {e}"))?;
                failing_rows(&conn, &self.failing_rows).map_err(|e| format!("DuckDB: {e}"))?
            }
        };
        if failing == 0 {
            return Ok("no failing rows".into());
        }
        Err(format!(
            "{failing} failing row(s), e.g. {}",
            sample.join("; ")
        ))
    }
}

/// A DuckDB connection holding `batches` as the table `this`.
pub fn this_table(batches: &[RecordBatch]) -> duckdb::Result<duckdb::Connection> {
    let conn = quantlens_lake::duck::connect()?;
    for (index, batch) in batches.iter().enumerate() {
        let batch = quantlens_lake::lake_to_duckdb(batch)
            .map_err(|e| duckdb::Error::ToSqlConversionFailure(Box::new(e)))?;
        let registration = duckdb::vtab::arrow::ArrowBatchRegistration::new(batch);
        let statement = match index {
            0 => "CREATE TEMP TABLE this AS SELECT * FROM arrow(?)",
            _ => "INSERT INTO this SELECT * FROM arrow(?)",
        };
        conn.execute(statement, [&registration])?;
    }
    Ok(conn)
}

/// How many rows `query` returns, and the first few rendered as text.
pub fn failing_rows(conn: &duckdb::Connection, query: &str) -> duckdb::Result<(u64, Vec<String>)> {
    let count: i64 = conn.query_row(
        &format!("SELECT count(*) FROM ({query}\n) AS failing"),
        [],
        |row| row.get(0),
    )?;
    let mut statement = conn.prepare(&format!(
        "SELECT CAST(failing AS VARCHAR) FROM ({query}\n) AS failing LIMIT {SAMPLE_ROWS}"
    ))?;
    let sample = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((count as u64, sample))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantlens_lake::arrow::array::{Float64Array, StringArray};
    use quantlens_lake::arrow::datatypes::{DataType, Field, Schema};

    fn spec(yaml: &str) -> CheckSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn output() -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("high", DataType::Float64, true),
        ]));
        let batch = |symbols: Vec<Option<&str>>, highs: Vec<Option<f64>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(symbols)),
                    Arc::new(Float64Array::from(highs)),
                ],
            )
            .unwrap()
        };
        vec![
            batch(vec![Some("AAA"), Some("BBB")], vec![Some(1.0), Some(-2.0)]),
            batch(vec![Some("AAA"), None], vec![None, Some(3.0)]),
        ]
    }

    /// Runs the check both ways, in Rust and as its failing-rows query in DuckDB: they agree.
    fn run(yaml: &str) -> Result<String, String> {
        let mut check = spec(yaml).compile().unwrap();
        let direct = check.run(&output());
        check.builtin = None;
        let in_duckdb = check.run(&output());
        assert_eq!(
            direct.is_ok(),
            in_duckdb.is_ok(),
            "{yaml}: {direct:?} vs {in_duckdb:?}"
        );
        let count = |r: &Result<String, String>| {
            r.as_ref()
                .err()
                .map(|e| e.split(' ').next().unwrap_or_default().to_string())
        };
        assert_eq!(
            count(&direct),
            count(&in_duckdb),
            "{yaml}: {direct:?} vs {in_duckdb:?}"
        );
        direct
    }

    #[test]
    fn each_kind_counts_its_failing_rows() {
        assert!(run("not_null: [high]")
            .unwrap_err()
            .starts_with("1 failing row"));
        assert!(run("not_null: [symbol, high]")
            .unwrap_err()
            .starts_with("2 failing row"));
        let unique = run("unique: [symbol]").unwrap_err();
        assert!(
            unique.starts_with("1 failing row") && unique.contains("AAA"),
            "{unique}"
        );
        assert!(run("accepted_range: {column: high, min: 0}").is_err());
        assert!(run("accepted_range: {column: high, min: -5, max: 5}").is_ok());
        assert!(run("accepted_values: {column: symbol, values: [AAA, BBB]}").is_ok());
        assert!(run("accepted_values: {column: symbol, values: [AAA]}").is_err());
        assert!(run("row_count: {min: 4}").is_ok());
        assert!(run("row_count: {min: 5}").is_err());
        assert!(run("sql: SELECT * FROM this WHERE high > 2").is_err());
        assert!(run("sql: SELECT * FROM this WHERE high > 3").is_ok());
    }

    #[test]
    fn names_blocking_and_malformed_entries() {
        let check = spec("{not_null: [a, b], blocking: false}")
            .compile()
            .unwrap();
        assert_eq!(check.name, "not_null(a, b)");
        assert!(!check.blocking);
        assert_eq!(
            spec("{sql: SELECT 1, name: mine}").compile().unwrap().name,
            "mine"
        );
        assert!(spec("{not_null: [a], unique: [a]}").compile().is_err());
        assert!(spec("row_count: {}").compile().is_err());
        assert!(serde_norway::from_str::<CheckSpec>("not_nul: [a]").is_err());
    }

    #[test]
    fn a_broken_check_query_is_a_failure_naming_duckdb() {
        let err = run("sql: SELECT * FROM this WHERE nope > 1").unwrap_err();
        assert!(err.starts_with("DuckDB:") && err.contains("nope"), "{err}");
    }
}
