//! The one error type of this crate. Every variant carries the names a user needs to fix the
//! problem (the assets involved, the valid alternatives), because these errors surface
//! directly in the CLI and the HTTP API rather than being handled programmatically.

/// Everything that can go wrong while declaring a graph or selecting from it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    /// An asset key that breaks the key grammar.
    #[error(
        "invalid asset key {key:?}: use one or more segments of lowercase letters, digits \
         or '_' joined by '/' (e.g. \"silver/prices\"), at most {max} characters",
        max = crate::key::MAX_KEY_LEN
    )]
    InvalidKey { key: String },

    /// Two specs declare the same key.
    #[error("asset `{key}` is declared more than once; every asset key must be unique")]
    DuplicateKey { key: String },

    /// A spec depends on a key that no spec declares.
    #[error(
        "asset `{asset}` depends on `{dependency}`, which is not a declared asset; \
         declare it or remove the dependency"
    )]
    UnknownDependency { asset: String, dependency: String },

    /// The dependencies loop. `path` follows data flow (`a -> b` means `b` reads `a`) and
    /// repeats its first key at the end.
    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },

    /// A selection names a key that is not in the graph.
    #[error("unknown asset `{key}`; valid keys: {}", list(valid))]
    UnknownKey { key: String, valid: Vec<String> },

    /// A selection names a group that no asset belongs to.
    #[error("unknown group `{group}`; valid groups: {}", list(valid))]
    UnknownGroup { group: String, valid: Vec<String> },

    /// A selection string that does not parse.
    #[error("invalid selection `{selection}`: {reason}")]
    InvalidSelection { selection: String, reason: String },
}

// An empty graph would otherwise render as "valid keys: ", which reads like a truncated message.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}
