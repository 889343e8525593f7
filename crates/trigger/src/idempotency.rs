//! `Idempotency-Key`: a client that retries a POST /trigger (a timeout, a dropped connection)
//! with the same key gets the run its first attempt started instead of a second run or a 409.
//! Keys live in a bounded in-memory map and expire after a day; they do not survive a restart
//! or an `--idle-exit`, which is fine for retries measured in seconds as long as the idle
//! timeout is longer than the client's retry window. Only successful starts are remembered: a
//! request that got a 409 may be retried with the same key once the other run is over.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use quantlens_runs::RunId;

/// Most keys remembered; the oldest are forgotten first.
const CAPACITY: usize = 1024;
/// How long a key is remembered.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// What a key says about a request.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Never seen (or forgotten): start a run.
    New,
    /// The run this key started before.
    Replay(RunId),
    /// The key started a run of a different selection: the client reused a key by mistake.
    Conflict { run_id: RunId, selection: String },
}

struct Entry {
    run_id: RunId,
    selection: String,
    at: Instant,
}

/// Keys and the runs they started.
#[derive(Default)]
pub struct Keys {
    entries: HashMap<String, Entry>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<String>,
}

impl Keys {
    pub fn lookup(&mut self, key: &str, selection: &str) -> Seen {
        self.expire(Instant::now());
        match self.entries.get(key) {
            None => Seen::New,
            Some(e) if e.selection == selection => Seen::Replay(e.run_id.clone()),
            Some(e) => Seen::Conflict {
                run_id: e.run_id.clone(),
                selection: e.selection.clone(),
            },
        }
    }

    pub fn remember(&mut self, key: &str, run_id: RunId, selection: &str) {
        if self.order.len() == CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        let entry = Entry {
            run_id,
            selection: selection.to_owned(),
            at: Instant::now(),
        };
        if self.entries.insert(key.to_owned(), entry).is_none() {
            self.order.push_back(key.to_owned());
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.entries.get(oldest) {
                Some(e) if now.duration_since(e.at) < TTL => break,
                _ => {
                    self.entries.remove(oldest);
                    self.order.pop_front();
                }
            }
        }
    }
}

/// Keys are opaque to us but end up in no file or command line; still, hold them to printable
/// ASCII of sane length so a log line or error message can quote them.
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RunId {
        RunId::parse(s).unwrap()
    }

    #[test]
    fn replays_the_same_request_and_flags_a_reused_key() {
        let mut keys = Keys::default();
        assert_eq!(keys.lookup("k1", "*"), Seen::New);
        keys.remember("k1", id("r1"), "*");
        assert_eq!(keys.lookup("k1", "*"), Seen::Replay(id("r1")));
        assert_eq!(
            keys.lookup("k1", "gold/returns"),
            Seen::Conflict {
                run_id: id("r1"),
                selection: "*".into()
            }
        );
        assert_eq!(keys.lookup("k2", "*"), Seen::New);
    }

    #[test]
    fn bounded_oldest_first() {
        let mut keys = Keys::default();
        for i in 0..CAPACITY + 10 {
            keys.remember(&format!("k{i}"), id(&format!("r{i}")), "*");
        }
        assert_eq!(keys.entries.len(), CAPACITY);
        assert_eq!(keys.order.len(), CAPACITY);
        assert_eq!(keys.lookup("k0", "*"), Seen::New);
        assert_eq!(keys.lookup("k9", "*"), Seen::New);
        assert_eq!(keys.lookup("k10", "*"), Seen::Replay(id("r10")));
    }

    #[test]
    fn expired_keys_are_forgotten() {
        let mut keys = Keys::default();
        keys.remember("k1", id("r1"), "*");
        keys.expire(Instant::now() + TTL);
        assert!(keys.entries.is_empty() && keys.order.is_empty());
    }

    #[test]
    fn key_syntax() {
        assert!(valid_key("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"x".repeat(MAX_KEY_LEN + 1)));
    }
}
