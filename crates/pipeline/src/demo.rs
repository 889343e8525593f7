//! Deterministic synthetic landing data: a random walk per symbol, one CSV file per weekday, with a
//! small share of every kind of junk real feeds carry (duplicates, empty fields, swapped high/low,
//! unparseable lines, non-positive prices, bad symbols, a file with the wrong header). The same
//! arguments always produce the same bytes, so tests and benchmarks can rely on them.

use chrono::{Datelike, Duration, NaiveDate, Weekday};
use quantlens_lake::{FileStore, LakeError};

use crate::landing::HEADER;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub symbols: usize,
    pub days: usize,
    pub seed: u64,
    /// First trading day; weekends are skipped.
    pub start: NaiveDate,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            symbols: 20,
            days: 120,
            seed: 42,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).expect("valid date"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemoSummary {
    pub files: usize,
    pub rows: usize,
    pub bytes: usize,
    /// Junk lines written on purpose (not counting duplicates, which are valid rows).
    pub junk_rows: usize,
    pub duplicate_rows: usize,
    pub bad_header_files: usize,
}

/// SplitMix64: tiny, fast, and stable across releases (unlike a library RNG's stream).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (Irwin–Hall with 4 draws, rescaled).
    fn normal(&mut self) -> f64 {
        let sum: f64 = (0..4).map(|_| self.unit()).sum();
        (sum - 2.0) * 3f64.sqrt()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A ticker for symbol number `index`: AAA, AAB, ... then longer.
pub fn ticker(index: usize) -> String {
    let mut n = index;
    let mut letters = Vec::new();
    for _ in 0..3 {
        letters.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    let mut name = String::from_utf8(letters).expect("ASCII");
    if n > 0 {
        name.push_str(&n.to_string());
    }
    name
}

/// The weekdays from `start`, `days` of them.
pub fn trading_days(start: NaiveDate, days: usize) -> Vec<NaiveDate> {
    let mut out = Vec::with_capacity(days);
    let mut day = start;
    while out.len() < days {
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            out.push(day);
        }
        day += Duration::days(1);
    }
    out
}

pub fn file_name(day: NaiveDate) -> String {
    format!("prices_{}.csv", day.format("%Y-%m-%d"))
}

/// Kinds of junk line, each written at about JUNK_RATE.
const JUNK_RATE: f64 = 0.002;

/// Builds the landing files in memory, one `(name, contents)` per file, in day order.
pub fn generate(options: &DemoOptions) -> (Vec<(String, Vec<u8>)>, DemoSummary) {
    let mut rng = Rng(options.seed);
    let mut closes: Vec<f64> = (0..options.symbols)
        .map(|_| 20.0 + rng.unit() * 480.0)
        .collect();
    let tickers: Vec<String> = (0..options.symbols).map(ticker).collect();
    let mut summary = DemoSummary::default();
    let mut files = Vec::new();
    for (day_index, day) in trading_days(options.start, options.days)
        .into_iter()
        .enumerate()
    {
        let date = day.format("%Y-%m-%d").to_string();
        let mut text = String::with_capacity(options.symbols * 64 + 64);
        text.push_str(&HEADER.join(","));
        text.push('\n');
        for (symbol, close) in tickers.iter().zip(closes.iter_mut()) {
            let open = *close * (1.0 + rng.normal() * 0.005);
            let new_close = *close * (rng.normal() * 0.02).exp();
            let high = open.max(new_close) * (1.0 + rng.unit() * 0.01);
            let low = open.min(new_close) * (1.0 - rng.unit() * 0.01);
            let volume = 1_000 + rng.below(1_000_000);
            *close = new_close;
            let good =
                format!("{symbol},{date},{open:.4},{high:.4},{low:.4},{new_close:.4},{volume}\n");
            if rng.unit() < JUNK_RATE * 7.0 {
                summary.junk_rows += 1;
                let junk = match rng.below(7) {
                    0 => format!("{symbol},{date},{open:.4},{high:.4},{low:.4},,{volume}\n"),
                    1 => format!(
                        "{symbol},{date},{open:.4},{low:.4},{high:.4},{new_close:.4},{volume}\n"
                    ),
                    2 => "### feed interrupted, partial line\n".to_string(),
                    3 => format!(
                        "{symbol},{date},{open:.4},{high:.4},{low:.4},-{new_close:.4},{volume}\n"
                    ),
                    4 => format!(
                        "{},{date},{open:.4},{high:.4},{low:.4},{new_close:.4},{volume}\n",
                        symbol.to_lowercase()
                    ),
                    5 => {
                        format!("{symbol},{date},{open:.4},{high:.4},{low:.4},{new_close:.4},n/a\n")
                    }
                    _ => format!(
                        "{symbol},{}/{},{open:.4},{high:.4},{low:.4},{new_close:.4},{volume}\n",
                        day.day(),
                        day.month()
                    ),
                };
                text.push_str(&junk);
                // A junk line replaces the day's row for that symbol, as a broken feed would.
                continue;
            }
            text.push_str(&good);
            summary.rows += 1;
            if rng.unit() < JUNK_RATE {
                text.push_str(&good);
                summary.duplicate_rows += 1;
            }
        }
        summary.bytes += text.len();
        files.push((file_name(day), text.into_bytes()));
        // Now and then a delivery arrives in someone else's format.
        if day_index % 50 == 49 {
            let wrong = format!("ticker;day;price\nAAA;{date};1.0\n");
            summary.bytes += wrong.len();
            summary.bad_header_files += 1;
            files.push((format!("export_{date}.csv"), wrong.into_bytes()));
        }
    }
    summary.files = files.len();
    (files, summary)
}

/// Writes the demo files into the landing directory.
pub async fn write_demo(
    landing: &FileStore,
    options: &DemoOptions,
) -> Result<DemoSummary, LakeError> {
    let (files, summary) = generate(options);
    for (name, contents) in files {
        landing.write(&name, contents).await?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_arguments_same_bytes() {
        let options = DemoOptions {
            symbols: 30,
            days: 60,
            ..Default::default()
        };
        let (a, sa) = generate(&options);
        let (b, sb) = generate(&options);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_eq!(sa.files, 60 + 1);
        assert!(sa.junk_rows > 0, "{sa:?}");
        let (c, _) = generate(&DemoOptions { seed: 7, ..options });
        assert_ne!(a, c);
    }

    #[test]
    fn weekdays_only_and_tickers_unique() {
        let days = trading_days(NaiveDate::from_ymd_opt(2024, 1, 5).unwrap(), 3);
        assert_eq!(
            days.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["2024-01-05", "2024-01-08", "2024-01-09"]
        );
        let tickers: std::collections::HashSet<_> = (0..20_000).map(ticker).collect();
        assert_eq!(tickers.len(), 20_000);
        assert_eq!(ticker(0), "AAA");
        assert_eq!(ticker(27), "ABB");
    }
}
