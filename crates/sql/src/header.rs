//! The header of a SQL asset file: leading `--` comment lines opened by `-- quantlens:`, holding
//! YAML once the `-- ` prefix is stripped, so the file stays plain DuckDB SQL that any editor or
//! `duckdb` shell runs as it is. Everything after the header is the query.

use serde::Deserialize;

use crate::checks::CheckSpec;

/// How the asset's table is kept up to date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Materialize {
    /// Rebuilt whole whenever it is stale.
    #[default]
    Table,
    /// Partitioned by the month of `time_column`; a run recomputes the months from the first one
    /// its upstream tables changed, binding `$start` and `$end` to that range.
    IncrementalByMonth,
}

/// The settings a file's header may give. Unknown fields are errors, so a typo never passes
/// silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub materialize: Materialize,
    /// The date column that decides a row's month (`incremental_by_month` only).
    pub time_column: Option<String>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Dependencies beyond the tables the query names (asset keys).
    #[serde(default)]
    pub depends: Vec<String>,
    /// The group shown by `assets` and selected by `group:NAME` [default: the key's layer].
    pub group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    quantlens: Option<Header>,
}

/// A file split into its header and its query.
#[derive(Debug)]
pub struct Parsed {
    pub header: Header,
    pub query: String,
    /// The file's line (1-based) where the query starts, to point DuckDB's errors at the file.
    pub query_line: usize,
}

/// A header that cannot be read, with the file line (1-based) it is about.
#[derive(Debug, PartialEq, Eq)]
pub struct HeaderError {
    pub line: usize,
    pub message: String,
}

const OPENER: &str = "quantlens:";

/// Splits `text` into header and query. A file without a `-- quantlens:` header is a `table`
/// asset with no checks.
pub fn parse(text: &str) -> Result<Parsed, HeaderError> {
    let lines: Vec<&str> = text.lines().collect();
    let comment = |line: &str| line.trim_start().starts_with("--");
    let leading = lines
        .iter()
        .position(|l| !(l.trim().is_empty() || comment(l)))
        .unwrap_or(lines.len());
    let opener = lines[..leading]
        .iter()
        .position(|l| comment_text(l).trim_end() == OPENER);
    let Some(opener) = opener else {
        return Ok(Parsed {
            header: Header::default(),
            query: text.to_string(),
            query_line: 1,
        });
    };
    // The YAML under `quantlens:` is indented; the first comment line that is not (plain prose
    // about the query, say) ends the header.
    let end = lines[opener + 1..leading]
        .iter()
        .position(|l| {
            let text = comment_text(l);
            !comment(l) || !(text.trim().is_empty() || text.starts_with([' ', '\t']))
        })
        .map_or(leading, |offset| opener + 1 + offset);
    let yaml: Vec<&str> = lines[opener..end].iter().map(|l| comment_text(l)).collect();
    let document: Document = serde_norway::from_str(&yaml.join("\n")).map_err(|err| {
        let line = err.location().map_or(opener + 1, |l| opener + l.line());
        HeaderError {
            line,
            message: yaml_message(&err),
        }
    })?;
    Ok(Parsed {
        header: document.quantlens.unwrap_or_default(),
        query: lines[end..].join("\n"),
        query_line: end + 1,
    })
}

/// The text of a `--` comment line after the prefix and one space.
fn comment_text(line: &str) -> &str {
    let text = line.trim_start().trim_start_matches("--");
    text.strip_prefix(' ').unwrap_or(text)
}

/// serde_norway's message without its own "at line L column C" (the caller names the file line).
fn yaml_message(err: &serde_norway::Error) -> String {
    let message = err.to_string();
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
-- quantlens:
--   description: 52-week high and low
--   materialize: incremental_by_month   # or: table
--   time_column: date
--   checks:
--     - not_null: [symbol, date]
--     - {unique: [symbol, date], blocking: false}
SELECT symbol, date FROM silver_prices
WHERE date BETWEEN $start AND $end
";

    #[test]
    fn the_header_is_yaml_after_the_comment_prefix() {
        let parsed = parse(EXAMPLE).unwrap();
        assert_eq!(parsed.header.description, "52-week high and low");
        assert_eq!(parsed.header.materialize, Materialize::IncrementalByMonth);
        assert_eq!(parsed.header.time_column.as_deref(), Some("date"));
        assert_eq!(parsed.header.checks.len(), 2);
        assert_eq!(parsed.query_line, 8);
        assert!(parsed.query.starts_with("SELECT symbol"));
    }

    #[test]
    fn prose_comments_after_the_header_are_not_yaml() {
        let text =
            "-- quantlens:\n--   description: x\n--\n-- Why the window is 380 days: ...\nSELECT 1";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.header.description, "x");
        assert_eq!(parsed.query_line, 4);
        assert!(parsed.query.starts_with("-- Why"));
    }

    #[test]
    fn a_file_without_a_header_is_a_plain_table() {
        let parsed = parse("-- just a comment\nSELECT 1 AS x").unwrap();
        assert_eq!(parsed.header.materialize, Materialize::Table);
        assert!(parsed.header.checks.is_empty());
        assert_eq!(parsed.query_line, 1);
    }

    #[test]
    fn header_errors_name_the_file_line() {
        let err = parse("-- quantlens:\n--   descripton: typo\nSELECT 1").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.message.contains("unknown field `descripton`"),
            "{}",
            err.message
        );
        let err = parse("-- quantlens:\n--   materialize: sometimes\nSELECT 1").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("sometimes"), "{}", err.message);
    }
}
