//! Where tables live. DATA_ROOT may be a plain local path (made absolute, created if missing) or a
//! URL such as `file:///srv/lake` or `s3://bucket/prefix`; an asset key `silver/prices` becomes the
//! table at `<DATA_ROOT>/silver/prices/`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use object_store::ObjectStore;
use url::Url;

use crate::log_cache::CachedLogStore;
use crate::LakeError;

/// Turns a DATA_ROOT (or LANDING_DIR) string into a directory URL ending in `/`. Local paths are
/// created so that a fresh clone works with the default `./data`.
pub fn resolve_root(root: &str) -> Result<Url, LakeError> {
    let invalid = |reason: String| LakeError::InvalidRoot {
        root: root.to_string(),
        reason,
    };
    if root.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let mut url = match Url::parse(root) {
        // A single letter before ':' is a Windows drive, not a scheme; anything else with a scheme is a URL.
        Ok(url) if url.scheme().len() > 1 => url,
        _ => {
            let path = Path::new(root);
            std::fs::create_dir_all(path)
                .map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
            let absolute = path
                .canonicalize()
                .map_err(|e| invalid(format!("cannot resolve the directory: {e}")))?;
            Url::from_directory_path(&absolute)
                .map_err(|()| invalid("not an absolute directory path".into()))?
        }
    };
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| invalid("not a local path".into()))?;
        std::fs::create_dir_all(&path)
            .map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
    }
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// The lake rooted at DATA_ROOT, with the storage options object_store needs for remote roots.
/// Clones share one cache of loaded snapshots ([`crate::snapshots`]).
#[derive(Clone, Debug)]
pub struct Lake {
    root: Url,
    storage_options: HashMap<String, String>,
    pub(crate) snapshots: crate::snapshots::Snapshots,
    /// The store every table is opened with, made on first use (see [`Lake::root_store`]).
    root_store: Arc<OnceLock<Arc<dyn ObjectStore>>>,
    pub(crate) checkpoint_turn: crate::checkpoints::CheckpointTurn,
}

impl Lake {
    pub fn open(data_root: &str) -> Result<Lake, LakeError> {
        let root = resolve_root(data_root)?;
        match root.scheme() {
            "file" => {}
            "s3" => crate::storage::register(),
            other => {
                return Err(LakeError::InvalidRoot {
                    root: data_root.to_string(),
                    reason: format!(
                        "`{other}://` storage is not supported; use a local directory or s3://"
                    ),
                })
            }
        }
        Ok(Lake {
            root,
            storage_options: HashMap::new(),
            snapshots: Default::default(),
            root_store: Default::default(),
            checkpoint_turn: Default::default(),
        })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Forgets the table snapshots loaded so far: the next loads read the logs from scratch.
    /// Needed only after the logs were changed other than by commits (a restore).
    pub fn forget_snapshots(&self) {
        self.snapshots.forget();
    }

    /// The object store at the root of DATA_ROOT's scheme (the local filesystem, or the S3
    /// bucket), with the lake's commit file cache in front of it ([`crate::log_cache`]).
    pub(crate) fn root_store(&self) -> Result<Arc<dyn ObjectStore>, LakeError> {
        if let Some(store) = self.root_store.get() {
            return Ok(store.clone());
        }
        let underneath: Arc<dyn ObjectStore> = match self.root.scheme() {
            "s3" => Arc::new(crate::storage::s3_store(&self.root, &self.storage_options)?),
            _ => Arc::new(object_store::local::LocalFileSystem::new()),
        };
        let cached: Arc<dyn ObjectStore> = Arc::new(CachedLogStore::new(
            underneath,
            self.snapshots.commit_files.clone(),
        ));
        Ok(self.root_store.get_or_init(|| cached).clone())
    }

    /// Declares this process the lake's only writer until it exits (it holds the run lock, which
    /// every command that commits takes): loading a table's latest version then reuses the
    /// snapshot this process last loaded or committed instead of listing the log again. A daily
    /// run loaded tables' latest versions 35 times, each a listing and a replay of the commits
    /// since the last checkpoint: a third of its time.
    pub fn assume_sole_writer(&self) {
        self.snapshots.assume_sole_writer();
    }

    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// The directory URL of the table for `key`, ending in `/`.
    pub fn table_url(&self, key: &str) -> Url {
        self.root
            .join(&format!("{}/", key.trim_matches('/')))
            .expect("asset keys are validated URL path segments")
    }

    /// True when tables live on this machine's disk, so DuckDB can scan their Parquet files in place.
    pub fn is_local(&self) -> bool {
        self.root.scheme() == "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() {
        let dir = std::env::temp_dir().join(format!("ql-lake-{}", std::process::id()));
        let url = resolve_root(dir.join("data").to_str().unwrap()).unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/data/"));
        let lake = Lake::open(dir.join("data").to_str().unwrap()).unwrap();
        assert!(lake.is_local());
        assert!(lake
            .table_url("silver/prices")
            .as_str()
            .ends_with("/data/silver/prices/"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn remote_urls_are_kept_and_unknown_schemes_refused() {
        let url = resolve_root("s3://bucket/some/prefix").unwrap();
        assert_eq!(url.as_str(), "s3://bucket/some/prefix/");
        assert!(resolve_root("  ").is_err());
        assert!(!Lake::open("s3://bucket/some/prefix").unwrap().is_local());
        let err = Lake::open("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
