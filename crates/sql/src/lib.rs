//! SQL assets: tables a team adds by dropping a `*.sql` file under ASSETS_DIR, with no rebuild
//! of the binary. Each file is one DuckDB SELECT behind a `-- quantlens:` YAML header
//! ([`header`]); its key comes from its path, its dependencies from the tables the query names
//! ([`parse`], DuckDB's own parser), its code version from a hash of the file. Loaded
//! ([`load_dir`]) and validated before anything runs, a SQL asset becomes an ordinary engine
//! asset ([`SqlAsset::to_asset`]): same checks before the commit, schema lock, lineage,
//! staleness, and the engine's incremental months ([`compute`]). See docs/authoring.md.

mod builtin;
mod checks;
mod compute;
mod header;
mod load;
mod parse;
mod validate;

pub use header::{Header, Materialize};
pub use load::{keys_in, load_dir, FileError, LoadError, SqlAsset};
pub use validate::{check_against_lake, Verdict};
