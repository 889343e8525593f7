//! The registry holds every asset definition and the validated graph over their specs, built once
//! at start-up so a bad definition (unknown dependency, cycle) fails before any work starts.

use std::collections::HashMap;

use quantlens_graph::{AssetGraph, GraphError};

use crate::Asset;

pub struct Registry {
    graph: AssetGraph,
    assets: HashMap<String, Asset>,
}

impl Registry {
    pub fn new(assets: Vec<Asset>) -> Result<Registry, GraphError> {
        let graph = AssetGraph::new(assets.iter().map(|a| a.spec.clone()).collect())?;
        let assets = assets
            .into_iter()
            .map(|asset| (asset.spec.key.to_string(), asset))
            .collect();
        Ok(Registry { graph, assets })
    }

    pub fn graph(&self) -> &AssetGraph {
        &self.graph
    }

    pub fn get(&self, key: &str) -> Option<&Asset> {
        self.assets.get(key)
    }

    /// Assets in topological order.
    pub fn assets(&self) -> impl Iterator<Item = &Asset> {
        self.graph
            .specs()
            .iter()
            .map(|spec| &self.assets[spec.key.as_str()])
    }

    /// Every table the assets write: their own, then their side tables, in topological order.
    pub fn tables(&self) -> Vec<String> {
        self.assets()
            .flat_map(|asset| {
                std::iter::once(asset.spec.key.to_string()).chain(asset.side_tables.iter().cloned())
            })
            .collect()
    }
}
