//! The bot's access token for the Bot Connector, from the Entra client-credentials flow
//! ([`crate::entra`]), cached and refreshed before it expires, with one refresh in flight
//! however many sends want a token at once.

use prometheus_client::metrics::counter::Counter;
use secrecy::SecretString;

use herald_shared::config::{BotCredentials, TeamsEndpoints};

pub use crate::entra::TokenError;
use crate::entra::{ClientCredentials, TokenSlot};

pub struct TokenSource {
    credentials: ClientCredentials,
    token_url: url::Url,
    scope: String,
    slot: TokenSlot,
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
            credentials: ClientCredentials::new(http, bot),
            token_url: teams.token_url.clone(),
            scope: teams.token_scope.clone(),
            slot: TokenSlot::default(),
            refreshes,
        }
    }

    /// How many tokens were fetched so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.get()
    }

    /// A valid token, from the cache when it is fresh.
    pub async fn token(&self) -> Result<SecretString, TokenError> {
        self.slot
            .token(|| async {
                let token = self
                    .credentials
                    .fetch(self.token_url.clone(), &self.scope)
                    .await?;
                self.refreshes.inc();
                tracing::info!(expires_in = token.expires_in(), "fetched a bot token");
                Ok(token)
            })
            .await
    }

    /// Forgets the cached token (Teams answered 401 with it).
    pub fn invalidate(&self) {
        self.slot.invalidate();
    }
}
