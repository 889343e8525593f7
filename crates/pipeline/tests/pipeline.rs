//! The pipeline's hardest paths through `cargo test`, on a real lake in a temporary directory:
//! silver's incremental update and backfill and gold's incremental path against a full rebuild,
//! and the repairs that keep bronze's ledger and silver's rejects exactly once when a crash falls
//! between two commits (simulated by removing the side table's last commit from its log, which
//! is exactly what a crash before that commit leaves).

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use quantlens_engine::{run, DateRange, Registry, RunOptions};
use quantlens_lake::arrow::array::{Array, RecordBatch, StringArray};
use quantlens_lake::arrow::compute::{
    concat_batches, lexsort_to_indices, take_record_batch, SortColumn,
};
use quantlens_lake::{At, Lake};
use quantlens_pipeline::demo::{generate, DemoOptions};
use quantlens_pipeline::{assets, PipelineConfig};
use quantlens_runs::{RunId, RunRecord, RunStatus, StateDir};

const DERIVED: [(&str, &[&str]); 4] = [
    ("silver/prices", &["symbol", "date"]),
    ("silver/prices_rejects", &["source_file", "source_line"]),
    ("gold/returns", &["symbol", "date"]),
    ("gold/market_daily", &["date"]),
];

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    lake: Lake,
    state: StateDir,
    landing: PathBuf,
    /// Demo deliveries not delivered yet, in date order.
    pending: Vec<(String, Vec<u8>)>,
}

impl Fixture {
    fn new(symbols: usize, days: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let lake = Lake::open(root.join("data").to_str().unwrap()).unwrap();
        let state = StateDir::new(root.join("state"));
        state.create().unwrap();
        let landing = root.join("landing");
        std::fs::create_dir_all(&landing).unwrap();
        let (mut files, _) = generate(&DemoOptions {
            symbols,
            days,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2024, 1, 10).unwrap(),
        });
        files.sort();
        Fixture {
            _dir: dir,
            root,
            lake,
            state,
            landing,
            pending: files,
        }
    }

    fn deliver(&mut self, count: usize) {
        for (name, bytes) in self.pending.drain(..count.min(self.pending.len())) {
            std::fs::write(self.landing.join(name), bytes).unwrap();
        }
    }

    async fn materialize(&self, full_refresh: bool, range: Option<DateRange>) -> RunRecord {
        let config = PipelineConfig {
            landing: self.landing.to_str().unwrap().to_string(),
        };
        let registry = Registry::new(assets(&config)).unwrap();
        let selected = registry
            .graph()
            .keys()
            .iter()
            .map(|k| k.to_string())
            .collect();
        let run_id = RunId::generate();
        let files = self.state.run_files(&run_id);
        let record = RunRecord::new(run_id, "test", "*");
        files.write_record(&record).unwrap();
        let options = RunOptions {
            selected,
            only_stale: false,
            full_refresh,
            range,
            log_to_file: false,
        };
        let record = run(&registry, &self.lake, &files, record, &options)
            .await
            .unwrap();
        assert_eq!(record.status, RunStatus::Succeeded, "{record:#?}");
        record
    }

    /// The table's rows sorted by `keys`, without `ingested_at` when `drop_ingested` (it says
    /// when a row arrived, which differs between lakes fed at different times).
    async fn sorted(&self, key: &str, keys: &[&str], drop_ingested: bool) -> RecordBatch {
        let table = self.lake.load(key, At::Latest).await.unwrap().unwrap();
        let batches = table.read(None).await.unwrap();
        let all = concat_batches(&table.arrow_schema().unwrap(), &batches).unwrap();
        let columns: Vec<SortColumn> = keys
            .iter()
            .map(|k| SortColumn {
                values: all.column_by_name(k).unwrap().clone(),
                options: None,
            })
            .collect();
        let sorted = take_record_batch(&all, &lexsort_to_indices(&columns, None).unwrap()).unwrap();
        if !drop_ingested {
            return sorted;
        }
        let keep: Vec<usize> = (0..sorted.num_columns())
            .filter(|i| sorted.schema().field(*i).name() != "ingested_at")
            .collect();
        sorted.project(&keep).unwrap()
    }

    async fn derived(&self, drop_ingested: bool) -> Vec<RecordBatch> {
        let mut tables = Vec::new();
        for (key, keys) in DERIVED {
            tables.push(self.sorted(key, keys, drop_ingested).await);
        }
        tables
    }

    /// Forgets the table's last commit, as if the process had died just before making it: the
    /// next run starts with none of this one's loaded snapshots, as a new process would.
    fn forget_last_commit(&self, key: &str) {
        let log = self.root.join("data").join(key).join("_delta_log");
        let last = last_commit_file(&log);
        std::fs::remove_file(last).unwrap();
        self.lake.forget_snapshots();
    }
}

fn last_commit_file(log: &Path) -> PathBuf {
    let mut commits: Vec<PathBuf> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    commits.pop().unwrap()
}

fn assert_same(actual: &[RecordBatch], expected: &[RecordBatch]) {
    for ((actual, expected), (key, _)) in actual.iter().zip(expected).zip(DERIVED) {
        assert_eq!(actual.num_rows(), expected.num_rows(), "{key}: row counts");
        assert_eq!(actual.schema(), expected.schema(), "{key}: schemas");
        for i in 0..actual.num_columns() {
            assert_eq!(
                actual.column(i).to_data(),
                expected.column(i).to_data(),
                "{key}: column {}",
                actual.schema().field(i).name()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_updates_and_a_backfill_equal_a_full_rebuild() {
    let mut fx = Fixture::new(5, 70);
    fx.deliver(40);
    fx.materialize(false, None).await;
    // One delivery a run: silver's update, gold's incremental path.
    for _ in 0..6 {
        fx.deliver(1);
        fx.materialize(false, None).await;
    }
    // The rest at once: updates spanning several months.
    fx.deliver(usize::MAX);
    fx.materialize(false, None).await;
    let incremental = fx.derived(false).await;
    assert!(incremental[0].num_rows() > 300);

    fx.materialize(true, None).await;
    assert_same(&fx.derived(false).await, &incremental);

    let range = DateRange {
        from: NaiveDate::from_ymd_opt(2024, 2, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2024, 3, 15).unwrap(),
    };
    fx.materialize(false, Some(range)).await;
    assert_same(&fx.derived(false).await, &incremental);
}

/// Every (file, sha256) of the ledger, sorted; each must appear once.
async fn ledger_files(fx: &Fixture) -> Vec<String> {
    let ledger = fx.sorted("bronze/landing_files", &["file"], true).await;
    let files = ledger
        .column_by_name("file")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..files.len())
        .map(|i| files.value(i).to_string())
        .collect()
}

async fn bronze_rows(fx: &Fixture) -> usize {
    let table = fx
        .lake
        .load("bronze/prices", At::Latest)
        .await
        .unwrap()
        .unwrap();
    table
        .read(None)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_commits_never_ingest_or_reject_twice() {
    let mut clean = Fixture::new(4, 12);
    let mut crashed = Fixture::new(4, 12);
    for fx in [&mut clean, &mut crashed] {
        fx.deliver(6);
        fx.materialize(false, None).await;
    }

    // Run A dies after bronze's commit, before the ledger's; run B recovers A's files, ingests
    // more and dies the same way; run C must find both runs' files, not only the newest's.
    crashed.deliver(2);
    crashed.materialize(false, None).await;
    crashed.forget_last_commit("bronze/landing_files");
    crashed.deliver(2);
    crashed.materialize(false, None).await;
    crashed.forget_last_commit("bronze/landing_files");
    // And silver dies between its commit and its rejects' commit.
    crashed.forget_last_commit("silver/prices_rejects");
    crashed.deliver(usize::MAX);
    crashed.materialize(false, None).await;
    // A run with nothing new changes nothing more.
    crashed.materialize(false, None).await;

    clean.deliver(usize::MAX);
    clean.materialize(false, None).await;

    let files = ledger_files(&crashed).await;
    let mut unique = files.clone();
    unique.dedup();
    assert_eq!(files, unique, "a file is in the ledger twice");
    assert_eq!(files, ledger_files(&clean).await);
    assert_eq!(bronze_rows(&crashed).await, bronze_rows(&clean).await);
    assert_same(&crashed.derived(true).await, &clean.derived(true).await);
}
