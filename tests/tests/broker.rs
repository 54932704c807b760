//! The RabbitMQ layer on its own: every publish is confirmed or fails loudly, and many
//! publishes are in flight at once. (Waits are parked in Redis: `timers.rs`.)

use std::time::Instant;

use herald_shared::amqp::{Broker, PublishError, Publisher, queue_depth};
use herald_tests::{NamespaceGuard, amqp_url, broker_link, fresh_namespace};
use lapin::{BasicProperties, types::FieldTable};
use tokio_util::sync::CancellationToken;

struct Connected {
    broker: Broker,
    publisher: Publisher,
    stop: CancellationToken,
    _guard: NamespaceGuard,
}

async fn connect() -> Connected {
    connect_to(&amqp_url()).await
}

async fn connect_to(nodes: &str) -> Connected {
    let namespace = fresh_namespace();
    let stop = CancellationToken::new();
    let broker = broker_link(nodes, &namespace, &stop).await;
    Connected {
        publisher: Publisher::new(broker.clone()),
        _guard: NamespaceGuard::new(&namespace),
        broker,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next() {
    // Port 1 refuses at once; the second node of the list is this machine's RabbitMQ.
    let c = connect_to(&format!(
        "amqp://guest:guest@127.0.0.1:1/%2f,{}",
        amqp_url()
    ))
    .await;
    let jobs = c.broker.topology().jobs_exchange();
    c.publisher
        .publish(&jobs, "notification", b"{}", BasicProperties::default())
        .await
        .expect("published through the node that answered");
    c.stop.cancel();
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
                .publish_job(&format!("job-{i}"), b"{}", FieldTable::default())
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
    let started = Instant::now();
    let publishes = (0..5000).map(|i| {
        let publisher = c.publisher.clone();
        async move {
            publisher
                .publish_job(&format!("job-{i}"), b"{}", FieldTable::default())
                .await
        }
    });
    let results = futures_util::future::join_all(publishes).await;
    assert!(results.iter().all(Result::is_ok));
    let took = started.elapsed();
    eprintln!(
        "5000 confirmed publishes to the dispatch queue: {took:?} ({:.0}/s)",
        5000.0 / took.as_secs_f64()
    );
    c.stop.cancel();
}
