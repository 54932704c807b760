//! `/metrics` after a known scenario: the values, not just the names, tell what happened.

use std::{collections::HashMap, time::Duration};

use herald_emulator::{Fault, Operation, TokenVariant};
use herald_shared::store::JobStatus;
use herald_tests::{StackOptions, TestStack, job_for, publish_jobs, wait_until};

/// The samples of an OpenMetrics text, by name with labels (`name{a="b"}` → value).
async fn scrape(admin_url: &str) -> HashMap<String, f64> {
    let response = reqwest::get(format!("{admin_url}/metrics")).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            line.rsplit_once(' ')
                .map(|(name, value)| (name.to_owned(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| {
        let mut names: Vec<_> = samples.keys().collect();
        names.sort();
        panic!("no sample {name}; have {names:?}")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_tell_the_story_of_a_scenario() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let (user, conversation) = stack.installed_user().await; // 2 activities, 1 welcome
    let refused = stack.emulator.message_activity(&user, "forged");
    assert_eq!(
        stack
            .emulator
            .post_activity(&refused, TokenVariant::Expired)
            .await
            .unwrap()
            .0,
        401
    );

    // One job throttled once then delivered, one refused by Teams, one due a little later.
    stack.emulator.inject_fault(
        Fault::new(429)
            .conversation(conversation.clone())
            .operation(Operation::SendToConversation)
            .retry_after("1")
            .times(1),
    );
    let throttled = job_for(&user, "throttled first");
    publish_jobs(&stack.namespace, &[&throttled]).await;
    wait_until("the throttled job", Duration::from_secs(20), || async {
        stack
            .status(&throttled.id)
            .await
            .is_some_and(|s| s.status == JobStatus::Delivered)
    })
    .await;
    stack.emulator.inject_fault(
        Fault::new(400)
            .conversation(conversation.clone())
            .operation(Operation::SendToConversation)
            .code("BadArgument")
            .times(1),
    );
    let refused_job = job_for(&user, "refused");
    publish_jobs(&stack.namespace, &[&refused_job]).await;
    let mut later = job_for(&user, "a little later");
    later.deliver_at = Some(time::OffsetDateTime::now_utc() + Duration::from_secs(2));
    publish_jobs(&stack.namespace, &[&later]).await;
    for (job, status) in [
        (&refused_job, JobStatus::Failed),
        (&later, JobStatus::Delivered),
    ] {
        wait_until("the job to end", Duration::from_secs(20), || async {
            stack
                .status(&job.id)
                .await
                .is_some_and(|s| s.status == status)
        })
        .await;
    }

    let dispatcher = scrape(stack.dispatcher_admin_url.as_deref().unwrap()).await;
    assert_eq!(
        value(&dispatcher, r#"herald_jobs_total{outcome="delivered"}"#),
        3.0,
        "welcome, throttled, later"
    );
    assert_eq!(
        value(&dispatcher, r#"herald_jobs_total{outcome="failed"}"#),
        1.0
    );
    assert_eq!(
        value(&dispatcher, r#"herald_jobs_total{outcome="retrying"}"#),
        1.0
    );
    assert_eq!(value(&dispatcher, "herald_retries_total"), 1.0);
    assert_eq!(value(&dispatcher, "herald_teams_throttled_total"), 1.0);
    assert_eq!(value(&dispatcher, "herald_token_refreshes_total"), 1.0);
    assert_eq!(
        value(
            &dispatcher,
            r#"herald_teams_request_duration_seconds_count{operation="send"}"#
        ),
        5.0
    );
    assert_eq!(
        value(&dispatcher, "herald_delivery_lateness_seconds_count"),
        1.0
    );
    assert!(
        value(&dispatcher, "herald_delivery_lateness_seconds_sum") < 1.0,
        "the job due later was on time"
    );
    wait_until("the queue gauge", Duration::from_secs(10), || async {
        scrape(stack.dispatcher_admin_url.as_deref().unwrap())
            .await
            .get(r#"herald_queue_messages{queue="dispatch"}"#)
            == Some(&0.0)
    })
    .await;

    let ingress = scrape(&stack.ingress_admin_url).await;
    assert_eq!(
        value(
            &ingress,
            r#"herald_http_requests_total{route="/api/messages",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &ingress,
            r#"herald_http_requests_total{route="/api/messages",status="401"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &ingress,
            r#"herald_http_request_duration_seconds_count{route="/api/messages"}"#
        ),
        3.0
    );
    stack.stop().await;
}
