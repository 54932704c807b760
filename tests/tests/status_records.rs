//! Status records live for `HERALD_STATUS_TTL` after their last change (a job due later: after
//! its due time), then go.

use std::time::Duration;

use herald_shared::{
    config::{Namespace, RedisTarget},
    job::{Target, UserTarget},
    store::{Redis, StatusRecord, StatusStore},
};
use herald_tests::{NamespaceGuard, fresh_namespace, redis_url};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread")]
async fn a_status_record_expires_after_its_ttl_from_its_last_change() {
    let namespace = fresh_namespace();
    let _guard = NamespaceGuard::new(&namespace);
    let target: RedisTarget = redis_url().parse().unwrap();
    let redis = Redis::new(&target, namespace.parse::<Namespace>().unwrap()).unwrap();
    let statuses = StatusStore::new(redis, Duration::from_millis(1500));
    let now = OffsetDateTime::now_utc();
    let to = Target::User(UserTarget {
        tenant_id: "t".into(),
        aad_object_id: "u".into(),
    });
    let record = StatusRecord::new(&"short-lived".parse().unwrap(), to, None, now);
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
    let target: RedisTarget = redis_url().parse().unwrap();
    let redis = Redis::new(&target, namespace.parse::<Namespace>().unwrap()).unwrap();
    let ttl = Duration::from_secs(3600);
    let statuses = StatusStore::new(redis, ttl);
    let now = OffsetDateTime::now_utc();
    let due = now + Duration::from_secs(30 * 24 * 3600);
    let to = Target::User(UserTarget {
        tenant_id: "t".into(),
        aad_object_id: "u".into(),
    });
    let record = StatusRecord::new(&"next-month".parse().unwrap(), to, Some(due), now);
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
