//! A user presses the buttons of the bot's cards and reads its messages: "Teams" posts the
//! `invoke`, the submit `message` and the read receipt as it does, signed, and applies the
//! bot's answer to an `Action.Execute` to the card the user sees.

mod common;

use common::{Bot, bot_token, call, config, start_with_bot};
use herald_emulator::{Emulator, EmulatorConfig, TeamsUser, TokenVariant};
use reqwest::Method;
use serde_json::{Value, json};

const CARD: &str = "application/vnd.microsoft.card.adaptive";

fn no_limits() -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        ..config()
    }
}

fn card() -> Value {
    json!({
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": [{ "type": "TextBlock", "text": "Build **42** failed" }],
        "actions": [
            {
                "type": "Action.Execute",
                "id": "ack",
                "title": "Acknowledge",
                "verb": "acknowledge",
                "data": { "build": 42 },
            },
            { "type": "Action.Submit", "title": "Snooze", "data": { "snooze": "1h" } },
        ],
    })
}

fn answered_card() -> Value {
    json!({
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": [{ "type": "TextBlock", "text": "Build **42** acknowledged" }],
    })
}

/// The user installs, and the bot sends them a card; returns the chat and the card message's id.
async fn card_sent(emulator: &Emulator, user: &TeamsUser) -> (String, String) {
    let conversation = emulator.install(user).await.unwrap().conversation_id;
    let token = bot_token(emulator).await;
    let url = format!(
        "{}v3/conversations/{conversation}/activities",
        emulator.service_url(&user.tenant_id)
    );
    let message = json!({
        "type": "message",
        "attachments": [{ "contentType": CARD, "content": card() }],
    });
    let sent = call(Method::POST, &url, Some(&token), Some(&message)).await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
    let id = sent.body["id"].as_str().unwrap().to_owned();
    (conversation, id)
}

/// The stored message `id` of `conversation`.
fn stored(emulator: &Emulator, conversation: &str, id: &str) -> herald_emulator::ReceivedActivity {
    emulator
        .activities(conversation)
        .into_iter()
        .find(|stored| stored.id == id)
        .expect("the card message is stored")
}

async fn setup() -> (Emulator, Bot, TeamsUser, String, String) {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let user = TeamsUser::random().in_time_zone("Europe/Berlin");
    let (conversation, id) = card_sent(&emulator, &user).await;
    (emulator, bot, user, conversation, id)
}

#[tokio::test]
async fn an_execute_press_reaches_the_bot_as_teams_sends_it_and_its_card_replaces_the_old() {
    let (emulator, bot, user, conversation, id) = setup().await;
    let reply = json!({ "statusCode": 200, "type": CARD, "value": answered_card() });
    bot.answer_invokes_with(200, reply.clone());

    let answer = emulator
        .press_card_action(&user, &id, "acknowledge", json!({ "build": 42 }))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, reply);

    // What the bot received: the captured invoke's shape, in the user's chat, signed.
    let delivery = bot.last();
    delivery.verdict.clone().unwrap();
    let invoke = &delivery.activity;
    assert_eq!(invoke["type"], "invoke");
    assert_eq!(invoke["name"], "adaptiveCard/action");
    assert!(
        invoke["id"].as_str().unwrap().starts_with("f:"),
        "{invoke:#}"
    );
    assert_eq!(invoke["replyToId"], id.as_str());
    assert_eq!(
        invoke["value"],
        json!({
            "action": {
                "type": "Action.Execute",
                "id": "ack",
                "title": "Acknowledge",
                "verb": "acknowledge",
                "data": { "build": 42 },
            },
            "trigger": "manual",
        })
    );
    assert_eq!(invoke["conversation"]["id"], conversation.as_str());
    assert_eq!(invoke["conversation"]["conversationType"], "personal");
    assert_eq!(invoke["from"]["aadObjectId"], user.aad_object_id.as_str());
    assert_eq!(invoke["localTimezone"], "Europe/Berlin");
    assert_eq!(
        delivery.headers["x-ms-conversation-id"],
        conversation.as_str()
    );

    // The user now sees the answered card in place of the old one.
    let message = stored(&emulator, &conversation, &id);
    assert_eq!(message.activity["attachments"][0]["contentType"], CARD);
    assert_eq!(
        message.activity["attachments"][0]["content"],
        answered_card()
    );
    assert_eq!(message.activity["attachments"].as_array().unwrap().len(), 1);
    let kept = message.card_answer.expect("the answer is kept");
    assert_eq!(
        (
            kept.verb.as_str(),
            kept.status,
            kept.kind.as_deref(),
            kept.text
        ),
        ("acknowledge", 200, Some(CARD), None)
    );
    assert!(message.edits.is_empty(), "not an edit by the bot");

    // Teams keeps what it posted, with the bot's status.
    let url = format!(
        "{}/_emulator/conversations/{}/inbound",
        emulator.base_url(),
        common::encoded(&conversation)
    );
    let inbound = call(Method::GET, &url, None, None).await.body;
    let last = inbound.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["activity"]["type"], "invoke");
    assert_eq!(last["status"], 200);
}

#[tokio::test]
async fn a_text_answer_is_kept_under_the_card_and_an_error_too() {
    let (emulator, bot, user, conversation, id) = setup().await;

    bot.answer_invokes_with(
        200,
        json!({
            "statusCode": 200,
            "type": "application/vnd.microsoft.activity.message",
            "value": "Acknowledged, thanks!",
        }),
    );
    let answer = emulator
        .press_card_action(&user, &id, "acknowledge", json!({ "build": 42 }))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let message = stored(&emulator, &conversation, &id);
    assert_eq!(message.activity["attachments"][0]["content"], card());
    let kept = message.card_answer.unwrap();
    assert_eq!(kept.text.as_deref(), Some("Acknowledged, thanks!"));
    assert_eq!(kept.status, 200);

    // botbuilder puts the answer's statusCode in the HTTP status too.
    bot.answer_invokes_with(
        400,
        json!({
            "statusCode": 400,
            "type": "application/vnd.microsoft.error",
            "value": { "code": "BadRequest", "message": "Unknown build" },
        }),
    );
    let answer = emulator
        .press_card_action(&user, &id, "acknowledge", json!({ "build": 43 }))
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["value"]["code"], "BadRequest");
    let message = stored(&emulator, &conversation, &id);
    assert_eq!(message.activity["attachments"][0]["content"], card());
    let kept = message.card_answer.unwrap();
    assert_eq!(kept.status, 400);
    assert_eq!(kept.text.as_deref(), Some("Unknown build"));

    // A card with a failing statusCode does not replace anything.
    bot.answer_invokes_with(
        200,
        json!({ "statusCode": 500, "type": CARD, "value": answered_card() }),
    );
    emulator
        .press_card_action(&user, &id, "acknowledge", json!({}))
        .await
        .unwrap();
    let message = stored(&emulator, &conversation, &id);
    assert_eq!(message.activity["attachments"][0]["content"], card());
    assert_eq!(message.card_answer.unwrap().status, 500);
}

#[tokio::test]
async fn a_bot_that_answers_nothing_gives_an_empty_answer() {
    let (emulator, _bot, user, conversation, id) = setup().await;
    let answer = emulator
        .press_card_action(&user, &id, "acknowledge", json!({}))
        .await
        .unwrap();
    assert_eq!((answer.status, answer.body), (200, Value::Null));
    let kept = stored(&emulator, &conversation, &id).card_answer.unwrap();
    assert_eq!((kept.kind, kept.text), (None, None));
}

#[tokio::test]
async fn a_submit_arrives_as_a_message_with_the_data_as_value() {
    let (emulator, bot, user, conversation, id) = setup().await;
    let status = emulator
        .submit_card(&user, &id, json!({ "snooze": "1h" }))
        .await
        .unwrap();
    assert_eq!(status, 200);

    let delivery = bot.last();
    delivery.verdict.clone().unwrap();
    let message = &delivery.activity;
    assert_eq!(message["type"], "message");
    assert_eq!(message["text"], "");
    assert_eq!(message["value"], json!({ "snooze": "1h" }));
    assert_eq!(message["replyToId"], id.as_str());
    assert_eq!(message["conversation"]["id"], conversation.as_str());
    assert_eq!(message["from"]["aadObjectId"], user.aad_object_id.as_str());

    // Nothing the bot answers to a submit changes the card.
    let stored = stored(&emulator, &conversation, &id);
    assert_eq!(stored.activity["attachments"][0]["content"], card());
    assert!(stored.card_answer.is_none());
}

#[tokio::test]
async fn a_read_receipt_names_the_last_message_read() {
    let (emulator, bot, user, conversation, id) = setup().await;
    let status = emulator.send_read_receipt(&user, &id).await.unwrap();
    assert_eq!(status, 200);

    let delivery = bot.last();
    delivery.verdict.clone().unwrap();
    let event = &delivery.activity;
    assert_eq!(event["type"], "event");
    assert_eq!(event["name"], "application/vnd.microsoft.readReceipt");
    assert_eq!(event["value"], json!({ "lastReadMessageId": id }));
    assert_eq!(event["conversation"]["id"], conversation.as_str());
    assert_eq!(event["conversation"]["conversationType"], "personal");
    assert!(event["id"].as_str().unwrap().starts_with("f:"));
}

#[tokio::test]
async fn built_activities_can_be_posted_with_a_spoiled_token() {
    let (emulator, bot, user, _conversation, id) = setup().await;
    bot.answer_invokes_with(200, json!({ "statusCode": 200 }));
    let invoke = emulator.card_action_activity(&user, &id, "acknowledge", json!({}));
    // The title and id come from the stored card.
    assert_eq!(invoke["value"]["action"]["title"], "Acknowledge");
    let (status, _) = emulator
        .post_activity(&invoke, TokenVariant::WrongIssuer)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let receipt = emulator.read_receipt_activity(&user, &id);
    let (status, _) = emulator
        .post_activity(&receipt, TokenVariant::Expired)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert!(
        bot.deliveries()
            .iter()
            .rev()
            .take(2)
            .all(|d| d.verdict.is_err())
    );
}

#[tokio::test]
async fn nobody_presses_a_card_that_is_not_there() {
    let (emulator, _bot, user, _conversation, id) = setup().await;
    let stranger = TeamsUser::random();
    let err = emulator
        .press_card_action(&stranger, &id, "acknowledge", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no chat with the bot"), "{err:#}");
    assert!(emulator.send_read_receipt(&stranger, &id).await.is_err());
    let err = emulator
        .submit_card(&user, "1234", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no message 1234"), "{err:#}");
}

async fn post(emulator: &Emulator, route: &str, body: Value) -> (u16, Value) {
    let url = format!("{}/_emulator/teams/{route}", emulator.base_url());
    let answer = call(Method::POST, &url, None, Some(&body)).await;
    (answer.status, answer.body)
}

#[tokio::test]
async fn the_inspection_api_presses_submits_and_reads() {
    let (emulator, bot, user, conversation, id) = setup().await;
    let who = |extra: Value| {
        let mut body = json!({ "tenantId": user.tenant_id, "aadObjectId": user.aad_object_id });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    bot.answer_invokes_with(
        200,
        json!({ "statusCode": 200, "type": CARD, "value": answered_card() }),
    );

    let (status, body) = post(
        &emulator,
        "card-action",
        who(json!({ "replyToId": id, "verb": "acknowledge", "data": { "build": 42 } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200);
    assert_eq!(body["body"]["value"], answered_card());
    assert_eq!(
        bot.last().activity["value"]["action"]["data"],
        json!({ "build": 42 })
    );

    // The page reads the answered card and the kept answer from the activities.
    let url = format!(
        "{}/_emulator/conversations/{}/activities",
        emulator.base_url(),
        common::encoded(&conversation)
    );
    let listed = call(Method::GET, &url, None, None).await.body;
    assert_eq!(
        listed[0]["activity"]["attachments"][0]["content"],
        answered_card()
    );
    assert_eq!(listed[0]["cardAnswer"]["type"], CARD);
    assert_eq!(listed[0]["cardAnswer"]["verb"], "acknowledge");

    let (status, body) = post(
        &emulator,
        "card-submit",
        who(json!({ "replyToId": id, "data": { "snooze": "1h" } })),
    )
    .await;
    assert_eq!((status, body), (200, json!({ "status": 200 })));
    assert_eq!(bot.last().activity["value"], json!({ "snooze": "1h" }));

    let (status, body) = post(
        &emulator,
        "read-receipt",
        who(json!({ "lastReadMessageId": id })),
    )
    .await;
    assert_eq!((status, body), (200, json!({ "status": 200 })));
    assert_eq!(
        bot.last().activity["value"]["lastReadMessageId"],
        id.as_str()
    );

    // Unknown users and messages are refused, as JSON errors.
    let stranger = TeamsUser::random();
    for (route, body) in [
        (
            "card-action",
            json!({ "replyToId": id, "verb": "acknowledge" }),
        ),
        ("card-submit", json!({ "replyToId": id })),
        ("read-receipt", json!({ "lastReadMessageId": id })),
    ] {
        let mut body = body;
        body["tenantId"] = json!(stranger.tenant_id);
        body["aadObjectId"] = json!(stranger.aad_object_id);
        let (status, answer) = post(&emulator, route, body).await;
        assert_eq!(status, 404, "{route}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("unknown user"));
    }
    let (status, answer) = post(
        &emulator,
        "card-action",
        who(json!({ "replyToId": "1234", "verb": "acknowledge" })),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no message 1234")
    );
}
