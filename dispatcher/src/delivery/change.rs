//! Editing and deleting delivered messages. Both are naturally idempotent (the same PUT twice;
//! a DELETE of what is gone already), so a redelivered change is simply done again; they
//! count against Teams' limits like sends, and fail like sends ([`super::failure`]).

use herald_shared::{events::NotificationChanged, job::Target, store::JobStatus};
use time::OffsetDateTime;

use super::{
    Alteration, Handler, Incoming, Interrupted, Paced,
    failure::{self, Call, Failed, Verdict},
    requeue::Again,
};
use crate::connector::ConnectorError;

impl Handler {
    pub(super) async fn change(
        &self,
        alteration: &Alteration,
        incoming: &Incoming<'_>,
    ) -> Result<(), Interrupted> {
        let id = incoming.id;
        let kind = alteration.kind();
        if let Some(at) = incoming.bookkeeping.not_before {
            let wait =
                std::time::Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
            self.sleep(wait).await?;
        }
        let Some(record) = self
            .until_done("look up the job", || self.statuses.get(id))
            .await?
        else {
            tracing::warn!("a change for a job with no status record; dropping it");
            return Ok(());
        };
        let (Some(service_url), Some(conversation_id), Some(activity_id)) = (
            &record.service_url,
            &record.conversation_id,
            &record.activity_id,
        ) else {
            let reason = format!(
                "cannot {} the message: Teams returned no activity id for it",
                kind.as_str()
            );
            return self.note_change(id, Some(&reason)).await;
        };
        // Edits and deletions count against Teams' limits like sends, in the conversation
        // the message went to; a broadcast's are bulk work, like its sends.
        let tenant = record.to.tenant_id();
        // A chat's edits in the conversation the message went to (a user's chat, whatever
        // form the target took); a channel post's in its channel, as its send was.
        let thread = match &record.to {
            Target::Channel(_) => record.to.thread(),
            _ => conversation_id.clone(),
        };
        let class = incoming.class();
        let paced = match self
            .pace(tenant, &thread, incoming.bookkeeping.pace_turn, class, 1)
            .await?
        {
            Paced::Go(paced) => paced,
            Paced::Later { wait, turn } => {
                return self.requeue(incoming, wait, Again::ForTurn(turn)).await;
            }
        };
        let (call, result) = match alteration {
            Alteration::Update(message) => {
                let activity = message.to_activity();
                let update = self.connector.update_activity(
                    service_url,
                    conversation_id,
                    activity_id,
                    &activity,
                );
                (Call::Update, self.timed("update", update).await)
            }
            Alteration::Delete => {
                let delete =
                    self.connector
                        .delete_activity(service_url, conversation_id, activity_id);
                (Call::Delete, self.timed("delete", delete).await)
            }
        };
        let answered = result
            .as_ref()
            .map_or_else(ConnectorError::was_answered, |()| true);
        self.note_sent(&paced, answered).await;
        let error = match result {
            Ok(()) if call == Call::Delete => return self.retracted(id).await,
            Ok(()) => {
                tracing::info!("edited the delivered message");
                return self.note_change(id, None).await;
            }
            Err(error) => error,
        };
        let attempts = incoming.bookkeeping.attempts + 1;
        let failed = Failed {
            call,
            error: &error,
            attempts,
            service_url: Some(service_url),
            tenant_known: tenant.is_some(),
        };
        let decision = failure::decide(&failed, &self.policy, failure::jitter());
        self.follow_up(&decision, tenant, Some(conversation_id))
            .await?;
        let reason = &decision.reason;
        match decision.verdict {
            // Deleted already (a redelivered change, or someone else): the goal is reached.
            Verdict::Done => self.retracted(id).await,
            Verdict::Retry { wait } => {
                tracing::info!(%reason, ?wait, "transient failure; retrying the change later");
                self.requeue(incoming, wait, Again::Retry { attempts })
                    .await?;
                self.note_change(id, Some(reason)).await
            }
            Verdict::Fail | Verdict::GiveUp => {
                tracing::warn!(%reason, "the change failed");
                self.note_change(id, Some(reason)).await
            }
        }
    }

    /// The delivered message is deleted: the job ends `cancelled`, and that is told (before
    /// the change is acked: a redelivered change deletes again, finds the record cancelled
    /// and tells it again).
    async fn retracted(&self, id: &str) -> Result<(), Interrupted> {
        let now = OffsetDateTime::now_utc();
        self.until_done("record the deletion", || {
            self.statuses.mark_retracted(id, now)
        })
        .await?;
        let record = self
            .until_done("read the status record", || self.statuses.get(id))
            .await?;
        if let Some(event) = record
            .filter(|r| r.status == JobStatus::Cancelled)
            .map(|r| NotificationChanged::cancelled(self.events.source(), &r, now))
        {
            self.until_done("publish the event", || self.events.publish_unnoted(&event))
                .await?;
        }
        tracing::info!("deleted the delivered message");
        Ok(())
    }

    /// Records a change's outcome on the job: `error` as its `lastError`, or none.
    async fn note_change(&self, id: &str, error: Option<&str>) -> Result<(), Interrupted> {
        let now = OffsetDateTime::now_utc();
        self.until_done("record the change", || {
            self.statuses.note_change(id, error, now)
        })
        .await
    }
}
