//! Dagster-style asset selection: `*`, `key`, `key+`, `+key`, `+key+`, `group:NAME`, and
//! comma-separated unions of those. Selection strings arrive from the CLI and over HTTP, so
//! parsing is strict and every failure says which item is wrong and what would be valid;
//! [`is_selection_syntax`] gives callers a cheap character-level gate before they hand a
//! string to a worker.

use crate::error::GraphError;
use crate::graph::AssetGraph;
use crate::key::AssetKey;

/// Longest selection string [`is_selection_syntax`] accepts, in bytes.
const MAX_SELECTION_LEN: usize = 512;

/// True when `selection` is 1..=512 bytes of only the characters the selection syntax uses:
/// ASCII lowercase letters, digits, `_`, `/`, `:`, `+`, `*`, `,` and space.
///
/// This is a pre-check for untrusted input, not a parse: it does not check that the string is
/// well formed or that its keys exist. [`AssetGraph::select`] does that.
pub fn is_selection_syntax(selection: &str) -> bool {
    (1..=MAX_SELECTION_LEN).contains(&selection.len())
        && selection.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'/' | b':' | b'+' | b'*' | b',' | b' ')
        })
}

enum Item<'a> {
    All,
    Group(&'a str),
    Key {
        key: &'a str,
        upstream: bool,
        downstream: bool,
    },
}

/// Splits one comma-separated item into its form. The error is the reason shown to the user.
fn parse_item(item: &str) -> Result<Item<'_>, String> {
    if item == "*" {
        return Ok(Item::All);
    }
    if item.contains('*') {
        return Err(format!(
            "`{item}`: `*` selects every asset and must stand alone as an item"
        ));
    }
    if let Some(group) = item.strip_prefix("group:") {
        if group.is_empty() {
            return Err("`group:` needs a group name, e.g. `group:silver`".to_owned());
        }
        if group.contains('+') {
            return Err(format!(
                "`{item}`: `+` cannot be combined with `group:`; select the group and add \
                 `+key` items for what lies around it"
            ));
        }
        return Ok(Item::Group(group));
    }
    let (upstream, rest) = match item.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let (downstream, key) = match rest.strip_suffix('+') {
        Some(key) => (true, key),
        None => (false, rest),
    };
    if key.is_empty() {
        return Err(format!(
            "`{item}`: `+` needs an asset key, e.g. `+silver/prices` or `silver/prices+`"
        ));
    }
    if key.contains('+') {
        return Err(format!(
            "`{item}`: `+` may appear only once at the start and once at the end of an item"
        ));
    }
    if key.contains(':') {
        return Err(format!("`{item}`: the only supported prefix is `group:`"));
    }
    Ok(Item::Key {
        key,
        upstream,
        downstream,
    })
}

impl AssetGraph {
    /// Resolves a Dagster-style selection to keys, in topological order, each once.
    ///
    /// Items, separated by commas (surrounding spaces ignored):
    /// - `*`: every asset;
    /// - `key`: that asset;
    /// - `key+`: it and everything downstream of it;
    /// - `+key`: it and everything upstream of it;
    /// - `+key+`: both;
    /// - `group:NAME`: every asset whose group is `NAME`.
    ///
    /// An empty selection or item, or a misplaced `+`, `*` or `:`, is
    /// [`GraphError::InvalidSelection`]; a key not in the graph is [`GraphError::UnknownKey`]
    /// listing every key; a group no asset has is [`GraphError::UnknownGroup`] listing every
    /// group. Both lists are sorted and deduplicated so a typo is easy to spot.
    pub fn select(&self, selection: &str) -> Result<Vec<AssetKey>, GraphError> {
        let invalid = |reason: String| GraphError::InvalidSelection {
            selection: selection.to_owned(),
            reason,
        };
        if selection.trim().is_empty() {
            return Err(invalid(
                "the selection is empty; use `*` for every asset or name assets, e.g. \
                 `silver/prices+`"
                    .to_owned(),
            ));
        }

        // Parse everything before resolving anything, so a malformed item is reported even
        // when an earlier item names an unknown key: syntax errors are the cheaper fix.
        let mut items = Vec::new();
        for (n, raw) in selection.split(',').enumerate() {
            let item = raw.trim();
            if item.is_empty() {
                return Err(invalid(format!(
                    "item {} is empty; remove the extra comma",
                    n + 1
                )));
            }
            items.push(parse_item(item).map_err(invalid)?);
        }

        let specs = self.specs();
        let mut marked = vec![false; specs.len()];
        for item in items {
            match item {
                Item::All => marked.fill(true),
                Item::Group(group) => {
                    let mut found = false;
                    for (m, spec) in marked.iter_mut().zip(specs) {
                        if spec.group == group {
                            *m = true;
                            found = true;
                        }
                    }
                    if !found {
                        return Err(GraphError::UnknownGroup {
                            group: group.to_owned(),
                            valid: self.sorted_groups(),
                        });
                    }
                }
                Item::Key {
                    key,
                    upstream,
                    downstream,
                } => {
                    let Some(pos) = self.position(key) else {
                        return Err(GraphError::UnknownKey {
                            key: key.to_owned(),
                            valid: self.sorted_keys(),
                        });
                    };
                    marked[pos] = true;
                    if upstream {
                        self.mark_upstream(pos, &mut marked);
                    }
                    if downstream {
                        self.mark_downstream(pos, &mut marked);
                    }
                }
            }
        }
        Ok(self.marked_keys(&marked))
    }

    fn sorted_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.keys().iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    fn sorted_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.specs().iter().map(|s| s.group.clone()).collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::market_graph;

    fn select(selection: &str) -> Vec<String> {
        market_graph()
            .select(selection)
            .unwrap_or_else(|e| panic!("{selection:?}: {e}"))
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn select_err(selection: &str) -> GraphError {
        match market_graph().select(selection) {
            Ok(keys) => panic!("{selection:?} should fail, selected {keys:?}"),
            Err(e) => e,
        }
    }

    const ALL: [&str; 6] = [
        "bronze/prices",
        "bronze/landing_files",
        "silver/prices",
        "gold/returns",
        "gold/market_daily",
        "silver/file_audit",
    ];

    #[test]
    fn star_selects_everything_in_topological_order() {
        assert_eq!(select("*"), ALL);
    }

    #[test]
    fn single_key() {
        assert_eq!(select("gold/returns"), ["gold/returns"]);
    }

    #[test]
    fn key_plus_adds_downstream() {
        assert_eq!(
            select("silver/prices+"),
            ["silver/prices", "gold/returns", "gold/market_daily"]
        );
        assert_eq!(select("gold/market_daily+"), ["gold/market_daily"]);
    }

    #[test]
    fn plus_key_adds_upstream() {
        assert_eq!(
            select("+gold/returns"),
            ["bronze/prices", "silver/prices", "gold/returns"]
        );
        assert_eq!(select("+bronze/prices"), ["bronze/prices"]);
    }

    #[test]
    fn plus_key_plus_adds_both_directions() {
        assert_eq!(
            select("+silver/prices+"),
            [
                "bronze/prices",
                "silver/prices",
                "gold/returns",
                "gold/market_daily"
            ]
        );
        // The unrelated branch stays out.
        assert_eq!(
            select("+silver/file_audit+"),
            ["bronze/landing_files", "silver/file_audit"]
        );
    }

    #[test]
    fn group_selects_its_members() {
        assert_eq!(select("group:gold"), ["gold/returns", "gold/market_daily"]);
        assert_eq!(
            select("group:silver"),
            ["silver/prices", "silver/file_audit"]
        );
        assert_eq!(
            select("group:bronze"),
            ["bronze/prices", "bronze/landing_files"]
        );
    }

    #[test]
    fn unions_are_deduplicated_and_topologically_ordered() {
        assert_eq!(
            select("gold/market_daily,bronze/landing_files,+gold/returns"),
            [
                "bronze/prices",
                "bronze/landing_files",
                "silver/prices",
                "gold/returns",
                "gold/market_daily"
            ]
        );
        assert_eq!(
            select("group:gold,gold/returns,gold/returns+"),
            ["gold/returns", "gold/market_daily"]
        );
        assert_eq!(select("gold/returns,*"), ALL);
    }

    #[test]
    fn spaces_around_items_are_ignored() {
        assert_eq!(
            select("  bronze/landing_files+ ,  group:gold "),
            [
                "bronze/landing_files",
                "gold/returns",
                "gold/market_daily",
                "silver/file_audit"
            ]
        );
        assert_eq!(select(" * "), ALL);
    }

    #[test]
    fn unknown_key_lists_valid_keys() {
        let err = select_err("silver/prices,gold/retrns+");
        let mut valid: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        valid.sort();
        assert_eq!(
            err,
            GraphError::UnknownKey {
                key: "gold/retrns".into(),
                valid
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown asset `gold/retrns`; valid keys: bronze/landing_files, bronze/prices, \
             gold/market_daily, gold/returns, silver/file_audit, silver/prices"
        );
    }

    #[test]
    fn malformed_key_is_reported_as_unknown_with_the_valid_keys() {
        match select_err("Silver/Prices") {
            GraphError::UnknownKey { key, valid } => {
                assert_eq!(key, "Silver/Prices");
                assert_eq!(valid.len(), ALL.len());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_group_lists_valid_groups() {
        let err = select_err("group:platinum");
        assert_eq!(
            err,
            GraphError::UnknownGroup {
                group: "platinum".into(),
                valid: vec!["bronze".into(), "gold".into(), "silver".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown group `platinum`; valid groups: bronze, gold, silver"
        );
    }

    #[test]
    fn empty_selection_and_empty_items_are_invalid() {
        for selection in [
            "",
            "   ",
            "a/b,,gold/returns",
            "gold/returns,",
            ",gold/returns",
            " , ",
        ] {
            match select_err(selection) {
                GraphError::InvalidSelection { selection: s, .. } => assert_eq!(s, selection),
                other => panic!("{selection:?}: unexpected {other:?}"),
            }
        }
        let msg = select_err("gold/returns, ,bronze/prices").to_string();
        assert!(msg.contains("item 2 is empty"), "{msg}");
    }

    #[test]
    fn misplaced_operators_are_invalid() {
        for selection in [
            "+",
            "++",
            "+++",
            "++gold/returns",
            "gold/returns++",
            "gold+/returns",
            "*+",
            "+*",
            "**",
            "gold/*",
            "group:",
            "group:gold+",
            "+group:gold",
            "tag:gold",
        ] {
            assert!(
                matches!(select_err(selection), GraphError::InvalidSelection { .. }),
                "{selection:?} should be an invalid selection"
            );
        }
    }

    #[test]
    fn select_on_an_empty_graph() {
        let graph = AssetGraph::new(Vec::new()).unwrap();
        assert!(graph.select("*").unwrap().is_empty());
        let err = graph.select("a").unwrap_err();
        assert_eq!(err.to_string(), "unknown asset `a`; valid keys: (none)");
    }

    #[test]
    fn selection_syntax_accepts_the_grammar() {
        for selection in [
            "*",
            "silver/prices",
            "+gold/returns+",
            "group:gold, bronze/prices+",
            "a_1/b_2,c",
            // Syntax only: well-formedness is select's job.
            "++,:",
        ] {
            assert!(is_selection_syntax(selection), "{selection:?}");
        }
        assert!(is_selection_syntax(&"a".repeat(MAX_SELECTION_LEN)));
    }

    #[test]
    fn selection_syntax_rejects_everything_else() {
        let too_long = "a".repeat(MAX_SELECTION_LEN + 1);
        for selection in [
            "",
            "a;rm -rf",
            "$(x)",
            "`x`",
            "Silver/prices",
            "silver/prices\n",
            "a\tb",
            "a-b",
            "a.b",
            "../x",
            "a|b",
            "a&b",
            "prïces",
            "a\0b",
            too_long.as_str(),
        ] {
            assert!(!is_selection_syntax(selection), "{selection:?}");
        }
    }
}
