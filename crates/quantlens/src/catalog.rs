//! What the lake says of every asset, as data: the rows of `quantlens assets`, and the catalog
//! snapshot the worker leaves in STATE_DIR at the end of each run (`catalog.json`: every asset
//! with its table, freshness, kind and last run's checks, plus the lineage edges), which the
//! trigger daemon serves as `GET /assets` without ever opening the lake.

use std::collections::BTreeSet;

use quantlens_engine::{asset_freshness, Freshness, Registry};
use quantlens_lake::{At, Lake};
use quantlens_runs::{RunRecord, StateDir};
use serde_json::{json, Value};

/// One entry per table (assets first, each followed by its side tables), in dependency order.
pub async fn entries(registry: &Registry, lake: &Lake) -> anyhow::Result<Vec<Value>> {
    let mut entries = Vec::new();
    // Assets come in dependency order, so an upstream's state is known before its dependents'.
    let mut stale = BTreeSet::new();
    for asset in registry.assets() {
        let tables = std::iter::once((asset.spec.key.to_string(), true))
            .chain(asset.side_tables.iter().map(|t| (t.clone(), false)));
        for (key, is_asset) in tables {
            let table = lake.load(&key, At::Latest).await?;
            let state = if is_asset {
                let stale_upstream: Vec<String> = asset
                    .spec
                    .deps
                    .iter()
                    .filter(|d| stale.contains(d.as_str()))
                    .map(|d| format!("upstream {d} is stale"))
                    .collect();
                let freshness = match asset_freshness(asset, lake).await {
                    Ok(Freshness::Stale(mut reasons)) => {
                        reasons.extend(stale_upstream);
                        Freshness::Stale(reasons)
                    }
                    Ok(Freshness::Fresh) if !stale_upstream.is_empty() => {
                        Freshness::Stale(stale_upstream)
                    }
                    Ok(fresh) => fresh,
                    Err(e) => Freshness::Stale(vec![e.message]),
                };
                // Bronze reads landing files and is always "stale"; that alone says nothing
                // about its dependents.
                if !freshness.is_fresh() && !asset.spec.deps.is_empty() {
                    stale.insert(key.clone());
                }
                freshness.describe()
            } else {
                format!("written with {}", asset.spec.key)
            };
            entries.push(json!({
                "table": key,
                "layer": key.split('/').next().unwrap_or_default(),
                "kind": if asset.defined_in.is_some() { "sql" } else { "rust" },
                "defined_in": asset.defined_in,
                "description": if is_asset { asset.spec.description.as_str() } else { "" },
                "group": asset.spec.group,
                "deps": if is_asset { json!(asset.spec.deps) } else { json!([]) },
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

/// Writes `catalog.json` after `record`'s run: every table's entry with the last run that
/// materialised it (this one, or the one the previous snapshot named), and the lineage edges.
pub async fn write_snapshot(
    registry: &Registry,
    lake: &Lake,
    state: &StateDir,
    record: &RunRecord,
) -> anyhow::Result<()> {
    let previous: Option<Value> = state
        .read_catalog()?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut tables = entries(registry, lake).await?;
    for entry in &mut tables {
        let key = entry["table"].as_str().unwrap_or_default().to_string();
        let this_run = record.assets.iter().find(|a| a.key == key).map(|a| {
            json!({
                "run_id": record.run_id, "status": a.status, "finished_at": a.finished_at,
                "checks": a.checks, "error": a.error,
            })
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
    state.write_catalog(&json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "run_id": record.run_id,
        "assets": tables,
        "edges": edges,
    }))?;
    Ok(())
}
