//! Timers on their own, against the real Redis and RabbitMQ: a message parked in Redis reaches
//! the dispatch queue when it is due and not before; replicas never take the same timer; a
//! claimer that dies loses nothing; a message parked again outlives the claim of the old one;
//! and a stored form that does not read is set aside, not lost and not retried for ever.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use herald_shared::{
    amqp::{Broker, DispatchMessage, Publisher, headers},
    config::{Namespace, RedisTarget},
    metrics::{Metrics, Service},
    store::{Redis, TimerStore, timers::partition_of},
    timers::{DispatchQueue, pump},
};
use herald_tests::{NamespaceGuard, amqp_url, broker_link, fresh_namespace, redis_url, wait_until};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

struct Timers {
    namespace: String,
    redis: Redis,
    broker: Broker,
    queue: DispatchQueue,
    stop: CancellationToken,
    _guard: NamespaceGuard,
}

impl Timers {
    async fn start() -> Self {
        let namespace = fresh_namespace();
        let ns: Namespace = namespace.parse().unwrap();
        let stop = CancellationToken::new();
        let broker = broker_link(&amqp_url(), &namespace, &stop).await;
        let target: RedisTarget = redis_url().parse().unwrap();
        let redis = Redis::new(&target, ns).unwrap();
        let queue = DispatchQueue::new(
            Publisher::new(broker.clone()),
            TimerStore::new(redis.clone()),
        );
        Self {
            _guard: NamespaceGuard::new(&namespace),
            namespace,
            redis,
            broker,
            queue,
            stop,
        }
    }

    /// Runs a pump (one dispatcher replica's) until the test ends.
    fn pump(&self) {
        tokio::spawn(pump(
            self.queue.clone(),
            Metrics::new(Service::Dispatcher),
            self.stop.child_token(),
        ));
    }

    /// A consumer of the dispatch queue.
    async fn consume(&self) -> lapin::Consumer {
        self.consume_from(&self.broker.topology().dispatch_queue())
            .await
    }

    async fn consume_from(&self, queue: &str) -> lapin::Consumer {
        let channel = self
            .broker
            .current()
            .unwrap()
            .connection
            .create_channel()
            .await
            .unwrap();
        channel
            .basic_consume(
                queue.into(),
                "timers-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap()
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn message(id: &str) -> DispatchMessage {
    let mut headers = FieldTable::default();
    headers::set_text(&mut headers, headers::TRACEPARENT, "00-trace-span-01");
    DispatchMessage {
        id: id.to_owned(),
        amqp_type: "notification.v1".into(),
        headers,
        body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
    }
}

async fn next(consumer: &mut lapin::Consumer, within: Duration) -> Delivery {
    let delivery = tokio::time::timeout(within, consumer.next())
        .await
        .expect("a message arrives in time")
        .unwrap()
        .unwrap();
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    delivery
}

fn id_of(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_message_reaches_the_dispatch_queue_when_due_and_not_before() {
    let t = Timers::start().await;
    let mut consumer = t.consume().await;
    t.pump();
    let sent = Instant::now();
    for (id, seconds) in [("five", 5), ("two", 2), ("now", 0)] {
        t.queue
            .send(&message(id), Duration::from_secs(seconds))
            .await
            .unwrap();
    }
    // Published at once below a second; the others are waiting in Redis meanwhile.
    assert!(t.queue.timers().due_ms("two").await.unwrap().is_some());
    assert!(t.queue.timers().due_ms("now").await.unwrap().is_none());
    for (id, seconds) in [("now", 0), ("two", 2), ("five", 5)] {
        let delivery = next(&mut consumer, Duration::from_secs(10)).await;
        let waited = sent.elapsed();
        assert_eq!(id_of(&delivery), id);
        assert!(
            waited >= Duration::from_secs(seconds),
            "{id} arrived early, after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(seconds) + Duration::from_millis(700),
            "{id} arrived after {waited:?}"
        );
        // As it was parked: its type, headers and body.
        let expected = message(id);
        assert_eq!(
            delivery.properties.kind().as_ref().map(|k| k.as_str()),
            Some("notification.v1")
        );
        assert_eq!(
            headers::text(delivery.properties.headers().as_ref(), headers::TRACEPARENT),
            Some("00-trace-span-01".to_owned())
        );
        assert_eq!(delivery.data, expected.body);
    }
    wait_until(
        "the timers to be removed",
        Duration::from_secs(5),
        || async { t.queue.timers().waiting().await.unwrap() == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_pumps_publish_every_timer_once() {
    let t = Timers::start().await;
    let mut consumer = t.consume().await;
    let jobs = 3_000;
    let parks = (0..jobs).map(|i| {
        let queue = t.queue.clone();
        async move {
            queue
                .send(&message(&format!("job-{i}")), Duration::from_secs(1))
                .await
        }
    });
    for parked in futures_util::future::join_all(parks).await {
        parked.unwrap();
    }
    for _ in 0..3 {
        t.pump();
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    while seen.len() < jobs {
        let delivery = next(&mut consumer, Duration::from_secs(15)).await;
        *seen.entry(id_of(&delivery)).or_default() += 1;
    }
    // A little longer, for a copy that would come late.
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        *seen.entry(id_of(&delivery)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(seen.len(), jobs);
    assert_eq!(t.queue.timers().waiting().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimer_that_dies_before_publishing_loses_nothing() {
    let t = Timers::start().await;
    let mut consumer = t.consume().await;
    t.queue
        .send(&message("orphan"), Duration::from_secs(1))
        .await
        .unwrap();
    // A replica claims it and dies before publishing (nothing is released or put back).
    let dying = TimerStore::new(t.redis.clone()).with_lease(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let claimed = dying.claim(partition_of("orphan"), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let claimed_at = Instant::now();
    // Another replica's pump leaves it alone while it is leased, then publishes it.
    t.pump();
    let delivery = next(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(id_of(&delivery), "orphan");
    let waited = claimed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(2_900) && waited < Duration::from_secs(4),
        "published {waited:?} after the claim, for a 3 s lease"
    );
    // Once: the dead claimer cannot remove the timer any more, and the pump did.
    assert!(!dying.release(&claimed[0]).await.unwrap());
    assert_eq!(t.queue.timers().waiting().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_parked_again_outlives_the_old_claim_and_a_failed_publish_is_due_again() {
    let t = Timers::start().await;
    let store = t.queue.timers();
    store
        .park(&message("again"), Duration::from_millis(0))
        .await
        .unwrap();
    let partition = partition_of("again");
    let first = store.claim(partition, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    // Leased: nobody else takes it.
    assert!(store.claim(partition, 10).await.unwrap().is_empty());

    // Its publish failed: put back, it is due at once and claimed again. The first claim is
    // over: it cannot release the timer. Round after round, since a put back and a claim
    // within one millisecond are what once gave two claims the same token.
    let mut first = first;
    let mut second = Vec::new();
    for _ in 0..50 {
        store.put_back(&first[0]).await.unwrap();
        second = store.claim(partition, 10).await.unwrap();
        assert_eq!(second.len(), 1);
        assert!(!store.release(&first[0]).await.unwrap());
        first = second.clone();
    }

    // Meanwhile the message is parked again (a redelivered copy comes back early): the claim
    // that is publishing the old one does not remove the new one.
    let mut newer = message("again");
    newer.body = b"{\"id\":\"again\",\"newer\":true}".to_vec();
    store.park(&newer, Duration::from_secs(60)).await.unwrap();
    assert!(!store.release(&second[0]).await.unwrap());
    assert!(store.due_ms("again").await.unwrap().is_some());
    store.forget("again").await.unwrap();
    assert_eq!(store.waiting().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_form_that_does_not_read_is_dead_lettered_with_the_reason() {
    let t = Timers::start().await;
    let partition = partition_of("broken");
    let mut redis = t.redis.conn();
    let () = redis::pipe()
        .hset(
            format!("{}:timers:{{p{partition}}}:parked", t.namespace),
            "broken",
            "no properties here",
        )
        .ignore()
        .zadd(
            format!("{}:timers:{{p{partition}}}:due", t.namespace),
            "broken",
            0,
        )
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();
    t.pump();
    let mut dead = t.consume_from(&t.broker.topology().dead_queue()).await;
    let delivery = next(&mut dead, Duration::from_secs(10)).await;
    assert_eq!(id_of(&delivery), "broken");
    assert_eq!(delivery.data, b"no properties here");
    let reason = headers::text(delivery.properties.headers().as_ref(), headers::DEAD_REASON)
        .unwrap_or_default();
    assert!(
        reason.starts_with("a parked timer's stored form does not read"),
        "{reason}"
    );
    wait_until(
        "the timer to be removed",
        Duration::from_secs(5),
        || async { t.queue.timers().waiting().await.unwrap() == 0 },
    )
    .await;
}
