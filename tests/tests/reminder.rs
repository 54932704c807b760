//! The proactive reminder, end to end: a user installs the app, gets the welcome at once and
//! the reminder after the configured delay, exactly once each, however Teams delivers the
//! install activities.

use std::time::{Duration, Instant};

use herald_emulator::{TeamsUser, TokenVariant};
use herald_ingress::greeting::greeting_job_id;
use herald_shared::store::JobStatus;
use herald_tests::{StackOptions, TestStack, holds_for, wait_until};

const WELCOME: &str = "Hi! I am going to remind you to say something to me soon!";
const REMINDER: &str = "Hey! It's been a while. How are you?";

#[tokio::test(flavor = "multi_thread")]
async fn install_brings_the_welcome_at_once_and_the_reminder_after_the_delay() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let user = TeamsUser::random();

    let installed_at = Instant::now();
    let outcome = stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);
    assert_eq!(outcome.conversation_id, conversation);

    let welcome = stack
        .wait_for_activities(&conversation, 1, Duration::from_secs(10))
        .await;
    let install_to_welcome = installed_at.elapsed();
    assert_eq!(welcome[0].text.as_deref(), Some(WELCOME));

    let both = stack
        .wait_for_activities(&conversation, 2, Duration::from_secs(15))
        .await;
    let install_to_reminder = installed_at.elapsed();
    assert_eq!(both[1].text.as_deref(), Some(REMINDER));
    assert!(
        install_to_reminder >= Duration::from_secs(3),
        "the reminder came early: {install_to_reminder:?}"
    );
    eprintln!(
        "install→welcome {install_to_welcome:?}, install→reminder {install_to_reminder:?} (delay 3 s)"
    );

    // The stored reference has everything a later send needs.
    let reference = stack
        .conversations
        .get(&conversation)
        .await
        .unwrap()
        .expect("the reference is stored");
    assert_eq!(
        reference.tenant_id.as_deref(),
        Some(user.tenant_id.as_str())
    );
    assert_eq!(
        reference.user_aad_object_id.as_deref(),
        Some(user.aad_object_id.as_str())
    );
    assert_eq!(
        reference.service_url,
        stack.emulator.service_url(&user.tenant_id)
    );
    assert!(
        reference
            .user_id
            .as_deref()
            .is_some_and(|id| id.starts_with("29:"))
    );
    assert!(
        reference
            .bot_id
            .as_deref()
            .is_some_and(|id| id.starts_with("28:"))
    );

    // And nothing more arrives.
    assert!(
        holds_for(Duration::from_secs(2), || async {
            stack.emulator.activities(&conversation).len() == 2
        })
        .await
    );
    stack.stop().await;
}

/// Teams sends `installationUpdate add` and the bot-added `conversationUpdate` for one install,
/// in either order, and redelivers when the bot is slow.
#[tokio::test(flavor = "multi_thread")]
async fn one_install_means_one_welcome_and_one_reminder_however_the_activities_arrive() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let orders: [&[&str]; 4] = [
        &["install", "bot_added"],
        &["bot_added", "install"],
        &["install", "install"],
        &["bot_added", "bot_added", "install"],
    ];
    let mut users = Vec::new();
    for order in orders {
        let user = TeamsUser::random();
        for step in order {
            let activity = match *step {
                "install" => stack.emulator.install_activity(&user),
                _ => stack.emulator.bot_added_activity(&user),
            };
            let (status, body) = stack
                .emulator
                .post_activity(&activity, TokenVariant::Valid)
                .await
                .unwrap();
            assert_eq!(status, 200, "{step}: {body}");
        }
        users.push((order, user));
    }
    for (order, user) in &users {
        let conversation = stack.emulator.personal_conversation_id(user);
        let received = stack
            .wait_for_activities(&conversation, 2, Duration::from_secs(15))
            .await;
        let texts: Vec<_> = received
            .iter()
            .map(|a| a.text.clone().unwrap_or_default())
            .collect();
        assert_eq!(texts, [WELCOME, REMINDER], "order {order:?}");
    }
    // Give any duplicate a fair chance to show up.
    let settled = holds_for(Duration::from_secs(3), || async {
        users.iter().all(|(_, u)| {
            stack
                .emulator
                .activities(&stack.emulator.personal_conversation_id(u))
                .len()
                == 2
        })
    })
    .await;
    assert!(settled, "a duplicate welcome or reminder arrived");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_uninstall_the_reminder_ends_failed_with_the_reason_and_nothing_is_sent() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let user = TeamsUser::random();
    stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);
    stack
        .wait_for_activities(&conversation, 1, Duration::from_secs(10))
        .await;

    assert_eq!(stack.emulator.uninstall(&user).await.unwrap(), 200);
    let reference = stack
        .conversations
        .get(&conversation)
        .await
        .unwrap()
        .unwrap();
    assert!(reference.is_removed(), "the reference is marked removed");

    // The reminder is the first install's second job.
    let reminder_id = greeting_job_id(&stack.namespace, &conversation, 1, "reminder");
    wait_until("the reminder to end", Duration::from_secs(15), || async {
        stack
            .status(&reminder_id)
            .await
            .is_some_and(|s| s.status == JobStatus::Failed)
    })
    .await;
    let status = stack.status(&reminder_id).await.unwrap();
    let reason = status.last_error.unwrap_or_default();
    assert!(
        reason.contains("removed") && reason.contains("uninstalled"),
        "reason: {reason}"
    );
    assert_eq!(status.attempts, 0, "Teams was not called");
    assert_eq!(
        stack.emulator.activities(&conversation).len(),
        1,
        "only the welcome was sent"
    );
    stack.stop().await;
}
