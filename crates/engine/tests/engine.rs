//! The engine against a real lake in a temporary directory: retries, checks, schema drift and
//! failure propagation, with small made-up assets so each behaviour is isolated.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quantlens_engine::{
    run, Asset, AssetContext, AssetError, Check, Materialization, Outcome, OutputSchema, Registry,
    RetryPolicy, RunOptions,
};
use quantlens_lake::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{At, Lake};
use quantlens_runs::{AssetStatus, RunId, RunRecord, RunStatus, StateDir};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn batch(values: &[i64]) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
}

type Compute = Arc<dyn Fn(AssetContext) -> Result<Vec<RecordBatch>, AssetError> + Send + Sync>;

fn asset(key: &str, deps: &[&str], compute: Compute) -> Asset {
    Asset::new(key, OutputSchema::Declared(schema()), move |ctx| {
        let compute = compute.clone();
        async move { compute(ctx).map(|b| Outcome::Materialized(Materialization::overwrite(b))) }
    })
    .deps(deps)
    .retry(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    })
}

fn constant(values: &'static [i64]) -> Compute {
    Arc::new(move |_| Ok(vec![batch(values)]))
}

struct Fixture {
    _dir: tempfile::TempDir,
    lake: Lake,
    state: StateDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("data").to_str().unwrap()).unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.create().unwrap();
        Fixture {
            _dir: dir,
            lake,
            state,
        }
    }

    async fn run(&self, assets: Vec<Asset>, selection: &str) -> RunRecord {
        let registry = Registry::new(assets).unwrap();
        let selected = registry
            .graph()
            .select(selection)
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        let run_id = RunId::generate();
        let files = self.state.run_files(&run_id);
        let record = RunRecord::new(run_id, "test", selection);
        files.write_record(&record).unwrap();
        let options = RunOptions {
            selected,
            only_stale: false,
            full_refresh: false,
            range: None,
            log_to_file: true,
        };
        let finished = run(&registry, &self.lake, &files, record, &options)
            .await
            .unwrap();
        // What is on disk is what was returned.
        assert_eq!(self.state.read_run(&finished.run_id).unwrap(), finished);
        finished
    }

    async fn rows(&self, key: &str) -> Option<(i64, usize)> {
        let table = self.lake.load(key, At::Latest).await.unwrap()?;
        let rows = table
            .read(None)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        Some((table.version(), rows))
    }
}

fn status(record: &RunRecord, key: &str) -> AssetStatus {
    record.assets.iter().find(|a| a.key == key).unwrap().status
}

#[tokio::test]
async fn transient_errors_are_retried_and_data_errors_are_not() {
    let fx = Fixture::new();
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let calls = flaky_calls.clone();
    let flaky: Compute = Arc::new(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(AssetError::transient("storage hiccup"))
        } else {
            Ok(vec![batch(&[1, 2, 3])])
        }
    });
    let broken_calls = Arc::new(AtomicU32::new(0));
    let calls = broken_calls.clone();
    let broken: Compute = Arc::new(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(AssetError::data("bad input"))
    });
    let record = fx
        .run(
            vec![asset("a/flaky", &[], flaky), asset("a/broken", &[], broken)],
            "*",
        )
        .await;
    let flaky_run = &record.assets[0];
    assert_eq!(
        (flaky_run.status, flaky_run.attempts),
        (AssetStatus::Succeeded, 3)
    );
    assert_eq!(flaky_run.rows_written, Some(3));
    assert_eq!(broken_calls.load(Ordering::SeqCst), 1);
    assert_eq!(status(&record, "a/broken"), AssetStatus::Failed);
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(record.exit_code, Some(1));
    let events = std::fs::read_to_string(fx.state.run_files(&record.run_id).events_path()).unwrap();
    assert_eq!(events.matches("\"asset_retry\"").count(), 2);
}

#[tokio::test]
async fn failure_skips_downstream_but_not_unrelated_branches() {
    let fx = Fixture::new();
    let failing: Compute = Arc::new(|_| Err(AssetError::data("no")));
    let assets = vec![
        asset("a/root", &[], failing),
        asset("a/child", &["a/root"], constant(&[1])),
        asset("a/grandchild", &["a/child"], constant(&[1])),
        asset("b/other", &[], constant(&[7])),
        asset("b/reader", &["b/other"], constant(&[8])),
    ];
    let record = fx.run(assets, "*").await;
    assert_eq!(status(&record, "a/root"), AssetStatus::Failed);
    assert_eq!(status(&record, "a/child"), AssetStatus::Skipped);
    assert_eq!(status(&record, "a/grandchild"), AssetStatus::Skipped);
    let skipped = record
        .assets
        .iter()
        .find(|a| a.key == "a/grandchild")
        .unwrap();
    assert_eq!(skipped.error.as_deref(), Some("upstream failed: a/child"));
    assert_eq!(status(&record, "b/other"), AssetStatus::Succeeded);
    assert_eq!(fx.rows("a/child").await, None);
    assert_eq!(status(&record, "b/reader"), AssetStatus::Succeeded);
    assert_eq!(fx.rows("b/other").await, Some((0, 1)));
}

#[tokio::test]
async fn blocking_checks_stop_the_commit_and_warnings_do_not() {
    let fx = Fixture::new();
    let values = Arc::new(AtomicU32::new(1));
    let source = values.clone();
    let compute: Compute =
        Arc::new(move |_| Ok(vec![batch(&[source.load(Ordering::SeqCst) as i64; 4])]));
    let mut guarded = asset("a/guarded", &[], compute);
    guarded.checks = vec![
        Check::blocking("small", |batches| {
            let max = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .max()
                .unwrap_or(0);
            if max < 10 {
                Ok("ok".into())
            } else {
                Err(format!("max is {max}"))
            }
        }),
        Check::warning("never_happy", |_| Err("just a warning".into())),
    ];
    let record = fx.run(vec![guarded.clone()], "*").await;
    assert_eq!(status(&record, "a/guarded"), AssetStatus::Succeeded);
    let checks = &record.assets[0].checks;
    assert!(checks[0].passed && !checks[1].passed && !checks[1].blocking);
    assert_eq!(fx.rows("a/guarded").await, Some((0, 4)));

    values.store(50, Ordering::SeqCst);
    let record = fx.run(vec![guarded], "*").await;
    assert_eq!(status(&record, "a/guarded"), AssetStatus::Failed);
    assert_eq!(
        record.assets[0].attempts, 1,
        "a failed check is not retried"
    );
    assert!(record.assets[0]
        .error
        .as_deref()
        .unwrap()
        .contains("max is 50"));
    // Still the first commit, with the first values.
    assert_eq!(fx.rows("a/guarded").await, Some((0, 4)));
    let table = fx
        .lake
        .load("a/guarded", At::Latest)
        .await
        .unwrap()
        .unwrap();
    let read = table.read(None).await.unwrap();
    assert_eq!(
        read[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        1
    );
}

#[tokio::test]
async fn output_that_drifts_from_the_declared_schema_fails_at_its_asset() {
    let fx = Fixture::new();
    let drifted: Compute = Arc::new(|_| {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Utf8, false)]));
        Ok(vec![RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["1"]))],
        )
        .unwrap()])
    });
    let with_nulls: Compute = Arc::new(|_| {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        Ok(vec![RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap()])
    });
    let record = fx
        .run(
            vec![
                asset("a/drift", &[], drifted),
                asset("a/nulls", &[], with_nulls),
            ],
            "*",
        )
        .await;
    let drift = &record.assets[0];
    assert_eq!(drift.status, AssetStatus::Failed);
    assert!(
        drift
            .error
            .as_deref()
            .unwrap()
            .contains("`n` is Utf8 but the asset declares Int64"),
        "{drift:?}"
    );
    assert!(record.assets[1].error.as_deref().unwrap().contains("null"));
    assert_eq!(fx.rows("a/drift").await, None);
}

#[tokio::test]
async fn commits_carry_lineage_and_selection_limits_the_run() {
    let fx = Fixture::new();
    let assets = || {
        vec![
            asset("a/up", &[], constant(&[1, 2])),
            asset("a/down", &["a/up"], constant(&[3])),
        ]
    };
    let first = fx.run(assets(), "*").await;
    let second = fx.run(assets(), "a/down").await;
    assert_eq!(second.assets.len(), 1);
    let table = fx.lake.load("a/down", At::Latest).await.unwrap().unwrap();
    assert_eq!(table.version(), 1);
    let history = table.history(None).await.unwrap();
    let newest = history[0].quantlens.clone().unwrap();
    assert_eq!(newest.run_id, second.run_id.to_string());
    assert_eq!(newest.asset, "a/down");
    assert_eq!(newest.code_version, "1");
    assert_eq!(newest.upstream.get("a/up"), Some(&0));
    assert_eq!(
        history[1].quantlens.clone().unwrap().run_id,
        first.run_id.to_string()
    );
    assert_eq!(
        history.iter().map(|c| c.version).collect::<Vec<_>>(),
        [1, 0]
    );
}

#[tokio::test]
async fn staged_output_is_committed_once_and_cannot_carry_checks() {
    let fx = Fixture::new();
    let staging = |with_check: bool| {
        let mut staged_asset = asset("a/staged", &[], constant(&[]));
        staged_asset.compute = Arc::new(|ctx: AssetContext| {
            Box::pin(async move {
                let mut staged = quantlens_lake::Staged::new(schema());
                // Two pieces, as a producer too large for memory would write them.
                ctx.lake
                    .stage(&ctx.key, &mut staged, [batch(&[1, 2])])
                    .await?;
                ctx.lake.stage(&ctx.key, &mut staged, [batch(&[3])]).await?;
                Ok(Outcome::Materialized(Materialization {
                    output: quantlens_engine::Output::Staged(staged),
                    mode: quantlens_lake::WriteMode::Append,
                    extra_metadata: Default::default(),
                    side_writes: Vec::new(),
                    more: false,
                    consumed: None,
                }))
            })
        });
        if with_check {
            staged_asset.checks = vec![Check::blocking("needs_data", |_| Ok("ok".into()))];
        }
        staged_asset
    };
    let record = fx.run(vec![staging(false)], "*").await;
    assert_eq!(status(&record, "a/staged"), AssetStatus::Succeeded);
    assert_eq!(record.assets[0].rows_written, Some(3));
    assert_eq!(fx.rows("a/staged").await, Some((0, 3)));

    let record = fx.run(vec![staging(true)], "*").await;
    assert_eq!(status(&record, "a/staged"), AssetStatus::Failed);
    assert!(record.assets[0]
        .error
        .as_deref()
        .unwrap()
        .contains("checks cannot run"));
    assert_eq!(
        fx.rows("a/staged").await,
        Some((0, 3)),
        "nothing new committed"
    );
}

#[tokio::test]
async fn pieces_are_checked_one_by_one_and_committed_once() {
    let fx = Fixture::new();
    // Pieces 1,2 then 3,-4: a check fails on the second piece only.
    let in_pieces = |blocking: bool| {
        let mut pieced = asset("a/pieced", &[], constant(&[]));
        pieced.compute = Arc::new(|_ctx: AssetContext| {
            Box::pin(async move {
                let pieces = futures::stream::iter([
                    Ok(vec![batch(&[1, 2])]),
                    Ok(vec![batch(&[3]), batch(&[-4])]),
                ]);
                Ok(Outcome::Materialized(Materialization::overwrite_with(
                    quantlens_engine::Output::Pieces(Box::pin(pieces)),
                )))
            })
        });
        let positive = |batches: &[RecordBatch]| {
            let negative = batches
                .iter()
                .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap())
                .filter(|n| n.unwrap() < 0)
                .count();
            match negative {
                0 => Ok(format!("{} batch(es) positive", batches.len())),
                n => Err(format!("{n} negative")),
            }
        };
        pieced.checks = vec![
            if blocking {
                Check::blocking("positive", positive)
            } else {
                Check::warning("positive", positive)
            },
            Check::warning("counted", |b| Ok(format!("{} batch(es)", b.len()))),
        ];
        pieced
    };
    let record = fx.run(vec![in_pieces(false)], "*").await;
    assert_eq!(status(&record, "a/pieced"), AssetStatus::Succeeded);
    assert_eq!(record.assets[0].rows_written, Some(4));
    let check = &record.assets[0].checks[0];
    assert!(!check.passed && check.detail == "1 negative", "{check:?}");
    let counted = &record.assets[0].checks[1];
    assert_eq!(
        counted.detail,
        "1 batch(es) (the first of 2 pieces; each passed)"
    );
    assert_eq!(fx.rows("a/pieced").await, Some((0, 4)), "one version");

    let record = fx.run(vec![in_pieces(true)], "*").await;
    assert_eq!(status(&record, "a/pieced"), AssetStatus::Failed);
    let error = record.assets[0].error.as_deref().unwrap();
    assert!(error.contains("`positive` failed: 1 negative"), "{error}");
    assert_eq!(fx.rows("a/pieced").await, Some((0, 4)), "nothing committed");
}
