//! Changes to every recipient of a broadcast: a retraction (every delivered message deleted),
//! an edit (every delivered message changed to the broadcast's message), a retry (every
//! recipient whose every attempt failed for a reason that could pass is sent to again).
//!
//! A walk goes over the audience a page per delivery: each page reads its recipients'
//! notifications, queues what they need (an edit or deletion through the dispatch queue like
//! any other, paced as bulk work; a job sent again), and queues the next page, due when a
//! tenant's rate would have sent this one (`HERALD_TENANT_RATE`), so that what waits is about
//! a page, whatever the audience. A page done
//! twice (a redelivery after a crash) queues the same edits and deletions again, which Teams
//! takes twice without harm, and a retry twice is one send (the notification's send lease).
//!
//! What a walk cannot see, because it is in flight while the walk passes, is caught as it
//! ends (`job.rs`, `catch_up`): a message that reaches Teams after its broadcast was retracted
//! is deleted, and one sent with an older message is edited.

use std::time::Duration;

use herald_shared::{
    amqp::headers,
    broadcast::{Recipient, Walk, WalkAction, walk_message},
    job::{Change, ChangeKind},
    store::{BroadcastRecord, JobStatus, StatusRecord},
};
use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::{BroadcastTag, Handler, Interrupted};

/// Recipients per page of a walk.
const WALK_PAGE: usize = 250;

impl Handler {
    pub(super) async fn walk_step(&self, walk: &Walk) -> Result<(), Interrupted> {
        let id = walk.broadcast_id.as_str();
        let Some(broadcast) = self
            .until_done("read the broadcast", || self.broadcasts.get(id))
            .await?
        else {
            tracing::warn!("a walk of a broadcast that does not exist (expired?); dropping it");
            return Ok(());
        };
        let members = self
            .until_done("read the audience", || {
                self.broadcasts.page(id, &walk.after, WALK_PAGE)
            })
            .await?;
        let recipients: Vec<Recipient> = members
            .iter()
            .filter_map(|m| Recipient::from_member(m))
            .collect();
        let ids: Vec<String> = recipients
            .iter()
            .map(|r| r.notification_id(id).to_string())
            .collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let records = self
            .until_done("read the recipients' notifications", || {
                self.statuses.get_many(&id_refs)
            })
            .await?;
        let each = recipients
            .iter()
            .zip(records)
            .filter_map(|(recipient, record)| Some((recipient, record?)))
            .map(|(recipient, record)| self.walk_one(walk.action, &broadcast, recipient, record));
        for done in futures_util::future::join_all(each).await {
            done?;
        }
        if members.len() == WALK_PAGE {
            let next = Walk {
                after: members.last().cloned().unwrap_or_default(),
                ..walk.clone()
            };
            let message = walk_message(&next);
            // A page no sooner than a tenant's rate sends it: what a walk queues waits in
            // RabbitMQ and Redis, so it is kept to about a page, not the audience.
            let pause = self.pacer.tenant_rate().map_or(Duration::ZERO, |rate| {
                Duration::from_secs_f64(WALK_PAGE as f64 / rate)
            });
            self.until_done("queue the walk's next page", || {
                self.queue.send(&message, pause)
            })
            .await?;
        } else {
            tracing::info!(
                action = walk.action.as_str(),
                "a broadcast-wide change reached every recipient"
            );
        }
        Ok(())
    }

    async fn walk_one(
        &self,
        action: WalkAction,
        broadcast: &BroadcastRecord,
        recipient: &Recipient,
        record: StatusRecord,
    ) -> Result<(), Interrupted> {
        let tag = BroadcastTag {
            id: broadcast.broadcast.id.to_string(),
            version: broadcast.version,
        };
        match (action, record.status) {
            (WalkAction::Retract, JobStatus::Delivered) => {
                let change = Change {
                    id: record.id,
                    message: None,
                };
                self.queue_broadcast_change(&change, ChangeKind::Delete, &tag)
                    .await
            }
            (WalkAction::Edit, JobStatus::Delivered) => {
                let change = Change {
                    id: record.id,
                    message: Some(broadcast.broadcast.message.clone()),
                };
                self.queue_broadcast_change(&change, ChangeKind::Update, &tag)
                    .await
            }
            (WalkAction::Retry, JobStatus::Failed) if record.failed_transiently => {
                self.send_again(broadcast, recipient, &record).await
            }
            // Reopened by an earlier pass of this page that stopped before its job was
            // queued (once the fan-out is over, nothing else leaves a recipient queued):
            // queued again, which is one send however often it is done.
            (WalkAction::Retry, JobStatus::Queued) if broadcast.fanned_out => {
                let id = broadcast.broadcast.id.as_str();
                self.until_done("reopen the recipient in the broadcast", || {
                    self.broadcasts.reopen(id, &record.id)
                })
                .await?;
                self.hand(broadcast, &recipient.member()).await
            }
            _ => Ok(()),
        }
    }

    /// A recipient that failed for a reason that could pass is pending again and its job
    /// queued anew (with a fresh retry budget). In this order: the notification reopened (so
    /// the job is not dropped as ended), its end uncounted (before the job can end and be
    /// counted again), then the job.
    async fn send_again(
        &self,
        broadcast: &BroadcastRecord,
        recipient: &Recipient,
        record: &StatusRecord,
    ) -> Result<(), Interrupted> {
        let id = broadcast.broadcast.id.as_str();
        let now = OffsetDateTime::now_utc();
        self.until_done("reopen the notification", || {
            self.statuses.reopen(&record.id, now)
        })
        .await?;
        self.until_done("reopen the recipient in the broadcast", || {
            self.broadcasts.reopen(id, &record.id)
        })
        .await?;
        self.hand(broadcast, &recipient.member()).await
    }

    /// Queues an edit or deletion of a broadcast's message, marked as the broadcast's (bulk
    /// pacing).
    pub(super) async fn queue_broadcast_change(
        &self,
        change: &Change,
        kind: ChangeKind,
        tag: &BroadcastTag,
    ) -> Result<(), Interrupted> {
        let mut amqp_headers = FieldTable::default();
        headers::set_trace_context(&mut amqp_headers);
        headers::set_text(&mut amqp_headers, headers::BROADCAST, &tag.id);
        headers::set_integer(
            &mut amqp_headers,
            headers::BROADCAST_VERSION,
            i64::try_from(tag.version).unwrap_or(i64::MAX),
        );
        self.until_done("queue a change of a broadcast's message", || {
            self.queue
                .publisher()
                .publish_change(change, kind, amqp_headers.clone())
        })
        .await
    }
}
