//! Redis stores: broadcasts, conversation references, job status records, the messages sent (for card
//! actions and read receipts), what Microsoft Graph said about people who never installed the
//! app, timers (messages parked until due) and users' clocks (time
//! zone, quiet hours), and the shared connection other crates' stores (the dispatcher's pacer)
//! build on.
//!
//! Keys are `{namespace}:{kind}:{id}`. Every script touches a single key, or keys that share a
//! hash tag (pacing, timers), so that they would run unchanged on a Redis Cluster.

mod broadcasts;
mod conversation;
mod reach;
mod schedules;
mod sent;
mod status;
pub mod timers;
mod users;

use std::time::Duration;

use std::sync::Arc;

use redis::{
    RedisFuture,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};

pub use self::{
    broadcasts::{ADD_CHUNK, Added, Advance, BroadcastRecord, BroadcastStore, Counts, Ended, Told},
    conversation::{
        ActivityEffect, ConversationAddress, ConversationKind, ConversationRef, ConversationStore,
        InstallState, RecordedActivity,
    },
    reach::ReachStore,
    schedules::{ScheduleChange, ScheduleStore},
    sent::{Remember, SentMessage, SentStore, Unread},
    status::{BeginSend, Cancel, JobStatus, Outcome, Stamp, StatusRecord, StatusStore},
    timers::{Claimed, PARTITIONS, TimerStore},
    users::{Profile, ProfileChange, UserStore},
};
use crate::config::{Namespace, RedisTarget};

/// Redis could not take or answer a request in time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable")]
    Unavailable(#[from] redis::RedisError),
    #[error("stored record {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
}

/// A shared, self-healing Redis connection, to one server or to a Redis Cluster.
///
/// The connection is made lazily and re-made after failures, so a service starts while Redis is
/// down and recovers when it returns; each command fails fast meanwhile (short timeouts, few
/// retries), which is what lets the ingress answer 503 promptly instead of hanging.
#[derive(Clone)]
pub struct Redis {
    connection: Connection,
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
    pub fn new(target: &RedisTarget, namespace: Namespace) -> Result<Self, StoreError> {
        let connection = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.expose())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisTarget::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(|n| n.expose().to_owned()))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()?;
                Connection::Cluster(LazyCluster {
                    client: Arc::new(client),
                    connection: Arc::default(),
                })
            }
        };
        Ok(Self {
            connection,
            namespace,
        })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A handle for one operation; cheap (one multiplexed connection underneath).
    pub fn conn(&self) -> Connection {
        self.connection.clone()
    }

    /// The key of record `id` of `kind`, in this deployment's namespace.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.namespace)
    }

    /// Whether this is a Redis Cluster, where a script may touch only the keys it is given.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// On a Redis Cluster, waits (up to [`REPLICA_WAIT`]) until a replica of the master
    /// holding `key` has every write this process sent that master so far, so that a failover
    /// right after cannot lose it (Redis replicates asynchronously). Answers whether a replica
    /// confirmed; on a single server there is nothing to wait for, and it answers true.
    pub(crate) async fn replicated(&self, key: &str) -> Result<bool, StoreError> {
        let Connection::Cluster(cluster) = &self.connection else {
            return Ok(true);
        };
        let mut connection = cluster.get().await?;
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(REPLICA_WAIT.as_millis() as u64);
        let route = Route::with_key(key, SlotAddr::Master);
        let acked: i64 = redis::from_redis_value(
            connection
                .route_command(
                    wait,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?,
        )
        .map_err(|e| StoreError::Malformed {
            key: key.to_owned(),
            reason: format!("WAIT answered {e}"),
        })?;
        Ok(acked >= 1)
    }

    /// Runs `script` (its `EVALSHA`, from [`evalsha`], with its arguments) after `beside`,
    /// writes of other stores whose replies are ignored, in one round trip: work that records
    /// two things at once pays for one request. A Redis that does not know the script yet (a
    /// restart, a failover) has it loaded and is sent the whole again, so every write `beside`
    /// must be one that may be repeated. On a Redis Cluster `beside` goes first on its own,
    /// since its keys may live on another node than the script's.
    pub(crate) async fn eval_beside<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        eval: redis::Cmd,
        mut beside: redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        if self.is_cluster() && !beside.is_empty() {
            beside.query_async::<()>(&mut conn).await?;
            beside = redis::pipe();
        }
        beside.add_command(eval);
        let replies: (T,) = match beside.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                beside.query_async(&mut conn).await?
            }
            replies => replies?,
        };
        Ok(replies.0)
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

/// How long a write that must outlive a failover waits for a replica (see
/// [`Redis::replicated`]).
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One server's self-healing connection, or a cluster's (connected on first use, so that a
/// service can start while the cluster is down).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    connection: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Single(_) => "Connection::Single",
            Connection::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl std::fmt::Debug for LazyCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyCluster")
            .field("connected", &self.connection.initialized())
            .finish_non_exhaustive()
    }
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let connection = self
            .connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(connection.clone())
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(cluster) => {
                Box::pin(async move { cluster.get().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(cluster) => Box::pin(async move {
                cluster
                    .get()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(_) => 0,
        }
    }
}

/// The `EVALSHA` of `script` on `keys`, for its arguments to be added and for
/// [`Redis::eval_beside`].
pub(crate) fn evalsha(script: &redis::Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
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
