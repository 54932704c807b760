//! The dispatcher service: consumes jobs, resolves conversations, sends to Teams, records the
//! outcome, retries what is transient and dead-letters what cannot be handled.
//!
//! # Layout
//! - [`consumer`]: the consume loop (one consumer per broker link, bounded in-flight work).
//! - [`acks`]: settling finished deliveries in batches (`multiple` acks).
//! - [`delivery`]: one delivery from body to ack: jobs and changes, pacing, what Teams'
//!   errors lead to (`delivery/failure.rs`), sending round the delay levels again.
//! - [`dead_letters`]: the operator's `dead list|redrive` commands.
//! - [`resolve`]: from a job's target to a conversation id and serviceUrl.
//! - [`connector`]: the bot's token and the Bot Connector REST calls, Teams' error answers read.
//! - [`pace`]: Teams' per-conversation and per-tenant limits, held across every replica.
//! - This file: wiring ([`Dispatcher::build`]) and the lifecycle ([`Dispatcher::run`]).

pub mod acks;
pub mod connector;
pub mod consumer;
pub mod dead_letters;
pub mod delivery;
pub mod pace;
pub mod resolve;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use herald_shared::{
    BuildError,
    admin::{self, Readiness},
    amqp::{Broker, Publisher, Topology, queue_depth},
    config::DispatcherConfig,
    metrics::{Metrics, Service},
    store::{ConversationStore, Redis, StatusStore},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    connector::{BotConnector, TokenSource},
    delivery::{Handler, failure},
    pace::Pacer,
    resolve::Resolver,
};

/// A built dispatcher, ready to [`run`](Dispatcher::run).
#[derive(Debug)]
pub struct Dispatcher {
    admin: TcpListener,
    admin_addr: SocketAddr,
    readiness: Readiness,
    metrics: Metrics,
    broker: Broker,
    broker_stop: CancellationToken,
    tracker: TaskTracker,
    handler: Arc<Handler>,
    prefetch: u16,
    shutdown_grace: Duration,
}

impl Dispatcher {
    /// Wires the service; like the ingress it starts while Redis or RabbitMQ are down.
    pub fn build(config: DispatcherConfig, admin: TcpListener) -> Result<Self, BuildError> {
        let common = &config.common;
        let tracker = TaskTracker::new();
        let broker_stop = CancellationToken::new();
        let redis = Redis::new(&common.redis, common.namespace.clone())?;
        let broker = Broker::start(
            &common.amqp_url,
            Topology::new(common.namespace.clone()),
            "herald-dispatcher",
            broker_stop.clone(),
            &tracker,
        )?;
        let http = herald_shared::http_client();
        let metrics = Metrics::new(Service::Dispatcher);
        let tokens = Arc::new(TokenSource::new(
            http.clone(),
            &common.bot,
            &common.teams,
            metrics.token_refreshes.clone(),
        ));
        let conversations = ConversationStore::new(redis.clone());
        let connector = BotConnector::new(
            http,
            tokens,
            common.teams.service_url_allowlist.clone(),
            config.send_timeout,
        );
        let handler = Arc::new(Handler {
            instance: format!("dispatcher-{}", uuid::Uuid::new_v4().simple()),
            statuses: StatusStore::new(redis.clone(), common.status_ttl),
            conversations: conversations.clone(),
            resolver: Resolver {
                conversations,
                connector: connector.clone(),
                bot_id: format!("28:{}", common.bot.app_id),
                default_service_url: common.teams.default_service_url.clone(),
            },
            pacer: Pacer::new(
                redis.clone(),
                config.conversation_rates.clone(),
                config.tenant_rate.clone(),
            ),
            connector,
            publisher: Publisher::new(broker.clone()),
            policy: failure::Policy {
                retry_schedule: config.retry_schedule.clone(),
                max_attempts: config.max_attempts,
                gcc_service_url: common.teams.gcc_service_url.clone(),
            },
            send_lease: config.send_lease,
            metrics: metrics.clone(),
            abandon: CancellationToken::new(),
        });
        Ok(Self {
            admin_addr: admin.local_addr()?,
            admin,
            readiness: Readiness::new(redis, broker.clone()),
            metrics,
            broker,
            broker_stop,
            tracker,
            handler,
            prefetch: config.prefetch,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The Bot Connector client (tests read its token counters).
    pub fn connector(&self) -> &BotConnector {
        &self.handler.connector
    }

    /// Runs until `shutdown` completes. Then: stop taking deliveries, let those in flight
    /// finish within `HERALD_SHUTDOWN_GRACE`, hand the rest back unacked, close the link.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let admin_stop = CancellationToken::new();
        let admin = {
            let stop = admin_stop.clone();
            let serve = axum::serve(
                self.admin,
                admin::router(self.readiness, self.metrics.clone()),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await });
            tokio::spawn(serve.into_future())
        };
        tracing::info!(admin = %self.admin_addr, prefetch = self.prefetch, "dispatcher running");

        tokio::spawn(sample_queue_depths(
            self.broker.clone(),
            self.metrics.clone(),
            admin_stop.clone(),
        ));
        let consume_stop = CancellationToken::new();
        let consuming = tokio::spawn(consumer::consume(
            self.broker.clone(),
            self.handler.clone(),
            self.prefetch,
            consume_stop.clone(),
        ));
        shutdown.await;
        tracing::info!(grace = ?self.shutdown_grace, "stopping: no new deliveries; finishing those in flight");
        consume_stop.cancel();
        let mut in_flight = consuming.await.unwrap_or_default();
        let finished = tokio::time::timeout(self.shutdown_grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "grace period over; handing unfinished deliveries back"
            );
            self.handler.abandon.cancel();
            if tokio::time::timeout(Duration::from_secs(2), async {
                while in_flight.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                in_flight.abort_all();
            }
        }
        self.broker_stop.cancel();
        admin_stop.cancel();
        let served = admin.await.unwrap_or(Ok(()));
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("dispatcher stopped");
        served
    }
}

/// Keeps the `herald_queue_messages` gauges current (what an autoscaler on queue depth reads).
///
/// # Cancel safety
/// Cancel safe: a cancelled sample loses only that reading; the gauges keep the last one.
async fn sample_queue_depths(broker: Broker, metrics: Metrics, stop: CancellationToken) {
    let topology = broker.topology().clone();
    let queues = [
        ("dispatch", topology.dispatch_queue()),
        ("dead", topology.dead_queue()),
    ];
    loop {
        if let Some(link) = broker.current() {
            for (name, queue) in &queues {
                if let Ok(depth) = queue_depth(&link.publish_channel, queue).await {
                    let gauge = metrics
                        .queue_messages
                        .get_or_create(&vec![("queue", (*name).to_owned())]);
                    gauge.set(i64::from(depth.messages));
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
