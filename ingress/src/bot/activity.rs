//! Reading an inbound activity: which conversation it belongs to, and what it means for the
//! stored reference (an install, a removal, or a refresh), read from where Teams puts each id.

use herald_shared::{
    calendar::Zone,
    store::{ActivityEffect, ConversationKind, ConversationRef, RecordedActivity},
};
use serde::Deserialize;
use time::OffsetDateTime;

/// The parts of an activity Herald reads; everything else is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: String,
    /// Teams' id of the activity (`f:…` for events and invokes, epoch ms for messages).
    #[serde(default)]
    pub id: Option<String>,
    /// An `invoke`'s or `event`'s name (`adaptiveCard/action`, `application/vnd.microsoft.readReceipt`).
    #[serde(default)]
    pub name: Option<String>,
    /// An invoke's or event's payload, or an `Action.Submit`'s data on a message.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// The message a reply or a card action refers to.
    #[serde(default)]
    pub reply_to_id: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    pub service_url: String,
    pub channel_id: String,
    pub conversation: ConversationAccount,
    #[serde(default)]
    pub from: Option<ChannelAccount>,
    #[serde(default)]
    pub recipient: Option<ChannelAccount>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub members_added: Vec<ChannelAccount>,
    #[serde(default)]
    pub members_removed: Vec<ChannelAccount>,
    #[serde(default)]
    pub channel_data: Option<ChannelData>,
    /// The sender's IANA zone, on activities a user's client sends.
    #[serde(default)]
    pub local_timezone: Option<String>,
    /// Read for the `clientInfo` entity's `timezone`; the rest is ignored.
    #[serde(default)]
    pub entities: Vec<Entity>,
}

/// An entity of the activity; only `clientInfo` is read.
#[derive(Debug, Deserialize)]
pub struct Entity {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationAccount {
    pub id: String,
    #[serde(default)]
    pub conversation_type: Option<ConversationKind>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAccount {
    pub id: String,
    #[serde(default)]
    pub aad_object_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelData {
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub tenant: Option<IdOnly>,
    #[serde(default)]
    pub team: Option<IdOnly>,
    #[serde(default)]
    pub channel: Option<IdOnly>,
}

#[derive(Debug, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

/// Why a body is not an activity Herald can use.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    #[error("the body is not a valid activity")]
    Malformed(#[from] serde_json::Error),
    #[error("the activity's {0} is empty")]
    Empty(&'static str),
}

impl Activity {
    pub fn parse(body: &[u8]) -> Result<Self, ActivityError> {
        let activity: Activity = serde_json::from_slice(body)?;
        for (name, value) in [
            ("type", &activity.kind),
            ("serviceUrl", &activity.service_url),
            ("channelId", &activity.channel_id),
            ("conversation.id", &activity.conversation.id),
        ] {
            if value.trim().is_empty() {
                return Err(ActivityError::Empty(name));
            }
        }
        Ok(activity)
    }

    /// The sender and the zone their client reports (`localTimezone`, else the `clientInfo`
    /// entity's `timezone`), when the activity carries both and the zone is one Herald knows.
    pub fn sender_time_zone(&self) -> Option<(&str, &str, Zone)> {
        let sender = self.from.as_ref()?.aad_object_id.as_deref()?;
        let tenant = self.tenant_id()?;
        let client_info = self
            .entities
            .iter()
            .find(|e| e.kind.as_deref() == Some("clientInfo"))
            .and_then(|e| e.timezone.as_deref());
        let zone = [self.local_timezone.as_deref(), client_info]
            .into_iter()
            .flatten()
            .find_map(|name| name.parse().ok())?;
        Some((tenant, sender, zone))
    }

    fn channel_data(&self) -> Option<&ChannelData> {
        self.channel_data.as_ref()
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.conversation
            .tenant_id
            .as_deref()
            .or_else(|| self.channel_data()?.tenant.as_ref().map(|t| t.id.as_str()))
    }

    pub fn is_personal(&self) -> bool {
        self.conversation.conversation_type == Some(ConversationKind::Personal)
    }

    fn bot_id(&self) -> Option<&str> {
        self.recipient.as_ref().map(|r| r.id.as_str())
    }

    fn names_bot(&self, members: &[ChannelAccount]) -> bool {
        self.bot_id()
            .is_some_and(|bot| members.iter().any(|m| m.id == bot))
    }

    /// What the activity does beyond refreshing the reference.
    pub fn effect(&self) -> ActivityEffect {
        let event_type = self.channel_data().and_then(|d| d.event_type.as_deref());
        match (self.kind.as_str(), self.action.as_deref()) {
            // `add-upgrade` / `remove-upgrade` are app updates, not (un)installs.
            ("installationUpdate", Some("add")) if self.is_personal() => ActivityEffect::Install,
            ("installationUpdate", Some("remove")) => ActivityEffect::Remove {
                reason: "the app was uninstalled".into(),
            },
            ("conversationUpdate", _) if event_type == Some("teamDeleted") => {
                ActivityEffect::Remove {
                    reason: "the team was deleted".into(),
                }
            }
            ("conversationUpdate", _) if self.names_bot(&self.members_removed) => {
                ActivityEffect::Remove {
                    reason: "the bot was removed from the conversation".into(),
                }
            }
            ("conversationUpdate", _)
                if self.is_personal() && self.names_bot(&self.members_added) =>
            {
                ActivityEffect::Install
            }
            _ => ActivityEffect::Refresh,
        }
    }

    /// The reference this activity vouches for, as of `now`.
    pub fn reference(&self, now: OffsetDateTime) -> ConversationRef {
        let data = self.channel_data();
        // User ids belong to the reference only in a personal chat; in a channel `from` is just
        // whoever spoke last.
        let user = self.from.as_ref().filter(|_| self.is_personal());
        ConversationRef {
            conversation_id: self.conversation.id.clone(),
            conversation_type: self.conversation.conversation_type.clone(),
            service_url: self.service_url.clone(),
            tenant_id: self.tenant_id().map(str::to_owned),
            user_aad_object_id: user.and_then(|u| u.aad_object_id.clone()),
            user_id: user.map(|u| u.id.clone()),
            bot_id: self.bot_id().map(str::to_owned),
            team_id: data.and_then(|d| d.team.as_ref()).map(|t| t.id.clone()),
            channel_id: data.and_then(|d| d.channel.as_ref()).map(|c| c.id.clone()),
            last_seen: now,
            removed_reason: None,
        }
    }

    pub fn record(&self, now: OffsetDateTime) -> RecordedActivity {
        RecordedActivity {
            reference: self.reference(now),
            effect: self.effect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn activity(value: serde_json::Value) -> Activity {
        let mut base = json!({
            "type": "conversationUpdate",
            "serviceUrl": "https://smba.trafficmanager.net/amer/t/",
            "channelId": "msteams",
            "conversation": {"id": "19:team@thread.tacv2", "conversationType": "channel", "tenantId": "t"},
            "recipient": {"id": "28:bot"},
            "from": {"id": "29:user", "aadObjectId": "u"}
        });
        base.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        Activity::parse(&serde_json::to_vec(&base).unwrap()).unwrap()
    }

    #[test]
    fn removals_mark_the_reference() {
        let removed = activity(json!({"membersRemoved": [{"id": "28:bot"}]}));
        assert!(
            matches!(removed.effect(), ActivityEffect::Remove { reason } if reason.contains("bot was removed"))
        );
        let deleted =
            activity(json!({"channelData": {"eventType": "teamDeleted", "team": {"id": "team"}}}));
        assert!(
            matches!(deleted.effect(), ActivityEffect::Remove { reason } if reason.contains("team was deleted"))
        );
        let uninstalled = activity(json!({"type": "installationUpdate", "action": "remove"}));
        assert!(matches!(
            uninstalled.effect(),
            ActivityEffect::Remove { .. }
        ));
        // Someone else leaving the team changes nothing for the bot.
        let other = activity(json!({"membersRemoved": [{"id": "29:someone"}]}));
        assert_eq!(other.effect(), ActivityEffect::Refresh);
    }

    #[test]
    fn only_a_personal_install_greets_and_upgrades_are_not_installs() {
        let personal =
            json!({"conversation": {"id": "a:1", "conversationType": "personal", "tenantId": "t"}});
        let mut install = personal.clone();
        install["type"] = "installationUpdate".into();
        install["action"] = "add".into();
        assert_eq!(activity(install.clone()).effect(), ActivityEffect::Install);
        install["action"] = "add-upgrade".into();
        assert_eq!(activity(install).effect(), ActivityEffect::Refresh);
        let mut bot_added = personal;
        bot_added["membersAdded"] = json!([{"id": "28:bot"}, {"id": "29:user"}]);
        assert_eq!(activity(bot_added).effect(), ActivityEffect::Install);
        let team_install = json!({"type": "installationUpdate", "action": "add"});
        assert_eq!(activity(team_install).effect(), ActivityEffect::Refresh);
    }

    #[test]
    fn the_tenant_comes_from_the_conversation_or_the_channel_data() {
        let from_channel_data = activity(json!({
            "conversation": {"id": "19:x@thread.tacv2", "conversationType": "channel"},
            "channelData": {"tenant": {"id": "t2"}, "team": {"id": "team"}, "channel": {"id": "19:x@thread.tacv2"}}
        }));
        let reference = from_channel_data.reference(OffsetDateTime::now_utc());
        assert_eq!(reference.tenant_id.as_deref(), Some("t2"));
        assert_eq!(reference.team_id.as_deref(), Some("team"));
        assert_eq!(
            reference.user_aad_object_id, None,
            "a channel has no single user"
        );
    }

    #[test]
    fn a_conversation_type_teams_did_not_document_is_recorded_as_sent() {
        let meeting = activity(json!({
            "type": "message",
            "conversation": {"id": "19:meeting_x@thread.v2", "conversationType": "meeting", "tenantId": "t"}
        }));
        let reference = meeting.reference(OffsetDateTime::now_utc());
        assert_eq!(
            reference.conversation_type,
            Some(ConversationKind::Other("meeting".into()))
        );
        assert_eq!(reference.user_id, None, "only a personal chat has a user");
        assert_eq!(meeting.effect(), ActivityEffect::Refresh);
    }

    #[test]
    fn an_activity_missing_its_ids_is_malformed() {
        let err = Activity::parse(br#"{"type":"message","serviceUrl":"","channelId":"msteams","conversation":{"id":"a"}}"#);
        assert!(err.unwrap_err().to_string().contains("serviceUrl"));
        assert!(Activity::parse(b"[1,2]").is_err());
    }
}
