//! `quantlens assets check`: every SQL asset prepared against the current lake without writing
//! anything. Each query runs with `LIMIT 0`, so it binds (tables, columns, types) at no cost;
//! each check query is prepared over that empty output; and a table whose schema is locked is
//! compared with what the query gives now. Assets are taken in dependency order, and one whose
//! table does not exist yet stands as an empty table of its probed columns, so a downstream SQL
//! asset can be checked before anything was ever materialised.

use std::sync::Arc;

use quantlens_lake::duck::create_view;
use quantlens_lake::{At, Lake};

use crate::checks::this_table;
use crate::compute::probe_schema;
use crate::header::Materialize;
use crate::load::SqlAsset;

/// What `assets check` says of one SQL asset.
#[derive(Debug)]
pub struct Verdict {
    pub key: String,
    pub ok: bool,
    pub detail: String,
}

/// Checks `assets` (in dependency order) against the lake as it is.
pub async fn check_against_lake(lake: &Lake, assets: &[Arc<SqlAsset>]) -> Vec<Verdict> {
    let conn = match quantlens_lake::duck::connect() {
        Ok(conn) => conn,
        Err(e) => {
            return assets
                .iter()
                .map(|a| Verdict {
                    key: a.key.clone(),
                    ok: false,
                    detail: format!("DuckDB: {e}"),
                })
                .collect()
        }
    };
    let mut verdicts = Vec::new();
    for asset in assets {
        let (ok, detail) = match check_one(&conn, lake, asset).await {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        verdicts.push(Verdict {
            key: asset.key.clone(),
            ok,
            detail,
        });
    }
    verdicts
}

async fn check_one(
    conn: &duckdb::Connection,
    lake: &Lake,
    asset: &SqlAsset,
) -> Result<String, String> {
    for (view, table) in &asset.views {
        let exists = create_view(conn, lake, table, view, At::Latest)
            .await
            .map_err(|e| e.to_string())?;
        let probed_earlier = conn
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                [view],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())?
            > 0;
        if !exists && !probed_earlier {
            return Ok(format!(
                "not checked: reads `{table}`, which has no table yet (materialise it first)"
            ));
        }
    }
    let schema = probe_schema(conn, asset).map_err(|e| {
        format!(
            "{} (line {}): DuckDB: {e}",
            asset.path.display(),
            asset.query_line
        )
    })?;
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    let month_columns = schema
        .fields()
        .iter()
        .filter(|f| f.name() == quantlens_engine::incremental::MONTH)
        .count();
    if asset.header.materialize == Materialize::IncrementalByMonth && month_columns > 1 {
        return Err(
            "the query returns a `month` column, the partition column the engine adds; \
                    rename it"
                .into(),
        );
    }
    let empty = duckdb::arrow::record_batch::RecordBatch::new_empty(schema.clone());
    let empty = quantlens_lake::duckdb_to_lake(
        empty,
        &Arc::new(quantlens_lake::arrow::datatypes::Schema::empty()),
    )
    .map_err(|e| e.to_string())?;
    let this = this_table(std::slice::from_ref(&empty)).map_err(|e| e.to_string())?;
    for check in &asset.checks {
        this.prepare(&check.failing_rows)
            .map_err(|e| format!("check `{}`: DuckDB: {e}", check.name))?;
    }
    if let Some(table) = lake
        .load(&asset.key, At::Latest)
        .await
        .map_err(|e| e.to_string())?
    {
        let locked = table
            .lineage()
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|l| l.code_version == asset.code_version);
        let held = table.arrow_schema().map_err(|e| e.to_string())?;
        let held: Vec<String> = held
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        if locked && held != columns {
            return Err(format!(
                "the query now gives ({}) but the table holds ({}); its schema is locked until \
                 the file changes",
                columns.join(", "),
                held.join(", ")
            ));
        }
        create_view(
            conn,
            lake,
            &asset.key,
            &asset.key.replace('/', "_"),
            At::Latest,
        )
        .await
        .map_err(|e| e.to_string())?;
    } else {
        let view = crate::checks::ident(&asset.key.replace('/', "_"));
        let arrow = duckdb::vtab::arrow::ArrowBatchRegistration::new(
            duckdb::arrow::record_batch::RecordBatch::new_empty(schema.clone()),
        );
        conn.execute(
            &format!("CREATE TEMP TABLE {view} AS SELECT * FROM arrow(?)"),
            [&arrow],
        )
        .map_err(|e| e.to_string())?;
    }
    let deps: Vec<&str> = asset.deps.iter().map(String::as_str).collect();
    Ok(format!(
        "{} column(s): {}; {} check(s); reads {}",
        columns.len(),
        columns.join(", "),
        asset.checks.len(),
        if deps.is_empty() {
            "no table".to_string()
        } else {
            deps.join(", ")
        }
    ))
}
