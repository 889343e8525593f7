//! What a query refers to, read from DuckDB's own parse tree (`json_serialize_sql`) rather than
//! guessed with a regex: the tables it reads (minus its own CTEs) and the named parameters it
//! uses. The query is only parsed, not bound, so this works before any table exists.

use std::collections::BTreeSet;

use serde_json::Value;

/// What a query names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Table names as written (lower-cased), CTE names excluded.
    pub tables: BTreeSet<String>,
    /// Named parameters (`$start` gives `start`).
    pub parameters: BTreeSet<String>,
}

/// Parses `query`: one SELECT statement. The error is DuckDB's message.
pub fn references(conn: &duckdb::Connection, query: &str) -> Result<References, String> {
    let json: String = conn
        .query_row("SELECT json_serialize_sql(?)", [query], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let tree: Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    if tree["error"].as_bool() == Some(true) {
        let message = tree["error_message"]
            .as_str()
            .unwrap_or("unparseable query");
        return Err(message.to_string());
    }
    let statements = tree["statements"].as_array().map_or(0, Vec::len);
    if statements != 1 {
        return Err(format!(
            "a SQL asset holds exactly one SELECT statement, found {statements}"
        ));
    }
    let mut found = References::default();
    let mut ctes = BTreeSet::new();
    walk(&tree["statements"], &mut found, &mut ctes);
    found.tables.retain(|t| !ctes.contains(t));
    Ok(found)
}

fn walk(node: &Value, found: &mut References, ctes: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("BASE_TABLE") => {
                    if let Some(name) = map.get("table_name").and_then(Value::as_str) {
                        found.tables.insert(name.to_lowercase());
                    }
                }
                Some("VALUE_PARAMETER") => {
                    if let Some(name) = map.get("identifier").and_then(Value::as_str) {
                        found.parameters.insert(name.to_lowercase());
                    }
                }
                _ => {}
            }
            if let Some(entries) = map.get("cte_map").and_then(|c| c["map"].as_array()) {
                for entry in entries {
                    if let Some(name) = entry["key"].as_str() {
                        ctes.insert(name.to_lowercase());
                    }
                }
            }
            for value in map.values() {
                walk(value, found, ctes);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| walk(item, found, ctes)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(query: &str) -> Result<References, String> {
        references(&quantlens_lake::duck::connect().unwrap(), query)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tables_come_from_joins_subqueries_and_ctes_but_not_the_cte_names() {
        let found = refs(
            "WITH recent AS (SELECT * FROM Silver_Prices WHERE date >= $start)
             SELECT r.symbol, g.log_return FROM recent r
             JOIN gold_returns g USING (symbol, date)
             WHERE r.date <= $end AND r.symbol IN (SELECT symbol FROM gold_high_low_52w)",
        )
        .unwrap();
        assert_eq!(
            found.tables,
            set(&["gold_high_low_52w", "gold_returns", "silver_prices"])
        );
        assert_eq!(found.parameters, set(&["end", "start"]));
    }

    #[test]
    fn syntax_errors_and_several_statements_are_refused() {
        let err = refs("SELECT * FROMM silver_prices").unwrap_err();
        assert!(err.to_lowercase().contains("syntax error"), "{err}");
        let err = refs("SELECT 1; SELECT 2").unwrap_err();
        assert!(err.contains("exactly one SELECT"), "{err}");
    }
}
