//! Backups of the lake to a directory URL (usually `s3://bucket/prefix`), and restores from them.
//!
//! ```text
//! <backup>/files/<table>/<path>        copies of data and log files, each copied once ever
//! <backup>/manifests/<backup_id>.json  one per backup: every table's version and its files
//! ```
//!
//! Data files are immutable and uniquely named, so a file already in the backup is never copied
//! again. A table's log files are copied after its data files, and the manifest is written last:
//! a backup killed midway leaves no manifest, and every earlier backup stays complete. Each
//! manifest lists, per table, the log up to the backed-up version and the data files live at that
//! version, with sizes and SHA-256 checksums; `verify` rereads them and `restore` checks them.
//! A manifest also carries the caller's newest run records, opaque here, so that a VM restored
//! from nothing knows its last successful run (its health is not a false alarm) and its history.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{At, FileStore, Lake, LakeError};

const FILES_DIR: &str = "files";
const MANIFESTS_DIR: &str = "manifests";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the table's directory, e.g. `_delta_log/00000000000000000003.json`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTable {
    pub key: String,
    pub version: i64,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub source: String,
    pub tables: Vec<ManifestTable>,
    /// The newest run records when the backup was taken (empty in older manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_records: Vec<serde_json::Value>,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.tables
            .iter()
            .flat_map(|t| &t.files)
            .map(|f| f.size)
            .sum()
    }

    fn stored_paths(&self) -> impl Iterator<Item = String> + '_ {
        self.tables
            .iter()
            .flat_map(|t| t.files.iter().map(move |f| stored_path(&t.key, &f.path)))
    }
}

/// What one backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub backup_id: String,
    pub tables: usize,
    pub files: usize,
    pub bytes: u64,
    pub files_copied: usize,
    pub bytes_copied: u64,
    pub manifests_deleted: usize,
    pub files_deleted: usize,
}

fn stored_path(key: &str, path: &str) -> String {
    format!("{FILES_DIR}/{key}/{path}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn invalid(what: String) -> LakeError {
    LakeError::Backup(what)
}

/// The log files of a table up to `version` (commits, checkpoints; not `_last_checkpoint`,
/// which may point past the version backed up).
fn log_files_up_to(files: &[crate::StoredFile], version: i64) -> Vec<&crate::StoredFile> {
    files
        .iter()
        .filter(|f| {
            let Some(name) = f.name.strip_prefix("_delta_log/") else {
                return false;
            };
            let number: String = name.chars().take_while(char::is_ascii_digit).collect();
            number.len() == 20
                && !name.contains('/')
                && number.parse::<i64>().is_ok_and(|n| n <= version)
                && (name.ends_with(".json") || name.contains(".checkpoint"))
        })
        .collect()
}

/// Every file stored at the backup location, by name, with its size.
async fn sizes(backup: &FileStore) -> Result<HashMap<String, u64>, LakeError> {
    Ok(backup
        .list()
        .await?
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect())
}

/// Reads every manifest of a backup location, oldest first.
pub async fn list(backup: &FileStore) -> Result<Vec<Manifest>, LakeError> {
    let mut manifests = Vec::new();
    for file in backup.list().await? {
        let Some(name) = file.name.strip_prefix(&format!("{MANIFESTS_DIR}/")) else {
            continue;
        };
        if !name.ends_with(".json") {
            continue;
        }
        let bytes = backup.read(&file.name).await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("manifest {}: {e}", file.name)))?;
        manifests.push(manifest);
    }
    manifests.sort_by(|a, b| (a.created_at, &a.backup_id).cmp(&(b.created_at, &b.backup_id)));
    Ok(manifests)
}

/// The backup `id`, or the newest when `id` is None.
pub async fn find(backup: &FileStore, id: Option<&str>) -> Result<Manifest, LakeError> {
    let manifests = list(backup).await?;
    match id {
        Some(id) => manifests
            .into_iter()
            .find(|m| m.backup_id == id)
            .ok_or_else(|| invalid(format!("no backup `{id}` at {}", backup.url()))),
        None => manifests
            .into_iter()
            .last()
            .ok_or_else(|| invalid(format!("no backup at {}", backup.url()))),
    }
}

/// Backs up `tables` of `lake` into `backup` with `run_records` in the manifest, copying only
/// files not already there, then keeps the newest `keep` backups (if given) and deletes files no
/// kept manifest needs.
pub async fn backup(
    lake: &Lake,
    tables: &[String],
    run_records: Vec<serde_json::Value>,
    backup: &FileStore,
    keep: Option<usize>,
) -> Result<BackupReport, LakeError> {
    let already = sizes(backup).await?;
    let known_sums: HashMap<String, String> = list(backup)
        .await?
        .iter()
        .flat_map(|m| {
            m.tables.iter().flat_map(move |t| {
                t.files
                    .iter()
                    .map(move |f| (stored_path(&t.key, &f.path), f.sha256.clone()))
            })
        })
        .collect();
    let created_at = Utc::now();
    let backup_id = created_at.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let (mut files_copied, mut bytes_copied) = (0, 0);
    let mut manifest_tables = Vec::new();
    for key in tables {
        let Some(table) = lake.load(key, At::Latest).await? else {
            continue;
        };
        let version = table.version();
        let source = FileStore::open(table.url().as_str())?;
        let listing = source.list().await?;
        let data: HashSet<String> = table.files()?.iter().map(|f| f.path.to_string()).collect();
        // Data first, then the log: a log entry in the backup never points at a missing file.
        let mut wanted: Vec<&crate::StoredFile> =
            listing.iter().filter(|f| data.contains(&f.name)).collect();
        wanted.extend(log_files_up_to(&listing, version));
        let mut files = Vec::new();
        for file in wanted {
            let target = stored_path(key, &file.name);
            let sha256 = match (already.get(&target), known_sums.get(&target)) {
                (Some(size), Some(sum)) if *size == file.size => sum.clone(),
                _ => {
                    let bytes = source.read(&file.name).await?;
                    let sum = sha256_hex(&bytes);
                    if already.get(&target) != Some(&file.size) {
                        bytes_copied += bytes.len() as u64;
                        files_copied += 1;
                        backup.write(&target, bytes.to_vec()).await?;
                    }
                    sum
                }
            };
            files.push(ManifestFile {
                path: file.name.clone(),
                size: file.size,
                sha256,
            });
        }
        manifest_tables.push(ManifestTable {
            key: key.clone(),
            version,
            files,
        });
    }
    let manifest = Manifest {
        backup_id: backup_id.clone(),
        created_at,
        source: lake.root().to_string(),
        tables: manifest_tables,
        run_records,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    backup
        .write(&format!("{MANIFESTS_DIR}/{backup_id}.json"), json)
        .await?;

    let (manifests_deleted, files_deleted) = match keep {
        Some(keep) => apply_retention(backup, keep.max(1)).await?,
        None => (0, 0),
    };
    Ok(BackupReport {
        backup_id,
        tables: manifest.tables.len(),
        files: manifest.tables.iter().map(|t| t.files.len()).sum(),
        bytes: manifest.bytes(),
        files_copied,
        bytes_copied,
        manifests_deleted,
        files_deleted,
    })
}

/// Deletes all but the newest `keep` manifests, then every stored file no kept manifest lists.
async fn apply_retention(backup: &FileStore, keep: usize) -> Result<(usize, usize), LakeError> {
    let manifests = list(backup).await?;
    let cut = manifests.len().saturating_sub(keep);
    let (dropped, kept) = manifests.split_at(cut);
    for manifest in dropped {
        backup
            .delete(&format!("{MANIFESTS_DIR}/{}.json", manifest.backup_id))
            .await?;
    }
    let needed: HashSet<String> = kept.iter().flat_map(Manifest::stored_paths).collect();
    let mut deleted = 0;
    for file in backup.list().await? {
        if file.name.starts_with(&format!("{FILES_DIR}/")) && !needed.contains(&file.name) {
            backup.delete(&file.name).await?;
            deleted += 1;
        }
    }
    Ok((dropped.len(), deleted))
}

/// Problems found when rereading a backup's files: missing, wrong size or wrong checksum.
pub async fn verify(backup: &FileStore, manifest: &Manifest) -> Result<Vec<String>, LakeError> {
    let present = sizes(backup).await?;
    let mut problems = Vec::new();
    for table in &manifest.tables {
        for file in &table.files {
            let stored = stored_path(&table.key, &file.path);
            match present.get(&stored) {
                None => problems.push(format!("{stored}: missing")),
                Some(size) if *size != file.size => {
                    problems.push(format!("{stored}: {size} bytes, expected {}", file.size))
                }
                Some(_) => {
                    let sum = sha256_hex(&backup.read(&stored).await?);
                    if sum != file.sha256 {
                        problems.push(format!(
                            "{stored}: checksum {sum}, expected {}",
                            file.sha256
                        ));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// Copies the backup's tables into `lake`, checking every checksum. The lake must hold none of
/// those tables unless `force`, in which case their current files are deleted first.
pub async fn restore(
    backup: &FileStore,
    manifest: &Manifest,
    lake: &Lake,
    force: bool,
) -> Result<BTreeMap<String, i64>, LakeError> {
    for table in &manifest.tables {
        let target = FileStore::open(lake.table_url(&table.key).as_str())?;
        let existing = target.list().await?;
        if !existing.is_empty() {
            if !force {
                return Err(invalid(format!(
                    "{} already holds table `{}`; restore into an empty DATA_ROOT or pass --force",
                    lake.root(),
                    table.key
                )));
            }
            for file in existing {
                target.delete(&file.name).await?;
            }
        }
    }
    let mut restored = BTreeMap::new();
    for table in &manifest.tables {
        let target = FileStore::open(lake.table_url(&table.key).as_str())?;
        for file in &table.files {
            let stored = stored_path(&table.key, &file.path);
            let bytes = backup.read(&stored).await?;
            if sha256_hex(&bytes) != file.sha256 {
                return Err(invalid(format!(
                    "{stored}: checksum does not match the manifest"
                )));
            }
            target.write(&file.path, bytes.to_vec()).await?;
        }
        restored.insert(table.key.clone(), table.version);
    }
    // The logs were replaced, not committed to: snapshots loaded before are no guide.
    lake.forget_snapshots();
    Ok(restored)
}
