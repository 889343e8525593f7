//! Plain files under a directory URL: the landing zone that market-data deliveries arrive in, read
//! and written through object_store so LANDING_DIR can be local or remote alike.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::{ObjectStore, Path};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use url::Url;

use crate::{resolve_root, LakeError};

/// One file found in a directory: its name relative to the directory, its size, and when it was
/// last written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredFile {
    pub name: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// A directory of plain files.
#[derive(Clone, Debug)]
pub struct FileStore {
    url: Url,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl FileStore {
    /// Opens the directory at `location` (a path or URL; local directories are created).
    pub fn open(location: &str) -> Result<FileStore, LakeError> {
        FileStore::open_with(location, &HashMap::new())
    }

    /// Like [`FileStore::open`], with S3 settings (`AWS_*` keys) that override the environment's
    /// and the credentials file's for this location only: a backup target in another account.
    pub fn open_with(
        location: &str,
        s3_options: &HashMap<String, String>,
    ) -> Result<FileStore, LakeError> {
        let url = resolve_root(location)?;
        let store_error = |source| LakeError::Store {
            url: url.to_string(),
            source: Box::new(source),
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if url.scheme() == "s3" {
            let prefix = Path::from_url_path(url.path()).map_err(|e| store_error(e.into()))?;
            (
                Arc::new(crate::storage::s3_store(&url, s3_options)?),
                prefix,
            )
        } else {
            let (store, prefix) = object_store::parse_url(&url).map_err(store_error)?;
            (Arc::from(store), prefix)
        };
        Ok(FileStore { url, store, prefix })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    fn store_error(&self, source: object_store::Error) -> LakeError {
        LakeError::Store {
            url: self.url.to_string(),
            source: Box::new(source),
        }
    }

    fn path_of(&self, name: &str) -> Path {
        name.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// Every file directly or indirectly under the directory, sorted by name.
    pub async fn list(&self) -> Result<Vec<StoredFile>, LakeError> {
        let prefix = self.prefix.clone();
        let mut files: Vec<StoredFile> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| StoredFile {
                name: meta
                    .location
                    .prefix_match(&prefix)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| meta.location.to_string()),
                size: meta.size,
                modified: meta.last_modified,
            })
            .try_collect()
            .await
            .map_err(|e| self.store_error(e))?;
        files.sort();
        Ok(files)
    }

    pub async fn read(&self, name: &str) -> Result<bytes::Bytes, LakeError> {
        let result = self
            .store
            .get(&self.path_of(name))
            .await
            .map_err(|e| self.store_error(e))?;
        result.bytes().await.map_err(|e| self.store_error(e))
    }

    /// Like [`FileStore::read`], but `None` when the file is gone: a listing is only a moment's
    /// view, and a file renamed or removed since is not an error for the reader.
    pub async fn read_if_present(&self, name: &str) -> Result<Option<bytes::Bytes>, LakeError> {
        let found = match self.store.get(&self.path_of(name)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error(e)),
        };
        match found.bytes().await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error(e)),
        }
    }

    pub async fn write(&self, name: &str, contents: Vec<u8>) -> Result<(), LakeError> {
        self.store
            .put(&self.path_of(name), PutPayload::from(contents))
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<(), LakeError> {
        self.store
            .delete(&self.path_of(name))
            .await
            .map_err(|e| self.store_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_gone_since_the_listing_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let store = FileStore::open(url.as_str()).unwrap();
        store.write("prices_a.csv", b"x\n".to_vec()).await.unwrap();
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        std::fs::rename(
            dir.path().join("prices_a.csv"),
            dir.path().join("prices_b.csv"),
        )
        .unwrap();
        assert!(store
            .read_if_present("prices_a.csv")
            .await
            .unwrap()
            .is_none());
        let renamed = store.read_if_present("prices_b.csv").await.unwrap();
        assert_eq!(renamed.as_deref(), Some(&b"x\n"[..]));
        assert!(
            store.read("prices_a.csv").await.is_err(),
            "read still fails on a missing file"
        );
    }
}
