//! Herald's events: what happened to messages and what users did, told to other services as
//! CloudEvents 1.0 (JSON, structured mode) on the topic exchange `{ns}.events`, routed by type.
//!
//! An event is published after the change it reports is recorded, at least once: consumers
//! de-duplicate by `id`, which is derived from what the event reports (the notification and
//! the type, or the Teams activity that caused it), so the same change told twice has one id.
//!
//! - This file: the envelope ([`CloudEvent`]), the types ([`EventType`]) and each type's
//!   `data` (the JSON Schemas in `schemas/events/` describe the same shapes).
//! - [`outbox`]: getting an event out even when the process dies right after the change.
//! - `batches`: publishing together the events that work waits on.

mod batches;
pub mod outbox;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};
use time::OffsetDateTime;
use uuid::Uuid;

pub use self::outbox::{Events, Proof};

/// Every event type of the contract, as routing key and CloudEvents `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    NotificationDelivered,
    NotificationFailed,
    NotificationExpired,
    NotificationCancelled,
    NotificationRead,
    NotificationAction,
    BroadcastCompleted,
    InstallationAdded,
    InstallationRemoved,
    MessageReceived,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        Self::NotificationDelivered,
        Self::NotificationFailed,
        Self::NotificationExpired,
        Self::NotificationCancelled,
        Self::NotificationRead,
        Self::NotificationAction,
        Self::BroadcastCompleted,
        Self::InstallationAdded,
        Self::InstallationRemoved,
        Self::MessageReceived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotificationDelivered => "herald.notification.delivered",
            Self::NotificationFailed => "herald.notification.failed",
            Self::NotificationExpired => "herald.notification.expired",
            Self::NotificationCancelled => "herald.notification.cancelled",
            Self::NotificationRead => "herald.notification.read",
            Self::NotificationAction => "herald.notification.action",
            Self::BroadcastCompleted => "herald.broadcast.completed",
            Self::InstallationAdded => "herald.installation.added",
            Self::InstallationRemoved => "herald.installation.removed",
            Self::MessageReceived => "herald.message.received",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The fixed namespace of event ids (UUID v5 of what the event reports).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1d_53c4_2b8f_4e0a_9c77_0d5e_f1a2_b3c4);

/// An event's id: the same for the same change, however often it is told.
pub fn event_id(kind: EventType, of: &str) -> String {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{}/{of}", kind.as_str()).as_bytes(),
    )
    .to_string()
}

/// A CloudEvent in JSON structured mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    /// `herald/{ns}`.
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The notification id, or the user's `aadObjectId` for installation and message events
    /// (the conversation id when the activity names no user).
    pub subject: String,
    pub datacontenttype: String,
    /// The type's `data`, as the JSON it was written as: an event is built to be serialized
    /// once, and this keeps its `data` from being built as a tree first (one event per
    /// delivered job makes that matter). [`CloudEvent::data_as`] reads it.
    pub data: Box<RawValue>,
}

impl CloudEvent {
    /// An event of `kind` about `subject`, with id [`event_id`]`(kind, of)`.
    pub fn new(
        source: &str,
        kind: EventType,
        of: &str,
        subject: &str,
        data: &impl Serialize,
        time: OffsetDateTime,
    ) -> Self {
        Self {
            specversion: "1.0".into(),
            id: event_id(kind, of),
            source: source.into(),
            kind: kind.as_str().into(),
            time,
            subject: subject.into(),
            datacontenttype: "application/json".into(),
            data: serde_json::value::to_raw_value(data).expect("event data always serializes"),
        }
    }

    /// The event's `data` as a `T` (a [`Value`] to look into it).
    pub fn data_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.get())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a CloudEvent always serializes")
    }
}

/// `herald.notification.delivered` / `.failed` / `.expired` / `.cancelled`. `tenantId` and
/// `conversationId` are null when Herald never learned them (a job that failed before its
/// conversation was known).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationChanged {
    pub notification_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    pub tenant_id: Option<String>,
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl EventType {
    /// The type that tells a job's end at `status`; `None` while the job has not ended.
    pub fn ending(status: crate::store::JobStatus) -> Option<Self> {
        use crate::store::JobStatus;
        match status {
            JobStatus::Delivered => Some(EventType::NotificationDelivered),
            JobStatus::Failed => Some(EventType::NotificationFailed),
            JobStatus::Expired => Some(EventType::NotificationExpired),
            JobStatus::Cancelled => Some(EventType::NotificationCancelled),
            JobStatus::Scheduled | JobStatus::Queued | JobStatus::Sending => None,
        }
    }
}

impl NotificationChanged {
    /// A `herald.notification.cancelled` event for the job of `record` (cancelled before it
    /// was sent, or its delivered message retracted).
    pub fn cancelled(
        source: &str,
        record: &crate::store::StatusRecord,
        now: OffsetDateTime,
    ) -> CloudEvent {
        Self::told(
            source,
            record,
            EventType::NotificationCancelled,
            "cancelled",
            now,
        )
    }

    /// The event telling the end the record says the job came to; `None` while it has not
    /// ended.
    pub fn ended(
        source: &str,
        record: &crate::store::StatusRecord,
        now: OffsetDateTime,
    ) -> Option<CloudEvent> {
        let kind = EventType::ending(record.status)?;
        Some(Self::told(
            source,
            record,
            kind,
            record.status.as_str(),
            now,
        ))
    }

    fn told(
        source: &str,
        record: &crate::store::StatusRecord,
        kind: EventType,
        status: &str,
        now: OffsetDateTime,
    ) -> CloudEvent {
        let data = NotificationChanged {
            notification_id: record.id.to_string(),
            broadcast_id: record.broadcast_id.clone(),
            tenant_id: record.to.tenant_id().map(str::to_owned),
            conversation_id: record.conversation_id.clone().filter(|c| !c.is_empty()),
            activity_id: record.activity_id.clone().filter(|a| !a.is_empty()),
            status: status.into(),
            last_error: (kind == EventType::NotificationFailed)
                .then(|| record.last_error.clone())
                .flatten(),
        };
        CloudEvent::new(source, kind, &record.id, &record.id, &data, now)
    }
}

/// `herald.notification.read`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationRead {
    pub notification_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    pub tenant_id: String,
    pub aad_object_id: String,
    pub conversation_id: String,
    pub activity_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub read_at: OffsetDateTime,
}

/// Who did something in Teams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventUser {
    pub aad_object_id: Option<String>,
    pub name: Option<String>,
}

/// `herald.notification.action`: a press of an `Action.Execute` (with its `verb`) or an
/// `Action.Submit` (no verb) on a message Herald sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationAction {
    pub notification_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    pub tenant_id: Option<String>,
    pub user: EventUser,
    pub conversation_id: String,
    pub activity_id: String,
    pub verb: Option<String>,
    pub data: Value,
}

/// `herald.broadcast.completed`: nothing of the broadcast is pending (it completed, expired
/// or was cancelled), with its per-state recipient counts as it settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BroadcastCompleted {
    pub broadcast_id: String,
    pub counts: crate::store::Counts,
}

impl BroadcastCompleted {
    /// The `herald.broadcast.completed` event of `record`, once it has settled (`None`
    /// before): one id per broadcast, however often it is told.
    pub fn event(source: &str, record: &crate::store::BroadcastRecord) -> Option<CloudEvent> {
        let settled_at = record.completed_at?;
        let id = record.broadcast.id.to_string();
        let data = Self {
            broadcast_id: id.clone(),
            counts: record.counts,
        };
        Some(CloudEvent::new(
            source,
            EventType::BroadcastCompleted,
            &id,
            &id,
            &data,
            settled_at,
        ))
    }
}

/// `herald.installation.added` / `.removed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallationChanged {
    pub tenant_id: Option<String>,
    /// `personal`, `team` or `groupChat`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    pub conversation_id: String,
}

/// `herald.message.received`: a user wrote to the bot (or pressed a card button Herald cannot
/// tie to a message it sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageReceived {
    pub tenant_id: Option<String>,
    pub user: EventUser,
    pub conversation_id: String,
    pub conversation_type: Option<String>,
    pub activity_id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    pub timestamp: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_the_same_for_the_same_change_and_differs_by_type() {
        let delivered = event_id(EventType::NotificationDelivered, "n-1");
        assert_eq!(delivered, event_id(EventType::NotificationDelivered, "n-1"));
        assert_ne!(delivered, event_id(EventType::NotificationRead, "n-1"));
        assert_ne!(delivered, event_id(EventType::NotificationDelivered, "n-2"));
    }

    #[test]
    fn every_type_reads_back_from_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("herald.nothing"), None);
    }

    #[test]
    fn the_envelope_has_every_cloudevents_attribute() {
        let data = InstallationChanged {
            tenant_id: Some("t".into()),
            scope: "personal".into(),
            aad_object_id: Some("u".into()),
            team_id: None,
            conversation_id: "a:1".into(),
        };
        let event = CloudEvent::new(
            "herald/herald",
            EventType::InstallationAdded,
            "f:1",
            "u",
            &data,
            OffsetDateTime::UNIX_EPOCH,
        );
        let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
        for attribute in [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "datacontenttype",
            "data",
        ] {
            assert!(json.get(attribute).is_some(), "{attribute} in {json}");
        }
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "herald.installation.added");
        assert_eq!(json["time"], "1970-01-01T00:00:00Z");
        assert_eq!(json["data"]["scope"], "personal");
        assert!(json["data"].get("teamId").is_none(), "absent, not null");
    }
}
