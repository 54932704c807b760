//! Writing an error with its causes, each once.
//!
//! Herald's errors name their own layer only in `Display` and carry the cause as their
//! `source()` (`thiserror`'s `#[from]` and `#[source]`), so that a walk down the chain prints
//! every layer once. [`Chain`] is that walk: use it wherever an error becomes text, a log
//! field or something recorded (a problem's `detail`, a job's `lastError`, a dead-letter
//! reason). A bare `{error}` would drop the causes.

use std::{error::Error, fmt};

/// An error and its causes, written `outer: cause: cause…` by walking `source()`.
///
/// ```
/// # use herald_shared::error::Chain;
/// # let error = std::io::Error::other("disk full");
/// tracing::warn!(error = %Chain(&error), "saving failed");
/// let recorded = Chain(&error).to_string();
/// # assert_eq!(recorded, "disk full");
/// ```
///
/// Some libraries (redis, lapin) also print their cause in their own message; a cause whose
/// text the layer above already contains is skipped, so no text appears twice.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut above = self.0.to_string();
        f.write_str(&above)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !above.contains(&text) {
                write!(f, ": {text}")?;
            }
            above = text;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the job could not be queued")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("publishing failed")]
    struct Middle(#[source] std::io::Error);

    /// Prints its cause itself, as redis' and lapin's errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn every_layer_is_written_once_outermost_first() {
        let error = Outer(Middle(std::io::Error::other("connection reset")));
        assert_eq!(
            Chain(&error).to_string(),
            "the job could not be queued: publishing failed: connection reset"
        );
        assert_eq!(Chain(&error.0.0).to_string(), "connection reset");
    }

    #[test]
    fn a_cause_already_in_the_message_above_is_not_repeated() {
        let error = Repeating(std::io::Error::other("connection reset"));
        assert_eq!(Chain(&error).to_string(), "IO error: connection reset");
        #[derive(Debug, thiserror::Error)]
        #[error("redis is unavailable")]
        struct Store(#[source] Repeating);
        let error = Store(error);
        assert_eq!(
            Chain(&error).to_string(),
            "redis is unavailable: IO error: connection reset"
        );
    }

    /// `Box<dyn Error + Send + Sync>`, and `anyhow::Error` through `as_ref()`, are written the
    /// same way.
    #[test]
    fn boxed_errors_chain_too() {
        #[derive(Debug, thiserror::Error)]
        #[error("binding 0.0.0.0:3978")]
        struct Binding(#[source] std::io::Error);
        let error: Box<dyn Error + Send + Sync> =
            Box::new(Binding(std::io::Error::other("address in use")));
        assert_eq!(
            Chain(error.as_ref()).to_string(),
            "binding 0.0.0.0:3978: address in use"
        );
    }
}
