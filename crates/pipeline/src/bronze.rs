//! `bronze/prices`: every data row of every landing file, as raw strings, appended once per
//! delivery. The ledger `bronze/landing_files` records each file seen (name, size, sha256, ingested
//! or rejected and why), so a re-run ingests only new or changed files. A bronze commit also lists
//! its files in its commit metadata; if a crash struck between that commit and the ledger's, the
//! next run finds the files there, treats them as ingested and repairs the ledger.

use std::sync::Arc;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use quantlens_engine::{
    Asset, AssetContext, AssetError, Materialization, Outcome, Output, OutputSchema, SideWrite,
};
use quantlens_lake::arrow::array::{
    ArrayBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{FileStore, Staged, StoredFile, WriteMode};
use rayon::prelude::*;

use crate::columns::utc_timestamp;
use crate::landing::{is_candidate, parse_delivery, raw_fields, sha256_hex, RawColumns, RawRow};
use crate::ledger::{
    known_deliveries, ledger_batch, ledger_schema, ledger_write, CommittedFile, Fate, LedgerEntry,
    LEDGER, REMOTE_CLOCK_SKEW_SECONDS,
};

pub const PRICES: &str = "bronze/prices";

/// Bytes of landing files read, parsed and written out together: enough rows for two Parquet
/// writers to share the encoding (about 500,000), few enough to keep ingest memory small (~200
/// MB) however large or many the files are.
const BYTES_PER_GROUP: u64 = 32 << 20;

/// Consecutive files of about `budget` bytes together (at least one file per group).
fn groups_by_size(files: &[StoredFile], budget: u64) -> Vec<&[StoredFile]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, file) in files.iter().enumerate() {
        if index > start && bytes + file.size > budget {
            groups.push(&files[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += file.size;
    }
    if start < files.len() {
        groups.push(&files[start..]);
    }
    groups
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

pub fn asset(landing: String) -> Asset {
    Asset::new(
        PRICES,
        OutputSchema::Declared(prices_schema()),
        move |ctx| compute(ctx, landing.clone()),
    )
    .description("Every landing row as raw strings, appended once per delivery.")
    .side_table(LEDGER)
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
    let groups = groups_by_size(&candidates, BYTES_PER_GROUP);
    let (total, many, mut done, mut reported) = (candidates.len(), groups.len() > 4, 0, 0);
    for group in groups {
        done += group.len();
        if many && (done == total || done - reported >= total / 10) {
            (ctx.progress)(&format!("reading landing files: {done}/{total}"));
            reported = done;
        }
        let names: Vec<String> = group.iter().map(|f| f.name.clone()).collect();
        let read: Vec<(String, _)> = futures::stream::iter(names)
            .map(|name| {
                let store = store.clone();
                async move {
                    let bytes = store.read_if_present(&name).await?;
                    Ok::<_, AssetError>((name, bytes))
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        // A file listed but gone when read was renamed or removed meanwhile: nothing to record.
        // Under a new name it is in the next listing, so its rows are not lost.
        let mut contents = Vec::with_capacity(read.len());
        for (name, bytes) in read {
            match bytes {
                Some(bytes) => contents.push((name, bytes)),
                None => (ctx.progress)(&format!(
                    "landing file {name} disappeared before it was read (renamed or removed): skipped"
                )),
            }
        }
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
        .filter_map(|e| match e.fate {
            Fate::Ingested { rows } => Some(CommittedFile::metadata(e, rows)),
            _ => None,
        })
        .collect();
    let new_entries = ledger
        .iter()
        .filter(|e| !matches!(e.fate, Fate::Recovered { .. }))
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

    let (ledger_batches, ledger_mode) = ledger_write(&ctx.lake, ledger_batch).await?;
    let mut extra = serde_json::Map::new();
    extra.insert("files".into(), serde_json::Value::Array(new_files));
    Ok(Outcome::Materialized(Materialization {
        output: Output::Staged(staged),
        mode: WriteMode::Append,
        extra_metadata: extra,
        side_writes: vec![SideWrite {
            key: LEDGER.into(),
            schema: ledger_schema(),
            batches: ledger_batches,
            mode: ledger_mode,
            extra_metadata: Default::default(),
        }],
        more: false,
        consumed: None,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_files_are_grouped_by_size_in_order() {
        let files: Vec<StoredFile> = [10, 30, 25, 70, 5, 5]
            .iter()
            .enumerate()
            .map(|(i, size)| StoredFile {
                name: format!("f{i}.csv"),
                size: *size,
                modified: Utc::now(),
            })
            .collect();
        let sizes = |budget| -> Vec<Vec<u64>> {
            groups_by_size(&files, budget)
                .iter()
                .map(|g| g.iter().map(|f| f.size).collect())
                .collect()
        };
        assert_eq!(sizes(50), [vec![10, 30], vec![25], vec![70], vec![5, 5]]);
        assert_eq!(sizes(1000), [vec![10, 30, 25, 70, 5, 5]]);
        assert_eq!(
            sizes(1).len(),
            6,
            "a file larger than the budget is a group of its own"
        );
        assert!(groups_by_size(&[], 10).is_empty());
    }
}
