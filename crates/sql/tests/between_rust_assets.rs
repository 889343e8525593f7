//! A SQL asset among Rust assets, through the engine on a real lake in a temporary directory: a
//! Rust asset feeds a SQL asset, which feeds another Rust asset, and the selection `+key+` around
//! the SQL asset runs all three in order, each reading the one before at its committed version.

use std::sync::Arc;

use quantlens_engine::{run, Asset, Materialization, Outcome, OutputSchema, Registry, RunOptions};
use quantlens_lake::arrow::array::{Array, Int64Array, RecordBatch};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{At, Lake};
use quantlens_runs::{AssetStatus, RunId, RunRecord, StateDir};

fn column(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
}

fn batch(name: &str, values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(column(name), vec![Arc::new(Int64Array::from(values))]).unwrap()
}

fn source() -> Asset {
    Asset::new(
        "src/numbers",
        OutputSchema::Declared(column("n")),
        |_| async {
            Ok(Outcome::Materialized(Materialization::overwrite(vec![
                batch("n", vec![1, 2, 3]),
            ])))
        },
    )
}

/// Sums the SQL asset's `n`, read back from its table.
fn sink() -> Asset {
    Asset::new(
        "out/total",
        OutputSchema::Declared(column("total")),
        |ctx| async move {
            let (_, batches) = ctx.read_upstream("mid/doubled", None).await?;
            let total: i64 = batches
                .iter()
                .map(|b| {
                    let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    n.values().iter().sum::<i64>()
                })
                .sum();
            Ok(Outcome::Materialized(Materialization::overwrite(vec![
                batch("total", vec![total]),
            ])))
        },
    )
    .deps(&["mid/doubled"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_asset_between_two_rust_assets_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let assets_dir = dir.path().join("assets");
    std::fs::create_dir_all(assets_dir.join("mid")).unwrap();
    std::fs::write(
        assets_dir.join("mid/doubled.sql"),
        "-- quantlens:\n--   checks:\n--     - not_null: [n]\nSELECT n * 2 AS n FROM src_numbers\n",
    )
    .unwrap();
    let builtin = vec![source(), sink()];
    let sql = quantlens_sql::load_dir(&assets_dir, &builtin).unwrap();
    assert_eq!(sql.len(), 1);
    assert_eq!(sql[0].deps.iter().collect::<Vec<_>>(), ["src/numbers"]);
    let mut assets = builtin;
    assets.push(sql[0].to_asset());
    let registry = Registry::new(assets).unwrap();
    let selected: Vec<String> = registry
        .graph()
        .select("+mid/doubled+")
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(selected, ["src/numbers", "mid/doubled", "out/total"]);

    let lake = Lake::open(dir.path().join("data").to_str().unwrap()).unwrap();
    let state = StateDir::new(dir.path().join("state"));
    state.create().unwrap();
    let run_id = RunId::generate();
    let files = state.run_files(&run_id);
    let record = RunRecord::new(run_id, "test", "+mid/doubled+");
    files.write_record(&record).unwrap();
    let options = RunOptions {
        selected,
        only_stale: false,
        full_refresh: false,
        range: None,
        log_to_file: false,
    };
    let record = run(&registry, &lake, &files, record, &options)
        .await
        .unwrap();
    assert!(
        record
            .assets
            .iter()
            .all(|a| a.status == AssetStatus::Succeeded),
        "{record:#?}"
    );
    let middle = &record.assets[1];
    assert_eq!(middle.checks.len(), 1);
    assert!(middle.checks[0].passed);

    let total = lake.load("out/total", At::Latest).await.unwrap().unwrap();
    let rows = total.read(None).await.unwrap();
    let value = rows[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(value, 12);
}
