//! The engine runs a plan of assets. An [`Asset`] is a graph spec plus what it takes to
//! materialise it: a declared output schema, checks, a retry policy and an async compute
//! function. [`Registry`] validates the graph once at start-up; [`run`] executes a selection in
//! dependency order, retrying transient failures, refusing output that drifts from the declared
//! schema or fails a blocking check, committing each asset to the lake with its lineage, skipping
//! downstream of failures, and keeping the run record and event log current at every step.

mod asset;
mod check;
pub mod dates;
mod freshness;
pub mod incremental;
mod registry;
mod retry;
mod runner;
mod validate;

pub use asset::{
    Asset, AssetContext, AssetError, ComputeFn, DateRange, ErrorKind, Materialization, Outcome,
    Output, OutputSchema, Progress, SideWrite,
};
pub use check::{Check, CheckFn};
pub use freshness::{freshness, Freshness};
pub use registry::Registry;
pub use retry::RetryPolicy;
pub use runner::{asset_freshness, run, RunOptions};
