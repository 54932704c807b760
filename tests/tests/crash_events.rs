//! An event is not lost to a crash between the change it reports and its publish. A service
//! reaches RabbitMQ through a proxy of the test's own, which stops passing on what it sends:
//! a dispatcher that sent and recorded a job, or an ingress that recorded a cancel, is then
//! killed (SIGKILL) while its event is held back, and the proxy throws the event away. The
//! event arrives all the same: the dispatcher's from the copy of the job RabbitMQ hands out
//! again, the ingress's from the outbox, relayed by another service.

use std::time::Duration;

use herald_emulator::TeamsUser;
use herald_shared::{amqp::Topology, config::Namespace, events::outbox::GRACE, store::JobStatus};
use herald_tests::{
    StackOptions, TestStack, events::EventQueue, free_port, job_for, proxy::Proxy, publish_jobs,
    queue_depth_of, replica::Replica, wait_until,
};
use serde_json::{Value, json};

/// A stack without a dispatcher, and a proxy to RabbitMQ for the replicas the test starts.
async fn stack_and_proxy() -> (TestStack, Proxy) {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        ..Default::default()
    })
    .await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    (stack, proxy)
}

fn through(proxy: &Proxy) -> String {
    format!("amqp://guest:guest@{}/%2f", proxy.addr())
}

/// A user who installed the app (their welcome waits in the queue: no dispatcher runs yet);
/// returns the user and their personal conversation id.
async fn installed_user(stack: &TestStack) -> (TeamsUser, String) {
    let user = TeamsUser::random();
    stack
        .emulator
        .install(&user)
        .await
        .expect("the install activities are posted");
    let conversation_id = stack.emulator.personal_conversation_id(&user);
    (user, conversation_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatcher_killed_after_recording_a_delivery_tells_it_through_the_redelivered_copy() {
    let (stack, proxy) = stack_and_proxy().await;
    let mut events = EventQueue::bind(&stack.namespace, "herald.notification.#").await;
    let (user, conversation_id) = installed_user(&stack).await;
    let mut first = Replica::spawn("herald-dispatcher", &stack, &through(&proxy), &[]);
    let queue = Topology::new(stack.namespace.parse::<Namespace>().unwrap()).dispatch_queue();
    wait_until(
        "the dispatcher to consume",
        Duration::from_secs(30),
        || async {
            queue_depth_of(&queue)
                .await
                .is_ok_and(|depth| depth.consumers == 1)
        },
    )
    .await;

    // RabbitMQ hears nothing more from the dispatcher: it can take the job, send it and
    // record it, but its event (and its ack) go nowhere.
    proxy.stall();
    let job = job_for(&user, "told despite the crash");
    let id = job.id.to_string();
    publish_jobs(&stack.namespace, &[&job]).await;
    wait_until(
        "the job to be recorded delivered",
        Duration::from_secs(30),
        || async {
            stack
                .status(&id)
                .await
                .is_some_and(|record| record.status == JobStatus::Delivered)
        },
    )
    .await;
    assert!(
        events
            .next_about(&id, Duration::from_secs(2))
            .await
            .is_none(),
        "an event got past the stall"
    );
    first.kill().await;
    proxy.cut();

    // The job was never acked, so RabbitMQ hands it to the next dispatcher, which finds it
    // ended and tells it.
    proxy.restore();
    let _second = Replica::spawn("herald-dispatcher", &stack, &through(&proxy), &[]);
    let told = events
        .next_about(&id, Duration::from_secs(30))
        .await
        .expect("the delivery is told after the crash");
    assert_eq!(told.kind, "herald.notification.delivered");
    assert_eq!(told.subject, id);
    assert_eq!(told.data_as::<Value>().unwrap()["status"], "delivered");
    assert!(
        events
            .next_about(&id, Duration::from_secs(2))
            .await
            .is_none(),
        "the delivery was told twice"
    );
    let sent = stack
        .emulator
        .activities(&conversation_id)
        .into_iter()
        .filter(|a| a.text.as_deref() == Some("told despite the crash"))
        .count();
    assert_eq!(sent, 1, "the copy sent the job again");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_killed_after_recording_a_cancel_has_its_event_relayed_by_another_service() {
    let (stack, proxy) = stack_and_proxy().await;
    let mut events = EventQueue::bind(&stack.namespace, "herald.notification.cancelled").await;
    let (user, _) = installed_user(&stack).await;
    let port = free_port();
    let mut ingress = Replica::spawn(
        "herald-ingress",
        &stack,
        &through(&proxy),
        &[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))],
    );
    ingress.wait_ready().await;
    let api = stack.api().at(&format!("http://127.0.0.1:{port}"));
    let in_an_hour = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let (status, created) = api
        .create(
            &json!({
                "to": {"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}},
                "message": {"text": "never sent"},
                "deliverAt": in_an_hour.format(&time::format_description::well_known::Rfc3339).unwrap(),
            }),
            None,
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // The cancel is recorded; its event is held back, and the process dies.
    proxy.stall();
    let (status, cancelled) = api.delete(&id).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        events
            .next_about(&id, Duration::from_secs(2))
            .await
            .is_none(),
        "an event got past the stall"
    );
    ingress.kill().await;
    proxy.cut();

    // The stack's own ingress relays what the dead one left in the outbox, once its grace
    // has passed.
    let told = events
        .next_about(&id, GRACE + Duration::from_secs(20))
        .await
        .expect("the cancel is told after the crash");
    assert_eq!(told.kind, "herald.notification.cancelled");
    assert_eq!(told.subject, id);
    assert_eq!(told.data_as::<Value>().unwrap()["status"], "cancelled");
    assert!(
        events
            .next_about(&id, Duration::from_secs(2))
            .await
            .is_none(),
        "the cancel was told twice"
    );
    stack.stop().await;
}
