//! Staleness from the tables themselves: an asset is stale when it was never materialised, when its
//! code version changed, or when an upstream table's data changed after the version its last
//! commit read (the caller passes each upstream's last data-changing version, so maintenance
//! commits do not count).
//! Assets without upstream tables observe the outside world (landing files) and are always stale.

use std::collections::BTreeMap;

use quantlens_lake::CommitMetadata;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Why the asset needs to run again, one reason per entry.
    Stale(Vec<String>),
}

impl Freshness {
    pub fn is_fresh(&self) -> bool {
        matches!(self, Freshness::Fresh)
    }

    pub fn describe(&self) -> String {
        match self {
            Freshness::Fresh => "fresh".into(),
            Freshness::Stale(reasons) => format!("stale: {}", reasons.join("; ")),
        }
    }
}

/// Decides whether an asset with `code_version` needs to run, given the metadata of its last
/// commit and the current versions of its upstream tables.
pub fn freshness(
    code_version: &str,
    last_commit: Option<&CommitMetadata>,
    current_upstream: &BTreeMap<String, i64>,
) -> Freshness {
    let Some(last) = last_commit else {
        return Freshness::Stale(vec!["never materialised".into()]);
    };
    if current_upstream.is_empty() {
        return Freshness::Stale(vec!["reads landing files, which may have changed".into()]);
    }
    let mut reasons = Vec::new();
    if last.code_version != code_version {
        reasons.push(format!(
            "code version changed ({} -> {code_version})",
            last.code_version
        ));
    }
    for (upstream, version) in current_upstream {
        match last.upstream.get(upstream) {
            // Reading a later version with the same content (after a compaction) is fine too.
            Some(read) if read >= version => {}
            Some(read) => reasons.push(format!("{upstream} changed (v{read} -> v{version})")),
            None => reasons.push(format!("{upstream} is a new dependency")),
        }
    }
    if reasons.is_empty() {
        Freshness::Fresh
    } else {
        Freshness::Stale(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(code: &str, upstream: &[(&str, i64)]) -> CommitMetadata {
        CommitMetadata {
            code_version: code.into(),
            upstream: upstream.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn staleness_reasons() {
        let current: BTreeMap<String, i64> = [("silver/prices".to_string(), 4)].into();
        assert!(!freshness("1", None, &current).is_fresh());
        assert_eq!(
            freshness("1", Some(&meta("1", &[("silver/prices", 4)])), &current),
            Freshness::Fresh
        );
        let stale = freshness("2", Some(&meta("1", &[("silver/prices", 3)])), &current);
        assert_eq!(
            stale,
            Freshness::Stale(vec![
                "code version changed (1 -> 2)".into(),
                "silver/prices changed (v3 -> v4)".into()
            ])
        );
        assert!(!freshness("1", Some(&meta("1", &[])), &BTreeMap::new()).is_fresh());
        // Read after a compaction (v6) whose data was last changed at v4: still fresh.
        assert!(freshness("1", Some(&meta("1", &[("silver/prices", 6)])), &current).is_fresh());
    }
}
