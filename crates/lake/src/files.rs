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
    /// The directory itself when it is local: listed without object_store (see [`list_local`]).
    local_dir: Option<std::path::PathBuf>,
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
        let local_dir = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
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
        Ok(FileStore {
            url,
            store,
            prefix,
            local_dir,
        })
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
        if let Some(dir) = self.local_dir.clone() {
            let listed = tokio::task::spawn_blocking(move || list_local(&dir))
                .await
                .map_err(|e| self.store_error(object_store::Error::JoinError { source: e }))?;
            match listed {
                Ok(Some(files)) => return Ok(files),
                Ok(None) => {}
                Err(source) => {
                    return Err(self.store_error(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(source),
                    }))
                }
            }
        }
        self.list_through_store().await
    }

    async fn list_through_store(&self) -> Result<Vec<StoredFile>, LakeError> {
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

/// Lists a local directory the way object_store's `LocalFileSystem` does, for the names it would
/// give unchanged, or `None` when the tree holds anything else (then object_store lists it).
///
/// A daily run lists the whole landing directory, which grows by a file a day: object_store stats
/// each file three times by its full path and turns each path into a URL and back, about 5 µs a
/// file (26 ms for 20 years of deliveries). This walk stats each file once, relative to its
/// directory's descriptor. The names must be exactly object_store's, because the ledger of
/// ingested files is keyed by them: a name spelled differently would be ingested twice. For a
/// name of [`plain_name`] characters, object_store's name is the relative path itself; a symbolic
/// link, a special file or any other name makes the whole listing go through object_store.
fn list_local(root: &std::path::Path) -> std::io::Result<Option<Vec<StoredFile>>> {
    let mut files = Vec::new();
    let mut directories = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = directories.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since it was seen (or never created): object_store lists nothing there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Ok(None);
            };
            if !plain_name(&name) {
                return Ok(None);
            }
            let name = format!("{prefix}{name}");
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                directories.push((entry.path(), format!("{name}/")));
                continue;
            }
            if !file_type.is_file() {
                return Ok(None);
            }
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            files.push(StoredFile {
                name,
                size: metadata.len(),
                modified: metadata.modified()?.into(),
            });
        }
    }
    files.sort();
    Ok(Some(files))
}

/// Names object_store's local listing keeps as they are: letters, digits and `._-+=,@`. Anything
/// else (spaces, `%`, `#`, non-ASCII, control characters) it may encode, reject or skip.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+=,@".contains(&b))
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

    #[tokio::test]
    async fn the_local_listing_names_files_as_object_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let store = FileStore::open(url.as_str()).unwrap();
        for name in [
            "prices_2024-01-02.csv",
            ".hidden.csv",
            "late.csv.part",
            "2024/01/prices+fix=1,v@2.csv",
            "2024/02/x.csv",
        ] {
            store.write(name, name.as_bytes().to_vec()).await.unwrap();
        }
        std::fs::create_dir_all(dir.path().join("empty/dir")).unwrap();
        let plain = list_local(dir.path()).unwrap().expect("plain names only");
        assert_eq!(plain, store.list_through_store().await.unwrap());
        assert_eq!(plain.len(), 5);
        assert_eq!(plain[0].name, ".hidden.csv");
        assert_eq!(plain[1].name, "2024/01/prices+fix=1,v@2.csv");

        // Names object_store might encode or skip, and links, send the listing through it.
        for odd in ["with space.csv", "100%.csv", "upload#1", "prix_été.csv"] {
            std::fs::write(dir.path().join(odd), b"x").unwrap();
            assert_eq!(list_local(dir.path()).unwrap(), None, "{odd}");
            assert_eq!(
                store.list().await.unwrap(),
                store.list_through_store().await.unwrap()
            );
            std::fs::remove_file(dir.path().join(odd)).unwrap();
        }
        std::os::unix::fs::symlink(dir.path().join("2024"), dir.path().join("linked")).unwrap();
        assert_eq!(list_local(dir.path()).unwrap(), None);
        assert_eq!(store.list().await.unwrap().len(), 7, "the link is followed");
    }

    #[tokio::test]
    async fn a_missing_local_directory_lists_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("landing").to_str().unwrap()).unwrap();
        std::fs::remove_dir(dir.path().join("landing")).unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(store.list_through_store().await.unwrap().is_empty());
    }
}
