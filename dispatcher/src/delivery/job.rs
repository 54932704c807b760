//! Sending a job: wait until it is due, take a turn within Teams' limits, claim the send,
//! find the target's conversation, call Teams, record the outcome.

use std::time::Duration;

use herald_shared::{
    job::Job,
    store::{BeginSend, Outcome, StatusRecord},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Handler, Incoming, Interrupted, Paced,
    failure::{self, Call, Failed, Verdict},
    requeue::Again,
};
use crate::{
    connector::ConnectorError,
    resolve::{Destination, ResolveError, Unreachable},
};

/// A job due within this long is waited for here instead of going round the delay levels
/// again (which work in whole seconds).
const WAIT_HERE_AT_MOST: Duration = Duration::from_millis(1500);

/// What reached Teams.
struct Sent {
    service_url: String,
    conversation_id: String,
    activity_id: Option<String>,
}

impl Handler {
    pub(super) async fn send_job(
        &self,
        job: &Job,
        incoming: &Incoming<'_>,
    ) -> Result<(), Interrupted> {
        let now = OffsetDateTime::now_utc();
        // Early (a delay rounds down to whole seconds; a retry's backoff is in a header)?
        let due = job
            .due(now)
            .max(incoming.bookkeeping.not_before.unwrap_or(now));
        if due > now {
            let wait = Duration::try_from(due - now).unwrap_or_default();
            if wait > WAIT_HERE_AT_MOST {
                // A job published straight to AMQP with a later `deliverAt` gets its status
                // record now (`scheduled`), so it can be looked up while it waits.
                let fresh = StatusRecord {
                    published: true,
                    ..StatusRecord::new(&job.id, job.to.clone(), job.deliver_at, now)
                };
                // A record that exists already (the ingress made it, or an earlier arrival) stays.
                let _created_or_existing = self
                    .until_done("record the job", || self.statuses.create(&fresh))
                    .await?;
                tracing::debug!(?wait, "arrived early; delaying again");
                return self.requeue(incoming, wait, Again::AsItWas).await;
            }
            self.sleep(wait).await?;
        }

        // Teams' limits, held across every replica, before anything else is spent on the job:
        // a job over them costs one script and a publish, so a tenant's backlog cycles
        // through the delay levels quickly and never stands in front of another tenant's job.
        let paced = match self
            .pace(
                job.to.tenant_id(),
                &job.to.thread(),
                incoming.bookkeeping.pace_turn,
            )
            .await?
        {
            Paced::Go(paced) => paced,
            Paced::Later { wait, turn } => {
                tracing::debug!(?wait, "over Teams' limits; waiting for a turn");
                return self.requeue(incoming, wait, Again::ForTurn(turn)).await;
            }
        };

        let owner = format!("{}:{}", self.instance, Uuid::new_v4());
        let now = OffsetDateTime::now_utc();
        let fresh = StatusRecord::new(&job.id, job.to.clone(), job.deliver_at, now);
        let claim = self.until_done("claim", || {
            self.statuses
                .begin_send(&fresh, &owner, self.send_lease, now)
        });
        // The target's lookup only reads, so it runs beside the claim: the two commands share
        // one round trip on the multiplexed connection. A copy that loses the claim drops it.
        let look_up = self.until_done("look up the target", || self.resolver.look_up(&job.to));
        let (claim, lookup) = tokio::join!(claim, look_up);
        match claim? {
            BeginSend::Finished(status) => {
                tracing::info!(%status, "job already ended; dropping this copy");
                self.metrics.job("duplicate");
                return Ok(());
            }
            BeginSend::Busy { retry_in } => {
                tracing::info!(
                    ?retry_in,
                    "another copy of this job is being sent; looking again later"
                );
                let wait = retry_in.max(Duration::from_secs(1));
                return self.requeue(incoming, wait, Again::AsItWas).await;
            }
            BeginSend::Claimed { took_over } => {
                if took_over {
                    tracing::warn!(
                        "took over a send whose holder stopped; Teams may have it already"
                    );
                }
            }
        }
        if job.is_expired(now) {
            return self.finish(&job.id, &owner, Outcome::Expired, 0).await;
        }

        let destination = match lookup? {
            // A user Herald has not heard from: their 1:1 chat is created now that the send
            // is ours.
            Ok(lookup) => {
                self.until_done("look up the target", || self.resolver.complete(&lookup))
                    .await?
            }
            Err(unreachable) => Err(ResolveError::Unreachable(unreachable)),
        };
        let destination = match destination {
            Ok(destination) => destination,
            Err(ResolveError::Unreachable(Unreachable(why))) => {
                tracing::info!(reason = %why, "job cannot be delivered");
                let outcome = Outcome::Failed {
                    reason: why,
                    conversation_id: None,
                };
                return self.finish(&job.id, &owner, outcome, 0).await;
            }
            Err(ResolveError::Teams(error)) => {
                return self.failed_call(job, incoming, &owner, error, None).await;
            }
        };

        let sent = self.send(job, &destination).await;
        let settled = async {
            match sent {
                Ok(sent) => self.delivered(job, &owner, sent).await,
                Err(error) => {
                    self.failed_call(job, incoming, &owner, error, Some(&destination))
                        .await
                }
            }
        };
        // The pacer learns the call is done beside the outcome's record: one round trip.
        let (settled, ()) = tokio::join!(settled, self.note_sent(&paced));
        settled
    }

    async fn send(&self, job: &Job, destination: &Destination) -> Result<Sent, ConnectorError> {
        let activity = job.message.to_activity();
        match destination {
            Destination::Conversation {
                service_url,
                conversation_id,
                ..
            } => {
                let send =
                    self.connector
                        .send_to_conversation(service_url, conversation_id, &activity);
                let sent = self.timed("send", send).await?;
                Ok(Sent {
                    service_url: service_url.clone(),
                    conversation_id: conversation_id.clone(),
                    activity_id: sent.id,
                })
            }
            Destination::ChannelThread {
                service_url,
                tenant_id,
                channel_id,
            } => {
                let create = self.connector.create_channel_thread(
                    service_url,
                    tenant_id,
                    channel_id,
                    &activity,
                );
                let created = self.timed("create_thread", create).await?;
                Ok(Sent {
                    service_url: service_url.clone(),
                    conversation_id: created.id,
                    activity_id: created.activity_id,
                })
            }
        }
    }

    /// The message reached Teams: the job ends `delivered`.
    async fn delivered(&self, job: &Job, owner: &str, sent: Sent) -> Result<(), Interrupted> {
        // The everyday outcome is logged at debug: at thousands of jobs a second an info line
        // each would be most of the dispatcher's work. The status record, the metrics and the
        // trace say it; every other outcome is logged at info.
        tracing::debug!(conversation_id = %sent.conversation_id, "delivered");
        if let Some(due) = job.deliver_at {
            let late = (OffsetDateTime::now_utc() - due).as_seconds_f64().max(0.0);
            self.metrics.delivery_lateness.observe(late);
        }
        let outcome = Outcome::Delivered {
            service_url: sent.service_url,
            conversation_id: sent.conversation_id,
            activity_id: sent.activity_id,
        };
        self.finish(&job.id, owner, outcome, 1).await
    }

    /// A call to Teams for this job failed (the send, or creating the user's 1:1 chat when
    /// `destination` is `None`): [`failure::decide`] says what follows.
    async fn failed_call(
        &self,
        job: &Job,
        incoming: &Incoming<'_>,
        owner: &str,
        error: ConnectorError,
        destination: Option<&Destination>,
    ) -> Result<(), Interrupted> {
        let conversation_id = match destination {
            Some(Destination::Conversation {
                conversation_id, ..
            }) => Some(conversation_id.as_str()),
            _ => None,
        };
        let tenant = destination
            .and_then(Destination::tenant_id)
            .or(job.to.tenant_id());
        // The retry budget counts this delivery's attempts (carried in its headers), so a job
        // redriven from the dead-letter queue gets a fresh one; the record counts them all.
        let attempts = incoming.bookkeeping.attempts + 1;
        let failed = Failed {
            call: Call::Send,
            error: &error,
            attempts,
            service_url: destination.map(Destination::service_url),
            tenant_known: tenant.is_some(),
        };
        let decision = failure::decide(&failed, &self.policy, failure::jitter());
        self.follow_up(&decision, tenant, conversation_id).await?;
        let reason = decision.reason;
        let failed = |reason| Outcome::Failed {
            reason,
            conversation_id: conversation_id.map(str::to_owned),
        };
        match decision.verdict {
            Verdict::Retry { wait } => {
                tracing::info!(%reason, ?wait, attempts, "transient failure; retrying later");
                let next_attempt_at = OffsetDateTime::now_utc() + wait;
                self.requeue(incoming, wait, Again::Retry { attempts })
                    .await?;
                let outcome = Outcome::Retrying {
                    reason,
                    next_attempt_at,
                };
                self.finish(&job.id, owner, outcome, 1).await
            }
            Verdict::GiveUp => {
                tracing::warn!(%reason, "retries exhausted; dead-lettering");
                let amqp_headers = incoming.delivery.properties.headers().as_ref();
                let dead = || {
                    self.publisher.dead_letter(
                        Some(&job.id),
                        &incoming.delivery.data,
                        amqp_headers,
                        &reason,
                    )
                };
                self.until_done("dead-letter", dead).await?;
                self.finish(&job.id, owner, failed(reason), 1).await
            }
            // A send is never done by failing.
            Verdict::Fail | Verdict::Done => {
                tracing::warn!(%reason, gone = decision.conversation_gone, "the job cannot be delivered");
                self.finish(&job.id, owner, failed(reason), 1).await
            }
        }
    }

    /// Records the job's outcome (as the lease's `owner`), `attempts_made` calls to Teams
    /// with it.
    async fn finish(
        &self,
        id: &str,
        owner: &str,
        outcome: Outcome,
        attempts_made: u32,
    ) -> Result<(), Interrupted> {
        self.metrics.job(match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { .. } => "failed",
            Outcome::Retrying { .. } => "retrying",
            Outcome::Expired => "expired",
        });
        let now = OffsetDateTime::now_utc();
        let stored = self
            .until_done("record the outcome", || {
                self.statuses
                    .finish(id, owner, &outcome, attempts_made, now)
            })
            .await?;
        tracing::debug!(%stored, "outcome recorded");
        Ok(())
    }
}
