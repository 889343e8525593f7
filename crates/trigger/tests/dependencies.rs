//! The daemon is the one resident process on the VM, and the design forbids it from linking the
//! lake. This asks cargo itself for the daemon's normal (non-dev, non-build) dependency closure
//! and checks that none of the heavy crates is in it.

use std::collections::BTreeSet;
use std::process::Command;

/// Crate-name prefixes that must never be in the daemon's closure.
const FORBIDDEN: &[&str] = &[
    "deltalake",
    "polars",
    "duckdb",
    "arrow",
    "parquet",
    "object_store",
    "datafusion",
    "quantlens-lake",
    "quantlens-engine",
    "quantlens-pipeline",
];

#[test]
fn the_dependency_closure_excludes_the_lake() {
    // The paths cargo gives the running test, rather than those baked in at compile time: a test
    // binary built from a clone elsewhere with the same target directory may be reused here.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into());
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "quantlens-trigger",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(manifest_dir)
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let crates: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    // The tree really is the daemon's: these must be in it.
    for expected in [
        "quantlens-trigger",
        "quantlens-runs",
        "axum",
        "tokio",
        "sd-notify",
    ] {
        assert!(
            crates.contains(expected),
            "{expected} missing from:\n{text}"
        );
    }
    let offending: Vec<_> = crates
        .iter()
        .filter(|name| FORBIDDEN.iter().any(|f| name.starts_with(f)))
        .collect();
    assert!(
        offending.is_empty(),
        "the trigger daemon must not depend on {offending:?}"
    );
    eprintln!("{} crates in the daemon's closure", crates.len());
}
