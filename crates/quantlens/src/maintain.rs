//! `quantlens maintain`: the weekly upkeep of every table (compaction, checkpoint, vacuum; see
//! `quantlens_lake::maintain`), under the run lock so no materialisation commits meanwhile.

use clap::Args;
use quantlens_lake::maintain::maintain;
use quantlens_runs::{exit, RunId, StateDir};

use crate::output::print_table;
use crate::{fail, take_run_lock, Failure, Locations};

#[derive(Args)]
pub struct MaintainArgs {
    /// Files smaller than this (MiB) are compacted when a table has more than one of them.
    #[arg(long, default_value_t = 32)]
    small_file_mb: u64,
    /// Vacuum deletes files that no version of the last this-many hours references; time travel
    /// reaches back no further afterwards.
    #[arg(long, default_value_t = 168)]
    vacuum_retention_hours: i64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(locations: &Locations, args: MaintainArgs) -> Result<i32, Failure> {
    let lake = locations.lake()?;
    let tables = locations.tables()?;
    let holder = RunId::parse(&format!(
        "maintain-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ))?;
    let _lock = take_run_lock(&StateDir::new(&locations.state_dir), &holder)?;
    let retention = chrono::Duration::hours(args.vacuum_retention_hours.max(0));
    let mut reports = Vec::new();
    for key in &tables {
        let report = maintain(&lake, key, args.small_file_mb << 20, retention)
            .await
            .map_err(|e| fail(exit::FAILED, e.into()))?;
        reports.extend(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(exit::SUCCEEDED);
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.table.clone(),
                format!("{} -> {}", r.files_before, r.files_after),
                r.compacted_version.map_or("-".into(), |v| v.to_string()),
                r.checkpoint_version.to_string(),
                r.files_vacuumed.to_string(),
            ]
        })
        .collect();
    print_table(
        &["table", "files", "compacted at", "checkpoint", "vacuumed"],
        &rows,
    );
    Ok(exit::SUCCEEDED)
}
