//! Gold: what the frontend reads. `gold/returns` is computed with Polars (per-symbol windows over
//! silver in date order); `gold/market_daily` with DuckDB SQL over the snapshot of gold/returns.

use std::sync::Arc;

use polars::prelude::{col, lit, IntoLazy, RollingOptionsFixedWindow, SortMultipleOptions};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, Materialization, Outcome, RetryPolicy,
};
use quantlens_lake::arrow::array::{Array, Float64Array, RecordBatch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{batches_to_polars, duckdb_to_lake, polars_to_batches, At};

use crate::{silver, spec};

pub const RETURNS: &str = "gold/returns";
pub const MARKET_DAILY: &str = "gold/market_daily";

/// A daily move beyond this (in log terms, about +65% / -40%) is worth a warning.
const EXTREME_LOG_RETURN: f64 = 0.5;

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
    ]))
}

pub fn returns_asset() -> Asset {
    Asset {
        spec: spec(
            RETURNS,
            &[silver::PRICES],
            "gold",
            "1",
            "Per symbol and day: log return, 20/50-day moving averages, 20-day volatility (Polars).",
        ),
        schema: returns_schema(),
        checks: vec![
            Check::blocking("finite_values", finite_values),
            Check::warning("no_extreme_moves", no_extreme_moves),
        ],
        retry: RetryPolicy::default(),
        side_tables: Vec::new(),
        compute: Arc::new(|ctx| Box::pin(compute_returns(ctx))),
    }
}

pub fn market_daily_asset() -> Asset {
    Asset {
        spec: spec(
            MARKET_DAILY,
            &[RETURNS],
            "gold",
            "1",
            "Per day: symbols, mean return, advancers, decliners, dollar volume (DuckDB).",
        ),
        schema: market_daily_schema(),
        checks: Vec::new(),
        retry: RetryPolicy::default(),
        side_tables: Vec::new(),
        compute: Arc::new(|ctx| Box::pin(compute_market_daily(ctx))),
    }
}

fn polars_error(err: polars::prelude::PolarsError) -> AssetError {
    AssetError::data(format!("Polars: {err}"))
}

async fn compute_returns(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let (schema, batches) = ctx
        .read_upstream(silver::PRICES, Some(&["symbol", "date", "close", "volume"]))
        .await?;
    let silver = batches_to_polars(&schema, &batches)?;
    drop(batches);
    let window = |size| RollingOptionsFixedWindow {
        window_size: size,
        min_periods: size,
        ..Default::default()
    };
    let by_symbol = |expr: polars::prelude::Expr| expr.over([col("symbol")]);
    let mut returns = silver
        .lazy()
        .sort(["symbol", "date"], SortMultipleOptions::default())
        .with_columns([
            by_symbol((col("close") / col("close").shift(lit(1))).log(lit(std::f64::consts::E)))
                .map_err(polars_error)?
                .alias("log_return"),
            by_symbol(col("close").rolling_mean(window(20)))
                .map_err(polars_error)?
                .alias("sma_20"),
            by_symbol(col("close").rolling_mean(window(50)))
                .map_err(polars_error)?
                .alias("sma_50"),
        ])
        .with_column(
            by_symbol(col("log_return").rolling_std(window(20)))
                .map_err(polars_error)?
                .alias("vol_20"),
        )
        .select([
            col("symbol"),
            col("date"),
            col("close"),
            col("volume"),
            col("log_return"),
            col("sma_20"),
            col("sma_50"),
            col("vol_20"),
        ])
        .collect()
        .map_err(polars_error)?;
    let batches = polars_to_batches(&mut returns, &returns_schema())?;
    Ok(Outcome::Materialized(Materialization::overwrite(batches)))
}

async fn compute_market_daily(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let version = ctx.upstream[RETURNS];
    let table = ctx
        .lake
        .load(RETURNS, At::Version(version))
        .await?
        .ok_or_else(|| AssetError::data(format!("`{RETURNS}` does not exist")))?;
    let files = table.local_files().await?;
    if files.is_empty() {
        return Ok(Outcome::Materialized(
            Materialization::overwrite(Vec::new()),
        ));
    }
    let sql = format!(
        "SELECT date,
                count(*)::BIGINT AS symbols,
                avg(log_return) AS mean_return,
                count(*) FILTER (WHERE log_return > 0)::BIGINT AS advancers,
                count(*) FILTER (WHERE log_return < 0)::BIGINT AS decliners,
                sum(close * volume::DOUBLE) AS dollar_volume
         FROM read_parquet({})
         GROUP BY date
         ORDER BY date",
        quantlens_lake::duck::parquet_list(&files)
    );
    let duck_error = |e: duckdb::Error| AssetError::data(format!("DuckDB: {e}"));
    let conn = quantlens_lake::duck::connect().map_err(duck_error)?;
    let mut statement = conn.prepare(&sql).map_err(duck_error)?;
    let schema = market_daily_schema();
    let batches = statement
        .query_arrow([])
        .map_err(duck_error)?
        .map(|batch| duckdb_to_lake(batch, &schema))
        .collect::<Result<Vec<RecordBatch>, _>>()?;
    Ok(Outcome::Materialized(Materialization::overwrite(batches)))
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
