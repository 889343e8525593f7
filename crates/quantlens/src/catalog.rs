//! What the lake says of every asset, as data: the rows of `quantlens assets`, and the catalog
//! snapshot the worker leaves in STATE_DIR at the end of each run (`catalog.json`: every asset
//! with its table, freshness, kind and last run's checks, plus the lineage edges), which the
//! trigger daemon serves as `GET /assets` without ever opening the lake.

use std::collections::BTreeSet;

use quantlens_engine::{asset_freshness, Asset, Freshness, Registry};
use quantlens_lake::{At, Lake, Table};
use quantlens_runs::{RunRecord, StateDir};
use serde_json::{json, Value};

/// One entry per table (assets first, each followed by its side tables), in dependency order.
pub async fn entries(registry: &Registry, lake: &Lake) -> anyhow::Result<Vec<Value>> {
    // Every table and verdict is read at once (each a few small reads of its log), then the
    // entries are put together in dependency order, so an upstream's state is known before its
    // dependents'.
    let facts =
        futures::future::try_join_all(registry.assets().map(|asset| facts(asset, lake))).await?;
    let mut entries = Vec::new();
    let mut stale = BTreeSet::new();
    for (asset, facts) in registry.assets().zip(facts) {
        let stale_upstream: Vec<String> = asset
            .spec
            .deps
            .iter()
            .filter(|d| stale.contains(d.as_str()))
            .map(|d| format!("upstream {d} is stale"))
            .collect();
        let freshness = match facts.freshness {
            Freshness::Stale(mut reasons) => {
                reasons.extend(stale_upstream);
                Freshness::Stale(reasons)
            }
            Freshness::Fresh if !stale_upstream.is_empty() => Freshness::Stale(stale_upstream),
            fresh => fresh,
        };
        // Bronze reads landing files and is always "stale"; that alone says nothing about its
        // dependents.
        if !freshness.is_fresh() && !asset.spec.deps.is_empty() {
            stale.insert(asset.spec.key.to_string());
        }
        let tables = std::iter::once((asset.spec.key.to_string(), freshness.describe())).chain(
            asset
                .side_tables
                .iter()
                .map(|t| (t.clone(), format!("written with {}", asset.spec.key))),
        );
        for ((key, state), table) in tables.zip(facts.tables) {
            let is_asset = key == asset.spec.key.as_str();
            entries.push(json!({
                "table": key,
                "layer": key.split('/').next().unwrap_or_default(),
                "kind": if asset.defined_in.is_some() { "sql" } else { "rust" },
                "defined_in": asset.defined_in,
                "description": if is_asset { asset.spec.description.as_str() } else { "" },
                "group": asset.spec.group,
                "deps": if is_asset { json!(asset.spec.deps) } else { json!([]) },
                "side_table_of": if is_asset { Value::Null } else { json!(asset.spec.key) },
                "code_version": asset.spec.code_version,
                "last_materialized": table.as_ref().and_then(|t| t.version_timestamp()).map(|t| t.to_rfc3339()),
                "version": table.as_ref().map(|t| t.version()),
                "rows": table.as_ref().map(|t| t.row_count()).transpose()?,
                "state": state,
            }));
        }
    }
    Ok(entries)
}

/// What the lake says of one asset on its own: its tables (the asset's, then its side tables')
/// and whether it is fresh with respect to its direct upstream.
struct Facts {
    tables: Vec<Option<Table>>,
    freshness: Freshness,
}

async fn facts(asset: &Asset, lake: &Lake) -> anyhow::Result<Facts> {
    let mut tables = vec![lake.load(asset.spec.key.as_str(), At::Latest).await?];
    for side in &asset.side_tables {
        tables.push(lake.load(side, At::Latest).await?);
    }
    let freshness = asset_freshness(asset, lake)
        .await
        .unwrap_or_else(|e| Freshness::Stale(vec![e.message]));
    Ok(Facts { tables, freshness })
}

/// Writes `catalog.json` after `record`'s run (see [`build`]) and returns it.
pub async fn write_snapshot(
    registry: &Registry,
    lake: &Lake,
    state: &StateDir,
    record: &RunRecord,
) -> anyhow::Result<Value> {
    let catalog = build(registry, lake, state, Some(record)).await?;
    state.write_catalog(&catalog)?;
    Ok(catalog)
}

/// The catalog: every table's entry with the last run that materialised it (`record`, or the
/// one the previous snapshot named), and the lineage edges.
pub async fn build(
    registry: &Registry,
    lake: &Lake,
    state: &StateDir,
    record: Option<&RunRecord>,
) -> anyhow::Result<Value> {
    let previous: Option<Value> = state
        .read_catalog()?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut tables = entries(registry, lake).await?;
    for entry in &mut tables {
        let key = entry["table"].as_str().unwrap_or_default().to_string();
        let this_run = record.and_then(|record| {
            let a = record.assets.iter().find(|a| a.key == key)?;
            Some(json!({
                "run_id": record.run_id, "status": a.status, "finished_at": a.finished_at,
                "checks": a.checks, "error": a.error,
            }))
        });
        let earlier = previous.as_ref().and_then(|p| {
            p["assets"]
                .as_array()?
                .iter()
                .find(|e| e["table"] == key.as_str())
                .map(|e| e["last_run"].clone())
        });
        entry["last_run"] = this_run.or(earlier).unwrap_or(Value::Null);
    }
    let edges: Vec<Value> = registry
        .graph()
        .edges()
        .into_iter()
        .map(|(from, to)| json!([from, to]))
        .collect();
    Ok(json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "run_id": match record {
            Some(record) => json!(record.run_id),
            None => previous.as_ref().map_or(Value::Null, |p| p["run_id"].clone()),
        },
        "assets": tables,
        "edges": edges,
    }))
}
