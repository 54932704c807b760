//! What users do in Teams, told to other services as events: card button presses (answered
//! while Teams waits), read receipts, messages, installs and uninstalls.
//!
//! Each is recorded before it is told: an event goes to the outbox (Redis) and is published
//! after ([`herald_shared::events::outbox`]). A press must be answered within Teams' patience
//! (and the contract's 1 s), so its lookup and its event together get [`INVOKE_BUDGET`]; when
//! Redis is slow or down, the event goes straight to RabbitMQ; when neither takes it in time
//! the user sees an error on the card and can press again, rather than an answer for a press
//! that no one will hear of.

use std::time::Duration;

use herald_shared::{
    error::Chain,
    events::{
        CloudEvent, EventType, EventUser, Events, InstallationChanged, MessageReceived,
        NotificationAction, NotificationRead, Proof,
    },
    job::{Answer, OnAction},
    store::{BroadcastStore, SentMessage, SentStore, Stamp, StatusStore, StoreError},
};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::activity::Activity;

/// The invoke's name for an `Action.Execute` press.
pub const CARD_ACTION: &str = "adaptiveCard/action";

/// The event's name for a read receipt.
pub const READ_RECEIPT: &str = "application/vnd.microsoft.readReceipt";

/// Everything a press may take before it is answered: well inside Teams' wait and the 1 s
/// the contract promises.
pub const INVOKE_BUDGET: Duration = Duration::from_millis(800);

/// How long the lookup of the pressed message may take; the rest of the budget is the event's.
const LOOKUP_BUDGET: Duration = Duration::from_millis(300);

/// What the ingress needs to tell what users do.
#[derive(Debug)]
pub struct Listener {
    pub events: Events,
    pub sent: SentStore,
    pub statuses: StatusStore,
    /// Counts broadcasts' messages read.
    pub broadcasts: BroadcastStore,
}

/// Why something a user did could not be recorded (Teams delivers the activity again on a
/// 503).
#[derive(Debug, thiserror::Error)]
#[error("the event could not be recorded")]
pub struct NotRecorded(#[source] pub StoreError);

impl Listener {
    fn user(activity: &Activity) -> EventUser {
        EventUser {
            aad_object_id: activity.from.as_ref().and_then(|f| f.aad_object_id.clone()),
            name: activity.from.as_ref().and_then(|f| f.name.clone()),
        }
    }

    /// Answers an `adaptiveCard/action` invoke, and tells it: `herald.notification.action`
    /// when the card was on a message Herald sent, `herald.message.received` otherwise.
    pub async fn card_action(&self, activity: &Activity) -> Value {
        match tokio::time::timeout(INVOKE_BUDGET, self.answer_press(activity)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "a card action could not be recorded; the user sees an error");
                error_answer()
            }
            Err(_) => {
                tracing::warn!(budget = ?INVOKE_BUDGET, "a card action took too long to record; the user sees an error");
                error_answer()
            }
        }
    }

    async fn answer_press(&self, activity: &Activity) -> Result<Value, String> {
        let action = activity.value.as_ref().and_then(|v| v.get("action"));
        let verb = action
            .and_then(|a| a.get("verb"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let data = action
            .and_then(|a| a.get("data"))
            .cloned()
            .unwrap_or(Value::Null);
        let sent = self
            .pressed(activity)
            .await
            .map_err(|e| format!("cannot look up the pressed message: {e}"))?;
        let answer = OnAction::answer(
            sent.as_ref().and_then(|s| s.on_action.as_ref()),
            verb.as_deref(),
        );
        let event = self.action_event(activity, sent.as_ref(), verb, data);
        self.record_now(event).await?;
        Ok(invoke_answer(answer))
    }

    /// The message Herald sent that the activity's `replyToId` names, if any; a slow Redis
    /// is an error here, not a "no".
    async fn pressed(&self, activity: &Activity) -> Result<Option<SentMessage>, String> {
        let Some(reply_to) = activity.reply_to_id.as_deref() else {
            return Ok(None);
        };
        let find = self.sent.find(&activity.conversation.id, reply_to);
        match tokio::time::timeout(LOOKUP_BUDGET, find).await {
            Ok(found) => found.map_err(|e| Chain(&e).to_string()),
            Err(_) => Err(format!("Redis did not answer within {LOOKUP_BUDGET:?}")),
        }
    }

    /// An event for a press or a submit: an action on the notification it names, or a plain
    /// message when Herald cannot tie it to one.
    fn action_event(
        &self,
        activity: &Activity,
        sent: Option<&SentMessage>,
        verb: Option<String>,
        data: Value,
    ) -> CloudEvent {
        let now = OffsetDateTime::now_utc();
        let activity_id = activity.id.clone().unwrap_or_default();
        let of = format!("{}/{activity_id}", activity.conversation.id);
        match sent {
            Some(sent) => {
                let event = NotificationAction {
                    notification_id: sent.notification_id.clone(),
                    broadcast_id: sent.broadcast_id.clone(),
                    tenant_id: activity.tenant_id().map(str::to_owned),
                    user: Self::user(activity),
                    conversation_id: activity.conversation.id.clone(),
                    activity_id: activity.reply_to_id.clone().unwrap_or_default(),
                    verb,
                    data,
                };
                CloudEvent::new(
                    self.events.source(),
                    EventType::NotificationAction,
                    &of,
                    &sent.notification_id,
                    &event,
                    now,
                )
            }
            None => self.message_event(activity, Some(data)),
        }
    }

    fn message_event(&self, activity: &Activity, value: Option<Value>) -> CloudEvent {
        let activity_id = activity.id.clone().unwrap_or_default();
        let user = Self::user(activity);
        let subject = user
            .aad_object_id
            .clone()
            .unwrap_or_else(|| activity.conversation.id.clone());
        let event = MessageReceived {
            tenant_id: activity.tenant_id().map(str::to_owned),
            user,
            conversation_id: activity.conversation.id.clone(),
            conversation_type: activity
                .conversation
                .conversation_type
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            activity_id: activity_id.clone(),
            text: activity.text.clone().unwrap_or_default(),
            value: value.filter(|v| !v.is_null()),
            reply_to_id: activity.reply_to_id.clone(),
            timestamp: activity.timestamp.clone(),
        };
        CloudEvent::new(
            self.events.source(),
            EventType::MessageReceived,
            &format!("{}/{activity_id}", activity.conversation.id),
            &subject,
            &event,
            OffsetDateTime::now_utc(),
        )
    }

    /// Records an event that is its own change: in the outbox and published, or, when Redis
    /// fails, published and confirmed at once.
    async fn record_now(&self, event: CloudEvent) -> Result<(), String> {
        match self.events.emit(event.clone()).await {
            Ok(()) => Ok(()),
            Err(stored) => {
                tracing::warn!(error = %Chain(&stored), "the outbox is unavailable; publishing the event directly");
                self.events.publish_unnoted(&event).await.map_err(|e| {
                    format!("neither Redis nor RabbitMQ took the event: {}", Chain(&e))
                })
            }
        }
    }

    /// A message from a user: an `Action.Submit` (it carries `value`) on a message Herald
    /// sent is that notification's action; anything else is a message received.
    pub async fn message(&self, activity: &Activity) -> Result<(), NotRecorded> {
        let submitted = activity.value.clone().filter(|v| !v.is_null());
        let event = match (&submitted, activity.reply_to_id.as_deref()) {
            (Some(data), Some(reply_to)) => {
                let sent = self
                    .sent
                    .find(&activity.conversation.id, reply_to)
                    .await
                    .map_err(NotRecorded)?;
                self.action_event(activity, sent.as_ref(), None, data.clone())
            }
            _ => self.message_event(activity, submitted),
        };
        self.events.emit(event).await.map_err(NotRecorded)
    }

    /// An install or uninstall of the app, in any scope.
    pub async fn installation(&self, activity: &Activity, added: bool) -> Result<(), NotRecorded> {
        let scope = match activity
            .conversation
            .conversation_type
            .as_ref()
            .map(|k| k.as_str())
        {
            Some("personal") => "personal",
            Some("groupChat") => "groupChat",
            _ => "team",
        };
        let user = (scope == "personal")
            .then(|| activity.from.as_ref().and_then(|f| f.aad_object_id.clone()))
            .flatten();
        let team_id = activity
            .channel_data
            .as_ref()
            .and_then(|d| d.team.as_ref())
            .map(|t| t.id.clone());
        let data = InstallationChanged {
            tenant_id: activity.tenant_id().map(str::to_owned),
            scope: scope.into(),
            aad_object_id: user.clone(),
            team_id,
            conversation_id: activity.conversation.id.clone(),
        };
        let kind = if added {
            EventType::InstallationAdded
        } else {
            EventType::InstallationRemoved
        };
        let of = format!(
            "{}/{}",
            activity.conversation.id,
            activity.id.as_deref().unwrap_or_default()
        );
        let subject = user.unwrap_or_else(|| activity.conversation.id.clone());
        let event = CloudEvent::new(
            self.events.source(),
            kind,
            &of,
            &subject,
            &data,
            OffsetDateTime::now_utc(),
        );
        self.events.emit(event).await.map_err(NotRecorded)
    }

    /// A read receipt: every delivered, unread notification of the chat up to
    /// `lastReadMessageId` is marked read and told once.
    pub async fn read_receipt(&self, activity: &Activity) -> Result<usize, NotRecorded> {
        let last_read = activity
            .value
            .as_ref()
            .and_then(|v| v.get("lastReadMessageId"))
            .and_then(Value::as_str)
            .and_then(|id| id.parse::<u64>().ok());
        let (Some(last_read), Some(tenant), Some(reader)) = (
            last_read,
            activity.tenant_id(),
            activity
                .from
                .as_ref()
                .and_then(|f| f.aad_object_id.as_deref()),
        ) else {
            tracing::info!(
                "a read receipt without a numeric lastReadMessageId, tenant or reader; ignored"
            );
            return Ok(0);
        };
        let conversation = &activity.conversation.id;
        let unread = self
            .sent
            .unread_up_to(conversation, last_read)
            .await
            .map_err(NotRecorded)?;
        let now = OffsetDateTime::now_utc();
        let field = Proof::field_for(EventType::NotificationRead);
        let marks = unread.iter().map(|message| {
            let field = field.as_str();
            let notification = &message.notification_id;
            let activity_id = &message.activity_id;
            async move {
                let data = NotificationRead {
                    notification_id: notification.clone(),
                    broadcast_id: message.broadcast_id.clone(),
                    tenant_id: tenant.to_owned(),
                    aad_object_id: reader.to_owned(),
                    conversation_id: conversation.clone(),
                    activity_id: activity_id.clone(),
                    read_at: now,
                };
                let event = CloudEvent::new(
                    self.events.source(),
                    EventType::NotificationRead,
                    notification,
                    notification,
                    &data,
                    now,
                );
                let proof = Proof {
                    key: self.statuses.record_key(notification),
                    field: field.to_owned(),
                };
                self.events.note(&event, Some(&proof)).await?;
                let stamp = Stamp {
                    field,
                    event_id: &event.id,
                };
                let first = self.statuses.mark_read(notification, now, stamp).await?;
                if first {
                    self.events.publish_soon(event);
                }
                // A broadcast counts its messages read, each once: told again whether or not
                // this receipt was the first, so that a count that failed before (the
                // message then stays unread, and the next receipt covers it again) is made.
                if let Some(broadcast) = &message.broadcast_id {
                    self.broadcasts.count_read(broadcast, notification).await?;
                }
                Ok::<_, StoreError>(first)
            }
        });
        let marked = futures_util::future::try_join_all(marks)
            .await
            .map_err(NotRecorded)?;
        self.sent
            .mark_read(conversation, &unread)
            .await
            .map_err(NotRecorded)?;
        Ok(marked.into_iter().filter(|first| *first).count())
    }
}

/// The invoke response Teams shows: the card that replaces the pressed one, or a text.
fn invoke_answer(answer: Answer) -> Value {
    match answer {
        Answer::Card(card) => json!({
            "statusCode": 200,
            "type": "application/vnd.microsoft.card.adaptive",
            "value": card,
        }),
        Answer::Text(text) => json!({
            "statusCode": 200,
            "type": "application/vnd.microsoft.activity.message",
            "value": text,
        }),
    }
}

/// What the user sees when the press could not be recorded: Teams shows the error on the card,
/// and the user can press again.
fn error_answer() -> Value {
    json!({
        "statusCode": 500,
        "type": "application/vnd.microsoft.error",
        "value": {
            "code": "ServiceUnavailable",
            "message": "Herald could not record this action right now; please try again.",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_answer_and_a_text_answer_have_the_shapes_teams_reads() {
        let card = invoke_answer(Answer::Card(json!({"type": "AdaptiveCard"})));
        assert_eq!(card["statusCode"], 200);
        assert_eq!(card["type"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(card["value"]["type"], "AdaptiveCard");
        let text = invoke_answer(Answer::Text("Thanks, noted.".into()));
        assert_eq!(text["type"], "application/vnd.microsoft.activity.message");
        assert_eq!(text["value"], "Thanks, noted.");
        let error = error_answer();
        assert_eq!(error["type"], "application/vnd.microsoft.error");
        assert!(
            error["value"]["message"]
                .as_str()
                .unwrap()
                .contains("try again")
        );
    }
}
