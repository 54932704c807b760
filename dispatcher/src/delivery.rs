//! Handling one delivery from `{ns}.dispatch`, from the body to the ack.
//!
//! The ack comes last, after the outcome is recorded (or the job safely re-queued through the
//! delay levels), so a crash at any point leaves the delivery unacked and RabbitMQ hands it out
//! again; the status record's send lease then keeps the second copy from sending twice.

use std::{future::Future, sync::Arc, time::Duration};

use herald_shared::{
    amqp::{Publisher, headers},
    connector::{BotConnector, ErrorClass},
    job::Job,
    store::{BeginSend, ConversationStore, Outcome, StatusRecord, StatusStore},
};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    resolve::{ResolveError, Resolver},
    retry,
};

/// A job due within this long is waited for here instead of going round the delay levels
/// again (which work in whole seconds).
const WAIT_HERE_AT_MOST: Duration = Duration::from_millis(1500);

/// Everything a delivery handler needs, shared by all of them.
#[derive(Debug)]
pub struct Handler {
    pub instance: String,
    pub statuses: StatusStore,
    pub conversations: ConversationStore,
    pub resolver: Resolver,
    pub connector: BotConnector,
    pub publisher: Publisher,
    pub retry_schedule: herald_shared::config::RetrySchedule,
    pub max_attempts: u32,
    pub send_lease: Duration,
    /// Cancelled when the service must let go of unfinished deliveries (shutdown deadline).
    pub abandon: CancellationToken,
}

/// What to tell RabbitMQ about a delivery.
enum Settle {
    Ack,
    /// Hand it back to the queue (the service is stopping with the work unfinished).
    Requeue,
}

impl Handler {
    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
        let settle = self.settle(&delivery).await;
        let result = match settle {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(error) = result {
            // The channel is gone; RabbitMQ redelivers the message, and the status record
            // decides what the copy does.
            tracing::warn!(%error, "could not settle a delivery");
        }
    }

    async fn settle(&self, delivery: &Delivery) -> Settle {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        let amqp_headers = delivery.properties.headers().as_ref();
        let job = match Job::from_slice(&delivery.data) {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(?message_id, %error, "poison message; dead-lettering it");
                let reason = format!("rejected: {error}");
                let dead_letter = || {
                    self.publisher.dead_letter(
                        message_id.as_deref(),
                        &delivery.data,
                        amqp_headers,
                        &reason,
                    )
                };
                return self
                    .until_done("dead-letter", dead_letter)
                    .await
                    .map_or(Settle::Requeue, |()| Settle::Ack);
            }
        };
        let span = tracing::info_span!("job", job_id = %job.id);
        match self.process(&job, delivery).instrument(span).await {
            Ok(()) => Settle::Ack,
            Err(Abandoned) => Settle::Requeue,
        }
    }

    async fn process(&self, job: &Job, delivery: &Delivery) -> Result<(), Abandoned> {
        let amqp_headers = delivery.properties.headers().as_ref();
        let now = OffsetDateTime::now_utc();
        // Early (a delay rounds down to whole seconds; a retry's backoff is in a header)?
        let not_before = headers::integer(amqp_headers, headers::NOT_BEFORE).and_then(|ms| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        });
        let due = job.due(now).max(not_before.unwrap_or(now));
        if due > now {
            let wait = Duration::try_from(due - now).unwrap_or_default();
            if wait > WAIT_HERE_AT_MOST {
                // A job published straight to AMQP with a later `deliverAt` gets its status
                // record now (`scheduled`), so it can be looked up while it waits.
                let to = serde_json::to_value(&job.to).unwrap_or_default();
                let fresh = StatusRecord {
                    published: true,
                    ..StatusRecord::new(&job.id, to, job.deliver_at, now)
                };
                // A record that exists already (the ingress made it, or an earlier arrival) stays.
                let _created_or_existing = self
                    .until_done("record the job", || self.statuses.create(&fresh))
                    .await?;
                tracing::debug!(job_id = %job.id, ?wait, "arrived early; delaying again");
                return self.redelay(job, delivery, wait).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.abandon.cancelled() => return Err(Abandoned),
            }
        }

        let owner = format!("{}:{}", self.instance, Uuid::new_v4());
        let now = OffsetDateTime::now_utc();
        let to = serde_json::to_value(&job.to).unwrap_or_default();
        let fresh = StatusRecord::new(&job.id, to, job.deliver_at, now);
        let claim = self
            .until_done("claim", || {
                self.statuses
                    .begin_send(&fresh, &owner, self.send_lease, now)
            })
            .await?;
        let record = match claim {
            BeginSend::Finished(status) => {
                tracing::info!(job_id = %job.id, %status, "job already ended; dropping this copy");
                return Ok(());
            }
            BeginSend::Busy { retry_in } => {
                tracing::info!(job_id = %job.id, ?retry_in, "another copy of this job is being sent; looking again later");
                return self
                    .redelay(job, delivery, retry_in.max(Duration::from_secs(1)))
                    .await;
            }
            BeginSend::Claimed { took_over, record } => {
                if took_over {
                    tracing::warn!(job_id = %job.id, "took over a send whose holder stopped; Teams may have it already");
                }
                record
            }
        };

        if job.is_expired(now) {
            return self.finish(job, &owner, Outcome::Expired, 0).await;
        }
        let resolve = || async {
            match self.resolver.resolve(&job.to).await {
                Err(ResolveError::Store(error)) => Err(error),
                Ok(destination) => Ok(Ok(destination)),
                Err(ResolveError::Unreachable(why)) => Ok(Err(why)),
            }
        };
        let destination = match self.until_done("look up the target", resolve).await? {
            Ok(destination) => destination,
            Err(why) => {
                tracing::info!(job_id = %job.id, reason = %why, "job cannot be delivered");
                let outcome = Outcome::Failed {
                    reason: why.to_string(),
                    conversation_id: None,
                };
                return self.finish(job, &owner, outcome, 0).await;
            }
        };

        let traceparent = headers::text(amqp_headers, headers::TRACEPARENT);
        let activity = job.message.to_activity();
        let sent = self
            .connector
            .send_to_conversation(
                &destination.service_url,
                &destination.conversation_id,
                &activity,
                traceparent.as_deref(),
            )
            .await;
        let conversation_id = Some(destination.conversation_id.clone());
        let error = match sent {
            Ok(sent) => {
                tracing::info!(job_id = %job.id, conversation_id = %destination.conversation_id, "delivered");
                let outcome = Outcome::Delivered {
                    conversation_id: destination.conversation_id,
                    activity_id: sent.id,
                };
                return self.finish(job, &owner, outcome, 1).await;
            }
            Err(error) => error,
        };
        let reason = error.reason();
        match error.class() {
            class @ (ErrorClass::Permanent | ErrorClass::Gone) => {
                tracing::warn!(job_id = %job.id, %reason, ?class, "the job cannot be delivered");
                if class == ErrorClass::Gone {
                    // Later jobs for this conversation fail without calling Teams, until the
                    // next install or message revives the reference.
                    let mark = || {
                        self.conversations
                            .mark_removed(&destination.conversation_id, &reason)
                    };
                    self.until_done("mark the conversation removed", mark)
                        .await?;
                }
                let outcome = Outcome::Failed {
                    reason,
                    conversation_id,
                };
                self.finish(job, &owner, outcome, 1).await
            }
            ErrorClass::Transient { retry_after } => {
                let attempts = record.attempts + 1;
                if attempts >= self.max_attempts {
                    let reason = format!("gave up after {attempts} attempts; the last: {reason}");
                    tracing::warn!(job_id = %job.id, %reason, "retries exhausted; dead-lettering");
                    let dead = || {
                        self.publisher.dead_letter(
                            Some(&job.id),
                            &delivery.data,
                            amqp_headers,
                            &reason,
                        )
                    };
                    self.until_done("dead-letter", dead).await?;
                    return self
                        .finish(
                            job,
                            &owner,
                            Outcome::Failed {
                                reason,
                                conversation_id,
                            },
                            1,
                        )
                        .await;
                }
                let wait = retry::backoff(&self.retry_schedule, attempts, retry_after);
                let next_attempt_at = OffsetDateTime::now_utc() + wait;
                tracing::info!(job_id = %job.id, %reason, ?wait, attempts, "transient failure; retrying later");
                self.publish_delayed(job, delivery, wait, Some(next_attempt_at), attempts)
                    .await?;
                self.finish(
                    job,
                    &owner,
                    Outcome::Retrying {
                        reason,
                        next_attempt_at,
                    },
                    1,
                )
                .await
            }
        }
    }

    async fn finish(
        &self,
        job: &Job,
        owner: &str,
        outcome: Outcome,
        attempts_made: u32,
    ) -> Result<(), Abandoned> {
        let now = OffsetDateTime::now_utc();
        let stored = self
            .until_done("record outcome", || {
                self.statuses
                    .finish(&job.id, owner, &outcome, attempts_made, now)
            })
            .await?;
        tracing::debug!(job_id = %job.id, %stored, "outcome recorded");
        Ok(())
    }

    async fn redelay(
        &self,
        job: &Job,
        delivery: &Delivery,
        wait: Duration,
    ) -> Result<(), Abandoned> {
        let attempts = headers::integer(delivery.properties.headers().as_ref(), headers::ATTEMPTS)
            .unwrap_or(0);
        let not_before =
            headers::integer(delivery.properties.headers().as_ref(), headers::NOT_BEFORE).and_then(
                |ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok(),
            );
        self.publish_delayed(job, delivery, wait, not_before, attempts as u32)
            .await
    }

    /// Sends the delivery's body round the delay levels again, keeping its headers.
    async fn publish_delayed(
        &self,
        job: &Job,
        delivery: &Delivery,
        wait: Duration,
        not_before: Option<OffsetDateTime>,
        attempts: u32,
    ) -> Result<(), Abandoned> {
        let mut kept = headers::carried_over(delivery.properties.headers().as_ref());
        headers::set_integer(&mut kept, headers::ATTEMPTS, i64::from(attempts));
        if let Some(at) = not_before {
            headers::set_integer(
                &mut kept,
                headers::NOT_BEFORE,
                (at.unix_timestamp_nanos() / 1_000_000) as i64,
            );
        }
        let publish = || {
            self.publisher
                .publish_job(&job.id, &delivery.data, wait, kept.clone())
        };
        self.until_done("re-delay", publish).await
    }

    /// Runs a step that needs Redis or RabbitMQ until it succeeds, waiting out outages with
    /// backoff. Holding the delivery meanwhile is the back-pressure: with every prefetch slot
    /// held, the dispatcher takes no new work. Gives up only when the service is stopping.
    async fn until_done<T, E, F, Fut>(&self, step: &str, mut attempt: F) -> Result<T, Abandoned>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::warn!(step, %error, retry_in = ?wait, "a step failed; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.abandon.cancelled() => return Err(Abandoned),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// The service is stopping and this delivery's work is unfinished: it goes back to the queue.
#[derive(Debug)]
struct Abandoned;
