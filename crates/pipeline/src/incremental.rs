//! How silver and gold stay incremental. Their tables are partitioned by calendar month (`month`,
//! "YYYY-MM"), so a daily delivery rewrites the month it falls in and a late correction the months
//! it reaches. Every incremental commit records which symbols it changed and from which date on
//! (`changed_from` in its commit metadata); the asset downstream reads those records for the
//! commits it has not seen yet and recomputes only from there. When that trail is broken (a full
//! refresh, a commit QuantLens did not write, a new code version), the asset rebuilds instead.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate};
use quantlens_lake::{At, CommitMetadata, Table, TableFile};
use serde_json::{json, Value};

use quantlens_engine::{AssetContext, AssetError};

/// The partition column of silver and gold.
pub const MONTH: &str = "month";

/// The commit metadata key holding a commit's [`Changes`].
const CHANGED_FROM: &str = "changed_from";

/// Commits that rewrite or delete files without changing what the table holds.
const NO_DATA_CHANGE: [&str; 3] = ["OPTIMIZE", "VACUUM START", "VACUUM END"];

/// The date of a Date32 value (days since 1970-01-01).
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day + crate::silver::UNIX_EPOCH_DAY)
        .expect("Date32 values of the lake are within chrono's range")
}

/// The Date32 value of a date.
pub fn day_of(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - crate::silver::UNIX_EPOCH_DAY
}

/// The partition ("YYYY-MM") a Date32 value falls in.
pub fn month_of(day: i32) -> String {
    let date = date_of(day);
    format!("{:04}-{:02}", date.year(), date.month())
}

/// The files of a snapshot in the given partitions.
pub fn files_in(table: &Table, months: &BTreeSet<String>) -> Result<Vec<TableFile>, AssetError> {
    Ok(table
        .files()?
        .into_iter()
        .filter(|f| f.partition_value(MONTH).is_some_and(|m| months.contains(m)))
        .collect())
}

/// The months of a snapshot from `first` on.
pub fn months_from(table: &Table, first: &str) -> Result<BTreeSet<String>, AssetError> {
    Ok(table
        .partition_values(MONTH)?
        .into_iter()
        .filter(|m| m.as_str() >= first)
        .collect())
}

/// Per symbol, the earliest date whose row changed: everything from there on may differ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    from: BTreeMap<String, i32>,
}

impl Changes {
    pub fn add(&mut self, symbol: &str, day: i32) {
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
    }

    pub fn is_empty(&self) -> bool {
        self.from.is_empty()
    }

    /// The earliest changed date of `symbol`, if it changed.
    pub fn from(&self, symbol: &str) -> Option<i32> {
        self.from.get(symbol).copied()
    }

    /// The earliest changed date of any symbol.
    pub fn earliest(&self) -> Option<i32> {
        self.from.values().min().copied()
    }

    pub fn symbols(&self) -> usize {
        self.from.len()
    }

    /// Whether the row (symbol, day) lies in the changed range.
    pub fn covers(&self, symbol: &str, day: i32) -> bool {
        self.from(symbol).is_some_and(|from| day >= from)
    }

    /// `{"YYYY-MM-DD": [symbols...]}`: a daily delivery changes every symbol on one date, so
    /// grouping by date keeps the commit small.
    pub fn to_json(&self) -> Value {
        let mut by_date: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (symbol, day) in &self.from {
            by_date
                .entry(date_of(*day).to_string())
                .or_default()
                .push(symbol);
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

/// What an incremental update starts from: the asset's own table and the version of its upstream
/// table it was last computed from.
pub struct Previous {
    pub table: Table,
    pub upstream_version: i64,
}

/// The asset's last result, if it can be updated in place: it exists, was written by this code
/// version from `upstream`, and no full refresh was asked for.
pub async fn previous(
    ctx: &AssetContext,
    upstream: &str,
    code_version: &str,
) -> Result<Option<Previous>, AssetError> {
    if ctx.full_refresh {
        return Ok(None);
    }
    let Some(table) = ctx.lake.load(&ctx.key, At::Latest).await? else {
        return Ok(None);
    };
    let lineage: Option<CommitMetadata> = table.lineage().await?;
    let Some(upstream_version) = lineage
        .filter(|l| l.code_version == code_version)
        .and_then(|l| l.upstream.get(upstream).copied())
    else {
        return Ok(None);
    };
    if table.partition_columns()? != [MONTH] {
        return Ok(None);
    }
    Ok(Some(Previous {
        table,
        upstream_version,
    }))
}

/// The changes `upstream` went through after `since`, up to the loaded version, or `None` when a
/// commit in between does not say what it changed (a full refresh, say): then only a rebuild is
/// exact.
pub async fn changes_since(upstream: &Table, since: i64) -> Result<Option<Changes>, AssetError> {
    let newer = (upstream.version() - since).max(0) as usize;
    let mut changes = Changes::default();
    for commit in upstream.history(Some(newer)).await? {
        if commit.version <= since || NO_DATA_CHANGE.contains(&commit.operation.as_str()) {
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
    fn months_and_days_round_trip() {
        let date = NaiveDate::from_ymd_opt(2024, 3, 5).unwrap();
        assert_eq!(month_of(day_of(date)), "2024-03");
        assert_eq!(date_of(day_of(date)), date);
        assert_eq!(month_of(0), "1970-01");
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
        assert_eq!(Changes::from_json(&changes.to_json()), Some(changes));
        assert_eq!(Changes::from_json(&json!(["not", "a", "map"])), None);
    }
}
