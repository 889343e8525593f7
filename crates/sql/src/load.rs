//! Loading ASSETS_DIR: every `*.sql` file below it becomes an asset whose key is its path
//! (`gold/high_low_52w.sql` is `gold/high_low_52w`). Everything that can be known without the
//! lake is validated here, before a run touches anything: the header, the SQL (parsed by
//! DuckDB), the tables it reads, its parameters, its checks and its key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quantlens_engine::{Asset, OutputSchema};
use quantlens_graph::AssetKey;
use sha2::{Digest, Sha256};

use crate::checks::SqlCheck;
use crate::header::{self, Header, Materialize};
use crate::parse::references;

/// One SQL asset, validated.
#[derive(Debug)]
pub struct SqlAsset {
    pub key: String,
    pub path: PathBuf,
    pub header: Header,
    pub query: String,
    pub query_line: usize,
    /// A hash of the normalised file: editing it makes the asset (and its downstream) stale.
    pub code_version: String,
    pub checks: Vec<SqlCheck>,
    /// The asset keys it depends on.
    pub deps: BTreeSet<String>,
    /// The views the query reads, each with the table behind it.
    pub views: BTreeMap<String, String>,
}

/// A problem with one file, pointing at the line when there is one.
#[derive(Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Every problem found in ASSETS_DIR, one line each.
#[derive(Debug, thiserror::Error)]
pub struct LoadError(pub Vec<FileError>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid SQL asset(s):\n  {}", lines.join("\n  "))
    }
}

/// The parameters an `incremental_by_month` query must use.
const RANGE_PARAMETERS: [&str; 2] = ["start", "end"];

/// Loads and validates the SQL assets under `dir`. `builtin` are the assets compiled into the
/// binary: SQL assets may read their tables (and side tables) but not take their keys.
pub fn load_dir(dir: &Path, builtin: &[Asset]) -> Result<Vec<Arc<SqlAsset>>, LoadError> {
    let about_dir = |message: String| {
        LoadError(vec![FileError {
            path: dir.to_path_buf(),
            line: None,
            message,
        }])
    };
    let files =
        sql_files(dir).map_err(|e| about_dir(format!("cannot read the assets directory: {e}")))?;
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for path in files {
        let key = key_of(dir, &path);
        match parse_file(&path, key) {
            Ok(file) => parsed.push(file),
            Err(err) => errors.push(err),
        }
    }
    // Which table each view name stands for, and which asset owns that table.
    let mut views: BTreeMap<String, (String, String)> = BTreeMap::new();
    for asset in builtin {
        let key = asset.spec.key.to_string();
        for table in std::iter::once(&key).chain(&asset.side_tables) {
            views.insert(view_name(table), (table.clone(), key.clone()));
        }
    }
    // A SQL asset may take neither the key nor the view name of a table that exists already.
    let builtin_keys: BTreeSet<String> = views.values().map(|(table, _)| table.clone()).collect();
    let mut taken = Vec::new();
    for file in &parsed {
        let view = view_name(&file.key);
        match views.get(&view) {
            Some((table, _)) if !builtin_keys.contains(&file.key) => taken.push(FileError {
                path: file.path.clone(),
                line: None,
                message: format!(
                    "its view name `{view}` is taken by `{table}`; give the file another name"
                ),
            }),
            _ => {
                views.insert(view, (file.key.clone(), file.key.clone()));
            }
        }
    }
    errors.extend(taken);
    if parsed.is_empty() && errors.is_empty() {
        // Starting DuckDB costs a run ~20 ms: not for a folder without SQL assets.
        return Ok(Vec::new());
    }
    let conn = quantlens_lake::duck::connect().map_err(|e| about_dir(format!("DuckDB: {e}")))?;
    let mut assets = Vec::new();
    for file in parsed {
        match resolve(&conn, file, &views, &builtin_keys) {
            Ok(asset) => assets.push(asset),
            Err(err) => errors.push(err),
        }
    }
    if !errors.is_empty() {
        return Err(LoadError(errors));
    }
    Ok(assets.into_iter().map(Arc::new).collect())
}

/// The table keys the SQL files under `dir` give, valid files or not: what `backup` and
/// `maintain` must still cover while one file is broken.
pub fn keys_in(dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(sql_files(dir)?
        .iter()
        .map(|path| key_of(dir, path))
        .filter(|key| AssetKey::new(key.as_str()).is_ok())
        .collect())
}

/// The `*.sql` files below `dir`, sorted; hidden files and folders are skipped.
fn sql_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn key_of(dir: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(dir).unwrap_or(path).with_extension("");
    let segments: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    segments.join("/")
}

fn view_name(key: &str) -> String {
    key.replace('/', "_")
}

/// A file read and parsed, not yet checked against the other assets.
struct ParsedFile {
    key: String,
    path: PathBuf,
    header: Header,
    query: String,
    query_line: usize,
    code_version: String,
}

fn parse_file(path: &Path, key: String) -> Result<ParsedFile, FileError> {
    let error = |line, message: String| FileError {
        path: path.to_path_buf(),
        line,
        message,
    };
    if AssetKey::new(key.as_str()).is_err() {
        return Err(error(
            None,
            format!(
                "its path gives the key `{key}`; keys are lower-case letters, digits and `_`, \
                 with `/` between folders (rename the file)"
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(None, e.to_string()))?;
    let parsed = header::parse(&text).map_err(|e| error(Some(e.line), e.message))?;
    let query = parsed.query.trim_end();
    let query = query.strip_suffix(';').unwrap_or(query).to_string();
    Ok(ParsedFile {
        key,
        path: path.to_path_buf(),
        header: parsed.header,
        query,
        query_line: parsed.query_line,
        code_version: code_version(&text),
    })
}

/// A short hash of the file with line endings and trailing spaces normalised, so that saving it
/// from another editor does not make it stale.
fn code_version(text: &str) -> String {
    let normalised: Vec<&str> = text.lines().map(str::trim_end).collect();
    let digest = Sha256::digest(normalised.join("\n").trim_end().as_bytes());
    format!("sql-{}", &hex::encode(digest)[..12])
}

fn resolve(
    conn: &duckdb::Connection,
    file: ParsedFile,
    views: &BTreeMap<String, (String, String)>,
    builtin: &BTreeSet<String>,
) -> Result<SqlAsset, FileError> {
    let error = |line: Option<usize>, message: String| FileError {
        path: file.path.clone(),
        line,
        message,
    };
    if builtin.contains(&file.key) {
        return Err(error(
            None,
            format!(
                "`{}` is a built-in asset or one of its tables; give the file another name",
                file.key
            ),
        ));
    }
    let found = references(conn, &file.query)
        .map_err(|message| error(Some(file.query_line), format!("DuckDB: {message}")))?;
    let header = &file.header;
    match header.materialize {
        Materialize::IncrementalByMonth => {
            if header.time_column.is_none() {
                return Err(error(
                    None,
                    "`materialize: incremental_by_month` needs `time_column`: the date column \
                     whose month partitions the table"
                        .into(),
                ));
            }
            if let Some(missing) = RANGE_PARAMETERS
                .iter()
                .find(|p| !found.parameters.contains(**p))
            {
                return Err(error(
                    Some(file.query_line),
                    format!(
                        "an incremental_by_month query must use both $start and $end (the range \
                         of dates the run recomputes); ${missing} is missing"
                    ),
                ));
            }
        }
        Materialize::Table => {
            if header.time_column.is_some() {
                return Err(error(
                    None,
                    "`time_column` applies to `materialize: incremental_by_month` only".into(),
                ));
            }
        }
    }
    let allowed: &[&str] = match header.materialize {
        Materialize::IncrementalByMonth => &RANGE_PARAMETERS,
        Materialize::Table => &[],
    };
    if let Some(unknown) = found
        .parameters
        .iter()
        .find(|p| !allowed.contains(&p.as_str()))
    {
        return Err(error(
            Some(file.query_line),
            format!(
                "unknown parameter ${unknown}: only incremental_by_month queries get $start and \
                 $end"
            ),
        ));
    }
    let mut deps = BTreeSet::new();
    let mut read = BTreeMap::new();
    for table in &found.tables {
        let Some((table_key, owner)) = views.get(table) else {
            let known: Vec<&str> = views.keys().map(String::as_str).collect();
            return Err(error(
                Some(file.query_line),
                format!(
                    "unknown table `{table}`; the tables are {}",
                    known.join(", ")
                ),
            ));
        };
        deps.insert(owner.clone());
        read.insert(table.clone(), table_key.clone());
    }
    for dep in &header.depends {
        let known = views.values().any(|(_, owner)| owner == dep);
        if !known {
            return Err(error(
                None,
                format!("`depends` names `{dep}`, which is not an asset"),
            ));
        }
        deps.insert(dep.clone());
    }
    let mut checks = Vec::new();
    for (index, spec) in header.checks.iter().enumerate() {
        let check = spec
            .compile()
            .map_err(|message| error(None, format!("check {}: {message}", index + 1)))?;
        checks.push(check);
    }
    Ok(SqlAsset {
        key: file.key,
        path: file.path,
        header: file.header,
        query: file.query,
        query_line: file.query_line,
        code_version: file.code_version,
        checks,
        deps,
        views: read,
    })
}

impl SqlAsset {
    /// The engine asset that materialises this file.
    pub fn to_asset(self: &Arc<Self>) -> Asset {
        let sql = self.clone();
        let deps: Vec<&str> = self.deps.iter().map(String::as_str).collect();
        let mut asset = Asset::new(&self.key, OutputSchema::Inferred, move |ctx| {
            crate::compute::compute(ctx, sql.clone())
        })
        .deps(&deps)
        .code_version(&self.code_version)
        .description(&self.header.description)
        .defined_in(&self.path.display().to_string());
        if let Some(group) = &self.header.group {
            asset = asset.group(group);
        }
        if self.header.materialize == Materialize::IncrementalByMonth {
            asset = asset.partitioned_by_month();
        }
        for check in &self.checks {
            asset = asset.check(check.to_check());
        }
        asset
    }
}
