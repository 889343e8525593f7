//! Asset specs and the validated graph built from them. Validation happens once, in
//! [`AssetGraph::new`], so that every later query (ancestors, descendants, selection,
//! rendering) can assume unique keys, resolvable dependencies and an acyclic graph. The graph
//! stores its specs in one deterministic topological order: the same declarations always
//! yield the same plan, which keeps run logs and lineage diffs stable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::error::GraphError;
use crate::key::AssetKey;

/// The declaration of one asset: its key, what it reads, and the metadata that decides
/// grouping and when it must be rematerialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetSpec {
    pub key: AssetKey,
    pub deps: Vec<AssetKey>,
    /// E.g. `bronze`, `silver`, `gold`; selectable with `group:NAME`.
    pub group: String,
    pub code_version: String,
    pub description: String,
}

/// A validated, acyclic set of assets in deterministic topological order.
#[derive(Clone, Debug)]
pub struct AssetGraph {
    /// Topological order; every other field indexes into it.
    specs: Vec<AssetSpec>,
    index: HashMap<String, usize>,
    /// Direct dependencies of each asset, in the order the spec declared them.
    parents: Vec<Vec<usize>>,
    /// Direct dependents of each asset, ascending (that is, in topological order).
    children: Vec<Vec<usize>>,
}

impl AssetGraph {
    /// Validates `specs` and orders them topologically.
    ///
    /// Fails with [`GraphError::DuplicateKey`] when a key is declared twice,
    /// [`GraphError::UnknownDependency`] when a dependency names no declared asset, and
    /// [`GraphError::Cycle`] when dependencies loop. Among assets that are ready at the same
    /// time, the one declared first comes first. A dependency listed twice by the same spec
    /// is kept once.
    pub fn new(specs: Vec<AssetSpec>) -> Result<AssetGraph, GraphError> {
        let mut declared: HashMap<&str, usize> = HashMap::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            if declared.insert(spec.key.as_str(), i).is_some() {
                return Err(GraphError::DuplicateKey {
                    key: spec.key.to_string(),
                });
            }
        }

        // Dependencies by declaration index; everything below works on indices.
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(specs.len());
        for spec in &specs {
            let mut resolved: Vec<usize> = Vec::with_capacity(spec.deps.len());
            for dep in &spec.deps {
                let Some(&d) = declared.get(dep.as_str()) else {
                    return Err(GraphError::UnknownDependency {
                        asset: spec.key.to_string(),
                        dependency: dep.to_string(),
                    });
                };
                if !resolved.contains(&d) {
                    resolved.push(d);
                }
            }
            deps.push(resolved);
        }

        let order =
            kahn_in_declaration_order(&deps).map_err(|stuck| cycle_error(&specs, &deps, &stuck))?;

        let mut position = vec![0; specs.len()];
        for (pos, &decl) in order.iter().enumerate() {
            position[decl] = pos;
        }
        let mut slots: Vec<Option<AssetSpec>> = specs.into_iter().map(Some).collect();
        let mut sorted = Vec::with_capacity(order.len());
        let mut parents = Vec::with_capacity(order.len());
        let mut children = vec![Vec::new(); order.len()];
        for (pos, &decl) in order.iter().enumerate() {
            let Some(mut spec) = slots[decl].take() else {
                unreachable!("Kahn's algorithm emits each asset exactly once");
            };
            let mut kept: Vec<AssetKey> = Vec::with_capacity(spec.deps.len());
            spec.deps.retain(|dep| {
                let first = !kept.contains(dep);
                if first {
                    kept.push(dep.clone());
                }
                first
            });
            let mine: Vec<usize> = deps[decl].iter().map(|&d| position[d]).collect();
            for &parent in &mine {
                // Visiting assets in topological order keeps each children list ascending.
                children[parent].push(pos);
            }
            parents.push(mine);
            sorted.push(spec);
        }
        let index = sorted
            .iter()
            .enumerate()
            .map(|(pos, spec)| (spec.key.to_string(), pos))
            .collect();

        Ok(AssetGraph {
            specs: sorted,
            index,
            parents,
            children,
        })
    }

    /// All specs, in topological order.
    pub fn specs(&self) -> &[AssetSpec] {
        &self.specs
    }

    /// The spec declared under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&AssetSpec> {
        self.index.get(key).map(|&pos| &self.specs[pos])
    }

    /// All keys, in topological order.
    pub fn keys(&self) -> Vec<&AssetKey> {
        self.specs.iter().map(|spec| &spec.key).collect()
    }

    /// Every transitive ancestor of `key`, in topological order, without `key` itself.
    /// Empty when `key` is not in the graph.
    pub fn upstream(&self, key: &AssetKey) -> Vec<AssetKey> {
        self.closure_of(key, &self.parents)
    }

    /// Every transitive descendant of `key`, in topological order, without `key` itself.
    /// Empty when `key` is not in the graph.
    pub fn downstream(&self, key: &AssetKey) -> Vec<AssetKey> {
        self.closure_of(key, &self.children)
    }

    /// The assets that list `key` as a direct dependency, in topological order.
    /// Empty when `key` is not in the graph.
    pub fn dependents(&self, key: &AssetKey) -> Vec<AssetKey> {
        match self.position(key.as_str()) {
            Some(pos) => self.children[pos]
                .iter()
                .map(|&c| self.specs[c].key.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn position(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Marks every ancestor of `pos` (not `pos` itself) in `marked`, which is indexed by
    /// topological position.
    pub(crate) fn mark_upstream(&self, pos: usize, marked: &mut [bool]) {
        mark_reachable(pos, &self.parents, marked);
    }

    /// Marks every descendant of `pos` (not `pos` itself) in `marked`.
    pub(crate) fn mark_downstream(&self, pos: usize, marked: &mut [bool]) {
        mark_reachable(pos, &self.children, marked);
    }

    pub(crate) fn parents_of(&self, pos: usize) -> &[usize] {
        &self.parents[pos]
    }

    /// The keys whose positions are marked, in topological order.
    pub(crate) fn marked_keys(&self, marked: &[bool]) -> Vec<AssetKey> {
        self.specs
            .iter()
            .zip(marked)
            .filter(|(_, &m)| m)
            .map(|(spec, _)| spec.key.clone())
            .collect()
    }

    fn closure_of(&self, key: &AssetKey, edges: &[Vec<usize>]) -> Vec<AssetKey> {
        let Some(pos) = self.position(key.as_str()) else {
            return Vec::new();
        };
        let mut marked = vec![false; self.specs.len()];
        mark_reachable(pos, edges, &mut marked);
        self.marked_keys(&marked)
    }
}

fn mark_reachable(start: usize, edges: &[Vec<usize>], marked: &mut [bool]) {
    // The start node is only marked if a cycle leads back to it, which validation rules out.
    let mut stack: Vec<usize> = edges[start].clone();
    while let Some(next) = stack.pop() {
        if !marked[next] {
            marked[next] = true;
            stack.extend(&edges[next]);
        }
    }
}

/// Kahn's algorithm that always takes the earliest-declared ready asset, so the order depends
/// only on the declarations. On a cycle, returns the declaration indices it could not order.
fn kahn_in_declaration_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut waiting_on: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (asset, asset_deps) in deps.iter().enumerate() {
        for &d in asset_deps {
            dependents[d].push(asset);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(next)) = ready.pop() {
        order.push(next);
        for &dependent in &dependents[next] {
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                ready.push(Reverse(dependent));
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|&i| waiting_on[i] > 0).collect())
    }
}

/// Names one cycle among the assets Kahn's algorithm could not order.
///
/// Each stuck asset waits on at least one other stuck asset, so following "first stuck
/// dependency" links from any of them must revisit a node; the loop from that node on is a
/// cycle. Assets merely downstream of a cycle fall away because the walk leaves them.
fn cycle_error(specs: &[AssetSpec], deps: &[Vec<usize>], stuck: &[usize]) -> GraphError {
    let mut is_stuck = vec![false; specs.len()];
    for &i in stuck {
        is_stuck[i] = true;
    }
    let mut walk: Vec<usize> = Vec::new();
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    let mut current = stuck.first().copied();
    let mut cycle: Vec<usize> = Vec::new();
    while let Some(node) = current {
        if let Some(&start) = seen_at.get(&node) {
            cycle = walk[start..].to_vec();
            break;
        }
        seen_at.insert(node, walk.len());
        walk.push(node);
        current = deps[node].iter().copied().find(|&d| is_stuck[d]);
    }
    // The walk runs against data flow (asset -> its dependency); report it along data flow,
    // like the lineage arrows, starting from the earliest-declared asset on the cycle.
    cycle.reverse();
    if let Some(first) = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &d)| d)
        .map(|(i, _)| i)
    {
        cycle.rotate_left(first);
    }
    let mut path: Vec<String> = cycle.iter().map(|&i| specs[i].key.to_string()).collect();
    if let Some(first) = path.first().cloned() {
        path.push(first);
    }
    GraphError::Cycle { path }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(key: &str, deps: &[&str], group: &str) -> AssetSpec {
        AssetSpec {
            key: AssetKey::new(key).unwrap(),
            deps: deps.iter().map(|d| AssetKey::new(*d).unwrap()).collect(),
            group: group.to_owned(),
            code_version: "1".to_owned(),
            description: format!("test asset {key}"),
        }
    }

    fn k(key: &str) -> AssetKey {
        AssetKey::new(key).unwrap()
    }

    fn strs(keys: &[AssetKey]) -> Vec<&str> {
        keys.iter().map(AssetKey::as_str).collect()
    }

    /// The brief's example graph, declared out of dependency order on purpose, plus an
    /// unrelated branch (`bronze/landing_files` -> `silver/file_audit`).
    pub(crate) fn market_graph() -> AssetGraph {
        AssetGraph::new(vec![
            spec("gold/market_daily", &["gold/returns"], "gold"),
            spec("bronze/prices", &[], "bronze"),
            spec("bronze/landing_files", &[], "bronze"),
            spec("silver/prices", &["bronze/prices"], "silver"),
            spec("gold/returns", &["silver/prices"], "gold"),
            spec("silver/file_audit", &["bronze/landing_files"], "silver"),
        ])
        .unwrap()
    }

    #[test]
    fn topological_order_breaks_ties_by_declaration() {
        let graph = market_graph();
        let keys: Vec<&str> = graph.keys().iter().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bronze/prices",
                "bronze/landing_files",
                "silver/prices",
                "gold/returns",
                "gold/market_daily",
                "silver/file_audit",
            ]
        );
        let from_specs: Vec<&str> = graph.specs().iter().map(|s| s.key.as_str()).collect();
        assert_eq!(from_specs, keys);
    }

    #[test]
    fn declaration_order_is_kept_when_nothing_depends() {
        let graph = AssetGraph::new(vec![
            spec("c", &[], "g"),
            spec("a", &[], "g"),
            spec("b", &[], "g"),
        ])
        .unwrap();
        let keys: Vec<&str> = graph.keys().iter().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["c", "a", "b"]);
    }

    #[test]
    fn earliest_declared_ready_node_wins_over_depth_first() {
        // A depth-first order would put d right after a; Kahn with declaration tiebreak
        // releases d only after the earlier-declared b and c.
        let graph = AssetGraph::new(vec![
            spec("d", &["a"], "g"),
            spec("a", &[], "g"),
            spec("b", &[], "g"),
            spec("c", &["b"], "g"),
        ])
        .unwrap();
        let keys: Vec<&str> = graph.keys().iter().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["a", "d", "b", "c"]);
    }

    #[test]
    fn empty_graph_is_fine() {
        let graph = AssetGraph::new(Vec::new()).unwrap();
        assert!(graph.specs().is_empty());
        assert!(graph.keys().is_empty());
    }

    #[test]
    fn get_finds_specs_by_key() {
        let graph = market_graph();
        let spec = graph.get("silver/prices").unwrap();
        assert_eq!(spec.group, "silver");
        assert_eq!(strs(&spec.deps), ["bronze/prices"]);
        assert!(graph.get("silver/nope").is_none());
        assert!(graph.get("").is_none());
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let err = AssetGraph::new(vec![
            spec("a", &[], "g"),
            spec("b", &[], "g"),
            spec("a", &[], "h"),
        ])
        .unwrap_err();
        assert_eq!(err, GraphError::DuplicateKey { key: "a".into() });
        assert!(err.to_string().contains("`a`"), "{err}");
    }

    #[test]
    fn unknown_dependency_names_both_assets() {
        let err = AssetGraph::new(vec![
            spec("bronze/prices", &[], "bronze"),
            spec("silver/prices", &["bronze/pricez"], "silver"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            GraphError::UnknownDependency {
                asset: "silver/prices".into(),
                dependency: "bronze/pricez".into(),
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("`silver/prices`"), "{msg}");
        assert!(msg.contains("`bronze/pricez`"), "{msg}");
    }

    #[test]
    fn two_node_cycle_is_named() {
        let err =
            AssetGraph::new(vec![spec("a", &["b"], "g"), spec("b", &["a"], "g")]).unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                path: vec!["a".into(), "b".into(), "a".into()]
            }
        );
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");
    }

    #[test]
    fn cycle_path_follows_data_flow_and_skips_bystanders() {
        // `x` sits downstream of the cycle and `ok` beside it; neither belongs in the path.
        let err = AssetGraph::new(vec![
            spec("x", &["b"], "g"),
            spec("ok", &[], "g"),
            spec("a", &["c", "ok"], "g"),
            spec("b", &["a"], "g"),
            spec("c", &["b"], "g"),
        ])
        .unwrap_err();
        // b reads a, c reads b, a reads c.
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let err =
            AssetGraph::new(vec![spec("a", &[], "g"), spec("b", &["a", "b"], "g")]).unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                path: vec!["b".into(), "b".into()]
            }
        );
    }

    #[test]
    fn repeated_dependency_is_kept_once() {
        let graph =
            AssetGraph::new(vec![spec("a", &[], "g"), spec("b", &["a", "a"], "g")]).unwrap();
        assert_eq!(strs(&graph.get("b").unwrap().deps), ["a"]);
        assert_eq!(strs(&graph.dependents(&k("a"))), ["b"]);
    }

    #[test]
    fn upstream_downstream_and_dependents() {
        let graph = market_graph();
        assert_eq!(
            strs(&graph.upstream(&k("gold/market_daily"))),
            ["bronze/prices", "silver/prices", "gold/returns"]
        );
        assert!(graph.upstream(&k("bronze/prices")).is_empty());
        assert_eq!(
            strs(&graph.downstream(&k("bronze/prices"))),
            ["silver/prices", "gold/returns", "gold/market_daily"]
        );
        assert_eq!(
            strs(&graph.downstream(&k("bronze/landing_files"))),
            ["silver/file_audit"]
        );
        assert_eq!(
            strs(&graph.dependents(&k("bronze/prices"))),
            ["silver/prices"]
        );
        assert!(graph.dependents(&k("gold/market_daily")).is_empty());
        assert!(graph.upstream(&k("not/here")).is_empty());
        assert!(graph.downstream(&k("not/here")).is_empty());
        assert!(graph.dependents(&k("not/here")).is_empty());
    }

    #[test]
    fn diamond_ancestors_appear_once_in_topological_order() {
        let graph = AssetGraph::new(vec![
            spec("top", &["left", "right"], "g"),
            spec("right", &["root"], "g"),
            spec("left", &["root"], "g"),
            spec("root", &[], "g"),
        ])
        .unwrap();
        assert_eq!(strs(&graph.upstream(&k("top"))), ["root", "right", "left"]);
        assert_eq!(
            strs(&graph.downstream(&k("root"))),
            ["right", "left", "top"]
        );
        assert_eq!(strs(&graph.dependents(&k("root"))), ["right", "left"]);
    }
}
