//! `quantlens`: the worker (`materialize`) and the operator's CLI over the lake and the run records.
//! Every command reads its locations from flags or the environment (DATA_ROOT, LANDING_DIR,
//! STATE_DIR) with defaults that work from a fresh clone. Exit codes: 0 success, 1 run failed,
//! 2 usage or configuration error, 75 another run holds the lock.

mod allocator;
mod backup;
mod catalog;
mod health;
mod inspect;
mod maintain;
mod materialize;
mod notify;
mod output;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use quantlens_engine::Registry;
use quantlens_lake::{resolve_root, Lake};
use quantlens_pipeline::PipelineConfig;
use quantlens_runs::exit;

#[derive(Parser)]
#[command(
    name = "quantlens",
    version,
    about = "Materialise the QuantLens asset graph into Delta Lake, and inspect it.",
    long_about = "Materialise the QuantLens asset graph (landing CSV -> bronze -> silver -> gold) into \
Delta Lake tables under DATA_ROOT, and inspect tables, lineage and runs.\n\n\
Exit codes: 0 success, 1 run failed, 2 usage or configuration error, 75 another run holds the lock."
)]
struct Cli {
    #[command(flatten)]
    locations: Locations,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Locations {
    /// Where the Delta tables live: a local directory, or s3://bucket/prefix (endpoint, region and
    /// keys from the AWS_* variables or the file named by QUANTLENS_S3_CREDENTIALS).
    #[arg(long, env = "DATA_ROOT", default_value = "./data", global = true)]
    data_root: String,
    /// Where landing CSV files arrive, local or s3:// [default: <DATA_ROOT>/landing/prices].
    #[arg(long, env = "LANDING_DIR", global = true)]
    landing_dir: Option<String>,
    /// Local directory for run records and the run lock.
    #[arg(long, env = "STATE_DIR", default_value = "./state", global = true)]
    state_dir: PathBuf,
    /// Folder of SQL assets (`*.sql`, the key is the path: gold/x.sql is gold/x), loaded at run
    /// time [default: ./assets when that folder exists].
    #[arg(long, env = "ASSETS_DIR", global = true)]
    assets_dir: Option<PathBuf>,
}

/// Where SQL assets live in a clone when ASSETS_DIR is not set.
const DEFAULT_ASSETS_DIR: &str = "./assets";

impl Locations {
    fn lake(&self) -> anyhow::Result<Lake> {
        Lake::open(&self.data_root).map_err(Into::into)
    }

    fn landing(&self) -> anyhow::Result<String> {
        match &self.landing_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(resolve_root(&self.data_root)?
                .join("landing/prices/")
                .context("building the default LANDING_DIR")?
                .to_string()),
        }
    }

    fn pipeline(&self) -> anyhow::Result<PipelineConfig> {
        Ok(PipelineConfig {
            landing: self.landing()?,
        })
    }

    /// ASSETS_DIR, if there is one. A folder named explicitly must exist; the default one may not.
    fn assets_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(match &self.assets_dir {
            Some(dir) if !dir.is_dir() => {
                anyhow::bail!("ASSETS_DIR {} is not a directory", dir.display())
            }
            Some(dir) => Some(dir.clone()),
            None if Path::new(DEFAULT_ASSETS_DIR).is_dir() => {
                Some(PathBuf::from(DEFAULT_ASSETS_DIR))
            }
            None => None,
        })
    }

    /// The SQL assets of ASSETS_DIR, validated against the built-in assets.
    fn sql_assets(
        &self,
        builtin: &[quantlens_engine::Asset],
    ) -> anyhow::Result<Vec<Arc<quantlens_sql::SqlAsset>>> {
        match self.assets_dir()? {
            Some(dir) => Ok(quantlens_sql::load_dir(&dir, builtin)?),
            None => Ok(Vec::new()),
        }
    }

    /// Every table, for the commands that keep the lake safe (`backup`, `maintain`): those of
    /// the validated graph, or while a SQL file is broken, the built-in tables plus the key of
    /// every SQL file, so that one bad file never stops a backup.
    fn tables(&self) -> anyhow::Result<Vec<String>> {
        match self.registry() {
            Ok(registry) => Ok(registry.tables()),
            Err(err) => {
                eprintln!("warning: {err:#}\nwarning: going on with every table found by name");
                let builtin = quantlens_pipeline::registry(&self.pipeline()?);
                let mut tables = builtin.tables();
                if let Some(dir) = self.assets_dir()? {
                    tables.extend(quantlens_sql::keys_in(&dir)?);
                }
                Ok(tables)
            }
        }
    }

    /// Every asset: the built-in pipeline plus the SQL assets, as one validated graph.
    fn registry(&self) -> anyhow::Result<Registry> {
        Ok(self.registry_and_sql_assets()?.0)
    }

    /// The registry, and the SQL assets in it.
    fn registry_and_sql_assets(
        &self,
    ) -> anyhow::Result<(Registry, Vec<Arc<quantlens_sql::SqlAsset>>)> {
        let mut assets = quantlens_pipeline::assets(&self.pipeline()?);
        let sql = self.sql_assets(&assets)?;
        assets.extend(sql.iter().map(|a| a.to_asset()));
        Ok((Registry::new(assets)?, sql))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Materialise the selected assets (all by default) and record the run.
    Materialize(materialize::MaterializeArgs),
    /// List every table: layer, last materialisation, version, rows, stale or fresh; or
    /// `assets check` to validate the SQL assets against the lake.
    Assets {
        #[command(subcommand)]
        action: Option<AssetsAction>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the asset graph.
    Lineage {
        #[arg(long, value_enum, default_value_t = LineageFormat::Mermaid)]
        format: LineageFormat,
    },
    /// List recent runs, or print one run record.
    Runs {
        /// A run id to print in full (JSON).
        run_id: Option<String>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The commit history of a table, newest first, with its lineage metadata.
    History {
        /// A table key such as silver/prices.
        asset: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print rows of a table, now or as it was (time travel).
    Show {
        /// A table key such as gold/returns.
        asset: String,
        /// Read this table version.
        #[arg(long, conflicts_with = "as_of")]
        version: Option<i64>,
        /// Read the table as it was at this time (RFC 3339, e.g. 2026-01-31T18:00:00Z).
        #[arg(long)]
        as_of: Option<String>,
        /// Rows to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run DuckDB SQL over the current snapshot of every table, each a view such as silver_prices.
    Sql {
        /// The query, e.g. "SELECT count(*) FROM gold_returns".
        query: String,
    },
    /// Write deterministic synthetic landing files (with some junk) into LANDING_DIR.
    Demo(DemoArgs),
    /// Back up every table incrementally (`--to URL`), or `list` / `verify` the backups there.
    Backup(backup::BackupArgs),
    /// Restore the tables of a backup into an empty DATA_ROOT (or `--force` over existing ones).
    Restore(backup::RestoreArgs),
    /// Write the status page as one self-contained HTML file: the trigger daemon's page with the
    /// catalog, health and recent runs inlined, readable from file:// with no server.
    Report(report::ReportArgs),
    /// Send a failure notification to the configured channels (QUANTLENS_NOTIFY_WEBHOOK,
    /// QUANTLENS_NOTIFY_SLACK, QUANTLENS_HEARTBEAT_URL or the QUANTLENS_NOTIFY_CREDENTIALS file),
    /// for the trigger daemon and systemd's OnFailure= hook.
    Notify(notify::NotifyArgs),
    /// Compact small files, write checkpoints and vacuum old files, for every table.
    Maintain(maintain::MaintainArgs),
    /// Whether the data is fresh, judged as GET /health judges it (exit 0 healthy, 1 not);
    /// with --notify, tell the notification channels about stale data, once per episode.
    Health(health::HealthArgs),
}

#[derive(Subcommand)]
enum AssetsAction {
    /// Validate every SQL asset against the current lake without writing anything: each query
    /// prepared with LIMIT 0, each check query prepared, each locked schema compared. Exit 2 on
    /// any problem.
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum LineageFormat {
    Mermaid,
    Dot,
    Json,
}

#[derive(Args)]
struct DemoArgs {
    /// Number of symbols.
    #[arg(long, default_value_t = 20)]
    symbols: usize,
    /// Number of trading days (one file each).
    #[arg(long, default_value_t = 120)]
    days: usize,
    /// Random seed; the same arguments always give the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First trading day (YYYY-MM-DD).
    #[arg(long, default_value = "2024-01-01")]
    start: chrono::NaiveDate,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// An error with the exit code it should produce.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            code: exit::USAGE as u8,
            error: error.into(),
        }
    }
}

/// Takes the run lock for a command that writes to the lake, or fails with exit code 75 naming
/// the run that holds it.
pub fn take_run_lock(
    state: &quantlens_runs::StateDir,
    holder: &quantlens_runs::RunId,
) -> Result<quantlens_runs::RunLock, Failure> {
    match quantlens_runs::RunLock::try_acquire(state, holder) {
        Ok(lock) => Ok(lock),
        Err(quantlens_runs::RunsError::Locked { holder }) => {
            let holder = holder.unwrap_or_else(|| "(unknown run)".into());
            Err(fail(
                exit::LOCKED,
                anyhow::anyhow!("already running {holder}"),
            ))
        }
        Err(err) => Err(state_failure(err)),
    }
}

/// The state directory cannot be read or written (a full disk, permissions): the command failed,
/// it was not called wrong, so exit 1 rather than the usage code.
pub fn state_failure(err: quantlens_runs::RunsError) -> Failure {
    fail(exit::FAILED, err.into())
}

pub fn fail(code: i32, error: anyhow::Error) -> Failure {
    Failure {
        code: code as u8,
        error,
    }
}

/// `quantlens runs | head` should end quietly when `head` exits, as other command-line tools do,
/// rather than panic on the closed pipe (Rust ignores SIGPIPE by default).
fn die_quietly_on_closed_pipes() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    allocator::keep_large_allocations_returnable();
    die_quietly_on_closed_pipes();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, Failure> {
    let locations = cli.locations;
    match cli.command {
        Command::Materialize(args) => materialize::run(&locations, args).await,
        Command::Assets {
            action: Some(AssetsAction::Check),
            ..
        } => inspect::check_assets(&locations).await,
        Command::Assets { action: None, json } => inspect::assets(&locations, json).await,
        Command::Lineage { format } => inspect::lineage(&locations, format),
        Command::Runs {
            run_id,
            limit,
            json,
        } => inspect::runs(&locations, run_id, limit, json),
        Command::History { asset, limit } => inspect::history(&locations, &asset, limit).await,
        Command::Show {
            asset,
            version,
            as_of,
            limit,
        } => inspect::show(&locations, &asset, version, as_of, limit).await,
        Command::Sql { query } => inspect::sql(&locations, &query).await,
        Command::Demo(args) => demo(&locations, args).await,
        Command::Backup(args) => backup::run(&locations, args).await,
        Command::Restore(args) => backup::restore(&locations, args).await,
        Command::Maintain(args) => maintain::run(&locations, args).await,
        Command::Health(args) => health::run(&locations, args).await,
        Command::Report(args) => report::run(&locations, args).await,
        Command::Notify(args) => notify::run(args).await,
    }
}

async fn demo(locations: &Locations, args: DemoArgs) -> Result<i32, Failure> {
    if args.symbols == 0 || args.days == 0 {
        return Err(anyhow::anyhow!("--symbols and --days must be at least 1").into());
    }
    let landing = quantlens_lake::FileStore::open(&locations.landing()?)?;
    let options = quantlens_pipeline::demo::DemoOptions {
        symbols: args.symbols,
        days: args.days,
        seed: args.seed,
        start: args.start,
    };
    let summary = quantlens_pipeline::demo::write_demo(&landing, &options)
        .await
        .map_err(|e| fail(exit::FAILED, e.into()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "landing": landing.url().as_str(), "files": summary.files, "rows": summary.rows,
                "bytes": summary.bytes, "junk_rows": summary.junk_rows,
                "duplicate_rows": summary.duplicate_rows, "bad_header_files": summary.bad_header_files,
            })
        );
    } else {
        println!(
            "wrote {} files ({} valid rows, {} junk lines, {} duplicates, {} wrong-header files, {} bytes) to {}",
            summary.files,
            summary.rows,
            summary.junk_rows,
            summary.duplicate_rows,
            summary.bad_header_files,
            summary.bytes,
            landing.url()
        );
    }
    Ok(exit::SUCCEEDED)
}
