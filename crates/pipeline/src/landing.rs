//! The landing contract: market-data deliveries arrive as CSV files with the header
//! `symbol,date,open,high,low,close,volume`. This module decides whether a file is a delivery at
//! all (text, right header) and splits an accepted one into raw rows, keeping every field exactly
//! as it arrived: judging the values is silver's job.

use std::sync::Arc;

use quantlens_lake::arrow::array::{ArrayRef, StringBuilder};
use quantlens_lake::arrow::datatypes::{DataType, Field};
use sha2::{Digest, Sha256};

/// The columns every delivery must declare, in this order.
pub const HEADER: [&str; 7] = ["symbol", "date", "open", "high", "low", "close", "volume"];

/// The contract's columns as nullable raw strings: how bronze keeps a line, and how silver's
/// rejects show it.
pub fn raw_fields() -> Vec<Field> {
    HEADER
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect()
}

/// Builds the seven [`raw_fields`] columns a line at a time.
#[derive(Default)]
pub struct RawColumns {
    builders: [StringBuilder; 7],
}

impl RawColumns {
    /// Appends one line; a field the line did not have is null.
    pub fn push(&mut self, fields: [Option<&str>; 7]) {
        for (builder, field) in self.builders.iter_mut().zip(fields) {
            builder.append_option(field);
        }
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect()
    }
}

/// One data line of a delivery. `fields` holds what the line had, which may be more or fewer than
/// seven when the line is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRow {
    pub line: u64,
    pub fields: Vec<String>,
}

/// A file accepted as a delivery.
#[derive(Debug)]
pub struct Delivery {
    pub rows: Vec<RawRow>,
}

/// Files the fetcher is still writing, or that are not deliveries by convention: hidden files and
/// temporary names are left alone until they are renamed into place.
pub fn is_candidate(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    !(base.is_empty()
        || base.starts_with('.')
        || base.ends_with(".tmp")
        || base.ends_with(".part")
        || base.ends_with('~'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses one landing file, or says why it is not a delivery.
pub fn parse_delivery(bytes: &[u8]) -> Result<Delivery, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not a CSV text file: invalid UTF-8 at byte {}",
            e.valid_up_to()
        )
    })?;
    if text.contains('\0') {
        return Err("not a CSV text file: contains NUL bytes".into());
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let header_line = text.lines().next().unwrap_or("");
    let header: Vec<String> = header_line
        .trim_end_matches('\r')
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    if header != HEADER {
        return Err(format!(
            "wrong header: expected `{}`, found `{}`",
            HEADER.join(","),
            truncate(header_line.trim_end_matches('\r'), 120)
        ));
    }

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut header_seen = false;
    // The csv reader's own line numbers drift on CRLF files, so count newlines ourselves.
    let bytes = text.as_bytes();
    let (mut counted_to, mut newlines) = (0usize, 0u64);
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            // The header was checked above; the reader still has to step over it.
            Ok(true) if !header_seen => header_seen = true,
            Ok(true) => {
                let mut start = record.position().map_or(counted_to, |p| p.byte() as usize);
                while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
                    start += 1;
                }
                newlines += bytes[counted_to..start]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64;
                counted_to = start;
                rows.push(RawRow {
                    line: newlines + 1,
                    fields: record.iter().map(str::to_string).collect(),
                });
            }
            // The csv reader only fails on I/O or UTF-8, both ruled out above; stop rather than loop.
            Err(err) => return Err(format!("unreadable CSV: {err}")),
        }
    }
    Ok(Delivery { rows })
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_delivery_and_keeps_raw_fields() {
        let file = b"symbol,date,open,high,low,close,volume\r\nAAA,2024-01-02,1,2,0.5,1.5,100\r\nBBB,2024-01-02,,x\r\n\r\nCCC,2024-01-02,1,2,0.5,1.5,100,extra\n";
        let delivery = parse_delivery(file).unwrap();
        assert_eq!(delivery.rows.len(), 3);
        assert_eq!(delivery.rows[0].line, 2);
        assert_eq!(delivery.rows[0].fields[5], "1.5");
        assert_eq!(delivery.rows[1].fields, vec!["BBB", "2024-01-02", "", "x"]);
        assert_eq!(delivery.rows[2].line, 5);
        assert_eq!(delivery.rows[2].fields.len(), 8);
    }

    #[test]
    fn rejects_what_is_not_a_delivery() {
        assert_eq!(parse_delivery(b"").unwrap_err(), "empty file");
        assert!(parse_delivery(b"ticker,day,price\nAAA,1,2\n")
            .unwrap_err()
            .starts_with("wrong header"));
        assert!(parse_delivery(&[0x50, 0x4b, 0x03, 0x04, 0xff, 0xfe, 0x00])
            .unwrap_err()
            .starts_with("not a CSV text file"));
        // A header with spaces, quotes or capitals is still the contract's header.
        assert!(
            parse_delivery(b"\xef\xbb\xbfSymbol, date,\"open\",high,low,close,volume\n").is_ok()
        );
    }

    #[test]
    fn skips_temporary_and_hidden_files() {
        assert!(is_candidate("prices_2024-01-02.csv"));
        assert!(is_candidate("2024/prices.csv"));
        assert!(!is_candidate(".prices.csv"));
        assert!(!is_candidate("prices.csv.tmp"));
        assert!(!is_candidate("prices.csv.part"));
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
