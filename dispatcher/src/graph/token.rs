//! Graph tokens: client-credentials tokens issued by each user's tenant (Graph answers from
//! the directory of the token's tenant only), one cache slot per tenant, each refreshed
//! before it expires with one refresh in flight per tenant ([`crate::entra`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use percent_encoding::utf8_percent_encode;
use prometheus_client::metrics::counter::Counter;
use secrecy::SecretString;
use url::Url;

use herald_shared::config::{BotCredentials, GraphConfig, TENANT_PLACEHOLDER};

use super::client::PATH_SEGMENT;
use crate::entra::{ClientCredentials, TokenError, TokenSlot};

pub struct GraphTokens {
    credentials: ClientCredentials,
    /// The token URL with `{tenantId}` where the tenant goes.
    template: String,
    /// `{graph root}/.default`.
    scope: String,
    /// One slot per tenant, so a tenant's token is only ever handed out for that tenant's
    /// calls. Slots are a few hundred bytes and a dispatcher serves a bounded set of tenants,
    /// so they are kept for the life of the process.
    slots: Mutex<HashMap<String, Arc<TokenSlot>>>,
    /// Tokens fetched (the `herald_graph_token_refreshes_total` metric).
    refreshes: Counter,
}

impl std::fmt::Debug for GraphTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTokens")
            .field("template", &self.template)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl GraphTokens {
    pub fn new(
        http: reqwest::Client,
        bot: &BotCredentials,
        config: &GraphConfig,
        refreshes: Counter,
    ) -> Self {
        Self {
            credentials: ClientCredentials::new(http, bot),
            template: config.token_url_template.clone(),
            scope: config.scope(),
            slots: Mutex::default(),
            refreshes,
        }
    }

    /// How many Graph tokens were fetched so far, for every tenant.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.get()
    }

    /// A valid Graph token issued by `tenant`, from the cache when it is fresh.
    pub async fn token(&self, tenant: &str) -> Result<SecretString, TokenError> {
        let slot = self.slot(tenant);
        slot.token(|| async {
            let token = self
                .credentials
                .fetch(self.token_url(tenant)?, &self.scope)
                .await?;
            self.refreshes.inc();
            tracing::info!(
                tenant_id = tenant,
                expires_in = token.expires_in(),
                "fetched a Graph token"
            );
            Ok(token)
        })
        .await
    }

    /// Forgets the tenant's token (Graph answered 401 with it).
    pub fn invalidate(&self, tenant: &str) {
        self.slot(tenant).invalidate();
    }

    fn slot(&self, tenant: &str) -> Arc<TokenSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(tenant.to_owned()).or_default().clone()
    }

    /// The template with the tenant filled in (encoded: it is one path segment).
    fn token_url(&self, tenant: &str) -> Result<Url, TokenError> {
        let encoded = utf8_percent_encode(tenant, PATH_SEGMENT).to_string();
        let url = self.template.replace(TENANT_PLACEHOLDER, &encoded);
        // The configuration checked the template with a sample tenant.
        Url::parse(&url).map_err(|e| TokenError::Malformed(format!("token URL {url:?}: {e}")))
    }
}
