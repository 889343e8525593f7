//! `quantlens backup` and `quantlens restore`: the lake to and from a backup location (usually
//! `s3://bucket/prefix`), incrementally, with manifests; see `quantlens_lake::backup`. Each
//! manifest also carries the newest run records (the last success always among them), which a
//! restore puts back where the state directory lacks them: a VM rebuilt from nothing then judges
//! its freshness from the last real run instead of reporting that nothing ever succeeded.

use std::collections::HashMap;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};
use quantlens_lake::backup::{self, Manifest};
use quantlens_lake::{FileStore, Lake};
use quantlens_runs::{exit, RunId, RunRecord, RunStatus, StateDir};

use crate::output::print_table;
use crate::{fail, take_run_lock, Failure, Locations};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// Backup location: a directory URL such as s3://bucket/backups (or a local directory).
    #[arg(long, env = "QUANTLENS_BACKUP_TO", global = true)]
    to: Option<String>,
    /// After backing up, keep only this many backups and delete files no kept one needs.
    #[arg(long, env = "QUANTLENS_BACKUP_KEEP")]
    keep: Option<usize>,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum BackupAction {
    /// List the backups at the location, oldest first.
    List,
    /// Reread every file of a backup (the newest by default): present, right size, right checksum.
    Verify {
        /// The backup id, as `backup list` shows it.
        #[arg(long)]
        backup: Option<String>,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Backup location, as given to `backup --to`.
    #[arg(long, env = "QUANTLENS_BACKUP_TO")]
    from: String,
    /// The backup id to restore [default: the newest].
    #[arg(long)]
    backup: Option<String>,
    /// Restore into this DATA_ROOT instead of the configured one.
    #[arg(long)]
    to: Option<String>,
    /// Replace tables that already exist in the target.
    #[arg(long)]
    force: bool,
}

/// A file of `KEY=VALUE` lines (`AWS_ACCESS_KEY_ID`, ...) for the backup location only, when it
/// belongs to another account than the lake: e.g. a key that may add backups but not delete them.
/// Its settings override the lake's (environment and QUANTLENS_S3_CREDENTIALS) for the backup.
const BACKUP_CREDENTIALS_ENV: &str = "QUANTLENS_BACKUP_CREDENTIALS";

fn location(to: &Option<String>) -> Result<FileStore, Failure> {
    let to = to
        .as_deref()
        .ok_or_else(|| anyhow!("no backup location: pass --to URL or set QUANTLENS_BACKUP_TO"))?;
    open_backup_store(to)
}

fn open_backup_store(url: &str) -> Result<FileStore, Failure> {
    let options = match std::env::var_os(BACKUP_CREDENTIALS_ENV) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading the backup credentials {} (named by {BACKUP_CREDENTIALS_ENV})",
                    path.to_string_lossy()
                )
            })?;
            quantlens_runs::credentials::key_values(&text).collect()
        }
        None => HashMap::new(),
    };
    Ok(FileStore::open_with(url, &options)?)
}

pub async fn run(locations: &Locations, args: BackupArgs) -> Result<i32, Failure> {
    match args.action {
        None => {
            // Whatever stops a backup (its target, the lake, a copy) is told once.
            let result = back_up(locations, &args).await;
            if let Err(failure) = &result {
                crate::notify::backup_failed(&failure.error).await;
            }
            result
        }
        Some(BackupAction::List) => {
            let store = location(&args.to)?;
            let manifests = backup::list(&store).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&manifests)?);
            } else {
                print_manifests(&manifests);
            }
            Ok(exit::SUCCEEDED)
        }
        Some(BackupAction::Verify { backup: id }) => {
            let store = location(&args.to)?;
            let manifest = backup::find(&store, id.as_deref()).await?;
            let problems = backup::verify(&store, &manifest).await?;
            for problem in &problems {
                eprintln!("{problem}");
            }
            if problems.is_empty() {
                println!(
                    "backup {} verified: every file present with its size and checksum",
                    manifest.backup_id
                );
                Ok(exit::SUCCEEDED)
            } else {
                Err(fail(
                    exit::FAILED,
                    anyhow!(
                        "backup {}: {} problem(s)",
                        manifest.backup_id,
                        problems.len()
                    ),
                ))
            }
        }
    }
}

fn print_manifests(manifests: &[Manifest]) {
    let rows: Vec<Vec<String>> = manifests
        .iter()
        .map(|m| {
            vec![
                m.backup_id.clone(),
                m.created_at.to_rfc3339(),
                m.tables.len().to_string(),
                m.bytes().to_string(),
                m.source.clone(),
            ]
        })
        .collect();
    print_table(&["backup", "created", "tables", "bytes", "source"], &rows);
}

pub async fn restore(locations: &Locations, args: RestoreArgs) -> Result<i32, Failure> {
    let store = open_backup_store(&args.from)?;
    let lake = Lake::open(args.to.as_deref().unwrap_or(&locations.data_root))?;
    let manifest = backup::find(&store, args.backup.as_deref()).await?;
    // No materialisation may write while the tables are being replaced.
    let holder = RunId::parse(&format!("restore-{}", manifest.backup_id))?;
    let _lock = take_run_lock(&StateDir::new(&locations.state_dir), &holder)?;
    let restored = backup::restore(&store, &manifest, &lake, args.force)
        .await
        .map_err(|e| fail(exit::FAILED, e.into()))?;
    for (key, version) in &restored {
        println!("restored {key} at version {version}");
    }
    // The tables are back whatever happens here: a record that cannot be written only costs
    // /health its memory of the last success until the next run.
    match restore_run_records(&StateDir::new(&locations.state_dir), &manifest) {
        Ok(0) => {}
        Ok(count) => println!("restored {count} run records"),
        Err(err) => eprintln!("warning: run records not restored: {err:#}"),
    }
    println!(
        "backup {} restored into {}",
        manifest.backup_id,
        lake.root()
    );
    Ok(exit::SUCCEEDED)
}

/// `quantlens backup --to URL`: one incremental backup of every table.
async fn back_up(locations: &Locations, args: &BackupArgs) -> Result<i32, Failure> {
    let store = location(&args.to)?;
    let lake = locations.lake()?;
    let tables = locations.tables()?;
    let records = run_records(&StateDir::new(&locations.state_dir))?;
    let report = backup::backup(&lake, &tables, records, &store, args.keep)
        .await
        .map_err(|e| fail(exit::FAILED, e.into()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "backup {}: {} tables, {} files ({} bytes); copied {} files ({} bytes); \
             retention deleted {} backups, {} files",
            report.backup_id,
            report.tables,
            report.files,
            report.bytes,
            report.files_copied,
            report.bytes_copied,
            report.manifests_deleted,
            report.files_deleted
        );
    }
    Ok(exit::SUCCEEDED)
}

/// How many of the newest run records a backup carries, besides the last success.
const RUN_RECORDS_IN_BACKUP: usize = 50;

/// The newest run records of `state`, and its last success if it is older than those (one scan
/// of the records: each is read once).
fn run_records(state: &StateDir) -> anyhow::Result<Vec<serde_json::Value>> {
    let every = state.list_runs(usize::MAX)?;
    let last_success = every
        .iter()
        .position(|r| r.status == RunStatus::Succeeded)
        .filter(|index| *index >= RUN_RECORDS_IN_BACKUP);
    Ok(every
        .iter()
        .take(RUN_RECORDS_IN_BACKUP)
        .chain(last_success.map(|index| &every[index]))
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?)
}

/// Writes the manifest's run records that `state` does not hold; returns how many.
fn restore_run_records(state: &StateDir, manifest: &Manifest) -> anyhow::Result<usize> {
    let mut written = 0;
    for value in &manifest.run_records {
        let record: RunRecord = serde_json::from_value(value.clone())?;
        let files = state.run_files(&record.run_id);
        if !files.record_path().exists() {
            files.write_record(&record)?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_carries_the_newest_records_and_the_last_success() {
        let root =
            std::env::temp_dir().join(format!("quantlens-backup-runs-{}", std::process::id()));
        let state = StateDir::new(&root);
        state.create().unwrap();
        let put = |n: usize, status| {
            let mut record = RunRecord::new(RunId::parse(&format!("r{n:03}")).unwrap(), "cli", "*");
            record.status = status;
            state
                .run_files(&record.run_id)
                .write_record(&record)
                .unwrap();
        };
        let ids = |values: Vec<serde_json::Value>| -> Vec<String> {
            values
                .iter()
                .map(|v| v["run_id"].as_str().unwrap().to_string())
                .collect()
        };
        put(0, RunStatus::Succeeded);
        for n in 1..=RUN_RECORDS_IN_BACKUP + 4 {
            put(n, RunStatus::Failed);
        }
        let carried = ids(run_records(&state).unwrap());
        assert_eq!(carried.len(), RUN_RECORDS_IN_BACKUP + 1);
        assert_eq!(carried[0], format!("r{:03}", RUN_RECORDS_IN_BACKUP + 4));
        assert_eq!(
            carried.last().unwrap(),
            "r000",
            "the last success, older than the rest"
        );

        put(RUN_RECORDS_IN_BACKUP + 5, RunStatus::Succeeded);
        let carried = ids(run_records(&state).unwrap());
        assert_eq!(
            carried.len(),
            RUN_RECORDS_IN_BACKUP,
            "the last success is among the newest"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
