//! Recurring schedules end to end: every occurrence of a rule is sent once, with two
//! dispatcher replicas running and one of them SIGKILLed; pausing stops it, resuming goes on
//! from the next occurrence, deleting ends it; a bad rule is refused naming the field.

use std::time::Duration;

use herald_emulator::TeamsUser;
use herald_shared::{job::JobId, store::JobStatus};
use herald_tests::{StackOptions, TestStack, service_command, wait_until};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};

fn to_user(user: &TeamsUser) -> Value {
    json!({"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}})
}

async fn call(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = stack
        .http
        .request(method, format!("{}/v1{path}", stack.ingress_url))
        .bearer_auth(herald_tests::API_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ticks(stack: &TestStack, user: &TeamsUser) -> Vec<OffsetDateTime> {
    stack
        .emulator
        .activities(&stack.emulator.personal_conversation_id(user))
        .into_iter()
        .filter(|a| a.text.as_deref() == Some("tick"))
        .map(|a| a.received_at)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_other_second_each_occurrence_is_sent_once_across_a_sigkill_and_a_pause() {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let replica = || {
        service_command("herald-dispatcher", &stack.env())
            .env("HERALD_ADMIN_ADDR", "127.0.0.1:0")
            .spawn()
            .expect("the dispatcher starts")
    };
    let (mut doomed, _other) = (replica(), replica());
    let user = TeamsUser::random();
    stack.install(&user).await;

    // Whole seconds, so that the occurrences fall on even seconds from a known start.
    let start = (OffsetDateTime::now_utc() + Duration::from_secs(3))
        .replace_nanosecond(0)
        .unwrap();
    let local = start
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap();
    let (status, created) = call(
        &stack,
        reqwest::Method::POST,
        "/schedules",
        Some(json!({"id": "every-other-second", "to": to_user(&user), "message": {"text": "tick"},
                    "recurrence": {"rrule": "FREQ=SECONDLY;INTERVAL=2", "timeZone": "UTC", "start": local}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let next: Vec<OffsetDateTime> = created["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| OffsetDateTime::parse(t.as_str().unwrap(), &Rfc3339).unwrap())
        .collect();
    assert_eq!(next[0], start);
    assert_eq!(next[1] - next[0], time::Duration::seconds(2));

    // One replica dies without warning while the schedule runs; the other goes on.
    tokio::time::sleep(Duration::from_secs(8)).await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let _third = replica();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Paused: nothing more (but what was already on its way).
    let (status, paused) = call(
        &stack,
        reqwest::Method::PATCH,
        "/schedules/every-other-second",
        Some(json!({"paused": true})),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next"], json!([]));
    let paused_at = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent_while_paused = ticks(&stack, &user)
        .iter()
        .filter(|at| **at > paused_at + time::Duration::seconds(1))
        .count();
    assert_eq!(sent_while_paused, 0, "a paused schedule sent");

    // Every occurrence from the start to the pause went out once.
    let expected: Vec<OffsetDateTime> = (0..)
        .map(|n| start + time::Duration::seconds(2 * n))
        .take_while(|at| *at < paused_at - time::Duration::seconds(1))
        .collect();
    assert!(
        expected.len() >= 6,
        "{} occurrences before the pause",
        expected.len()
    );
    for occurrence in &expected {
        let id = JobId::for_occurrence("every-other-second", *occurrence);
        let record = stack.status(&id).await;
        assert_eq!(
            record.map(|r| r.status),
            Some(JobStatus::Delivered),
            "the occurrence at {occurrence}"
        );
    }
    let before_resume = ticks(&stack, &user);
    let sent_before_pause = before_resume
        .iter()
        .filter(|at| **at <= paused_at + time::Duration::seconds(1))
        .count();
    assert!(
        sent_before_pause == expected.len() || sent_before_pause == expected.len() + 1,
        "{sent_before_pause} messages for {} occurrences: an occurrence was sent twice",
        expected.len()
    );
    let (_, shown) = call(
        &stack,
        reqwest::Method::GET,
        "/schedules/every-other-second",
        None,
    )
    .await;
    assert_eq!(shown["last"].as_array().unwrap().len(), 5, "{shown}");

    // Resumed: on from the next occurrence after now.
    let (status, resumed) = call(
        &stack,
        reqwest::Method::PATCH,
        "/schedules/every-other-second",
        Some(json!({"paused": false})),
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    let resumed_at = OffsetDateTime::now_utc();
    wait_until(
        "ticks after the resume",
        Duration::from_secs(10),
        || async {
            ticks(&stack, &user)
                .iter()
                .filter(|at| **at > resumed_at)
                .count()
                >= 2
        },
    )
    .await;

    // Deleted: gone, and nothing more.
    let (status, _) = call(
        &stack,
        reqwest::Method::DELETE,
        "/schedules/every-other-second",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deleted_at = OffsetDateTime::now_utc();
    assert_eq!(
        call(
            &stack,
            reqwest::Method::GET,
            "/schedules/every-other-second",
            None
        )
        .await
        .0,
        404
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_delete = ticks(&stack, &user)
        .iter()
        .filter(|at| **at > deleted_at + time::Duration::seconds(1))
        .count();
    assert_eq!(after_delete, 0, "a deleted schedule sent");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_request_is_checked_and_answered_once_per_id() {
    let stack = TestStack::start().await;
    let user = TeamsUser::random();
    let request = |rrule: &str| {
        json!({"id": "weekly", "to": to_user(&user), "message": {"text": "stand-up"},
               "recurrence": {"rrule": rrule, "timeZone": "recipient", "start": "2026-12-07T00:00"}})
    };
    let rule = "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0;BYSECOND=0";
    let (status, first) = call(
        &stack,
        reqwest::Method::POST,
        "/schedules",
        Some(request(rule)),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    // Mondays at 09:00 in the user's zone (unknown: the default, UTC).
    let next = OffsetDateTime::parse(first["next"][0].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(next.weekday(), time::Weekday::Monday);
    assert_eq!((next.hour(), next.minute()), (9, 0));
    let (status, again) = call(
        &stack,
        reqwest::Method::POST,
        "/schedules",
        Some(request(rule)),
    )
    .await;
    assert_eq!(
        status, 200,
        "the same request answers the same schedule: {again}"
    );
    let (status, other) = call(
        &stack,
        reqwest::Method::POST,
        "/schedules",
        Some(request("FREQ=DAILY;BYHOUR=9")),
    )
    .await;
    assert_eq!(status, 409, "{other}");
    for (body, field) in [
        (request("FREQ=SOMETIMES"), "recurrence.rrule"),
        (
            json!({"to": to_user(&user), "message": {"text": "x"},
                   "recurrence": {"rrule": "FREQ=DAILY", "timeZone": "Mars/Olympus", "start": "2026-12-07T00:00"}}),
            "recurrence.timeZone",
        ),
        (
            json!({"to": to_user(&user), "message": {"text": "x"},
                   "recurrence": {"rrule": "FREQ=DAILY", "timeZone": "UTC", "start": "2026-02-30T00:00"}}),
            "recurrence.start",
        ),
        (
            json!({"to": to_user(&user), "message": {},
                   "recurrence": {"rrule": "FREQ=DAILY", "timeZone": "UTC", "start": "2026-12-07T00:00"}}),
            "message",
        ),
    ] {
        let (status, problem) = call(
            &stack,
            reqwest::Method::POST,
            "/schedules",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
    assert_eq!(
        call(&stack, reqwest::Method::GET, "/schedules/nope", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            &stack,
            reqwest::Method::PATCH,
            "/schedules/nope",
            Some(json!({"paused": true}))
        )
        .await
        .0,
        404
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_edits_at_once_keep_the_newest_generations_timer_whichever_parks_last() {
    use herald_shared::{
        amqp::Publisher,
        config::{Namespace, RedisTarget},
        schedule::{Scheduler, Tick},
        store::{Redis, ScheduleStore, TimerStore, UserStore},
        timers::DispatchQueue,
    };
    let stack = TestStack::start().await;
    let user = TeamsUser::random();
    let body = json!({"id": "daily", "to": to_user(&user), "message": {"text": "stand-up"},
        "recurrence": {"rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0;BYSECOND=0", "timeZone": "UTC",
                       "start": "2030-01-01T00:00"}});
    let (status, _) = call(&stack, reqwest::Method::POST, "/schedules", Some(body)).await;
    assert_eq!(status, 201);
    for text in ["stand-up (room 2)", "stand-up (room 3)"] {
        let change = json!({"message": {"text": text}});
        let (status, _) = call(
            &stack,
            reqwest::Method::PATCH,
            "/schedules/daily",
            Some(change),
        )
        .await;
        assert_eq!(status, 200);
    }
    // The first edit's park lands after the second's (as two requests at once can have it).
    let target: RedisTarget = herald_tests::redis_url().parse().unwrap();
    let redis = Redis::new(&target, stack.namespace.parse::<Namespace>().unwrap()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let broker =
        herald_tests::broker_link(&herald_tests::amqp_url(), &stack.namespace, &stop).await;
    let timers = TimerStore::new(redis.clone());
    let scheduler = Scheduler {
        store: ScheduleStore::new(redis.clone()),
        queue: DispatchQueue::new(Publisher::new(broker), timers.clone()),
        users: UserStore::new(redis),
        default_time_zone: herald_shared::calendar::Zone::UTC,
    };
    let latest = scheduler.store.get("daily").await.unwrap().unwrap();
    assert_eq!(latest.generation, 3);
    let stale = herald_shared::schedule::Schedule {
        generation: 2,
        ..latest.clone()
    };
    scheduler
        .park_next(&stale, OffsetDateTime::now_utc())
        .await
        .unwrap();
    // The newest generation's timer is still there: the schedule goes on. (The stale one is
    // dropped when it comes due.)
    assert!(
        timers
            .due_ms(&Tick::timer_id("daily", 3))
            .await
            .unwrap()
            .is_some(),
        "the latest edit's timer survives a stale park"
    );
    stop.cancel();
}
