//! Only Teams may talk to the bot endpoint: every spoiled token is refused, nothing is stored
//! and nothing is sent; and a genuine token for a serviceUrl outside the allowlist never leads
//! to the bot token being sent there.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::HeaderMap, routing::any};
use herald_emulator::{TeamsUser, TokenVariant};
use herald_shared::job::{ConversationTarget, Job, Message, Target};
use herald_shared::store::JobStatus;
use herald_tests::{TestStack, holds_for, listener, publish_raw, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn every_spoiled_token_is_refused_and_nothing_is_stored_or_sent() {
    let stack = TestStack::start().await;
    let variants = [
        TokenVariant::WrongSigningKey,
        TokenVariant::WrongAudience,
        TokenVariant::WrongIssuer,
        TokenVariant::Expired,
        TokenVariant::AlgNone,
        TokenVariant::Hs256WithPublicKey,
        TokenVariant::ServiceUrlMismatch,
        TokenVariant::NoAuthorization,
        TokenVariant::UnknownKid,
        TokenVariant::KeyWithoutEndorsement,
    ];
    let mut users = Vec::new();
    for variant in variants {
        let user = TeamsUser::random();
        let activity = stack.emulator.install_activity(&user);
        let (status, body) = stack
            .emulator
            .post_activity(&activity, variant)
            .await
            .unwrap();
        assert_eq!(status, 401, "{variant:?} was not refused: {body}");
        assert!(
            body.contains("\"status\":401"),
            "{variant:?}: the refusal is a problem document: {body}"
        );
        let conversation = stack.emulator.personal_conversation_id(&user);
        assert!(
            stack
                .conversations
                .get(&conversation)
                .await
                .unwrap()
                .is_none(),
            "{variant:?} stored a reference"
        );
        users.push(conversation);
    }
    // Nothing was queued either: no welcome reaches any of these conversations.
    let quiet = holds_for(Duration::from_secs(2), || async {
        users
            .iter()
            .all(|c| stack.emulator.activities(c).is_empty())
    })
    .await;
    assert!(quiet, "a refused install led to a message");

    // The same install with a valid token goes through.
    let user = TeamsUser::random();
    let (status, _) = stack
        .emulator
        .post_activity(&stack.emulator.install_activity(&user), TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_refused_before_anything_is_stored() {
    let stack = TestStack::start().await;
    let user = TeamsUser::random();
    let mut activity = stack.emulator.message_activity(&user, "hi");
    activity["text"] = "x".repeat(herald_ingress::MAX_ACTIVITY_BODY).into();
    let (status, body) = stack
        .emulator
        .post_activity(&activity, TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    let conversation = stack.emulator.personal_conversation_id(&user);
    assert!(
        stack
            .conversations
            .get(&conversation)
            .await
            .unwrap()
            .is_none()
    );
    stack.stop().await;
}

/// A host that records every request it receives, standing in for a forged serviceUrl.
async fn recording_host() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(any(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(headers);
            r#"{"id":"forged"}"#
        }
    }));
    let listener = listener().await;
    // `localhost` is not `127.0.0.1`: outside the tests' allowlist, though it is this machine.
    let url = format!(
        "http://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_url_outside_the_allowlist_never_receives_the_bot_token() {
    let stack = TestStack::start().await;
    let (forged_url, seen) = recording_host().await;

    // Inbound: a genuinely signed activity naming the forged serviceUrl is refused.
    let user = TeamsUser::random();
    let mut activity = stack.emulator.install_activity(&user);
    activity["serviceUrl"] = forged_url.clone().into();
    let (status, body) = stack
        .emulator
        .post_activity(&activity, TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("allowlist") || body.contains("ALLOWLIST"),
        "{body}"
    );
    let conversation = stack.emulator.personal_conversation_id(&user);
    assert!(
        stack
            .conversations
            .get(&conversation)
            .await
            .unwrap()
            .is_none()
    );

    // Outbound: a job naming the forged serviceUrl fails at once, and the host sees nothing.
    let job = Job::new(
        uuid::Uuid::new_v4().into(),
        Target::Conversation(ConversationTarget {
            id: "a:forged".into(),
            tenant_id: Some(user.tenant_id.clone()),
            service_url: Some(forged_url.clone()),
        }),
        Message::text("hello"),
        None,
        None,
    )
    .unwrap();
    publish_raw(
        &stack.namespace,
        &job.id,
        &serde_json::to_vec(&job).unwrap(),
    )
    .await
    .unwrap();
    wait_until("the job to fail", Duration::from_secs(10), || async {
        stack
            .status(&job.id)
            .await
            .is_some_and(|s| s.status == JobStatus::Failed)
    })
    .await;
    let reason = stack.status(&job.id).await.unwrap().last_error.unwrap();
    assert!(reason.contains("allowlist"), "{reason}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the forged host was called"
    );
    stack.stop().await;
}
