//! The QuantLens price pipeline: the assets the worker materialises by default, from landing CSV
//! files to the gold tables the frontend reads, plus the demo data generator.
//!
//! ```text
//! landing/*.csv -> bronze/prices (+ bronze/landing_files) -> silver/prices (+ silver/prices_rejects)
//!               -> gold/returns (Polars) -> gold/market_daily
//! ```

pub mod bronze;
mod columns;
pub mod demo;
pub mod gold;
pub mod landing;
pub mod ledger;
mod rejects;
pub mod rules;
pub mod silver;

use quantlens_engine::{Asset, Registry};

/// Where the pipeline finds its inputs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// LANDING_DIR: a path or URL holding the delivered CSV files.
    pub landing: String,
}

/// Every asset of the pipeline, in declaration order.
pub fn assets(config: &PipelineConfig) -> Vec<Asset> {
    vec![
        bronze::asset(config.landing.clone()),
        silver::asset(),
        gold::returns_asset(),
        gold::market_daily_asset(),
    ]
}

/// The validated registry of the pipeline's assets.
pub fn registry(config: &PipelineConfig) -> Registry {
    Registry::new(assets(config)).expect("the built-in asset graph is valid (checked by tests)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_graph_is_valid_and_ordered() {
        let registry = Registry::new(assets(&PipelineConfig {
            landing: "/tmp/x".into(),
        }))
        .unwrap();
        let keys: Vec<String> = registry
            .graph()
            .keys()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "bronze/prices",
                "silver/prices",
                "gold/returns",
                "gold/market_daily"
            ]
        );
        assert_eq!(
            registry.tables(),
            [
                "bronze/prices",
                "bronze/landing_files",
                "silver/prices",
                "silver/prices_rejects",
                "gold/returns",
                "gold/market_daily"
            ]
        );
    }
}
