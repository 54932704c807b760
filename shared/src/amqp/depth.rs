//! How full a queue is, asked by passive declare: it creates nothing, and fails (closing the
//! channel) when the queue does not exist.

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};

/// A queue's ready messages and its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready for delivery (not those delivered and unacked).
    pub messages: u32,
    pub consumers: u32,
}

/// Asks the broker how full `queue` is.
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<QueueDepth> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(QueueDepth {
        messages: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}
