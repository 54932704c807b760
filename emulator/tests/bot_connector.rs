//! The Bot Connector from the bot's side: a user installs, the bot writes to them, edits and
//! deletes, and meets Teams' refusals — unknown conversations, bad payloads, oversized
//! messages, and a user who uninstalled.

mod common;

use common::{Answer, bot_token, call, config, encoded, send_text, start_with_bot};
use herald_emulator::{EmulatorConfig, Operation, TeamsTeam, TeamsUser};
use reqwest::Method;
use serde_json::{Value, json};

fn no_limits() -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        ..config()
    }
}

#[tokio::test]
async fn install_then_send_update_and_delete() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::new(
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "7faf8ab2-3d56-4244-b585-20c8a42ed2b8",
        "Megan Bowen",
    );

    let outcome = emulator.install(&user).await.unwrap();
    assert_eq!(outcome.installation_update_status, 200);
    assert_eq!(outcome.conversation_update_status, 200);
    assert_eq!(
        outcome.conversation_id,
        emulator.personal_conversation_id(&user)
    );
    let kinds: Vec<_> = bot
        .deliveries()
        .iter()
        .map(|d| d.activity["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["installationUpdate", "conversationUpdate"]);

    // The bot answers in the conversation, using the serviceUrl the activity carried.
    let install = &bot.deliveries()[0].activity;
    let service_url = install["serviceUrl"].as_str().unwrap().to_owned();
    assert_eq!(service_url, emulator.service_url(&user.tenant_id));
    let conversation = install["conversation"]["id"].as_str().unwrap().to_owned();
    let token = bot_token(&emulator).await;

    let url = format!("{service_url}v3/conversations/{conversation}/activities");
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"type": "message", "text": "Welcome to Herald"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let stored = emulator.activities(&conversation);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].text.as_deref(), Some("Welcome to Herald"));
    assert_eq!(stored[0].activity["type"], "message");
    assert_eq!(
        stored[0].traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // The same through the HTTP inspection API.
    let listed: Value = reqwest::get(format!(
        "{}/_emulator/conversations/{}/activities",
        emulator.base_url(),
        encoded(&conversation)
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["text"], "Welcome to Herald");

    // Update, then delete.
    let activity_url = format!("{url}/{id}");
    let update = json!({"type": "message", "id": id, "text": "Welcome to Herald (edited)"});
    let answer = call(Method::PUT, &activity_url, Some(&token), Some(&update)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["id"], id.as_str());
    let stored = emulator.activities(&conversation);
    assert_eq!(
        stored[0].text.as_deref(),
        Some("Welcome to Herald (edited)")
    );
    assert_eq!(stored[0].edits.len(), 1);
    assert_eq!(stored[0].edits[0]["text"], "Welcome to Herald");

    let answer = call(Method::DELETE, &activity_url, Some(&token), None).await;
    assert_eq!(answer.status, 200);
    assert!(emulator.activities(&conversation)[0].deleted);

    // A deleted or unknown activity is not found.
    let answer = call(Method::DELETE, &activity_url, Some(&token), None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.code(), Some("ActivityNotFoundInConversation"));
    let answer = call(
        Method::PUT,
        &format!("{url}/999"),
        Some(&token),
        Some(&update),
    )
    .await;
    assert_eq!(answer.code(), Some("ActivityNotFoundInConversation"));

    // A reply in the thread of the first message.
    let reply = json!({"type": "message", "text": "a reply", "replyToId": id});
    let answer = call(Method::POST, &activity_url, Some(&token), Some(&reply)).await;
    assert_eq!(answer.status, 201);
    assert_eq!(emulator.activities(&conversation).len(), 2);

    let operations: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation != Operation::Token)
        .map(|r| (r.operation, r.status))
        .collect();
    assert_eq!(
        operations,
        [
            (Operation::SendToConversation, 201),
            (Operation::UpdateActivity, 200),
            (Operation::DeleteActivity, 200),
            (Operation::DeleteActivity, 404),
            (Operation::UpdateActivity, 404),
            (Operation::ReplyToActivity, 201),
        ]
    );
    let first = &emulator.requests()[1];
    assert_eq!(first.tenant_id.as_deref(), Some(user.tenant_id.as_str()));
    assert_eq!(
        first.conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    assert!(first.had_authorization);
    assert!(first.traceparent.is_some());
}

#[tokio::test]
async fn raw_and_percent_encoded_ids_address_the_same_conversation() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::random();
    let conversation = emulator.install(&user).await.unwrap().conversation_id;
    let token = bot_token(&emulator).await;

    for service_url in [
        emulator.service_url(&user.tenant_id),
        emulator.default_service_url(),
        format!("{}/", emulator.base_url()),
    ] {
        let raw = send_text(&service_url, &conversation, &token, "raw").await;
        assert_eq!(raw.status, 201, "{service_url}: {raw:?}");
        let encoded = send_text(&service_url, &encoded(&conversation), &token, "encoded").await;
        assert_eq!(encoded.status, 201, "{service_url}: {encoded:?}");
    }
    assert_eq!(emulator.activities(&conversation).len(), 6);
    // The log keeps the path as sent and the id decoded.
    let requests = emulator.requests();
    let encoded_request = &requests[2];
    assert!(
        encoded_request.path.contains("a%3A1"),
        "{}",
        encoded_request.path
    );
    assert_eq!(
        encoded_request.conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    // Requests on the default serviceUrl still know the tenant, from the conversation.
    assert_eq!(
        requests[3].tenant_id.as_deref(),
        Some(user.tenant_id.as_str())
    );
}

#[tokio::test]
async fn teams_refusals_have_teams_bodies() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::random();
    let conversation = emulator.install(&user).await.unwrap().conversation_id;
    let token = bot_token(&emulator).await;
    let service_url = emulator.service_url(&user.tenant_id);

    // Unknown conversation.
    let answer = send_text(&service_url, "a:1unknown", &token, "hello?").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.code(), Some("ConversationNotFound"));
    assert!(answer.body["error"]["message"].is_string());

    // Bad payloads.
    let url = format!("{service_url}v3/conversations/{conversation}/activities");
    let bad = |body: &'static str| {
        let url = url.clone();
        let token = token.clone();
        async move {
            let response = reqwest::Client::new()
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["error"]["code"].as_str().unwrap().to_owned())
        }
    };
    assert_eq!(bad("not json").await, (400, "BadArgument".to_owned()));
    assert_eq!(
        bad(r#"{"text":"no type"}"#).await,
        (400, "BadArgument".to_owned())
    );
    assert_eq!(
        bad(r#"{"type":"message"}"#).await,
        (400, "BadArgument".to_owned())
    );
    assert_eq!(
        bad(r#"{"type":"message","text":""}"#).await,
        (400, "BadArgument".to_owned())
    );
    // Attachments alone are a message.
    let card = json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", "version": "1.5", "body": []}}]});
    assert_eq!(
        call(Method::POST, &url, Some(&token), Some(&card))
            .await
            .status,
        201
    );

    // Oversized: just under the limit passes, over it is 413.
    let envelope = json!({"type": "message", "text": ""}).to_string().len();
    let fits = json!({"type": "message", "text": "x".repeat(28_000 - envelope)});
    assert_eq!(fits.to_string().len(), 28_000);
    assert_eq!(
        call(Method::POST, &url, Some(&token), Some(&fits))
            .await
            .status,
        201
    );
    let big = json!({"type": "message", "text": "x".repeat(28_001 - envelope)});
    let answer: Answer = call(Method::POST, &url, Some(&token), Some(&big)).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.code(), Some("MessageSizeTooBig"));
    let huge = json!({"type": "message", "text": "x".repeat(3_000_000)});
    assert_eq!(
        call(Method::POST, &url, Some(&token), Some(&huge))
            .await
            .status,
        413
    );

    // An API the emulator does not serve is a recorded 404.
    let members = format!("{service_url}v3/conversations/{conversation}/members");
    let answer = call(Method::GET, &members, Some(&token), None).await;
    assert_eq!(answer.status, 404);
    let last = emulator.requests().last().unwrap().clone();
    assert_eq!(last.operation, Operation::Other);

    assert_eq!(emulator.activities(&conversation).len(), 2);
    let codes: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter_map(|r| r.error_code)
        .collect();
    assert_eq!(
        codes,
        [
            "ConversationNotFound",
            "BadArgument",
            "BadArgument",
            "BadArgument",
            "BadArgument",
            "MessageSizeTooBig",
            "MessageSizeTooBig",
            "NotFound"
        ]
    );
}

#[tokio::test]
async fn an_uninstalled_user_is_out_of_reach_until_they_install_again() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::random();
    let conversation = emulator.install(&user).await.unwrap().conversation_id;
    let token = bot_token(&emulator).await;
    let service_url = emulator.service_url(&user.tenant_id);
    assert_eq!(
        send_text(&service_url, &conversation, &token, "one")
            .await
            .status,
        201
    );

    assert_eq!(emulator.uninstall(&user).await.unwrap(), 200);
    let removal = bot.deliveries().last().unwrap().activity.clone();
    assert_eq!(removal["type"], "installationUpdate");
    assert_eq!(removal["action"], "remove");

    let answer = send_text(&service_url, &conversation, &token, "two").await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.code(), Some("BotNotInConversationRoster"));

    // Creating the 1:1 chat again does not get around it.
    let create = json!({
        "isGroup": false,
        "bot": {"id": format!("28:{}", common::APP_ID)},
        "members": [{"id": user.aad_object_id}],
        "tenantId": user.tenant_id,
        "channelData": {"tenant": {"id": user.tenant_id}}
    });
    let create_url = format!("{service_url}v3/conversations");
    let answer = call(Method::POST, &create_url, Some(&token), Some(&create)).await;
    assert_eq!(answer.status, 403);

    // A new install revives the same conversation.
    let outcome = emulator.install(&user).await.unwrap();
    assert_eq!(outcome.conversation_id, conversation);
    assert_eq!(
        send_text(&service_url, &conversation, &token, "three")
            .await
            .status,
        201
    );
    let texts: Vec<_> = emulator
        .activities(&conversation)
        .into_iter()
        .filter_map(|a| a.text)
        .collect();
    assert_eq!(texts, ["one", "three"]);
}

#[tokio::test]
async fn the_bot_can_open_a_personal_chat_with_a_known_user() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::random();
    emulator.install(&user).await.unwrap();
    let token = bot_token(&emulator).await;
    let url = format!("{}v3/conversations", emulator.default_service_url());

    for member in [user.aad_object_id.clone(), emulator.user_id(&user)] {
        let create = json!({
            "isGroup": false,
            "bot": {"id": format!("28:{}", common::APP_ID)},
            "members": [{"id": member}],
            "tenantId": user.tenant_id,
            "channelData": {"tenant": {"id": user.tenant_id}}
        });
        let answer = call(Method::POST, &url, Some(&token), Some(&create)).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        assert_eq!(answer.body["id"], emulator.personal_conversation_id(&user));
    }

    // Someone the bot has no way to: Teams does not say whether they exist, only that the
    // bot is not in their roster.
    let stranger = json!({
        "isGroup": false,
        "members": [{"id": uuid::Uuid::new_v4().to_string()}],
        "channelData": {"tenant": {"id": user.tenant_id}}
    });
    let answer = call(Method::POST, &url, Some(&token), Some(&stranger)).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.code(), Some("BotNotInConversationRoster"));

    let creates = emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == Operation::CreateConversation)
        .count();
    assert_eq!(creates, 3);
}

#[tokio::test]
async fn a_team_install_opens_its_channel_and_its_members() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);
    let outcome = emulator.install_team(&team, &installer).await.unwrap();
    assert_eq!(
        outcome.conversation_id,
        emulator.team_conversation_id(&team)
    );
    let added = bot.deliveries()[1].activity.clone();
    assert_eq!(added["channelData"]["eventType"], "teamMemberAdded");
    assert_eq!(
        added["channelData"]["team"]["id"],
        outcome.conversation_id.as_str()
    );
    assert_eq!(added["conversation"]["conversationType"], "channel");

    let token = bot_token(&emulator).await;
    let service_url = emulator.service_url(&team.tenant_id);
    let channel = outcome.conversation_id;

    // A new thread in the channel.
    let create = json!({
        "isGroup": true,
        "channelData": {"channel": {"id": channel}, "tenant": {"id": team.tenant_id}},
        "activity": {"type": "message", "text": "Release 1.2 is out"}
    });
    let answer = call(
        Method::POST,
        &format!("{service_url}v3/conversations"),
        Some(&token),
        Some(&create),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let thread = answer.body["id"].as_str().unwrap().to_owned();
    let first = answer.body["activityId"].as_str().unwrap().to_owned();
    assert_eq!(thread, format!("{channel};messageid={first}"));
    assert_eq!(
        emulator.activities(&thread)[0].text.as_deref(),
        Some("Release 1.2 is out")
    );

    // Replies in the thread, raw and encoded.
    assert_eq!(
        send_text(&service_url, &thread, &token, "details")
            .await
            .status,
        201
    );
    assert_eq!(
        send_text(&service_url, &encoded(&thread), &token, "more")
            .await
            .status,
        201
    );
    assert_eq!(emulator.activities(&thread).len(), 3);
    // A post straight to the channel.
    assert_eq!(
        send_text(&service_url, &channel, &token, "hello team")
            .await
            .status,
        201
    );

    // Team members can be messaged 1:1 without a personal install.
    let member = TeamsUser::random();
    let member = TeamsUser::new(&team.tenant_id, &member.aad_object_id, "Member");
    emulator.add_team_member(&team, &member);
    let create = json!({"members": [{"id": member.aad_object_id}], "channelData": {"tenant": {"id": team.tenant_id}}});
    let answer = call(
        Method::POST,
        &format!("{service_url}v3/conversations"),
        Some(&token),
        Some(&create),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let personal = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        send_text(&service_url, &personal, &token, "hi member")
            .await
            .status,
        201
    );

    // Once removed from the team, the channel is closed.
    emulator.uninstall_team(&team, &installer).await.unwrap();
    let answer = send_text(&service_url, &thread, &token, "after").await;
    assert_eq!(answer.code(), Some("BotNotInConversationRoster"));
    let answer = send_text(&service_url, &channel, &token, "after").await;
    assert_eq!(answer.status, 403);
}
