//! Reading variables: the [`Env`] every config is built from, and the [`ConfigError`] naming
//! the variable that is missing or malformed.

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use url::Url;

/// A source of configuration variables. Empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Every variable, for handing the same configuration to a child process.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub(super) fn required(&self, key: &'static str) -> Result<&str, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(key, "is required but not set"))
    }

    /// The variable parsed, or `default` when unset; a refusal shows the value given.
    pub(super) fn parse_or<T: FromStr>(
        &self,
        key: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse_showing(key, default, true)
    }

    /// [`Env::parse_or`] for a value that may hold a password (a connection URL): a refusal
    /// names the variable and the reason, never the value.
    pub(super) fn parse_secret_or<T: FromStr>(
        &self,
        key: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse_showing(key, default, false)
    }

    fn parse_showing<T: FromStr>(
        &self,
        key: &'static str,
        default: T,
        show_value: bool,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        raw.parse().map_err(|e: T::Err| {
            let reason = if show_value {
                format!("{raw:?}: {e}")
            } else {
                e.to_string()
            };
            ConfigError::new(key, reason)
        })
    }

    pub(super) fn duration_or(
        &self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw).map_err(|e| {
                ConfigError::new(
                    key,
                    format!("{raw:?} is not a duration ({e}); try 10s or 5m"),
                )
            }),
        }
    }

    /// A switch: `on`/`off`, `true`/`false` or `1`/`0` (any case), or `default` when unset.
    pub(super) fn flag_or(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        match raw.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => Err(ConfigError::new(
                key,
                format!("{raw:?} is not a switch; expected on or off"),
            )),
        }
    }

    pub(super) fn url_or(&self, key: &'static str, default: &str) -> Result<Url, ConfigError> {
        let raw = self.get(key).unwrap_or(default);
        Url::parse(raw).map_err(|e| ConfigError::new(key, format!("{raw:?} is not a URL ({e})")))
    }
}

/// A configuration value that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable} {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}
