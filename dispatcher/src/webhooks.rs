//! The webhook sender: takes every event from `{ns}.webhooks` and POSTs it to each webhook
//! that wants its type, signed as Standard Webhooks says, retrying on the webhook schedule.
//!
//! It is its own consumer, on its own channel, with its own HTTP client (the guard's), so a
//! slow or failing receiver never holds a Teams send. An event taken from the queue becomes
//! one *delivery* per interested webhook, parked in Redis (a [`TimerStore`] family of its
//! own) and acked; from there every attempt, the first and the retries, is claimed when due,
//! leased while it runs, and parked again for the next attempt or released. A SIGKILL loses
//! nothing: an unacked event is redelivered (its deliveries are parked again under the same
//! ids, replacing themselves), and a delivery leased by a dead sender comes due again.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, future::join_all};
use herald_shared::{
    amqp::{Broker, DispatchMessage, Link, headers},
    config::RetrySchedule,
    error::Chain,
    store::{Claimed, StoreError, TimerStore},
    timers::drain,
    webhooks::{Attempt, Webhook, WebhookStore, guard::WebhookGuard, routes, signature},
};
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::delivery::failure::jitter;

/// How long one POST may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the queue's bindings are compared with the webhooks.
const ROUTES_EVERY: Duration = Duration::from_secs(2);

/// How long the list of webhooks is reused before it is read again.
const HOOKS_FRESH_FOR: Duration = Duration::from_secs(1);

/// Events taken from the queue at once.
const PREFETCH: u16 = 256;

/// The parked delivery's AMQP-style type (it never travels over AMQP; it names the stored form).
const DELIVERY_TYPE: &str = "webhook.delivery.v1";

/// The header holding the number of the delivery's next attempt.
const ATTEMPT: &str = "x-herald-webhook-attempt";

#[derive(Debug)]
pub struct WebhookSender {
    pub broker: Broker,
    pub store: WebhookStore,
    pub deliveries: TimerStore,
    pub client: reqwest::Client,
    pub schedule: RetrySchedule,
    hooks: Mutex<Option<(Instant, Arc<Vec<Webhook>>)>>,
}

impl WebhookSender {
    pub fn new(
        broker: Broker,
        store: WebhookStore,
        deliveries: TimerStore,
        guard: &WebhookGuard,
        schedule: RetrySchedule,
    ) -> Self {
        Self {
            broker,
            store,
            deliveries,
            client: guard.client(SEND_TIMEOUT),
            schedule,
            hooks: Mutex::new(None),
        }
    }

    /// Keeps the queue's bindings in step with the webhooks, takes events and sends
    /// deliveries until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(
            self.keep_routes(&stop),
            self.take_events(&stop),
            self.send_due(&stop)
        );
    }

    /// Binds `{ns}.webhooks` to the types the stored webhooks want, every [`ROUTES_EVERY`]
    /// (binding is idempotent). The ingress binds a new webhook's types as it makes it and
    /// unbinds a deleted one's; this heals whatever it could not do (RabbitMQ away, two
    /// changes racing), within seconds. It never unbinds: a binding left over only routes
    /// events no webhook wants, which are dropped here.
    async fn keep_routes(&self, stop: &CancellationToken) {
        let mut logged: Option<BTreeSet<String>> = None;
        loop {
            if let (Some(link), Ok(hooks)) = (self.broker.current(), self.read_webhooks().await) {
                let wanted = routes::wanted_keys(&hooks);
                let bound = if wanted.is_empty() {
                    Ok(())
                } else {
                    routes::bind(&link, self.broker.topology(), &wanted).await
                };
                match bound {
                    Ok(()) if logged.as_ref() != Some(&wanted) => {
                        tracing::info!(keys = ?wanted, "webhook routes bound");
                        logged = Some(wanted);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %Chain(&e), "cannot bind the webhook routes; trying again");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ROUTES_EVERY) => {}
            }
        }
    }

    async fn webhooks(&self) -> Result<Arc<Vec<Webhook>>, StoreError> {
        if let Ok(cached) = self.hooks.lock()
            && let Some((at, hooks)) = cached.as_ref()
            && at.elapsed() < HOOKS_FRESH_FOR
        {
            return Ok(hooks.clone());
        }
        self.read_webhooks().await
    }

    /// The webhooks as stored now (and cached from now on).
    async fn read_webhooks(&self) -> Result<Arc<Vec<Webhook>>, StoreError> {
        let hooks = Arc::new(self.store.list().await?);
        if let Ok(mut cached) = self.hooks.lock() {
            *cached = Some((Instant::now(), hooks.clone()));
        }
        Ok(hooks)
    }

    async fn take_events(&self, stop: &CancellationToken) {
        let mut links = self.broker.watch();
        loop {
            let link = links.borrow_and_update().clone();
            if let Some(link) = link
                && let Err(e) = self.consume(&link, stop).await
            {
                tracing::warn!(error = %Chain(&e), "taking events for webhooks stopped; waiting for the broker link");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = links.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn consume(&self, link: &Link, stop: &CancellationToken) -> lapin::Result<()> {
        let channel = link.connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let queue = self.broker.topology().webhooks_queue();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("webhooks-{}", uuid::Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Ok(()),
                },
            };
            match self.fan_out(&delivery).await {
                Ok(()) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot park an event's webhook deliveries; it is taken again shortly");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await?;
                }
            }
        }
    }

    /// Parks one delivery of the event per webhook that wants it, due now. The event's type
    /// and id are read from its AMQP properties; the body is stored as it came.
    async fn fan_out(&self, delivery: &lapin::message::Delivery) -> Result<(), StoreError> {
        let properties = &delivery.properties;
        let (Some(kind), Some(event_id)) = (properties.kind(), properties.message_id()) else {
            // Only Herald publishes here, always with both; the event's other consumers have
            // their own copies.
            tracing::error!("an event on the webhooks queue has no type or id; dropped");
            return Ok(());
        };
        let mut hooks = self.webhooks().await?;
        // Only events some webhook wanted are routed here: when none of the cached ones wants
        // this one, the cache predates a new webhook.
        if !hooks.iter().any(|h| h.wants(kind.as_str())) {
            hooks = self.read_webhooks().await?;
        }
        for hook in hooks.iter().filter(|h| h.wants(kind.as_str())) {
            let mut headers = FieldTable::default();
            headers::set_integer(&mut headers, ATTEMPT, 1);
            let parked = DispatchMessage {
                id: format!("{}/{}", hook.id, event_id),
                amqp_type: DELIVERY_TYPE.into(),
                headers,
                body: delivery.data.clone(),
            };
            self.deliveries.park(&parked, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn send_due(&self, stop: &CancellationToken) {
        drain(
            &self.deliveries,
            || true,
            stop,
            |claimed| async move {
                join_all(claimed.iter().map(|delivery| self.attempt(delivery))).await;
            },
        )
        .await;
    }

    /// One attempt of a delivery: POSTed, recorded, and then released, or parked for the
    /// next attempt, or given up.
    async fn attempt(&self, claimed: &Claimed) {
        if let Err(e) = self.try_attempt(claimed).await {
            tracing::warn!(delivery = %claimed.id, error = %Chain(&e), "cannot settle a webhook delivery; it is due again when its lease ends");
        }
    }

    async fn try_attempt(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let delivery = match claimed.message() {
            Ok(delivery) => delivery,
            Err(reason) => {
                tracing::error!(delivery = %claimed.id, %reason, "a parked webhook delivery does not read; dropped");
                self.deliveries.release(claimed).await?;
                return Ok(());
            }
        };
        let (hook_id, event_id) = delivery.id.split_once('/').unwrap_or((&delivery.id, ""));
        let Some(hook) = self.store.get(hook_id).await? else {
            // Deleted meanwhile: nothing more is sent to it.
            self.deliveries.release(claimed).await?;
            return Ok(());
        };
        let number = headers::integer(Some(&delivery.headers), ATTEMPT)
            .unwrap_or(1)
            .max(1) as u32;
        let result = self.post(&hook, event_id, &delivery.body).await;
        let mut attempt = Attempt {
            time: OffsetDateTime::now_utc(),
            event_id: event_id.to_owned(),
            status_code: None,
            error: None,
        };
        let delivered = match result {
            Ok(status) => {
                attempt.status_code = Some(status);
                (200..300).contains(&status)
            }
            Err(error) => {
                attempt.error = Some(error);
                false
            }
        };
        let retries_left = (number as usize) <= self.schedule.steps();
        if !delivered && !retries_left {
            let why = attempt
                .error
                .take()
                .unwrap_or_else(|| format!("answered {}", attempt.status_code.unwrap_or_default()));
            attempt.error = Some(format!("given up after {number} attempts; the last {why}"));
            tracing::warn!(webhook = %hook.id, event = %event_id, attempts = number, "a webhook delivery was given up");
        }
        self.store.record_attempt(&hook.id, &attempt).await?;
        if delivered || !retries_left {
            self.deliveries.release(claimed).await?;
            return Ok(());
        }
        let wait = self.schedule.nominal(number).mul_f64(jitter());
        tracing::info!(webhook = %hook.id, event = %event_id, attempt = number, ?wait, status = ?attempt.status_code, error = ?attempt.error, "a webhook delivery failed; retrying later");
        let mut next = delivery.clone();
        headers::set_integer(&mut next.headers, ATTEMPT, i64::from(number) + 1);
        // Parking under the same id replaces the claimed timer (its lease with it).
        self.deliveries.park(&next, wait).await?;
        Ok(())
    }

    /// POSTs the event to the webhook; the receiver's status, or why there was none.
    async fn post(&self, hook: &Webhook, event_id: &str, body: &[u8]) -> Result<u16, String> {
        let secret = hook.secret()?;
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let mut request = self
            .client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        for (name, value) in signature::headers(&secret, event_id, timestamp, body) {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(Chain(&e).to_string()),
        }
    }
}
