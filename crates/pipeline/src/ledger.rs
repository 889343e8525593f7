//! `bronze/landing_files`, the ledger: which landing files bronze has handled (name, size,
//! sha256, ingested or rejected and why). Delta has no transaction across the two tables, so a
//! crash can fall between a bronze commit and its ledger commit; every bronze commit therefore
//! lists its files in its metadata, and the next run walks back through the bronze commits the
//! ledger does not record yet, treats their files as ingested and repairs the ledger, however
//! many interrupted runs left commits unrecorded in a row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::TryStreamExt;
use quantlens_engine::AssetError;
use quantlens_lake::arrow::array::{
    Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{At, Lake, StoredFile, WriteMode};

use crate::bronze::PRICES;
use crate::columns::{string_column, typed_column, utc_timestamp};

pub const LEDGER: &str = "bronze/landing_files";

/// Files the ledger may hold before a bronze run rewrites it whole. Every run reads the whole
/// ledger; one more small file per daily run made that read grow with the number of runs until
/// `quantlens maintain` compacted it.
const LEDGER_FILES_BEFORE_REWRITE: usize = 16;

pub fn ledger_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("ingested_at", utc_timestamp(), false),
    ]))
}

pub(crate) struct LedgerEntry {
    pub(crate) file: String,
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
    pub(crate) fate: Fate,
}

pub(crate) enum Fate {
    Ingested {
        rows: u64,
    },
    Rejected {
        reason: String,
    },
    /// Found in a bronze commit that an interrupted run did not record in the ledger. The commit
    /// lists the file's row count (commits written before it did recover without one).
    Recovered {
        rows: Option<u64>,
    },
}

/// A landing file as a bronze commit lists it in its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommittedFile {
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) bytes: Option<u64>,
    pub(crate) rows: Option<u64>,
}

impl CommittedFile {
    /// What a bronze commit's metadata says of an ingested file.
    pub(crate) fn metadata(entry: &LedgerEntry, rows: u64) -> serde_json::Value {
        serde_json::json!({"file": entry.file, "sha256": entry.sha256, "bytes": entry.bytes, "rows": rows})
    }
}

/// What the ledger knows about landing files: which (file, sha256) pairs were handled, and for
/// each file the size it had and the time it was last handled.
#[derive(Default)]
pub(crate) struct Known {
    deliveries: HashSet<(String, String)>,
    seen: HashMap<String, (u64, i64)>,
}

impl Known {
    pub(crate) fn contains(&self, file: &str, sha256: &str) -> bool {
        self.deliveries
            .contains(&(file.to_string(), sha256.to_string()))
    }

    /// Returns true when the pair is new.
    pub(crate) fn insert(&mut self, file: &str, sha256: &str) -> bool {
        self.deliveries
            .insert((file.to_string(), sha256.to_string()))
    }

    /// A file with the size it had when last handled and not modified since (allowing for
    /// `clock_skew` between the storage and this machine) holds what was handled then, so a daily
    /// run need not read and hash the whole history of deliveries. `--full-refresh` reads them all.
    pub(crate) fn unchanged_since_seen(
        &self,
        file: &StoredFile,
        clock_skew: chrono::Duration,
    ) -> bool {
        self.seen.get(&file.name).is_some_and(|(bytes, seen_at)| {
            let modified = (file.modified + clock_skew).timestamp_micros();
            *bytes == file.size && modified < *seen_at
        })
    }
}

/// Margin for the clocks of remote landing storage and this machine disagreeing.
pub(crate) const REMOTE_CLOCK_SKEW_SECONDS: i64 = 300;

/// What is already handled: the ledger, plus every bronze commit a crash left unrecorded there,
/// with ledger entries for the latter.
pub(crate) async fn known_deliveries(lake: &Lake) -> Result<(Known, Vec<LedgerEntry>), AssetError> {
    let mut known = Known::default();
    if let Some(table) = lake.load(LEDGER, At::Latest).await? {
        for batch in table
            .read(Some(&["file", "sha256", "bytes", "ingested_at"]))
            .await?
        {
            let files = string_column(&batch, "file")?;
            let hashes = string_column(&batch, "sha256")?;
            let bytes = typed_column::<Int64Array>(&batch, "bytes")?;
            let seen_at = typed_column::<TimestampMicrosecondArray>(&batch, "ingested_at")?;
            for i in 0..batch.num_rows() {
                known.insert(files.value(i), hashes.value(i));
                let entry = (bytes.value(i).max(0) as u64, seen_at.value(i));
                let newest = known
                    .seen
                    .entry(files.value(i).to_string())
                    .or_insert(entry);
                if entry.1 >= newest.1 {
                    *newest = entry;
                }
            }
        }
    }
    let mut recovered = Vec::new();
    if let Some(prices) = lake.load(PRICES, At::Latest).await? {
        for committed in unrecorded_files(&prices, &known).await? {
            if known.insert(&committed.file, &committed.sha256) {
                recovered.push(LedgerEntry {
                    file: committed.file,
                    bytes: committed.bytes.unwrap_or(0),
                    sha256: committed.sha256,
                    fate: Fate::Recovered {
                        rows: committed.rows,
                    },
                });
            }
        }
    }
    Ok((known, recovered))
}

/// How a bronze run records `entries` (a [`ledger_batch`]): appended, or once the ledger holds
/// [`LEDGER_FILES_BEFORE_REWRITE`] files, the whole ledger rewritten with them as one commit
/// (the same rows, so a reader at any version sees a whole ledger).
pub(crate) async fn ledger_write(
    lake: &Lake,
    entries: RecordBatch,
) -> Result<(Vec<RecordBatch>, WriteMode), AssetError> {
    let Some(table) = lake.load(LEDGER, At::Latest).await? else {
        return Ok((vec![entries], WriteMode::Append));
    };
    if table.files()?.len() < LEDGER_FILES_BEFORE_REWRITE {
        return Ok((vec![entries], WriteMode::Append));
    }
    let mut batches = Vec::new();
    for batch in table.read(None).await? {
        let batch = RecordBatch::try_new(ledger_schema(), batch.columns().to_vec())
            .map_err(|e| AssetError::data(format!("rewriting the ledger: {e}")))?;
        batches.push(batch);
    }
    batches.push(entries);
    Ok((batches, WriteMode::Overwrite))
}

/// The files of bronze commits missing from the ledger, newest commit first.
///
/// Every ledger commit records all bronze commits made before it (its own run's and those it
/// recovered), so the search walks back from the newest bronze commit, reading one commit file at
/// a time, and stops at the first one whose files the ledger holds: everything older was recorded
/// with it or before. After an uninterrupted run that is the newest commit. A crash can leave
/// several commits unrecorded in a row (a run recovering an earlier one dies before its own
/// ledger commit), which is why looking at the newest alone is not enough.
async fn unrecorded_files(
    prices: &quantlens_lake::Table,
    known: &Known,
) -> Result<Vec<CommittedFile>, AssetError> {
    let mut search = UnrecordedSearch::default();
    let mut commits = prices.commits(None);
    while let Some(commit) = commits.try_next().await? {
        if search.reaches_recorded(&commit, known) {
            break;
        }
    }
    Ok(search.missing)
}

/// A walk back through bronze commits, newest first, collecting the files the ledger misses.
#[derive(Default)]
struct UnrecordedSearch {
    missing: Vec<CommittedFile>,
}

impl UnrecordedSearch {
    /// Adds the files of `commit` the ledger misses, and says whether the ledger holds all of
    /// them (the walk can stop). Commits naming no files (maintenance, an append of rejected
    /// files only) prove nothing and are passed over.
    fn reaches_recorded(&mut self, commit: &quantlens_lake::Commit, known: &Known) -> bool {
        let files = commit_files(commit);
        if files.is_empty() {
            return false;
        }
        let before = self.missing.len();
        self.missing.extend(
            files
                .into_iter()
                .filter(|f| !known.contains(&f.file, &f.sha256)),
        );
        self.missing.len() == before
    }
}

/// The landing files a bronze commit lists in its metadata.
fn commit_files(commit: &quantlens_lake::Commit) -> Vec<CommittedFile> {
    let listed = commit
        .quantlens
        .as_ref()
        .and_then(|m| m.extra.get("files"))
        .and_then(|v| v.as_array());
    listed
        .into_iter()
        .flatten()
        .filter_map(|file| {
            Some(CommittedFile {
                file: file["file"].as_str()?.to_string(),
                sha256: file["sha256"].as_str()?.to_string(),
                bytes: file["bytes"].as_u64(),
                rows: file["rows"].as_u64(),
            })
        })
        .collect()
}

pub(crate) fn ledger_batch(
    entries: &[LedgerEntry],
    run_id: &str,
    ingested_at: i64,
) -> Result<RecordBatch, AssetError> {
    let mut file = StringBuilder::new();
    let mut bytes = Int64Builder::new();
    let mut sha = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut rows = Int64Builder::new();
    for entry in entries {
        file.append_value(&entry.file);
        bytes.append_value(entry.bytes as i64);
        sha.append_value(&entry.sha256);
        let (fate, why, count) = match &entry.fate {
            Fate::Ingested { rows } => ("ingested", None, Some(*rows as i64)),
            Fate::Rejected { reason } => ("rejected", Some(reason.as_str()), Some(0)),
            // Recorded as the interrupted run would have: the repair is invisible but for the
            // ledger row's run id and time.
            Fate::Recovered { rows: Some(rows) } => ("ingested", None, Some(*rows as i64)),
            Fate::Recovered { rows: None } => (
                "ingested",
                Some("recorded late: its run was interrupted after the bronze commit"),
                None,
            ),
        };
        status.append_value(fate);
        reason.append_option(why);
        rows.append_option(count);
    }
    let n = entries.len();
    RecordBatch::try_new(
        ledger_schema(),
        vec![
            Arc::new(file.finish()),
            Arc::new(bytes.finish()),
            Arc::new(sha.finish()),
            Arc::new(status.finish()),
            Arc::new(reason.finish()),
            Arc::new(rows.finish()),
            Arc::new(StringArray::from(vec![run_id; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![ingested_at; n]).with_timezone("UTC")),
        ],
    )
    .map_err(|e| AssetError::data(format!("building the ledger batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantlens_lake::{Commit, CommitMetadata};
    use serde_json::json;

    fn commit(version: i64, files: &[(&str, &str)]) -> Commit {
        let listed: Vec<_> = files
            .iter()
            .map(|(file, sha)| json!({"file": file, "sha256": sha}))
            .collect();
        let mut extra = serde_json::Map::new();
        extra.insert("files".into(), listed.into());
        Commit {
            version,
            timestamp: None,
            operation: "WRITE".into(),
            quantlens: Some(CommitMetadata {
                extra,
                ..Default::default()
            }),
        }
    }

    fn vacuum(version: i64) -> Commit {
        Commit {
            version,
            timestamp: None,
            operation: "VACUUM END".into(),
            quantlens: None,
        }
    }

    fn ledger(pairs: &[(&str, &str)]) -> Known {
        let mut known = Known::default();
        for (file, sha) in pairs {
            known.insert(file, sha);
        }
        known
    }

    #[test]
    fn the_search_stops_at_the_newest_commit_the_ledger_records() {
        let history = [
            commit(3, &[("d.csv", "4")]),
            commit(2, &[("c.csv", "3")]),
            commit(1, &[("b.csv", "2")]),
            commit(0, &[("a.csv", "1")]),
        ];
        let known = ledger(&[
            ("a.csv", "1"),
            ("b.csv", "2"),
            ("c.csv", "3"),
            ("d.csv", "4"),
        ]);
        assert_eq!(
            pairs(missing_since_recorded(&history, &known)),
            (vec![], true)
        );
    }

    #[test]
    fn several_unrecorded_commits_in_a_row_are_all_found() {
        // Run 1 committed c.csv and died; run 2 recovered it, committed d.csv and died too.
        let history = [
            vacuum(4),
            commit(3, &[("d.csv", "4")]),
            commit(2, &[("c.csv", "3")]),
            commit(1, &[]),
            commit(0, &[("a.csv", "1"), ("b.csv", "2")]),
        ];
        let known = ledger(&[("a.csv", "1"), ("b.csv", "2")]);
        let (missing, found) = pairs(missing_since_recorded(&history, &known));
        assert!(found);
        let pair = |f: &str, s: &str| (f.to_string(), s.to_string());
        assert_eq!(missing, [pair("d.csv", "4"), pair("c.csv", "3")]);
    }

    #[test]
    fn a_changed_file_is_a_new_delivery_and_a_history_without_a_recorded_commit_is_all_missing() {
        let history = [commit(1, &[("a.csv", "2")]), commit(0, &[("a.csv", "1")])];
        let (missing, found) = pairs(missing_since_recorded(&history, &ledger(&[])));
        assert_eq!(missing.len(), 2);
        assert!(!found);
        let (missing, found) = pairs(missing_since_recorded(&history, &ledger(&[("a.csv", "1")])));
        assert_eq!(missing, [("a.csv".to_string(), "2".to_string())]);
        assert!(found);
    }

    /// The search over a whole `history` (newest first): the files missing, and whether it
    /// reached a commit the ledger records.
    fn missing_since_recorded(history: &[Commit], known: &Known) -> (Vec<CommittedFile>, bool) {
        let mut search = UnrecordedSearch::default();
        let found = history.iter().any(|c| search.reaches_recorded(c, known));
        (search.missing, found)
    }

    fn pairs((files, found): (Vec<CommittedFile>, bool)) -> (Vec<(String, String)>, bool) {
        let pairs = files.into_iter().map(|f| (f.file, f.sha256)).collect();
        (pairs, found)
    }

    #[test]
    fn a_commit_lists_size_and_rows_so_the_repair_records_them() {
        let entry = LedgerEntry {
            file: "a.csv".into(),
            bytes: 120,
            sha256: "1".into(),
            fate: Fate::Ingested { rows: 3 },
        };
        let mut extra = serde_json::Map::new();
        extra.insert("files".into(), json!([CommittedFile::metadata(&entry, 3)]));
        let mut listed = commit(0, &[]);
        listed.quantlens.as_mut().unwrap().extra = extra;
        let found = commit_files(&listed);
        assert_eq!(found[0].bytes, Some(120));
        assert_eq!(found[0].rows, Some(3));
        // Commits written before sizes were listed still recover, without them.
        assert_eq!(commit_files(&commit(1, &[("b.csv", "2")]))[0].rows, None);
    }
}
