//! Redis stores: conversation references, job status records, and the pacing state.
//!
//! Keys are `{namespace}:{kind}:{id}`. Every script touches a single key, or keys that share a
//! hash tag (pacing), so that they would run unchanged on a Redis Cluster.

mod conversation;
mod pace;
mod status;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use self::{
    conversation::{
        ActivityEffect, ConversationRef, ConversationStore, InstallState, RecordedActivity,
    },
    pace::{Admission, Pacer},
    status::{BeginSend, Cancel, JobStatus, Outcome, StatusRecord, StatusStore},
};
use crate::config::{Namespace, SecretUrl};

/// Redis could not take or answer a request in time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    #[error("stored record {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
}

/// A shared, self-healing Redis connection.
///
/// The connection is made lazily and re-made after failures, so a service starts while Redis is
/// down and recovers when it returns; each command fails fast meanwhile (short timeouts, few
/// retries), which is what lets the ingress answer 503 promptly instead of hanging.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    namespace: Namespace,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Redis {
    pub fn new(url: &SecretUrl, namespace: Namespace) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            namespace,
        })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A handle for one operation; cheap (the manager multiplexes one connection).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    pub(crate) fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.namespace)
    }

    /// Whether Redis answers a PING now (readiness).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }
}

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp's companion field.
pub(crate) fn unix_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Now, as stored timestamps are written.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}
