//! The RabbitMQ layer on its own: every publish is confirmed or fails loudly, many publishes
//! are in flight at once, and the delay levels hold a job for its delay, no less.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_shared::{
    amqp::{Broker, PublishError, Publisher, Topology, queue_depth},
    config::{Namespace, SecretUrl},
};
use herald_tests::{NamespaceGuard, amqp_url, fresh_namespace, wait_until};
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::FieldTable,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

struct Connected {
    namespace: String,
    broker: Broker,
    publisher: Publisher,
    stop: CancellationToken,
    _guard: NamespaceGuard,
}

async fn connect() -> Connected {
    let namespace = fresh_namespace();
    let stop = CancellationToken::new();
    let ns: Namespace = namespace.parse().unwrap();
    let url = SecretUrl::parse(&amqp_url()).unwrap();
    let broker = Broker::start(
        &url,
        Topology::new(ns),
        "herald-tests",
        stop.clone(),
        &TaskTracker::new(),
    )
    .unwrap();
    wait_until("the broker link", Duration::from_secs(20), || async {
        broker.is_ready()
    })
    .await;
    Connected {
        publisher: Publisher::new(broker.clone()),
        _guard: NamespaceGuard::new(&namespace),
        namespace,
        broker,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unroutable_publish_is_an_error_not_a_silent_loss() {
    let c = connect().await;
    let jobs = c.broker.topology().jobs_exchange();
    let result = c
        .publisher
        .publish(
            &jobs,
            "nobody-listens-here",
            b"{}",
            BasicProperties::default(),
        )
        .await;
    assert!(
        matches!(result, Err(PublishError::Unroutable(_))),
        "{result:?}"
    );
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn many_publishes_in_flight_are_each_confirmed() {
    let c = connect().await;
    let publishes = (0..500).map(|i| {
        let publisher = c.publisher.clone();
        async move {
            publisher
                .publish_job(
                    &format!("job-{i}"),
                    b"{}",
                    Duration::ZERO,
                    FieldTable::default(),
                )
                .await
        }
    });
    let results = futures_util::future::join_all(publishes).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let link = c.broker.current().unwrap();
    let queue = queue_depth(&link.publish_channel, &c.broker.topology().dispatch_queue())
        .await
        .unwrap();
    assert_eq!(
        queue.messages, 500,
        "every confirmed job is in the dispatch queue"
    );
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: cargo test -- --ignored --nocapture"]
async fn measure_confirmed_publish_rates() {
    let c = connect().await;
    for (what, delay) in [
        ("straight to the dispatch queue", Duration::ZERO),
        ("through the delay levels", Duration::from_secs(300)),
    ] {
        let started = Instant::now();
        let publishes = (0..5000).map(|i| {
            let publisher = c.publisher.clone();
            async move {
                publisher
                    .publish_job(&format!("job-{i}"), b"{}", delay, FieldTable::default())
                    .await
            }
        });
        let results = futures_util::future::join_all(publishes).await;
        assert!(results.iter().all(Result::is_ok));
        let took = started.elapsed();
        eprintln!(
            "5000 confirmed publishes {what}: {took:?} ({:.0}/s)",
            5000.0 / took.as_secs_f64()
        );
    }
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delay_levels_hold_each_job_for_about_its_delay() {
    let c = connect().await;
    // 5 s = levels 2 and 0; 2 s = level 1; 0 s goes straight through.
    let delays = [("five", 5), ("two", 2), ("now", 0)];
    let sent = Instant::now();
    for (name, seconds) in delays {
        c.publisher
            .publish_job(
                name,
                b"{}",
                Duration::from_secs(seconds),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let channel = c
        .broker
        .current()
        .unwrap()
        .connection
        .create_channel()
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            Topology::new(c.namespace.parse().unwrap())
                .dispatch_queue()
                .as_str()
                .into(),
            "delay-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (name, seconds) in [("now", 0), ("two", 2), ("five", 5)] {
        let delivery = tokio::time::timeout(Duration::from_secs(15), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let waited = sent.elapsed();
        // A delayed job leaves its first level on the expiry grid: up to one step early (the
        // dispatcher waits out the rest, as it does a sub-second remainder).
        let at_least =
            Duration::from_secs(seconds).saturating_sub(herald_shared::amqp::topology::EXPIRY_GRID);
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str()),
            Some(name)
        );
        assert!(waited >= at_least, "{name} arrived after {waited:?}");
        assert!(
            waited < Duration::from_secs(seconds) + Duration::from_millis(1500),
            "{name} arrived after {waited:?}"
        );
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    c.stop.cancel();
}
