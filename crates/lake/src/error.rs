//! The lake's error type. Each variant says which table or file was involved, and whether trying
//! again might help: the engine retries transient errors (I/O, commit conflicts) and never data ones.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LakeError {
    /// A location (DATA_ROOT, LANDING_DIR, a backup target) that cannot be used.
    #[error("invalid location `{root}`: {reason}")]
    InvalidRoot { root: String, reason: String },

    #[error("table `{table}`: {source}")]
    Delta {
        table: String,
        // Boxed: deltalake's error is large, and every Result in the lake carries this type.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    #[error("table `{table}` has no version {version} (latest is {latest})")]
    NoSuchVersion {
        table: String,
        version: i64,
        latest: i64,
    },

    #[error("table `{table}`: reading {file}: {source}")]
    Parquet {
        table: String,
        file: String,
        #[source]
        source: deltalake::parquet::errors::ParquetError,
    },

    #[error("storage `{url}`: {source}")]
    Store {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error("table `{table}`: partition replace refused: {reason}")]
    InvalidReplace { table: String, reason: String },

    #[error("backup: {0}")]
    Backup(String),

    #[error("converting between Arrow implementations: {0}")]
    Bridge(String),

    #[error("table `{table}`: a background reader or writer stopped: {message}")]
    Task { table: String, message: String },
}

impl LakeError {
    /// True for errors that may go away on a retry: storage I/O and commit conflicts. Errors in the
    /// data or the request itself are permanent.
    pub fn is_transient(&self) -> bool {
        use deltalake::DeltaTableError as E;
        match self {
            LakeError::Store { .. } | LakeError::Parquet { .. } => true,
            LakeError::Delta { source, .. } => matches!(
                source.as_ref(),
                E::ObjectStore { .. }
                    | E::Io { .. }
                    | E::Transaction { .. }
                    | E::VersionAlreadyExists(_)
            ),
            _ => false,
        }
    }
}

pub(crate) fn delta(table: &str) -> impl FnOnce(deltalake::DeltaTableError) -> LakeError + '_ {
    move |source| LakeError::Delta {
        table: table.to_string(),
        source: Box::new(source),
    }
}
