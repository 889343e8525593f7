//! `bronze/prices`: every data row of every landing file, as raw strings, appended once per
//! delivery. The ledger `bronze/landing_files` records each file seen (name, size, sha256, ingested
//! or rejected and why), so a re-run ingests only new or changed files. A bronze commit also lists
//! its files in its commit metadata; if a crash struck between that commit and the ledger's, the
//! next run finds the files there, treats them as ingested and repairs the ledger.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Materialization, Outcome, Output, RetryPolicy, SideWrite,
};
use quantlens_lake::arrow::array::{
    Array, ArrayBuilder, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use quantlens_lake::{At, FileStore, Lake, Staged, StoredFile, WriteMode};
use rayon::prelude::*;
use serde_json::json;

use crate::landing::{is_candidate, parse_delivery, raw_fields, sha256_hex, RawColumns, RawRow};
use crate::silver::typed_column;
use crate::spec;

pub const PRICES: &str = "bronze/prices";
pub const LEDGER: &str = "bronze/landing_files";

/// Landing files read, parsed and written out together: enough rows for two Parquet writers
/// to share the encoding, few enough to keep ingest memory small (~100 MB) on a backfill.
const FILES_PER_BATCH: usize = 256;

pub(crate) fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn prices_schema() -> SchemaRef {
    let mut fields = raw_fields();
    fields.extend([
        Field::new("field_count", DataType::Int32, false),
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_line", DataType::Int64, false),
        Field::new("ingested_at", utc_timestamp(), false),
    ]);
    Arc::new(Schema::new(fields))
}

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

pub fn asset(landing: String) -> Asset {
    Asset {
        spec: spec(
            PRICES,
            &[],
            "bronze",
            "1",
            "Every landing row as raw strings, appended once per delivery.",
        ),
        schema: prices_schema(),
        partition_by: Vec::new(),
        checks: Vec::new(),
        retry: RetryPolicy::default(),
        side_tables: vec![LEDGER.to_string()],
        compute: Arc::new(move |ctx| Box::pin(compute(ctx, landing.clone()))),
    }
}

struct LedgerEntry {
    file: String,
    bytes: u64,
    sha256: String,
    fate: Fate,
}

enum Fate {
    Ingested {
        rows: u64,
    },
    Rejected {
        reason: String,
    },
    /// Found in a bronze commit that an interrupted run did not record in the ledger.
    Recovered,
}

async fn compute(ctx: AssetContext, landing: String) -> Result<Outcome, AssetError> {
    let store = FileStore::open(&landing)?;
    let (mut known, recovered) = known_deliveries(&ctx.lake).await?;
    let ingested_at = Utc::now().timestamp_micros();

    let listed: Vec<_> = store
        .list()
        .await?
        .into_iter()
        .filter(|f| is_candidate(&f.name))
        .collect();
    let listed_count = listed.len();
    // Local files carry this machine's clock; a remote store's may disagree with it.
    let clock_skew = if store.url().scheme() == "file" {
        chrono::Duration::zero()
    } else {
        chrono::Duration::seconds(REMOTE_CLOCK_SKEW_SECONDS)
    };
    let candidates: Vec<_> = listed
        .into_iter()
        .filter(|f| ctx.full_refresh || !known.unchanged_since_seen(f, clock_skew))
        .collect();
    if candidates.len() < listed_count {
        (ctx.progress)(&format!(
            "{} landing file(s) unchanged since ingested (same size, not modified since): not read",
            listed_count - candidates.len()
        ));
    }
    let mut ledger: Vec<LedgerEntry> = recovered;
    // Bronze is the largest table: each group of files is written out as soon as it is parsed,
    // and the whole append is committed at once by the engine.
    let mut staged = Staged::new(prices_schema());
    let (total, mut reported) = (candidates.len(), 0);
    for (index, group) in candidates.chunks(FILES_PER_BATCH).enumerate() {
        let done = ((index + 1) * FILES_PER_BATCH).min(total);
        if total > 4 * FILES_PER_BATCH && (done == total || done - reported >= total / 10) {
            (ctx.progress)(&format!("reading landing files: {done}/{total}"));
            reported = done;
        }
        let names: Vec<String> = group.iter().map(|f| f.name.clone()).collect();
        let contents: Vec<(String, _)> = futures::stream::iter(names)
            .map(|name| {
                let store = store.clone();
                async move {
                    let bytes = store.read(&name).await?;
                    Ok::<_, AssetError>((name, bytes))
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        // Hashing and parsing are the CPU-heavy part of ingest: one file per core at a time.
        let known_before = &known;
        let ingested: Vec<(LedgerEntry, Option<Result<RecordBatch, AssetError>>)> = contents
            .into_par_iter()
            .filter_map(|(name, bytes)| {
                let sha256 = sha256_hex(&bytes);
                if known_before.contains(&name, &sha256) {
                    return None;
                }
                let (fate, batch) = match parse_delivery(&bytes) {
                    Ok(delivery) => {
                        let mut builder = BronzeBuilder::default();
                        for row in &delivery.rows {
                            builder.push(row, &name);
                        }
                        let rows = delivery.rows.len() as u64;
                        (Fate::Ingested { rows }, Some(builder.finish(ingested_at)))
                    }
                    Err(reason) => (Fate::Rejected { reason }, None),
                };
                let entry = LedgerEntry {
                    file: name,
                    bytes: bytes.len() as u64,
                    sha256,
                    fate,
                };
                Some((entry, batch))
            })
            .collect();
        let mut batches = Vec::new();
        for (entry, batch) in ingested {
            known.insert(&entry.file, &entry.sha256);
            ledger.push(entry);
            batches.extend(batch.transpose()?);
        }
        ctx.lake.stage(PRICES, &mut staged, batches).await?;
    }

    let new_files: Vec<_> = ledger
        .iter()
        .filter(|e| matches!(e.fate, Fate::Ingested { .. }))
        .map(|e| json!({"file": e.file, "sha256": e.sha256}))
        .collect();
    let new_entries = ledger
        .iter()
        .filter(|e| !matches!(e.fate, Fate::Recovered))
        .count();
    let ledger_batch = ledger_batch(&ledger, &ctx.run_id, ingested_at)?;
    if new_entries == 0 {
        if ledger.is_empty() {
            return Ok(Outcome::Unchanged {
                reason: "no new landing files".into(),
            });
        }
        // Only a repair of the ledger after an interrupted run: record it, bronze stays as it is.
        let metadata = quantlens_lake::CommitMetadata {
            run_id: ctx.run_id.clone(),
            asset: LEDGER.into(),
            code_version: "1".into(),
            ..Default::default()
        };
        ctx.lake
            .write(
                LEDGER,
                ledger_schema(),
                [ledger_batch],
                WriteMode::Append,
                &metadata,
            )
            .await?;
        return Ok(Outcome::Unchanged {
            reason: format!(
                "no new landing files; ledger repaired with {} file(s)",
                ledger.len()
            ),
        });
    }

    let mut extra = serde_json::Map::new();
    extra.insert("files".into(), serde_json::Value::Array(new_files));
    Ok(Outcome::Materialized(Materialization {
        output: Output::Staged(staged),
        mode: WriteMode::Append,
        extra_metadata: extra,
        side_writes: vec![SideWrite {
            key: LEDGER.into(),
            schema: ledger_schema(),
            batches: vec![ledger_batch],
            mode: WriteMode::Append,
        }],
        more: false,
        consumed: None,
    }))
}

/// What the ledger knows about landing files: which (file, sha256) pairs were handled, and for
/// each file the size it had and the time it was last handled.
#[derive(Default)]
struct Known {
    deliveries: HashSet<(String, String)>,
    seen: HashMap<String, (u64, i64)>,
}

impl Known {
    fn contains(&self, file: &str, sha256: &str) -> bool {
        self.deliveries
            .contains(&(file.to_string(), sha256.to_string()))
    }

    /// Returns true when the pair is new.
    fn insert(&mut self, file: &str, sha256: &str) -> bool {
        self.deliveries
            .insert((file.to_string(), sha256.to_string()))
    }

    /// A file with the size it had when last handled and not modified since (allowing for
    /// `clock_skew` between the storage and this machine) holds what was handled then, so a daily
    /// run need not read and hash the whole history of deliveries. `--full-refresh` reads them all.
    fn unchanged_since_seen(&self, file: &StoredFile, clock_skew: chrono::Duration) -> bool {
        self.seen.get(&file.name).is_some_and(|(bytes, seen_at)| {
            let modified = (file.modified + clock_skew).timestamp_micros();
            *bytes == file.size && modified < *seen_at
        })
    }
}

/// Margin for the clocks of remote landing storage and this machine disagreeing.
const REMOTE_CLOCK_SKEW_SECONDS: i64 = 300;

/// What is already handled, from the ledger plus the newest bronze commit (which a crash may have
/// left unrecorded in the ledger), and ledger entries for the latter.
async fn known_deliveries(lake: &Lake) -> Result<(Known, Vec<LedgerEntry>), AssetError> {
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
        let files = prices
            .lineage()
            .await?
            .and_then(|m| m.extra.get("files").cloned())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        for file in files {
            let (Some(name), Some(sha)) = (file["file"].as_str(), file["sha256"].as_str()) else {
                continue;
            };
            if known.insert(name, sha) {
                recovered.push(LedgerEntry {
                    file: name.to_string(),
                    bytes: 0,
                    sha256: sha.to_string(),
                    fate: Fate::Recovered,
                });
            }
        }
    }
    Ok((known, recovered))
}

pub(crate) fn string_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a StringArray, AssetError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| AssetError::data(format!("column `{name}` is missing or not a string")))
}

fn ledger_batch(
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
            Fate::Recovered => (
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

/// Accumulates raw rows into the bronze columns.
#[derive(Default)]
struct BronzeBuilder {
    fields: RawColumns,
    field_count: Int32Builder,
    source_file: StringBuilder,
    source_line: Int64Builder,
}

impl BronzeBuilder {
    fn len(&self) -> usize {
        self.field_count.len()
    }

    fn push(&mut self, row: &RawRow, file: &str) {
        self.fields.push(std::array::from_fn(|i| {
            row.fields.get(i).map(String::as_str)
        }));
        self.field_count.append_value(row.fields.len() as i32);
        self.source_file.append_value(file);
        self.source_line.append_value(row.line as i64);
    }

    fn finish(mut self, ingested_at: i64) -> Result<RecordBatch, AssetError> {
        let rows = self.len();
        let mut columns = self.fields.finish();
        columns.push(Arc::new(self.field_count.finish()));
        columns.push(Arc::new(self.source_file.finish()));
        columns.push(Arc::new(self.source_line.finish()));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![ingested_at; rows]).with_timezone("UTC"),
        ));
        RecordBatch::try_new(prices_schema(), columns)
            .map_err(|e| AssetError::data(format!("building a bronze batch: {e}")))
    }
}
