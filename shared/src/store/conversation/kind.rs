//! The kind of a Teams conversation (its `conversationType`), read once from the activity.

use std::fmt;

use serde::Deserialize;

/// Teams' `conversationType`. Teams documents three values; any other is kept as sent, so that
/// an activity carrying one still parses and its stored reference still says what it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum ConversationKind {
    /// A user's one-to-one chat with the bot: the only place a user is greeted, and the one
    /// conversation per user that a job to a user goes to.
    Personal,
    GroupChat,
    Channel,
    /// A value Teams did not document (when parsed, never one of the three above).
    Other(String),
}

impl ConversationKind {
    /// The value as Teams writes it (and as the stored reference holds it).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Personal => "personal",
            Self::GroupChat => "groupChat",
            Self::Channel => "channel",
            Self::Other(other) => other,
        }
    }
}

/// Teams' spelling, exactly: any other text (another case included) is [`ConversationKind::Other`].
impl From<String> for ConversationKind {
    fn from(value: String) -> Self {
        match value.as_str() {
            "personal" => Self::Personal,
            "groupChat" => Self::GroupChat,
            "channel" => Self::Channel,
            _ => Self::Other(value),
        }
    }
}

impl fmt::Display for ConversationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_values_are_known_and_written_back_as_read() {
        for (text, kind) in [
            ("personal", ConversationKind::Personal),
            ("groupChat", ConversationKind::GroupChat),
            ("channel", ConversationKind::Channel),
        ] {
            assert_eq!(ConversationKind::from(text.to_owned()), kind);
            assert_eq!(kind.as_str(), text);
        }
    }

    #[test]
    fn an_unknown_value_is_kept_as_sent_and_is_not_personal() {
        let parsed: Vec<ConversationKind> =
            serde_json::from_str(r#"["meeting", "Personal"]"#).unwrap();
        assert_eq!(
            parsed,
            [
                ConversationKind::Other("meeting".into()),
                ConversationKind::Other("Personal".into())
            ]
        );
        assert_eq!(parsed[1].as_str(), "Personal", "kept as sent, case and all");
    }
}
