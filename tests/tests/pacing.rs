//! Teams' limits held across replicas, so that Teams never needs to answer 429: the emulator
//! enforces Teams' real limits and counts every 429 it sends, and the tests count the sends
//! in every window. A 429 pauses the whole tenant, and a tenant with a backlog does not hold
//! up another tenant's job.

use std::time::{Duration, Instant};

use herald_dispatcher::pace::{Admission, Class, Pacer};
use herald_emulator::{Fault, Operation, TeamsUser};
use herald_shared::{
    config::{Namespace, RedisTarget},
    job::{ConversationTarget, Job, Target},
    store::Redis,
};
use herald_tests::{StackOptions, TestStack, busiest, job_for, publish_jobs, wait_until};
use time::OffsetDateTime;

fn quiet_stack(options: StackOptions) -> StackOptions {
    StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..options
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_to_one_conversation_stays_within_teams_limits_however_it_is_named() {
    let stack = TestStack::start_with(quiet_stack(StackOptions::default())).await;
    let user = TeamsUser::random();
    let conversation = stack.install(&user).await;
    // Every other job names the chat by its conversation id instead of the user: one chat,
    // one pacing scope (two scopes would let 14 a second through).
    let jobs: Vec<Job> = (0..30)
        .map(|i| {
            let mut job = job_for(&user, &format!("burst {i}"));
            if i % 2 == 1 {
                job.to = Target::Conversation(ConversationTarget {
                    id: conversation.clone(),
                    tenant_id: Some(user.tenant_id.clone()),
                    service_url: None,
                });
            }
            job
        })
        .collect();
    let started = Instant::now();
    publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    stack
        .wait_all_delivered(&jobs, Duration::from_secs(60))
        .await;
    let took = started.elapsed();

    let times: Vec<_> = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .map(|a| a.received_at)
        .collect();
    let (per_second, per_two) = (
        busiest(&times, Duration::from_secs(1)),
        busiest(&times, Duration::from_secs(2)),
    );
    eprintln!(
        "30 sends to one conversation took {took:?}; busiest 1 s: {per_second}, busiest 2 s: {per_two}"
    );
    assert_eq!(
        stack.emulator.throttled_count(),
        0,
        "Teams had to answer 429"
    );
    assert!(
        per_second <= 7 && per_two <= 8,
        "limits broken: {per_second}/1s, {per_two}/2s"
    );
    // 31 sends at 8 per 2 s need about 7 s; pacing should not be much slower than the limit.
    assert!(took < Duration::from_secs(15), "{took:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_is_held_to_its_rate_across_its_conversations() {
    let stack = TestStack::start_with(
        quiet_stack(StackOptions::default()).with_env("HERALD_TENANT_RATE", "10/1s"),
    )
    .await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut users = Vec::new();
    for i in 0..8 {
        let user = TeamsUser::new(
            tenant.clone(),
            uuid::Uuid::new_v4().to_string(),
            format!("user {i}"),
        );
        stack.install(&user).await;
        users.push(user);
    }
    let since = OffsetDateTime::now_utc();
    let jobs: Vec<Job> = (0..40)
        .map(|i| job_for(&users[i % users.len()], &format!("tenant {i}")))
        .collect();
    publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    stack
        .wait_all_delivered(&jobs, Duration::from_secs(30))
        .await;
    let times: Vec<_> = users
        .iter()
        .flat_map(|u| {
            stack
                .emulator
                .activities(&stack.emulator.personal_conversation_id(u))
        })
        .map(|a| a.received_at)
        .filter(|t| *t >= since)
        .collect();
    let per_second = busiest(&times, Duration::from_secs(1));
    eprintln!("40 sends over 8 conversations of one tenant; busiest 1 s: {per_second} (limit 10)");
    assert!(per_second <= 10, "{per_second} sends in one second");
    assert_eq!(stack.emulator.throttled_count(), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_pauses_the_whole_tenant_for_its_retry_after() {
    let stack = TestStack::start_with(quiet_stack(StackOptions::default())).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let first = TeamsUser::new(tenant.clone(), uuid::Uuid::new_v4().to_string(), "first");
    let second = TeamsUser::new(tenant.clone(), uuid::Uuid::new_v4().to_string(), "second");
    let first_conversation = stack.install(&first).await;
    stack.install(&second).await;
    stack.emulator.inject_fault(
        Fault::new(429)
            .conversation(first_conversation.clone())
            .operation(Operation::SendToConversation)
            .code("Throttled")
            .retry_after("2")
            .times(1),
    );
    let throttled = job_for(&first, "throttled");
    publish_jobs(&stack.namespace, &[&throttled]).await;
    wait_until("the 429", Duration::from_secs(10), || async {
        stack.emulator.throttled_count() == 1
    })
    .await;
    let throttled_at = OffsetDateTime::now_utc();
    // Another conversation of the same tenant waits out the pause too.
    let other = job_for(&second, "same tenant");
    publish_jobs(&stack.namespace, &[&other]).await;
    stack
        .wait_all_delivered(&[throttled.clone(), other.clone()], Duration::from_secs(20))
        .await;
    let after = stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == Operation::SendToConversation && r.at > throttled_at)
        .map(|r| r.at)
        .min()
        .unwrap();
    let quiet = after - throttled_at;
    eprintln!("first call to the tenant after its 429: {quiet} later");
    assert!(
        quiet >= time::Duration::milliseconds(1800),
        "the tenant was called {quiet} after a 429 with Retry-After: 2"
    );
    assert_eq!(stack.status(&throttled.id).await.unwrap().attempts, 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_a_big_backlog_does_not_hold_up_another_tenant() {
    const BACKLOG: usize = 10_000;
    let stack = TestStack::start_with(
        quiet_stack(StackOptions {
            rate_limits: false,
            ..Default::default()
        })
        .with_env("HERALD_TENANT_RATE", "20/1s")
        .with_env("HERALD_CONVERSATION_RATES", "off")
        // The production default: free slots are what lets a backlog cycle past other jobs.
        .with_env("HERALD_PREFETCH", "256"),
    )
    .await;
    let busy = TeamsUser::random();
    let other = TeamsUser::random();
    stack.install(&busy).await;
    let other_conversation = stack.install(&other).await;

    let backlog: Vec<Job> = (0..BACKLOG)
        .map(|i| job_for(&busy, &format!("backlog {i}")))
        .collect();
    let published = Instant::now();
    publish_jobs(&stack.namespace, &backlog.iter().collect::<Vec<_>>()).await;
    let publish_took = published.elapsed();
    let urgent = job_for(&other, "urgent");
    let queued_at = Instant::now();
    publish_jobs(&stack.namespace, &[&urgent]).await;
    wait_until(
        "the other tenant's job",
        Duration::from_secs(30),
        || async {
            stack
                .emulator
                .activities(&other_conversation)
                .iter()
                .any(|a| a.text.as_deref() == Some("urgent"))
        },
    )
    .await;
    let waited = queued_at.elapsed();
    eprintln!(
        "{BACKLOG} jobs of one tenant (published in {publish_took:?}) ahead of another tenant's job: it waited {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the other tenant's job waited {waited:?}"
    );
    stack.stop().await;
}

/// A pacer on Redis in a namespace of its own (gone with the guard), pacing tenants at
/// `tenant_rate` and conversations not at all.
fn pacer_with_tenant_rate(tenant_rate: &str) -> (Pacer, herald_tests::NamespaceGuard) {
    let namespace = herald_tests::fresh_namespace();
    let guard = herald_tests::NamespaceGuard::new(&namespace);
    let target: RedisTarget = herald_tests::redis_url().parse().unwrap();
    let redis = Redis::new(&target, namespace.parse::<Namespace>().unwrap()).unwrap();
    let pacer = Pacer::new(redis, "off".parse().unwrap(), tenant_rate.parse().unwrap());
    (pacer, guard)
}

/// The pacer's queue, told against Redis directly: a send whose turn has come goes before one
/// that just arrived, even when the arrival finds room in the window; and a send is counted
/// from when its call ended, so a slow call pushes the window out.
#[tokio::test(flavor = "multi_thread")]
async fn a_turn_once_given_is_kept_and_a_send_counts_from_its_end() {
    let (pacer, _guard) = pacer_with_tenant_rate("1/1s");
    let admit = |turn| pacer.admit(Some("tenant"), "a:1", turn, Class::Priority, 1);

    let Admission::Now(first) = admit(None).await.unwrap() else {
        panic!("an empty window admits");
    };
    let Admission::Wait { wait, turn } = admit(None).await.unwrap() else {
        panic!("a second in the same second must wait");
    };
    assert!(wait <= Duration::from_millis(1_020), "{wait:?}");
    // Another arrival queues behind the first waiter, one interval (1 s) later.
    let Admission::Wait {
        turn: later_turn, ..
    } = admit(None).await.unwrap()
    else {
        panic!("the window is full");
    };
    assert!(later_turn >= turn + 1_000, "{later_turn} vs {turn}");

    // The first send's call ends 300 ms after it was admitted: it counts from then, so at its
    // turn the holder still finds the window full, and keeps its place.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pacer.sent(&first, true).await.unwrap();
    tokio::time::sleep(wait - Duration::from_millis(300)).await;
    let Admission::Wait { turn: kept, .. } = admit(Some(turn)).await.unwrap() else {
        panic!("the first send counts from the end of its call, 300 ms after its admission");
    };
    assert_eq!(kept, turn, "the holder keeps its place");
    tokio::time::sleep(Duration::from_millis(320)).await;
    // Room again: a newcomer may not take it while turns are out; the holder may.
    assert!(
        matches!(admit(None).await.unwrap(), Admission::Wait { .. }),
        "a newcomer jumped the queue"
    );
    assert!(
        matches!(admit(Some(turn)).await.unwrap(), Admission::Now(_)),
        "the holder of the turn was refused"
    );
}

/// A broadcast's backlog gets turns at the tenant's rate however high it is: the queue's
/// spacing is fractional. Once the window that set the spacing has room again, newcomers still
/// queue behind the turns handed out, at the remembered spacing; a spacing rounded up to a
/// whole millisecond held every tenant to 1,000 turns a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_backlog_gets_turns_at_a_rate_above_one_a_millisecond() {
    // 5,000 requests a second, in a half-second window (room for a slow machine); each send
    // creates its chat, so is two requests: a turn every 2 × 510 ms / 2,500 = 0.408 ms (the
    // window with the pacer's 10 ms margin).
    let (pacer, _guard) = pacer_with_tenant_rate("2500/500ms");
    let admit = |i: usize| {
        let pacer = pacer.clone();
        async move {
            pacer
                .admit(Some("tenant"), &format!("a:{i}"), None, Class::Bulk, 2)
                .await
                .unwrap()
        }
    };
    // Fill the window at once, then queue a backlog behind it.
    let filled = futures_util::future::join_all((0..1_250).map(admit)).await;
    assert!(filled.iter().all(|a| matches!(a, Admission::Now(_))));
    let turns_of = |admissions: Vec<Admission>| -> Vec<u64> {
        admissions
            .into_iter()
            .map(|a| match a {
                Admission::Wait { turn, .. } => turn,
                Admission::Now(_) => panic!("turns are handed out: a newcomer queues"),
            })
            .collect()
    };
    // 3,000 turns of 0.408 ms: the backlog reaches 1.2 s past the window's end.
    let backlog = turns_of(futures_util::future::join_all((1_250..4_250).map(admit)).await);
    let last_turn = *backlog.iter().max().unwrap();
    // The window empties (nobody comes back for their turn here) while the backlog's turns
    // are still ahead: newcomers queue behind them at the spacing the window set.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let turns = turns_of(futures_util::future::join_all((4_250..4_550).map(admit)).await);
    let (first, last) = (*turns.iter().min().unwrap(), *turns.iter().max().unwrap());
    assert!(first >= last_turn, "newcomers queue behind the backlog");
    let span = last - first;
    // 299 spacings of 0.408 ms: 122 ms; at a whole millisecond each, 299.
    assert!(
        (100..=200).contains(&span),
        "300 turns spread over {span} ms, expected about 122 (2,450 a second)"
    );
}
