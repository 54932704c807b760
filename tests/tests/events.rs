//! Herald listens and tells: a user presses a card's button and gets the configured answer
//! while Teams waits; the press reaches an AMQP consumer (the pika example) and a webhook
//! receiver whose signature check is the `standardwebhooks` library's; read receipts mark
//! exactly the messages up to the id; webhooks are retried with the same id, given up and
//! recorded; a URL that reaches a private address is refused; and an event whose process died
//! between recording and publishing still arrives.

use std::{process::Stdio, time::Duration};

use herald_emulator::{TeamsUser, TokenVariant};
use herald_shared::{
    amqp::Publisher,
    config::{Namespace, RedisTarget},
    events::{CloudEvent, EventType, Events, Proof},
    store::{Redis, Stamp, StatusRecord, StatusStore},
};
use herald_tests::{
    NamespaceGuard, StackOptions, TestStack, amqp_url, broker_link, fresh_namespace, python,
    redis_server, redis_url, repository, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};
use tokio_util::sync::CancellationToken;

/// A process of the Python examples, and the JSON lines it prints.
struct Example {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Example {
    fn start(script: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(python());
        command
            .arg(repository().join("examples/python").join(script))
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("python runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            lines,
        }
    }

    /// The next printed line, as JSON.
    async fn next(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .expect("the example printed in time")
            .unwrap()
            .expect("the example is still running");
        serde_json::from_str(&line).unwrap_or_else(|error| {
            panic!("the example printed a line that is not JSON ({error}): {line}")
        })
    }

    /// Lines until one satisfies `wanted`.
    async fn until(&mut self, within: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self.next(left).await;
            if wanted(&line) {
                return line;
            }
        }
    }
}

/// The pika example consuming `namespace`'s events of `binds` (all when empty) in a transient
/// queue of its own, once it is consuming.
async fn event_consumer(namespace: &str, name: &str, binds: &[&str]) -> Example {
    let (queue, url) = (format!("{namespace}.{name}"), amqp_url());
    let mut args = vec![
        "--transient",
        "--amqp-url",
        &url,
        "--namespace",
        namespace,
        "--queue",
        &queue,
    ];
    for bind in binds {
        args.extend(["--bind", bind]);
    }
    let mut consumer = Example::start("consume_events.py", &args, &[]);
    consumer.next(Duration::from_secs(20)).await; // {"consuming": …}
    consumer
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Makes a webhook for `types` at a local receiver and starts the receiver with its secret.
async fn webhook_receiver(stack: &TestStack, types: &[&str], fail_first: u32) -> (String, Example) {
    let port = free_port().await;
    let (status, created) = stack
        .api()
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{port}/hook"), "types": types})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{created}");
    let mut receiver = Example::start(
        "webhook_receiver.py",
        &[
            "--port",
            &port.to_string(),
            "--fail-first",
            &fail_first.to_string(),
        ],
        &[("HERALD_WEBHOOK_SECRET", secret)],
    );
    receiver.next(Duration::from_secs(20)).await; // listening
    (created["id"].as_str().unwrap().to_owned(), receiver)
}

fn local_webhooks() -> StackOptions {
    // The receivers listen on loopback, which only a list naming the host admits.
    StackOptions::default()
        .with_env("HERALD_WEBHOOK_ALLOWLIST", "http://127.0.0.1:*")
        .with_env("HERALD_WEBHOOK_RETRY_SCHEDULE", "300ms,300ms,300ms")
}

/// Sends `body`'s notification to `user` and waits for it to be delivered; its record.
async fn deliver(stack: &TestStack, body: Value) -> Value {
    let (status, accepted) = stack.api().create(&body, None).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    stack.api().wait_for_status(&id, "delivered").await
}

fn to(user: &TeamsUser) -> Value {
    json!({"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pressed_button_is_answered_with_its_card_and_told_to_a_consumer_and_a_webhook() {
    let stack = TestStack::start_with(local_webhooks()).await;
    let (_webhook, mut receiver) = webhook_receiver(&stack, &["herald.notification.*"], 0).await;
    let mut consumer = event_consumer(
        &stack.namespace,
        "test-consumer",
        &["herald.notification.*"],
    )
    .await;
    let (user, _) = stack.installed_user().await;

    let acknowledged = json!({"type": "AdaptiveCard", "version": "1.5",
        "body": [{"type": "TextBlock", "text": "Acknowledged by you"}]});
    let record = deliver(
        &stack,
        json!({
            "to": to(&user),
            "message": {"attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
                "type": "AdaptiveCard", "version": "1.5",
                "body": [{"type": "TextBlock", "text": "The build broke"}],
                "actions": [{"type": "Action.Execute", "title": "Acknowledge", "verb": "ack", "data": {"build": 42}}]
            }}]},
            "onAction": {"ack": {"card": acknowledged}},
        }),
    )
    .await;
    let notification = record["id"].as_str().unwrap().to_owned();
    let activity_id = record["activityId"].as_str().unwrap().to_owned();

    let answer = stack
        .emulator
        .press_card_action(&user, &activity_id, "ack", json!({"build": 42}))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["statusCode"], 200, "{}", answer.body);
    assert_eq!(
        answer.body["type"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(
        answer.body["value"], acknowledged,
        "the configured card answers"
    );

    // A press of a verb the notification names no answer for gets the default text.
    let other = stack
        .emulator
        .press_card_action(&user, &activity_id, "snooze", json!({}))
        .await
        .unwrap();
    assert_eq!(other.body["value"], "Thanks, noted.");

    let is_action = |event: &Value| {
        event["type"] == "herald.notification.action" && event["data"]["verb"] == "ack"
    };
    // The delivery was told (first), then the press.
    let delivered = consumer
        .until(Duration::from_secs(20), |e| {
            e["type"] == "herald.notification.delivered" && e["subject"] == notification.as_str()
        })
        .await;
    assert_eq!(delivered["data"]["status"], "delivered");
    let from_amqp = consumer.until(Duration::from_secs(20), is_action).await;
    assert_eq!(from_amqp["subject"], notification.as_str());
    assert_eq!(from_amqp["source"], format!("herald/{}", stack.namespace));
    assert_eq!(from_amqp["data"]["notificationId"], notification.as_str());
    assert_eq!(from_amqp["data"]["activityId"], activity_id.as_str());
    assert_eq!(from_amqp["data"]["data"], json!({"build": 42}));
    assert_eq!(
        from_amqp["data"]["user"]["aadObjectId"],
        user.aad_object_id.as_str()
    );
    // The webhook receiver printed it only after `standardwebhooks` verified the signature.
    let from_webhook = receiver
        .until(Duration::from_secs(20), |line| is_action(&line["event"]))
        .await;
    assert_eq!(
        from_webhook["webhookId"], from_amqp["id"],
        "webhook-id is the event id"
    );
    assert_eq!(from_webhook["event"], from_amqp);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_receipts_mark_exactly_the_messages_up_to_the_id_and_a_forged_one_nothing() {
    // No reminder after the welcome: it would land among this test's messages.
    let stack =
        TestStack::start_with(local_webhooks().with_env("HERALD_REMINDER_DELAY", "1h")).await;
    let (_webhook, mut receiver) = webhook_receiver(&stack, &["herald.notification.read"], 0).await;
    let (user, conversation) = stack.installed_user().await;
    // The welcome is read first, so that what follows concerns only this test's messages.
    let welcome = stack.emulator.activities(&conversation)[0].id.clone();
    stack
        .emulator
        .send_read_receipt(&user, &welcome)
        .await
        .unwrap();
    let line = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(line["event"]["data"]["activityId"], welcome.as_str());
    let mut records = Vec::new();
    for text in ["one", "two", "three"] {
        records.push(deliver(&stack, json!({"to": to(&user), "message": {"text": text}})).await);
    }
    let id = |r: &Value| r["id"].as_str().unwrap().to_owned();
    let activity = |r: &Value| r["activityId"].as_str().unwrap().to_owned();

    // A read receipt with a bad signature is refused and changes nothing.
    let forged = stack
        .emulator
        .read_receipt_activity(&user, &activity(&records[2]));
    let (status, _) = stack
        .emulator
        .post_activity(&forged, TokenVariant::WrongSigningKey)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let status = stack
        .emulator
        .send_read_receipt(&user, &activity(&records[1]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    for (record, read) in records.iter().zip([true, true, false]) {
        let (_, now) = stack.api().get(&id(record)).await;
        assert_eq!(now["readAt"].is_string(), read, "{now}");
    }
    let mut told = Vec::new();
    for _ in 0..2 {
        let line = receiver.next(Duration::from_secs(20)).await;
        told.push(line["event"]["subject"].as_str().unwrap().to_owned());
    }
    told.sort();
    let mut expected = vec![id(&records[0]), id(&records[1])];
    expected.sort();
    assert_eq!(told, expected);
    // The same receipt again tells nothing new; a later one tells only the third.
    stack
        .emulator
        .send_read_receipt(&user, &activity(&records[2]))
        .await
        .unwrap();
    let line = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(line["event"]["subject"], id(&records[2]).as_str());
    assert_eq!(
        line["event"]["data"]["aadObjectId"],
        user.aad_object_id.as_str()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_gets_the_event_again_with_the_same_id_and_one_that_never_answers_is_given_up()
 {
    let stack = TestStack::start_with(local_webhooks()).await;
    let (flaky, mut receiver) = webhook_receiver(&stack, &["herald.installation.*"], 3).await;
    // Nothing listens here: every attempt fails to connect.
    let dead_port = free_port().await;
    let (status, dead) = stack
        .api()
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{dead_port}/"), "types": ["herald.installation.added"]})),
        )
        .await;
    assert_eq!(status, 201, "{dead}");
    let dead = dead["id"].as_str().unwrap().to_owned();

    let user = TeamsUser::random();
    stack.install(&user).await;
    let mut failed_ids = Vec::new();
    for _ in 0..3 {
        let line = receiver.next(Duration::from_secs(20)).await;
        failed_ids.push(
            line["failed"]
                .as_str()
                .expect("a failed attempt")
                .to_owned(),
        );
    }
    let delivered = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(delivered["event"]["type"], "herald.installation.added");
    assert!(
        failed_ids.iter().all(|id| *id == delivered["webhookId"]),
        "{failed_ids:?} {delivered}"
    );

    let attempts = |id: String| {
        let api = stack.api();
        async move {
            api.call(Method::GET, &format!("/webhooks/{id}/attempts"), None)
                .await
                .1
        }
    };
    // The sender records an attempt once the receiver has answered it, so the last one may
    // be a moment behind the receiver.
    let statuses = || async {
        attempts(flaky.clone()).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["statusCode"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    wait_until(
        "the fourth attempt to be recorded",
        Duration::from_secs(5),
        || async { statuses().await.len() == 4 },
    )
    .await;
    assert_eq!(statuses().await, [204, 500, 500, 500], "newest first");
    wait_until(
        "the dead webhook to be given up",
        Duration::from_secs(20),
        || async {
            attempts(dead.clone()).await["items"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("given up after 4 attempts"))
        },
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_urls_reaching_private_addresses_are_refused_with_the_reason() {
    // The default allowlist: any https host, but only at public addresses.
    let stack = TestStack::start().await;
    for (url, reason) in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://localhost:8443/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("http://hooks.example.com/", "HERALD_WEBHOOK_ALLOWLIST"),
    ] {
        let (status, problem) = stack
            .api()
            .call(
                Method::POST,
                "/webhooks",
                Some(&json!({"url": url, "types": ["*"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{url}: {detail}");
    }
    let (status, problem) = stack
        .api()
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({"url": "https://hooks.example.com/", "types": ["herald.nothing"]})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    let (_, list) = stack.api().call(Method::GET, "/webhooks", None).await;
    assert_eq!(list["items"], json!([]), "nothing was made");
    stack.stop().await;
}

/// Events of their own, outside any service, in a namespace of their own, with the Python
/// example consuming everything published there.
struct LoneEvents {
    events: Events,
    redis: Redis,
    consumer: Example,
    /// Stops the broker link (and, through child tokens, whatever a test runs).
    stop: CancellationToken,
    _guard: NamespaceGuard,
}

async fn lone_events(consumer: &str) -> LoneEvents {
    let namespace = fresh_namespace();
    let _guard = NamespaceGuard::new(&namespace);
    let ns: Namespace = namespace.parse().unwrap();
    let stop = CancellationToken::new();
    let broker = broker_link(&amqp_url(), &namespace, &stop).await;
    let redis = Redis::new(&redis_url().parse::<RedisTarget>().unwrap(), ns).unwrap();
    LoneEvents {
        events: Events::new(Publisher::new(broker), redis.clone()),
        redis,
        consumer: event_consumer(&namespace, consumer, &[]).await,
        stop,
        _guard,
    }
}

/// The outbox on its own: an event noted before its change and never published (the process
/// died) is relayed once the change is recorded, and dropped when the change never was.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_publisher_died_after_the_change_still_arrives_and_one_before_it_never() {
    let LoneEvents {
        events,
        redis,
        mut consumer,
        stop,
        _guard,
    } = lone_events("outbox-test").await;
    let statuses = StatusStore::new(redis, Duration::from_secs(600));

    let cancelled = |job: &str| {
        let record = StatusRecord::new(
            &job.parse().unwrap(),
            serde_json::from_value(json!({"conversation": {"id": "a:1"}})).unwrap(),
            Some(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
            time::OffsetDateTime::now_utc(),
        );
        (
            record.clone(),
            herald_shared::events::NotificationChanged::cancelled(
                events.source(),
                &record,
                time::OffsetDateTime::now_utc(),
            ),
        )
    };
    let field = Proof::field_for(EventType::NotificationCancelled);
    // The first job's cancellation is recorded, the second's never is; neither event is
    // published by its (dead) process.
    for (job, recorded) in [("outbox-recorded", true), ("outbox-never", false)] {
        let (record, event) = cancelled(job);
        statuses.create(&record).await.unwrap().unwrap();
        let proof = Proof {
            key: statuses.record_key(job),
            field: field.clone(),
        };
        events.note(&event, Some(&proof)).await.unwrap();
        if recorded {
            let stamp = Stamp {
                field: &field,
                event_id: &event.id,
            };
            statuses
                .cancel(job, time::OffsetDateTime::now_utc(), Some(stamp))
                .await
                .unwrap();
        }
    }
    // A replica's relay (this one's) takes over once the grace has passed.
    tokio::spawn(events.clone().run(stop.child_token()));
    let relayed = consumer
        .next(herald_shared::events::outbox::GRACE + Duration::from_secs(15))
        .await;
    assert_eq!(relayed["subject"], "outbox-recorded");
    assert_eq!(relayed["type"], "herald.notification.cancelled");
    let event: CloudEvent = serde_json::from_str(&relayed.to_string()).unwrap();
    assert_eq!(event.data_as::<Value>().unwrap()["status"], "cancelled");
    // The unrecorded one is dropped, not published.
    let more = tokio::time::timeout(Duration::from_secs(3), consumer.lines.next_line()).await;
    assert!(
        more.is_err(),
        "an event of a change never recorded was published: {more:?}"
    );
    wait_until(
        "the outbox to be empty",
        Duration::from_secs(10),
        || async { events.outbox().waiting().await.unwrap() == 0 },
    )
    .await;
    stop.cancel();
}

/// Events that work waits on go out in batches: many asked for at once are each confirmed
/// and each arrive once; one asked for before the batching task runs, or after it stopped, is
/// published on its own instead of waiting for a batch that never comes.
#[tokio::test(flavor = "multi_thread")]
async fn confirmed_events_go_out_in_batches_and_on_their_own_when_no_batch_runs() {
    let LoneEvents {
        events,
        mut consumer,
        stop,
        _guard,
        ..
    } = lone_events("batches-test").await;
    let event = |n: usize| {
        CloudEvent::new(
            events.source(),
            EventType::NotificationDelivered,
            &format!("batched-{n}"),
            &format!("batched-{n}"),
            &json!({"n": n}),
            time::OffsetDateTime::now_utc(),
        )
    };
    let published_within = |event: CloudEvent, within: Duration| {
        let events = events.clone();
        async move {
            tokio::time::timeout(within, events.publish_unnoted(&event))
                .await
                .expect("the publish did not wait for a batch")
                .expect("the event is confirmed")
        }
    };

    published_within(event(0), Duration::from_secs(5)).await;
    let running = stop.child_token();
    tokio::spawn(events.clone().run(running.clone()));
    futures_util::future::join_all(
        (1..=300).map(|n| published_within(event(n), Duration::from_secs(10))),
    )
    .await;
    running.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    published_within(event(301), Duration::from_secs(5)).await;

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..=301 {
        let told = consumer.next(Duration::from_secs(10)).await;
        assert!(
            seen.insert(told["subject"].as_str().unwrap().to_owned()),
            "{told} twice"
        );
    }
    let expected: std::collections::BTreeSet<String> =
        (0..=301).map(|n| format!("batched-{n}")).collect();
    assert_eq!(seen, expected);
    stop.cancel();
}

/// A Redis of this test's own, to stall (SIGSTOP) without touching the shared one.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = free_port().await;
        let child = redis_server(port, &["--appendonly", "no"], None);
        Self { child, port }
    }

    fn signal(&self, signal: &str) {
        let done = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(done.success());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_press_is_answered_within_a_second_while_redis_stalls_or_rabbitmq_is_away() {
    let redis = OwnRedis::start().await;
    let amqp = herald_tests::proxy::Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let stack = TestStack::start_with(
        StackOptions::default()
            .with_env(
                "HERALD_REDIS_URL",
                &format!("redis://127.0.0.1:{}", redis.port),
            )
            .with_env(
                "HERALD_AMQP_URL",
                &format!("amqp://guest:guest@{}/%2f", amqp.addr()),
            )
            .with_env("HERALD_REMINDER_DELAY", "1h"),
    )
    .await;
    let mut consumer = event_consumer(
        &stack.namespace,
        "press-consumer",
        &["herald.notification.action"],
    )
    .await;
    let (user, _) = stack.installed_user().await;
    let record = deliver(
        &stack,
        json!({
            "to": to(&user),
            "message": {"text": "Approve deploy 42?"},
            "onAction": {"approve": {"text": "Approved"}},
        }),
    )
    .await;
    let activity_id = record["activityId"].as_str().unwrap().to_owned();
    let press = |verb: &'static str| {
        let (emulator, user, activity_id) =
            (stack.emulator.clone(), user.clone(), activity_id.clone());
        async move {
            let started = std::time::Instant::now();
            let answer = emulator
                .press_card_action(&user, &activity_id, verb, json!({}))
                .await
                .unwrap();
            (started.elapsed(), answer)
        }
    };

    // Redis stalls (a process that answers nothing): the press is answered in time with an
    // error the user sees on the card, rather than an answer for a press no one will hear of.
    redis.signal("-STOP");
    let (took, answer) = press("approve").await;
    redis.signal("-CONT");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(answer.body["statusCode"], 500, "{}", answer.body);
    assert!(
        answer.body["value"]["message"]
            .as_str()
            .unwrap()
            .contains("try again")
    );

    // RabbitMQ is away: the press is answered as configured, and told once it is back.
    amqp.cut();
    let (took, answer) = press("approve").await;
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(answer.body["value"], "Approved", "{}", answer.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    amqp.restore();
    let told = consumer
        .until(Duration::from_secs(40), |e| {
            e["type"] == "herald.notification.action"
        })
        .await;
    assert_eq!(told["subject"], record["id"]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_submits_and_uninstalls_are_told_and_a_submit_is_tied_to_its_notification() {
    let stack =
        TestStack::start_with(local_webhooks().with_env("HERALD_REMINDER_DELAY", "1h")).await;
    let (_webhook, mut receiver) = webhook_receiver(
        &stack,
        &[
            "herald.message.received",
            "herald.notification.action",
            "herald.installation.removed",
        ],
        0,
    )
    .await;
    let (user, conversation) = stack.installed_user().await;
    let record = deliver(
        &stack,
        json!({"to": to(&user), "message": {"attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {"type": "AdaptiveCard", "version": "1.5",
                "body": [{"type": "Input.Number", "id": "stars"}],
                "actions": [{"type": "Action.Submit", "title": "Rate"}]}
        }]}}),
    )
    .await;
    let activity_id = record["activityId"].as_str().unwrap().to_owned();

    assert_eq!(
        stack
            .emulator
            .send_user_message(&user, "hello bot")
            .await
            .unwrap(),
        200
    );
    let message = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(message["event"]["type"], "herald.message.received");
    assert_eq!(message["event"]["subject"], user.aad_object_id.as_str());
    assert_eq!(message["event"]["data"]["text"], "hello bot");
    assert_eq!(
        message["event"]["data"]["conversationId"],
        conversation.as_str()
    );

    let submitted = stack
        .emulator
        .submit_card(&user, &activity_id, json!({"stars": 5}))
        .await
        .unwrap();
    assert_eq!(submitted, 200);
    let action = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(action["event"]["type"], "herald.notification.action");
    assert_eq!(action["event"]["subject"], record["id"]);
    assert_eq!(
        action["event"]["data"]["verb"],
        Value::Null,
        "a submit has no verb"
    );
    assert_eq!(action["event"]["data"]["data"], json!({"stars": 5}));

    stack.emulator.uninstall(&user).await.unwrap();
    let removed = receiver.next(Duration::from_secs(20)).await;
    assert_eq!(removed["event"]["type"], "herald.installation.removed");
    assert_eq!(removed["event"]["data"]["scope"], "personal");
    assert_eq!(
        removed["event"]["data"]["aadObjectId"],
        user.aad_object_id.as_str()
    );
    stack.stop().await;
}

/// How long `count` jobs to `users` take from publish to the last delivery.
async fn time_to_deliver(
    stack: &TestStack,
    users: &[TeamsUser],
    count: usize,
    round: &str,
) -> Duration {
    let jobs: Vec<_> = (0..count)
        .map(|i| herald_tests::job_for(&users[i % users.len()], &format!("{round} {i}")))
        .collect();
    let started = std::time::Instant::now();
    herald_tests::publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    stack
        .wait_all_delivered(&jobs, Duration::from_secs(120))
        .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_sending_keeps_its_pace_while_every_webhook_delivery_hangs() {
    let stack = TestStack::start_with(
        StackOptions::unlimited().with_env("HERALD_WEBHOOK_ALLOWLIST", "http://127.0.0.1:*"),
    )
    .await;
    let users: Vec<TeamsUser> = (0..20).map(|_| TeamsUser::random()).collect();
    for user in &users {
        stack.install(user).await;
    }
    const JOBS: usize = 1_000;
    let before = time_to_deliver(&stack, &users, JOBS, "before").await;

    // A receiver that takes every connection and never answers: each POST holds until the
    // sender's timeout.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hanging.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            holding.lock().unwrap().push(socket);
        }
    });
    let (status, created) = stack
        .api()
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({"url": format!("http://127.0.0.1:{port}/"), "types": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let during = time_to_deliver(&stack, &users, JOBS, "during").await;
    let hung = held.lock().unwrap().len();
    eprintln!("{JOBS} jobs: {before:?} before, {during:?} while {hung} webhook POSTs hang");
    assert!(hung > 0, "the webhook deliveries were attempted");
    // The machine is small and shared: a margin for noise, not for a stall (a hanging POST
    // holds 10 s; one in a send's way would hold hundreds of jobs that long).
    assert!(
        during < before * 2 + Duration::from_secs(2),
        "Teams sending slowed from {before:?} to {during:?} while webhooks hang"
    );
    stack.stop().await;
}
