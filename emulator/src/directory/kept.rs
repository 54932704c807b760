//! The activities kept per conversation, within the retention limits, and the counts that
//! stay exact after bodies are dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stored::{StoredActivity, StoredInbound};
use super::{
    Conversation, ConversationKind, Directory, InboundActivity, ReceivedActivity, TeamsUser,
};
use crate::error::ConnectorError;
use crate::ids::UserKey;
use crate::retention::Lane;

/// A summary of one conversation for the inspection API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationSummary {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) kind: &'static str,
    pub(crate) bot_installed: bool,
    pub(crate) user: Option<TeamsUser>,
    /// The bot's activities kept now.
    pub(crate) activity_count: usize,
    /// Every activity of the bot accepted here, kept or dropped.
    pub(crate) received_count: u64,
}

/// Which conversations a listing shows, as `GET /_emulator/conversations` takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ConversationFilter {
    pub(crate) tenant_id: Option<String>,
    /// `personal`, `groupChat`, `channel` or `thread`.
    pub(crate) kind: Option<String>,
    /// Only conversations that received at least this many activities.
    pub(crate) min_received: Option<u64>,
    /// Skip this many (in creation order).
    pub(crate) offset: usize,
    pub(crate) limit: Option<usize>,
}

/// How many activities the bot's conversations received, exact whatever was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedCounts {
    /// Conversations that received at least one activity.
    pub conversations: usize,
    /// Activities received in all.
    pub activities: u64,
    /// Activities received → how many conversations received that many (1 → 2000 means
    /// 2,000 conversations got exactly one).
    pub histogram: BTreeMap<u64, usize>,
}

impl Conversation {
    fn lane_len(&self, lane: Lane) -> usize {
        match lane {
            Lane::Sent => self.activities.len(),
            Lane::Inbound => self.inbound.len(),
        }
    }

    fn pop_oldest(&mut self, lane: Lane) -> Option<u64> {
        match lane {
            Lane::Sent => self.activities.pop_oldest(),
            Lane::Inbound => self.inbound.pop_oldest(),
        }
    }

    fn pop_if_oldest(&mut self, lane: Lane, stamp: u64) {
        match lane {
            Lane::Sent => self.activities.pop_if_oldest(stamp),
            Lane::Inbound => self.inbound.pop_if_oldest(stamp),
        };
    }
}

impl Directory {
    /// Keeps an activity of the bot that Teams accepted: counted for good, kept within the
    /// limits.
    pub(crate) fn keep_sent(
        &mut self,
        conversation_id: &str,
        activity: &ReceivedActivity,
    ) -> Result<(), ConnectorError> {
        let key = {
            let conversation = self.conversation_mut(conversation_id)?;
            conversation.received += 1;
            conversation.id.clone()
        };
        let stamp = self.retention.stamp(&key, Lane::Sent);
        if let Some(conversation) = self.conversations.get_mut(&*key) {
            conversation
                .activities
                .push(stamp, StoredActivity::new(activity));
        }
        self.enforce_limits(&key, Lane::Sent);
        Ok(())
    }

    /// Keeps what "Teams" posted to the bot in a known conversation, and the bot's status,
    /// within the limits.
    pub(crate) fn keep_inbound(&mut self, conversation_id: &str, activity: &Value, status: u16) {
        let Some(key) = self
            .conversations
            .get(conversation_id)
            .map(|conversation| conversation.id.clone())
        else {
            return;
        };
        let stamp = self.retention.stamp(&key, Lane::Inbound);
        if let Some(conversation) = self.conversations.get_mut(&*key) {
            conversation
                .inbound
                .push(stamp, StoredInbound::new(activity, status));
        }
        self.enforce_limits(&key, Lane::Inbound);
    }

    /// Drops the conversation's oldest past its own limit, then the oldest anywhere past
    /// the total.
    fn enforce_limits(&mut self, key: &Arc<str>, lane: Lane) {
        let per_conversation = self.retention.limits().per_conversation;
        if let Some(conversation) = self.conversations.get_mut(&**key) {
            while conversation.lane_len(lane) > per_conversation {
                let Some(stamp) = conversation.pop_oldest(lane) else {
                    break;
                };
                self.retention.dropped_by_conversation(stamp);
            }
        }
        while let Some((stamp, oldest, lane)) = self.retention.take_over_total() {
            if let Some(conversation) = self.conversations.get_mut(&*oldest) {
                conversation.pop_if_oldest(lane, stamp);
            }
        }
    }

    /// The bot's activities kept in a conversation, oldest first.
    pub(crate) fn activities(&self, conversation_id: &str) -> Vec<ReceivedActivity> {
        let conversation_id = &*self.canonical_conversation_id(conversation_id);
        self.conversations
            .get(conversation_id)
            .map(|conversation| {
                conversation
                    .activities
                    .iter()
                    .map(|stored| stored.received(conversation_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What "Teams" posted to the bot in a conversation, kept, oldest first.
    pub(crate) fn inbound(&self, conversation_id: &str) -> Vec<InboundActivity> {
        let conversation_id = &*self.canonical_conversation_id(conversation_id);
        self.conversations
            .get(conversation_id)
            .map(|conversation| {
                conversation
                    .inbound
                    .iter()
                    .map(StoredInbound::inbound)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every activity of the bot accepted in a conversation, kept or dropped.
    pub(crate) fn received_count(&self, conversation_id: &str) -> u64 {
        self.conversations
            .get(&*self.canonical_conversation_id(conversation_id))
            .map_or(0, |conversation| conversation.received)
    }

    /// Activities (both lanes) kept now, and dropped so far.
    pub(crate) fn retention_counts(&self) -> (usize, u64) {
        (self.retention.kept(), self.retention.dropped())
    }

    /// The conversations the filter lets through, in creation order.
    pub(crate) fn summaries(&self, filter: &ConversationFilter) -> Vec<ConversationSummary> {
        let mut conversations: Vec<&Conversation> = self
            .conversations
            .values()
            .filter(|conversation| {
                filter
                    .tenant_id
                    .as_deref()
                    .is_none_or(|tenant| conversation.tenant_id.eq_ignore_ascii_case(tenant))
                    && filter
                        .kind
                        .as_deref()
                        .is_none_or(|kind| conversation.kind.label() == kind)
                    && filter
                        .min_received
                        .is_none_or(|min| conversation.received >= min)
            })
            .collect();
        conversations.sort_by_key(|conversation| conversation.seq);
        conversations
            .into_iter()
            .skip(filter.offset)
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|conversation| ConversationSummary {
                id: conversation.id.to_string(),
                tenant_id: conversation.tenant_id.clone(),
                kind: conversation.kind.label(),
                bot_installed: self.bot_in_roster(&conversation.id),
                user: match &conversation.kind {
                    ConversationKind::Personal { aad_object_id } => {
                        self.user_by_key(&UserKey::new(&conversation.tenant_id, aad_object_id))
                    }
                    _ => None,
                },
                activity_count: conversation.activities.len(),
                received_count: conversation.received,
            })
            .collect()
    }

    /// The received counts of the conversations of `tenant_id` (all tenants for `None`).
    pub(crate) fn received_counts(&self, tenant_id: Option<&str>) -> ReceivedCounts {
        let mut counts = ReceivedCounts::default();
        let received = self.conversations.values().filter(|conversation| {
            conversation.received > 0
                && tenant_id
                    .is_none_or(|tenant| conversation.tenant_id.eq_ignore_ascii_case(tenant))
        });
        for conversation in received {
            counts.conversations += 1;
            counts.activities += conversation.received;
            *counts.histogram.entry(conversation.received).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::retention::Limits;

    fn sent(conversation_id: &str, text: &str) -> ReceivedActivity {
        ReceivedActivity {
            id: text.to_owned(),
            conversation_id: conversation_id.to_owned(),
            activity: json!({ "type": "message", "text": text }),
            text: Some(text.to_owned()),
            received_at: OffsetDateTime::now_utc(),
            traceparent: None,
            deleted: false,
            edits: Vec::new(),
            card_answer: None,
        }
    }

    fn installed(directory: &mut Directory, name: &str) -> String {
        let user = TeamsUser::new("t", name, name);
        let id = directory.register_personal(&user);
        directory.conversation_mut(&id).unwrap().bot_member = true;
        id
    }

    #[test]
    fn bodies_are_dropped_oldest_first_but_counts_stay_exact() {
        let mut directory = Directory::new(
            "app",
            Limits {
                per_conversation: 2,
                total: 3,
            },
        );
        let a = installed(&mut directory, "a");
        let b = installed(&mut directory, "b");
        for text in ["a1", "a2", "a3"] {
            directory.keep_sent(&a, &sent(&a, text)).unwrap();
        }
        // The conversation's own limit: the last two.
        let texts = |d: &Directory, id: &str| -> Vec<String> {
            d.activities(id).into_iter().map(|a| a.id).collect()
        };
        assert_eq!(texts(&directory, &a), ["a2", "a3"]);
        // The total: b's send pushes out the oldest anywhere, a2.
        directory.keep_sent(&b, &sent(&b, "b1")).unwrap();
        directory.keep_sent(&b, &sent(&b, "b2")).unwrap();
        assert_eq!(texts(&directory, &a), ["a3"]);
        assert_eq!(texts(&directory, &b), ["b1", "b2"]);
        assert_eq!(directory.retention_counts(), (3, 2));

        assert_eq!(directory.received_count(&a), 3);
        assert_eq!(directory.received_count(&b), 2);
        let counts = directory.received_counts(Some("T"));
        assert_eq!((counts.conversations, counts.activities), (2, 5));
        assert_eq!(counts.histogram, BTreeMap::from([(2, 1), (3, 1)]));
        assert_eq!(
            directory.received_counts(Some("other")),
            ReceivedCounts::default()
        );

        let busy = directory.summaries(&ConversationFilter {
            min_received: Some(3),
            ..ConversationFilter::default()
        });
        assert_eq!(busy.len(), 1);
        assert_eq!((busy[0].activity_count, busy[0].received_count), (1, 3));
    }

    #[test]
    fn an_unknown_conversation_keeps_nothing() {
        let mut directory = Directory::new(
            "app",
            Limits {
                per_conversation: 2,
                total: 3,
            },
        );
        assert!(
            directory
                .keep_sent("a:1nowhere", &sent("a:1nowhere", "x"))
                .is_err()
        );
        assert_eq!(directory.retention_counts(), (0, 0));
    }
}
