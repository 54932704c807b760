//! Publishing with confirms: a publish succeeds only when the broker has taken responsibility
//! for the message (confirmed, and routed to a queue).
//!
//! Publishes are pipelined: many tasks publish on the one confirm channel at once, each
//! awaiting its own confirmation. Every publish is `mandatory`, and a returned (unroutable)
//! message is a failure, never a silent loss.

use std::time::Duration;

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

#[derive(Debug, Clone)]
pub struct Publisher {
    broker: Broker,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }

    /// Publishes one message and waits for the broker's confirmation.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let link = self.broker.current().ok_or(PublishError::Unavailable)?;
        let options = BasicPublishOptions {
            mandatory: true,
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
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
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

    /// Publishes a job body so that it reaches the dispatch queue after `delay` (at once for
    /// less than a second; the dispatcher waits out sub-second remainders itself).
    pub async fn publish_job(
        &self,
        job_id: &str,
        body: &[u8],
        delay: Duration,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish_for_dispatch(job_id, crate::job::JOB_TYPE_V1, body, delay, headers)
            .await
    }

    /// Publishes a message of the contract `amqp_type` (a job, or a change to a delivered
    /// message) so that it reaches the dispatch queue after `delay`, through the delay levels
    /// when it is a second or more.
    pub async fn publish_for_dispatch(
        &self,
        message_id: &str,
        amqp_type: &str,
        body: &[u8],
        delay: Duration,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let topology = self.broker.topology();
        let properties = dispatch_properties(message_id, amqp_type, headers);
        if delay.as_secs() == 0 {
            self.publish(
                &topology.jobs_exchange(),
                NOTIFICATION_ROUTING_KEY,
                body,
                properties,
            )
            .await
        } else {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let entry = topology.delay_entry(delay, NOTIFICATION_ROUTING_KEY, now_ms);
            let properties =
                properties.with_expiration(ShortString::from(entry.expiration_ms.to_string()));
            self.publish(&entry.exchange, &entry.routing_key, body, properties)
                .await
        }
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
        self.publish_for_dispatch(
            &message_id,
            kind.amqp_type(),
            &body,
            Duration::ZERO,
            headers,
        )
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

/// The properties of anything Herald queues for the dispatcher, as the job contract prescribes:
/// JSON, persistent, its id as `message_id`, and its contract's version as `type`.
fn dispatch_properties(message_id: &str, amqp_type: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_type(ShortString::from(amqp_type))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_headers(headers)
}
