//! Publishing jobs the way another service does (persistent, `mandatory`, confirmed), and the
//! broker's own ceiling: the same bodies through a scratch quorum queue, consumed and acked one
//! by one with no work in between.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use herald_shared::{amqp::Topology, config::Namespace};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use time::OffsetDateTime;

/// Confirms awaited at most this far behind the publishes, unless told otherwise.
const CONFIRM_WINDOW: usize = 2048;

#[derive(Debug)]
pub struct Amqp {
    connection: Connection,
    channel: Channel,
}

/// How a batch of publishes went.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Wall-clock time of the first publish (comparable to the emulator's receive times).
    pub first_at: OffsetDateTime,
    /// From the first publish to the last confirm.
    pub took: Duration,
}

impl Amqp {
    /// Connects to this machine's RabbitMQ.
    pub async fn connect() -> anyhow::Result<Self> {
        Self::connect_to(&herald_tests::amqp_url()).await
    }

    /// Connects to the node at `url` (a node of the bench's own cluster).
    pub async fn connect_to(url: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Publishes `count` messages made by `make(i)` → (message id, body) to `{ns}.jobs`.
    pub async fn publish_jobs(
        &self,
        namespace: &str,
        count: usize,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<Published> {
        self.publish_jobs_at(namespace, count, None, make).await
    }

    /// The same, `per_second` jobs a second (as fast as confirms allow when `None`): a load
    /// offered at a set rate, so that variants that differ in speed are compared at the same
    /// one.
    pub async fn publish_jobs_at(
        &self,
        namespace: &str,
        count: usize,
        per_second: Option<u32>,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<Published> {
        let topology = Topology::new(
            namespace
                .parse::<Namespace>()
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        let exchange = topology.jobs_exchange();
        self.publish_paced(
            &exchange,
            "notification",
            count,
            CONFIRM_WINDOW,
            per_second,
            make,
        )
        .await
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        count: usize,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<Published> {
        self.publish_windowed(exchange, routing_key, count, CONFIRM_WINDOW, make)
            .await
    }

    /// The same with at most `window` publishes awaiting their confirms.
    pub async fn publish_windowed(
        &self,
        exchange: &str,
        routing_key: &str,
        count: usize,
        window: usize,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<Published> {
        self.publish_paced(exchange, routing_key, count, window, None, make)
            .await
    }

    /// The same, message `i` not before `i / per_second` seconds from the first.
    async fn publish_paced(
        &self,
        exchange: &str,
        routing_key: &str,
        count: usize,
        window: usize,
        per_second: Option<u32>,
        mut make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<Published> {
        let first_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
        for i in 0..count {
            if let Some(rate) = per_second {
                let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
                tokio::time::sleep_until(due.into()).await;
            }
            let (id, body) = make(i);
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?;
            pending.push_back(confirm);
            if pending.len() >= window
                && let Some(oldest) = pending.pop_front()
            {
                confirmed(oldest).await?;
            }
        }
        for confirm in pending {
            confirmed(confirm).await?;
        }
        Ok(Published {
            first_at,
            took: started.elapsed(),
        })
    }

    /// The broker's ceiling for these bodies: published to a scratch quorum queue, then
    /// consumed with `prefetch`, acked one by one when `ack_every` is 1, else with one
    /// `multiple` ack per `ack_every` deliveries. Returns (publish, consume+ack) timings.
    pub async fn ceiling(
        &self,
        namespace: &str,
        prefetch: u16,
        ack_every: usize,
        count: usize,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<(Duration, Duration)> {
        let queue = format!("{namespace}.bench-ceiling");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        let result = self
            .ceiling_on(&queue, prefetch, ack_every.max(1), count, make)
            .await;
        let deleted = self
            .channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let timings = result?;
        deleted?;
        Ok(timings)
    }

    async fn ceiling_on(
        &self,
        queue: &str,
        prefetch: u16,
        ack_every: usize,
        count: usize,
        make: impl FnMut(usize) -> (String, Vec<u8>),
    ) -> anyhow::Result<(Duration, Duration)> {
        let published = self.publish("", queue, count, make).await?;
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let started = Instant::now();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "bench-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for received in 1..=count {
            let delivery = consumer
                .next()
                .await
                .context("the consumer ended early")??;
            if received % ack_every == 0 || received == count {
                let multiple = ack_every > 1;
                delivery.acker.ack(BasicAckOptions { multiple }).await?;
            }
        }
        // Closing waits for the broker's close-ok, which comes after it has handled every ack.
        channel.close(200, "done".into()).await?;
        Ok((published.took, started.elapsed()))
    }

    /// Ready messages in a queue (passive declare).
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(herald_shared::amqp::queue_depth(&self.channel, queue)
            .await?
            .messages)
    }

    /// Deletes a queue of the bench's own.
    pub async fn delete_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// Empties every queue of a namespace: what earlier loads left there for a dispatcher.
    /// A queue the binaries under test never declared (older ones have no `{ns}.webhooks`)
    /// is skipped: each purge gets a channel of its own, which a missing queue closes.
    pub async fn purge(&self, namespace: &str) -> anyhow::Result<()> {
        let topology = Topology::new(namespace.parse().map_err(anyhow::Error::msg)?);
        for queue in topology.all_queues() {
            let channel = self.connection.create_channel().await?;
            let purged = channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await;
            match purged {
                Ok(_) => {
                    let _ = channel.close(200, "purged".into()).await;
                }
                Err(e) if e.to_string().contains("NOT_FOUND") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A queue of the bench's own bound to every event of the namespace (the exchange is
    /// declared as Herald declares it, so binaries that publish no events can be measured too);
    /// [`Amqp::ready`] on it counts the events published since; [`Amqp::delete_queue`] it after.
    pub async fn count_events(&self, namespace: &str) -> anyhow::Result<String> {
        let topology = Topology::new(namespace.parse().map_err(anyhow::Error::msg)?);
        let exchange = topology.events_exchange();
        self.channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = format!("{namespace}.bench-events");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(queue)
    }

    /// Closes the connection, waiting at most 2 s (its node may be gone).
    pub async fn close(self) {
        let closing = self.connection.close(200, "done".into());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
    }
}

async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
    let confirmation = confirm.await?;
    ensure!(
        matches!(confirmation, lapin::Confirmation::Ack(None)),
        "not confirmed: {confirmation:?}"
    );
    Ok(())
}
