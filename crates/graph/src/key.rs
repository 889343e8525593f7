//! Asset keys: the stable, human-readable names of assets (`layer/name`, e.g.
//! `silver/prices`). The grammar is deliberately narrow so that a key can double as a path
//! segment, a SQL view name and a Mermaid node id without quoting, and so that anything
//! outside it can be rejected before it reaches storage or a query.

use std::fmt;
use std::str::FromStr;

use crate::error::GraphError;

/// Longest accepted key, in bytes (keys are ASCII, so also in characters).
pub(crate) const MAX_KEY_LEN: usize = 128;

/// The name of an asset: one or more segments of `[a-z0-9_]+` joined by `/`, at most 128
/// characters, e.g. `silver/prices`. The first segment is the asset's layer.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct AssetKey(String);

impl AssetKey {
    /// Validates `key` against the key grammar.
    pub fn new(key: impl Into<String>) -> Result<AssetKey, GraphError> {
        let key = key.into();
        if is_valid_key(&key) {
            Ok(AssetKey(key))
        } else {
            Err(GraphError::InvalidKey { key })
        }
    }

    /// The key as written, e.g. `silver/prices`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment, e.g. `silver` for `silver/prices`.
    pub fn layer(&self) -> &str {
        self.0
            .split_once('/')
            .map_or(self.0.as_str(), |(layer, _)| layer)
    }

    /// The key with `/` replaced by `_`, e.g. `silver_prices`, for use as a SQL view name.
    ///
    /// Distinct keys can share a view name (`a/b_c` and `a_b/c`); callers that need
    /// uniqueness must check for it.
    pub fn view_name(&self) -> String {
        self.0.replace('/', "_")
    }
}

fn is_valid_key(key: &str) -> bool {
    key.len() <= MAX_KEY_LEN
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

impl fmt::Display for AssetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AssetKey {
    type Err = GraphError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AssetKey::new(s)
    }
}

impl TryFrom<String> for AssetKey {
    type Error = GraphError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        AssetKey::new(value)
    }
}

impl TryFrom<&str> for AssetKey {
    type Error = GraphError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        AssetKey::new(value)
    }
}

impl From<AssetKey> for String {
    fn from(key: AssetKey) -> String {
        key.0
    }
}

impl AsRef<str> for AssetKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::Deserialize;

    #[test]
    fn accepts_well_formed_keys() {
        for key in [
            "prices",
            "silver/prices",
            "gold/market_daily",
            "a/b/c_1",
            "0/9_",
        ] {
            let parsed = AssetKey::new(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(parsed.as_str(), key);
            assert_eq!(parsed.to_string(), key);
        }
        let max = "a".repeat(MAX_KEY_LEN);
        assert!(AssetKey::new(max).is_ok());
    }

    #[test]
    fn rejects_malformed_keys() {
        let too_long = "a".repeat(MAX_KEY_LEN + 1);
        for key in [
            "",
            "/",
            "silver/",
            "/silver",
            "silver//prices",
            "Silver/prices",
            "silver-prices",
            "silver prices",
            "silver/prices\n",
            "silver.prices",
            "../etc/passwd",
            "prïces",
            too_long.as_str(),
        ] {
            assert_eq!(
                AssetKey::new(key),
                Err(GraphError::InvalidKey {
                    key: key.to_owned()
                }),
                "{key:?} should be rejected"
            );
        }
    }

    #[test]
    fn invalid_key_message_explains_the_rule() {
        let msg = AssetKey::new("Bad Key").unwrap_err().to_string();
        assert!(msg.contains("\"Bad Key\""), "{msg}");
        assert!(msg.contains("lowercase letters, digits or '_'"), "{msg}");
        assert!(msg.contains("128"), "{msg}");
    }

    #[test]
    fn layer_and_view_name() {
        let key = AssetKey::new("silver/prices").unwrap();
        assert_eq!(key.layer(), "silver");
        assert_eq!(key.view_name(), "silver_prices");
        let single = AssetKey::new("prices").unwrap();
        assert_eq!(single.layer(), "prices");
        assert_eq!(single.view_name(), "prices");
        let deep = AssetKey::new("gold/fx/eur_usd").unwrap();
        assert_eq!(deep.layer(), "gold");
        assert_eq!(deep.view_name(), "gold_fx_eur_usd");
    }

    #[test]
    fn conversions_validate() {
        assert_eq!(
            "gold/returns".parse::<AssetKey>().unwrap().as_str(),
            "gold/returns"
        );
        assert!("Gold".parse::<AssetKey>().is_err());
        assert!(AssetKey::try_from(String::from("a//b")).is_err());
        let key = AssetKey::try_from(String::from("a/b")).unwrap();
        assert_eq!(String::from(key), "a/b");
    }

    #[test]
    fn deserialization_goes_through_validation() {
        let de: serde::de::value::StringDeserializer<serde::de::value::Error> =
            String::from("silver/prices").into_deserializer();
        assert_eq!(
            AssetKey::deserialize(de).unwrap(),
            AssetKey::new("silver/prices").unwrap()
        );

        let de: serde::de::value::StringDeserializer<serde::de::value::Error> =
            String::from("DROP TABLE").into_deserializer();
        let err = AssetKey::deserialize(de).unwrap_err().to_string();
        assert!(err.contains("invalid asset key"), "{err}");
    }
}
