//! The operator's dead-letter tools, through the real binary: see what is in `{ns}.dead` and
//! why, and redrive it. A redriven job that was delivered after all is not sent again; one
//! that failed is sent; what is not a job stays put.

use std::time::Duration;

use herald_emulator::{Fault, Operation, TeamsUser};
use herald_shared::{amqp::Publisher, store::JobStatus};
use herald_tests::{
    StackOptions, TestStack, binary, job_for, publish_jobs, publish_raw, wait_until,
};
use serde_json::Value;
use tokio::process::Command;

async fn dead(stack: &TestStack, args: &[&str]) -> Vec<Value> {
    let output = Command::new(binary("herald-dispatcher"))
        .env_clear()
        .envs(stack.env().vars())
        .arg("dead")
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_lists_dead_letters_and_redrives_them_safely() {
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_MAX_ATTEMPTS", "2"),
    )
    .await;
    let user = TeamsUser::random();
    stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);
    stack
        .wait_for_activities(&conversation, 1, Duration::from_secs(10))
        .await;

    // Teams is down for this conversation: the job exhausts its retries.
    stack.emulator.inject_fault(
        Fault::new(503)
            .conversation(conversation.clone())
            .operation(Operation::SendToConversation)
            .times(0),
    );
    let failed = job_for(&user, "after the outage");
    publish_jobs(&stack.namespace, &[&failed]).await;
    wait_until("the job to fail", Duration::from_secs(20), || async {
        stack
            .status(&failed.id)
            .await
            .is_some_and(|s| s.status == JobStatus::Failed)
    })
    .await;
    // Another service publishes something that is not a job.
    publish_raw(&stack.namespace, "garbage-1", b"<xml>not a job</xml>")
        .await
        .unwrap();
    // And a copy of a job that was delivered lands there too (say, from an old incident).
    stack.emulator.clear_faults();
    let delivered = job_for(&user, "delivered long ago");
    publish_jobs(&stack.namespace, &[&delivered]).await;
    wait_until(
        "the job to be delivered",
        Duration::from_secs(20),
        || async {
            stack
                .status(&delivered.id)
                .await
                .is_some_and(|s| s.status == JobStatus::Delivered)
        },
    )
    .await;
    let amqp: herald_shared::config::AmqpNodes = herald_tests::amqp_url().parse().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let broker = herald_shared::amqp::Broker::start(
        &amqp,
        herald_shared::amqp::Topology::new(stack.namespace.parse().unwrap()),
        "test",
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .unwrap();
    wait_until("a broker link", Duration::from_secs(10), || async {
        broker.is_ready()
    })
    .await;
    let body = serde_json::to_vec(&delivered).unwrap();
    Publisher::new(broker)
        .dead_letter(Some(&delivered.id), &body, None, "an old incident")
        .await
        .unwrap();
    stop.cancel();

    wait_until("three dead letters", Duration::from_secs(10), || async {
        dead(&stack, &["list"]).await.len() == 3
    })
    .await;
    let listed = dead(&stack, &["list"]).await;
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|l| l["messageId"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"))
    };
    assert!(
        by_id(&failed.id)["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts")
    );
    assert_eq!(by_id(&failed.id)["status"], "failed");
    assert!(
        by_id("garbage-1")["reason"]
            .as_str()
            .unwrap()
            .contains("not a valid job")
    );
    assert_eq!(by_id(&delivered.id)["status"], "delivered");
    assert_eq!(
        dead(&stack, &["list"]).await.len(),
        3,
        "listing leaves the queue as it was"
    );

    let report = &dead(&stack, &["redrive", "--all"]).await[0];
    assert_eq!(report["redriven"], serde_json::json!([failed.id]));
    assert_eq!(report["alreadyEnded"], serde_json::json!([delivered.id]));
    assert_eq!(report["notJobs"], serde_json::json!(["garbage-1"]));
    wait_until(
        "the redriven job to be delivered",
        Duration::from_secs(20),
        || async {
            stack
                .status(&failed.id)
                .await
                .is_some_and(|s| s.status == JobStatus::Delivered)
        },
    )
    .await;
    let texts: Vec<_> = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .filter_map(|a| a.text)
        .collect();
    assert_eq!(texts.iter().filter(|t| *t == "after the outage").count(), 1);
    assert_eq!(
        texts.iter().filter(|t| *t == "delivered long ago").count(),
        1,
        "not sent twice"
    );
    let left = dead(&stack, &["list"]).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["messageId"], "garbage-1");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_command_line_shows_the_usage() {
    let output = Command::new(binary("herald-dispatcher"))
        .env("HERALD_APP_ID", "a")
        .env("HERALD_APP_PASSWORD", "b")
        .args(["dead", "obliterate"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: herald-dispatcher"));
}
