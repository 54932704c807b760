//! The bearer keys `/v1` accepts (`HERALD_API_KEYS`).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// The configured API keys. `Debug` shows how many there are, never a key.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<SecretString>);

impl ApiKeys {
    /// Reads `HERALD_API_KEYS`: keys separated by commas, blanks around them ignored.
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(|key| SecretString::from(key.to_owned()))
                .collect(),
        )
    }

    /// None configured: `/v1` refuses every call.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, each in constant time,
    /// so the time taken does not tell a caller how much of a key it guessed.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.iter().fold(false, |found, key| {
            found | constant_time_eq(key.expose_secret().as_bytes(), presented.as_bytes())
        })
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys, redacted)", self.0.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_whole_and_never_show_in_debug_output() {
        let keys = ApiKeys::parse("k-123, k-456,,");
        assert!(!keys.is_empty());
        assert!(keys.matches("k-456"));
        assert!(keys.matches("k-123"));
        assert!(!keys.matches("k-45"));
        assert!(!keys.matches("k-4567"));
        assert!(!keys.matches(""));
        let shown = format!("{keys:?}");
        assert_eq!(shown, "ApiKeys(2 keys, redacted)");
    }

    #[test]
    fn no_keys_match_nothing() {
        for raw in ["", " , "] {
            let keys = ApiKeys::parse(raw);
            assert!(keys.is_empty(), "{raw:?}");
            assert!(!keys.matches(""), "{raw:?}");
        }
    }
}
