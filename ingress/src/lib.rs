//! The ingress service: receives Teams activities, stores conversation references in Redis,
//! and queues jobs in RabbitMQ, its own and those other services send through `/v1`.
//!
//! # Layout
//! - [`bot`]: `POST /api/messages`: token validation ([`bot::auth`]), reading activities
//!   ([`bot::activity`]) and recording them.
//! - [`api`]: `/v1`, the HTTP API other services use, and its OpenAPI document.
//! - [`greeting`]: the welcome and reminder queued on install, once per install.
//! - [`problem`]: the `application/problem+json` error format, and which error is which status.
//! - [`requests`]: what every request passes through: its span, metrics and server-error log,
//!   and its deadline.
//! - This file: wiring. [`Ingress::build`] connects everything and binds nothing itself (the
//!   caller passes listeners, port 0 in tests); [`Ingress::run`] serves until shutdown.

pub mod api;
pub mod bot;
pub mod greeting;
pub mod problem;
pub mod requests;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Router, extract::DefaultBodyLimit, routing::post};
use herald_shared::{
    BuildError,
    admin::{self, Readiness},
    amqp::{Broker, Publisher, Topology},
    broadcast::Broadcaster,
    config::IngressConfig,
    events::Events,
    metrics::{Metrics, Service},
    schedule::Scheduler,
    store::{
        BroadcastStore, ConversationStore, ReachStore, Redis, ScheduleStore, SentStore,
        StatusStore, TimerStore, UserStore,
    },
    submit::Enqueuer,
    timers::DispatchQueue,
    webhooks::WebhookStore,
};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::{Api, ApiKeys},
    bot::{BotEndpoint, auth::BotAuthenticator, listen::Listener},
    greeting::Greeter,
};

/// The largest activity accepted; real ones are a few KB, cards included.
pub const MAX_ACTIVITY_BODY: usize = 256 * 1024;

/// A built ingress, ready to [`run`](Ingress::run).
#[derive(Debug)]
pub struct Ingress {
    http: TcpListener,
    admin: TcpListener,
    router: Router,
    admin_router: Router,
    /// Stops the broker link; cancelled after the HTTP servers have drained.
    broker_stop: CancellationToken,
    /// Events told by requests and activities, and the relay of the outbox.
    events: Events,
    events_stop: CancellationToken,
    tracker: TaskTracker,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Ingress {
    /// Wires the service. Nothing here waits for Redis or RabbitMQ: the service starts while
    /// they are down, reports unready, and recovers when they return.
    pub fn build(
        config: IngressConfig,
        http: TcpListener,
        admin: TcpListener,
    ) -> Result<Self, BuildError> {
        let common = &config.common;
        let tracker = TaskTracker::new();
        let broker_stop = CancellationToken::new();
        let redis = Redis::new(&common.redis, common.namespace.clone())?;
        let broker = Broker::start(
            &common.amqp,
            Topology::new(common.namespace.clone()),
            "herald-ingress",
            broker_stop.clone(),
            &tracker,
        )?;
        let http_client = herald_shared::http_client();
        let events = Events::new(Publisher::new(broker.clone()), redis.clone());
        let events_stop = CancellationToken::new();
        tracker.spawn(events.clone().run(events_stop.clone()));
        let enqueuer = Enqueuer {
            statuses: StatusStore::new(redis.clone(), common.status_ttl),
            queue: DispatchQueue::new(
                Publisher::new(broker.clone()),
                TimerStore::new(redis.clone()),
            ),
            users: UserStore::new(redis.clone()),
            default_time_zone: common.default_time_zone,
        };
        let bot = Arc::new(BotEndpoint {
            authenticator: BotAuthenticator::new(
                http_client,
                common.teams.openid_metadata_url.clone(),
                &common.teams.token_issuer,
                &common.bot.app_id,
            ),
            allowlist: common.teams.service_url_allowlist.clone(),
            conversations: ConversationStore::new(redis.clone()),
            users: UserStore::new(redis.clone()),
            greeter: Greeter {
                namespace: common.namespace.to_string(),
                enqueuer: enqueuer.clone(),
                welcome_text: config.welcome_text.clone(),
                reminder_text: config.reminder_text.clone(),
                reminder_delay: config.reminder_delay,
                reach: ReachStore::new(redis.clone()),
            },
            listener: Listener {
                events: events.clone(),
                sent: SentStore::new(redis.clone(), common.status_ttl),
                statuses: StatusStore::new(redis.clone(), common.status_ttl),
                broadcasts: BroadcastStore::new(redis.clone(), common.status_ttl),
            },
        });
        tracker.spawn({
            let bot = bot.clone();
            let stop = broker_stop.clone();
            async move { bot.authenticator.keep_fresh(stop).await }
        });
        let metrics = Metrics::new(Service::Ingress);
        let broadcasts = BroadcastStore::new(redis.clone(), common.status_ttl);
        let broadcaster = Broadcaster {
            store: broadcasts.clone(),
            conversations: ConversationStore::new(redis.clone()),
            queue: enqueuer.queue.clone(),
        };
        let api = Arc::new(Api {
            namespace: common.namespace.to_string(),
            users: UserStore::new(redis.clone()),
            conversations: ConversationStore::new(redis.clone()),
            scheduler: Scheduler {
                store: ScheduleStore::new(redis.clone()),
                queue: enqueuer.queue.clone(),
                users: UserStore::new(redis.clone()),
                default_time_zone: common.default_time_zone,
            },
            enqueuer,
            events: events.clone(),
            webhooks: WebhookStore::new(redis.clone()),
            webhook_guard: common.webhook_guard.clone(),
            api_keys: ApiKeys::parse(config.api_keys.expose_secret()),
            broadcasts,
            broadcaster,
            metrics: metrics.clone(),
        });
        let router = Router::new()
            .route("/api/messages", post(bot::receive_activity))
            .layer(DefaultBodyLimit::max(MAX_ACTIVITY_BODY))
            .with_state(bot)
            .merge(api::router(api));
        let router = requests::layer(router, metrics.clone());
        Ok(Self {
            http_addr: http.local_addr()?,
            admin_addr: admin.local_addr()?,
            http,
            admin,
            router,
            admin_router: admin::router(Readiness::new(redis, broker), metrics),
            broker_stop,
            events,
            events_stop,
            tracker,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` completes, then finishes the requests in progress (their
    /// writes included) and closes the broker link.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let admin_stop = stop.clone();
        let admin = axum::serve(self.admin, self.admin_router)
            .with_graceful_shutdown(async move { admin_stop.cancelled().await });
        let admin = tokio::spawn(admin.into_future());
        tracing::info!(http = %self.http_addr, admin = %self.admin_addr, "ingress listening");
        let served = axum::serve(self.http, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.cancel();
            })
            .await;
        let _ = admin.await;
        self.events
            .settle(std::time::Duration::from_millis(500))
            .await;
        self.events_stop.cancel();
        self.broker_stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("ingress stopped");
        served
    }
}
