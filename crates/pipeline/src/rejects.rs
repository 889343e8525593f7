//! `silver/prices_rejects`: every bronze row silver refused, with the rule it broke, so nothing is
//! silently dropped. Silver writes it beside its own table, and Delta has no transaction across
//! tables: a crash can fall between the two commits. Each rejects commit therefore records the
//! bronze version up to which the table holds the rejects of every bronze row (`bronze_through`),
//! and silver's next run derives what is missing from there, so that each reject is recorded
//! exactly once whatever the moment of a crash.

use std::sync::Arc;

use quantlens_engine::{AssetError, SideWrite};
use quantlens_lake::arrow::array::{
    ArrayBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{At, Lake, WriteMode};
use serde_json::Value;

use crate::columns::utc_timestamp;
use crate::landing::{raw_fields, RawColumns};
use crate::rules::Broken;

pub const REJECTS: &str = "silver/prices_rejects";

/// The commit metadata key of the bronze version the rejects table is complete up to.
const BRONZE_THROUGH: &str = "bronze_through";

/// The columns of the rejects table: the raw fields, where the row came from, and why it was refused.
pub fn schema() -> SchemaRef {
    let mut fields = raw_fields();
    fields.extend([
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_line", DataType::Int64, false),
        Field::new("ingested_at", utc_timestamp(), false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Accumulates refused rows into the rejects columns.
pub(crate) struct RejectsBuilder {
    fields: RawColumns,
    source_file: StringBuilder,
    source_line: Int64Builder,
    ingested_at: TimestampMicrosecondBuilder,
    rule: StringBuilder,
    detail: StringBuilder,
}

impl RejectsBuilder {
    pub(crate) fn len(&self) -> usize {
        self.source_line.len()
    }

    pub(crate) fn new() -> Self {
        RejectsBuilder {
            fields: RawColumns::default(),
            source_file: StringBuilder::new(),
            source_line: Int64Builder::new(),
            ingested_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            rule: StringBuilder::new(),
            detail: StringBuilder::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        fields: &[Option<&str>; 7],
        file: &str,
        line: i64,
        ingested_at: i64,
        broken: Broken,
    ) {
        self.fields.push(*fields);
        self.source_file.append_value(file);
        self.source_line.append_value(line);
        self.ingested_at.append_value(ingested_at);
        self.rule.append_value(broken.rule);
        self.detail.append_value(broken.detail);
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch, AssetError> {
        let mut columns = self.fields.finish();
        columns.push(Arc::new(self.source_file.finish()));
        columns.push(Arc::new(self.source_line.finish()));
        columns.push(Arc::new(self.ingested_at.finish()));
        columns.push(Arc::new(self.rule.finish()));
        columns.push(Arc::new(self.detail.finish()));
        RecordBatch::try_new(schema(), columns)
            .map_err(|e| AssetError::data(format!("building the rejects batch: {e}")))
    }
}

/// The bronze version up to which the rejects table holds every reject, or `None` when there is
/// no rejects table yet. A table written before the marker existed is taken to be in step with
/// silver (`assumed`): that is what those versions wrote, crashes aside.
pub(crate) async fn recorded_through(lake: &Lake, assumed: i64) -> Result<Option<i64>, AssetError> {
    let Some(table) = lake.load(REJECTS, At::Latest).await? else {
        return Ok(None);
    };
    let marker = table
        .lineage()
        .await?
        .and_then(|m| m.extra.get(BRONZE_THROUGH).and_then(Value::as_i64));
    Ok(Some(marker.unwrap_or(assumed)))
}

/// The rejects commit beside a silver commit: `rejects` (possibly none) make the table complete
/// up to bronze version `through`.
pub(crate) fn side_write(rejects: RecordBatch, mode: WriteMode, through: i64) -> SideWrite {
    let mut extra_metadata = serde_json::Map::new();
    extra_metadata.insert(BRONZE_THROUGH.into(), through.into());
    SideWrite {
        key: REJECTS.into(),
        schema: schema(),
        batches: vec![rejects],
        mode,
        extra_metadata,
    }
}
