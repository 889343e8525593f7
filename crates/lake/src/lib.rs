//! The lake: every Delta table QuantLens owns lives under one DATA_ROOT URL, and this crate is the
//! only door to it. It turns asset keys into table URLs, writes batches as one Delta commit carrying
//! QuantLens' lineage metadata, reads snapshots back (latest, a version, or a point in time), lists
//! history, and moves Arrow batches between the three columnar worlds of the worker: arrow 59
//! (deltalake's), Polars' own arrow, and DuckDB's arrow 60. Everything goes through URLs and
//! `object_store`, never `std::fs` on table data, so an `s3://` DATA_ROOT can follow.

pub mod backup;
mod bridge;
mod checkpoints;
pub mod duck;
mod error;
mod files;
mod location;
mod log_cache;
pub mod maintain;
mod snapshots;
mod storage;
mod table;

pub use arrow;
pub use bridge::{batches_to_polars, duckdb_to_lake, lake_to_duckdb, polars_to_batches};
pub use error::LakeError;
pub use files::{FileStore, StoredFile};
pub use location::{resolve_root, Lake};
pub use storage::CREDENTIALS_FILE_ENV;
pub use table::{At, Commit, CommitMetadata, Staged, Table, TableFile, WriteMode, SCAN_BATCH_ROWS};
