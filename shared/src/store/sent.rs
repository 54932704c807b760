//! The messages Herald sent, by the Teams activity they became: what a card's button press
//! (which names the message by its activity id) and a read receipt (which names the last
//! message read in a chat) are tied back to.
//!
//! - `{ns}:sent:{<conversation>}:<activity>`: the notification (and its `onAction`), for as
//!   long as status records are kept.
//! - `{ns}:unread:{<conversation>}`: a sorted set of the chat's delivered, unread
//!   notifications scored by activity id. Teams' personal-chat activity ids are epoch
//!   milliseconds and read receipts compare them as numbers (`id <= lastReadMessageId`), so a
//!   receipt is one range query; messages with ids that are not numbers are never marked read,
//!   as in Teams' own SDKs. Entries older than the retention are pruned as new ones come.
//!
//! Both keys of a conversation share a hash tag, so they sit on one Redis Cluster slot.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{Redis, StoreError};
use crate::job::OnAction;

/// What a sent message is tied to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentMessage {
    pub notification_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_action: Option<OnAction>,
}

/// What may come back for a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remember {
    /// A personal chat's: read receipts come for it.
    pub personal: bool,
    /// Its card has buttons that come back to the bot.
    pub has_actions: bool,
}

/// About one message in this many prunes its chat's unread set (by activity id, which is
/// epoch milliseconds: as good as random here).
const PRUNE_EVERY: u64 = 16;

#[derive(Debug, Clone)]
pub struct SentStore {
    redis: Redis,
    ttl: Duration,
}

impl SentStore {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn sent_key(&self, conversation_id: &str, activity_id: &str) -> String {
        format!(
            "{}:sent:{{{conversation_id}}}:{activity_id}",
            self.redis.namespace()
        )
    }

    fn unread_key(&self, conversation_id: &str) -> String {
        format!("{}:unread:{{{conversation_id}}}", self.redis.namespace())
    }

    /// Adds to `pipe` the writes noting that `message` became activity `activity_id` of the
    /// conversation, as far as anything can come back for it: a press when its card
    /// `has_actions`, a read receipt when the chat is `personal` (it is unread until one covers
    /// it). Nothing else is written; every write may be repeated, and each reply is ignored
    /// (the dispatcher sends them with the job's outcome, [`super::StatusStore::finish`]).
    pub fn remember(
        &self,
        pipe: &mut redis::Pipeline,
        conversation_id: &str,
        activity_id: &str,
        Remember {
            personal,
            has_actions,
        }: Remember,
        message: &SentMessage,
    ) {
        // Read receipts compare activity ids as numbers; a message whose id is not one is
        // never covered by a receipt.
        let unread_number = personal.then(|| activity_id.parse::<u64>().ok()).flatten();
        let ttl_ms = self.ttl.as_millis() as u64;
        if has_actions {
            let body = serde_json::to_string(message).expect("a sent message always serializes");
            pipe.cmd("SET")
                .arg(self.sent_key(conversation_id, activity_id))
                .arg(body)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        if let Some(number) = unread_number {
            let unread = self.unread_key(conversation_id);
            let member = Unread::member(&message.notification_id, message.broadcast_id.as_deref());
            pipe.zadd(&unread, member, number)
                .ignore()
                .pexpire(&unread, ttl_ms as i64)
                .ignore();
            // Pruning what is past the retention now and then is enough (a set of unread
            // messages grows only by the chat's own messages).
            if number % PRUNE_EVERY == 0 {
                let retained_from = number.saturating_sub(ttl_ms);
                pipe.zrembyscore(&unread, "-inf", format!("({retained_from}"))
                    .ignore();
            }
        }
    }

    /// The message that became activity `activity_id` of the conversation, if Herald sent it.
    pub async fn find(
        &self,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<Option<SentMessage>, StoreError> {
        let key = self.sent_key(conversation_id, activity_id);
        let body: Option<String> = self.redis.conn().get(&key).await?;
        body.map(|body| {
            serde_json::from_str(&body).map_err(|e| StoreError::Malformed {
                key,
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// The unread notifications of the conversation whose activity id is at most
    /// `last_read`.
    pub async fn unread_up_to(
        &self,
        conversation_id: &str,
        last_read: u64,
    ) -> Result<Vec<Unread>, StoreError> {
        let found: Vec<(String, u64)> = self
            .redis
            .conn()
            .zrangebyscore_withscores(self.unread_key(conversation_id), "-inf", last_read)
            .await?;
        Ok(found
            .into_iter()
            .map(|(member, activity)| Unread::read(member, activity))
            .collect())
    }

    /// Takes messages out of the conversation's unread set (a receipt covered them).
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        read: &[Unread],
    ) -> Result<(), StoreError> {
        if read.is_empty() {
            return Ok(());
        }
        let members: Vec<&str> = read.iter().map(|u| u.member.as_str()).collect();
        let _: i64 = self
            .redis
            .conn()
            .zrem(self.unread_key(conversation_id), members)
            .await?;
        Ok(())
    }
}

/// A delivered message no read receipt has covered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub notification_id: String,
    pub activity_id: String,
    /// The broadcast it is a recipient's message of, if it is one.
    pub broadcast_id: Option<String>,
    /// Its member of the unread set: the notification id, then the broadcast's after a space
    /// (ids have no spaces).
    member: String,
}

impl Unread {
    fn member(notification_id: &str, broadcast_id: Option<&str>) -> String {
        match broadcast_id {
            Some(broadcast) => format!("{notification_id} {broadcast}"),
            None => notification_id.to_owned(),
        }
    }

    fn read(member: String, activity: u64) -> Self {
        let (notification_id, broadcast_id) = match member.split_once(' ') {
            Some((notification, broadcast)) => {
                (notification.to_owned(), Some(broadcast.to_owned()))
            }
            None => (member.clone(), None),
        };
        Self {
            notification_id,
            activity_id: activity.to_string(),
            broadcast_id,
            member,
        }
    }
}
