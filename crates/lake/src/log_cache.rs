//! A read-through cache of Delta commit files under the object store every table of a lake is
//! opened with. A commit file (`_delta_log/<20 digits>.json`) never changes once written, yet a
//! daily run read each one about three times: delta-kernel replays the log twice per snapshot load
//! (protocol and metadata, then the files), and the lake reads the newest commits again for their
//! lineage. Through this store each is fetched once per process, which on `s3://` saves a request
//! per read. Everything else (data files, checkpoints, `_last_checkpoint`, listings, writes) goes
//! straight to the store underneath. The cache is the lake's: a restore, which replaces logs
//! wholesale, empties it with the snapshots.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Commit files larger than this are fetched each time rather than kept (a full build's bronze
/// commit lists thousands of landing files).
const LARGEST_KEPT_COMMIT: u64 = 256 * 1024;

/// The commit files fetched so far, by their path in the root store. Clones share them.
#[derive(Clone, Default)]
pub(crate) struct CommitFiles(Arc<Mutex<HashMap<Path, (ObjectMeta, Bytes)>>>);

impl CommitFiles {
    fn get(&self, path: &Path) -> Option<(ObjectMeta, Bytes)> {
        self.lock().get(path).cloned()
    }

    fn keep(&self, meta: ObjectMeta, bytes: Bytes) {
        if bytes.len() as u64 <= LARGEST_KEPT_COMMIT {
            self.lock().insert(meta.location.clone(), (meta, bytes));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Path, (ObjectMeta, Bytes)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// True for `.../_delta_log/00000000000000000042.json`, the only files worth keeping.
fn is_commit_file(path: &Path) -> bool {
    let mut parts = path.as_ref().rsplit('/');
    let (Some(name), Some("_delta_log")) = (parts.next(), parts.next()) else {
        return false;
    };
    name.len() == 25 && name.ends_with(".json") && name[..20].bytes().all(|b| b.is_ascii_digit())
}

/// A whole-object read with no conditions: the only kind answered from the cache.
fn is_plain_read(options: &GetOptions) -> bool {
    options.range.is_none()
        && !options.head
        && options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
}

fn cached_result(meta: ObjectMeta, bytes: Bytes) -> GetResult {
    let stream = futures::stream::once(async move { Ok(bytes) });
    GetResult {
        range: 0..meta.size,
        meta,
        payload: GetResultPayload::Stream(Box::pin(stream)),
        attributes: Default::default(),
    }
}

/// The root store of a lake with its commit files cached.
#[derive(Debug)]
pub(crate) struct CachedLogStore {
    inner: Arc<dyn ObjectStore>,
    commits: CommitFiles,
}

impl CachedLogStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, commits: CommitFiles) -> CachedLogStore {
        CachedLogStore { inner, commits }
    }
}

impl fmt::Debug for CommitFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitFiles({})", self.len())
    }
}

impl fmt::Display for CachedLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedLogStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedLogStore {
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if !(is_plain_read(&options) && is_commit_file(location)) {
            return self.inner.get_opts(location, options).await;
        }
        if let Some((meta, bytes)) = self.commits.get(location) {
            return Ok(cached_result(meta, bytes));
        }
        let fetched = self.inner.get_opts(location, options).await?;
        let meta = fetched.meta.clone();
        let bytes = fetched.bytes().await?;
        self.commits.keep(meta.clone(), bytes.clone());
        Ok(cached_result(meta, bytes))
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        options: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        options: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[test]
    fn only_numbered_json_files_in_a_log_are_commit_files() {
        let commit = |p: &str| is_commit_file(&Path::from(p));
        assert!(commit(
            "lake/silver/prices/_delta_log/00000000000000000042.json"
        ));
        assert!(!commit("lake/silver/prices/_delta_log/_last_checkpoint"));
        assert!(!commit(
            "lake/silver/prices/_delta_log/00000000000000000040.checkpoint.parquet"
        ));
        assert!(!commit(
            "lake/silver/prices/_delta_log/0000000000000000004x.json"
        ));
        assert!(!commit("lake/silver/prices/00000000000000000042.json"));
        assert!(!commit("00000000000000000042.json"));
    }

    #[tokio::test]
    async fn a_commit_file_is_fetched_once_and_other_files_every_time() {
        let inner = Arc::new(InMemory::new());
        let commit = Path::from("t/_delta_log/00000000000000000000.json");
        let pointer = Path::from("t/_delta_log/_last_checkpoint");
        inner.put(&commit, "v0".into()).await.unwrap();
        inner.put(&pointer, "one".into()).await.unwrap();
        let files = CommitFiles::default();
        let store = CachedLogStore::new(inner.clone(), files.clone());

        let first = store.get(&commit).await.unwrap();
        assert_eq!(first.range, 0..2);
        assert_eq!(first.bytes().await.unwrap(), "v0");
        assert_eq!(files.len(), 1);
        // Behind the cache's back: a commit file cannot change, so the kept bytes are the answer.
        inner.put(&commit, "rewritten".into()).await.unwrap();
        assert_eq!(
            store.get(&commit).await.unwrap().bytes().await.unwrap(),
            "v0"
        );
        // A range, or any file that is not a commit, goes to the store.
        assert_eq!(store.get_range(&commit, 0..3).await.unwrap(), "rew");
        inner.put(&pointer, "two".into()).await.unwrap();
        assert_eq!(
            store.get(&pointer).await.unwrap().bytes().await.unwrap(),
            "two"
        );
        assert_eq!(files.len(), 1);

        files.clear();
        assert_eq!(
            store.get(&commit).await.unwrap().bytes().await.unwrap(),
            "rewritten"
        );
    }

    #[tokio::test]
    async fn a_missing_commit_file_is_an_error_and_not_kept() {
        let files = CommitFiles::default();
        let store = CachedLogStore::new(Arc::new(InMemory::new()), files.clone());
        let missing = Path::from("t/_delta_log/00000000000000000007.json");
        let err = store.get(&missing).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
        assert_eq!(files.len(), 0);
    }
}
