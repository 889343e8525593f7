//! How silver and gold stay incremental. Their tables are partitioned by calendar month (`month`,
//! "YYYY-MM"), so a late correction rewrites the months it reaches, and a daily delivery, whose
//! days come after everything the table holds, appends to its month ([`only_adds`]). Every
//! incremental commit records which symbols it changed and from which date on (`changed_from` in
//! its commit metadata); the asset downstream reads those records for the commits it has not
//! seen yet and recomputes only from there. When that trail is broken (a full
//! refresh, a commit QuantLens did not write, a new code version), the asset rebuilds instead.
//!
//! A long update (a late correction years back, a backfill) commits in pieces of at most
//! [`PIECE_MONTHS`] months, so memory stays bounded. Every piece but the last records the upstream
//! versions the update started from plus a progress marker (`progress` in the commit metadata):
//! after a crash the table is still stale, and the next run resumes after the last piece
//! committed instead of starting over.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{AssetContext, AssetError, Materialization};
use chrono::NaiveDate;
use quantlens_lake::arrow::array::{Array, RecordBatch, StringArray};
use quantlens_lake::{At, Table, TableFile, WriteMode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::dates::{date_of, day_of, month_of, with_month_of};

/// The partition column of silver and gold.
pub const MONTH: &str = "month";

/// The commit metadata key holding a commit's [`Changes`].
const CHANGED_FROM: &str = "changed_from";

/// The commit metadata key holding an unfinished update's [`Progress`].
const PROGRESS: &str = "progress";

/// Months committed at once by a long update: a year of 2000 symbols is about 500,000 rows.
pub const PIECE_MONTHS: usize = 12;

/// Rows a rebuild holds at once when it goes through its input a piece of months at a time, so
/// that its memory depends on neither the history nor the number of symbols (see [`piece_rows`]).
pub const PIECE_ROWS: u64 = 1 << 20;

/// The variable that sets the rows of a rebuild's piece instead of [`PIECE_ROWS`]: fewer use less
/// memory, more cost fewer passes.
pub const PIECE_ROWS_VARIABLE: &str = "QUANTLENS_PIECE_ROWS";

/// The rows a rebuild holds at once: `QUANTLENS_PIECE_ROWS` when set, else [`PIECE_ROWS`].
pub fn piece_rows() -> Result<u64, AssetError> {
    match std::env::var(PIECE_ROWS_VARIABLE) {
        Err(_) => Ok(PIECE_ROWS),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|rows| *rows > 0)
            .ok_or_else(|| {
                AssetError::data(format!(
                    "{PIECE_ROWS_VARIABLE} must be a positive number of rows, not `{text}`"
                ))
            }),
    }
}

/// Commits that rewrite or delete files without changing what the table holds.
const NO_DATA_CHANGE: [&str; 3] = ["OPTIMIZE", "VACUUM START", "VACUUM END"];

/// The files of a snapshot in the given partitions.
pub fn files_in(table: &Table, months: &BTreeSet<String>) -> Result<Vec<TableFile>, AssetError> {
    Ok(table
        .files()?
        .into_iter()
        .filter(|f| f.partition_value(MONTH).is_some_and(|m| months.contains(m)))
        .collect())
}

/// The files of a snapshot in the given partitions that may hold rows dated `first_day` or
/// later (the others are known from their statistics to be older).
pub fn files_in_from(
    table: &Table,
    months: &BTreeSet<String>,
    first_day: i32,
) -> Result<Vec<TableFile>, AssetError> {
    Ok(table.files_reaching(files_in(table, months)?, "date", first_day)?)
}

/// The months of a snapshot from `first` on.
pub fn months_from(table: &Table, first: &str) -> Result<BTreeSet<String>, AssetError> {
    Ok(table
        .partition_values(MONTH)?
        .into_iter()
        .filter(|m| m.as_str() >= first)
        .collect())
}

/// Per symbol, the earliest date whose row changed: everything from there on may differ. An
/// asset that does not track symbols (a SQL asset) says "every symbol, from this date on".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A hash map: assets look symbols up once per row.
    from: HashMap<String, i32>,
    every_symbol_from: Option<i32>,
}

/// How [`Changes::to_json`] writes "every symbol".
const EVERY_SYMBOL: &str = "*";

impl Changes {
    /// Every row from `day` on may have changed, whatever its symbol.
    pub fn everything_from(day: i32) -> Changes {
        Changes {
            from: HashMap::new(),
            every_symbol_from: Some(day),
        }
    }

    pub fn add(&mut self, symbol: &str, day: i32) {
        if symbol == EVERY_SYMBOL {
            self.every_symbol_from = Some(self.every_symbol_from.map_or(day, |d| d.min(day)));
            return;
        }
        match self.from.get_mut(symbol) {
            Some(earliest) => *earliest = (*earliest).min(day),
            None => {
                self.from.insert(symbol.to_string(), day);
            }
        }
    }

    pub fn merge(&mut self, other: &Changes) {
        for (symbol, day) in &other.from {
            self.add(symbol, *day);
        }
        if let Some(day) = other.every_symbol_from {
            self.add(EVERY_SYMBOL, day);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.from.is_empty() && self.every_symbol_from.is_none()
    }

    /// The earliest changed date of `symbol`, if it changed.
    pub fn from(&self, symbol: &str) -> Option<i32> {
        match (self.from.get(symbol).copied(), self.every_symbol_from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest changed date of any symbol.
    pub fn earliest(&self) -> Option<i32> {
        self.from
            .values()
            .copied()
            .chain(self.every_symbol_from)
            .min()
    }

    /// How many symbols changed (`usize::MAX` when every symbol may have).
    pub fn symbols(&self) -> usize {
        match self.every_symbol_from {
            Some(_) => usize::MAX,
            None => self.from.len(),
        }
    }

    /// Whether the row (symbol, day) lies in the changed range.
    pub fn covers(&self, symbol: &str, day: i32) -> bool {
        self.from(symbol).is_some_and(|from| day >= from)
    }

    /// `{"YYYY-MM-DD": [symbols...]}`: a daily delivery changes every symbol on one date, so
    /// grouping by date keeps the commit small.
    pub fn to_json(&self) -> Value {
        let mut by_date: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let every = self.every_symbol_from.map(|day| (EVERY_SYMBOL, day));
        let listed = self
            .from
            .iter()
            .map(|(symbol, day)| (symbol.as_str(), *day));
        for (symbol, day) in listed.chain(every) {
            by_date
                .entry(date_of(day).to_string())
                .or_default()
                .push(symbol);
        }
        for symbols in by_date.values_mut() {
            symbols.sort_unstable();
        }
        json!(by_date)
    }

    fn from_json(value: &Value) -> Option<Changes> {
        let mut changes = Changes::default();
        for (date, symbols) in value.as_object()? {
            let day = day_of(NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?);
            for symbol in symbols.as_array()? {
                changes.add(symbol.as_str()?, day);
            }
        }
        Some(changes)
    }

    /// The commit metadata entry recording these changes.
    pub fn metadata(&self) -> serde_json::Map<String, Value> {
        let mut extra = serde_json::Map::new();
        extra.insert(CHANGED_FROM.into(), self.to_json());
        extra
    }
}

/// What an incremental update starts from: the asset's own table, the versions of its upstream
/// tables it was last computed from, and how far an unfinished update got.
pub struct Previous {
    pub table: Table,
    pub upstream: BTreeMap<String, i64>,
    pub upstream_version: i64,
    pub progress: Option<Progress>,
}

/// How far an update committed in pieces got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The upstream version the update brings the table to. With several upstream tables, the
    /// sum of their versions: each only grows, so the sum stays the same exactly when none moved.
    pub target: i64,
    /// The last month committed.
    pub through: String,
    /// For a backfill: the months it covers (first, last) and the run that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Backfill>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub first: String,
    pub last: String,
    pub run_id: String,
}

impl Previous {
    /// Where an update towards `target` resumes: after the last month a crashed run committed.
    pub fn resume_after(&self, target: i64) -> Option<String> {
        self.progress
            .as_ref()
            .filter(|p| p.target == target && p.backfill.is_none())
            .map(|p| p.through.clone())
    }
}

/// Consecutive months an update commits at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub months: BTreeSet<String>,
    /// No months remain after this piece.
    pub last: bool,
}

impl Piece {
    /// The next piece of `months` after `done_through`, or `None` when none remain.
    pub fn next(months: &BTreeSet<String>, done_through: Option<&str>) -> Option<Piece> {
        let remaining: Vec<&String> = months
            .iter()
            .filter(|m| done_through.is_none_or(|done| m.as_str() > done))
            .collect();
        if remaining.is_empty() {
            return None;
        }
        Some(Piece {
            last: remaining.len() <= PIECE_MONTHS,
            months: remaining.into_iter().take(PIECE_MONTHS).cloned().collect(),
        })
    }

    /// The next piece of `table`'s months after `done_through` for a rebuild: whole months, as
    /// many as hold at most `max_rows` rows together (at least one, at most [`PIECE_MONTHS`]),
    /// counted from the row counts the log keeps for each file (a file without one counts as
    /// `max_rows`).
    pub fn next_by_rows(
        table: &Table,
        done_through: Option<&str>,
        max_rows: u64,
    ) -> Result<Option<Piece>, AssetError> {
        let mut rows: BTreeMap<String, u64> = BTreeMap::new();
        for file in table.files()? {
            if let Some(month) = file.partition_value(MONTH) {
                if done_through.is_none_or(|done| month > done) {
                    *rows.entry(month.to_string()).or_default() += file.rows.unwrap_or(max_rows);
                }
            }
        }
        Ok(Piece::first_within(&rows, max_rows))
    }

    /// The first months of `rows` (rows per month) that hold at most `max_rows` rows together:
    /// at least one month, at most [`PIECE_MONTHS`].
    pub fn first_within(rows: &BTreeMap<String, u64>, max_rows: u64) -> Option<Piece> {
        let mut months = BTreeSet::new();
        let mut held = 0;
        for (month, month_rows) in rows {
            if !months.is_empty() && (held + month_rows > max_rows || months.len() == PIECE_MONTHS)
            {
                break;
            }
            held += month_rows;
            months.insert(month.clone());
        }
        let last = months.len() == rows.len();
        (!months.is_empty()).then_some(Piece { last, months })
    }

    pub fn through(&self) -> &str {
        self.months.last().expect("a piece has months")
    }

    pub fn contains_day(&self, day: i32) -> bool {
        with_month_of(day, |month| self.months.contains(month))
    }

    /// The commit of this piece of an update bringing the table to upstream version `target`:
    /// until the last piece, progress is marked and the update's starting versions recorded.
    /// `more` asks to be called again after the last piece too.
    pub fn update_commit(
        &self,
        batches: Vec<RecordBatch>,
        changes: &Changes,
        target: i64,
        previous: &Previous,
        more: bool,
    ) -> Materialization {
        let progress = (!self.last).then(|| Progress {
            target,
            through: self.through().to_string(),
            backfill: None,
        });
        let consumed = (!self.last).then(|| previous.upstream.clone());
        Piece::materialization(batches, changes, progress, consumed, !self.last || more)
    }

    /// The commit of this piece: it replaces the months `batches` hold (each batch within one
    /// month) and records `changes` for the asset downstream. Unless `progress` is `None` (the update is
    /// complete), it marks progress, and records `consumed` as the upstream versions read when
    /// given; `more` asks to be called again.
    pub fn materialization(
        batches: Vec<RecordBatch>,
        changes: &Changes,
        progress: Option<Progress>,
        consumed: Option<BTreeMap<String, i64>>,
        more: bool,
    ) -> Materialization {
        let months: BTreeSet<String> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .filter_map(|b| b.column_by_name(MONTH))
            .filter_map(|c| {
                c.as_any()
                    .downcast_ref::<StringArray>()
                    .map(|m| m.value(0).to_string())
            })
            .collect();
        let mut output = Materialization::overwrite(batches);
        // Nothing to replace (no rows in these months): an empty append still records progress.
        output.mode = if months.is_empty() {
            WriteMode::Append
        } else {
            WriteMode::ReplacePartitions(months)
        };
        output.extra_metadata = changes.metadata();
        if let Some(progress) = progress {
            output.extra_metadata.insert(
                PROGRESS.into(),
                serde_json::to_value(progress).expect("progress serializes"),
            );
        }
        output.consumed = consumed;
        output.more = more;
        output
    }
}

/// Whether rows dated `first_day` or later only add to `table`: every row it holds is older
/// (from the statistics of its last month's files; `false` when they say nothing). The daily
/// delivery is such a case: an update then appends the new rows instead of reading back and
/// rewriting the month they fall in, so a daily run costs the same on the last day of a month as
/// on the first. Each month then collects a file per run until `quantlens maintain` compacts it.
pub fn only_adds(table: &Table, first_day: i32) -> Result<bool, AssetError> {
    Ok(table
        .latest_date(MONTH, "date")?
        .is_some_and(|last| first_day > last))
}

/// The asset's last result, if it can be updated in place: it exists, was written by this code
/// version from `upstream`, and no full refresh was asked for.
pub async fn previous(ctx: &AssetContext, upstream: &str) -> Result<Option<Previous>, AssetError> {
    if ctx.full_refresh {
        return Ok(None);
    }
    let Some(table) = ctx.lake.load(&ctx.key, At::Latest).await? else {
        return Ok(None);
    };
    let Some(lineage) = table
        .lineage()
        .await?
        .filter(|l| l.code_version == ctx.code_version)
    else {
        return Ok(None);
    };
    let Some(upstream_version) = lineage.upstream.get(upstream).copied() else {
        return Ok(None);
    };
    if table.partition_columns()? != [MONTH] {
        return Ok(None);
    }
    let progress = lineage
        .extra
        .get(PROGRESS)
        .and_then(|p| serde_json::from_value(p.clone()).ok());
    Ok(Some(Previous {
        table,
        upstream: lineage.upstream,
        upstream_version,
        progress,
    }))
}

/// Why the asset's table needs no new version, when it needs none: its last commit was written
/// by this code version from exactly the upstream versions pinned for this run, and no full
/// refresh was asked for. For assets that rebuild whole (no change records to go by), so that a
/// run with nothing new does not recompute them.
pub async fn built_from_these_inputs(ctx: &AssetContext) -> Result<Option<String>, AssetError> {
    if ctx.full_refresh || ctx.upstream.is_empty() {
        return Ok(None);
    }
    let Some(table) = ctx.lake.load(&ctx.key, At::Latest).await? else {
        return Ok(None);
    };
    let Some(lineage) = table.lineage().await? else {
        return Ok(None);
    };
    if lineage.code_version != ctx.code_version || lineage.upstream != ctx.upstream {
        return Ok(None);
    }
    let inputs: Vec<String> = ctx
        .upstream
        .iter()
        .map(|(key, version)| format!("`{key}` version {version}"))
        .collect();
    Ok(Some(format!(
        "built from these very inputs already: {}",
        inputs.join(", ")
    )))
}

/// What an incremental asset does this time.
pub enum Plan {
    /// Rebuild the whole table: it is new, its code changed, a full refresh was asked for, or an
    /// upstream table does not say what it changed.
    Rebuild,
    /// Recompute the months of `piece`, the next piece of the months from the first change on.
    Update {
        changes: Changes,
        previous: Box<Previous>,
        piece: Piece,
        /// The upstream version the update brings the table to (see [`Progress::target`]).
        target: i64,
    },
    Unchanged(String),
}

/// Plans the run of an asset partitioned by month whose rows depend on upstream rows of the same
/// date and earlier ones (rolling windows carry a change forward): every month from the first
/// changed one through the last month the upstream tables hold is recomputed, a piece at a time.
/// `upstream` are the asset's upstream tables at their pinned versions.
pub async fn plan(ctx: &AssetContext, upstream: &[Table]) -> Result<Plan, AssetError> {
    let Some(first) = upstream.first() else {
        return Ok(Plan::Rebuild);
    };
    let Some(previous) = previous(ctx, first.key()).await? else {
        return Ok(Plan::Rebuild);
    };
    let mut changes = Changes::default();
    // Each upstream table with the version last read, for the messages.
    let mut read = Vec::new();
    let mut moved = false;
    for table in upstream {
        let Some(&since) = previous.upstream.get(table.key()) else {
            return Ok(Plan::Rebuild);
        };
        read.push(format!("`{}`", table.key()));
        if since == table.version() {
            *read.last_mut().expect("pushed") += &format!(" has not changed since version {since}");
            continue;
        }
        moved = true;
        *read.last_mut().expect("pushed") += &format!(" since version {since}");
        let Some(changed) = changes_since(table, since).await? else {
            (ctx.progress)(&format!(
                "`{}` was rebuilt since version {since}: rebuilding",
                table.key()
            ));
            return Ok(Plan::Rebuild);
        };
        changes.merge(&changed);
    }
    if !moved {
        return Ok(Plan::Unchanged(read.join(", ")));
    }
    let Some(earliest) = changes.earliest() else {
        return Ok(Plan::Unchanged(format!(
            "no rows changed: {}",
            read.join(", ")
        )));
    };
    let mut months = BTreeSet::new();
    for table in upstream {
        months.extend(months_from(table, &month_of(earliest))?);
    }
    let target = upstream.iter().map(Table::version).sum();
    Ok(
        match Piece::next(&months, previous.resume_after(target).as_deref()) {
            Some(piece) => Plan::Update {
                changes,
                previous: Box::new(previous),
                piece,
                target,
            },
            None => Plan::Unchanged(format!("the changes are all applied: {}", read.join(", "))),
        },
    )
}

/// The changes `upstream` went through after `since`, up to the loaded version, or `None` when a
/// commit in between does not say what it changed (a full refresh, say): then only a rebuild is
/// exact.
pub async fn changes_since(upstream: &Table, since: i64) -> Result<Option<Changes>, AssetError> {
    let newer = (upstream.version() - since).max(0) as usize;
    let commits: Vec<_> = upstream
        .history(Some(newer))
        .await?
        .into_iter()
        .filter(|c| c.version > since)
        .collect();
    // Log files past the retention period are gone: without every commit, the trail is unknown.
    if commits.len() != newer {
        return Ok(None);
    }
    let mut changes = Changes::default();
    for commit in commits {
        if NO_DATA_CHANGE.contains(&commit.operation.as_str()) {
            continue;
        }
        let recorded = commit
            .quantlens
            .as_ref()
            .and_then(|m| m.extra.get(CHANGED_FROM))
            .and_then(Changes::from_json);
        match recorded {
            Some(recorded) => changes.merge(&recorded),
            None => return Ok(None),
        }
    }
    Ok(Some(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_pieces_hold_whole_months_within_the_row_budget() {
        let rows: BTreeMap<String, u64> = [("2020-01", 40), ("2020-02", 70), ("2020-03", 10)]
            .into_iter()
            .map(|(m, r)| (m.to_string(), r))
            .collect();
        let first = Piece::first_within(&rows, 100).unwrap();
        assert_eq!(first.months.iter().collect::<Vec<_>>(), ["2020-01"]);
        assert!(!first.last);
        // A month larger than the budget is still a piece of its own.
        let big = Piece::first_within(&rows, 30).unwrap();
        assert_eq!(big.months.len(), 1);
        let all = Piece::first_within(&rows, 1000).unwrap();
        assert!(all.last && all.months.len() == 3);
        let many: BTreeMap<String, u64> = (1..=30)
            .map(|i| {
                (
                    format!("{:04}-{:02}", 2000 + (i - 1) / 12, (i - 1) % 12 + 1),
                    1,
                )
            })
            .collect();
        assert_eq!(
            Piece::first_within(&many, 1000).unwrap().months.len(),
            PIECE_MONTHS
        );
        assert!(Piece::first_within(&BTreeMap::new(), 10).is_none());
    }

    #[test]
    fn pieces_cover_the_months_in_order_and_resume_after_the_last_done() {
        let months: BTreeSet<String> = (1..=30)
            .map(|i| format!("{:04}-{:02}", 2000 + (i - 1) / 12, (i - 1) % 12 + 1))
            .collect();
        let first = Piece::next(&months, None).unwrap();
        assert_eq!(first.months.len(), PIECE_MONTHS);
        assert!(!first.last);
        assert_eq!(first.through(), "2000-12");
        let third = Piece::next(&months, Some("2001-12")).unwrap();
        assert_eq!(third.months.first().unwrap(), "2002-01");
        assert!(third.last && third.months.len() == 6);
        assert_eq!(Piece::next(&months, Some("2002-06")), None);
    }

    #[test]
    fn changes_keep_the_earliest_date_and_survive_json() {
        let mut changes = Changes::default();
        changes.add("AAA", 100);
        changes.add("AAA", 90);
        changes.add("BBB", 100);
        assert_eq!(changes.from("AAA"), Some(90));
        assert_eq!(changes.earliest(), Some(90));
        assert!(changes.covers("BBB", 100) && !changes.covers("BBB", 99));
        assert!(!changes.covers("CCC", 1000));
        assert_eq!(
            Changes::from_json(&changes.to_json()),
            Some(changes.clone())
        );
        assert_eq!(Changes::from_json(&json!(["not", "a", "map"])), None);
        let mut everything = Changes::everything_from(95);
        assert!(everything.covers("ZZZ", 95) && !everything.covers("ZZZ", 94));
        everything.merge(&changes);
        assert_eq!(everything.from("AAA"), Some(90));
        assert_eq!(everything.from("BBB"), Some(95));
        assert_eq!(everything.symbols(), usize::MAX);
        assert_eq!(Changes::from_json(&everything.to_json()), Some(everything));
    }
}
