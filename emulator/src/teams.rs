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

use crate::directory::{InboundActivity, TeamsTeam, TeamsUser};
use crate::keys::TokenVariant;
use crate::recorder::{Counters, lock};
use crate::state::{Event, Shared};

/// The bot's display name in activities (Teams takes it from the app manifest).
const BOT_NAME: &str = "Herald";

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

fn client_info() -> Value {
    json!([{
        "type": "clientInfo",
        "locale": "en-US",
        "country": "US",
        "platform": "Web",
        "timezone": "Etc/UTC"
    }])
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
        "entities": client_info(),
        "channelData": { "tenant": { "id": user.tenant_id } },
        "locale": "en-US",
        "localTimezone": "Etc/UTC",
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

pub(crate) fn message_activity(shared: &Shared, user: &TeamsUser, text: &str) -> Value {
    let mut activity = personal(shared, user, "message", shared.ids.next());
    activity["text"] = json!(text);
    activity["textFormat"] = json!("plain");
    // Teams also sends what the user typed as HTML.
    activity["attachments"] = json!([{
        "contentType": "text/html",
        "content": format!("<p>{}</p>", html_escape(text)),
    }]);
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
        "entities": client_info(),
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
    lock(&shared.directory).record_inbound(
        &conversation_id,
        InboundActivity {
            at: OffsetDateTime::now_utc(),
            activity: activity.clone(),
            status,
        },
    );
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
        conversation_id: crate::directory::team_id(&t.tenant_id, &t.aad_group_id),
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
