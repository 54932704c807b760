//! Entra's client-credentials flow, shared by the bot's Bot Connector token
//! ([`crate::connector::TokenSource`]) and Graph's per-tenant tokens
//! ([`crate::graph::GraphTokens`]): fetching a token with the bot's credentials, and a cache
//! slot that refreshes it before it expires, with one refresh in flight however many callers
//! want a token at once.

use std::{
    future::Future,
    sync::RwLock,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use herald_shared::{config::BotCredentials, error::Chain};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint could not be reached")]
    Unreachable(#[source] reqwest::Error),
    #[error("the token endpoint refused the bot's credentials ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the token endpoint answered something that is not a token: {0}")]
    Malformed(String),
}

impl TokenError {
    /// A refusal is a configuration problem (wrong password, wrong tenant); the rest pass.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// A token and when it is due for refresh and unusable.
pub(crate) struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
    /// The lifetime the token endpoint gave, in seconds (for logs).
    expires_in: u64,
}

impl CachedToken {
    /// The lifetime the token endpoint gave it, in seconds.
    pub(crate) fn expires_in(&self) -> u64 {
        self.expires_in
    }
}

/// Refresh this long before expiry (or at 80 % of the lifetime for short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The bot's app registration, as the token endpoint is shown it.
pub(crate) struct ClientCredentials {
    http: reqwest::Client,
    client_id: String,
    client_secret: SecretString,
}

impl ClientCredentials {
    pub(crate) fn new(http: reqwest::Client, bot: &BotCredentials) -> Self {
        Self {
            http,
            client_id: bot.app_id.clone(),
            client_secret: bot.app_password.clone(),
        }
    }

    /// A new token for `scope` from `token_url`, timed from when it was asked for (so a slow
    /// answer never makes it look younger than it is).
    pub(crate) async fn fetch(
        &self,
        token_url: url::Url,
        scope: &str,
    ) -> Result<CachedToken, TokenError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", scope),
        ];
        let started = Instant::now();
        let response = self
            .http
            .post(token_url)
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(TokenError::Unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(TokenError::Unreachable)?;
        if !status.is_success() {
            return Err(TokenError::Refused {
                status: status.as_u16(),
                body: truncate(&body, 500),
            });
        }
        let parsed: TokenResponse =
            serde_json::from_str(&body).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let lifetime = Duration::from_secs(parsed.expires_in);
        let refresh_after = if lifetime > REFRESH_MARGIN * 2 {
            lifetime - REFRESH_MARGIN
        } else {
            lifetime.mul_f32(0.8)
        };
        Ok(CachedToken {
            value: SecretString::from(parsed.access_token),
            refresh_at: started + refresh_after,
            expires_at: started + lifetime,
            expires_in: parsed.expires_in,
        })
    }
}

/// One cached token: served while fresh, refreshed by one caller at a time while the others
/// wait for its result, and kept in use while a refresh fails but it has not expired.
#[derive(Default)]
pub(crate) struct TokenSlot {
    cached: RwLock<Option<CachedToken>>,
    /// Held by the one task that refreshes; the others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl TokenSlot {
    /// A valid token, from the cache when it is fresh, else from `fetch`.
    pub(crate) async fn token<F, Fut>(&self, fetch: F) -> Result<SecretString, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, TokenError>>,
    {
        if let Some(token) = self.fresh(Instant::now()) {
            return Ok(token);
        }
        let _refreshing = self.refreshing.lock().await;
        // Another task may have refreshed while this one waited for the lock.
        let now = Instant::now();
        if let Some(token) = self.fresh(now) {
            return Ok(token);
        }
        match fetch().await {
            Ok(token) => {
                let value = token.value.clone();
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
                Ok(value)
            }
            // The old token is still usable: keep sending, try again on the next call.
            Err(error) => match self.unexpired(now) {
                Some(token) => {
                    tracing::warn!(error = %Chain(&error), "token refresh failed; using the current token until it expires");
                    Ok(token)
                }
                None => Err(error),
            },
        }
    }

    /// Forgets the cached token (the service answered 401 with it).
    pub(crate) fn invalidate(&self) {
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached token while it needs no refresh.
    fn fresh(&self, now: Instant) -> Option<SecretString> {
        self.cached_before(now, |t| t.refresh_at)
    }

    /// The cached token while the service still accepts it (due for refresh or not).
    fn unexpired(&self, now: Instant) -> Option<SecretString> {
        self.cached_before(now, |t| t.expires_at)
    }

    fn cached_before(
        &self,
        now: Instant,
        deadline: fn(&CachedToken) -> Instant,
    ) -> Option<SecretString> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|t| now < deadline(t))
            .map(|t| t.value.clone())
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), marked when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    fn token(value: &str, refresh_in: Duration, expires_in: Duration) -> CachedToken {
        let now = Instant::now();
        CachedToken {
            value: SecretString::from(value.to_owned()),
            refresh_at: now + refresh_in,
            expires_at: now + expires_in,
            expires_in: expires_in.as_secs(),
        }
    }

    #[tokio::test]
    async fn one_refresh_serves_every_waiting_caller() {
        let slot = Arc::new(TokenSlot::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let callers = (0..20).map(|_| {
            let (slot, fetches) = (slot.clone(), fetches.clone());
            tokio::spawn(async move {
                slot.token(|| async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(token(
                        "t1",
                        Duration::from_secs(60),
                        Duration::from_secs(90),
                    ))
                })
                .await
            })
        });
        for caller in callers.collect::<Vec<_>>() {
            assert_eq!(caller.await.unwrap().unwrap().expose_secret(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_unexpired_token_and_invalidate_forgets_it() {
        let slot = TokenSlot::default();
        // Due for refresh at once, valid for a minute.
        let first = slot
            .token(|| async { Ok(token("old", Duration::ZERO, Duration::from_secs(60))) })
            .await
            .unwrap();
        assert_eq!(first.expose_secret(), "old");
        let kept = slot
            .token(|| async { Err(TokenError::Malformed("down".into())) })
            .await
            .unwrap();
        assert_eq!(kept.expose_secret(), "old");
        slot.invalidate();
        assert!(
            slot.token(|| async { Err(TokenError::Malformed("down".into())) })
                .await
                .is_err()
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
