//! Status records live for `HERALD_STATUS_TTL` after their last change (a job due later: after
//! its due time), then go.

use std::time::Duration;

use herald_shared::{
    config::{Namespace, RedisTarget},
    job::{Target, UserTarget},
    store::{
        JobStatus, Outcome, Redis, Remember, SentMessage, SentStore, StatusRecord, StatusStore,
    },
};
use herald_tests::{NamespaceGuard, fresh_namespace, redis_url};
use time::OffsetDateTime;

/// The stores' Redis, in `namespace`.
fn redis_in(namespace: &str) -> Redis {
    let target: RedisTarget = redis_url().parse().unwrap();
    Redis::new(&target, namespace.parse::<Namespace>().unwrap()).unwrap()
}

fn a_user() -> Target {
    Target::User(UserTarget {
        tenant_id: "t".into(),
        aad_object_id: "u".into(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_record_expires_after_its_ttl_from_its_last_change() {
    let namespace = fresh_namespace();
    let _guard = NamespaceGuard::new(&namespace);
    let redis = redis_in(&namespace);
    let statuses = StatusStore::new(redis, Duration::from_millis(1500));
    let now = OffsetDateTime::now_utc();
    let record = StatusRecord::new(&"short-lived".parse().unwrap(), a_user(), None, now);
    statuses.create(&record).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A change (a cancellation here) restarts the clock: past the first 1.5 s, it is still there.
    statuses
        .cancel("short-lived", OffsetDateTime::now_utc(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        statuses.get("short-lived").await.unwrap().is_some(),
        "a change did not extend the record's life"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        statuses.get("short-lived").await.unwrap().is_none(),
        "the record outlived its TTL"
    );
}

/// A job due later keeps its record until the TTL has run from its due time: a job scheduled a
/// month ahead can still be looked up, cancelled and guarded when it is due.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_of_a_job_due_later_lives_until_its_ttl_has_run_from_the_due_time() {
    let namespace = fresh_namespace();
    let _guard = NamespaceGuard::new(&namespace);
    let redis = redis_in(&namespace);
    let ttl = Duration::from_secs(3600);
    let statuses = StatusStore::new(redis, ttl);
    let now = OffsetDateTime::now_utc();
    let due = now + Duration::from_secs(30 * 24 * 3600);
    let record = StatusRecord::new(&"next-month".parse().unwrap(), a_user(), Some(due), now);
    statuses.create(&record).await.unwrap().unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: i64 = redis::cmd("PTTL")
        .arg(format!("{namespace}:job:next-month"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let expected = (due - now + ttl).whole_milliseconds() as i64;
    assert!(
        (expected - 5_000..=expected).contains(&left),
        "kept for {left} ms, not the {expected} ms until its TTL has run from its due time"
    );
}

/// A delivered job's outcome and what a press or a read receipt will look its message up by
/// are written in one round trip: the status script's `EVALSHA` after the sent message's
/// writes. A Redis that no longer knows the script (restarted, failed over: `SCRIPT FLUSH`
/// here) has it loaded and gets both again, and nothing is half written.
#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_and_its_sent_message_are_written_together_even_after_redis_forgot_the_script() {
    let namespace = fresh_namespace();
    let _guard = NamespaceGuard::new(&namespace);
    let redis = redis_in(&namespace);
    let ttl = Duration::from_secs(3600);
    let statuses = StatusStore::new(redis.clone(), ttl);
    let sent = SentStore::new(redis.clone(), ttl);
    let deliver = |n: u64| {
        let id = format!("n-{n}");
        let record = StatusRecord::new(
            &id.parse().unwrap(),
            a_user(),
            None,
            OffsetDateTime::now_utc(),
        );
        let statuses = &statuses;
        let sent = &sent;
        async move {
            statuses.create(&record).await.unwrap().unwrap();
            let activity_id = (1_700_000_000_000 + n).to_string();
            let outcome = Outcome::Delivered {
                service_url: "https://smba.example/".into(),
                conversation_id: "a:1".into(),
                activity_id: Some(activity_id.clone()),
            };
            let message = SentMessage {
                notification_id: id.clone(),
                broadcast_id: None,
                on_action: None,
            };
            let what = Remember {
                personal: true,
                has_actions: true,
            };
            let stored = statuses
                .finish(&id, "me", &outcome, 1, OffsetDateTime::now_utc(), |pipe| {
                    sent.remember(pipe, "a:1", &activity_id, what, &message)
                })
                .await
                .unwrap();
            assert_eq!(stored, JobStatus::Delivered);
            let found = sent.find("a:1", &activity_id).await.unwrap();
            assert_eq!(found, Some(message), "the sent message is remembered");
        }
    };

    deliver(1).await;
    let mut conn = redis.conn();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    deliver(2).await;

    let unread = sent.unread_up_to("a:1", u64::MAX).await.unwrap();
    let ids: Vec<&str> = unread.iter().map(|u| u.notification_id.as_str()).collect();
    assert_eq!(ids, ["n-1", "n-2"], "both messages wait for a read receipt");
    let second = statuses.get("n-2").await.unwrap().unwrap();
    assert_eq!(second.status, JobStatus::Delivered);
    assert_eq!(second.attempts, 1);
}
