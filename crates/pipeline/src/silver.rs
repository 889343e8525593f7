//! `silver/prices`: typed, validated, one row per (symbol, date). Every bronze row either becomes a
//! candidate price or goes to `silver/prices_rejects` with the first rule it broke, so nothing is
//! silently dropped. Among candidates for the same (symbol, date), the latest delivery wins:
//! greatest ingested_at, then source_file, then source_line. Each row keeps those three columns,
//! so a daily run can apply the same rule to only the new bronze rows and the silver rows they
//! compete with: the months they fall in are re-derived and replaced, nothing else.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use futures::TryStreamExt;
use quantlens_engine::{
    Asset, AssetContext, AssetError, Check, DateRange, Materialization, Outcome, RetryPolicy,
    SideWrite,
};
use quantlens_lake::arrow::array::{
    Array, ArrayBuilder, Date32Array, Float64Array, Int32Array, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use quantlens_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quantlens_lake::{Table, TableFile, WriteMode};

use crate::bronze::{self, string_column, utc_timestamp};
use crate::incremental::{self, Backfill, Changes, Piece, Previous, Progress, MONTH};
use crate::landing::{raw_fields, RawColumns, HEADER};
use crate::spec;

pub const PRICES: &str = "silver/prices";
pub const REJECTS: &str = "silver/prices_rejects";

/// Unused candidate capacity worth handing back while a rebuild turns candidates into rows.
const SHRINK_SLACK: usize = 256 * 1024;

/// Bumped whenever the rows silver derives would change; a new version rebuilds the table.
const CODE_VERSION: &str = "2";

pub fn prices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("date", DataType::Date32, false),
        Field::new("open", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
        Field::new("close", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_line", DataType::Int64, false),
        Field::new("ingested_at", utc_timestamp(), false),
        Field::new(MONTH, DataType::Utf8, false),
    ]))
}

pub fn rejects_schema() -> SchemaRef {
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

pub fn asset() -> Asset {
    Asset {
        spec: spec(
            PRICES,
            &[bronze::PRICES],
            "silver",
            CODE_VERSION,
            "Validated daily prices, one row per (symbol, date), latest delivery wins.",
        ),
        schema: prices_schema(),
        partition_by: vec![MONTH.to_string()],
        checks: vec![
            Check::blocking("unique_symbol_date", unique_symbol_date),
            Check::blocking("no_null_prices", no_null_prices),
        ],
        retry: RetryPolicy::default(),
        side_tables: vec![REJECTS.to_string()],
        compute: Arc::new(|ctx| Box::pin(compute(ctx))),
    }
}

/// A bronze row that passed every rule.
#[derive(Clone, Copy)]
struct Candidate {
    symbol: u32,
    date: i32,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: i64,
    ingested_at: i64,
    file: u32,
    line: u32,
    /// From bronze rows this run reads, as opposed to a silver row it competes with.
    fresh: bool,
}

/// The first validation rule a row breaks, with a human explanation.
#[derive(Debug, PartialEq)]
pub struct Broken {
    pub rule: &'static str,
    pub detail: String,
}

/// Parsed values of a valid row.
#[derive(Debug, PartialEq)]
pub struct ValidRow<'a> {
    pub symbol: &'a str,
    pub date: NaiveDate,
    pub prices: [f64; 4],
    pub volume: i64,
}

/// Applies the silver rules in order to one row's raw fields and returns the first one broken.
pub fn validate<'a>(
    fields: &[Option<&'a str>; 7],
    field_count: i32,
) -> Result<ValidRow<'a>, Broken> {
    let broken = |rule, detail: String| Err(Broken { rule, detail });
    if field_count != 7 {
        return broken(
            "field_count",
            format!("expected 7 fields, found {field_count}"),
        );
    }
    let mut values = [""; 7];
    for (index, field) in fields.iter().enumerate() {
        let value = field.unwrap_or("").trim();
        if value.is_empty() {
            return broken("empty_field", format!("`{}` is empty", HEADER[index]));
        }
        values[index] = value;
    }
    let [symbol, date, ..] = values;
    if !is_valid_symbol(symbol) {
        return broken(
            "bad_symbol",
            format!("`{symbol}` does not match ^[A-Z0-9][A-Z0-9.-]{{0,15}}$"),
        );
    }
    let Some(date) = parse_date(date) else {
        return broken("bad_date", format!("`{date}` is not a YYYY-MM-DD date"));
    };
    let mut prices = [0.0; 4];
    for (slot, index) in prices.iter_mut().zip(2..6) {
        *slot = match values[index].parse::<f64>() {
            Ok(price) => price,
            Err(_) => {
                return broken(
                    "bad_number",
                    format!("`{}` is not a number: `{}`", HEADER[index], values[index]),
                )
            }
        };
    }
    let Ok(volume) = values[6].parse::<i64>() else {
        return broken(
            "bad_volume",
            format!("`volume` is not an integer: `{}`", values[6]),
        );
    };
    for (price, index) in prices.iter().zip(2..6) {
        if !price.is_finite() {
            return broken(
                "price_not_finite",
                format!("`{}` is {price}", HEADER[index]),
            );
        }
        if *price <= 0.0 {
            return broken(
                "price_not_positive",
                format!("`{}` is {price}", HEADER[index]),
            );
        }
    }
    if volume < 0 {
        return broken("negative_volume", format!("`volume` is {volume}"));
    }
    let [open, high, low, close] = prices;
    if low > open.min(close) {
        return broken(
            "low_above_open_close",
            format!("low {low} > min(open {open}, close {close})"),
        );
    }
    if high < open.max(close) {
        return broken(
            "high_below_open_close",
            format!("high {high} < max(open {open}, close {close})"),
        );
    }
    Ok(ValidRow {
        symbol,
        date,
        prices,
        volume,
    })
}

fn is_valid_symbol(symbol: &str) -> bool {
    let bytes = symbol.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    first_ok
        && bytes.len() <= 16
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    if text.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

pub(crate) const UNIX_EPOCH_DAY: i32 = 719_163; // days from 0001-01-01 (CE day 1) to 1970-01-01

/// Interns strings to dense ids, so millions of rows carry 4-byte keys instead of strings.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        id
    }

    /// For each id, its position in sorted name order.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut ranks = vec![0; order.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }
}

struct RejectsBuilder {
    fields: RawColumns,
    source_file: StringBuilder,
    source_line: Int64Builder,
    ingested_at: TimestampMicrosecondBuilder,
    rule: StringBuilder,
    detail: StringBuilder,
}

impl RejectsBuilder {
    fn len(&self) -> usize {
        self.source_line.len()
    }

    fn new() -> Self {
        RejectsBuilder {
            fields: RawColumns::default(),
            source_file: StringBuilder::new(),
            source_line: Int64Builder::new(),
            ingested_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            rule: StringBuilder::new(),
            detail: StringBuilder::new(),
        }
    }

    fn push(
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

    fn finish(mut self) -> Result<RecordBatch, AssetError> {
        let mut columns = self.fields.finish();
        columns.push(Arc::new(self.source_file.finish()));
        columns.push(Arc::new(self.source_line.finish()));
        columns.push(Arc::new(self.ingested_at.finish()));
        columns.push(Arc::new(self.rule.finish()));
        columns.push(Arc::new(self.detail.finish()));
        RecordBatch::try_new(rejects_schema(), columns)
            .map_err(|e| AssetError::data(format!("building the rejects batch: {e}")))
    }
}

async fn compute(ctx: AssetContext) -> Result<Outcome, AssetError> {
    let bronze = ctx.upstream_table(bronze::PRICES).await?;
    let Some(previous) = incremental::previous(&ctx, bronze::PRICES, CODE_VERSION).await? else {
        return rebuild(&bronze).await;
    };
    // Catch up with bronze first, so that a backfill starts from an up-to-date table.
    if previous.upstream_version != bronze.version() {
        return match bronze.appended_since(previous.upstream_version).await? {
            Some(new_files) => update(&ctx, &bronze, new_files, &previous).await,
            None => {
                (ctx.progress)(&format!(
                    "bronze did more than append since version {}: rebuilding",
                    previous.upstream_version
                ));
                rebuild(&bronze).await
            }
        };
    }
    match ctx.range {
        Some(range) => backfill(&ctx, &bronze, &previous, range).await,
        None => Ok(Outcome::Unchanged {
            reason: format!("no bronze rows since version {}", bronze.version()),
        }),
    }
}

/// Derives the whole table from every bronze row.
async fn rebuild(bronze: &Table) -> Result<Outcome, AssetError> {
    let mut derivation = Derivation::with_capacity(bronze.row_count()? as usize);
    let mut batches = bronze.scan(None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |_| true)?;
    }
    let derived = derivation.finish()?;
    let mut silver = Materialization::overwrite(derived.batches);
    silver.side_writes.push(SideWrite {
        key: REJECTS.into(),
        schema: rejects_schema(),
        batches: vec![derived.rejects],
        mode: WriteMode::Overwrite,
    });
    Ok(Outcome::Materialized(silver))
}

/// Applies the bronze rows appended since the last run: the months they fall in are derived
/// again from those rows plus the silver rows already there, and replaced, a piece at a time.
async fn update(
    ctx: &AssetContext,
    bronze: &Table,
    new_files: Vec<TableFile>,
    previous: &Previous,
) -> Result<Outcome, AssetError> {
    let mut derivation = Derivation::with_capacity(0);
    let mut batches = bronze.scan_files(new_files, None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |_| true)?;
    }
    let months = derivation.months();
    let resume_after = previous.resume_after(bronze.version());
    let Some(piece) = Piece::next(&months, resume_after.as_deref()) else {
        // Only rejects, or a crash right after the last piece: record the bronze version read.
        let output = Piece::materialization(
            Vec::new(),
            &Changes::default(),
            None,
            None,
            ctx.range.is_some(),
        );
        let rejects = derivation.rejects.finish()?;
        return Ok(Outcome::Materialized(with_rejects(
            output,
            rejects,
            resume_after.is_none(),
        )));
    };
    (ctx.progress)(&format!(
        "{} new bronze row(s) touch {} month(s); deriving {} to {}",
        derivation.candidates.len() + derivation.rejects.len(),
        months.len(),
        piece.months.first().expect("a piece has months"),
        piece.through()
    ));
    derivation.candidates.retain(|c| piece.contains_day(c.date));
    let mut batches = previous
        .table
        .scan_files(incremental::files_in(&previous.table, &piece.months)?, None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_silver(&batch)?;
    }
    let derived = derivation.finish()?;
    let output = piece.update_commit(
        derived.batches,
        &derived.changes,
        bronze.version(),
        previous,
        ctx.range.is_some(),
    );
    // Rejects are appended once per update, with its first piece.
    Ok(Outcome::Materialized(with_rejects(
        output,
        derived.rejects,
        resume_after.is_none(),
    )))
}

/// `--from/--to`: derives the months of the range again from every bronze row, a piece at a time
/// (one bronze scan per piece), replacing them. Rejects are left as they are.
async fn backfill(
    ctx: &AssetContext,
    bronze: &Table,
    previous: &Previous,
    range: DateRange,
) -> Result<Outcome, AssetError> {
    let months = incremental::months_between(range.from, range.to);
    let (first, last) = (
        months.first().cloned().unwrap_or_default(),
        months.last().cloned().unwrap_or_default(),
    );
    let started = previous.progress.as_ref().filter(|p| {
        p.target == bronze.version()
            && p.backfill
                .as_ref()
                .is_some_and(|b| (&b.first, &b.last) == (&first, &last))
    });
    let resume_after = match started {
        Some(p)
            if p.through == last && p.backfill.as_ref().is_some_and(|b| b.run_id == ctx.run_id) =>
        {
            return Ok(Outcome::Unchanged {
                reason: format!("backfill of {first} to {last} done"),
            })
        }
        Some(p) if p.through != last => Some(p.through.clone()),
        _ => None,
    };
    let piece = Piece::next(&months, resume_after.as_deref())
        .expect("an unfinished backfill has months left");
    (ctx.progress)(&format!(
        "backfill: deriving {} to {} from every bronze row",
        piece.months.first().expect("a piece has months"),
        piece.through()
    ));
    let mut derivation = Derivation::with_capacity(0);
    derivation.record_rejects = false;
    let mut batches = bronze.scan(None)?;
    while let Some(batch) = batches.try_next().await? {
        derivation.add_bronze(&batch, |day| piece.contains_day(day))?;
    }
    let derived = derivation.finish()?;
    let progress = Progress {
        target: bronze.version(),
        through: piece.through().to_string(),
        backfill: Some(Backfill {
            first,
            last,
            run_id: ctx.run_id.clone(),
        }),
    };
    Ok(Outcome::Materialized(Piece::materialization(
        derived.batches,
        &derived.changes,
        Some(progress),
        None,
        !piece.last,
    )))
}

/// Adds the rejects side write to a silver commit, when there are rejects to write.
fn with_rejects(mut output: Materialization, rejects: RecordBatch, write: bool) -> Materialization {
    if write && rejects.num_rows() > 0 {
        output.side_writes.push(SideWrite {
            key: REJECTS.into(),
            schema: rejects_schema(),
            batches: vec![rejects],
            mode: WriteMode::Append,
        });
    }
    output
}

/// Silver rows derived from candidates, with what changed and what was rejected.
struct Derived {
    /// One batch per month, in (date, symbol) order.
    batches: Vec<RecordBatch>,
    /// The (symbol, date) rows won by a bronze row of this run.
    changes: Changes,
    rejects: RecordBatch,
}

/// Collects compact candidates from bronze (validated) and from silver (already valid), then picks
/// the winner of each (symbol, date).
struct Derivation {
    candidates: Vec<Candidate>,
    symbols: Interner,
    files: Interner,
    rejects: RejectsBuilder,
    /// Off for a backfill, which re-reads deliveries whose rejects are already recorded.
    record_rejects: bool,
}

impl Derivation {
    fn with_capacity(rows: usize) -> Derivation {
        Derivation {
            candidates: Vec::with_capacity(rows),
            symbols: Interner::default(),
            files: Interner::default(),
            rejects: RejectsBuilder::new(),
            record_rejects: true,
        }
    }

    /// Validates bronze rows; valid rows dated on a day `keep` accepts become candidates.
    fn add_bronze(
        &mut self,
        batch: &RecordBatch,
        keep: impl Fn(i32) -> bool,
    ) -> Result<(), AssetError> {
        let raw: Vec<&StringArray> = HEADER
            .iter()
            .map(|name| string_column(batch, name))
            .collect::<Result<_, _>>()?;
        let field_count = typed_column::<Int32Array>(batch, "field_count")?;
        let source_file = string_column(batch, "source_file")?;
        let source_line = typed_column::<Int64Array>(batch, "source_line")?;
        let ingested_at = typed_column::<TimestampMicrosecondArray>(batch, "ingested_at")?;
        for row in 0..batch.num_rows() {
            let fields: [Option<&str>; 7] =
                std::array::from_fn(|i| raw[i].is_valid(row).then(|| raw[i].value(row)));
            match validate(&fields, field_count.value(row)) {
                Ok(valid) if !keep(incremental::day_of(valid.date)) => {}
                Ok(valid) => self.candidates.push(Candidate {
                    symbol: self.symbols.id(valid.symbol),
                    date: incremental::day_of(valid.date),
                    open: valid.prices[0],
                    high: valid.prices[1],
                    low: valid.prices[2],
                    close: valid.prices[3],
                    volume: valid.volume,
                    ingested_at: ingested_at.value(row),
                    file: self.files.id(source_file.value(row)),
                    line: u32::try_from(source_line.value(row)).unwrap_or(u32::MAX),
                    fresh: true,
                }),
                Err(_) if !self.record_rejects => {}
                Err(broken) => self.rejects.push(
                    &fields,
                    source_file.value(row),
                    source_line.value(row),
                    ingested_at.value(row),
                    broken,
                ),
            }
        }
        Ok(())
    }

    fn add_silver(&mut self, batch: &RecordBatch) -> Result<(), AssetError> {
        let symbol = string_column(batch, "symbol")?;
        let date = typed_column::<Date32Array>(batch, "date")?;
        let price = |name| typed_column::<Float64Array>(batch, name);
        let (open, high, low, close) = (
            price("open")?,
            price("high")?,
            price("low")?,
            price("close")?,
        );
        let volume = typed_column::<Int64Array>(batch, "volume")?;
        let source_file = string_column(batch, "source_file")?;
        let source_line = typed_column::<Int64Array>(batch, "source_line")?;
        let ingested_at = typed_column::<TimestampMicrosecondArray>(batch, "ingested_at")?;
        for row in 0..batch.num_rows() {
            self.candidates.push(Candidate {
                symbol: self.symbols.id(symbol.value(row)),
                date: date.value(row),
                open: open.value(row),
                high: high.value(row),
                low: low.value(row),
                close: close.value(row),
                volume: volume.value(row),
                ingested_at: ingested_at.value(row),
                file: self.files.id(source_file.value(row)),
                line: u32::try_from(source_line.value(row)).unwrap_or(u32::MAX),
                fresh: false,
            });
        }
        Ok(())
    }

    /// The months the candidates fall in.
    fn months(&self) -> BTreeSet<String> {
        let days: BTreeSet<i32> = self.candidates.iter().map(|c| c.date).collect();
        days.into_iter().map(incremental::month_of).collect()
    }

    fn finish(mut self) -> Result<Derived, AssetError> {
        // Sort so that each (symbol, date) group starts with the winning delivery, and the table
        // comes out in date order, so that each month is one contiguous run for the writers.
        let symbol_rank = self.symbols.ranks();
        let file_rank = self.files.ranks();
        self.candidates.sort_unstable_by_key(|c: &Candidate| {
            (
                c.date,
                symbol_rank[c.symbol as usize],
                Reverse((c.ingested_at, file_rank[c.file as usize], c.line)),
            )
        });
        self.candidates.dedup_by_key(|c| (c.symbol, c.date));
        let mut changes = Changes::default();
        for winner in self.candidates.iter().filter(|c| c.fresh) {
            changes.add(&self.symbols.names[winner.symbol as usize], winner.date);
        }
        // Month by month from the end, giving back the candidates' memory as the rows take theirs,
        // so that a rebuild holds about one copy of the table rather than two.
        let mut batches = Vec::new();
        while let Some(last) = self.candidates.last() {
            let month = incremental::month_of(last.date);
            let first_day = incremental::month_start(last.date);
            let start = self.candidates.partition_point(|c| c.date < first_day);
            batches.push(self.batch(&self.candidates[start..], &month)?);
            self.candidates.truncate(start);
            if self.candidates.capacity() - self.candidates.len() > SHRINK_SLACK {
                self.candidates.shrink_to_fit();
            }
        }
        batches.reverse();
        Ok(Derived {
            batches,
            changes,
            rejects: self.rejects.finish()?,
        })
    }

    /// The silver rows of one month's winners.
    fn batch(&self, winners: &[Candidate], month: &str) -> Result<RecordBatch, AssetError> {
        let column = |f: fn(&Candidate) -> f64| {
            Arc::new(Float64Array::from_iter_values(winners.iter().map(f)))
        };
        RecordBatch::try_new(
            prices_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    winners
                        .iter()
                        .map(|c| self.symbols.names[c.symbol as usize].as_str()),
                )),
                Arc::new(Date32Array::from_iter_values(
                    winners.iter().map(|c| c.date),
                )),
                column(|c| c.open),
                column(|c| c.high),
                column(|c| c.low),
                column(|c| c.close),
                Arc::new(Int64Array::from_iter_values(
                    winners.iter().map(|c| c.volume),
                )),
                Arc::new(StringArray::from_iter_values(
                    winners
                        .iter()
                        .map(|c| self.files.names[c.file as usize].as_str()),
                )),
                Arc::new(Int64Array::from_iter_values(
                    winners.iter().map(|c| c.line as i64),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        winners.iter().map(|c| c.ingested_at),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(winners.iter().map(|_| month))),
            ],
        )
        .map_err(|e| AssetError::data(format!("building the silver batch: {e}")))
    }
}

pub(crate) fn typed_column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, AssetError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            AssetError::data(format!(
                "column `{name}` is missing or has an unexpected type"
            ))
        })
}

/// Blocking: at most one row per (symbol, date). Silver is written sorted by (date, symbol), which
/// makes this a single pass; unsorted input falls back to a hash set.
fn unique_symbol_date(batches: &[RecordBatch]) -> Result<String, String> {
    let mut previous: Option<(i32, String)> = None;
    let mut sorted = true;
    let mut rows = 0usize;
    for batch in batches {
        let symbols = string_column(batch, "symbol").map_err(|e| e.message)?;
        let dates = typed_column::<Date32Array>(batch, "date").map_err(|e| e.message)?;
        for i in 0..batch.num_rows() {
            rows += 1;
            let key = (dates.value(i), symbols.value(i));
            if let Some((date, symbol)) = &previous {
                match (*date, symbol.as_str()).cmp(&key) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(format!("duplicate row for ({}, day {})", key.1, key.0));
                    }
                    Ordering::Greater => sorted = false,
                }
            }
            previous = Some((key.0, key.1.to_string()));
        }
    }
    if !sorted {
        let mut seen = std::collections::HashSet::new();
        for batch in batches {
            let symbols = string_column(batch, "symbol").map_err(|e| e.message)?;
            let dates = typed_column::<Date32Array>(batch, "date").map_err(|e| e.message)?;
            for i in 0..batch.num_rows() {
                if !seen.insert((symbols.value(i).to_string(), dates.value(i))) {
                    return Err(format!(
                        "duplicate row for ({}, day {})",
                        symbols.value(i),
                        dates.value(i)
                    ));
                }
            }
        }
    }
    Ok(format!("{rows} rows, all (symbol, date) unique"))
}

/// Blocking: every price column is fully populated.
fn no_null_prices(batches: &[RecordBatch]) -> Result<String, String> {
    for name in ["open", "high", "low", "close"] {
        let nulls: usize = batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .map_or(b.num_rows(), |c| c.null_count())
            })
            .sum();
        if nulls > 0 {
            return Err(format!("`{name}` has {nulls} null(s)"));
        }
    }
    Ok("open, high, low, close have no nulls".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn check(fields: [&str; 7]) -> Result<(), &'static str> {
        let fields = fields.map(Some);
        validate(&fields, 7).map(|_| ()).map_err(|b| b.rule)
    }

    #[test]
    fn each_rule_is_reported_first_when_broken() {
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10.5", "100"]),
            Ok(())
        );
        assert_eq!(
            check(["BRK.B", "2024-01-02", "10", "11", "9", "10.5", "0"]),
            Ok(())
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "", "100"]),
            Err("empty_field")
        );
        assert_eq!(
            check(["aaa", "2024-01-02", "10", "11", "9", "10", "100"]),
            Err("bad_symbol")
        );
        assert_eq!(
            check(["-AA", "2024-01-02", "10", "11", "9", "10", "100"]),
            Err("bad_symbol")
        );
        assert_eq!(
            check([
                "ABCDEFGHIJKLMNOPQ",
                "2024-01-02",
                "10",
                "11",
                "9",
                "10",
                "1"
            ]),
            Err("bad_symbol")
        );
        assert_eq!(
            check(["AAA", "02/01/2024", "10", "11", "9", "10", "100"]),
            Err("bad_date")
        );
        assert_eq!(
            check(["AAA", "2024-02-30", "10", "11", "9", "10", "100"]),
            Err("bad_date")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "ten", "11", "9", "10", "100"]),
            Err("bad_number")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10", "1.5"]),
            Err("bad_volume")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "inf", "9", "10", "100"]),
            Err("price_not_finite")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "NaN", "9", "10", "100"]),
            Err("price_not_finite")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "0", "10", "100"]),
            Err("price_not_positive")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10", "-1"]),
            Err("negative_volume")
        );
        // Swapped high and low.
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "9", "11", "10", "100"]),
            Err("low_above_open_close")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "10.2", "9", "10.5", "100"]),
            Err("high_below_open_close")
        );
        assert_eq!(
            validate(&[Some("AAA"); 7], 6).unwrap_err().rule,
            "field_count"
        );
        assert_eq!(validate(&[None; 7], 7).unwrap_err().rule, "empty_field");
    }

    #[test]
    fn epoch_offset_is_right() {
        let date = NaiveDate::from_ymd_opt(1970, 1, 2).unwrap();
        assert_eq!(date.num_days_from_ce() - UNIX_EPOCH_DAY, 1);
    }
}
