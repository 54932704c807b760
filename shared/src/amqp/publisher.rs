//! Publishing with confirms: a publish succeeds only when the broker has taken responsibility
//! for the message (confirmed, and routed to a queue).
//!
//! Publishes are pipelined: many tasks publish on the one confirm channel at once, each
//! awaiting its own confirmation. Every job publish is `mandatory`, and a returned (unroutable)
//! message is a failure, never a silent loss. Events are the exception: one nobody listens to
//! is dropped by the broker, which is what publishing to subscribers means.

use std::{sync::atomic::Ordering, time::Duration};

use lapin::{
    BasicProperties, Confirmation,
    options::BasicPublishOptions,
    types::{FieldTable, ShortString},
};

use super::{Broker, headers, topology::NOTIFICATION_ROUTING_KEY};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is unavailable")]
    Unavailable,
    #[error("publishing failed")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
    #[error("the message could not be routed: {0}")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
}

/// How long a publish may wait for its confirmation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes refused in a row (with none taken between) after which a link is replaced.
const REFUSED_IN_A_ROW: u32 = 20;

/// A message for the dispatch queue, as Herald queues it for the dispatcher (a job, or a change
/// to a delivered message): JSON, persistent, its id as `message_id` and its contract's version
/// as `type`, as the job contract prescribes. It is also what a parked timer holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchMessage {
    /// The AMQP `message_id`; also the id of its timer while it waits.
    pub id: String,
    /// The AMQP `type`: the contract the body follows.
    pub amqp_type: String,
    /// The AMQP headers (bookkeeping and trace context).
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

impl DispatchMessage {
    /// A job of the contract's current version, its id as the message id.
    pub fn job(id: &str, body: Vec<u8>, headers: FieldTable) -> Self {
        Self {
            id: id.to_owned(),
            amqp_type: crate::job::JOB_TYPE_V1.to_owned(),
            headers,
            body,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Publisher {
    broker: Broker,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }

    /// The names of the exchanges and queues it publishes to.
    pub fn topology(&self) -> &super::Topology {
        self.broker.topology()
    }

    /// Whether a broker link is up now (a publish would be tried, not refused at once).
    pub fn is_connected(&self) -> bool {
        self.broker.current().is_some()
    }

    /// Publishes one message and waits for the broker's confirmation; one no queue takes is
    /// an error ([`PublishError::Unroutable`]).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_routed(exchange, routing_key, body, properties, true)
            .await
    }

    /// Publishes an event: confirmed like every publish, but one that no queue wants (nobody
    /// listens to its type) is simply dropped by the broker, as pub/sub has it.
    pub async fn publish_event(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_routed(exchange, routing_key, body, properties, false)
            .await
    }

    /// The link the publishes go out on, when one is up (for declaring bindings beside them).
    pub fn link(&self) -> Option<super::Link> {
        self.broker.current()
    }

    async fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let link = self.broker.current().ok_or(PublishError::Unavailable)?;
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = async {
            let pending = link
                .publish_channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?;
            Ok::<_, PublishError>(pending.await?)
        };
        let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await;
        // A quorum queue refuses publishes while it elects a leader, and takes them again
        // once it has one; a channel whose every publish is still refused long after is stuck
        // on the dead leader, like one whose publishes go unconfirmed.
        if matches!(outcome, Ok(Ok(Confirmation::Nack(None)))) {
            let refused = link.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            if refused == REFUSED_IN_A_ROW {
                replace(&link, "publishes refused in a row");
            }
        } else if matches!(outcome, Ok(Ok(Confirmation::Ack(_)))) {
            link.refused_in_a_row.store(0, Ordering::Relaxed);
        }
        match outcome {
            Err(_) => {
                replace(&link, "a publish went unconfirmed");
                Err(PublishError::Timeout(CONFIRM_TIMEOUT))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
                Err(PublishError::Unroutable(format!(
                    "{} {}",
                    returned.reply_code, returned.reply_text
                )))
            }
            Ok(Ok(Confirmation::Nack(None))) => Err(PublishError::Nacked),
            // The link's channel is always in confirm mode; this would be a bug in the link.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        }
    }

    /// Publishes a job body to the dispatch queue.
    pub async fn publish_job(
        &self,
        job_id: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish_for_dispatch(&DispatchMessage::job(job_id, body.to_vec(), headers))
            .await
    }

    /// Publishes a message for the dispatcher (a job, or a change to a delivered message) to
    /// the dispatch queue, now; waits are parked in Redis ([`crate::timers`]).
    pub async fn publish_for_dispatch(
        &self,
        message: &DispatchMessage,
    ) -> Result<(), PublishError> {
        let topology = self.broker.topology();
        let properties = BasicProperties::default()
            .with_type(ShortString::from(message.amqp_type.as_str()))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(message.id.as_str().into())
            .with_headers(message.headers.clone());
        self.publish(
            &topology.jobs_exchange(),
            NOTIFICATION_ROUTING_KEY,
            &message.body,
            properties,
        )
        .await
    }

    /// Queues a change to a delivered message; it goes through the dispatch queue like a job,
    /// under its own AMQP `type`.
    pub async fn publish_change(
        &self,
        change: &crate::job::Change,
        kind: crate::job::ChangeKind,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(change).expect("a change always serializes");
        let message_id = format!(
            "{}:{}:{}",
            change.id,
            kind.as_str(),
            uuid::Uuid::new_v4().simple()
        );
        self.publish_for_dispatch(&DispatchMessage {
            id: message_id,
            amqp_type: kind.amqp_type().to_owned(),
            headers,
            body,
        })
        .await
    }

    /// Moves a message to the dead-letter queue with the reason in its headers.
    pub async fn dead_letter(
        &self,
        message_id: Option<&str>,
        body: &[u8],
        original_headers: Option<&FieldTable>,
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut kept = headers::carried_over(original_headers);
        headers::set_text(&mut kept, headers::DEAD_REASON, reason);
        headers::set_text(&mut kept, headers::DEAD_AT, &crate::store::now_rfc3339());
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(kept);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        self.publish(
            &self.broker.topology().dead_exchange(),
            "",
            body,
            properties,
        )
        .await
    }
}

/// Replaces a link whose publishes are lost on it: after a quorum queue's leader dies, a
/// channel's queue client can keep sending to the dead leader, and never hear back or hear
/// only refusals. Closing the channel makes the broker supervisor replace the whole link (its
/// health check sees the channel gone), and retries go out on the new one.
fn replace(link: &super::Link, why: &'static str) {
    tracing::warn!(epoch = link.epoch, why, "replacing the RabbitMQ link");
    let channel = link.publish_channel.clone();
    tokio::spawn(async move {
        let _ = channel.close(320, why.into()).await;
    });
}
