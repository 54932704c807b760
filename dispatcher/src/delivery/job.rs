//! Sending a job: wait until the recipient's clock lets it go (its due time, its window, their
//! quiet hours), take a turn within Teams' limits, claim the send, find the target's
//! conversation, call Teams, record the outcome.

use std::time::Duration;

use herald_shared::{
    broadcast::BroadcastStatus,
    events::{CloudEvent, EventType, NotificationChanged},
    job::{Change, ChangeKind, Job, JobId, Target},
    store::{BeginSend, Ended, JobStatus, Outcome, Remember, SentMessage, StatusRecord},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    BroadcastTag, Handler, Incoming, Interrupted, Paced,
    failure::{self, Call, Failed, Verdict},
    requeue::Again,
};
use crate::{
    connector::ConnectorError,
    graph::GraphError,
    pace::PacedSend,
    resolve::{Destination, Lookup, ResolveError, Unreachable},
};

/// A job due within this long is waited for here instead of being parked again: a short wait
/// in a prefetch slot costs less than a timer's round trip.
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
        // When the recipient's clock lets it go: its due time (`deliverAt`, or
        // `deliverAtLocal` in its zone), its window, the recipient's quiet hours. Read afresh
        // at every arrival, so a zone or quiet hours changed while it waited still count.
        // The target's lookup only reads, so it runs beside the clock's: one round trip.
        let (clock, lookup) = tokio::join!(
            self.until_done("read the recipient's clock", || {
                self.users.recipient_clock(&job.to, self.default_time_zone)
            }),
            self.until_done("look up the target", || self.resolver.look_up(&job.to)),
        );
        let (clock, lookup) = (clock?, lookup?);
        let now = OffsetDateTime::now_utc();
        let opening = job.send_time(now, &clock);
        // Early (before its opening, or a retry's backoff or a pacing turn, in a header)?
        let not_before = incoming.bookkeeping.not_before.unwrap_or(now);
        let due = opening.as_ref().map_or(now, |at| *at).max(not_before);
        if due > now {
            let wait = Duration::try_from(due - now).unwrap_or_default();
            if wait > WAIT_HERE_AT_MOST {
                if due > not_before {
                    self.record_hold(job, incoming.broadcast.as_ref(), due, now)
                        .await?;
                }
                tracing::debug!(?wait, "early; waiting for its time");
                return self.requeue(incoming, wait, Again::AsItWas).await;
            }
            self.sleep(wait).await?;
        }
        // Its window and the recipient's quiet hours never meet: it can never go.
        let never = opening.err().map(|never| never.to_string());

        // Teams' limits, held across every replica, before anything else is spent on the job:
        // a job over them costs one script and a timer, so a tenant's backlog waits in Redis
        // and never stands in front of another tenant's job.
        // A chat is paced as the conversation it resolves to, whatever form the target took
        // (a user, or that chat's id), so two forms of one chat share its limits.
        let thread = match &lookup {
            Ok(Lookup::Ready(Destination::Conversation {
                conversation_id, ..
            })) => conversation_id.clone(),
            _ => job.to.thread(),
        };
        let class = incoming.class();
        // A user Herald has no chat with costs two requests: the chat's creation, then the
        // message.
        let requests = match &lookup {
            Ok(Lookup::NewPersonalChat { .. } | Lookup::UnknownName { .. }) => 2,
            _ => 1,
        };
        let paced = if never.is_some() {
            PacedSend::default()
        } else {
            match self
                .pace(
                    job.to.tenant_id(),
                    &thread,
                    incoming.bookkeeping.pace_turn,
                    class,
                    requests,
                )
                .await?
            {
                Paced::Go(paced) => paced,
                Paced::Later { wait, turn } => {
                    tracing::debug!(?wait, "over Teams' limits; waiting for a turn");
                    return self.requeue(incoming, wait, Again::ForTurn(turn)).await;
                }
            }
        };

        let owner = format!("{}:{}", self.instance, Uuid::new_v4());
        let now = OffsetDateTime::now_utc();
        let fresh = StatusRecord {
            broadcast_id: incoming.broadcast.as_ref().map(|b| b.id.clone()),
            ..StatusRecord::new(&job.id, job.to.clone(), job.deliver_at, now)
        };
        let claim = self.until_done("claim", || {
            self.statuses
                .begin_send(&fresh, &owner, self.send_lease, now)
        });
        // A broadcast's message checks that the broadcast still goes on, beside the claim:
        // the two commands share one round trip.
        let broadcast_status = async {
            match &incoming.broadcast {
                Some(tag) => {
                    self.until_done("read the broadcast's status", || {
                        self.broadcasts.status(&tag.id)
                    })
                    .await
                }
                None => Ok(None),
            }
        };
        let (claim, broadcast_status) = tokio::join!(claim, broadcast_status);
        match claim? {
            BeginSend::Finished(status) => {
                tracing::info!(%status, "job already ended; dropping this copy");
                self.metrics.job("duplicate");
                // The handler that ended it may have died before its event was confirmed
                // (this copy is then the redelivery): tell the end again, under the same id.
                return Box::pin(self.tell_end_again(&job.id, incoming.broadcast.as_ref())).await;
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
        let broadcast = incoming.broadcast.as_ref();
        if broadcast_status? == Some(BroadcastStatus::Cancelled) {
            tracing::info!("its broadcast was cancelled; not sending");
            return self
                .finish(job, broadcast, &owner, Outcome::Cancelled, 0)
                .await;
        }
        if job.is_expired(now) {
            return self
                .finish(job, broadcast, &owner, Outcome::Expired, 0)
                .await;
        }
        if let Some(reason) = never {
            tracing::info!(%reason, "job cannot be delivered");
            let outcome = Outcome::Failed {
                reason,
                conversation_id: None,
                transient: false,
            };
            return self.finish(job, broadcast, &owner, outcome, 0).await;
        }

        let destination = match lookup {
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
                    transient: false,
                };
                return self.finish(job, broadcast, &owner, outcome, 0).await;
            }
            Err(ResolveError::Teams(error)) => {
                return self.failed_call(job, incoming, &owner, error, None).await;
            }
            Err(ResolveError::Graph(error)) => {
                // A call Graph's pace held back never went: it spends no attempt.
                let made = u32::from(!matches!(error, GraphError::Held { .. }));
                let attempts = incoming.bookkeeping.attempts + made;
                let decision =
                    failure::decide_graph(&error, attempts, &self.policy, failure::jitter());
                return self
                    .settle_failure(job, incoming, &owner, decision, None, made)
                    .await;
            }
        };

        let sent = self.send(job, &destination).await;
        let answered = sent
            .as_ref()
            .map_or_else(ConnectorError::was_answered, |_| true);
        let settled = async {
            match sent {
                Ok(sent) => self.delivered(job, broadcast, &owner, sent).await,
                Err(error) => {
                    self.failed_call(job, incoming, &owner, error, Some(&destination))
                        .await
                }
            }
        };
        // The pacer learns the call is done beside the outcome's record: one round trip.
        let (settled, ()) = tokio::join!(settled, self.note_sent(&paced, answered));
        settled
    }

    /// Records that the job waits until `until` for its time, so that it reads `scheduled`
    /// with the instant it will go. A job published straight to AMQP gets its record here.
    async fn record_hold(
        &self,
        job: &Job,
        broadcast: Option<&BroadcastTag>,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), Interrupted> {
        let fresh = StatusRecord {
            published: true,
            broadcast_id: broadcast.map(|b| b.id.clone()),
            ..StatusRecord::new(&job.id, job.to.clone(), Some(until), now)
        };
        let existing = self
            .until_done("record the job", || self.statuses.create(&fresh))
            .await?;
        // A broadcast's recipient waiting for their own clock does not hold back its fan-out.
        if let Some(tag) = broadcast {
            self.until_done("note the recipient waits", || {
                self.broadcasts.hold(&tag.id, &job.id)
            })
            .await?;
        }
        // A record that exists already (the ingress made it, or an earlier arrival) says when
        // the job goes, unless that has moved (a window, quiet hours, a new zone).
        if let Err(existing) = existing
            && existing.deliver_at != Some(until)
        {
            self.until_done("record the hold", || {
                self.statuses.hold(&job.id, until, now)
            })
            .await?;
        }
        Ok(())
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
    async fn delivered(
        &self,
        job: &Job,
        broadcast: Option<&BroadcastTag>,
        owner: &str,
        sent: Sent,
    ) -> Result<(), Interrupted> {
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
        self.finish(job, broadcast, owner, outcome, 1).await
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
        self.settle_failure(job, incoming, owner, decision, conversation_id, 1)
            .await
    }

    /// Acts on a failed call's decision (its side effects done): retry later, give up to the
    /// dead-letter queue, or fail. `made` counts the calls this arrival made (none for one
    /// Graph's pace held back); with the delivery's earlier attempts, they are its budget
    /// spent.
    async fn settle_failure(
        &self,
        job: &Job,
        incoming: &Incoming<'_>,
        owner: &str,
        decision: failure::Decision,
        conversation_id: Option<&str>,
        made: u32,
    ) -> Result<(), Interrupted> {
        let attempts = incoming.bookkeeping.attempts + made;
        let reason = decision.reason;
        let failed = |reason, transient| Outcome::Failed {
            reason,
            conversation_id: conversation_id.map(str::to_owned),
            transient,
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
                self.finish(job, incoming.broadcast.as_ref(), owner, outcome, made)
                    .await
            }
            Verdict::GiveUp => {
                tracing::warn!(%reason, "retries exhausted; dead-lettering");
                let amqp_headers = incoming.delivery.properties.headers().as_ref();
                let dead = || {
                    self.queue.publisher().dead_letter(
                        Some(&job.id),
                        &incoming.delivery.data,
                        amqp_headers,
                        &reason,
                    )
                };
                self.until_done("dead-letter", dead).await?;
                // Every attempt failed for a reason that could pass: a broadcast's retry may
                // send it again.
                let outcome = failed(reason, true);
                self.finish(job, incoming.broadcast.as_ref(), owner, outcome, made)
                    .await
            }
            // A send is never done by failing.
            Verdict::Fail | Verdict::Done => {
                tracing::warn!(%reason, gone = decision.conversation_gone, "the job cannot be delivered");
                let outcome = failed(reason, false);
                self.finish(job, incoming.broadcast.as_ref(), owner, outcome, made)
                    .await
            }
        }
    }

    /// Records the job's outcome (as the lease's `owner`), `attempts_made` calls to Teams
    /// with it, and tells it as an event when it is the job's end; a broadcast's message
    /// (`broadcast`) counts its end in the broadcast's counts too.
    async fn finish(
        &self,
        job: &Job,
        broadcast: Option<&BroadcastTag>,
        owner: &str,
        outcome: Outcome,
        attempts_made: u32,
    ) -> Result<(), Interrupted> {
        self.metrics.job(match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { .. } => "failed",
            Outcome::Retrying { .. } => "retrying",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
        });
        let now = OffsetDateTime::now_utc();
        // What a press or a read receipt needs to find the message, written with the outcome
        // in one round trip. Teams has the message already, and both are done before the
        // job's end is told and the delivery acked.
        let remember = |beside: &mut redis::Pipeline| {
            let Outcome::Delivered {
                conversation_id,
                activity_id: Some(activity_id),
                ..
            } = &outcome
            else {
                return;
            };
            let sent = SentMessage {
                notification_id: job.id.to_string(),
                broadcast_id: broadcast.map(|b| b.id.clone()),
                on_action: job.on_action.clone(),
            };
            let what = Remember {
                personal: is_personal(job, conversation_id),
                has_actions: job.on_action.is_some() || job.message.has_card_actions(),
            };
            self.sent
                .remember(beside, conversation_id, activity_id, what, &sent);
        };
        let stored = self
            .until_done("record the outcome", || {
                self.statuses
                    .finish(&job.id, owner, &outcome, attempts_made, now, &remember)
            })
            .await?;
        tracing::debug!(%stored, "outcome recorded");
        // The end is told before the delivery is acked, so it needs no outbox: if this
        // process dies first, the redelivered copy finds the job ended and tells it again.
        if let Some((status, event)) =
            ended_event(job, broadcast, &outcome, self.events.source(), now)
            && stored == status
        {
            let publish =
                self.until_done("publish the event", || self.events.publish_unnoted(&event));
            // What only a broadcast's message does is boxed (as is every rare path out of a
            // handler): inline, its futures made every delivery's task several times larger,
            // and a task's future is copied whole as it is spawned and ends.
            let count = async {
                match broadcast {
                    Some(tag) => Box::pin(self.count_end(tag, &job.id, status))
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            };
            let (published, counted) = tokio::join!(publish, count);
            published?;
            if let (Some(tag), Some(ended), JobStatus::Delivered) = (broadcast, counted?, status) {
                Box::pin(self.catch_up(&job.id, tag, ended)).await?;
            }
        }
        Ok(())
    }

    /// A broadcast's message that reached Teams after its broadcast changed: deleted if the
    /// broadcast is being retracted, edited if its message is newer than the one sent.
    async fn catch_up(
        &self,
        id: &JobId,
        tag: &BroadcastTag,
        ended: Ended,
    ) -> Result<(), Interrupted> {
        let change = if ended.retracting {
            Some((ChangeKind::Delete, None))
        } else if ended.version != tag.version {
            let record = self
                .until_done("read the broadcast", || self.broadcasts.get(&tag.id))
                .await?;
            record.map(|r| (ChangeKind::Update, Some(r.broadcast.message)))
        } else {
            None
        };
        if let Some((kind, message)) = change {
            tracing::info!(
                op = kind.as_str(),
                "the broadcast changed while its message was sent; changing it too"
            );
            let change = Change {
                id: id.clone(),
                message,
            };
            self.queue_broadcast_change(&change, kind, tag).await?;
        }
        Ok(())
    }

    /// Counts the end of a broadcast's message in the broadcast (once, however often told).
    async fn count_end(
        &self,
        broadcast: &BroadcastTag,
        id: &str,
        status: JobStatus,
    ) -> Result<Ended, Interrupted> {
        let now = OffsetDateTime::now_utc();
        let ended = self
            .until_done("count the end in the broadcast", || {
                self.broadcasts.record_end(&broadcast.id, id, status, now)
            })
            .await?;
        if ended.told.applied {
            self.metrics
                .broadcast_recipients
                .get_or_create(&vec![("outcome", status.as_str().to_owned())])
                .inc();
        }
        self.tell_if_settled(&broadcast.id, &ended.told).await?;
        Ok(ended)
    }
}

impl Handler {
    /// Tells the end of job `id` again, from its record: for a copy of a job that had ended,
    /// whose handler may have died before its event was confirmed.
    async fn tell_end_again(
        &self,
        id: &str,
        broadcast: Option<&BroadcastTag>,
    ) -> Result<(), Interrupted> {
        let record = self
            .until_done("read the status record", || self.statuses.get(id))
            .await?;
        let now = OffsetDateTime::now_utc();
        let Some(record) = record else {
            return Ok(());
        };
        if let Some(event) = NotificationChanged::ended(self.events.source(), &record, now) {
            self.until_done("publish the event", || self.events.publish_unnoted(&event))
                .await?;
            if let Some(tag) = broadcast {
                let ended = self.count_end(tag, id, record.status).await?;
                // What the first handling did not get to: a change of the broadcast to catch up.
                if record.status == JobStatus::Delivered {
                    self.catch_up(&record.id, tag, ended).await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether the conversation is a personal chat, where read receipts come from: a user target's,
/// or one whose id has the personal-chat prefix.
fn is_personal(job: &Job, conversation_id: &str) -> bool {
    matches!(job.to, Target::User(_)) || conversation_id.starts_with("a:")
}

/// The status an outcome ends the job at, and the event telling it; `None` for a retry, which
/// is not an end.
fn ended_event(
    job: &Job,
    broadcast: Option<&BroadcastTag>,
    outcome: &Outcome,
    source: &str,
    now: OffsetDateTime,
) -> Option<(JobStatus, CloudEvent)> {
    let (status, conversation_id, activity_id, last_error) = match outcome {
        Outcome::Retrying { .. } => return None,
        Outcome::Delivered {
            conversation_id,
            activity_id,
            ..
        } => (
            JobStatus::Delivered,
            Some(conversation_id.clone()),
            activity_id.clone(),
            None,
        ),
        Outcome::Failed {
            reason,
            conversation_id,
            ..
        } => (
            JobStatus::Failed,
            conversation_id.clone(),
            None,
            Some(reason.clone()),
        ),
        Outcome::Expired => (JobStatus::Expired, None, None, None),
        Outcome::Cancelled => (JobStatus::Cancelled, None, None, None),
    };
    let kind = EventType::ending(status)?;
    let data = NotificationChanged {
        notification_id: job.id.to_string(),
        broadcast_id: broadcast.map(|b| b.id.clone()),
        tenant_id: job.to.tenant_id().map(str::to_owned),
        conversation_id,
        activity_id,
        status: status.as_str().to_owned(),
        last_error,
    };
    Some((
        status,
        CloudEvent::new(source, kind, &job.id, &job.id, &data, now),
    ))
}
