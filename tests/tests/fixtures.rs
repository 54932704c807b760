//! Real Teams payloads (personal, team and channel scope, from Microsoft's docs and SDKs and
//! other integrations) are accepted and stored with the right ids.

use herald_emulator::TokenVariant;
use herald_shared::store::ConversationKind;
use herald_tests::{StackOptions, TestStack, fixture};
use serde_json::Value;

/// Posts a fixture as Teams would: its own ids, signed, with the serviceUrl pointed at the
/// emulator (the token's `serviceurl` claim must match, and the allowlist must allow it).
async fn post_fixture(stack: &TestStack, name: &str) -> (u16, Value) {
    let mut activity: Value = serde_json::from_str(&fixture(name)).unwrap();
    let tenant = activity["conversation"]["tenantId"]
        .as_str()
        .or(activity["channelData"]["tenant"]["id"].as_str())
        .unwrap_or("tenant")
        .to_owned();
    activity["serviceUrl"] = stack.emulator.service_url(&tenant).into();
    let (status, body) = stack
        .emulator
        .post_activity(&activity, TokenVariant::Valid)
        .await
        .unwrap();
    assert!(status == 200 || status == 400, "{name}: {status} {body}");
    (status, activity)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_is_accepted_and_stored_with_its_ids() {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        ..Default::default()
    })
    .await;
    let fixtures = [
        "msdocs_conversationUpdate_membersAdded_bot_personal.json",
        "msdocs_conversationUpdate_membersAdded_bot_team.json",
        "msdocs_conversationUpdate_membersRemoved_channel.json",
        "msdocs_installationUpdate_add_channel.json",
        "msdocs_message_personal.json",
        "sentry_conversationUpdate_membersAdded_bot_personal.json",
        "sentry_conversationUpdate_membersAdded_bot_team.json",
        "sentry_installationUpdate_add_team.json",
        "teams-net_invoke-adaptiveCard-action_personal.json",
        "teams-net_message_channel-thread-mention.json",
    ];
    for name in fixtures {
        let (status, activity) = post_fixture(&stack, name).await;
        assert_eq!(status, 200, "{name} was refused");
        let conversation_id = activity["conversation"]["id"].as_str().unwrap();
        let stored = stack
            .conversations
            .get(conversation_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no reference stored"));
        assert_eq!(
            stored.service_url,
            activity["serviceUrl"].as_str().unwrap(),
            "{name}"
        );
        let tenant = activity["conversation"]["tenantId"]
            .as_str()
            .or(activity["channelData"]["tenant"]["id"].as_str());
        assert_eq!(stored.tenant_id.as_deref(), tenant, "{name}: tenant");
        assert_eq!(
            stored
                .conversation_type
                .as_ref()
                .map(ConversationKind::as_str),
            activity["conversation"]["conversationType"].as_str(),
            "{name}"
        );
        assert_eq!(
            stored.bot_id.as_deref(),
            activity["recipient"]["id"].as_str(),
            "{name}: bot id"
        );
        if let Some(team) = activity["channelData"]["team"]["id"].as_str() {
            assert_eq!(stored.team_id.as_deref(), Some(team), "{name}: team id");
        }
        if let Some(channel) = activity["channelData"]["channel"]["id"].as_str() {
            assert_eq!(
                stored.channel_id.as_deref(),
                Some(channel),
                "{name}: channel id"
            );
        }
        if stored.is_personal() {
            assert_eq!(
                stored.user_id.as_deref(),
                activity["from"]["id"].as_str(),
                "{name}: user id"
            );
            assert_eq!(
                stored.user_aad_object_id.as_deref(),
                activity["from"]["aadObjectId"].as_str(),
                "{name}: aad id"
            );
        } else {
            assert_eq!(
                stored.user_id, None,
                "{name}: a channel's last speaker is not its user"
            );
        }
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verbatim_docs_payload_that_is_not_json_is_a_400() {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        ..Default::default()
    })
    .await;
    // Signed for a well-formed activity, the body sent is Microsoft's broken sample verbatim.
    let raw = fixture("msdocs_installationUpdate_add_channel.VERBATIM-INVALID.json.txt");
    let valid: Value =
        serde_json::from_str(&fixture("msdocs_installationUpdate_add_channel.json")).unwrap();
    let mut signed_for = valid.clone();
    signed_for["serviceUrl"] = valid["serviceUrl"].clone();
    let authorization = stack
        .emulator
        .authorization(&signed_for, TokenVariant::Valid)
        .unwrap();
    let response = stack
        .http
        .post(format!("{}/api/messages", stack.ingress_url))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("not a valid activity"), "{body}");
    stack.stop().await;
}
