//! Run ids. A generated id is the UTC millisecond it was made plus six hex
//! digits (`20261129T121500.123Z-3f9a1c`), readable and unique; listings still
//! order runs by their recorded start time, since ids given with `--run-id`
//! need not sort by time. Ids also name directories, so user-supplied ones are
//! held to a character set that cannot contain `/` or start with `.`.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::RunsError;

/// Longest accepted run id, in bytes.
const MAX_LEN: usize = 64;

/// The id of one run, also the name of its directory under `STATE_DIR/runs`.
///
/// Generated ids sort by creation time. User-given ids sort by their text,
/// which is only chronological if the user made it so.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// A fresh id for a run starting now.
    pub fn generate() -> RunId {
        let now = chrono::Utc::now();
        RunId(format!(
            "{}-{:06x}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            suffix()
        ))
    }

    /// Accepts `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    pub fn parse(s: &str) -> Result<RunId, RunsError> {
        if is_valid(s) {
            Ok(RunId(s.to_owned()))
        } else {
            Err(RunsError::InvalidRunId {
                value: s.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(s: &str) -> bool {
    let Some((first, rest)) = s.as_bytes().split_first() else {
        return false;
    };
    s.len() <= MAX_LEN
        && first.is_ascii_alphanumeric()
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 24 bits that differ between processes (seeded from pid and clock) and,
/// thanks to the counter, never repeat within one process, which matters for
/// the trigger daemon that may start several runs in the same second.
fn suffix() -> u32 {
    static SEED: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (mix((u64::from(std::process::id()) << 32) ^ nanos) >> 40) as u32
    });
    seed.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)) & 0x00ff_ffff
}

/// The splitmix64 finaliser: spreads pid and clock bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = RunsError;

    fn from_str(s: &str) -> Result<RunId, RunsError> {
        RunId::parse(s)
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = RunsError;

    fn try_from(s: String) -> Result<RunId, RunsError> {
        if is_valid(&s) {
            Ok(RunId(s))
        } else {
            Err(RunsError::InvalidRunId { value: s })
        }
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_documented_shape() {
        let id = RunId::generate();
        let s = id.as_str();
        assert_eq!(s.len(), 27, "{s}");
        let (stamp, hex) = s.split_once('-').unwrap();
        assert!(chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ").is_ok());
        assert_eq!(hex.len(), 6);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(RunId::parse(s).unwrap(), id);
    }

    #[test]
    fn generated_ids_are_unique_within_a_process() {
        let mut ids: Vec<RunId> = (0..1000).map(|_| RunId::generate()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn ids_sort_by_time() {
        let older = RunId::parse("20261129T121500Z-ffffff").unwrap();
        let newer = RunId::parse("20261129T121501Z-000000").unwrap();
        assert!(older < newer);
        // The clock only moves forward, so a fresh id is newer than any of
        // these fixed past ones.
        assert!(RunId::parse("20200101T000000Z-ffffff").unwrap() < RunId::generate());
    }

    #[test]
    fn parse_accepts_safe_names() {
        for ok in ["a", "A-1", "backfill_2026.11", "9", &"x".repeat(64)] {
            assert!(RunId::parse(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn parse_rejects_anything_path_like() {
        for bad in [
            "",
            "../x",
            "..",
            ".",
            ".hidden",
            "a/b",
            "/abs",
            "a\\b",
            "-flag",
            "_x",
            "sp ace",
            "é",
            "a\0b",
            &"x".repeat(65),
        ] {
            match RunId::parse(bad) {
                Err(RunsError::InvalidRunId { value }) => assert_eq!(value, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn serde_validates() {
        let id: RunId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(id.as_str(), "r-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r-1\"");
        assert!(serde_json::from_str::<RunId>("\"../etc\"").is_err());
    }

    #[test]
    fn display_and_from_str_round_trip() {
        let id: RunId = "run.7".parse().unwrap();
        assert_eq!(id.to_string(), "run.7");
        assert!("a/b".parse::<RunId>().is_err());
    }
}
