//! The files of one run directory. `run.json` is replaced by rename so a
//! reader never sees half a record, even if the worker is killed mid-write;
//! `events.ndjson` and `worker.log` are only ever appended to with `O_APPEND`
//! and one `write` per line, so concurrent writers (the worker and a parent
//! redirecting its output) interleave whole lines.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde_json::Value;

use crate::{RunId, RunRecord, RunsError};

pub(crate) const RECORD_FILE: &str = "run.json";
const RECORD_TMP_FILE: &str = "run.json.tmp";
const EVENTS_FILE: &str = "events.ndjson";
const LOG_FILE: &str = "worker.log";

/// How much of the log to read per step when looking for its last lines.
const TAIL_CHUNK: u64 = 16 * 1024;

/// Replaces `path` (a file in `dir`) with `bytes`: written to `tmp` beside it and fsynced, renamed
/// over it, then the directory fsynced, so after a power cut the file is the old one or the new
/// one, never a mix.
pub(crate) fn replace_file(
    dir: &Path,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), RunsError> {
    let written = (|| {
        let mut file = File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(RunsError::io(tmp, e));
    }
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(RunsError::io(path, e));
    }
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| RunsError::io(dir, e))
}

/// Replaces the file `path` with `bytes` atomically (see [`replace_file`]), through a temporary
/// file beside it named after this process.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), RunsError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    replace_file(dir, &tmp, path, bytes)
}

/// The three files of one run.
#[derive(Clone, Debug)]
pub struct RunFiles {
    id: RunId,
    dir: PathBuf,
}

impl RunFiles {
    pub(crate) fn new(id: RunId, dir: PathBuf) -> RunFiles {
        RunFiles { id, dir }
    }

    /// The run these files belong to.
    pub fn run_id(&self) -> &RunId {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join(EVENTS_FILE)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Replaces `run.json` with `record` (pretty JSON), creating the run
    /// directory if needed. The new content is fsynced before the rename and
    /// the directory after it, so after a power cut the record is either the
    /// old one or the new one.
    pub fn write_record(&self, record: &RunRecord) -> Result<(), RunsError> {
        fs::create_dir_all(&self.dir).map_err(|e| RunsError::io(&self.dir, e))?;
        let mut json = serde_json::to_vec_pretty(record)
            .map_err(|e| RunsError::io(self.record_path(), e.into()))?;
        json.push(b'\n');

        replace_file(
            &self.dir,
            &self.dir.join(RECORD_TMP_FILE),
            &self.record_path(),
            &json,
        )
    }

    /// Reads `run.json` as it is on disk, without the crash detection that
    /// [`crate::StateDir::read_run`] applies.
    pub fn read_record(&self) -> Result<RunRecord, RunsError> {
        let path = self.record_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RunsError::NotFound {
                    run_id: self.id.to_string(),
                })
            }
            Err(e) => return Err(RunsError::io(path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| RunsError::Corrupt { path, source })
    }

    /// Appends `event` as one line of `events.ndjson`, adding a `"ts"` (UTC,
    /// RFC 3339, milliseconds) unless it has one. A value that is not an
    /// object is wrapped as `{"ts": .., "event": value}` so every line stays
    /// an object.
    pub fn append_event(&self, event: &Value) -> Result<(), RunsError> {
        let now = || Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
        let mut line = match event {
            Value::Object(map) if map.contains_key("ts") => serde_json::to_vec(event),
            Value::Object(map) => {
                let mut map = map.clone();
                map.insert("ts".to_owned(), now());
                serde_json::to_vec(&map)
            }
            other => serde_json::to_vec(&serde_json::json!({ "ts": now(), "event": other })),
        }
        .map_err(|e| RunsError::io(self.events_path(), e.into()))?;
        line.push(b'\n');
        self.append(&self.events_path(), &line)
    }

    /// Appends `line` to `worker.log`, adding the newline if missing.
    pub fn append_log(&self, line: &str) -> Result<(), RunsError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            buf.push(b'\n');
        }
        self.append(&self.log_path(), &buf)
    }

    /// Opens `worker.log` for appending (creating it and the run directory),
    /// for a parent to hand to the worker as its stdout and stderr.
    pub fn open_log(&self) -> Result<File, RunsError> {
        self.open_append(&self.log_path())
    }

    /// The last `lines` lines of `worker.log` (lossily decoded), read
    /// backwards from the end so a huge log costs only what is returned. A
    /// log that does not exist yet reads as empty.
    pub fn read_log_tail(&self, lines: usize) -> Result<String, RunsError> {
        let path = self.log_path();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(RunsError::io(path, e)),
        };
        let tail = tail_bytes(&file, lines).map_err(|e| RunsError::io(&path, e))?;
        Ok(String::from_utf8_lossy(&tail).into_owned())
    }

    /// The last `limit` events of `events.ndjson`, oldest first. A line that is not JSON (a
    /// write cut short by a crash) is skipped; a run with no events yet has none.
    pub fn read_events(&self, limit: usize) -> Result<Vec<Value>, RunsError> {
        let path = self.events_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunsError::io(path, e)),
        };
        let events: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let skip = events.len().saturating_sub(limit);
        Ok(events.into_iter().skip(skip).collect())
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> Result<(), RunsError> {
        let mut file = self.open_append(path)?;
        // One write call: with O_APPEND that keeps concurrent lines whole.
        file.write_all(bytes).map_err(|e| RunsError::io(path, e))
    }

    fn open_append(&self, path: &Path) -> Result<File, RunsError> {
        let open = || OpenOptions::new().append(true).create(true).open(path);
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).map_err(|e| RunsError::io(&self.dir, e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| RunsError::io(path, e))
    }
}

/// The bytes after the `lines`-th newline from the end, not counting a
/// newline that ends the file (that one closes the last line rather than
/// starting an empty one).
fn tail_bytes(file: &File, lines: usize) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    if lines == 0 || len == 0 {
        return Ok(Vec::new());
    }
    let mut start = 0;
    let mut found = 0;
    let mut pos = len;
    let mut chunk = Vec::new();
    'scan: while pos > 0 {
        let n = TAIL_CHUNK.min(pos);
        pos -= n;
        chunk.resize(n as usize, 0);
        file.read_exact_at(&mut chunk, pos)?;
        for (i, &b) in chunk.iter().enumerate().rev() {
            let at = pos + i as u64;
            if b == b'\n' && at != len - 1 {
                found += 1;
                if found == lines {
                    start = at + 1;
                    break 'scan;
                }
            }
        }
    }
    let mut tail = vec![0; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::{AssetRun, AssetStatus, CheckResult, RunStatus};

    fn files(tmp: &TempDir) -> RunFiles {
        let id = RunId::parse("20261129T121500Z-3f9a1c").unwrap();
        RunFiles::new(id.clone(), tmp.path().join("runs").join(id.as_str()))
    }

    fn sample(id: &RunId) -> RunRecord {
        let mut rec = RunRecord::new(id.clone(), "http", "gold/daily_returns+");
        rec.status = RunStatus::Failed;
        rec.finished_at = Some(Utc::now());
        rec.exit_code = Some(1);
        rec.error = Some("1 asset failed".into());
        let mut a = AssetRun::pending("silver/prices");
        a.status = AssetStatus::Failed;
        a.attempts = 2;
        a.started_at = Some(Utc::now());
        a.table_version = Some(42);
        a.rows_written = Some(10_000);
        a.checks.push(CheckResult {
            name: "not_null(close)".into(),
            passed: false,
            blocking: true,
            detail: "3 nulls".into(),
        });
        a.error = Some("check failed".into());
        let mut b = AssetRun::pending("gold/daily_returns");
        b.status = AssetStatus::Skipped;
        b.error = Some("upstream failed: silver/prices".into());
        rec.assets = vec![a, b];
        rec
    }

    #[test]
    fn record_round_trips() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        let rec = sample(f.run_id());
        f.write_record(&rec).unwrap();
        assert_eq!(f.read_record().unwrap(), rec);
        let text = fs::read_to_string(f.record_path()).unwrap();
        assert!(text.contains("\n  \"status\": \"failed\""), "{text}");
    }

    #[test]
    fn rewrite_is_atomic_and_leaves_no_temp_file() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        let mut rec = sample(f.run_id());
        f.write_record(&rec).unwrap();
        rec.status = RunStatus::Succeeded;
        rec.assets.clear();
        f.write_record(&rec).unwrap();
        assert_eq!(f.read_record().unwrap(), rec);
        let names: Vec<_> = fs::read_dir(f.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![RECORD_FILE.to_owned()]);
    }

    #[test]
    fn read_record_missing_and_corrupt() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        match f.read_record() {
            Err(RunsError::NotFound { run_id }) => assert_eq!(run_id, f.run_id().as_str()),
            other => panic!("{other:?}"),
        }
        fs::create_dir_all(f.dir()).unwrap();
        fs::write(f.record_path(), b"{\"run_id\": \"trunc").unwrap();
        match f.read_record() {
            Err(RunsError::Corrupt { path, .. }) => assert_eq!(path, f.record_path()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_lines_with_timestamps() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        f.append_event(&serde_json::json!({"event": "asset_started", "asset": "a\nb"}))
            .unwrap();
        f.append_event(&serde_json::json!({"event": "x", "ts": "keep me"}))
            .unwrap();
        f.append_event(&serde_json::json!("bare")).unwrap();
        let text = fs::read_to_string(f.events_path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let ts = lines[0]["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-29T12:15:00.123Z".len(),
            "{ts}"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
        assert_eq!(lines[0]["asset"], "a\nb");
        assert_eq!(lines[1]["ts"], "keep me");
        assert_eq!(lines[2]["event"], "bare");
        assert!(lines[2]["ts"].is_string());
    }

    #[test]
    fn log_appends_lines() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        f.append_log("one").unwrap();
        f.append_log("two\n").unwrap();
        assert_eq!(fs::read_to_string(f.log_path()).unwrap(), "one\ntwo\n");
        assert_eq!(f.read_log_tail(1).unwrap(), "two\n");
        assert_eq!(f.read_log_tail(5).unwrap(), "one\ntwo\n");
        assert_eq!(f.read_log_tail(0).unwrap(), "");
    }

    #[test]
    fn log_tail_of_missing_log_is_empty() {
        let tmp = TempDir::new();
        assert_eq!(files(&tmp).read_log_tail(10).unwrap(), "");
    }

    #[test]
    fn log_tail_of_a_large_file() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        fs::create_dir_all(f.dir()).unwrap();
        let mut text = String::new();
        for i in 0..200_000 {
            text.push_str(&format!("line {i} of the worker log\n"));
        }
        fs::write(f.log_path(), &text).unwrap();
        let tail = f.read_log_tail(3).unwrap();
        assert_eq!(
            tail,
            "line 199997 of the worker log\nline 199998 of the worker log\nline 199999 of the worker log\n"
        );
        // A window that spans several read chunks.
        let tail = f.read_log_tail(2000).unwrap();
        assert_eq!(tail.lines().count(), 2000);
        assert!(tail.starts_with("line 198000 "));
        assert_eq!(f.read_log_tail(1_000_000).unwrap(), text);
    }

    #[test]
    fn log_tail_without_trailing_newline() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        fs::create_dir_all(f.dir()).unwrap();
        fs::write(f.log_path(), "a\nb\npartial").unwrap();
        assert_eq!(f.read_log_tail(1).unwrap(), "partial");
        assert_eq!(f.read_log_tail(2).unwrap(), "b\npartial");
    }

    #[test]
    fn open_log_appends() {
        let tmp = TempDir::new();
        let f = files(&tmp);
        f.append_log("first").unwrap();
        writeln!(f.open_log().unwrap(), "second").unwrap();
        assert_eq!(f.read_log_tail(10).unwrap(), "first\nsecond\n");
    }
}
