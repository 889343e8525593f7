//! Running a SQL asset: its upstream tables become DuckDB views at the versions pinned for the
//! run, the query runs, and its rows go back to the engine, which checks and commits them. An
//! `incremental_by_month` asset follows the engine's incremental plan: `$start`/`$end` are bound
//! to the months it recomputes, the output is cut to exactly those months and each month
//! replaced, so that a run can never write outside the months it was asked for.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use quantlens_engine::dates::day_of;
use quantlens_engine::incremental::{built_from_these_inputs, plan, Changes, Piece, Plan, MONTH};
use quantlens_engine::{AssetContext, AssetError, Materialization, Outcome};
use quantlens_lake::arrow::array::{Array, RecordBatch, StringArray};
use quantlens_lake::arrow::compute::concat_batches;
use quantlens_lake::arrow::datatypes::Schema;
use quantlens_lake::duck::snapshot_query;
use quantlens_lake::{duckdb_to_lake, At, Table};

use crate::checks::ident;
use crate::header::Materialize;
use crate::load::SqlAsset;

/// The dates a query is asked for, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Range {
    /// From the first day of `first` to the last day of `last` ("YYYY-MM" months).
    fn months(first: &str, last: &str) -> Range {
        let day_one = |month: &str| {
            NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
                .expect("partition values are YYYY-MM")
        };
        let next = day_one(last)
            .checked_add_months(chrono::Months::new(1))
            .expect("dates stay in chrono's range");
        Range {
            start: day_one(first),
            end: next.pred_opt().expect("a month has a last day"),
        }
    }

    /// Every date DuckDB can hold: what a rebuild with nothing to go by asks for.
    fn everything() -> Range {
        Range {
            start: NaiveDate::from_ymd_opt(1, 1, 1).expect("valid"),
            end: NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid"),
        }
    }
}

pub(crate) async fn compute(
    ctx: AssetContext,
    asset: Arc<SqlAsset>,
) -> Result<Outcome, AssetError> {
    // A table rebuilt whole needs no new version when none of its inputs moved; a side table is
    // read as it is now, without a pinned version, so an asset reading one is always rebuilt.
    let every_input_pinned = asset
        .views
        .iter()
        .all(|(_, t)| ctx.upstream.contains_key(t));
    if asset.header.materialize == Materialize::Table && every_input_pinned {
        if let Some(reason) = built_from_these_inputs(&ctx).await? {
            return Ok(Outcome::Unchanged { reason });
        }
    }
    // DuckDB connections cannot cross an await, so every view is worked out first.
    let mut views = Vec::new();
    for (view, table) in &asset.views {
        // A side table is read as it is now; every other table at the version pinned for the run.
        let at = ctx
            .upstream
            .get(table)
            .map_or(At::Latest, |version| At::Version(*version));
        let query = snapshot_query(&ctx.lake, table, at).await?.ok_or_else(|| {
            AssetError::data(format!(
                "`{}` reads `{table}`, which has no table yet",
                asset.key
            ))
        })?;
        views.push(format!("CREATE TEMP VIEW {} AS {query}", ident(view)));
    }
    if asset.header.materialize == Materialize::Table {
        let batches = run_query(&views, &asset, None, None)?;
        return Ok(Outcome::Materialized(Materialization::overwrite(batches)));
    }
    let mut upstream = Vec::new();
    for dep in &asset.deps {
        upstream.push(ctx.upstream_table(dep).await?);
    }
    match plan(&ctx, &upstream).await? {
        Plan::Unchanged(reason) => Ok(Outcome::Unchanged { reason }),
        Plan::Rebuild => {
            let months = upstream_months(&upstream)?;
            let (Some(first), Some(last)) = (months.first(), months.last()) else {
                let batches = run_query(&views, &asset, Some(Range::everything()), None)?;
                return Ok(Outcome::Materialized(Materialization::overwrite(batches)));
            };
            let range = Range::months(first, last);
            (ctx.progress)(&format!("rebuilding from {} to {}", range.start, range.end));
            // A piece (a year) of months per query, exact as an update's: the query reads its
            // own look-back through $start. DuckDB's working set stays that of one piece.
            let mut batches = Vec::new();
            let mut done: Option<String> = None;
            while let Some(piece) = Piece::next(&months, done.as_deref()) {
                let first = piece.months.first().expect("a piece has months");
                let range = Range::months(first, piece.through());
                batches.extend(run_query(&views, &asset, Some(range), Some(&piece))?);
                done = Some(piece.through().to_string());
            }
            Ok(Outcome::Materialized(Materialization::overwrite(batches)))
        }
        Plan::Update {
            previous,
            piece,
            target,
            ..
        } => {
            let range = Range::months(
                piece.months.first().expect("a piece has months"),
                piece.through(),
            );
            (ctx.progress)(&format!(
                "recomputing {} month(s), {} to {}",
                piece.months.len(),
                range.start,
                range.end
            ));
            let batches = run_query(&views, &asset, Some(range), Some(&piece))?;
            // The query's rows have no symbol the engine could follow: downstream assets
            // recompute everything from the first day this run rewrote.
            let changes = Changes::everything_from(day_of(range.start));
            Ok(Outcome::Materialized(piece.update_commit(
                batches, &changes, target, &previous, false,
            )))
        }
    }
}

/// The months the upstream tables hold (none when none of them is laid out by month).
fn upstream_months(upstream: &[Table]) -> Result<BTreeSet<String>, AssetError> {
    let mut months = BTreeSet::new();
    for table in upstream {
        months.extend(table.partition_values(MONTH)?);
    }
    Ok(months)
}

/// Runs the asset's query after creating `views`. With a `range` ($start/$end bound to it) the
/// output gains the `month` column of its time column and comes back one batch per month, in
/// month order; with a `piece` too, it is cut to the piece's months.
fn run_query(
    views: &[String],
    asset: &SqlAsset,
    range: Option<Range>,
    piece: Option<&Piece>,
) -> Result<Vec<RecordBatch>, AssetError> {
    let duck_error = |e: duckdb::Error| {
        AssetError::data(format!(
            "{} (line {}): DuckDB: {e}",
            asset.path.display(),
            asset.query_line
        ))
    };
    let conn = quantlens_lake::duck::connect().map_err(duck_error)?;
    conn.execute_batch(&views.join(";\n")).map_err(duck_error)?;
    let sql = match (&asset.header.time_column, range) {
        (Some(time), Some(_)) => by_month(&asset.query, time, piece),
        _ => asset.query.clone(),
    };
    let mut statement = conn.prepare(&sql).map_err(duck_error)?;
    let parameters: Vec<duckdb::types::Value> = (1..=statement.parameter_count())
        .map(|index| {
            let name = statement.parameter_name(index)?;
            let range = range.unwrap_or_else(Range::everything);
            let date = if name.eq_ignore_ascii_case("start") {
                range.start
            } else {
                range.end
            };
            Ok(duckdb::types::Value::Date32(day_of(date)))
        })
        .collect::<Result<_, duckdb::Error>>()
        .map_err(duck_error)?;
    let no_schema = Arc::new(Schema::empty());
    let mut batches = statement
        .query_arrow(duckdb::params_from_iter(parameters))
        .map_err(duck_error)?
        .map(|batch| duckdb_to_lake(batch, &no_schema))
        .collect::<Result<Vec<_>, _>>()?;
    if batches.is_empty() {
        let empty = duckdb::arrow::record_batch::RecordBatch::new_empty(statement.schema());
        batches.push(duckdb_to_lake(empty, &no_schema)?);
    }
    match range {
        Some(_) if asset.header.time_column.is_some() => one_batch_per_month(batches),
        _ => Ok(batches),
    }
}

/// The query wrapped so that each row gets the `month` of its time column (a null one fails the
/// run, naming the column) and, for a piece, only the piece's months are kept; sorted by month.
fn by_month(query: &str, time_column: &str, piece: Option<&Piece>) -> String {
    let time = ident(time_column);
    let message =
        format!("time_column {time_column} is NULL in a row of the output").replace('\'', "''");
    let filter = piece.map_or(String::new(), |piece| {
        let months: Vec<String> = piece.months.iter().map(|m| format!("'{m}'")).collect();
        format!("WHERE {MONTH} IN ({})", months.join(", "))
    });
    // The query goes on lines of its own: a trailing `--` comment must not swallow the `)`.
    format!(
        "SELECT * FROM (
           SELECT *, CASE WHEN {time} IS NULL THEN error('{message}')
                          ELSE strftime(CAST({time} AS DATE), '%Y-%m') END AS {MONTH}
           FROM (
{query}
           ) AS asset_query
         ) AS with_month
         {filter}
         ORDER BY {MONTH}"
    )
}

/// Cuts rows sorted by month into one batch per month (the engine replaces a month per batch),
/// copying one month at a time so that the output is never held twice.
fn one_batch_per_month(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, AssetError> {
    let schema = batches[0].schema();
    let arrow_error =
        |e: quantlens_lake::arrow::error::ArrowError| AssetError::data(format!("Arrow: {e}"));
    let mut months = Vec::new();
    let mut current: Option<String> = None;
    let mut slices: Vec<RecordBatch> = Vec::new();
    for batch in batches {
        let month = batch
            .column_by_name(MONTH)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| AssetError::data("the output has no `month` column"))?
            .clone();
        let mut start = 0;
        for row in 0..=month.len() {
            let boundary =
                row == month.len() || current.as_deref().is_some_and(|m| m != month.value(row));
            if boundary && row > start {
                slices.push(batch.slice(start, row - start));
                start = row;
            }
            if row < month.len() && current.as_deref() != Some(month.value(row)) {
                if !slices.is_empty() {
                    months.push(concat_batches(&schema, &slices).map_err(arrow_error)?);
                    slices.clear();
                }
                current = Some(month.value(row).to_string());
                start = row;
            }
        }
    }
    if !slices.is_empty() || months.is_empty() {
        months.push(concat_batches(&schema, &slices).map_err(arrow_error)?);
    }
    Ok(months)
}

/// The schema the query produces now, without running it (`LIMIT 0`): `assets check` compares
/// it with the table's. Views must exist for every table it reads.
pub fn probe_schema(
    conn: &duckdb::Connection,
    asset: &SqlAsset,
) -> Result<duckdb::arrow::datatypes::SchemaRef, String> {
    let sql = match &asset.header.time_column {
        Some(time) => by_month(&asset.query, time, None),
        None => asset.query.clone(),
    };
    let mut statement = conn
        .prepare(&format!("SELECT * FROM ({sql}\n) AS probe LIMIT 0"))
        .map_err(|e| e.to_string())?;
    let start = duckdb::types::Value::Date32(day_of(Range::everything().start));
    let parameters = vec![start; statement.parameter_count()];
    let schema = statement
        .query_arrow(duckdb::params_from_iter(parameters))
        .map_err(|e| e.to_string())?
        .get_schema();
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantlens_lake::arrow::array::Int64Array;
    use quantlens_lake::arrow::datatypes::{DataType, Field};

    fn batch(rows: &[(i64, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new(MONTH, DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn months_spanning_batches_come_back_one_batch_each() {
        let cut = one_batch_per_month(vec![
            batch(&[(1, "2024-01"), (2, "2024-01")]),
            batch(&[]),
            batch(&[(3, "2024-01"), (4, "2024-02")]),
            batch(&[(5, "2024-02"), (6, "2024-03")]),
        ])
        .unwrap();
        let rows: Vec<Vec<i64>> = cut
            .iter()
            .map(|b| {
                let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                n.values().to_vec()
            })
            .collect();
        assert_eq!(rows, [vec![1, 2, 3], vec![4, 5], vec![6]]);
        let empty = one_batch_per_month(vec![batch(&[])]).unwrap();
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].num_rows(), 0);
    }

    #[test]
    fn a_range_of_months_runs_from_the_first_day_to_the_last() {
        let range = Range::months("2024-01", "2024-02");
        assert_eq!(range.start.to_string(), "2024-01-01");
        assert_eq!(range.end.to_string(), "2024-02-29");
    }
}
