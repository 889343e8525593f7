//! A silver rebuild's candidates, kept on disk by month until their piece is derived, so that the
//! rebuild holds one piece of months in memory rather than every bronze row: a rebuild reads
//! bronze once, and candidates of different months never compete. The file is an unnamed
//! temporary file in TMPDIR, gone when the process ends, however it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use quantlens_engine::dates::{month_of, month_start};
use quantlens_engine::AssetError;

use super::derivation::Candidate;

/// Candidates a month buffers before they are written out together (about 70 KB: every month
/// of the history has a buffer, 240 of them for 20 years).
const CHUNK: usize = 1024;

/// Bytes of one candidate on disk.
const RECORD: usize = 65;

#[derive(Default)]
struct Month {
    buffered: Vec<Candidate>,
    /// (offset, candidates) of each chunk written.
    chunks: Vec<(u64, usize)>,
    rows: u64,
}

pub(super) struct Spill {
    file: File,
    end: u64,
    /// By each month's first day.
    months: BTreeMap<i32, Month>,
}

fn spill_error(err: std::io::Error) -> AssetError {
    AssetError::transient(format!(
        "silver rebuild: its temporary file in {}: {err}",
        std::env::temp_dir().display()
    ))
}

impl Spill {
    pub(super) fn new() -> Result<Spill, AssetError> {
        Ok(Spill {
            file: tempfile::tempfile().map_err(spill_error)?,
            end: 0,
            months: BTreeMap::new(),
        })
    }

    pub(super) fn push(&mut self, candidate: Candidate) -> Result<(), AssetError> {
        let month = self.months.entry(month_start(candidate.date)).or_default();
        month.buffered.push(candidate);
        month.rows += 1;
        if month.buffered.len() == CHUNK {
            let mut bytes = Vec::with_capacity(CHUNK * RECORD);
            month.buffered.iter().for_each(|c| c.write_to(&mut bytes));
            self.file.write_all(&bytes).map_err(spill_error)?;
            month.chunks.push((self.end, CHUNK));
            self.end += bytes.len() as u64;
            month.buffered.clear();
        }
        Ok(())
    }

    /// The candidates held for each month ("YYYY-MM").
    pub(super) fn rows(&self) -> BTreeMap<String, u64> {
        self.months
            .iter()
            .map(|(first_day, month)| (month_of(*first_day), month.rows))
            .collect()
    }

    /// Takes the candidates of `months` out of the spill.
    pub(super) fn take(&mut self, months: &BTreeSet<String>) -> Result<Vec<Candidate>, AssetError> {
        let taken: Vec<i32> = self
            .months
            .keys()
            .filter(|first_day| months.contains(&month_of(**first_day)))
            .copied()
            .collect();
        let mut candidates = Vec::new();
        for first_day in taken {
            let month = self.months.remove(&first_day).expect("listed above");
            candidates.reserve(month.rows as usize);
            for (offset, count) in month.chunks {
                let mut bytes = vec![0; count * RECORD];
                self.file
                    .read_exact_at(&mut bytes, offset)
                    .map_err(spill_error)?;
                candidates.extend(bytes.chunks_exact(RECORD).map(Candidate::read_from));
            }
            candidates.extend(month.buffered);
        }
        Ok(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_come_back_whole_by_month() {
        let mut spill = Spill::new().unwrap();
        // Three months, one of them spanning several chunks.
        let days = [0, 31, 59];
        for n in 0..(2 * CHUNK + 10) {
            let day = days[n % 3] + (n % 28) as i32;
            spill.push(Candidate::example(day, n as f64)).unwrap();
        }
        let rows = spill.rows();
        assert_eq!(
            rows.keys().collect::<Vec<_>>(),
            ["1970-01", "1970-02", "1970-03"]
        );
        assert_eq!(rows.values().sum::<u64>(), (2 * CHUNK + 10) as u64);
        let february = spill
            .take(&BTreeSet::from(["1970-02".to_string()]))
            .unwrap();
        assert_eq!(february.len() as u64, rows["1970-02"]);
        assert!(february.iter().all(|c| (31..59).contains(&c.date)));
        let mut closes: Vec<f64> = february.iter().map(|c| c.close).collect();
        closes.sort_by(f64::total_cmp);
        let expected: Vec<f64> = (0..2 * CHUNK + 10)
            .filter(|n| n % 3 == 1)
            .map(|n| n as f64)
            .collect();
        assert_eq!(closes, expected, "every candidate once, values intact");
        assert_eq!(spill.rows().len(), 2, "February is gone");
    }
}
