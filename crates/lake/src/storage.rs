//! Object storage. An `s3://bucket/prefix` DATA_ROOT or LANDING_DIR is served by object_store's
//! S3 client, configured the standard way: `AWS_*` environment variables (endpoint, region,
//! credentials, `AWS_ALLOW_HTTP`), plus the `KEY=VALUE` lines of the file named by
//! `QUANTLENS_S3_CREDENTIALS` (where systemd's LoadCredential puts them), so secrets need not sit
//! in the environment. Delta commits rely on the store honouring `If-None-Match: *`, which S3 and
//! compatible servers do. deltalake learns the `s3` scheme from [`register`].

use std::collections::HashMap;
use std::sync::{Arc, Once};

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use url::Url;

use crate::LakeError;

/// The file of `KEY=VALUE` credential lines, if any.
pub const CREDENTIALS_FILE_ENV: &str = "QUANTLENS_S3_CREDENTIALS";

/// S3 settings from the credentials file: lines `KEY=VALUE`, `#` comments and blanks ignored.
fn credentials_from_file() -> Result<HashMap<String, String>, LakeError> {
    let Some(path) = std::env::var_os(CREDENTIALS_FILE_ENV) else {
        return Ok(HashMap::new());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| LakeError::InvalidRoot {
        root: path.to_string_lossy().into_owned(),
        reason: format!("cannot read the S3 credentials file named by {CREDENTIALS_FILE_ENV}: {e}"),
    })?;
    Ok(quantlens_runs::credentials::key_values(&text).collect())
}

/// An S3 client for the bucket of `url`: environment first, then the credentials file, then
/// `options` (each overriding the one before).
pub(crate) fn s3_store(
    url: &Url,
    options: &HashMap<String, String>,
) -> Result<object_store::aws::AmazonS3, LakeError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_retry(bounded_retries());
    for (key, value) in credentials_from_file()?.iter().chain(options) {
        if let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(config, value);
        }
    }
    builder.build().map_err(|source| LakeError::Store {
        url: url.to_string(),
        source: Box::new(source),
    })
}

/// A store that cannot be reached fails within about half a minute, not object_store's default
/// three minutes of retries: a bad endpoint or credentials should be a prompt, clear error.
fn bounded_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
        ..Default::default()
    }
}

struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let store =
            s3_store(url, &config.raw).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        let path =
            Path::from_url_path(url.path()).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        Ok((Arc::new(store), path))
    }
}

impl LogStoreFactory for S3Factory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        // The default log store commits with put-if-absent, which S3 supports natively.
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Teaches deltalake the `s3` scheme (once per process).
pub(crate) fn register() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        let scheme = Url::parse("s3://").expect("valid URL");
        object_store_factories().insert(scheme.clone(), Arc::new(S3Factory));
        logstore_factories().insert(scheme, Arc::new(S3Factory));
    });
}
