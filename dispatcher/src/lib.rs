//! The dispatcher service: consumes jobs, resolves conversations, sends to Teams, records the
//! outcome, retries what is transient and dead-letters what cannot be handled.
//!
//! # Layout
//! - [`consumer`]: the consume loop (one consumer per broker link, bounded in-flight work).
//! - [`acks`]: settling finished deliveries in batches (`multiple` acks).
//! - [`delivery`]: one delivery from body to ack: jobs and changes, pacing, what Teams'
//!   errors lead to (`delivery/failure.rs`), sending round again (parked until due), a
//!   broadcast's fan-out step by step (`delivery/fanout.rs`).
//! - The timer pump ([`herald_shared::timers::pump`]), run beside the consumer: publishes
//!   parked messages when they are due.
//! - [`dead_letters`]: the operator's `dead list|redrive` commands.
//! - [`resolve`]: from a job's target to a conversation id and serviceUrl.
//! - [`reach`]: users named by sign-in name or mail, and installing the app for users who
//!   never did, through Microsoft Graph.
//! - [`connector`]: the bot's token and the Bot Connector REST calls, Teams' error answers read.
//! - [`graph`]: Microsoft Graph, for users who never installed the app: per-tenant tokens,
//!   the calls, and each tenant's Graph pace across every replica.
//! - [`entra`]: Entra's client-credentials flow and token cache, which both use; `bearer`:
//!   one call with such a token, which both make.
//! - [`pace`]: Teams' per-conversation and per-tenant limits, held across every replica.
//! - [`webhooks`]: the webhook sender, a consumer of its own: events POSTed to the services
//!   that asked, retried on their schedule.
//! - This file: wiring ([`Dispatcher::build`]) and the lifecycle ([`Dispatcher::run`]).

pub mod acks;
mod bearer;
pub mod connector;
pub mod consumer;
pub mod dead_letters;
pub mod delivery;
pub mod entra;
pub mod graph;
pub mod pace;
pub mod reach;
pub mod resolve;
pub mod webhooks;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use herald_shared::{
    BuildError,
    admin::{self, Readiness},
    amqp::{Broker, Publisher, Topology, queue_depth},
    broadcast::Broadcaster,
    config::DispatcherConfig,
    events::Events,
    metrics::{Metrics, Service},
    schedule::Scheduler,
    store::{
        BroadcastStore, ConversationStore, ReachStore, Redis, ScheduleStore, SentStore,
        StatusStore, TimerStore, UserStore,
    },
    submit::Enqueuer,
    timers::{self, DispatchQueue},
    webhooks::WebhookStore,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    connector::{BotConnector, TokenSource},
    delivery::{Handler, failure, fanout::FanOut},
    graph::GraphClient,
    pace::Pacer,
    reach::Reach,
    resolve::Resolver,
    webhooks::WebhookSender,
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
    /// Microsoft Graph, for users who never installed the app.
    graph: GraphClient,
    webhooks: Arc<WebhookSender>,
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
            &common.amqp,
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
        let graph = GraphClient::new(
            http.clone(),
            &config.graph,
            &common.bot,
            redis.clone(),
            &metrics,
            config.send_timeout,
        );
        let conversations = ConversationStore::new(redis.clone());
        let connector = BotConnector::new(
            http,
            tokens,
            common.teams.service_url_allowlist.clone(),
            config.send_timeout,
        );
        let statuses = StatusStore::new(redis.clone(), common.status_ttl);
        let users = UserStore::new(redis.clone());
        let queue = DispatchQueue::new(
            Publisher::new(broker.clone()),
            TimerStore::new(redis.clone()),
        );
        let events = Events::new(Publisher::new(broker.clone()), redis.clone());
        let webhooks = Arc::new(WebhookSender::new(
            broker.clone(),
            WebhookStore::new(redis.clone()),
            TimerStore::family(redis.clone(), "webhook-deliveries"),
            &common.webhook_guard,
            common.webhook_retry_schedule.clone(),
        ));
        let sent = SentStore::new(redis.clone(), common.status_ttl);
        let broadcasts = BroadcastStore::new(redis.clone(), common.status_ttl);
        let handler = Arc::new(Handler {
            instance: format!("dispatcher-{}", uuid::Uuid::new_v4().simple()),
            scheduler: Scheduler {
                store: ScheduleStore::new(redis.clone()),
                queue: queue.clone(),
                users: users.clone(),
                default_time_zone: common.default_time_zone,
            },
            enqueuer: Enqueuer {
                statuses: statuses.clone(),
                queue: queue.clone(),
                users: users.clone(),
                default_time_zone: common.default_time_zone,
            },
            broadcaster: Broadcaster {
                store: broadcasts.clone(),
                conversations: conversations.clone(),
                queue: queue.clone(),
            },
            broadcasts,
            fan_out: FanOut::for_rate(config.broadcast_ahead, config.tenant_rate.per_second()),
            statuses,
            conversations: conversations.clone(),
            resolver: Resolver {
                conversations,
                connector: connector.clone(),
                bot_id: format!("28:{}", common.bot.app_id),
                default_service_url: common.teams.default_service_url.clone(),
                reach: Arc::new(Reach::new(
                    graph.clone(),
                    ReachStore::new(redis.clone()),
                    config.graph.proactive_install,
                    config.graph.teams_app_id.clone(),
                )),
            },
            users,
            default_time_zone: common.default_time_zone,
            pacer: Pacer::new(
                redis.clone(),
                config.conversation_rates.clone(),
                config.tenant_rate.clone(),
            ),
            connector,
            queue,
            policy: failure::Policy {
                retry_schedule: config.retry_schedule.clone(),
                max_attempts: config.max_attempts,
                gcc_service_url: common.teams.gcc_service_url.clone(),
            },
            events,
            sent,
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
            graph,
            webhooks,
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

    /// The Microsoft Graph client (tests read its token counters).
    pub fn graph(&self) -> &GraphClient {
        &self.graph
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

        // Tenants' user indexes, for tenant broadcasts, from what was stored before them.
        let conversations = self.handler.conversations.clone();
        tokio::spawn(async move {
            match conversations.backfill_tenant_users().await {
                Ok(Some(users)) => tracing::info!(users, "indexed the users of every tenant"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %herald_shared::error::Chain(&e), "could not index the tenants' users; the next start tries again")
                }
            }
        });
        tokio::spawn(sample_queue_depths(
            self.broker.clone(),
            self.handler.queue.clone(),
            self.metrics.clone(),
            admin_stop.clone(),
        ));
        let pump_stop = CancellationToken::new();
        let pumping = tokio::spawn(timers::pump(
            self.handler.queue.clone(),
            self.metrics.clone(),
            pump_stop.clone(),
        ));
        // Events: published as jobs end, and relayed from the outbox when a process died
        // before it published them.
        let events_stop = CancellationToken::new();
        let eventing = tokio::spawn(self.handler.events.clone().run(events_stop.clone()));
        let webhooks_stop = CancellationToken::new();
        let webhooking = tokio::spawn(self.webhooks.clone().run(webhooks_stop.clone()));
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
        // The pump finishes the batch it is publishing; timers due later wait for a replica.
        pump_stop.cancel();
        let _ = tokio::time::timeout(PUMP_STOP, pumping).await;
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
        // What the finished deliveries queued is published; the rest is the relay's.
        self.handler.events.settle(Duration::from_millis(500)).await;
        events_stop.cancel();
        let _ = tokio::time::timeout(PUMP_STOP, eventing).await;
        // A webhook POST in progress is cut short; its delivery is due again when its lease
        // ends, on another replica or after the restart.
        webhooks_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), webhooking).await;
        self.broker_stop.cancel();
        admin_stop.cancel();
        let served = admin.await.unwrap_or(Ok(()));
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("dispatcher stopped");
        served
    }
}

/// How long a stopping dispatcher waits for its timer pump to finish publishing a batch (a
/// publish gives up on its confirm after 10 s; what is left unreleased comes due again).
const PUMP_STOP: Duration = Duration::from_secs(12);

/// Keeps the `herald_queue_messages` and `herald_timers_waiting` gauges current (what an
/// autoscaler on queue depth reads).
///
/// # Cancel safety
/// Cancel safe: a cancelled sample loses only that reading; the gauges keep the last one.
async fn sample_queue_depths(
    broker: Broker,
    queue: DispatchQueue,
    metrics: Metrics,
    stop: CancellationToken,
) {
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
        if let Ok(waiting) = queue.timers().waiting().await {
            metrics
                .timers_waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
