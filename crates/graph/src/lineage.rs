//! Lineage renderings of a whole graph: an edge list for programmatic use, Mermaid for
//! Markdown and web UIs, and Graphviz dot for offline rendering. Output is deterministic
//! (topological order throughout) so that a lineage diff between two versions of the
//! pipeline shows only real changes.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::graph::AssetGraph;
use crate::key::AssetKey;

/// Words Mermaid's flowchart parser treats as syntax; a bare node id equal to one of them
/// breaks the whole diagram.
const MERMAID_RESERVED: &[&str] = &[
    "end",
    "graph",
    "flowchart",
    "subgraph",
    "direction",
    "style",
    "class",
    "classdef",
    "click",
    "linkstyle",
    "default",
    "call",
    "href",
];

impl AssetGraph {
    /// Every dependency edge as `(upstream, downstream)`, ordered by the downstream asset's
    /// topological position, then by the order its spec lists its dependencies.
    pub fn edges(&self) -> Vec<(AssetKey, AssetKey)> {
        let specs = self.specs();
        specs
            .iter()
            .enumerate()
            .flat_map(|(pos, spec)| {
                self.parents_of(pos)
                    .iter()
                    .map(move |&parent| (specs[parent].key.clone(), spec.key.clone()))
            })
            .collect()
    }

    /// A Mermaid `graph LR` flowchart: one node per asset, labelled with its key, and one
    /// `upstream --> downstream` edge per dependency.
    ///
    /// Node ids are the assets' view names (`silver/prices` -> `silver_prices`); when two
    /// keys share a view name, or a view name is a Mermaid keyword, a numeric suffix keeps the
    /// id unique and parseable.
    pub fn to_mermaid(&self) -> String {
        let ids = self.mermaid_ids();
        let mut out = String::from("graph LR\n");
        for (id, spec) in ids.iter().zip(self.specs()) {
            // Keys are restricted to [a-z0-9_/], so the label never needs escaping.
            let _ = writeln!(out, "    {id}[\"{}\"]", spec.key);
        }
        for (pos, id) in ids.iter().enumerate() {
            for &parent in self.parents_of(pos) {
                let _ = writeln!(out, "    {} --> {id}", ids[parent]);
            }
        }
        out
    }

    /// A Graphviz `digraph lineage`, left to right, with quoted keys as node ids.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph lineage {\n    rankdir=LR;\n    node [shape=box];\n");
        for spec in self.specs() {
            let _ = writeln!(out, "    \"{}\";", spec.key);
        }
        for (upstream, downstream) in self.edges() {
            let _ = writeln!(out, "    \"{upstream}\" -> \"{downstream}\";");
        }
        out.push_str("}\n");
        out
    }

    /// One Mermaid-safe, unique id per asset, indexed by topological position.
    fn mermaid_ids(&self) -> Vec<String> {
        let specs = self.specs();
        let mut taken: HashSet<String> = MERMAID_RESERVED.iter().map(|w| w.to_string()).collect();
        let mut ids: Vec<Option<String>> = vec![None; specs.len()];
        // Plain view names first, so an asset keeps its natural id whatever else collides
        // with it; only the later claimants of a name get a suffix.
        for (slot, spec) in ids.iter_mut().zip(specs) {
            let name = spec.key.view_name();
            if taken.insert(name.clone()) {
                *slot = Some(name);
            }
        }
        for (slot, spec) in ids.iter_mut().zip(specs) {
            if slot.is_none() {
                let base = spec.key.view_name();
                let mut n = 2usize;
                loop {
                    let candidate = format!("{base}_{n}");
                    if taken.insert(candidate.clone()) {
                        *slot = Some(candidate);
                        break;
                    }
                    n += 1;
                }
            }
        }
        ids.into_iter().map(Option::unwrap_or_default).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::tests::{market_graph, spec};
    use crate::graph::AssetGraph;

    #[test]
    fn edges_follow_topological_order_of_the_downstream_asset() {
        let edges: Vec<(String, String)> = market_graph()
            .edges()
            .into_iter()
            .map(|(a, b)| (a.into(), b.into()))
            .collect();
        let expected = [
            ("bronze/prices", "silver/prices"),
            ("silver/prices", "gold/returns"),
            ("gold/returns", "gold/market_daily"),
            ("bronze/landing_files", "silver/file_audit"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(edges, expected);
    }

    #[test]
    fn mermaid_has_every_node_and_edge() {
        let mermaid = market_graph().to_mermaid();
        let lines: Vec<&str> = mermaid.lines().collect();
        assert_eq!(lines[0], "graph LR");
        for node in [
            "    bronze_prices[\"bronze/prices\"]",
            "    bronze_landing_files[\"bronze/landing_files\"]",
            "    silver_prices[\"silver/prices\"]",
            "    gold_returns[\"gold/returns\"]",
            "    gold_market_daily[\"gold/market_daily\"]",
            "    silver_file_audit[\"silver/file_audit\"]",
        ] {
            assert!(lines.contains(&node), "missing {node:?} in\n{mermaid}");
        }
        let edges: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("-->"))
            .collect();
        assert_eq!(
            edges,
            [
                "    bronze_prices --> silver_prices",
                "    silver_prices --> gold_returns",
                "    gold_returns --> gold_market_daily",
                "    bronze_landing_files --> silver_file_audit",
            ]
        );
        assert_eq!(lines.len(), 1 + 6 + 4);
    }

    #[test]
    fn mermaid_ids_stay_unique_and_avoid_keywords() {
        let graph = AssetGraph::new(vec![
            spec("a/b_c", &[], "g"),
            spec("a_b/c", &["a/b_c"], "g"),
            spec("a_b_c_2", &[], "g"),
            spec("end", &["a_b/c"], "g"),
        ])
        .unwrap();
        let mermaid = graph.to_mermaid();
        assert!(mermaid.contains("    a_b_c[\"a/b_c\"]\n"), "{mermaid}");
        // a_b_c and a_b_c_2 are taken, so the second claimant of a_b_c gets _3.
        assert!(mermaid.contains("    a_b_c_3[\"a_b/c\"]\n"), "{mermaid}");
        assert!(mermaid.contains("    a_b_c_2[\"a_b_c_2\"]\n"), "{mermaid}");
        assert!(mermaid.contains("    end_2[\"end\"]\n"), "{mermaid}");
        assert!(mermaid.contains("    a_b_c --> a_b_c_3\n"), "{mermaid}");
        assert!(mermaid.contains("    a_b_c_3 --> end_2\n"), "{mermaid}");
        assert!(
            !mermaid.contains(" end\n") && !mermaid.contains(" end["),
            "{mermaid}"
        );
    }

    #[test]
    fn dot_has_every_node_and_edge() {
        let dot = market_graph().to_dot();
        assert!(dot.starts_with("digraph lineage {\n"), "{dot}");
        assert!(dot.ends_with("}\n"), "{dot}");
        for line in [
            "    \"bronze/landing_files\";",
            "    \"gold/market_daily\";",
            "    \"bronze/prices\" -> \"silver/prices\";",
            "    \"silver/prices\" -> \"gold/returns\";",
            "    \"gold/returns\" -> \"gold/market_daily\";",
            "    \"bronze/landing_files\" -> \"silver/file_audit\";",
        ] {
            assert!(dot.lines().any(|l| l == line), "missing {line:?} in\n{dot}");
        }
        assert_eq!(dot.matches(" -> ").count(), 4, "{dot}");
    }

    #[test]
    fn isolated_assets_still_render() {
        let graph = AssetGraph::new(vec![spec("solo", &[], "g")]).unwrap();
        assert_eq!(graph.to_mermaid(), "graph LR\n    solo[\"solo\"]\n");
        assert!(graph.to_dot().contains("    \"solo\";\n"));
        assert!(graph.edges().is_empty());
    }
}
