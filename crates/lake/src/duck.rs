//! DuckDB over lake snapshots. DuckDB has no offline Delta reader, so a snapshot is shown to it as
//! `read_parquet([...])` over exactly the files deltalake says are live at that version. The lake
//! writes no deletion vectors, so the files hold every row; partition columns are not in the files
//! but in their `column=value` directory names, which DuckDB's hive partitioning reads back.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::{At, Lake, LakeError};

/// The process's in-memory DuckDB database. Opening one costs about 20 ms, more than most
/// queries of a daily run, so the process opens it once and every caller gets a connection of
/// its own. Views and tables made per use are `TEMP`, private to the connection that made them,
/// so that callers (and tests running side by side) never see each other's.
static DATABASE: Mutex<Option<duckdb::Connection>> = Mutex::new(None);

/// DuckDB's memory limit unless QUANTLENS_DUCKDB_MEMORY says otherwise (DuckDB's syntax: `256MB`,
/// `1GB`): what the worker may spend on a query's working set before DuckDB spills to disk.
pub const DEFAULT_MEMORY: &str = "256MB";

/// A connection to the process's DuckDB database, which never reaches for the network:
/// extensions are either built in (parquet, json) or unavailable, and an attempt to download one
/// would only stall a run. The `arrow` table function reads Arrow batches bound as parameters.
pub fn connect() -> duckdb::Result<duckdb::Connection> {
    let mut database = DATABASE.lock().unwrap_or_else(|e| e.into_inner());
    if database.is_none() {
        let conn = duckdb::Connection::open_in_memory()?;
        conn.execute_batch(
            "SET autoinstall_known_extensions = false; SET autoload_known_extensions = false;",
        )?;
        // DuckDB sizes its buffer pool from the machine's RAM (80%), not from the service's
        // memory limit; a bounded pool spills to the temporary directory instead.
        let limit =
            std::env::var("QUANTLENS_DUCKDB_MEMORY").unwrap_or_else(|_| DEFAULT_MEMORY.into());
        let temp = std::env::temp_dir().join(format!("quantlens-duckdb-{}", std::process::id()));
        conn.execute_batch(&format!(
            "SET memory_limit = '{}'; SET temp_directory = '{}';",
            limit.replace('\'', "''"),
            temp.display().to_string().replace('\'', "''")
        ))?;
        conn.register_table_function::<duckdb::vtab::arrow::ArrowVTab>("arrow")?;
        *database = Some(conn);
    }
    database.as_ref().expect("opened above").try_clone()
}

/// A SQL list literal of file paths for `read_parquet`.
pub fn parquet_list(paths: &[PathBuf]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| format!("'{}'", p.display().to_string().replace('\'', "''")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A `SELECT` over one table's snapshot, or `None` if the table does not exist. A table with no
/// files yet gets an empty relation with its columns, so queries still bind.
pub async fn snapshot_query(lake: &Lake, key: &str, at: At) -> Result<Option<String>, LakeError> {
    let Some(table) = lake.load(key, at).await? else {
        return Ok(None);
    };
    let files = table.local_files().await?;
    let schema = table.arrow_schema()?;
    if !files.is_empty() {
        let partitions = table.partition_columns()?;
        if partitions.is_empty() {
            return Ok(Some(format!(
                "SELECT * FROM read_parquet({})",
                parquet_list(&files)
            )));
        }
        let types: Vec<String> = partitions
            .iter()
            .filter_map(|c| schema.field_with_name(c).ok())
            .map(|f| format!("'{}': {}", f.name(), duckdb_type(f.data_type())))
            .collect();
        return Ok(Some(format!(
            "SELECT * FROM read_parquet({}, hive_partitioning = true, hive_types = {{{}}})",
            parquet_list(&files),
            types.join(", ")
        )));
    }
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("NULL::{} AS \"{}\"", duckdb_type(f.data_type()), f.name()))
        .collect();
    Ok(Some(format!("SELECT {} WHERE false", columns.join(", "))))
}

fn duckdb_type(data_type: &arrow::datatypes::DataType) -> &'static str {
    use arrow::datatypes::DataType as T;
    match data_type {
        T::Boolean => "BOOLEAN",
        T::Int8 | T::Int16 | T::Int32 => "INTEGER",
        T::Int64 => "BIGINT",
        T::Float32 | T::Float64 => "DOUBLE",
        T::Date32 => "DATE",
        T::Timestamp(_, Some(_)) => "TIMESTAMPTZ",
        T::Timestamp(_, None) => "TIMESTAMP",
        _ => "VARCHAR",
    }
}

/// Creates one view per table (named like `silver_prices`) over its latest snapshot and returns
/// the names of the views created; tables that do not exist yet are left out.
pub async fn create_views(
    conn: &duckdb::Connection,
    lake: &Lake,
    tables: &[(String, String)],
) -> Result<Vec<String>, LakeError> {
    let mut created = Vec::new();
    for (key, view) in tables {
        if create_view(conn, lake, key, view, At::Latest).await? {
            created.push(view.clone());
        }
    }
    Ok(created)
}

/// Creates (or replaces) the temporary view `view` over the table `key` as it was at `at`; `false` when
/// the table does not exist.
pub async fn create_view(
    conn: &duckdb::Connection,
    lake: &Lake,
    key: &str,
    view: &str,
    at: At,
) -> Result<bool, LakeError> {
    let Some(query) = snapshot_query(lake, key, at).await? else {
        return Ok(false);
    };
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP VIEW \"{view}\" AS {query}"
    ))
    .map_err(|e| LakeError::Bridge(format!("DuckDB view `{view}`: {e}")))?;
    Ok(true)
}
