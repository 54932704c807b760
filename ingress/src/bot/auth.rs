//! Validation of the JWT Teams sends with every activity, with the checks of botbuilder-js
//! `channelValidation.ts` and teams.ts `service-token-validator.ts`.
//!
//! Keys come from the OpenID metadata document's `jwks_uri`, cached for a day and fetched
//! again when a token names an unknown `kid` (at most once per [`UNKNOWN_KID_REFRESH`], so a
//! flood of forged `kid`s cannot turn Herald into a load generator against Microsoft).
//!
//! Teams signs one token per serviceUrl and sends it with every activity until it nearly
//! expires, so a token that passed every check is remembered ([`VerifiedTokens`]) and the RSA
//! check, most of an activity's cost, runs once per token rather than once per activity.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use herald_shared::error::Chain;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

/// How long fetched keys are trusted before they are fetched again (botbuilder: 24 h).
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The least time between two fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(600);
/// Clock skew tolerated on `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 300;

/// Why a request's token was refused. The text goes back to the caller: it names the check
/// that failed, never a key or a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0} is not accepted; Teams signs with RS256")]
    Algorithm(String),
    #[error("the token's signing key {0:?} is not one of Teams' published keys")]
    UnknownKey(String),
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token's serviceurl claim does not match the activity's serviceUrl")]
    ServiceUrlMismatch,
    #[error("the signing key is not endorsed for channel {0:?}")]
    NotEndorsed(String),
    #[error("Teams' signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// Ours, not the caller's: Teams should retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }
}

/// What a valid token vouches for; checked against the activity once it is parsed.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    service_url: Option<String>,
    endorsements: Vec<String>,
}

impl VerifiedToken {
    /// The checks that need the activity: its serviceUrl equals the token's `serviceurl`
    /// claim (trailing `/` ignored), and the key is endorsed for its channel.
    pub fn check_activity(&self, service_url: &str, channel_id: &str) -> Result<(), AuthError> {
        let claimed = self
            .service_url
            .as_deref()
            .ok_or(AuthError::ServiceUrlMismatch)?;
        if claimed.trim_end_matches('/') != service_url.trim_end_matches('/') {
            return Err(AuthError::ServiceUrlMismatch);
        }
        if !self.endorsements.iter().any(|e| e == channel_id) {
            return Err(AuthError::NotEndorsed(channel_id.to_owned()));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Claims {
    serviceurl: Option<String>,
    exp: u64,
}

/// Tokens that passed every check, by their SHA-256, until their `exp` (plus the tolerated
/// skew, as when they were checked). Emptied whenever the keys are fetched again, so a key
/// Microsoft withdraws takes its tokens with it, and when full, which only a flood of distinct
/// valid tokens could cause.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    entries: HashMap<[u8; 32], (VerifiedToken, u64)>,
}

impl VerifiedTokens {
    const CAPACITY: usize = 10_000;

    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The token's verified claims, if it was verified and is still within its lifetime.
    pub fn get(&self, token: &str, now_unix: u64) -> Option<VerifiedToken> {
        let (verified, exp) = self.entries.get(&Self::digest(token))?;
        (now_unix <= exp.saturating_add(CLOCK_SKEW_SECS)).then(|| verified.clone())
    }

    pub fn insert(&mut self, token: &str, verified: VerifiedToken, exp: u64) {
        if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(Self::digest(token), (verified, exp));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct OpenIdMetadata {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    n: Option<String>,
    e: Option<String>,
    #[serde(default)]
    endorsements: Vec<String>,
}

struct PublishedKey {
    key: DecodingKey,
    endorsements: Vec<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, std::sync::Arc<PublishedKey>>,
    fetched_at: Option<Instant>,
    last_unknown_kid_fetch: Option<Instant>,
}

pub struct BotAuthenticator {
    http: reqwest::Client,
    metadata_url: url::Url,
    validation: Validation,
    cache: RwLock<KeyCache>,
    verified: RwLock<VerifiedTokens>,
    fetching: tokio::sync::Mutex<()>,
    unknown_kid_refresh: Duration,
}

impl std::fmt::Debug for BotAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotAuthenticator")
            .field("metadata_url", &self.metadata_url.as_str())
            .finish_non_exhaustive()
    }
}

impl BotAuthenticator {
    pub fn new(http: reqwest::Client, metadata_url: url::Url, issuer: &str, app_id: &str) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        // teams.ts accepts these audience spellings besides the bare app id.
        validation.set_audience(&[
            app_id.to_owned(),
            format!("api://{app_id}"),
            format!("api://botid-{app_id}"),
        ]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        Self {
            http,
            metadata_url,
            validation,
            cache: RwLock::new(KeyCache::default()),
            verified: RwLock::new(VerifiedTokens::default()),
            fetching: tokio::sync::Mutex::new(()),
            unknown_kid_refresh: UNKNOWN_KID_REFRESH,
        }
    }

    /// Checks the `Authorization` header's token: algorithm, key, signature, issuer, audience
    /// and lifetime. The activity-dependent checks follow in [`VerifiedToken::check_activity`].
    pub async fn verify(&self, authorization: Option<&str>) -> Result<VerifiedToken, AuthError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let known = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token, unix_now());
        if let Some(known) = known {
            return Ok(known);
        }
        // The header is read before any key is touched: `none` and HMAC tokens are refused
        // here, so a public key can never be used as an HMAC secret.
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("no kid in the header".into()))?;
        let key = self.key(&kid).await?;
        let data = decode::<Claims>(token, &key.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let verified = VerifiedToken {
            service_url: data.claims.serviceurl,
            endorsements: key.endorsements.clone(),
        };
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, verified.clone(), data.claims.exp);
        Ok(verified)
    }

    async fn key(&self, kid: &str) -> Result<std::sync::Arc<PublishedKey>, AuthError> {
        let now = Instant::now();
        let (known, stale, may_refetch) = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            let stale = cache
                .fetched_at
                .is_none_or(|at| now.duration_since(at) > KEYS_MAX_AGE);
            let may_refetch = cache
                .last_unknown_kid_fetch
                .is_none_or(|at| now.duration_since(at) > self.unknown_kid_refresh);
            (cache.keys.get(kid).cloned(), stale, may_refetch)
        };
        match known {
            Some(key) if !stale => return Ok(key),
            None if !stale && !may_refetch => return Err(AuthError::UnknownKey(kid.to_owned())),
            _ => {}
        }
        let fetched = self.refresh(!stale && known.is_none()).await;
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        match (cache.keys.get(kid).cloned(), fetched) {
            (Some(key), _) => Ok(key),
            // Keys could not be fetched and this one is not cached: nothing to check against.
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(AuthError::UnknownKey(kid.to_owned())),
        }
    }

    /// Keeps the keys fresh in the background until `stop`: fetched at start (so the first
    /// activity does not wait for Microsoft) and twice a day after, well within their
    /// [`KEYS_MAX_AGE`]; a failed fetch is tried again a minute later.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped mid-fetch, the fetch is abandoned and the cached keys stay as they
    /// were (a fetch replaces them whole, only once it has succeeded).
    pub async fn keep_fresh(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let next = match self.refresh(false).await {
                Ok(()) => KEYS_MAX_AGE / 2,
                Err(_) => Duration::from_secs(60),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// Fetches metadata and keys; one fetch at a time. Stale keys stay usable when it fails.
    async fn refresh(&self, for_unknown_kid: bool) -> Result<(), AuthError> {
        let _one_at_a_time = self.fetching.lock().await;
        {
            // Someone else may have fetched while this task waited.
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            let recent =
                |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < Duration::from_secs(1));
            if recent(cache.fetched_at) {
                return Ok(());
            }
        }
        if for_unknown_kid {
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .last_unknown_kid_fetch = Some(Instant::now());
        }
        let keys = self.fetch_keys().await.inspect_err(
            |e| tracing::warn!(error = %Chain(e), "fetching Teams' signing keys failed"),
        )?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        tracing::info!(keys = keys.len(), "fetched Teams' signing keys");
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, std::sync::Arc<PublishedKey>>, AuthError> {
        let unavailable = |e: &(dyn std::error::Error + 'static)| {
            AuthError::KeysUnavailable(Chain(e).to_string())
        };
        let get_json = |url: &str| {
            let request = self.http.get(url).timeout(Duration::from_secs(10));
            async move {
                let response = request.send().await?.error_for_status()?;
                response.bytes().await
            }
        };
        let metadata = get_json(self.metadata_url.as_str())
            .await
            .map_err(|e| unavailable(&e))?;
        let metadata: OpenIdMetadata =
            serde_json::from_slice(&metadata).map_err(|e| unavailable(&e))?;
        let jwks = get_json(&metadata.jwks_uri)
            .await
            .map_err(|e| unavailable(&e))?;
        let jwks: Jwks = serde_json::from_slice(&jwks).map_err(|e| unavailable(&e))?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            let (Some(kid), "RSA", Some(n), Some(e)) = (jwk.kid, jwk.kty.as_str(), jwk.n, jwk.e)
            else {
                continue;
            };
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    keys.insert(
                        kid,
                        std::sync::Arc::new(PublishedKey {
                            key,
                            endorsements: jwk.endorsements,
                        }),
                    );
                }
                Err(error) => {
                    tracing::warn!(%kid, error = %Chain(&error), "skipping an unusable published key")
                }
            }
        }
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable(
                "the key set holds no usable RSA key".into(),
            ));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vouching_for(service_url: &str) -> VerifiedToken {
        VerifiedToken {
            service_url: Some(service_url.to_owned()),
            endorsements: vec!["msteams".into()],
        }
    }

    #[test]
    fn a_verified_token_is_remembered_for_its_lifetime_only() {
        let mut tokens = VerifiedTokens::default();
        let exp = 1_000_000;
        tokens.insert(
            "header.claims.signature",
            vouching_for("https://smba/"),
            exp,
        );

        let known = tokens.get("header.claims.signature", exp - 60).unwrap();
        assert!(known.check_activity("https://smba", "msteams").is_ok());
        // The same skew as the full check allows, and not a second more.
        assert!(
            tokens
                .get("header.claims.signature", exp + CLOCK_SKEW_SECS)
                .is_some()
        );
        assert!(
            tokens
                .get("header.claims.signature", exp + CLOCK_SKEW_SECS + 1)
                .is_none()
        );
        // Any other token, however similar, goes through the full check.
        assert!(tokens.get("header.claims.signaturf", exp - 60).is_none());
        assert!(tokens.get("header.claims.signature ", exp - 60).is_none());

        tokens.clear();
        assert!(tokens.get("header.claims.signature", exp - 60).is_none());
    }

    #[test]
    fn a_full_cache_starts_again_rather_than_growing() {
        let mut tokens = VerifiedTokens::default();
        for i in 0..VerifiedTokens::CAPACITY {
            tokens.insert(
                &format!("token-{i}"),
                vouching_for("https://smba/"),
                u64::MAX / 2,
            );
        }
        assert_eq!(tokens.entries.len(), VerifiedTokens::CAPACITY);
        tokens.insert("one-more", vouching_for("https://smba/"), u64::MAX / 2);
        assert_eq!(tokens.entries.len(), 1);
        assert!(tokens.get("one-more", 0).is_some());
    }
}
