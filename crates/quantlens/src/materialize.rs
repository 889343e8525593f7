//! `quantlens materialize`: take the run lock (or adopt the one the trigger daemon handed over),
//! record the run, execute the selection, print a summary, prune old runs, exit with the run's code.

use anyhow::anyhow;
use clap::Args;
use quantlens_engine::{DateRange, RunOptions};
use quantlens_lake::FileStore;
use quantlens_pipeline::demo::{write_demo, DemoOptions};
use quantlens_pipeline::landing::is_candidate;
use quantlens_runs::{exit, RunId, RunLock, RunRecord, RunStatus, StateDir, DEFAULT_RETENTION};

use crate::output::print_table;
use crate::{fail, state_failure, take_run_lock, Failure, Locations};

#[derive(Args)]
pub struct MaterializeArgs {
    /// Which assets: `*` (all), `key`, `key+` (and downstream), `+key` (and upstream),
    /// `group:silver`, or a comma-separated union of those.
    #[arg(long, default_value = "*")]
    select: String,
    /// Use this run id instead of a generated one ([A-Za-z0-9][A-Za-z0-9._-]{0,63}).
    #[arg(long)]
    run_id: Option<String>,
    /// Skip assets whose tables are already up to date with their inputs and code.
    #[arg(long)]
    stale: bool,
    /// Rebuild the selected tables from scratch instead of updating them incrementally (bronze
    /// also re-reads every landing file instead of trusting name, size and modification time).
    #[arg(long)]
    full_refresh: bool,
    /// Backfill: re-derive silver/prices for the dates from FROM to TO (YYYY-MM-DD, widened to
    /// whole months) from every bronze row, a year at a time, after catching up; gold follows.
    /// An interrupted backfill resumes where it stopped when run again with the same range.
    #[arg(long, requires = "to", value_name = "FROM")]
    from: Option<chrono::NaiveDate>,
    /// Last date of the backfill (see --from).
    #[arg(long, requires = "from", value_name = "TO")]
    to: Option<chrono::NaiveDate>,
    /// Write the demo landing data first when LANDING_DIR holds no files.
    #[arg(long)]
    demo: bool,
    /// Who started the run, recorded in run.json (cli, http, timer, ...).
    #[arg(long, env = "QUANTLENS_TRIGGER", default_value = "cli")]
    trigger: String,
    /// At the end of the run, also write the status report (see `quantlens report`) to FILE; a
    /// report that cannot be written is a warning, not a failed run.
    #[arg(long, env = "QUANTLENS_REPORT", value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    #[command(flatten)]
    report_options: crate::report::ReportOptions,
    /// Run records to keep in STATE_DIR; older ones are deleted.
    #[arg(long, env = "QUANTLENS_KEEP_RUNS", default_value_t = DEFAULT_RETENTION)]
    keep_runs: usize,
}

pub async fn run(locations: &Locations, args: MaterializeArgs) -> Result<i32, Failure> {
    let registry = locations.registry()?;
    let selected: Vec<String> = registry
        .graph()
        .select(&args.select)?
        .into_iter()
        .map(|k| k.to_string())
        .collect();
    let range = match (args.from, args.to) {
        (Some(from), Some(to)) if from > to => {
            return Err(fail(
                exit::USAGE,
                anyhow!("--from {from} is after --to {to}"),
            ))
        }
        (Some(_), Some(_)) if args.full_refresh => {
            return Err(fail(
                exit::USAGE,
                anyhow!("--from/--to and --full-refresh exclude each other: a full refresh rebuilds every date"),
            ))
        }
        (Some(_), Some(_)) if !selected.iter().any(|k| k == quantlens_pipeline::silver::PRICES) => {
            return Err(fail(
                exit::USAGE,
                anyhow!(
                    "--from/--to re-derives `{}` from bronze (gold follows); select it, e.g. --select '{}+'",
                    quantlens_pipeline::silver::PRICES,
                    quantlens_pipeline::silver::PRICES
                ),
            ))
        }
        (Some(from), Some(to)) => Some(DateRange { from, to }),
        _ => None,
    };
    let lake = locations.lake()?;
    let state = StateDir::new(&locations.state_dir);
    state.create().map_err(state_failure)?;
    let run_id = match &args.run_id {
        Some(id) => RunId::parse(id)?,
        None => RunId::generate(),
    };
    let inherited = RunLock::inherited(&state)?;
    if state.run_dir(&run_id).exists() && !handed_over(&state, &run_id, inherited.is_some()) {
        return Err(anyhow!("run id `{run_id}` was already used; pick another").into());
    }

    let mut lock = match inherited {
        Some(lock) => lock,
        None => take_run_lock(&state, &run_id)?,
    };
    lock.set_holder(&run_id).map_err(state_failure)?;
    // Every command that commits to the lake takes the lock first (nothing was loaded before).
    lake.assume_sole_writer();

    if args.demo {
        seed_demo_data(locations).await?;
    }
    for orphan in state.mark_orphans_crashed(&run_id).map_err(state_failure)? {
        eprintln!("note: run {orphan} had died without finishing; recorded as crashed");
    }

    let files = state.run_files(&run_id);
    let record = RunRecord::new(run_id.clone(), &args.trigger, &args.select);
    files.write_record(&record).map_err(state_failure)?;
    let options = RunOptions {
        selected,
        only_stale: args.stale,
        full_refresh: args.full_refresh,
        range,
        log_to_file: std::env::var_os("QUANTLENS_LOG_CAPTURED").is_none(),
    };
    let record = quantlens_engine::run(&registry, &lake, &files, record, &options)
        .await
        .map_err(|e| fail(exit::FAILED, e.into()))?;

    print_summary(&record);
    crate::notify::after_run(&record).await;
    // What the daemon shows of every asset; a run whose catalog or report cannot be written
    // still counts.
    let catalog = crate::catalog::write_snapshot(&registry, &lake, &state, &record).await;
    if let Err(err) = &catalog {
        eprintln!(
            "warning: writing {}: {err:#}",
            state.catalog_path().display()
        );
    }
    if let Err(err) = state.prune(args.keep_runs.max(1), Some(&run_id)) {
        eprintln!("warning: pruning old runs: {err:#}");
    }
    drop(lock);
    // After the lock is released, so that the report does not show this run as in progress.
    if let (Some(path), Ok(catalog)) = (&args.report, catalog) {
        match crate::report::write(
            &state,
            &locations.data_root,
            catalog,
            path,
            &args.report_options,
        ) {
            Ok(()) => eprintln!("report written to {}", path.display()),
            Err(err) => eprintln!("warning: {err:#}"),
        }
    }
    Ok(record.exit_code.unwrap_or(exit::FAILED))
}

/// A supervisor (the trigger daemon) that takes the lock and hands it over also writes the run's
/// `starting` record first, so the run is visible the moment it answers; the worker takes it over.
fn handed_over(state: &StateDir, run_id: &RunId, lock_inherited: bool) -> bool {
    lock_inherited
        && state
            .run_files(run_id)
            .read_record()
            .is_ok_and(|record| record.status == RunStatus::Starting)
}

/// `--demo`: a fresh clone has no landing files; give it the default demo set.
async fn seed_demo_data(locations: &Locations) -> Result<(), Failure> {
    let landing = FileStore::open(&locations.landing()?)?;
    if landing.list().await?.iter().any(|f| is_candidate(&f.name)) {
        return Ok(());
    }
    let summary = write_demo(&landing, &DemoOptions::default()).await?;
    eprintln!(
        "landing was empty: wrote {} demo files ({} rows) to {}",
        summary.files,
        summary.rows,
        landing.url()
    );
    Ok(())
}

fn print_summary(record: &RunRecord) {
    let rows: Vec<Vec<String>> = record
        .assets
        .iter()
        .map(|asset| {
            let seconds = match (asset.started_at, asset.finished_at) {
                (Some(start), Some(end)) => {
                    format!("{:.2}", (end - start).num_milliseconds() as f64 / 1000.0)
                }
                _ => "-".into(),
            };
            vec![
                asset.key.clone(),
                asset.status.as_str().to_string(),
                asset.rows_written.map_or("-".into(), |r| r.to_string()),
                asset.table_version.map_or("-".into(), |v| v.to_string()),
                seconds,
                asset.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!("run {} {}", record.run_id, record.status);
    print_table(
        &["asset", "status", "rows", "version", "seconds", "note"],
        &rows,
    );
}
