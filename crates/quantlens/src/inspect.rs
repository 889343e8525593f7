//! The read-only commands: `assets`, `lineage`, `runs`, `history`, `show` and `sql`. None of them
//! takes the run lock; they read committed Delta versions and run records, which are always whole.

use anyhow::{anyhow, Context as _};
use quantlens_graph::AssetKey;
use quantlens_lake::duck::{create_views, snapshot_query};
use quantlens_lake::At;
use quantlens_runs::{exit, RunId, StateDir};
use serde_json::json;

use crate::output::print_table;
use crate::{Failure, LineageFormat, Locations};

pub async fn assets(locations: &Locations, as_json: bool) -> Result<i32, Failure> {
    let registry = locations.registry()?;
    let entries = crate::catalog::entries(&registry, &locations.lake()?).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            [
                "table",
                "layer",
                "kind",
                "last_materialized",
                "version",
                "rows",
                "state",
            ]
            .iter()
            .map(|field| text(&e[*field]))
            .collect()
        })
        .collect();
    print_table(
        &[
            "table",
            "layer",
            "kind",
            "last materialized",
            "version",
            "rows",
            "state",
        ],
        &rows,
    );
    Ok(0)
}

/// `assets check`: validates the SQL assets against the lake, in dependency order.
pub async fn check_assets(locations: &Locations) -> Result<i32, Failure> {
    let (registry, sql) = locations.registry_and_sql_assets()?;
    let order: Vec<String> = registry
        .graph()
        .keys()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let mut ordered = sql;
    ordered.sort_by_key(|a| order.iter().position(|k| *k == a.key));
    if ordered.is_empty() {
        println!("no SQL assets (ASSETS_DIR unset and no ./assets folder, or an empty one)");
        return Ok(exit::SUCCEEDED);
    }
    let verdicts = quantlens_sql::check_against_lake(&locations.lake()?, &ordered).await;
    for verdict in &verdicts {
        let mark = if verdict.ok { "ok  " } else { "FAIL" };
        println!("{mark} {}: {}", verdict.key, verdict.detail);
    }
    let failed = verdicts.iter().filter(|v| !v.ok).count();
    println!("{} SQL asset(s) checked, {failed} failed", verdicts.len());
    Ok(if failed == 0 {
        exit::SUCCEEDED
    } else {
        exit::USAGE
    })
}

pub fn lineage(locations: &Locations, format: LineageFormat) -> Result<i32, Failure> {
    let registry = locations.registry()?;
    let graph = registry.graph();
    match format {
        LineageFormat::Mermaid => print!("{}", graph.to_mermaid()),
        LineageFormat::Dot => print!("{}", graph.to_dot()),
        LineageFormat::Json => {
            let assets: Vec<_> = registry
                .assets()
                .map(|a| {
                    json!({
                        "key": a.spec.key, "group": a.spec.group, "code_version": a.spec.code_version,
                        "deps": a.spec.deps, "side_tables": a.side_tables, "description": a.spec.description,
                    })
                })
                .collect();
            let edges: Vec<_> = graph
                .edges()
                .into_iter()
                .map(|(from, to)| json!([from, to]))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"assets": assets, "edges": edges}))?
            );
        }
    }
    Ok(0)
}

pub fn runs(
    locations: &Locations,
    run_id: Option<String>,
    limit: usize,
    as_json: bool,
) -> Result<i32, Failure> {
    let state = StateDir::new(&locations.state_dir);
    if let Some(id) = run_id {
        let record = state.read_run(&RunId::parse(&id)?)?;
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(0);
    }
    let records = state.list_runs(limit)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let failed = r
                .assets
                .iter()
                .filter(|a| a.status == quantlens_runs::AssetStatus::Failed)
                .count();
            vec![
                r.run_id.to_string(),
                r.status.to_string(),
                r.trigger.clone(),
                r.selection.clone(),
                r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.finished_at
                    .map(|f| {
                        format!(
                            "{:.1}",
                            (f - r.started_at).num_milliseconds() as f64 / 1000.0
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", r.assets.len() - failed, r.assets.len()),
            ]
        })
        .collect();
    print_table(
        &[
            "run",
            "status",
            "trigger",
            "selection",
            "started (UTC)",
            "seconds",
            "assets ok",
        ],
        &rows,
    );
    Ok(0)
}

/// Refuses a table name that is not one of the pipeline's, listing those that are.
fn known_table(locations: &Locations, key: &str) -> Result<String, Failure> {
    let tables = locations.registry()?.tables();
    if tables.iter().any(|t| t == key) {
        return Ok(key.to_string());
    }
    Err(anyhow!("unknown table `{key}`; known tables: {}", tables.join(", ")).into())
}

pub async fn history(locations: &Locations, key: &str, limit: usize) -> Result<i32, Failure> {
    let key = known_table(locations, key)?;
    let lake = locations.lake()?;
    let table = lake
        .load(&key, At::Latest)
        .await?
        .ok_or_else(|| anyhow!("`{key}` has not been materialised yet"))?;
    let rows: Vec<Vec<String>> = table
        .history(Some(limit.max(1)))
        .await?
        .into_iter()
        .map(|commit| {
            let meta = commit.quantlens.unwrap_or_default();
            let upstream: Vec<String> = meta
                .upstream
                .iter()
                .map(|(k, v)| format!("{k}@v{v}"))
                .collect();
            vec![
                commit.version.to_string(),
                commit.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default(),
                commit.operation,
                meta.run_id,
                meta.code_version,
                upstream.join(" "),
            ]
        })
        .collect();
    print_table(
        &[
            "version",
            "timestamp",
            "operation",
            "run",
            "code",
            "read from",
        ],
        &rows,
    );
    Ok(0)
}

pub async fn show(
    locations: &Locations,
    key: &str,
    version: Option<i64>,
    as_of: Option<String>,
    limit: usize,
) -> Result<i32, Failure> {
    let key = known_table(locations, key)?;
    let at = match (version, as_of) {
        (Some(v), _) => At::Version(v),
        (None, Some(ts)) => At::Timestamp(
            chrono::DateTime::parse_from_rfc3339(&ts)
                .with_context(|| {
                    format!("--as-of `{ts}` is not an RFC 3339 time such as 2026-01-31T18:00:00Z")
                })?
                .into(),
        ),
        (None, None) => At::Latest,
    };
    let lake = locations.lake()?;
    let query = snapshot_query(&lake, &key, at)
        .await?
        .ok_or_else(|| anyhow!("`{key}` has not been materialised yet"))?;
    let conn = quantlens_lake::duck::connect()?;
    print_query(&conn, &format!("SELECT * FROM ({query}) LIMIT {limit}"))?;
    Ok(0)
}

pub async fn sql(locations: &Locations, query: &str) -> Result<i32, Failure> {
    let registry = locations.registry()?;
    let lake = locations.lake()?;
    let tables: Vec<(String, String)> = registry
        .tables()
        .into_iter()
        .map(|key| {
            let view = AssetKey::new(key.as_str())
                .map(|k| k.view_name())
                .unwrap_or_else(|_| key.replace('/', "_"));
            (key, view)
        })
        .collect();
    let conn = quantlens_lake::duck::connect()?;
    let views = create_views(&conn, &lake, &tables).await?;
    print_query(&conn, query).with_context(|| format!("views available: {}", views.join(", ")))?;
    Ok(0)
}

/// Timestamps come out of DuckDB labelled "UTC", a zone name that Arrow's printer (built without a
/// time zone database) cannot parse; "+00:00" is the same instant and prints.
fn with_printable_time_zones(
    batch: duckdb::arrow::record_batch::RecordBatch,
) -> anyhow::Result<duckdb::arrow::record_batch::RecordBatch> {
    use duckdb::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(zone)) if zone.as_ref() == "UTC" => {
                let printable = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(duckdb::arrow::compute::cast(column, &printable)?);
                fields.push(Field::new(field.name(), printable, field.is_nullable()));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    Ok(duckdb::arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn print_query(conn: &duckdb::Connection, query: &str) -> anyhow::Result<()> {
    let mut statement = conn.prepare(query)?;
    let batches = statement
        .query_arrow([])?
        .map(with_printable_time_zones)
        .collect::<Result<Vec<_>, _>>()?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        println!("(no rows)");
        return Ok(());
    }
    println!(
        "{}",
        duckdb::arrow::util::pretty::pretty_format_batches(&batches)?
    );
    Ok(())
}
