//! The asset graph at the heart of QuantLens: asset keys such as `silver/prices`, the specs
//! that declare each asset's dependencies, group and code version, and the graph built from
//! them. Building a graph validates it (unique keys, known dependencies, no cycles) and fixes
//! one deterministic topological order that every other part of the platform plans against.
//! On top of that order sit Dagster-style selection syntax (`+silver/prices+`,
//! `group:gold`, ...) and lineage renderings (Mermaid, Graphviz dot, edge lists). Everything
//! here is pure computation with no I/O, so it can run anywhere, including on untrusted input.

mod error;
mod graph;
mod key;
mod lineage;
mod selection;

pub use crate::error::GraphError;
pub use crate::graph::{AssetGraph, AssetSpec};
pub use crate::key::AssetKey;
pub use crate::selection::is_selection_syntax;
