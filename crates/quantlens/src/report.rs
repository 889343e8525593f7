//! `quantlens report --out FILE` (and `materialize --report FILE`): the status page as one
//! self-contained HTML file, to mail or to publish on a bucket after the nightly run. It is the
//! trigger daemon's page (quantlens-page) with the answers its API would give inlined: the
//! catalog, the health verdict, the recent runs with their events and the end of their logs.
//! Opened from `file://` it makes no request.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use quantlens_engine::Registry;
use quantlens_lake::Lake;
use quantlens_runs::{replace_atomically, StateDir};
use serde_json::{json, Map, Value};

use crate::health::FreshnessArgs;
use crate::{Failure, Locations};

#[derive(Args)]
pub struct ReportArgs {
    /// Where to write the HTML file (replaced atomically, so a web server never serves half).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    options: ReportOptions,
}

/// What a report holds beyond the catalog; shared with `materialize --report`.
#[derive(Args, Clone)]
pub struct ReportOptions {
    /// The rule of the report's health banner.
    #[command(flatten)]
    pub freshness: FreshnessArgs,
    /// How many recent runs the report holds, each with its events and the end of its log.
    #[arg(long = "report-runs", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=50), value_name = "N")]
    pub runs: u16,
}

pub async fn run(locations: &Locations, args: ReportArgs) -> Result<i32, Failure> {
    let registry: Registry = locations.registry()?;
    let lake: Lake = locations.lake()?;
    let state = StateDir::new(&locations.state_dir);
    let catalog = crate::catalog::build(&registry, &lake, &state, None).await?;
    write(
        &state,
        &locations.data_root,
        catalog,
        &args.out,
        &args.options,
    )?;
    println!("wrote {}", args.out.display());
    Ok(quantlens_runs::exit::SUCCEEDED)
}

/// Writes the report of `catalog` and the runs in `state` to `out`.
pub fn write(
    state: &StateDir,
    data_root: &str,
    catalog: Value,
    out: &Path,
    options: &ReportOptions,
) -> anyhow::Result<()> {
    let html = quantlens_page::report(&Value::Object(responses(
        state, data_root, catalog, options,
    )?));
    replace_atomically(out, html.as_bytes())
        .with_context(|| format!("writing the report {}", out.display()))?;
    Ok(())
}

/// The API's answers the page asks for, keyed by path exactly as the script asks for them.
fn responses(
    state: &StateDir,
    data_root: &str,
    catalog: Value,
    options: &ReportOptions,
) -> anyhow::Result<Map<String, Value>> {
    let now = chrono::Utc::now();
    let health = options.freshness.judge(state, data_root);
    let runs = if state.root().is_dir() {
        state.list_runs(usize::from(options.runs))?
    } else {
        Vec::new()
    };
    let mut responses = Map::new();
    responses.insert("generated_at".into(), json!(now.to_rfc3339()));
    responses.insert("/status".into(), serde_json::to_value(&health)?);
    responses.insert("/assets".into(), catalog);
    for record in &runs {
        let id = &record.run_id;
        let files = state.run_files(id);
        let tail = quantlens_page::LOG_TAIL;
        responses.insert(format!("/runs/{id}"), serde_json::to_value(record)?);
        responses.insert(
            format!("/runs/{id}/events"),
            json!({"run_id": id, "events": files.read_events(usize::MAX)?}),
        );
        responses.insert(
            format!("/runs/{id}/log?tail={tail}"),
            json!({"run_id": id, "tail": tail, "log": files.read_log_tail(tail)?}),
        );
    }
    responses.insert(
        format!("/runs?limit={}", quantlens_page::RUNS_SHOWN),
        json!({ "runs": runs }),
    );
    Ok(responses)
}
