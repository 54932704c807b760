//! A broadcast's fan-out: its audience gathered (a tenant's users, a team's roster, a group or
//! the directory through Microsoft Graph) and handed to the dispatch queue as one job per
//! recipient, a page at a time.
//!
//! The fan-out is a chain of steps, each a small message on the dispatch queue: a step does
//! one page of work, queues the next step, and then moves the broadcast's stored position on,
//! only if the broadcast is still at this step's number. So:
//! - memory does not grow with the audience (a step holds one page);
//! - a crash or SIGTERM anywhere leaves the step unacked or queued again, and the step is done
//!   again from the stored position; a recipient handed out twice is one notification (its id
//!   is UUID v5 of broadcast and recipient, and the send lease keeps a second copy from
//!   sending);
//! - a stale copy of a step (a redelivery after its successor ran) finds the broadcast at
//!   another number and is dropped, and one that arrives before its predecessor moved the
//!   broadcast on comes back a moment later;
//! - the steps of many broadcasts, on many replicas, interleave with every other delivery.
//!
//! A step hands out recipients only while fewer than [`FanOut::ahead`] are in flight (handed
//! out and not yet ended); otherwise it looks again about when a page's worth of room has come
//! free. Its page is sized to the tenant rate ([`FanOut::for_rate`]), so the chain of steps is
//! never what holds a broadcast back. The pacer sends broadcasts' jobs as bulk work, so what
//! waits is a bounded number of jobs, not the audience.

use std::time::Duration;

use herald_shared::{
    amqp::{
        DispatchMessage,
        headers::{self, Bookkeeping},
    },
    broadcast::{
        Audience, Broadcast, BroadcastStatus, LaunchError, Recipient, Step, launch::unix_ms,
        step_message,
    },
    events::BroadcastCompleted,
    store::{Advance, BroadcastRecord, JobStatus, Told},
};
use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::{Handler, Interrupted, Outage};
use crate::{
    connector::ConnectorError,
    reach::{Members, ReachError},
};

/// How a broadcast's fan-out hands out its recipients.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    /// At most this many of a broadcast's recipients in flight (`HERALD_BROADCAST_AHEAD`).
    pub ahead: u64,
    /// Recipients handed out per step.
    pub page: usize,
    /// Members asked of Teams per roster page (Teams takes 50 to 500).
    pub roster_page: u32,
    /// How soon a step whose broadcast has enough in flight looks again.
    pub recheck: Duration,
}

impl Default for FanOut {
    fn default() -> Self {
        Self {
            ahead: 1_000,
            page: 250,
            roster_page: 500,
            recheck: MAX_RECHECK,
        }
    }
}

impl FanOut {
    /// A fan-out that can keep up with a tenant rate of `rate` requests a second (`None`:
    /// tenants are not paced). A step takes about a tenth of a second, so a page of a fifth of
    /// a second's sends keeps the chain ahead of the pacer with room to spare: 250 (the least)
    /// up to 1,250 a second, then more, up to 2,000 a page. A page is held in memory only while
    /// it is handed out. A full bound is looked at again about when a page's worth of room
    /// has come free (at most a page a second), between 100 ms and a second.
    pub fn for_rate(ahead: u64, rate: Option<f64>) -> Self {
        let page = rate
            .map_or(MAX_PAGE, |rate| (rate / 5.0).ceil() as usize)
            .clamp(Self::default().page, MAX_PAGE);
        let recheck = rate.map_or(MIN_RECHECK, |rate| {
            Duration::from_secs_f64(page as f64 / rate.max(1.0)).clamp(MIN_RECHECK, MAX_RECHECK)
        });
        Self {
            ahead,
            page,
            recheck,
            ..Self::default()
        }
    }
}

/// The most recipients a step hands out.
const MAX_PAGE: usize = 2_000;

/// How soon, at least and at most, a step whose broadcast has enough in flight looks again: a
/// look is a read and a step queued again.
const MIN_RECHECK: Duration = Duration::from_millis(100);
const MAX_RECHECK: Duration = Duration::from_secs(1);

/// How long a step that arrived before its predecessor moved the broadcast on looks again in
/// place (its predecessor is one Redis write from done) ...
const CATCH_UP: Duration = Duration::from_millis(60);

/// ... and how soon it comes back when that was not enough.
const EARLY: Duration = Duration::from_millis(300);

/// Users of a tenant read per step (a hint to SSCAN).
const TENANT_PAGE: usize = 1_000;

impl Outage for LaunchError {
    fn is_outage(&self) -> bool {
        match self {
            LaunchError::Store(e) => e.is_outage(),
            LaunchError::Queue(e) => e.is_outage(),
            LaunchError::Conflict(_) | LaunchError::Refused { .. } => false,
        }
    }
}

impl Handler {
    /// A `broadcast.v1` from another service: created like `POST /v1/broadcasts` creates one.
    /// One that can never be created (a conflict, an unknown team) is dead-lettered with why.
    pub(super) async fn create_broadcast(&self, broadcast: &Broadcast) -> Result<(), Interrupted> {
        let now = OffsetDateTime::now_utc();
        let launched = self
            .until_done("create the broadcast", || {
                self.broadcaster.create(broadcast.clone(), now)
            })
            .await?;
        if launched.created {
            self.metrics.broadcast("created");
        }
        tracing::info!(
            created = launched.created,
            status = %launched.record.status,
            "broadcast received over AMQP"
        );
        Ok(())
    }

    pub(super) async fn fan_out_step(
        &self,
        step: &Step,
        not_before: Option<OffsetDateTime>,
    ) -> Result<(), Interrupted> {
        if let Some(at) = not_before {
            let wait = Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
            self.sleep(wait).await?;
        }
        if let Some(due) = step.due_ms {
            let lag = unix_ms(OffsetDateTime::now_utc()) - due;
            self.metrics
                .broadcast_fanout_lag
                .observe(lag.max(0) as f64 / 1000.0);
        }
        let Some(record) = self.read_at_step(step).await? else {
            return Ok(());
        };
        if record.step > step.step {
            tracing::debug!(at = record.step, "a stale step; dropping it");
            return Ok(());
        }
        if record.step < step.step {
            // Its predecessor has not moved the broadcast on for a while (it is slow, or it
            // died and its redelivery will): come back later. One of a broadcast that has
            // stopped has nothing to wait for.
            if record.status.is_final() {
                return Ok(());
            }
            return self.queue_step(step, EARLY).await;
        }
        let now = OffsetDateTime::now_utc();
        match record.status {
            BroadcastStatus::Cancelled if !record.fanned_out => {
                self.count_never_sent(step, &record, BroadcastStatus::Cancelled)
                    .await
            }
            BroadcastStatus::Draft
            | BroadcastStatus::Completed
            | BroadcastStatus::Cancelled
            | BroadcastStatus::Expired => Ok(()),
            BroadcastStatus::Scheduled => self.start(step, &record, now).await,
            BroadcastStatus::Expanding => match &record.broadcast.audience {
                Audience::Tenant(tenant) if tenant.from_directory() => {
                    self.gather_from_graph(step, &record, &tenant.tenant_id, Members::Directory)
                        .await
                }
                Audience::Group(group) => {
                    let members = Members::Group(&group.group_id);
                    self.gather_from_graph(step, &record, &group.tenant_id, members)
                        .await
                }
                Audience::Tenant(tenant) => {
                    self.gather_tenant(step, &record, &tenant.tenant_id).await
                }
                Audience::Team(team) => {
                    self.gather_roster(step, &record, &team.tenant_id, &team.team_id)
                        .await
                }
                // Nothing else is gathered: the audience is complete already.
                _ => {
                    let change = Advance {
                        status: Some(BroadcastStatus::Sending),
                        gathered: true,
                        ..Advance::default()
                    };
                    self.move_on(step, change, Some(Duration::ZERO)).await
                }
            },
            BroadcastStatus::Sending => self.hand_out(step, &record, now).await,
        }
    }

    /// The broadcast as this step finds it; `None` if it is gone (expired). A step is queued
    /// just before its predecessor moves the broadcast on (so that no crash loses the chain),
    /// and a dispatcher with deliveries to spare often takes it before that write lands: the
    /// broadcast is then one Redis write behind, so the step looks again a few times within
    /// [`CATCH_UP`] before it goes round the queue.
    async fn read_at_step(&self, step: &Step) -> Result<Option<BroadcastRecord>, Interrupted> {
        let id = step.broadcast_id.as_str();
        let mut pause = Duration::from_millis(2);
        let mut waited = Duration::ZERO;
        loop {
            let Some(record) = self
                .until_done("read the broadcast", || self.broadcasts.get(id))
                .await?
            else {
                tracing::warn!("a step of a broadcast that does not exist (expired?); dropping it");
                return Ok(None);
            };
            if record.step >= step.step || record.status.is_final() || waited >= CATCH_UP {
                return Ok(Some(record));
            }
            self.sleep(pause).await?;
            waited += pause;
            pause *= 2;
        }
    }

    /// A scheduled broadcast whose time has come starts (gathering, or sending); one that
    /// arrived early (its timer was claimed ahead) waits here or goes round again.
    async fn start(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        now: OffsetDateTime,
    ) -> Result<(), Interrupted> {
        if let Some(at) = record.broadcast.deliver_at.filter(|at| *at > now) {
            let wait = Duration::try_from(at - now).unwrap_or_default();
            return self.queue_step(step, wait).await;
        }
        let status = if record.gathered {
            BroadcastStatus::Sending
        } else {
            BroadcastStatus::Expanding
        };
        tracing::info!(%status, "scheduled broadcast starts");
        self.metrics.broadcast("started");
        let change = Advance {
            status: Some(status),
            started_at: Some(now),
            ..Advance::default()
        };
        self.move_on(step, change, Some(Duration::ZERO)).await
    }

    /// One page of the tenant's users with a live personal chat into the audience.
    async fn gather_tenant(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        tenant: &str,
    ) -> Result<(), Interrupted> {
        let cursor = match record.gather_cursor.as_str() {
            "" => "0",
            cursor => cursor,
        };
        let (next, users) = self
            .until_done("read the tenant's users", || {
                self.conversations.tenant_users(tenant, cursor, TENANT_PAGE)
            })
            .await?;
        let recipients: Vec<Recipient> = users.iter().map(|u| Recipient::user(tenant, u)).collect();
        self.until_done("gather the audience", || {
            self.broadcasts.gather(&step.broadcast_id, &recipients)
        })
        .await?;
        // The scan's cursor comes back to 0 at the end.
        let next = Some(next).filter(|cursor| cursor != "0");
        self.gathered_page(step, record, next).await
    }

    /// One page of the team's roster into the audience, each member's roster id noted so
    /// that their 1:1 chat can be created through the team install.
    async fn gather_roster(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        tenant: &str,
        team: &str,
    ) -> Result<(), Interrupted> {
        let address = self
            .until_done("look up the team", || self.conversations.address(team))
            .await?;
        let service_url = match address {
            Some(address) if address.removed_reason.is_none() => address.service_url,
            Some(address) => {
                let reason = address.removed_reason.unwrap_or_default();
                return self
                    .stop_gathering(step, format!("the app was removed from the team: {reason}"))
                    .await;
            }
            None => {
                return self
                    .stop_gathering(step, "Herald no longer knows the team".into())
                    .await;
            }
        };
        let continuation = Some(record.gather_cursor.as_str()).filter(|t| !t.is_empty());
        let page =
            self.connector
                .roster_page(&service_url, team, continuation, self.fan_out.roster_page);
        let page = match self.timed("roster", page).await {
            Ok(page) => page,
            Err(error) if is_transient(&error) => {
                let wait = match &error {
                    ConnectorError::Teams {
                        retry_after: Some(wait),
                        ..
                    } => *wait,
                    _ => Duration::from_secs(5),
                };
                tracing::warn!(error = %error.reason(), ?wait, "reading the team's roster failed for now; trying again");
                return self.queue_step(step, wait).await;
            }
            Err(error) => {
                return self
                    .stop_gathering(
                        step,
                        format!("the team's roster could not be read: {}", error.reason()),
                    )
                    .await;
            }
        };
        // Anonymous members have no object id, and no personal chat to send to.
        let members: Vec<(String, String)> = page
            .members
            .into_iter()
            .filter_map(|m| Some((m.aad_object_id?.to_ascii_lowercase(), m.id)))
            .filter(|(aad, id)| {
                Recipient::check_part(aad).is_ok() && Recipient::check_part(id).is_ok()
            })
            .collect();
        let recipients: Vec<Recipient> = members
            .iter()
            .map(|(aad, _)| Recipient::user(tenant, aad))
            .collect();
        let remember = self.until_done("note the members' roster ids", || {
            self.conversations.remember_members(tenant, &members)
        });
        let gather = self.until_done("gather the audience", || {
            self.broadcasts.gather(&step.broadcast_id, &recipients)
        });
        let (remembered, gathered) = tokio::join!(remember, gather);
        remembered?;
        gathered?;
        let next = page.continuation_token.filter(|t| !t.is_empty());
        self.gathered_page(step, record, next).await
    }

    /// One page of a group's members or of the tenant's directory, read from Microsoft Graph,
    /// into the audience: the page's link to the next is the gathering's cursor, so a restart
    /// goes on from the page it was at, and memory holds one page whatever the audience.
    /// Disabled accounts are left out (they cannot be messaged).
    async fn gather_from_graph(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        tenant: &str,
        members: Members<'_>,
    ) -> Result<(), Interrupted> {
        let next = Some(record.gather_cursor.as_str()).filter(|t| !t.is_empty());
        let page = self
            .until_done("read the audience from Microsoft Graph", || {
                self.resolver.reach.members_page(tenant, members, next)
            })
            .await?;
        let page = match page {
            Ok(page) => page,
            Err(ReachError::Graph(error)) => {
                let wait = error.retry_after().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %error.reason(), ?wait, "reading the audience from Microsoft Graph failed for now; trying again");
                return self.queue_step(step, wait).await;
            }
            Err(ReachError::Final(reason)) => {
                let reason =
                    format!("the audience could not be read from Microsoft Graph: {reason}");
                return self.stop_gathering(step, reason).await;
            }
        };
        let recipients: Vec<Recipient> = page
            .users
            .iter()
            .filter(|user| user.account_enabled != Some(false))
            .filter(|user| Recipient::check_part(&user.id).is_ok())
            .map(|user| Recipient::user(tenant, &user.id))
            .collect();
        self.until_done("gather the audience", || {
            self.broadcasts.gather(&step.broadcast_id, &recipients)
        })
        .await?;
        let next = page.next.filter(|link| !link.is_empty());
        self.gathered_page(step, record, next).await
    }

    /// A page of the audience is gathered: the broadcast moves on to the page at `next`, or,
    /// with none, starts sending.
    async fn gathered_page(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        next: Option<String>,
    ) -> Result<(), Interrupted> {
        let done = next.is_none();
        let change = Advance {
            gather_cursor: Some(next.unwrap_or_default()),
            gathered: done,
            status: done.then_some(BroadcastStatus::Sending),
            started_at: record.started_at.is_none().then(OffsetDateTime::now_utc),
            ..Advance::default()
        };
        self.move_on(step, change, Some(Duration::ZERO)).await
    }

    /// Gathering cannot go on (the team is gone, Teams refuses its roster): the broadcast
    /// sends to whom it gathered, and says why it stopped.
    async fn stop_gathering(&self, step: &Step, reason: String) -> Result<(), Interrupted> {
        tracing::warn!(%reason, "the broadcast's audience could not be gathered in full");
        let change = Advance {
            gathered: true,
            status: Some(BroadcastStatus::Sending),
            last_error: Some(reason),
            ..Advance::default()
        };
        self.move_on(step, change, Some(Duration::ZERO)).await
    }

    /// Hands the next page of recipients to the dispatch queue, as many as the broadcast may
    /// have in flight; at the end of the audience the fan-out is over.
    async fn hand_out(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        now: OffsetDateTime,
    ) -> Result<(), Interrupted> {
        let started_at = record.started_at.is_none().then_some(now);
        if record.broadcast.expires_at.is_some_and(|at| at <= now) {
            return self
                .count_never_sent(step, record, BroadcastStatus::Expired)
                .await;
        }
        let in_flight = record.in_flight();
        if in_flight >= self.fan_out.ahead {
            let change = Advance {
                started_at,
                ..Advance::default()
            };
            return self.move_on(step, change, Some(self.fan_out.recheck)).await;
        }
        let room = (self.fan_out.ahead - in_flight).min(self.fan_out.page as u64) as usize;
        let members = self
            .until_done("read the audience", || {
                self.broadcasts
                    .page(&step.broadcast_id, &record.cursor, room)
            })
            .await?;
        let handed = members.iter().map(|member| self.hand(record, member));
        for result in futures_util::future::join_all(handed).await {
            result?;
        }
        let at_end = members.len() < room;
        let change = Advance {
            cursor: members.last().cloned(),
            fanned: members.len() as u64,
            fanned_out: at_end,
            started_at,
            ..Advance::default()
        };
        self.move_on(step, change, (!at_end).then_some(Duration::ZERO))
            .await
    }

    /// The fan-out ends short: the recipients never handed out count as `status`
    /// (`cancelled` after a cancel, `expired` past `expiresAt`), in one step, under the step
    /// guard.
    async fn count_never_sent(
        &self,
        step: &Step,
        record: &BroadcastRecord,
        status: BroadcastStatus,
    ) -> Result<(), Interrupted> {
        let never_sent = record.counts.total.saturating_sub(record.fanned);
        tracing::info!(never_sent, %status, "the fan-out ends before every recipient was sent to");
        let mut change = Advance {
            fanned_out: true,
            started_at: record.started_at.is_none().then(OffsetDateTime::now_utc),
            ..Advance::default()
        };
        if status == BroadcastStatus::Expired {
            change.expired = never_sent;
        } else {
            change.cancelled = never_sent;
        }
        self.move_on(step, change, None).await
    }

    /// Queues one recipient's job, marked as the broadcast's. A member that does not read (it
    /// cannot happen unless the set was written by hand) ends `failed` at once, so that the
    /// broadcast still completes.
    pub(super) async fn hand(
        &self,
        record: &BroadcastRecord,
        member: &str,
    ) -> Result<(), Interrupted> {
        let broadcast = &record.broadcast;
        let job = Recipient::from_member(member)
            .ok_or_else(|| "the audience member does not read".to_owned())
            .and_then(|r| broadcast.job_for(&r).map_err(|e| e.to_string()));
        let job = match job {
            Ok(job) => job,
            Err(reason) => {
                tracing::error!(member, %reason, "a broadcast recipient cannot be sent to");
                let now = OffsetDateTime::now_utc();
                let ended = self
                    .until_done("count the recipient failed", || {
                        self.broadcasts
                            .record_end(&broadcast.id, member, JobStatus::Failed, now)
                    })
                    .await?;
                return self.tell_if_settled(&broadcast.id, &ended.told).await;
            }
        };
        let mut amqp_headers = FieldTable::default();
        headers::set_trace_context(&mut amqp_headers);
        headers::set_text(&mut amqp_headers, headers::BROADCAST, &broadcast.id);
        headers::set_integer(
            &mut amqp_headers,
            headers::BROADCAST_VERSION,
            i64::try_from(record.version).unwrap_or(i64::MAX),
        );
        let body = serde_json::to_vec(&job).expect("a job always serializes");
        let message = DispatchMessage::job(&job.id, body, amqp_headers);
        self.until_done("queue a recipient's job", || {
            self.queue.send(&message, Duration::ZERO)
        })
        .await
    }

    /// Queues the next step (after `next_in`; `None`: the fan-out is over) and then moves the
    /// broadcast on from this one. In that order, so that no crash can leave a broadcast with
    /// its position moved and no step to go on from it.
    async fn move_on(
        &self,
        step: &Step,
        change: Advance,
        next_in: Option<Duration>,
    ) -> Result<(), Interrupted> {
        if let Some(wait) = next_in {
            let next = Step {
                broadcast_id: step.broadcast_id.clone(),
                step: step.step + 1,
                due_ms: None,
            };
            self.queue_step(&next, wait).await?;
        }
        let now = OffsetDateTime::now_utc();
        let told = self
            .until_done("move the broadcast on", || {
                self.broadcasts
                    .advance(&step.broadcast_id, step.step, &change, now)
            })
            .await?;
        if !told.applied {
            tracing::debug!("another copy of this step moved the broadcast on first");
        } else if change.started_at.is_some() {
            self.metrics.broadcast("started");
        }
        self.tell_if_settled(&step.broadcast_id, &told).await
    }

    /// After a change to a broadcast (`told` says what it did): a broadcast the change settled
    /// is counted and told as `herald.broadcast.completed`, confirmed, before the delivery
    /// that made the change is acked. A repeated change (a redelivered copy, whose first
    /// handling may have died between settling the broadcast and telling it) tells it again
    /// if the broadcast has settled, with the same event id, so no crash loses it; consumers
    /// de-duplicate.
    pub(super) async fn tell_if_settled(
        &self,
        broadcast_id: &str,
        told: &Told,
    ) -> Result<(), Interrupted> {
        match told.settled {
            Some(status) => {
                tracing::info!(%status, "broadcast settled");
                self.metrics.broadcast(status.as_str());
            }
            // Moved on, still pending: nothing to tell.
            None if told.applied => return Ok(()),
            None => {}
        }
        let record = self
            .until_done("read the settled broadcast", || {
                self.broadcasts.get(broadcast_id)
            })
            .await?;
        let event = record.and_then(|r| BroadcastCompleted::event(self.events.source(), &r));
        let Some(event) = event else {
            return Ok(());
        };
        self.until_done("publish the event", || self.events.publish_unnoted(&event))
            .await
    }

    async fn queue_step(&self, step: &Step, wait: Duration) -> Result<(), Interrupted> {
        let due = OffsetDateTime::now_utc() + wait;
        let step = Step {
            due_ms: Some(unix_ms(due)),
            ..step.clone()
        };
        let mut message = step_message(&step);
        // A wait too short to park goes straight back to the queue; its handler waits out
        // the rest, as for any delivery.
        if !wait.is_zero() {
            Bookkeeping {
                not_before: Some(due),
                ..Bookkeeping::default()
            }
            .write(&mut message.headers);
        }
        self.until_done("queue the broadcast's step", || {
            self.queue.send(&message, wait)
        })
        .await
    }
}

/// Whether a failed call to Teams may succeed later: throttled, busy, unreachable.
fn is_transient(error: &ConnectorError) -> bool {
    match error {
        ConnectorError::Transport(_) | ConnectorError::Token(_) => true,
        ConnectorError::Teams { status, .. } => *status == 429 || *status == 408 || *status >= 500,
        ConnectorError::ServiceUrlNotAllowed(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_fifth_of_a_second_of_the_tenant_rate_within_bounds() {
        // Teams' own 50 a second, and anything up to 1,250: the least page.
        assert_eq!(FanOut::for_rate(1_000, Some(50.0)).page, 250);
        assert_eq!(FanOut::for_rate(1_000, Some(1_250.0)).page, 250);
        // A raised rate gets pages that keep up with it.
        assert_eq!(FanOut::for_rate(10_000, Some(5_000.0)).page, 1_000);
        // Never more than the most, and the most when tenants are not paced.
        assert_eq!(FanOut::for_rate(1_000, Some(100_000.0)).page, MAX_PAGE);
        assert_eq!(FanOut::for_rate(1_000, None).page, MAX_PAGE);
        assert_eq!(FanOut::for_rate(7, None).ahead, 7);
        // A full bound is looked at again when a page's room has come free, within bounds.
        assert_eq!(FanOut::for_rate(1_000, Some(50.0)).recheck, MAX_RECHECK);
        assert_eq!(
            FanOut::for_rate(1_000, Some(1_000.0)).recheck,
            Duration::from_millis(250)
        );
        assert_eq!(
            FanOut::for_rate(1_000, Some(5_000.0)).recheck,
            Duration::from_millis(200)
        );
        assert_eq!(FanOut::for_rate(1_000, Some(50_000.0)).recheck, MIN_RECHECK);
        assert_eq!(FanOut::for_rate(1_000, None).recheck, MIN_RECHECK);
    }
}
