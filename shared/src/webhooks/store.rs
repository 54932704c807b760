//! Webhooks as stored: `{ns}:webhooks` (a hash of id → the webhook, secret included) and each
//! webhook's recent attempts, `{ns}:webhook-attempts:{id}` (a list, newest first, capped at
//! [`KEPT_ATTEMPTS`]).

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::signature::WebhookSecret;
use crate::{
    events::EventType,
    store::{Redis, StoreError},
};

/// How many attempts are kept per webhook.
pub const KEPT_ATTEMPTS: isize = 100;

/// A webhook: where to POST which events, and the secret they are signed with (the answer to
/// its creation, the only one that shows the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub types: Vec<String>,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Webhook {
    /// Whether it wants events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.types.iter().any(|pattern| type_matches(pattern, kind))
    }

    pub fn secret(&self) -> Result<WebhookSecret, String> {
        self.secret.parse().map_err(|e| format!("{e}"))
    }
}

/// `*` is every type; `herald.notification.*` every type under `herald.notification.`;
/// anything else one type exactly. ([`check_types`] admits `*` only as a whole segment.)
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// Checks a webhook's type list: each entry must name at least one of Herald's event types.
pub fn check_types(types: &[String]) -> Result<(), String> {
    if types.is_empty() {
        return Err("types: name at least one event type, or \"*\" for all".into());
    }
    for pattern in types {
        let matches_one = EventType::ALL
            .iter()
            .any(|kind| type_matches(pattern, kind.as_str()));
        // `*` stands for whole segments only: `*` or `herald.notification.*`, which the
        // broker's topic keys can route (see `routes`).
        let stem = pattern.strip_suffix('*');
        let bad_wildcard = match stem {
            Some(stem) => stem.contains('*') || !(stem.is_empty() || stem.ends_with('.')),
            None => pattern.contains('*'),
        };
        if !matches_one || bad_wildcard {
            return Err(format!(
                "types: {pattern:?} names no event type (a type such as \
                 herald.notification.delivered, a family such as herald.notification.*, or *)"
            ));
        }
    }
    Ok(())
}

/// One attempt to deliver an event to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub event_id: String,
    /// The receiver's answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it did not succeed (no answer, a refused address, given up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebhookStore {
    redis: Redis,
}

impl WebhookStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn hooks_key(&self) -> String {
        format!("{}:webhooks", self.redis.namespace())
    }

    fn attempts_key(&self, id: &str) -> String {
        self.redis.key("webhook-attempts", id)
    }

    pub async fn put(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let body = serde_json::to_string(webhook).expect("a webhook always serializes");
        let () = self
            .redis
            .conn()
            .hset(self.hooks_key(), &webhook.id, body)
            .await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Webhook>, StoreError> {
        let key = self.hooks_key();
        let all: Vec<(String, String)> = self.redis.conn().hgetall(&key).await?;
        let mut hooks = all
            .into_iter()
            .map(|(_, body)| {
                serde_json::from_str(&body).map_err(|e| StoreError::Malformed {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<Webhook>, _>>()?;
        hooks.sort_by_key(|h| h.created_at);
        Ok(hooks)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let key = self.hooks_key();
        let body: Option<String> = self.redis.conn().hget(&key, id).await?;
        body.map(|body| {
            serde_json::from_str(&body).map_err(|e| StoreError::Malformed {
                key,
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Deletes the webhook and its attempts; false if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.hdel(self.hooks_key(), id)
            .del(self.attempts_key(id))
            .ignore();
        let (removed,): (u32,) = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(removed == 1)
    }

    pub async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let key = self.attempts_key(id);
        let body = serde_json::to_string(attempt).expect("an attempt always serializes");
        let mut pipe = redis::pipe();
        pipe.lpush(&key, body)
            .ignore()
            .ltrim(&key, 0, KEPT_ATTEMPTS - 1)
            .ignore();
        let () = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// The webhook's recent attempts, newest first.
    pub async fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        let key = self.attempts_key(id);
        let all: Vec<String> = self.redis.conn().lrange(&key, 0, KEPT_ATTEMPTS - 1).await?;
        all.into_iter()
            .map(|body| {
                serde_json::from_str(&body).map_err(|e| StoreError::Malformed {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_list_names_types_prefixes_or_everything() {
        assert!(type_matches("*", "herald.message.received"));
        assert!(type_matches(
            "herald.notification.*",
            "herald.notification.read"
        ));
        assert!(!type_matches(
            "herald.notification.*",
            "herald.installation.added"
        ));
        assert!(type_matches(
            "herald.notification.failed",
            "herald.notification.failed"
        ));
        assert!(!type_matches(
            "herald.notification.failed",
            "herald.notification.failed.x"
        ));
    }

    #[test]
    fn a_type_list_that_names_nothing_herald_sends_is_refused_naming_the_entry() {
        let ok =
            |types: &[&str]| check_types(&types.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        assert!(ok(&["herald.notification.*", "herald.message.received"]).is_ok());
        assert!(ok(&["*"]).is_ok());
        assert!(ok(&[]).is_err());
        let err = ok(&["herald.notification.delivred"]).unwrap_err();
        assert!(err.contains("delivred"), "{err}");
        assert!(ok(&["herald.*.read"]).is_err());
        assert!(
            ok(&["herald.notif*"]).is_err(),
            "a wildcard stands for whole segments"
        );
    }
}
