//! How silver picks its rows: bronze rows are validated into compact candidates (interned
//! symbols and files, 64 bytes each), silver rows already in the months being rewritten join
//! them, and the latest delivery of each (symbol, date) wins. The same derivation serves a
//! rebuild, a daily update and a backfill, so they cannot disagree.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use quantlens_engine::dates::{day_of, month_of, month_start};
use quantlens_engine::incremental::{piece_rows, Changes, Piece};
use quantlens_engine::AssetError;
use quantlens_lake::arrow::array::{
    Array, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};

use crate::columns::{string_column, typed_column, BATCH_ROWS};
use crate::landing::HEADER;
use crate::rejects::RejectsBuilder;
use crate::rules::validate;
use crate::silver::prices_schema;
use crate::silver::spill::Spill;

/// Unused candidate capacity worth handing back while a rebuild turns candidates into rows.
const SHRINK_SLACK: usize = 256 * 1024;
/// A bronze row that passed every rule.
#[derive(Clone, Copy)]
pub(super) struct Candidate {
    symbol: u32,
    pub(super) date: i32,
    open: f64,
    high: f64,
    low: f64,
    pub(super) close: f64,
    volume: i64,
    ingested_at: i64,
    file: u32,
    line: u32,
    /// From bronze rows this run reads, as opposed to a silver row it competes with.
    fresh: bool,
}

impl Candidate {
    /// Appends the candidate's 65 bytes (little-endian fields, in declaration order).
    pub(super) fn write_to(&self, bytes: &mut Vec<u8>) {
        bytes.extend(self.symbol.to_le_bytes());
        bytes.extend(self.date.to_le_bytes());
        for price in [self.open, self.high, self.low, self.close] {
            bytes.extend(price.to_le_bytes());
        }
        bytes.extend(self.volume.to_le_bytes());
        bytes.extend(self.ingested_at.to_le_bytes());
        bytes.extend(self.file.to_le_bytes());
        bytes.extend(self.line.to_le_bytes());
        bytes.push(u8::from(self.fresh));
    }

    /// The candidate [`Candidate::write_to`] wrote into `bytes`.
    pub(super) fn read_from(bytes: &[u8]) -> Candidate {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Candidate {
            symbol: word(0),
            date: word(4) as i32,
            open: f64::from_bits(long(8)),
            high: f64::from_bits(long(16)),
            low: f64::from_bits(long(24)),
            close: f64::from_bits(long(32)),
            volume: long(40) as i64,
            ingested_at: long(48) as i64,
            file: word(56),
            line: word(60),
            fresh: bytes[64] != 0,
        }
    }

    #[cfg(test)]
    pub(super) fn example(date: i32, close: f64) -> Candidate {
        Candidate {
            symbol: 1,
            date,
            open: close - 1.0,
            high: close + 1.0,
            low: close - 2.0,
            close,
            volume: -7,
            ingested_at: i64::MIN,
            file: u32::MAX,
            line: 3,
            fresh: true,
        }
    }
}

/// Interns strings to dense ids, so millions of rows carry 4-byte keys instead of strings. It is
/// asked once per row for a symbol and a file: foldhash rather than the DoS-resistant default
/// hasher (the names are the lake's own), and two guesses before the hash: the last answer (a
/// landing file's rows come together) and the id after it (each day's file lists the symbols in
/// the same order, so the symbol after the last one is usually the one first seen after it).
#[derive(Default)]
struct Interner {
    ids: foldhash::HashMap<String, u32>,
    names: Vec<String>,
    last: Option<u32>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(last) = self.last {
            for guess in [last, last + 1] {
                if self
                    .names
                    .get(guess as usize)
                    .is_some_and(|known| known == name)
                {
                    self.last = Some(guess);
                    return guess;
                }
            }
        }
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let id = self.names.len() as u32;
                self.ids.insert(name.to_string(), id);
                self.names.push(name.to_string());
                id
            }
        };
        self.last = Some(id);
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

/// Silver rows derived from candidates, with what changed and what was rejected.
pub(super) struct Derived {
    /// Each month's rows in (date, symbol) order, in batches of at most [`BATCH_ROWS`].
    pub(super) batches: Vec<RecordBatch>,
    /// The (symbol, date) rows won by a bronze row of this run.
    pub(super) changes: Changes,
    pub(super) rejects: RecordBatch,
}

/// Collects compact candidates from bronze (validated) and from silver (already valid), then picks
/// the winner of each (symbol, date).
pub(super) struct Derivation {
    pub(super) candidates: Vec<Candidate>,
    symbols: Interner,
    files: Interner,
    pub(super) rejects: RejectsBuilder,
    /// Off for a backfill, which re-reads deliveries whose rejects are already recorded.
    pub(super) record_rejects: bool,
    /// Where a rebuild keeps its candidates until their piece (instead of `candidates`).
    spill: Option<Spill>,
}

impl Derivation {
    pub(super) fn with_capacity(rows: usize) -> Derivation {
        Derivation {
            candidates: Vec::with_capacity(rows),
            symbols: Interner::default(),
            files: Interner::default(),
            rejects: RejectsBuilder::new(),
            record_rejects: true,
            spill: None,
        }
    }

    /// A derivation whose candidates wait on disk, derived a piece of months at a time by
    /// [`Derivation::into_pieces`].
    pub(super) fn spilling() -> Result<Derivation, AssetError> {
        let mut derivation = Derivation::with_capacity(0);
        derivation.spill = Some(Spill::new()?);
        Ok(derivation)
    }

    /// The silver rows of the spilled candidates, one piece of about [`piece_rows`] candidates
    /// (whole months) at a time.
    pub(super) fn into_pieces(self) -> BoxStream<'static, Result<Vec<RecordBatch>, AssetError>> {
        futures::stream::try_unfold(self, |mut derivation| async move {
            let spill = derivation.spill.as_mut().expect("a spilling derivation");
            let Some(piece) = Piece::first_within(&spill.rows(), piece_rows()?) else {
                return Ok(None);
            };
            let candidates = spill.take(&piece.months)?;
            let (batches, _) = derivation.derive(candidates)?;
            Ok(Some((batches, derivation)))
        })
        .boxed()
    }

    /// Validates bronze rows; valid rows dated on a day `keep` accepts become candidates.
    pub(super) fn add_bronze(
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
                Ok(valid) if !keep(day_of(valid.date)) => {}
                Ok(valid) => {
                    let candidate = Candidate {
                        symbol: self.symbols.id(valid.symbol),
                        date: day_of(valid.date),
                        open: valid.prices[0],
                        high: valid.prices[1],
                        low: valid.prices[2],
                        close: valid.prices[3],
                        volume: valid.volume,
                        ingested_at: ingested_at.value(row),
                        file: self.files.id(source_file.value(row)),
                        line: u32::try_from(source_line.value(row)).unwrap_or(u32::MAX),
                        fresh: true,
                    };
                    self.hold(candidate)?;
                }
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

    fn hold(&mut self, candidate: Candidate) -> Result<(), AssetError> {
        match &mut self.spill {
            Some(spill) => spill.push(candidate),
            None => {
                self.candidates.push(candidate);
                Ok(())
            }
        }
    }

    pub(super) fn add_silver(&mut self, batch: &RecordBatch) -> Result<(), AssetError> {
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
    pub(super) fn months(&self) -> BTreeSet<String> {
        let days: BTreeSet<i32> = self.candidates.iter().map(|c| c.date).collect();
        days.into_iter().map(month_of).collect()
    }

    pub(super) fn finish(mut self) -> Result<Derived, AssetError> {
        let candidates = std::mem::take(&mut self.candidates);
        let (batches, changes) = self.derive(candidates)?;
        Ok(Derived {
            batches,
            changes,
            rejects: self.rejects.finish()?,
        })
    }

    /// The winners among `candidates`, by month (see [`Derived::batches`]), and the (symbol, date)
    /// rows that a bronze row of this run won.
    fn derive(
        &self,
        mut candidates: Vec<Candidate>,
    ) -> Result<(Vec<RecordBatch>, Changes), AssetError> {
        // Sort so that each (symbol, date) group starts with the winning delivery, and the table
        // comes out in date order, so that each month is one contiguous run for the writers.
        let symbol_rank = self.symbols.ranks();
        let file_rank = self.files.ranks();
        candidates.sort_unstable_by_key(|c: &Candidate| {
            (
                c.date,
                symbol_rank[c.symbol as usize],
                Reverse((c.ingested_at, file_rank[c.file as usize], c.line)),
            )
        });
        candidates.dedup_by_key(|c| (c.symbol, c.date));
        let changes = self.changes(&candidates);
        // Month by month from the end, giving back the candidates' memory as the rows take theirs,
        // so that a derivation holds about one copy of its rows rather than two.
        let mut batches = Vec::new();
        while let Some(last) = candidates.last() {
            let month = month_of(last.date);
            let first_day = month_start(last.date);
            let start = candidates.partition_point(|c| c.date < first_day);
            // Pushed last first, reversed with the months below.
            batches.extend(
                self.batches(&candidates[start..], &month)?
                    .into_iter()
                    .rev(),
            );
            candidates.truncate(start);
            if candidates.capacity() - candidates.len() > SHRINK_SLACK {
                candidates.shrink_to_fit();
            }
        }
        batches.reverse();
        Ok((batches, changes))
    }

    /// The earliest date each symbol's fresh winners start from: collected by symbol id, so that
    /// millions of winners cost an array update each rather than a hashed string.
    fn changes(&self, winners: &[Candidate]) -> Changes {
        let mut earliest: Vec<Option<i32>> = vec![None; self.symbols.names.len()];
        for winner in winners.iter().filter(|c| c.fresh) {
            let day = &mut earliest[winner.symbol as usize];
            *day = Some(day.map_or(winner.date, |day| day.min(winner.date)));
        }
        let mut changes = Changes::default();
        for (name, day) in self.symbols.names.iter().zip(earliest) {
            if let Some(day) = day {
                changes.add(name, day);
            }
        }
        changes
    }

    /// The silver rows of one month's winners, in batches of at most [`BATCH_ROWS`].
    fn batches(&self, winners: &[Candidate], month: &str) -> Result<Vec<RecordBatch>, AssetError> {
        winners
            .chunks(BATCH_ROWS)
            .map(|chunk| self.batch(chunk, month))
            .collect()
    }

    /// The silver rows of `winners`, all in `month`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_ids_do_not_depend_on_the_order_guesses() {
        let mut interner = Interner::default();
        let names = ["b", "a", "c", "b", "a", "c", "a", "d", "c", "b", "b", "d"];
        let ids: Vec<u32> = names.iter().map(|name| interner.id(name)).collect();
        assert_eq!(ids, [0, 1, 2, 0, 1, 2, 1, 3, 2, 0, 0, 3]);
        assert_eq!(interner.names, ["b", "a", "c", "d"]);
        assert_eq!(interner.ranks(), [1, 0, 2, 3]);
    }
}
