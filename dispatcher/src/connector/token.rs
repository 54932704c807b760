//! The bot's access token from the Entra client-credentials flow, cached and refreshed before
//! it expires, with one refresh in flight however many sends want a token at once.

use std::{
    sync::RwLock,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use herald_shared::{
    config::{BotCredentials, TeamsEndpoints},
    error::Chain,
};

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

struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Refresh this long before expiry (or at 80 % of the lifetime for short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

pub struct TokenSource {
    http: reqwest::Client,
    token_url: url::Url,
    scope: String,
    client_id: String,
    client_secret: SecretString,
    cached: RwLock<Option<CachedToken>>,
    /// Held by the one task that refreshes; the others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
    /// Tokens fetched (the `herald_token_refreshes_total` metric).
    refreshes: Counter,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url.as_str())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        bot: &BotCredentials,
        teams: &TeamsEndpoints,
        refreshes: Counter,
    ) -> Self {
        Self {
            http,
            token_url: teams.token_url.clone(),
            scope: teams.token_scope.clone(),
            client_id: bot.app_id.clone(),
            client_secret: bot.app_password.clone(),
            cached: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes,
        }
    }

    /// How many tokens were fetched so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.get()
    }

    /// A valid token, from the cache when it is fresh.
    pub async fn token(&self) -> Result<SecretString, TokenError> {
        if let Some(token) = self.fresh(Instant::now()) {
            return Ok(token);
        }
        let _refreshing = self.refreshing.lock().await;
        // Another task may have refreshed while this one waited for the lock.
        let now = Instant::now();
        if let Some(token) = self.fresh(now) {
            return Ok(token);
        }
        match self.fetch().await {
            Ok(token) => Ok(token),
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

    /// Forgets the cached token (Teams answered 401 with it).
    pub fn invalidate(&self) {
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached token while it needs no refresh.
    fn fresh(&self, now: Instant) -> Option<SecretString> {
        self.cached_before(now, |t| t.refresh_at)
    }

    /// The cached token while Teams still accepts it (due for refresh or not).
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

    async fn fetch(&self) -> Result<SecretString, TokenError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let started = Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
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
        let value = SecretString::from(parsed.access_token);
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
            value: value.clone(),
            refresh_at: started + refresh_after,
            expires_at: started + lifetime,
        });
        self.refreshes.inc();
        tracing::info!(expires_in = parsed.expires_in, "fetched a bot token");
        Ok(value)
    }
}

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
