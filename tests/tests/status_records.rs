//! Status records live for `HERALD_STATUS_TTL` after their last change, then go.

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
        .cancel("short-lived", OffsetDateTime::now_utc())
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
