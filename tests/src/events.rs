//! Herald's events as a test sees them: a queue of the test's own bound to `{ns}.events`.

use std::time::Duration;

use futures_util::StreamExt;
use herald_shared::{amqp::Topology, config::Namespace, events::CloudEvent};
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::amqp_url;

/// The namespace's events of a routing pattern, in an exclusive queue (on a connection that
/// lives as long as the consumer).
#[derive(Debug)]
pub struct EventQueue {
    _connection: lapin::Connection,
    consumer: lapin::Consumer,
}

impl EventQueue {
    /// Binds a queue to the events of `pattern` (`herald.notification.#`, a type, …) from now on.
    pub async fn bind(namespace: &str, pattern: &str) -> Self {
        let connection = lapin::Connection::connect(&amqp_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let topology = Topology::new(namespace.parse::<Namespace>().unwrap());
        channel
            .queue_bind(
                queue.name().clone(),
                topology.events_exchange().as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "test-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _connection: connection,
            consumer,
        }
    }

    /// The next event about `subject` (others, such as a welcome's, are passed over), if one
    /// comes within `within`.
    pub async fn next_about(&mut self, subject: &str, within: Duration) -> Option<CloudEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .ok()??;
            let delivery = delivery.expect("the events queue delivers");
            let event: CloudEvent =
                serde_json::from_slice(&delivery.data).expect("an event is a CloudEvent");
            if event.subject == subject {
                return Some(event);
            }
        }
    }
}
