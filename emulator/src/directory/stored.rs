//! Activities as kept in memory: their JSON serialised, read back when asked for.
//!
//! A parsed JSON tree of a short message takes about ten times the room of its text (every
//! object is a tree map), and a broadcast run keeps a hundred thousand of them; reading them
//! back is rare (a test, the page showing one chat).

use serde_json::Value;
use time::OffsetDateTime;

use super::{CardAnswer, InboundActivity, ReceivedActivity};

fn parse(json: &str) -> Value {
    // Only what `serialise` wrote is ever parsed.
    serde_json::from_str(json).unwrap_or(Value::Null)
}

fn serialise(value: &Value) -> Box<str> {
    value.to_string().into_boxed_str()
}

/// An activity of the bot, kept.
#[derive(Debug, Clone)]
pub(crate) struct StoredActivity {
    pub(crate) id: String,
    activity: Box<str>,
    received_at: OffsetDateTime,
    traceparent: Option<Box<str>>,
    pub(crate) deleted: bool,
    edits: Vec<Box<str>>,
    card_answer: Option<CardAnswer>,
}

impl StoredActivity {
    pub(crate) fn new(received: &ReceivedActivity) -> Self {
        StoredActivity {
            id: received.id.clone(),
            activity: serialise(&received.activity),
            received_at: received.received_at,
            traceparent: received.traceparent.as_deref().map(Box::from),
            deleted: received.deleted,
            edits: received.edits.iter().map(serialise).collect(),
            card_answer: received.card_answer.clone(),
        }
    }

    /// The current version.
    pub(crate) fn activity(&self) -> Value {
        parse(&self.activity)
    }

    /// The bot replaced the message: the old version joins the edits, and whatever a card
    /// action showed goes with it.
    pub(crate) fn update(&mut self, activity: &Value) {
        let previous = std::mem::replace(&mut self.activity, serialise(activity));
        self.edits.push(previous);
        self.card_answer = None;
    }

    /// The bot answered a card action: a new card shows in place of the old one (as the user
    /// who pressed sees it — not an edit of the bot's), and the answer is kept.
    pub(crate) fn answer_card(&mut self, activity: Option<&Value>, answer: CardAnswer) {
        if let Some(activity) = activity {
            self.activity = serialise(activity);
        }
        self.card_answer = Some(answer);
    }

    /// The activity as the emulator's API gives it.
    pub(crate) fn received(&self, conversation_id: &str) -> ReceivedActivity {
        let activity = self.activity();
        ReceivedActivity {
            id: self.id.clone(),
            conversation_id: conversation_id.to_owned(),
            text: activity
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_owned),
            activity,
            received_at: self.received_at,
            traceparent: self.traceparent.as_deref().map(str::to_owned),
            deleted: self.deleted,
            edits: self.edits.iter().map(|edit| parse(edit)).collect(),
            card_answer: self.card_answer.clone(),
        }
    }
}

/// An activity "Teams" posted to the bot, kept.
#[derive(Debug, Clone)]
pub(crate) struct StoredInbound {
    at: OffsetDateTime,
    activity: Box<str>,
    status: u16,
}

impl StoredInbound {
    /// `activity`, posted now, and what the bot answered.
    pub(crate) fn new(activity: &Value, status: u16) -> Self {
        StoredInbound {
            at: OffsetDateTime::now_utc(),
            activity: serialise(activity),
            status,
        }
    }

    pub(crate) fn inbound(&self) -> InboundActivity {
        InboundActivity {
            at: self.at,
            activity: parse(&self.activity),
            status: self.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_kept_activity_reads_back_as_it_was_and_as_it_changed() {
        let sent = ReceivedActivity {
            id: "1".to_owned(),
            conversation_id: "a:1".to_owned(),
            activity: json!({ "type": "message", "text": "one" }),
            text: Some("one".to_owned()),
            received_at: OffsetDateTime::now_utc(),
            traceparent: Some("00-1-2-01".to_owned()),
            deleted: false,
            edits: Vec::new(),
            card_answer: None,
        };
        let mut stored = StoredActivity::new(&sent);
        let read = stored.received("a:1");
        assert_eq!(
            (read.activity, read.text, read.traceparent),
            (sent.activity.clone(), sent.text, sent.traceparent)
        );

        stored.update(&json!({ "type": "message", "text": "two" }));
        let read = stored.received("a:1");
        assert_eq!(read.text.as_deref(), Some("two"));
        assert_eq!(read.edits, [sent.activity]);
    }
}
