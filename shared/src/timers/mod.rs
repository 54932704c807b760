//! Waiting without holding anything: a message for the dispatcher that is not due yet (a
//! `deliverAt` job, a retry's backoff, a turn within Teams' limits) is parked in Redis
//! ([`TimerStore`]) and published to the dispatch queue when it is due, by the [`pump`] every
//! dispatcher runs. RabbitMQ stays the job queue; it no longer holds waits.
//!
//! A wait shorter than [`PARK_FROM`] is not worth a timer: the message is published at once
//! with its `not_before` header, and the dispatcher waits out the rest itself.

mod pump;

use std::time::Duration;

pub use self::pump::{POLL_INTERVAL, drain, pump};
use crate::{
    amqp::{DispatchMessage, PublishError, Publisher},
    store::{StoreError, TimerStore},
};

/// Waits from this long on are parked in Redis; shorter ones are published at once.
pub const PARK_FROM: Duration = Duration::from_secs(1);

/// Neither Redis (for a wait) nor RabbitMQ (for a message due now) took the message.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("it could not be parked until due")]
    Park(#[from] StoreError),
}

/// The way into the dispatch queue, now or later.
#[derive(Debug, Clone)]
pub struct DispatchQueue {
    publisher: Publisher,
    timers: TimerStore,
}

impl DispatchQueue {
    pub fn new(publisher: Publisher, timers: TimerStore) -> Self {
        Self { publisher, timers }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn timers(&self) -> &TimerStore {
        &self.timers
    }

    /// Queues `message` for the dispatcher `delay` from now: published (and confirmed) at
    /// once if the wait is short, parked in Redis otherwise. Done when one of them holds it.
    pub async fn send(&self, message: &DispatchMessage, delay: Duration) -> Result<(), QueueError> {
        if delay < PARK_FROM {
            self.publisher.publish_for_dispatch(message).await?;
        } else {
            self.timers.park(message, delay).await?;
        }
        Ok(())
    }
}
