//! `onAction`: what a user sees after pressing a button on the message's card, answered by
//! the ingress while Teams waits (an `adaptiveCard/action` invoke's synchronous response).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JobError;

/// The text Teams shows after a press when the message names no answer for the verb.
pub const DEFAULT_ANSWER: &str = "Thanks, noted.";

/// Answers by `Action.Execute` verb; `*` answers every verb not named. Verbs are non-empty,
/// and each answer is exactly one `card` (an object) or one non-blank `text`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"ack": {"text": "Acknowledged"}, "*": {"card": {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Done"}]}}}))]
pub struct OnAction(pub BTreeMap<String, ActionAnswer>);

/// One answer: a card that replaces the pressed one (for the user who pressed), or a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionAnswer {
    /// An Adaptive Card (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub card: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What the ingress answers a press with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Card(Value),
    Text(String),
}

impl OnAction {
    /// Checks every answer is exactly one card (an object) or one non-empty text.
    pub fn validate(&self) -> Result<(), JobError> {
        for (verb, answer) in &self.0 {
            let invalid = |reason: &str| {
                Err(JobError::Invalid {
                    field: "onAction",
                    reason: format!("{verb:?}: {reason}"),
                })
            };
            if verb.is_empty() {
                return invalid("a verb is empty");
            }
            match (&answer.card, &answer.text) {
                (Some(Value::Object(_)), None) => {}
                (Some(_), None) => return invalid("card must be an object"),
                (None, Some(text)) if !text.trim().is_empty() => {}
                (None, Some(_)) => return invalid("text is empty"),
                _ => return invalid("needs exactly one of card and text"),
            }
        }
        Ok(())
    }

    /// The answer to a press of `verb` (`None` for an `Action.Submit`): the verb's own, else
    /// `*`'s, else [`DEFAULT_ANSWER`].
    pub fn answer(on_action: Option<&OnAction>, verb: Option<&str>) -> Answer {
        let chosen = on_action.and_then(|o| verb.and_then(|v| o.0.get(v)).or_else(|| o.0.get("*")));
        match chosen {
            Some(ActionAnswer {
                card: Some(card), ..
            }) => Answer::Card(card.clone()),
            Some(ActionAnswer {
                text: Some(text), ..
            }) => Answer::Text(text.clone()),
            _ => Answer::Text(DEFAULT_ANSWER.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn on_action(value: Value) -> OnAction {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_press_gets_its_verbs_answer_then_the_wildcards_then_the_default() {
        let o = on_action(
            json!({"ack": {"text": "Acknowledged"}, "*": {"card": {"type": "AdaptiveCard"}}}),
        );
        assert_eq!(
            OnAction::answer(Some(&o), Some("ack")),
            Answer::Text("Acknowledged".into())
        );
        assert_eq!(
            OnAction::answer(Some(&o), Some("snooze")),
            Answer::Card(json!({"type": "AdaptiveCard"}))
        );
        assert_eq!(
            OnAction::answer(None, Some("ack")),
            Answer::Text(DEFAULT_ANSWER.into())
        );
        let only_ack = on_action(json!({"ack": {"text": "Acknowledged"}}));
        assert_eq!(
            OnAction::answer(Some(&only_ack), None),
            Answer::Text(DEFAULT_ANSWER.into()),
            "a submit has no verb"
        );
    }

    #[test]
    fn an_answer_is_one_card_object_or_one_text() {
        for bad in [
            json!({"ack": {}}),
            json!({"ack": {"text": "a", "card": {}}}),
            json!({"ack": {"card": "not an object"}}),
            json!({"ack": {"text": " "}}),
            json!({"": {"text": "a"}}),
        ] {
            assert!(on_action(bad.clone()).validate().is_err(), "{bad}");
        }
        assert!(
            serde_json::from_value::<OnAction>(json!({"ack": {"txt": "a"}})).is_err(),
            "unknown fields are refused"
        );
    }
}
