//! Acting as Teams toward the bot: the activities Teams sends, and sending them.
//!
//! The payloads follow captured Teams activities (see `fixtures/`): the same fields, ids of
//! the same shapes, a tenant-scoped `serviceUrl`, and a token signed like Bot Framework's.

use anyhow::Context as _;
use axum::http::header;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::directory::{CardAnswer, TeamsTeam, TeamsUser};
use crate::keys::TokenVariant;
use crate::recorder::{Counters, lock};
use crate::state::{Event, Shared};

/// The bot's display name in activities (Teams takes it from the app manifest).
const BOT_NAME: &str = "Herald";

/// An Adaptive Card's content type, in attachments and in answers to `adaptiveCard/action`.
const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";

/// The `type` of an `adaptiveCard/action` answer that Teams shows as a text.
const MESSAGE_ANSWER: &str = "application/vnd.microsoft.activity.message";

/// The `name` of a read receipt event.
const READ_RECEIPT: &str = "application/vnd.microsoft.readReceipt";

/// What the bot answered to an `invoke` in its HTTP response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeAnswer {
    /// The HTTP status of the bot's response.
    pub status: u16,
    /// The response body as JSON: for `adaptiveCard/action`, `{"statusCode", "type",
    /// "value"}`. `null` when the body was empty, a string when it was not JSON.
    pub body: Value,
}

/// The user or the message a user is to act on is unknown to "Teams".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotFound(pub(crate) String);

/// What an install produced: the conversation, and how the bot answered each activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallOutcome {
    /// The personal conversation (or, for a team, the General channel).
    pub conversation_id: String,
    /// The bot's status for the `installationUpdate` (sent first).
    pub installation_update_status: u16,
    /// The bot's status for the `conversationUpdate` adding the bot.
    pub conversation_update_status: u16,
}

/// Teams' timestamps: UTC with milliseconds.
fn timestamps() -> (String, String) {
    let now = OffsetDateTime::now_utc();
    let utc =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let local = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    );
    (
        now.format(&utc).unwrap_or_default(),
        now.format(&local).unwrap_or_default(),
    )
}

/// Event activities carry ids like `f:<guid>`.
fn event_id() -> String {
    format!("f:{}", uuid::Uuid::new_v4())
}

/// The `clientInfo` entity: install events carry only the locale; what a user's client sends
/// (a message) carries their zone too.
fn client_info(time_zone: Option<&str>) -> Value {
    let mut info = json!({
        "type": "clientInfo",
        "locale": "en-US",
        "country": "US",
        "platform": "Web",
    });
    if let Some(zone) = time_zone {
        info["timezone"] = json!(zone);
    }
    json!([info])
}

/// The envelope of an activity in the user's personal chat with the bot; registers the
/// user and the conversation (Teams knows its conversations whatever the bot does).
fn personal(shared: &Shared, user: &TeamsUser, kind: &str, id: String) -> Value {
    let (conversation_id, user_id, bot_id) = {
        let mut directory = lock(&shared.directory);
        let conversation_id = directory.register_personal(user);
        (conversation_id, directory.user_id(user), directory.bot_id())
    };
    let (timestamp, local_timestamp) = timestamps();
    json!({
        "type": kind,
        "id": id,
        "timestamp": timestamp,
        "localTimestamp": local_timestamp,
        "serviceUrl": shared.service_url(&user.tenant_id),
        "channelId": "msteams",
        "from": {
            "id": user_id,
            "name": user.name,
            "aadObjectId": user.aad_object_id,
        },
        "conversation": {
            "conversationType": "personal",
            "tenantId": user.tenant_id,
            "id": conversation_id,
        },
        "recipient": { "id": bot_id, "name": BOT_NAME },
        "entities": client_info(None),
        "channelData": { "tenant": { "id": user.tenant_id } },
        "locale": "en-US",
    })
}

pub(crate) fn install_activity(shared: &Shared, user: &TeamsUser) -> Value {
    let mut activity = personal(shared, user, "installationUpdate", event_id());
    activity["action"] = json!("add");
    activity["channelData"]["source"] = json!({ "name": "message" });
    activity
}

pub(crate) fn uninstall_activity(shared: &Shared, user: &TeamsUser) -> Value {
    let mut activity = personal(shared, user, "installationUpdate", event_id());
    activity["action"] = json!("remove");
    activity
}

pub(crate) fn bot_added_activity(shared: &Shared, user: &TeamsUser) -> Value {
    let mut activity = personal(shared, user, "conversationUpdate", event_id());
    activity["membersAdded"] = json!([{ "id": format!("28:{}", shared.app_id) }]);
    activity
}

/// An activity the user's client sends in their personal chat: it tells the client's zone.
fn from_client(shared: &Shared, user: &TeamsUser, kind: &str, id: String) -> Value {
    let mut activity = personal(shared, user, kind, id);
    activity["localTimezone"] = json!(user.time_zone);
    activity["entities"] = client_info(Some(&user.time_zone));
    activity
}

pub(crate) fn message_activity(shared: &Shared, user: &TeamsUser, text: &str) -> Value {
    let mut activity = from_client(shared, user, "message", shared.ids.next());
    activity["text"] = json!(text);
    activity["textFormat"] = json!("plain");
    // Teams also sends what the user typed as HTML.
    activity["attachments"] = json!([{
        "contentType": "text/html",
        "content": format!("<p>{}</p>", html_escape(text)),
    }]);
    activity
}

/// `invoke` `adaptiveCard/action`: the user pressed an `Action.Execute` on the card of the bot's
/// message `reply_to_id`. The action's `title` and `id` are the card's when the message in the
/// user's chat has an `Action.Execute` with that verb; `verb` is left out when empty.
pub(crate) fn card_action_activity(
    shared: &Shared,
    user: &TeamsUser,
    reply_to_id: &str,
    verb: &str,
    data: Value,
) -> Value {
    let mut action = json!({ "type": "Action.Execute" });
    if let Some(pressed) = card_action(shared, user, reply_to_id, verb) {
        for key in ["title", "id"] {
            if let Some(value) = pressed.get(key) {
                action[key] = value.clone();
            }
        }
    }
    if !verb.is_empty() {
        action["verb"] = json!(verb);
    }
    action["data"] = data;
    let mut activity = from_client(shared, user, "invoke", event_id());
    activity["name"] = json!("adaptiveCard/action");
    activity["value"] = json!({ "action": action, "trigger": "manual" });
    activity["replyToId"] = json!(reply_to_id);
    activity["channelData"]["source"] = json!({ "name": "message" });
    activity
}

/// The `Action.Execute` with `verb` on the cards of the bot's message `reply_to_id`.
fn card_action(shared: &Shared, user: &TeamsUser, reply_to_id: &str, verb: &str) -> Option<Value> {
    let mut directory = lock(&shared.directory);
    let stored = directory
        .personal_activity_mut(user, reply_to_id)?
        .activity();
    stored
        .get("attachments")?
        .as_array()?
        .iter()
        .filter(|attachment| attachment["contentType"] == ADAPTIVE_CARD)
        .find_map(|attachment| find_execute(&attachment["content"], verb))
}

/// The first `Action.Execute` with `verb` anywhere in a card (actions, action sets, columns).
fn find_execute(value: &Value, verb: &str) -> Option<Value> {
    match value {
        Value::Object(map) => {
            let is_it = map.get("type").and_then(Value::as_str) == Some("Action.Execute")
                && map.get("verb").and_then(Value::as_str).unwrap_or_default() == verb;
            if is_it {
                return Some(value.clone());
            }
            map.values().find_map(|child| find_execute(child, verb))
        }
        Value::Array(items) => items.iter().find_map(|item| find_execute(item, verb)),
        _ => None,
    }
}

/// The `message` an `Action.Submit` sends: empty `text`, the action's data as `value`, and the
/// card's message as `replyToId` (ids like `f:<guid>`, as card actions' messages have).
pub(crate) fn card_submit_activity(
    shared: &Shared,
    user: &TeamsUser,
    reply_to_id: &str,
    data: Value,
) -> Value {
    let mut activity = from_client(shared, user, "message", event_id());
    activity["text"] = json!("");
    activity["value"] = data;
    activity["replyToId"] = json!(reply_to_id);
    activity
}

/// The read receipt event: the user has read the personal chat up to the bot's message
/// `last_read_message_id`. Like Teams', it carries no client information.
pub(crate) fn read_receipt_activity(
    shared: &Shared,
    user: &TeamsUser,
    last_read_message_id: &str,
) -> Value {
    let mut activity = personal(shared, user, "event", event_id());
    activity["name"] = json!(READ_RECEIPT);
    activity["value"] = json!({ "lastReadMessageId": last_read_message_id });
    if let Some(fields) = activity.as_object_mut() {
        for key in ["entities", "locale", "localTimestamp"] {
            fields.remove(key);
        }
    }
    activity
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// The envelope of an activity in a team's General channel, from `by`.
fn team(shared: &Shared, team: &TeamsTeam, by: &TeamsUser, kind: &str) -> Value {
    let (team_id, user_id, bot_id) = {
        let mut directory = lock(&shared.directory);
        let team_id = directory.register_team(team);
        directory.register_user(by);
        (team_id, directory.user_id(by), directory.bot_id())
    };
    let (timestamp, local_timestamp) = timestamps();
    json!({
        "type": kind,
        "id": event_id(),
        "timestamp": timestamp,
        "localTimestamp": local_timestamp,
        "serviceUrl": shared.service_url(&team.tenant_id),
        "channelId": "msteams",
        "from": {
            "id": user_id,
            "name": by.name,
            "aadObjectId": by.aad_object_id,
        },
        "conversation": {
            "isGroup": true,
            "conversationType": "channel",
            "tenantId": team.tenant_id,
            "id": team_id,
            "name": "General",
        },
        "recipient": { "id": bot_id, "name": BOT_NAME },
        "entities": client_info(None),
        "channelData": {
            "settings": { "selectedChannel": { "id": team_id } },
            "team": { "aadGroupId": team.aad_group_id, "name": team.name, "id": team_id },
            "tenant": { "id": team.tenant_id },
        },
        "locale": "en-US",
    })
}

pub(crate) fn team_install_activity(shared: &Shared, t: &TeamsTeam, by: &TeamsUser) -> Value {
    let mut activity = team(shared, t, by, "installationUpdate");
    activity["action"] = json!("add");
    let channel = activity["conversation"]["id"].clone();
    activity["channelData"]["channel"] = json!({ "id": channel });
    activity["channelData"]["source"] = json!({ "name": "message" });
    activity
}

pub(crate) fn team_uninstall_activity(shared: &Shared, t: &TeamsTeam, by: &TeamsUser) -> Value {
    let mut activity = team(shared, t, by, "installationUpdate");
    activity["action"] = json!("remove");
    let channel = activity["conversation"]["id"].clone();
    activity["channelData"]["channel"] = json!({ "id": channel });
    activity
}

pub(crate) fn team_bot_added_activity(shared: &Shared, t: &TeamsTeam, by: &TeamsUser) -> Value {
    let mut activity = team(shared, t, by, "conversationUpdate");
    activity["membersAdded"] = json!([{ "id": format!("28:{}", shared.app_id) }]);
    activity["channelData"]["eventType"] = json!("teamMemberAdded");
    activity
}

pub(crate) fn team_bot_removed_activity(shared: &Shared, t: &TeamsTeam, by: &TeamsUser) -> Value {
    let mut activity = team(shared, t, by, "conversationUpdate");
    activity["membersRemoved"] = json!([{ "id": format!("28:{}", shared.app_id) }]);
    activity["channelData"]["eventType"] = json!("teamMemberRemoved");
    activity
}

/// The `Authorization` value Teams would send with `activity`, spoiled as `variant` says.
pub(crate) fn authorization(
    shared: &Shared,
    activity: &Value,
    variant: TokenVariant,
) -> Option<String> {
    let service_url = activity
        .get("serviceUrl")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/teams/", shared.base_url));
    shared
        .keys
        .inbound_token(&shared.issuer, &shared.app_id, &service_url, variant)
        .map(|token| format!("Bearer {token}"))
}

/// POSTs `activity` to the bot endpoint as Teams does; returns the bot's status and body.
pub(crate) async fn post_activity(
    shared: &Shared,
    activity: &Value,
    variant: TokenVariant,
) -> anyhow::Result<(u16, String)> {
    let endpoint = shared.settings().bot_endpoint.context(
        "no bot endpoint is configured (EmulatorConfig::bot_endpoint or set_bot_endpoint)",
    )?;
    lock(&shared.directory).apply_inbound(activity);
    Counters::bump(&shared.recorder.counters.activities_to_bot);

    let conversation_id = activity
        .pointer("/conversation/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let tenant_id = activity
        .pointer("/conversation/tenantId")
        .or_else(|| activity.pointer("/channelData/tenant/id"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut request = shared
        .http
        .post(&endpoint)
        .header(
            header::USER_AGENT,
            "Microsoft-SkypeBotApi (Microsoft-BotFramework 3.0)",
        )
        .header("x-ms-conversation-id", conversation_id.as_str())
        .header("x-ms-tenant-id", tenant_id)
        .json(activity);
    if let Some(authorization) = authorization(shared, activity, variant) {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("posting the activity to the bot at {endpoint}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the bot's answer from {endpoint}"))?;
    let kind = activity
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    tracing::debug!(%endpoint, status, kind, "activity posted to the bot");
    lock(&shared.directory).keep_inbound(&conversation_id, activity, status);
    shared.publish(Event::ToBot {
        conversation_id,
        activity: activity.clone(),
        status: Some(status),
    });
    Ok((status, body))
}

/// Installs the app for the user: `installationUpdate add`, then the bot joining the chat.
pub(crate) async fn install(shared: &Shared, user: &TeamsUser) -> anyhow::Result<InstallOutcome> {
    let installation = install_activity(shared, user);
    let (installation_update_status, _) =
        post_activity(shared, &installation, TokenVariant::Valid).await?;
    let added = bot_added_activity(shared, user);
    let (conversation_update_status, _) =
        post_activity(shared, &added, TokenVariant::Valid).await?;
    Ok(InstallOutcome {
        conversation_id: lock(&shared.directory).personal_conversation_id(user),
        installation_update_status,
        conversation_update_status,
    })
}

/// Installs the app in a team, as `by`: `installationUpdate add`, then `teamMemberAdded`.
pub(crate) async fn install_team(
    shared: &Shared,
    t: &TeamsTeam,
    by: &TeamsUser,
) -> anyhow::Result<InstallOutcome> {
    let installation = team_install_activity(shared, t, by);
    let (installation_update_status, _) =
        post_activity(shared, &installation, TokenVariant::Valid).await?;
    let added = team_bot_added_activity(shared, t, by);
    let (conversation_update_status, _) =
        post_activity(shared, &added, TokenVariant::Valid).await?;
    Ok(InstallOutcome {
        conversation_id: crate::ids::team_id(&t.tenant_id, &t.aad_group_id),
        installation_update_status,
        conversation_update_status,
    })
}

/// Removes the app from a team, as `by`: `installationUpdate remove`, then `teamMemberRemoved`;
/// returns the bot's status for the first.
pub(crate) async fn uninstall_team(
    shared: &Shared,
    t: &TeamsTeam,
    by: &TeamsUser,
) -> anyhow::Result<u16> {
    let removal = team_uninstall_activity(shared, t, by);
    let (status, _) = post_activity(shared, &removal, TokenVariant::Valid).await?;
    let removed = team_bot_removed_activity(shared, t, by);
    post_activity(shared, &removed, TokenVariant::Valid).await?;
    Ok(status)
}

/// Refuses a user without a personal chat with the bot (they never acted in Teams).
fn require_chat(shared: &Shared, user: &TeamsUser) -> anyhow::Result<()> {
    if lock(&shared.directory).knows_personal(user) {
        return Ok(());
    }
    Err(NotFound(format!(
        "user {} of tenant {} has no chat with the bot: install the app for them first",
        user.aad_object_id, user.tenant_id
    ))
    .into())
}

/// Refuses a message that is not (or no longer) in the user's chat: there is nothing to press.
fn require_message(shared: &Shared, user: &TeamsUser, message_id: &str) -> anyhow::Result<()> {
    require_chat(shared, user)?;
    if lock(&shared.directory)
        .personal_activity_mut(user, message_id)
        .is_some()
    {
        return Ok(());
    }
    Err(NotFound(format!(
        "the bot has no message {message_id} in the chat of user {} of tenant {}",
        user.aad_object_id, user.tenant_id
    ))
    .into())
}

/// A response body as JSON: `null` when empty, the text itself when not JSON.
fn parse_body(body: &str) -> Value {
    if body.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

/// How Teams takes the bot's answer to `adaptiveCard/action`: a card (with `statusCode` 200 in
/// a successful response) replaces the one pressed; a message answer's text, or an error's
/// message, is shown under it.
fn read_card_answer(verb: &str, answer: &InvokeAnswer) -> (CardAnswer, Option<Value>) {
    let body = &answer.body;
    let status_code = body
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok());
    let kind = body.get("type").and_then(Value::as_str).map(str::to_owned);
    let succeeded = (200..300).contains(&answer.status) && status_code == Some(200);
    let value = body.get("value");
    let (card, text) = match kind.as_deref() {
        Some(ADAPTIVE_CARD) if succeeded => (value.filter(|card| card.is_object()).cloned(), None),
        Some(MESSAGE_ANSWER) if succeeded => (None, value.and_then(Value::as_str)),
        _ => (
            None,
            value
                .and_then(|value| value.get("message"))
                .and_then(Value::as_str),
        ),
    };
    let answer = CardAnswer {
        verb: verb.to_owned(),
        status: status_code.unwrap_or(answer.status),
        kind,
        text: text.map(str::to_owned),
        at: OffsetDateTime::now_utc(),
    };
    (answer, card)
}

/// Keeps the bot's answer on the message whose card was pressed, and tells the page.
fn apply_card_answer(
    shared: &Shared,
    user: &TeamsUser,
    message_id: &str,
    verb: &str,
    answer: &InvokeAnswer,
) {
    let (card_answer, card) = read_card_answer(verb, answer);
    let stored = {
        let mut directory = lock(&shared.directory);
        let conversation_id = directory.personal_conversation_id(user);
        let Some(stored) = directory.personal_activity_mut(user, message_id) else {
            return;
        };
        let replaced = card.map(|card| {
            let mut activity = stored.activity();
            replace_card(&mut activity, card);
            activity
        });
        stored.answer_card(replaced.as_ref(), card_answer);
        stored.received(&conversation_id)
    };
    shared.publish(Event::Activity {
        change: "answered",
        conversation_id: stored.conversation_id.clone(),
        activity: Box::new(stored),
    });
}

/// Puts `card` in place of the activity's (first) Adaptive Card, or adds it.
fn replace_card(activity: &mut Value, card: Value) {
    let attachment = json!({ "contentType": ADAPTIVE_CARD, "content": card });
    let Some(fields) = activity.as_object_mut() else {
        return;
    };
    let attachments = fields
        .entry("attachments")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !attachments.is_array() {
        *attachments = Value::Array(Vec::new());
    }
    let Some(list) = attachments.as_array_mut() else {
        return;
    };
    match list
        .iter_mut()
        .find(|existing| existing["contentType"] == ADAPTIVE_CARD)
    {
        Some(existing) => existing["content"] = attachment["content"].clone(),
        None => list.push(attachment),
    }
}

/// The user presses an `Action.Execute` on the card of the bot's message `reply_to_id`: posts
/// the `invoke` and returns the bot's answer, which Teams applies to the message as the user
/// sees it (see [`read_card_answer`]).
pub(crate) async fn press_card_action(
    shared: &Shared,
    user: &TeamsUser,
    reply_to_id: &str,
    verb: &str,
    data: Value,
) -> anyhow::Result<InvokeAnswer> {
    require_message(shared, user, reply_to_id)?;
    let activity = card_action_activity(shared, user, reply_to_id, verb, data);
    let (status, body) = post_activity(shared, &activity, TokenVariant::Valid).await?;
    let answer = InvokeAnswer {
        status,
        body: parse_body(&body),
    };
    apply_card_answer(shared, user, reply_to_id, verb, &answer);
    Ok(answer)
}

/// The user presses an `Action.Submit` on the card of the bot's message `reply_to_id`;
/// returns the bot's status (nothing the bot answers changes the card).
pub(crate) async fn submit_card(
    shared: &Shared,
    user: &TeamsUser,
    reply_to_id: &str,
    data: Value,
) -> anyhow::Result<u16> {
    require_message(shared, user, reply_to_id)?;
    let activity = card_submit_activity(shared, user, reply_to_id, data);
    Ok(post_activity(shared, &activity, TokenVariant::Valid)
        .await?
        .0)
}

/// The user has read their chat with the bot up to `last_read_message_id`; returns the bot's
/// status.
pub(crate) async fn send_read_receipt(
    shared: &Shared,
    user: &TeamsUser,
    last_read_message_id: &str,
) -> anyhow::Result<u16> {
    require_chat(shared, user)?;
    let activity = read_receipt_activity(shared, user, last_read_message_id);
    Ok(post_activity(shared, &activity, TokenVariant::Valid)
        .await?
        .0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: Value) -> InvokeAnswer {
        InvokeAnswer { status, body }
    }

    #[test]
    fn a_card_replaces_the_adaptive_card_or_joins_the_attachments() {
        let mut activity = json!({ "attachments": [
            { "contentType": "text/html", "content": "<p>hi</p>" },
            { "contentType": ADAPTIVE_CARD, "content": { "body": [] } },
        ]});
        replace_card(&mut activity, json!({ "v": 2 }));
        assert_eq!(activity["attachments"][1]["content"], json!({ "v": 2 }));
        assert_eq!(activity["attachments"].as_array().unwrap().len(), 2);

        let mut plain = json!({ "text": "hi" });
        replace_card(&mut plain, json!({ "v": 2 }));
        assert_eq!(
            plain["attachments"],
            json!([{ "contentType": ADAPTIVE_CARD, "content": { "v": 2 } }])
        );
    }

    #[test]
    fn teams_reads_the_answer_by_its_status_code_and_type() {
        let card = json!({ "statusCode": 200, "type": ADAPTIVE_CARD, "value": { "v": 2 } });
        let (kept, replacement) = read_card_answer("go", &answer(200, card.clone()));
        assert_eq!(replacement, Some(json!({ "v": 2 })));
        assert_eq!((kept.status, kept.text), (200, None));
        // A failed HTTP response replaces nothing, whatever its body says.
        assert_eq!(read_card_answer("go", &answer(500, card)).1, None);

        let text = json!({ "statusCode": 200, "type": MESSAGE_ANSWER, "value": "Done" });
        let (kept, replacement) = read_card_answer("go", &answer(200, text));
        assert_eq!((kept.text.as_deref(), replacement), (Some("Done"), None));

        let error = json!({ "statusCode": 400, "type": "application/vnd.microsoft.error",
                            "value": { "code": "BadRequest", "message": "No" } });
        let (kept, _) = read_card_answer("go", &answer(400, error));
        assert_eq!((kept.status, kept.text.as_deref()), (400, Some("No")));

        let (kept, replacement) = read_card_answer("go", &answer(200, Value::Null));
        assert_eq!(
            (kept.status, kept.kind, kept.text, replacement),
            (200, None, None, None)
        );
        assert_eq!(parse_body(""), Value::Null);
        assert_eq!(parse_body("oops"), json!("oops"));
    }
}
