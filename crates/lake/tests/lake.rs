//! The lake against real Delta tables in a temporary directory: writes, overwrites, time travel,
//! history with lineage metadata, and DuckDB reading the same snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use quantlens_lake::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{duck, At, CommitMetadata, FileStore, Lake, LakeError, Staged, WriteMode};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]))
}

fn batch(rows: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

fn metadata(run: &str) -> CommitMetadata {
    CommitMetadata {
        run_id: run.into(),
        asset: "test/numbers".into(),
        code_version: "7".into(),
        upstream: BTreeMap::from([("test/source".to_string(), 3)]),
        extra: Default::default(),
    }
}

async fn sum(lake: &Lake, at: At) -> i64 {
    let table = lake.load("test/numbers", at).await.unwrap().unwrap();
    table
        .read(None)
        .await
        .unwrap()
        .iter()
        .map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum()
}

#[tokio::test]
async fn writes_overwrites_time_travel_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    assert!(lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .is_none());

    let v0 = lake
        .write(
            "test/numbers",
            schema(),
            [batch(&[("A", 1), ("B", 2)])],
            WriteMode::Append,
            &metadata("r0"),
        )
        .await
        .unwrap();
    let v1 = lake
        .write(
            "test/numbers",
            schema(),
            [batch(&[("C", 4)])],
            WriteMode::Append,
            &metadata("r1"),
        )
        .await
        .unwrap();
    let v2 = lake
        .write(
            "test/numbers",
            schema(),
            [batch(&[("D", 100)])],
            WriteMode::Overwrite,
            &metadata("r2"),
        )
        .await
        .unwrap();
    assert_eq!((v0, v1, v2), (0, 1, 2));

    assert_eq!(sum(&lake, At::Latest).await, 100);
    assert_eq!(sum(&lake, At::Version(1)).await, 7);
    assert_eq!(sum(&lake, At::Version(0)).await, 3);
    let latest = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.row_count().unwrap(), 1);
    assert_eq!(latest.files().unwrap().len(), 1);

    let history = latest.history(None).await.unwrap();
    assert_eq!(
        history.iter().map(|c| c.version).collect::<Vec<_>>(),
        [2, 1, 0]
    );
    let newest = history[0].quantlens.clone().unwrap();
    assert_eq!(newest, metadata("r2"));
    assert_eq!(history[0].operation, "WRITE");

    // Time travel by timestamp: the commit time of version 1 gives version 1.
    let at_v1 = lake
        .load("test/numbers", At::Version(1))
        .await
        .unwrap()
        .unwrap();
    let when = at_v1.version_timestamp().unwrap();
    let by_time = lake
        .load("test/numbers", At::Timestamp(when))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_time.version(), 1);

    match lake.load("test/numbers", At::Version(9)).await {
        Err(LakeError::NoSuchVersion {
            version: 9,
            latest: 2,
            ..
        }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("version 9 does not exist"),
    }

    // Projection reads only the asked columns.
    let projected = latest.read(Some(&["n"])).await.unwrap();
    assert_eq!(projected[0].num_columns(), 1);

    // DuckDB sees exactly the same snapshots.
    let conn = duck::connect().unwrap();
    let views = duck::create_views(
        &conn,
        &lake,
        &[
            ("test/numbers".to_string(), "numbers".to_string()),
            ("test/absent".to_string(), "absent".to_string()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(views, ["numbers"]);
    let total: i64 = conn
        .query_row("SELECT sum(n) FROM numbers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 100);
    let old = duck::snapshot_query(&lake, "test/numbers", At::Version(1))
        .await
        .unwrap()
        .unwrap();
    let total: i64 = conn
        .query_row(&format!("SELECT sum(n) FROM ({old})"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 7);
}

#[tokio::test]
async fn empty_writes_make_readable_empty_tables() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let version = lake
        .write(
            "test/empty",
            schema(),
            Vec::new(),
            WriteMode::Overwrite,
            &metadata("r0"),
        )
        .await
        .unwrap();
    assert_eq!(version, 0);
    let table = lake.load("test/empty", At::Latest).await.unwrap().unwrap();
    assert_eq!(table.row_count().unwrap(), 0);
    assert_eq!(table.arrow_schema().unwrap().field(0).name(), "symbol");
    let conn = duck::connect().unwrap();
    duck::create_views(
        &conn,
        &lake,
        &[("test/empty".to_string(), "empty".to_string())],
    )
    .await
    .unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM empty", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn landing_files_round_trip_through_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("landing").to_str().unwrap()).unwrap();
    store.write("b.csv", b"2".to_vec()).await.unwrap();
    store.write("a.csv", b"1".to_vec()).await.unwrap();
    store.write("nested/c.csv", b"33".to_vec()).await.unwrap();
    let names: Vec<(String, u64)> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    assert_eq!(
        names,
        [
            ("a.csv".to_string(), 1),
            ("b.csv".to_string(), 1),
            ("nested/c.csv".to_string(), 2)
        ]
    );
    assert_eq!(&store.read("nested/c.csv").await.unwrap()[..], b"33");
}

/// Stages `rows` for the `symbol`-partitioned test table and commits them with `mode`.
async fn commit_by_symbol(
    lake: &Lake,
    rows: &[(&str, i64)],
    mode: WriteMode,
) -> Result<i64, LakeError> {
    let mut staged = Staged::partitioned(schema(), vec!["symbol".into()]);
    lake.stage("test/numbers", &mut staged, [batch(rows)])
        .await?;
    lake.commit_staged("test/numbers", staged, mode, &metadata("r"))
        .await
}

async fn rows_by_symbol(lake: &Lake) -> BTreeMap<String, Vec<i64>> {
    let table = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    let mut rows: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for batch in table.read(None).await.unwrap() {
        // Partition values come back as the table's column, in the table's column order.
        assert_eq!(batch.schema().field(0).name(), "symbol");
        let symbols = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let numbers = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            rows.entry(symbols.value(i).to_string())
                .or_default()
                .push(numbers.value(i));
        }
    }
    rows.values_mut().for_each(|v| v.sort());
    rows
}

#[tokio::test]
async fn partition_replace_touches_only_the_named_partitions_and_refuses_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let replace = |values: &[&str]| {
        WriteMode::ReplacePartitions(values.iter().map(|v| v.to_string()).collect())
    };
    let v0 = commit_by_symbol(&lake, &[("A", 1), ("A", 2), ("B", 3)], WriteMode::Overwrite)
        .await
        .unwrap();
    assert!(dir.path().join("test/numbers/symbol=A").is_dir());

    let v1 = commit_by_symbol(&lake, &[("A", 10)], replace(&["A"]))
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1);
    assert_eq!(
        rows_by_symbol(&lake).await,
        BTreeMap::from([("A".into(), vec![10]), ("B".into(), vec![3])])
    );
    let table = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    let commit = &table.history(Some(1)).await.unwrap()[0];
    assert_eq!(commit.operation, "WRITE");

    // Rows outside the named partitions, or a named partition left empty, refuse the commit.
    let outside = commit_by_symbol(&lake, &[("A", 11), ("B", 4)], replace(&["A"])).await;
    assert!(
        matches!(&outside, Err(LakeError::InvalidReplace { reason, .. }) if reason.contains("outside")),
        "{outside:?}"
    );
    let emptied = commit_by_symbol(&lake, &[("A", 11)], replace(&["A", "B"])).await;
    assert!(
        matches!(&emptied, Err(LakeError::InvalidReplace { reason, .. }) if reason.contains("emptied")),
        "{emptied:?}"
    );
    let nothing = commit_by_symbol(&lake, &[], replace(&[])).await;
    assert!(matches!(nothing, Err(LakeError::InvalidReplace { .. })));
    let table = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(table.version(), v1, "a refused replace commits nothing");
    assert_eq!(rows_by_symbol(&lake).await["B"], vec![3]);

    // DuckDB sees the partition column through the directory names.
    let query = duck::snapshot_query(&lake, "test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    let conn = duck::connect().unwrap();
    let total: i64 = conn
        .query_row(
            &format!("SELECT sum(n) FROM ({query}) WHERE symbol = 'B'"),
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(total, 3);
}

#[tokio::test]
async fn appended_since_lists_new_files_until_the_table_does_more_than_append() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let write = |rows: Vec<(&'static str, i64)>, mode| {
        let lake = lake.clone();
        async move {
            lake.write(
                "test/numbers",
                schema(),
                [batch(&rows)],
                mode,
                &metadata("r"),
            )
            .await
            .unwrap()
        }
    };
    let v0 = write(vec![("A", 1)], WriteMode::Append).await;
    write(vec![("B", 2)], WriteMode::Append).await;
    write(vec![("C", 3)], WriteMode::Append).await;
    let table = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    let new = table.appended_since(v0).await.unwrap().unwrap();
    assert_eq!(new.len(), 2);
    let mut symbols: Vec<String> = Vec::new();
    let mut batches = table.scan_files(new, Some(&["symbol"])).unwrap();
    while let Some(batch) = futures::TryStreamExt::try_next(&mut batches).await.unwrap() {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        symbols.extend(column.iter().flatten().map(str::to_string));
    }
    symbols.sort();
    assert_eq!(symbols, ["B", "C"]);
    assert!(table
        .appended_since(table.version())
        .await
        .unwrap()
        .unwrap()
        .is_empty());

    write(vec![("D", 4)], WriteMode::Overwrite).await;
    let table = lake
        .load("test/numbers", At::Latest)
        .await
        .unwrap()
        .unwrap();
    assert!(table.appended_since(v0).await.unwrap().is_none());
}

/// The version `_delta_log/_last_checkpoint` names, read as any Delta reader would.
fn last_checkpoint(root: &std::path::Path, key: &str) -> Option<i64> {
    let text = std::fs::read_to_string(root.join(key).join("_delta_log/_last_checkpoint")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["version"].as_i64()
}

/// Commits one row `commits` times to each of `keys` in turn, as a daily run does, asking after
/// each commit for the checkpoint; returns the (table, version) checkpoints written.
async fn commit_all(
    lake: Lake,
    keys: &'static [&'static str],
    commits: usize,
) -> Vec<(&'static str, i64)> {
    let mut written = Vec::new();
    for n in 0..commits {
        for key in keys {
            let rows = [("AAA", n as i64)];
            lake.write(
                key,
                schema(),
                vec![batch(&rows)],
                WriteMode::Append,
                &metadata("r"),
            )
            .await
            .unwrap();
            if let Some(version) = lake.checkpoint_if_due(key).await.unwrap() {
                written.push((*key, version));
            }
        }
    }
    written
}

#[tokio::test]
async fn checkpoints_come_every_ten_commits_and_at_most_one_per_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // One process commits 15 times to each of two tables: both are due after their 10th commit
    // (version 9), and only the first gets its checkpoint.
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let written = commit_all(lake, &["t/first", "t/second"], 15).await;
    assert_eq!(written, [("t/first", 9)]);
    assert_eq!(last_checkpoint(&root, "t/first"), Some(9));
    assert_eq!(last_checkpoint(&root, "t/second"), None);

    // The next process checkpoints the table still due.
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let written = commit_all(lake, &["t/second", "t/first"], 1).await;
    assert_eq!(written, [("t/second", 15)]);

    // A table two intervals behind is checkpointed even when the process has written one.
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let written = commit_all(lake, &["t/first", "t/second"], 21).await;
    assert_eq!(
        written,
        [("t/first", 19), ("t/second", 35)],
        "second, due at 25 after first's turn, is taken at 35, two intervals behind"
    );
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let written = commit_all(lake.clone(), &["t/third"], 1).await;
    assert!(written.is_empty());
    // third's one commit took nothing; first, 17 behind, takes the turn.
    assert_eq!(lake.checkpoint_if_due("t/first").await.unwrap(), Some(36));
    assert_eq!(last_checkpoint(&root, "t/first"), Some(36));
    let reopened = lake.load("t/first", At::Latest).await.unwrap().unwrap();
    assert_eq!(reopened.version(), 36);
}

#[tokio::test]
async fn a_table_made_with_a_longer_interval_checkpoints_at_the_lakes() {
    use deltalake::kernel::{DataType as DeltaType, StructField};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let location = root.join("t/old");
    std::fs::create_dir_all(&location).unwrap();
    // As every lake made before the interval went from 20 to 10 has its tables.
    deltalake::operations::create::CreateBuilder::new()
        .with_location(format!("file://{}", location.display()))
        .with_columns([
            StructField::new("symbol", DeltaType::STRING, false),
            StructField::new("n", DeltaType::LONG, false),
        ])
        .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some("20"))
        .await
        .unwrap();
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let written = commit_all(lake, &["t/old"], 12).await;
    assert_eq!(
        written,
        [("t/old", 9)],
        "ten commits (versions 0 to 9), not the table's twenty"
    );
    assert_eq!(last_checkpoint(&root, "t/old"), Some(9));
}

#[tokio::test]
async fn a_lake_reads_each_commit_file_once_until_it_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    for run in ["r0", "r1", "r2"] {
        lake.write(
            "test/numbers",
            schema(),
            [batch(&[("A", 1)])],
            WriteMode::Append,
            &metadata(run),
        )
        .await
        .unwrap();
    }
    assert_eq!(sum(&lake, At::Latest).await, 3);

    // Behind the lake's back, as nothing may do to a commit file: version 1 no longer adds a
    // file. Loading version 1 from scratch (it is older than the cached snapshot) replays the
    // bytes the lake read, until it is told to forget them.
    let commit = dir
        .path()
        .join("test/numbers/_delta_log/00000000000000000001.json");
    let text = std::fs::read_to_string(&commit).unwrap();
    let without_add: Vec<&str> = text.lines().filter(|l| !l.contains("\"add\"")).collect();
    assert!(without_add.len() < text.lines().count());
    std::fs::write(&commit, without_add.join("\n")).unwrap();
    assert_eq!(sum(&lake, At::Version(1)).await, 2);
    lake.forget_snapshots();
    assert_eq!(sum(&lake, At::Version(1)).await, 1);
}
