//! `/v1/notifications` as another service uses it: send to a user, a chat or a channel, ask
//! what happened, cancel, edit, retract, and never get two messages for one request.

use std::time::Duration;

use herald_emulator::{TeamsTeam, TeamsUser};
use herald_tests::{StackOptions, TestStack, holds_for, wait_until};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

async fn stack() -> TestStack {
    // The install greetings' reminders stay out of the way.
    TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
}

/// A team in a fresh tenant with the app installed in it, and the user who installed it.
async fn team_with_app(stack: &TestStack) -> (TeamsUser, TeamsTeam) {
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);
    stack
        .emulator
        .install_team(&team, &installer)
        .await
        .unwrap();
    (installer, team)
}

fn to_user(user: &TeamsUser) -> Value {
    json!({"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}})
}

fn at(offset: Duration) -> String {
    (OffsetDateTime::now_utc() + offset)
        .format(&Rfc3339)
        .unwrap()
}

fn texts(stack: &TestStack, conversation: &str) -> Vec<String> {
    stack
        .emulator
        .activities(conversation)
        .into_iter()
        .filter_map(|a| a.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_is_accepted_delivered_and_its_story_told() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let api = stack.api();
    let (status, accepted) =
        api.create(&json!({"to": to_user(&user), "message": {"text": "Build **42** is green", "textFormat": "markdown"}}), None).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert!(
        matches!(accepted["status"].as_str(), Some("queued")),
        "{accepted}"
    );

    let record = api.wait_for_status(&id, "delivered").await;
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["conversationId"], conversation);
    assert_eq!(record["to"], to_user(&user));
    let sent = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .find(|a| a.id == record["activityId"])
        .unwrap();
    assert_eq!(sent.activity["textFormat"], "markdown");
    for field in [
        "id",
        "status",
        "attempts",
        "to",
        "conversationId",
        "activityId",
        "deliverAt",
        "createdAt",
        "updatedAt",
        "lastError",
    ] {
        assert!(record.get(field).is_some(), "GET lacks {field}: {record}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_configured_key_opens_the_api_and_none_configured_opens_nothing() {
    let stack = stack().await;
    let body =
        json!({"to": {"user": {"tenantId": "t", "aadObjectId": "u"}}, "message": {"text": "hi"}});
    assert_eq!(stack.api().without_key().create(&body, None).await.0, 401);
    assert_eq!(
        stack.api().with_key("wrong").create(&body, None).await.0,
        401
    );
    assert_eq!(
        stack.api().with_key("other-key").get("nothing").await.0,
        404,
        "any configured key works"
    );
    drop(stack);

    let closed =
        TestStack::start_with(StackOptions::default().with_env("HERALD_API_KEYS", "")).await;
    let (status, problem) = closed.api().create(&body, None).await;
    assert_eq!(status, 401);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no API keys are configured"),
        "{problem}"
    );
    closed.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repeating_a_request_answers_the_same_job_and_sends_one_message() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let api = stack.api();
    let body = json!({"to": to_user(&user), "message": {"text": "once by key"}});
    let (first, a) = api.create(&body, Some("order-1234-shipped")).await;
    let (again, b) = api.create(&body, Some("order-1234-shipped")).await;
    assert_eq!((first, again), (202, 202));
    assert_eq!(a["id"], b["id"]);
    let (status, problem) = api
        .create(
            &json!({"to": to_user(&user), "message": {"text": "something else"}}),
            Some("order-1234-shipped"),
        )
        .await;
    assert_eq!(status, 422, "{problem}");

    let with_id =
        json!({"id": "invoice-77", "to": to_user(&user), "message": {"text": "once by id"}});
    assert_eq!(api.create(&with_id, None).await.0, 202);
    assert_eq!(api.create(&with_id, None).await.1["id"], "invoice-77");
    let (status, problem) = api
        .create(
            &json!({"id": "invoice-77", "to": to_user(&user), "message": {"text": "other"}}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{problem}");

    api.wait_for_status(a["id"].as_str().unwrap(), "delivered")
        .await;
    api.wait_for_status("invoice-77", "delivered").await;
    let once = holds_for(Duration::from_secs(2), || async {
        let t = texts(&stack, &conversation);
        t.iter().filter(|t| *t == "once by key").count() == 1
            && t.iter().filter(|t| *t == "once by id").count() == 1
    })
    .await;
    assert!(
        once,
        "a repeated request sent a second message: {:?}",
        texts(&stack, &conversation)
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_the_due_time_has_passed_still_answers_the_same_job() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let api = stack.api();
    let body = json!({"to": to_user(&user), "message": {"text": "due soon"}, "deliverAt": at(Duration::from_secs(1))});
    let (status, first) = api.create(&body, Some("retry-late")).await;
    assert_eq!(status, 202, "{first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, again) = api.create(&body, Some("retry-late")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(first["id"], again["id"]);
    api.wait_for_status(first["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(
        texts(&stack, &conversation)
            .iter()
            .filter(|t| *t == "due soon")
            .count(),
        1
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_the_field_and_the_reason_and_queues_nothing() {
    let stack = stack().await;
    let api = stack.api();
    let user = json!({"user": {"tenantId": "t", "aadObjectId": "u"}});
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown target kind",
            json!({"to": {"pigeon": {}}, "message": {"text": "x"}}),
            400,
            "unknown variant `pigeon`",
        ),
        (
            "missing tenant",
            json!({"to": {"user": {"aadObjectId": "u"}}, "message": {"text": "x"}}),
            400,
            "tenantId",
        ),
        (
            "empty tenant",
            json!({"to": {"user": {"tenantId": "", "aadObjectId": "u"}}, "message": {"text": "x"}}),
            400,
            "to.user.tenantId",
        ),
        (
            "no content",
            json!({"to": user, "message": {}}),
            400,
            "message: needs text or attachments",
        ),
        (
            "message over 28 KB",
            json!({"to": user, "message": {"text": "x".repeat(30_000)}}),
            400,
            "Teams accepts at most",
        ),
        (
            "deliverAt unparseable",
            json!({"to": user, "message": {"text": "x"}, "deliverAt": "tomorrow at nine"}),
            400,
            "deliverAt",
        ),
        (
            "expiresAt before deliverAt",
            json!({"to": user, "message": {"text": "x"}, "deliverAt": at(Duration::from_secs(60)), "expiresAt": at(Duration::from_secs(30))}),
            400,
            "expiresAt: must be after deliverAt",
        ),
        (
            "body over the limit",
            json!({"to": user, "message": {"text": "x".repeat(70_000)}}),
            413,
            "length limit",
        ),
    ];
    for (what, body, status, detail) in cases {
        let (got, problem) = api.create(&body, None).await;
        assert_eq!(got, status, "{what}: {problem}");
        let text = problem["detail"].as_str().unwrap_or_default();
        assert!(text.contains(detail), "{what}: {text}");
    }
    let (status, problem) = api.create_raw("{not json").await;
    assert_eq!(status, 400, "{problem}");
    // Nothing was queued: no status record exists in the namespace.
    let redis = redis::Client::open(herald_tests::redis_url()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:job:*", stack.namespace))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(jobs.is_empty(), "a refused request queued {jobs:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_herald_never_heard_from_gets_a_new_one_to_one_chat() {
    let stack = stack().await;
    // The app is installed in a team; the user is a member but never opened a chat with it.
    let (installer, team) = team_with_app(&stack).await;
    let member = TeamsUser::new(
        installer.tenant_id.clone(),
        uuid::Uuid::new_v4().to_string(),
        "Grace",
    );
    stack.emulator.add_team_member(&team, &member);
    let personal = stack.emulator.personal_conversation_id(&member);
    assert!(stack.conversations.get(&personal).await.unwrap().is_none());

    let (status, accepted) = stack
        .api()
        .create(
            &json!({"to": to_user(&member), "message": {"text": "welcome aboard"}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let record = stack
        .api()
        .wait_for_status(accepted["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(record["conversationId"], personal);
    assert_eq!(texts(&stack, &personal), ["welcome aboard"]);
    let stored = stack
        .conversations
        .get(&personal)
        .await
        .unwrap()
        .expect("the new chat is stored");
    assert_eq!(
        stored.user_aad_object_id.as_deref(),
        Some(member.aad_object_id.as_str())
    );

    // A user who uninstalled is not brought back through a new chat.
    let (quitter, _) = stack.installed_user().await;
    stack.emulator.uninstall(&quitter).await.unwrap();
    let (_, accepted) = stack
        .api()
        .create(
            &json!({"to": to_user(&quitter), "message": {"text": "come back"}}),
            None,
        )
        .await;
    let record = stack
        .api()
        .wait_for_status(accepted["id"].as_str().unwrap(), "failed")
        .await;
    assert!(
        record["lastError"].as_str().unwrap().contains("removed"),
        "{record}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_and_channels_are_targets_and_rich_content_arrives_whole() {
    let stack = stack().await;
    let (_, team) = team_with_app(&stack).await;
    let channel = stack.emulator.team_conversation_id(&team);

    let card = json!({"contentType": "application/vnd.microsoft.card.adaptive", "content": {
        "type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Deploy finished"}]}});
    let mention = json!({"type": "mention", "text": "<at>Ada</at>", "mentioned": {"id": "29:ada", "name": "Ada"}});
    let (status, accepted) = stack
        .api()
        .create(
            &json!({
                "to": {"channel": {"tenantId": team.tenant_id, "teamId": channel, "channelId": channel}},
                "message": {"text": "<at>Ada</at> the deploy finished", "textFormat": "xml", "summary": "Deploy",
                            "attachments": [card], "entities": [mention]}
            }),
            None,
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let record = stack
        .api()
        .wait_for_status(accepted["id"].as_str().unwrap(), "delivered")
        .await;
    let thread = record["conversationId"].as_str().unwrap();
    assert!(
        thread.starts_with(&channel) && thread.contains(";messageid="),
        "a new thread in the channel: {thread}"
    );
    let post = &stack.emulator.activities(thread)[0].activity;
    assert_eq!(
        post["attachments"][0]["content"]["body"][0]["text"],
        "Deploy finished"
    );
    assert_eq!(post["entities"][0]["mentioned"]["id"], "29:ada");
    assert_eq!(post["summary"], "Deploy");
    assert_eq!(post["textFormat"], "xml");

    // A reply into that thread, addressed by conversation id.
    let (status, accepted) =
        stack.api().create(&json!({"to": {"conversation": {"id": thread}}, "message": {"text": "and it is healthy"}}), None).await;
    assert_eq!(status, 202);
    stack
        .api()
        .wait_for_status(accepted["id"].as_str().unwrap(), "delivered")
        .await;
    assert!(texts(&stack, thread).contains(&"and it is healthy".to_owned()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_notification_is_never_sent_even_from_a_delay_level() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let api = stack.api();
    let (_, accepted) =
        api.create(&json!({"to": to_user(&user), "message": {"text": "never"}, "deliverAt": at(Duration::from_secs(3))}), None).await;
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(accepted["status"], "scheduled");
    assert_eq!(api.get(id).await.1["status"], "scheduled");
    let (status, record) = api.delete(id).await;
    assert_eq!(
        (status, record["status"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(api.delete(id).await.0, 200, "cancelling twice is fine");
    let never = holds_for(Duration::from_secs(5), || async {
        !texts(&stack, &conversation).contains(&"never".to_owned())
    })
    .await;
    assert!(never, "a cancelled job was sent");
    assert_eq!(api.get(id).await.1["status"], "cancelled");
    assert_eq!(api.delete("no-such-job").await.0, 404);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivered_message_can_be_edited_and_retracted() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let api = stack.api();
    let (_, accepted) = api
        .create(
            &json!({"to": to_user(&user), "message": {"text": "Build 42 is red"}}),
            None,
        )
        .await;
    let id = accepted["id"].as_str().unwrap();
    let record = api.wait_for_status(id, "delivered").await;
    let activity_id = record["activityId"].as_str().unwrap().to_owned();

    let (status, _) = api
        .patch(
            id,
            &json!({"message": {"text": "Build 42 is green after all"}}),
        )
        .await;
    assert_eq!(status, 202);
    wait_until(
        "the edit to reach Teams",
        Duration::from_secs(10),
        || async {
            stack
                .emulator
                .activities(&conversation)
                .iter()
                .any(|a| a.id == activity_id && !a.edits.is_empty())
        },
    )
    .await;
    let edited = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .find(|a| a.id == activity_id)
        .unwrap();
    assert_eq!(edited.text.as_deref(), Some("Build 42 is green after all"));
    assert_eq!(edited.edits[0]["text"], "Build 42 is red");
    assert_eq!(api.patch(id, &json!({"message": {}})).await.0, 400);

    let (status, _) = api.delete(id).await;
    assert_eq!(status, 202);
    let record = api.wait_for_status(id, "cancelled").await;
    assert!(record["lastError"].is_null(), "{record}");
    assert!(
        stack
            .emulator
            .activities(&conversation)
            .iter()
            .any(|a| a.id == activity_id && a.deleted)
    );
    assert_eq!(
        api.patch(id, &json!({"message": {"text": "too late"}}))
            .await
            .0,
        409
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_expiry_ends_expired_unsent() {
    let stack = stack().await;
    let (user, conversation) = stack.installed_user().await;
    let mut job = herald_tests::job_for(&user, "stale news");
    job.expires_at = Some(OffsetDateTime::now_utc() - Duration::from_secs(1));
    herald_tests::publish_jobs(&stack.namespace, &[&job]).await;
    let record = stack.api().wait_for_status(&job.id, "expired").await;
    assert_eq!(record["attempts"], 0);
    assert!(!texts(&stack, &conversation).contains(&"stale news".to_owned()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_covers_exactly_the_routes() {
    let stack = stack().await;
    let document: Value = reqwest::get(format!("{}/v1/openapi.json", stack.ingress_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| ["get", "post", "patch", "delete", "put"].contains(&m.as_str()))
        {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /v1/broadcasts/{id}",
            "DELETE /v1/notifications/{id}",
            "DELETE /v1/schedules/{id}",
            "DELETE /v1/webhooks/{id}",
            "GET /v1/broadcasts/{id}",
            "GET /v1/broadcasts/{id}/recipients",
            "GET /v1/notifications/{id}",
            "GET /v1/schedules/{id}",
            "GET /v1/users/{tenantId}/{aadObjectId}",
            "GET /v1/webhooks",
            "GET /v1/webhooks/{id}/attempts",
            "PATCH /v1/broadcasts/{id}",
            "PATCH /v1/notifications/{id}",
            "PATCH /v1/schedules/{id}",
            "PATCH /v1/users/{tenantId}/{aadObjectId}",
            "POST /v1/broadcasts",
            "POST /v1/broadcasts/{id}/recipients",
            "POST /v1/broadcasts/{id}/release",
            "POST /v1/broadcasts/{id}/retry",
            "POST /v1/notifications",
            "POST /v1/schedules",
            "POST /v1/webhooks"
        ]
    );
    // Each documented operation is routed: it answers with the API's own responses (a problem
    // document or success), never the router's bare 404 or a 405.
    let http = reqwest::Client::new();
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            stack.ingress_url,
            path.replace("{id}", "some-id")
                .replace("{tenantId}", "some-tenant")
                .replace("{aadObjectId}", "some-user")
        );
        let response = http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(herald_tests::API_KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_ne!(response.status().as_u16(), 405, "{operation}");
        assert!(
            response.status().is_success()
                || content_type.as_deref() == Some("application/problem+json"),
            "{operation} is not routed: {}",
            response.status()
        );
        // Every documented error is a problem document.
        let described = &document["paths"][path][method.to_lowercase()];
        let responses = described["responses"].as_object().unwrap();
        for (code, answer) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                assert!(
                    answer["content"]["application/problem+json"].is_object(),
                    "{operation} {code}"
                );
            }
        }
        // And every answer the layers around the handlers can give is documented: any call
        // can be refused its key or time out (503); a body can be malformed, too large or not
        // JSON.
        let mut answers = vec!["401", "503"];
        if described["requestBody"].is_object() {
            answers.extend(["400", "413", "415"]);
        }
        for code in answers {
            assert!(
                responses.contains_key(code),
                "{operation} does not document {code}"
            );
        }
    }
    stack.stop().await;
}
