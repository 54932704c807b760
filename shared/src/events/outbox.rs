//! Getting an event out after its change is recorded, even if the process dies in between.
//!
//! The order is the transactional-outbox pattern's, with Redis as the outbox:
//!
//! 1. [`Events::note`]: before the change, the event is parked in the outbox (a
//!    [`TimerStore`] family of its own) due [`GRACE`] from now. An event that reports a
//!    recorded change carries a [`Proof`]: the record field the change writes together with
//!    its own fields (in the same script), holding the event's id.
//! 2. The change is recorded.
//! 3. [`Events::publish_soon`]: the event is published in the background, with confirms,
//!    and taken out of the outbox.
//!
//! If the process dies after 1, the relay ([`Events::run`], in every ingress and dispatcher)
//! claims the event when it comes due and publishes it if its proof holds (the change was
//! recorded), or drops it if not (the change never happened; a retry of the work notes it
//! again). Either way nothing reported is lost and nothing unrecorded is reported.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::{
    BasicProperties,
    types::{FieldTable, ShortString},
};
use redis::AsyncCommands;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CloudEvent, batches::Batches};
use crate::{
    amqp::{DispatchMessage, PublishError, Publisher, headers},
    error::Chain,
    store::{Claimed, Redis, StoreError, TimerStore},
    timers::drain,
};

/// How long a noted event waits for its in-process publish before the relay takes it over.
pub const GRACE: Duration = Duration::from_secs(10);

/// Events waiting for the background publisher; beyond this the relay publishes them.
const BACKLOG: usize = 10_000;

/// How many events the background publisher has in flight at once (confirms pipelined).
const IN_FLIGHT: usize = 256;

const PROOF_KEY: &str = "x-herald-proof-key";
const PROOF_FIELD: &str = "x-herald-proof-field";

/// Where a change's record says it happened: `field` of the hash at `key` holds the event's
/// id once the change is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub key: String,
    pub field: String,
}

impl Proof {
    /// The record field that proves the event of this type was recorded.
    pub fn field_for(kind: super::EventType) -> String {
        format!("event:{}", kind.as_str())
    }
}

/// Publishing events, with the outbox behind it. Clones share the background publisher.
#[derive(Debug, Clone)]
pub struct Events {
    publisher: Publisher,
    outbox: TimerStore,
    redis: Redis,
    source: String,
    soon: mpsc::Sender<CloudEvent>,
    queued: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<CloudEvent>>>,
    batches: Batches,
}

impl Events {
    pub fn new(publisher: Publisher, redis: Redis) -> Self {
        let (soon, queued) = mpsc::channel(BACKLOG);
        Self {
            source: format!("herald/{}", redis.namespace()),
            outbox: TimerStore::family(redis.clone(), "outbox"),
            publisher,
            redis,
            soon,
            queued: std::sync::Arc::new(tokio::sync::Mutex::new(queued)),
            batches: Batches::new(),
        }
    }

    /// Waits up to `within` for the background publisher to take every queued event (a
    /// stopping service gives it that moment; what is left is the relay's).
    pub async fn settle(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            while self.soon.capacity() < self.soon.max_capacity() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// The events' `source`: `herald/{ns}`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The outbox (for tests that look into it).
    pub fn outbox(&self) -> &TimerStore {
        &self.outbox
    }

    /// Step 1: parks `event` in the outbox, before the change it reports is recorded.
    pub async fn note(&self, event: &CloudEvent, proof: Option<&Proof>) -> Result<(), StoreError> {
        let mut headers = FieldTable::default();
        if let Some(proof) = proof {
            headers::set_text(&mut headers, PROOF_KEY, &proof.key);
            headers::set_text(&mut headers, PROOF_FIELD, &proof.field);
        }
        let parked = DispatchMessage {
            id: event.id.clone(),
            amqp_type: event.kind.clone(),
            headers,
            body: event.to_json(),
        };
        self.outbox.park(&parked, GRACE).await?;
        Ok(())
    }

    /// Step 3: publishes a noted event in the background, once its change is recorded. When
    /// the backlog is full the relay publishes it instead, after [`GRACE`].
    pub fn publish_soon(&self, event: CloudEvent) {
        if self.soon.try_send(event).is_err() {
            tracing::debug!("the event backlog is full; the relay publishes the event");
        }
    }

    /// Notes and publishes at once an event whose change is the event itself (a user's
    /// action, a message): nothing to prove, so steps 1 and 3 with nothing between.
    pub async fn emit(&self, event: CloudEvent) -> Result<(), StoreError> {
        self.note(&event, None).await?;
        self.publish_soon(event);
        Ok(())
    }

    /// Publishes an event that was never noted, confirmed, with the others asked for at about
    /// the same time (see [`super::batches`]): for work that is itself redone until it is
    /// acknowledged (the dispatcher acks a job only after its event is confirmed, and a
    /// redelivered copy tells it again), so it needs no outbox.
    pub async fn publish_unnoted(&self, event: &CloudEvent) -> Result<(), PublishError> {
        if let Some(outcome) = self.batches.join(&event.kind, &event.id, event.to_json())
            && let Ok(outcome) = outcome.await
        {
            return outcome;
        }
        // Boxed, being rare: inline, a publish's future would make every caller's larger.
        Box::pin(self.publish(&event.kind, &event.id, &event.to_json())).await
    }

    pub(super) async fn publish(
        &self,
        kind: &str,
        id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_type(ShortString::from(kind))
            .with_content_type(ShortString::from("application/cloudevents+json"))
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64);
        let exchange = self.publisher.topology().events_exchange();
        self.publisher
            .publish_event(&exchange, kind, body, properties)
            .await
    }

    /// Runs the background publisher, the batches of confirmed publishes and the relay until
    /// `stop`.
    pub async fn run(self, stop: CancellationToken) {
        tokio::join!(
            self.publish_queued(stop.clone()),
            self.batches.run(&self, stop.clone()),
            self.relay(stop)
        );
    }

    async fn publish_queued(&self, stop: CancellationToken) {
        let mut queued = self.queued.lock().await;
        let mut batch = Vec::with_capacity(IN_FLIGHT);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = queued.recv_many(&mut batch, IN_FLIGHT) => if n == 0 { return },
            }
            // Published side by side (the confirms are pipelined), then taken out of the
            // outbox in one round trip.
            let published = join_all(batch.iter().map(|event| async move {
                match self.publish(&event.kind, &event.id, &event.to_json()).await {
                    Ok(()) => Some(event.id.as_str()),
                    Err(e) => {
                        tracing::warn!(event = %event.id, error = %Chain(&e), "an event was not published; the relay publishes it");
                        None
                    }
                }
            }))
            .await;
            let ids: Vec<&str> = published.into_iter().flatten().collect();
            if let Err(e) = self.outbox.forget_many(&ids).await {
                // Still parked: the relay publishes them once more, which consumers
                // de-duplicate.
                tracing::debug!(error = %Chain(&e), "published events stay in the outbox");
            }
            batch.clear();
        }
    }

    async fn relay(&self, stop: CancellationToken) {
        let ready = || self.publisher.is_connected();
        drain(&self.outbox, ready, &stop, |claimed| async move {
            join_all(claimed.iter().map(|noted| self.relay_one(noted))).await;
        })
        .await;
    }

    /// Publishes an event left in the outbox if its change was recorded, drops it if not.
    async fn relay_one(&self, noted: &Claimed) {
        let message = match noted.message() {
            Ok(message) => message,
            Err(reason) => {
                tracing::error!(event = %noted.id, %reason, "an outbox entry does not read; dropping it");
                let _ = self.outbox.release(noted).await;
                return;
            }
        };
        match self.proven(&message.headers, &message.id).await {
            Ok(true) => {
                if let Err(e) = self
                    .publish(&message.amqp_type, &message.id, &message.body)
                    .await
                {
                    tracing::warn!(event = %noted.id, error = %Chain(&e), "cannot relay an event; it is due again");
                    let _ = self.outbox.put_back(noted).await;
                    return;
                }
                tracing::info!(event = %noted.id, kind = %message.amqp_type, "an event left unpublished was relayed");
            }
            Ok(false) => {
                tracing::info!(event = %noted.id, kind = %message.amqp_type, "a noted event's change was never recorded; dropping it");
            }
            Err(e) => {
                tracing::warn!(event = %noted.id, error = %Chain(&e), "cannot check a noted event's change; it is due again");
                let _ = self.outbox.put_back(noted).await;
                return;
            }
        }
        if let Err(e) = self.outbox.release(noted).await {
            tracing::warn!(event = %noted.id, error = %Chain(&e), "cannot remove a relayed event from the outbox");
        }
    }

    async fn proven(&self, headers: &FieldTable, id: &str) -> Result<bool, StoreError> {
        let text = |name: &str| headers::text(Some(headers), name);
        let (Some(key), Some(field)) = (text(PROOF_KEY), text(PROOF_FIELD)) else {
            return Ok(true);
        };
        let recorded: Option<String> = self.redis.conn().hget(key, field).await?;
        Ok(recorded.as_deref() == Some(id))
    }
}
