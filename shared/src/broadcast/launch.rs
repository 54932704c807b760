//! Creating and releasing a broadcast: checked against what Herald knows (the team, the
//! channels' teams, the tenant), stored, and its first fan-out step queued (now, or parked
//! until `deliverAt`). The ingress does this for `POST /v1/broadcasts`, the dispatcher for a
//! `broadcast.v1` published to RabbitMQ; both are idempotent like a job's submission: the
//! same id with the same request answers the broadcast as it stands and queues its first step
//! at most once more if an earlier attempt stopped before it was queued.

use std::{collections::HashMap, time::Duration};

use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::{
    Audience, Broadcast, BroadcastStatus, STEP_TYPE_V1, Step, WALK_TYPE_V1, Walk, WalkAction,
};
use crate::{
    amqp::{DispatchMessage, headers},
    store::{BroadcastRecord, BroadcastStore, ConversationStore, StoreError},
    timers::{DispatchQueue, QueueError},
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the broadcast could not be stored")]
    Store(#[from] StoreError),
    #[error("the broadcast could not be queued")]
    Queue(#[from] QueueError),
    /// The id names a broadcast that asked for something else.
    #[error("broadcast {} exists with different content", .0.broadcast.id)]
    Conflict(Box<BroadcastRecord>),
    /// Herald cannot reach the audience as named (an unknown team, a channel of another
    /// tenant): `field` is the request's field.
    #[error("{field}: {reason}")]
    Refused { field: String, reason: String },
}

/// The broadcast as it stands after a request.
#[derive(Debug, Clone)]
pub struct Launched {
    pub record: BroadcastRecord,
    /// False when the request repeated an earlier one.
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct Broadcaster {
    pub store: BroadcastStore,
    pub conversations: ConversationStore,
    pub queue: DispatchQueue,
}

impl Broadcaster {
    pub async fn create(
        &self,
        broadcast: Broadcast,
        now: OffsetDateTime,
    ) -> Result<Launched, LaunchError> {
        self.check_reach(&broadcast.audience).await?;
        let status = first_status(&broadcast, now);
        let (record, created) = match self.store.create(&broadcast, status, now).await? {
            Ok(()) => (self.stored(&broadcast.id).await?, true),
            Err(existing) if existing.content_hash != broadcast.content_hash() => {
                return Err(LaunchError::Conflict(Box::new(existing)));
            }
            Err(existing) => (existing, false),
        };
        let record = self.queue_first_step(record, now).await?;
        if created {
            tracing::info!(broadcast = %broadcast.id, audience = broadcast.audience.kind(), %status, "broadcast created");
        }
        Ok(Launched { record, created })
    }

    /// Releases a draft list: it starts now, or is scheduled for its `deliverAt`. Releasing
    /// again answers the broadcast as it stands. `None`: no such broadcast.
    pub async fn release(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<BroadcastRecord>, LaunchError> {
        let Some(record) = self.store.get(id).await? else {
            return Ok(None);
        };
        if record.status == BroadcastStatus::Draft {
            let status = if is_due_later(&record.broadcast, now) {
                BroadcastStatus::Scheduled
            } else {
                BroadcastStatus::Sending
            };
            self.store.release(id, status).await?;
            tracing::info!(broadcast = %id, %status, total = record.counts.total, "broadcast released");
        }
        let record = self.stored(id).await?;
        self.queue_first_step(record, now).await.map(Some)
    }

    async fn stored(&self, id: &str) -> Result<BroadcastRecord, LaunchError> {
        self.store.get(id).await?.ok_or_else(|| {
            LaunchError::Store(StoreError::Malformed {
                key: format!("broadcast {id}"),
                reason: "vanished right after it was written".into(),
            })
        })
    }

    /// Queues step 0 unless a draft waits for its release or it is queued already.
    async fn queue_first_step(
        &self,
        mut record: BroadcastRecord,
        now: OffsetDateTime,
    ) -> Result<BroadcastRecord, LaunchError> {
        if record.published || record.status == BroadcastStatus::Draft || record.status.is_final() {
            return Ok(record);
        }
        let delay = record
            .broadcast
            .deliver_at
            .map(|at| Duration::try_from(at - now).unwrap_or_default())
            .unwrap_or_default();
        let step = Step {
            broadcast_id: record.broadcast.id.to_string(),
            step: 0,
            due_ms: Some(unix_ms(now + delay)),
        };
        self.queue.send(&step_message(&step), delay).await?;
        self.store.mark_published(&record.broadcast.id).await?;
        record.published = true;
        Ok(record)
    }

    /// Herald must know the team (a team audience, each channel's team) and the tenant, and a
    /// team must be in the tenant named with it.
    async fn check_reach(&self, audience: &Audience) -> Result<(), LaunchError> {
        match audience {
            Audience::Team(team) => {
                self.check_team(&team.tenant_id, &team.team_id, "audience.team")
                    .await
            }
            Audience::Channels(channels) => {
                // One check per team, however many of its channels are named.
                let mut teams: HashMap<(&str, &str), usize> = HashMap::new();
                for (i, c) in channels.iter().enumerate() {
                    teams.entry((&c.tenant_id, &c.team_id)).or_insert(i);
                }
                let checks = teams.into_iter().map(|((tenant, team), i)| async move {
                    self.check_team(tenant, team, &format!("audience.channels[{i}]"))
                        .await
                });
                futures_util::future::try_join_all(checks).await?;
                Ok(())
            }
            Audience::Tenant(tenant) if !tenant.from_directory() => {
                if self
                    .conversations
                    .tenant_service_url(&tenant.tenant_id)
                    .await?
                    .is_none()
                {
                    return Err(LaunchError::Refused {
                        field: "audience.tenant.tenantId".into(),
                        reason: format!(
                            "Herald has heard from no one in tenant {}",
                            tenant.tenant_id
                        ),
                    });
                }
                Ok(())
            }
            // A directory or a group is Graph's to tell, at fan-out: an unknown group stops
            // the gathering with Graph's reason. Users and lists are checked as they are sent.
            Audience::Tenant(_) | Audience::Group(_) | Audience::Users(_) | Audience::List(_) => {
                Ok(())
            }
        }
    }

    async fn check_team(&self, tenant: &str, team: &str, field: &str) -> Result<(), LaunchError> {
        let refused = |name: &str, reason: String| LaunchError::Refused {
            field: format!("{field}.{name}"),
            reason,
        };
        // A team's id is its General channel's conversation id, which its install recorded.
        match self.conversations.address(team).await? {
            None => Err(refused(
                "teamId",
                format!("Herald has no install in team {team} (add the app to the team)"),
            )),
            Some(address) => {
                if let Some(reason) = address.removed_reason {
                    return Err(refused(
                        "teamId",
                        format!("the app was removed from team {team}: {reason}"),
                    ));
                }
                match address.tenant_id {
                    Some(actual) if actual != tenant => Err(refused(
                        "tenantId",
                        format!("team {team} is in another tenant than {tenant}"),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl Broadcaster {
    /// Starts a change to every recipient of broadcast `id` (its first page is queued; the
    /// dispatcher does the rest).
    pub async fn walk(&self, id: &str, action: WalkAction) -> Result<(), QueueError> {
        let walk = Walk {
            broadcast_id: id.to_owned(),
            action,
            after: String::new(),
        };
        self.queue.send(&walk_message(&walk), Duration::ZERO).await
    }
}

/// A page of a broadcast-wide change as it travels on the dispatch queue.
pub fn walk_message(walk: &Walk) -> DispatchMessage {
    let mut amqp_headers = FieldTable::default();
    headers::set_trace_context(&mut amqp_headers);
    DispatchMessage {
        id: format!(
            "broadcast-walk:{}:{}:{}",
            walk.broadcast_id,
            walk.action.as_str(),
            uuid::Uuid::new_v4().simple()
        ),
        amqp_type: WALK_TYPE_V1.to_owned(),
        headers: amqp_headers,
        body: serde_json::to_vec(walk).expect("a walk serializes"),
    }
}

/// A fan-out step as it travels on the dispatch queue.
pub fn step_message(step: &Step) -> DispatchMessage {
    let mut amqp_headers = FieldTable::default();
    headers::set_trace_context(&mut amqp_headers);
    DispatchMessage {
        id: step.message_id(),
        amqp_type: STEP_TYPE_V1.to_owned(),
        headers: amqp_headers,
        body: serde_json::to_vec(step).expect("a step serializes"),
    }
}

/// Unix milliseconds of an instant.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn is_due_later(broadcast: &Broadcast, now: OffsetDateTime) -> bool {
    broadcast.deliver_at.is_some_and(|at| at > now)
}

/// Where a new broadcast starts: a list waits for its uploads; one due later is scheduled;
/// one whose audience Herald gathers starts there; the rest start sending.
fn first_status(broadcast: &Broadcast, now: OffsetDateTime) -> BroadcastStatus {
    if matches!(broadcast.audience, Audience::List(_)) {
        BroadcastStatus::Draft
    } else if is_due_later(broadcast, now) {
        BroadcastStatus::Scheduled
    } else if broadcast.is_gathered() {
        BroadcastStatus::Expanding
    } else {
        BroadcastStatus::Sending
    }
}
