//! Every exchange, queue, binding and argument Herald uses, in one place: RabbitMQ closes the
//! channel when a queue is redeclared with other arguments, so nothing else declares anything.
//!
//! ```text
//! publish ─▶ {ns}.jobs (topic) ──#.notification, #.broadcast──▶ {ns}.dispatch (quorum) ─▶ dispatcher
//!                                                       └─ x-delivery-limit / dead-letter ─▶ {ns}.dead
//!
//! events ─▶ {ns}.events (topic, routing key = the event type) ──webhooks' types──▶ {ns}.webhooks (quorum) ─▶ webhook sender
//!                                         └─ any queue another service binds (its own consumer)
//! ```
//!
//! Nothing waits in RabbitMQ: a message due later is parked in Redis and published here when it
//! is due ([`crate::timers`]). Earlier versions kept waits in a cascade of delay-level queues
//! (`{ns}.delay.0` … `{ns}.delay.20`, dead-lettered level to level); those queues are no longer
//! declared. Left over from an upgrade, they still drain into `{ns}.jobs` on their own (their
//! TTLs and dead-letter targets are the queues' own arguments) and can be deleted once empty.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::config::Namespace;

/// The routing key of notification jobs, as other services publish them.
pub const NOTIFICATION_ROUTING_KEY: &str = "notification";

pub use crate::broadcast::BROADCAST_ROUTING_KEY;

/// How many times RabbitMQ redelivers a job whose handler keeps dying before it dead-letters it.
pub const DISPATCH_DELIVERY_LIMIT: i64 = 10;

/// The names of one namespace's exchanges and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: Namespace,
}

impl Topology {
    pub fn new(namespace: Namespace) -> Self {
        Self { namespace }
    }

    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    pub fn dispatch_queue(&self) -> String {
        format!("{}.dispatch", self.namespace)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// Where Herald's CloudEvents go, routed by their type.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The events some webhook wants, for the webhook sender (bound by type,
    /// `crate::webhooks::routes`).
    pub fn webhooks_queue(&self) -> String {
        format!("{}.webhooks", self.namespace)
    }

    /// Every queue, for operators and for tests that clean up after themselves.
    pub fn all_queues(&self) -> Vec<String> {
        vec![
            self.dispatch_queue(),
            self.dead_queue(),
            self.webhooks_queue(),
        ]
    }

    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.jobs_exchange(),
            self.dead_exchange(),
            self.events_exchange(),
        ]
    }

    /// Declares everything; idempotent, so every service does it at every (re)connection.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.jobs_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        declare_quorum_queue(channel, &self.dead_queue(), &[]).await?;
        bind_queue(channel, &self.dead_queue(), &self.dead_exchange(), "").await?;

        declare_quorum_queue(
            channel,
            &self.dispatch_queue(),
            &[
                ("x-dead-letter-exchange", long_string(&self.dead_exchange())),
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(DISPATCH_DELIVERY_LIMIT),
                ),
            ],
        )
        .await?;
        for routing_key in [NOTIFICATION_ROUTING_KEY, BROADCAST_ROUTING_KEY] {
            bind_queue(
                channel,
                &self.dispatch_queue(),
                &self.jobs_exchange(),
                &format!("#.{routing_key}"),
            )
            .await?;
        }

        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        // An event that cannot be sent is not dead-lettered: the webhook sender parks its
        // retries in Redis, and a message it cannot read is logged and dropped (it is a copy;
        // other consumers of the exchange have theirs). Its bindings follow the webhooks'
        // types (`crate::webhooks::routes`), so it is declared here unbound.
        declare_quorum_queue(channel, &self.webhooks_queue(), &[]).await?;

        Ok(())
    }
}

/// Every queue is a quorum queue; dead-lettering out of it is at-least-once, which RabbitMQ
/// allows only with `reject-publish` overflow.
async fn declare_quorum_queue(
    channel: &Channel,
    name: &str,
    extra: &[(&str, AMQPValue)],
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    for (key, value) in extra {
        args.insert(ShortString::from(*key), value.clone());
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(name.into(), options, args).await?;
    Ok(())
}

async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
