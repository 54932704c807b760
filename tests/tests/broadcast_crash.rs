//! A broadcast survives its dispatcher: SIGKILLed at 30 % of a 5,000-recipient broadcast and
//! stopped with SIGTERM at 60 %, with another dispatcher started each time, every
//! recipient ends with exactly one message, but for the sends that were in flight at the
//! SIGKILL. The dispatcher is what fans the broadcast out too, so both stops land mid-fan-out
//! (at most `HERALD_BROADCAST_AHEAD` recipients are handed out ahead of the sends).

use std::time::Duration;

use herald_tests::{StackOptions, TestStack, replica::Replica, wait_until};
use serde_json::{Value, json};

const RECIPIENTS: usize = 5_000;

async fn get(stack: &TestStack, path: &str) -> Value {
    stack
        .http
        .get(format!("{}/v1{path}", stack.ingress_url))
        .bearer_auth(herald_tests::API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_resumes_after_sigkill_at_30_percent_and_sigterm_with_one_message_per_recipient()
 {
    // Fast enough for a short test, slow enough that the stops land mid-broadcast: 400
    // requests a second, and each recipient costs two (their chat is created first). A short
    // send lease lets the copy after the SIGKILL take over the sends that were in flight.
    let stack = TestStack::start_with(
        StackOptions {
            start_dispatcher: false,
            rate_limits: false,
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_TENANT_RATE", "400/1s")
        .with_env("HERALD_CONVERSATION_RATES", "off")
        .with_env("HERALD_SEND_LEASE", "12s")
        .with_env("HERALD_SHUTDOWN_GRACE", "5s"),
    )
    .await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let users = stack
        .emulator
        .generate_tenant_users(&tenant, "staff", RECIPIENTS);
    let amqp = herald_tests::amqp_url();
    let mut dispatcher = Replica::spawn("herald-dispatcher", &stack, &amqp, &[]);
    dispatcher.wait_ready().await;

    let create = json!({"id": "all-staff", "audience": {"list": {}}, "message": {"text": "Benefits enrolment is open"}});
    let created = stack
        .http
        .post(format!("{}/v1/broadcasts", stack.ingress_url))
        .bearer_auth(herald_tests::API_KEY)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 202);
    let lines: String = users
        .users()
        .map(|u| {
            format!(
                "{}\n",
                json!({"tenantId": u.tenant_id, "aadObjectId": u.aad_object_id})
            )
        })
        .collect();
    let uploaded = stack
        .http
        .post(format!(
            "{}/v1/broadcasts/all-staff/recipients",
            stack.ingress_url
        ))
        .bearer_auth(herald_tests::API_KEY)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 200);
    let released = stack
        .http
        .post(format!(
            "{}/v1/broadcasts/all-staff/release",
            stack.ingress_url
        ))
        .bearer_auth(herald_tests::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status().as_u16(), 202);

    let received = || stack.emulator.received_counts(Some(&tenant)).activities;
    wait_until("30 % of the messages", Duration::from_secs(60), || async {
        received() >= RECIPIENTS as u64 * 3 / 10
    })
    .await;
    let fanned_at_kill = get(&stack, "/broadcasts/all-staff").await;
    dispatcher.kill().await;
    let mut dispatcher = Replica::spawn("herald-dispatcher", &stack, &amqp, &[]);
    wait_until("60 % of the messages", Duration::from_secs(60), || async {
        received() >= RECIPIENTS as u64 * 6 / 10
    })
    .await;
    dispatcher.terminate().await;
    let _last = Replica::spawn("herald-dispatcher", &stack, &amqp, &[]);

    wait_until(
        "the broadcast to complete",
        Duration::from_secs(120),
        || async { get(&stack, "/broadcasts/all-staff").await["status"] == "completed" },
    )
    .await;
    let done = get(&stack, "/broadcasts/all-staff").await;
    assert_eq!(done["counts"]["delivered"], RECIPIENTS, "{done}");
    assert!(
        fanned_at_kill["counts"]["pending"].as_u64().unwrap() > 0,
        "the SIGKILL landed mid-broadcast: {fanned_at_kill}"
    );

    // Every recipient's chat got the message; only a send in flight at the SIGKILL (reached
    // Teams, not yet recorded) may have gone twice.
    let counts = stack.emulator.received_counts(Some(&tenant));
    assert_eq!(counts.conversations, RECIPIENTS, "{counts:?}");
    let twice = counts.histogram.get(&2).copied().unwrap_or(0);
    assert_eq!(
        counts.histogram.get(&1).copied().unwrap_or(0) + twice,
        RECIPIENTS,
        "no chat got a message more than twice: {counts:?}"
    );
    eprintln!("{twice} of {RECIPIENTS} chats got the message twice (in flight at the SIGKILL)");
    assert!(twice <= 50, "only in-flight sends repeat: {counts:?}");
}
