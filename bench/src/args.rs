//! A small command-line reader: `--name value`, `--name=value` and `--flag`, every option
//! taken by name, anything left over refused.

use std::str::FromStr;

use anyhow::{Context, bail};

#[derive(Debug, Clone)]
pub struct Args {
    tokens: Vec<String>,
}

impl Args {
    pub fn new(tokens: Vec<String>) -> Self {
        Self { tokens }
    }

    /// `--name value` or `--name=value`, parsed; `default` when absent.
    pub fn value<T>(&mut self, name: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// `--name value`, absent allowed.
    pub fn optional<T>(&mut self, name: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.raw(name)? {
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|e| anyhow::anyhow!("--{name} {raw:?}: {e}")),
            None => Ok(None),
        }
    }

    /// Whether `--name` is present.
    pub fn flag(&mut self, name: &str) -> bool {
        let option = format!("--{name}");
        match self.tokens.iter().position(|t| *t == option) {
            Some(index) => {
                self.tokens.remove(index);
                true
            }
            None => false,
        }
    }

    /// Fails on anything not taken.
    pub fn finish(self) -> anyhow::Result<()> {
        if !self.tokens.is_empty() {
            bail!("unexpected arguments: {}", self.tokens.join(" "));
        }
        Ok(())
    }

    fn raw(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let option = format!("--{name}");
        let prefix = format!("--{name}=");
        if let Some(index) = self.tokens.iter().position(|t| t.starts_with(&prefix)) {
            let token = self.tokens.remove(index);
            return Ok(Some(token[prefix.len()..].to_owned()));
        }
        let Some(index) = self.tokens.iter().position(|t| *t == option) else {
            return Ok(None);
        };
        self.tokens.remove(index);
        if index >= self.tokens.len() {
            bail!("--{name} needs a value");
        }
        let value = self.tokens.remove(index);
        if value.starts_with("--") {
            return Err(anyhow::anyhow!("--{name} needs a value, got {value}"))
                .context("reading the arguments");
        }
        Ok(Some(value))
    }
}
