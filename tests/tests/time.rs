//! The recipient's clock, end to end: a local due time is read in each recipient's own zone
//! (learned from their Teams client, or set through `/v1/users`), a send window holds a
//! message until it opens, and quiet hours hold one unless it is urgent. The emulator's
//! receive times are the judge.
//!
//! The clock is the real one, not an injected one: each test picks local times a few seconds
//! ahead, or a window that opens at the next whole minute, in the zones it names. A message
//! due on Saturday with a weekday window is shown waiting for Monday 09:00 by the instant its
//! record names when it is accepted (the same computation the dispatcher repeats when it is
//! due), and `shared/src/calendar.rs`'s unit tests show the same on fixed dates.

use std::time::Duration;

use herald_emulator::{TeamsUser, TokenVariant};
use herald_shared::calendar::{LocalDateTime, Zone};
use herald_tests::{TestStack, wait_until};
use serde_json::{Value, json};
use time::{
    OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339, macros::format_description,
};

/// `at` as a wall-clock time in `zone`, to the second.
fn local_time(at: OffsetDateTime, zone: &str) -> String {
    let whole_second = at.replace_nanosecond(0).unwrap();
    zone.parse::<Zone>()
        .unwrap()
        .wall_clock(whole_second)
        .to_string()
}

/// The instant wall-clock `local` names in `zone`, as Herald reads it.
fn instant(local: &str, zone: &str) -> OffsetDateTime {
    local
        .parse::<LocalDateTime>()
        .unwrap()
        .in_zone(zone.parse::<Zone>().unwrap())
}

fn to_user(user: &TeamsUser) -> Value {
    json!({"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}})
}

fn deliver_at(record: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(record["deliverAt"].as_str().unwrap(), &Rfc3339).unwrap()
}

/// When the message with `text` reached the user's chat.
async fn received(
    stack: &TestStack,
    user: &TeamsUser,
    text: &str,
    within: Duration,
) -> OffsetDateTime {
    let conversation = stack.emulator.personal_conversation_id(user);
    let arrived = || {
        stack
            .emulator
            .activities(&conversation)
            .into_iter()
            .find(|a| a.text.as_deref() == Some(text))
    };
    wait_until(&format!("{text:?} to arrive"), within, || async {
        arrived().is_some()
    })
    .await;
    arrived().unwrap().received_at
}

/// A user whose client reports `zone` on the messages they send.
async fn user_in(stack: &TestStack, zone: &str) -> TeamsUser {
    let user = TeamsUser::random().in_time_zone(zone);
    stack.install(&user).await;
    let (status, body) = stack
        .emulator
        .post_activity(
            &stack.emulator.message_activity(&user, "hello"),
            TokenVariant::Valid,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    user
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_due_time_is_kept_in_each_recipients_own_zone() {
    let stack = TestStack::start().await;
    let api = stack.api();
    // Auckland's zone comes from the user's Teams client; Los Angeles' is set through the API
    // (the user's client says UTC, and the explicit zone wins).
    let auckland = user_in(&stack, "Pacific/Auckland").await;
    let los_angeles = user_in(&stack, "Etc/UTC").await;
    let (status, body) = api
        .patch_user(
            &los_angeles.tenant_id,
            &los_angeles.aad_object_id,
            &json!({"timeZone": "America/Los_Angeles"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.get_user(&auckland.tenant_id, &auckland.aad_object_id)
            .await
            .1["timeZone"],
        "Pacific/Auckland"
    );

    // Each at a wall-clock time a few seconds ahead in their own zone.
    let now = OffsetDateTime::now_utc();
    let cases = [
        (&auckland, "Pacific/Auckland", now + Duration::from_secs(5)),
        (
            &los_angeles,
            "America/Los_Angeles",
            now + Duration::from_secs(7),
        ),
    ];
    let mut jobs = Vec::new();
    for (user, zone, at) in cases {
        let local = local_time(at, zone);
        let text = format!("at {local} in {zone}");
        let (status, body) = api
            .create(
                &json!({"to": to_user(user), "message": {"text": text},
                        "deliverAtLocal": local, "timeZone": "recipient"}),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        // Its record says when it will go: that wall-clock time, in the recipient's zone.
        assert_eq!(body["status"], "scheduled", "{body}");
        assert_eq!(deliver_at(&body), instant(&local, zone));
        jobs.push((user, text, instant(&local, zone)));
    }
    for (user, text, due) in jobs {
        arrives_on_time(&stack, user, &text, due, Duration::from_secs(20)).await;
    }
    stack.stop().await;
}

/// Waits for the message with `text`, and checks it came at `due`: not before, within 1 s.
async fn arrives_on_time(
    stack: &TestStack,
    user: &TeamsUser,
    text: &str,
    due: OffsetDateTime,
    within: Duration,
) {
    let arrived = received(stack, user, text, within).await;
    let lateness = arrived - due;
    eprintln!("{text}: {lateness} after its time");
    assert!(
        lateness >= time::Duration::ZERO,
        "{text} arrived {lateness} early"
    );
    assert!(
        lateness < time::Duration::seconds(1),
        "{text} arrived {lateness} late"
    );
}

/// The next whole minute at least 8 s away, as `HH:MM` in UTC, and its instant.
fn next_minute() -> (String, OffsetDateTime) {
    let soon = OffsetDateTime::now_utc() + Duration::from_secs(8);
    let minute = soon
        .replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap()
        + Duration::from_secs(60);
    let format = format_description!("[hour]:[minute]");
    (
        minute.to_offset(UtcOffset::UTC).format(&format).unwrap(),
        minute,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_holds_a_message_until_it_opens_and_quiet_hours_hold_all_but_urgent_ones() {
    let stack = TestStack::start().await;
    let api = stack.api();
    let (opens, opening) = next_minute();
    let closes = (opening + Duration::from_secs(3600))
        .format(format_description!("[hour]:[minute]"))
        .unwrap();
    let today = opening.weekday().to_string().to_lowercase()[..3].to_owned();

    // A window that opens at the next whole minute, on today's weekday, in UTC.
    let windowed = user_in(&stack, "Etc/UTC").await;
    let (status, body) = api
        .create(
            &json!({"to": to_user(&windowed), "message": {"text": "in the window"},
                    "window": {"from": opens, "to": closes, "days": [today], "timeZone": "UTC"}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled", "{body}");
    assert_eq!(deliver_at(&body), opening);

    // Quiet hours that end at the same minute: a plain message waits for their end, an
    // urgent one goes at once.
    let resting = user_in(&stack, "Etc/UTC").await;
    let began = (opening - Duration::from_secs(3 * 3600))
        .format(format_description!("[hour]:[minute]"))
        .unwrap();
    let (status, body) = api
        .patch_user(
            &resting.tenant_id,
            &resting.aad_object_id,
            &json!({"quietHours": {"from": began, "to": opens}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quietHours"], json!({"from": began, "to": opens}));
    let sent = OffsetDateTime::now_utc();
    let (status, plain) = api
        .create(
            &json!({"to": to_user(&resting), "message": {"text": "after the quiet"}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{plain}");
    let (status, urgent) = api
        .create(
            &json!({"to": to_user(&resting), "message": {"text": "urgent"}, "urgent": true}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{urgent}");
    let urgent_at = received(&stack, &resting, "urgent", Duration::from_secs(10)).await;
    assert!(
        urgent_at - sent < time::Duration::seconds(2),
        "the urgent one waited"
    );
    // The dispatcher found the quiet hours and says so in the record.
    let id = plain["id"].as_str().unwrap();
    wait_until(
        "the record to say when it goes",
        Duration::from_secs(10),
        || async {
            let record = api.get(id).await.1;
            record["status"] == "scheduled"
                && record["deliverAt"].as_str().map(|_| deliver_at(&record)) == Some(opening)
        },
    )
    .await;

    for (user, text) in [(&windowed, "in the window"), (&resting, "after the quiet")] {
        arrives_on_time(&stack, user, text, opening, Duration::from_secs(90)).await;
    }
    stack.stop().await;
}

/// A message due on a Saturday, with a weekday window, waits for Monday's opening: the record
/// says so when the request is accepted, without waiting for the weekend.
#[tokio::test(flavor = "multi_thread")]
async fn a_weekday_window_holds_a_saturday_message_until_monday_nine() {
    let stack = TestStack::start().await;
    let user = user_in(&stack, "Europe/Berlin").await;
    let today = OffsetDateTime::now_utc();
    let saturday = (1..=7)
        .map(|d| today + time::Duration::days(d))
        .find(|day| day.weekday() == time::Weekday::Saturday)
        .unwrap();
    let saturday_ten = format!("{}T10:00", saturday.date());
    let monday_nine = format!("{}T09:00", saturday.date() + time::Duration::days(2));
    let (status, body) = stack
        .api()
        .create(
            &json!({"to": to_user(&user), "message": {"text": "on Monday"},
                    "deliverAtLocal": saturday_ten, "timeZone": "recipient",
                    "window": {"from": "09:00", "to": "17:00", "days": ["mon", "tue", "wed", "thu", "fri"]}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(
        deliver_at(&body),
        instant(&monday_nine, "Europe/Berlin"),
        "{body}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_zone_is_learned_from_teams_unless_set_and_bad_values_are_refused() {
    let stack = TestStack::start().await;
    let api = stack.api();
    let stranger = TeamsUser::random();
    let (status, body) = api
        .get_user(&stranger.tenant_id, &stranger.aad_object_id)
        .await;
    assert_eq!(status, 404, "{body}");

    // Installed: known, no zone yet (install events carry none).
    let user = TeamsUser::random().in_time_zone("Asia/Tokyo");
    let conversation = stack.install(&user).await;
    let (status, body) = api.get_user(&user.tenant_id, &user.aad_object_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["installed"], true);
    assert_eq!(body["conversationId"], conversation);
    assert_eq!(body["timeZone"], Value::Null);

    // A message from their client teaches the zone.
    let say = |user: TeamsUser| {
        let stack = &stack;
        async move {
            let activity = stack.emulator.message_activity(&user, "hi");
            let (status, _) = stack
                .emulator
                .post_activity(&activity, TokenVariant::Valid)
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
    };
    say(user.clone()).await;
    let (_, body) = api.get_user(&user.tenant_id, &user.aad_object_id).await;
    assert_eq!(body["timeZone"], "Asia/Tokyo");

    // Set through the API, it wins over the client's from then on; null forgets it.
    let (status, body) = api
        .patch_user(
            &user.tenant_id,
            &user.aad_object_id,
            &json!({"timeZone": "Europe/Berlin"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timeZone"], "Europe/Berlin");
    say(user.clone().in_time_zone("America/Chicago")).await;
    let (_, body) = api.get_user(&user.tenant_id, &user.aad_object_id).await;
    assert_eq!(body["timeZone"], "Europe/Berlin");
    let (_, body) = api
        .patch_user(
            &user.tenant_id,
            &user.aad_object_id,
            &json!({"timeZone": null, "quietHours": null}),
        )
        .await;
    assert_eq!(body["timeZone"], Value::Null);
    say(user.clone().in_time_zone("America/Chicago")).await;
    let (_, body) = api.get_user(&user.tenant_id, &user.aad_object_id).await;
    assert_eq!(body["timeZone"], "America/Chicago");

    // Bad values are refused, naming the field.
    for (change, field) in [
        (json!({"timeZone": "Mars/Olympus"}), "timeZone"),
        (json!({"timeZone": "recipient"}), "timeZone"),
        (
            json!({"quietHours": {"from": "22:00", "to": "22:00"}}),
            "quietHours",
        ),
        (
            json!({"quietHours": {"from": "25:00", "to": "06:00"}}),
            "quietHours",
        ),
        (json!({"timezone": "Europe/Berlin"}), "timezone"),
        (json!([null, null]), "a JSON object"),
    ] {
        let (status, body) = api
            .patch_user(&user.tenant_id, &user.aad_object_id, &change)
            .await;
        assert_eq!(status, 400, "{change}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{change}: {body}"
        );
    }
    let to = to_user(&user);
    for (request, field) in [
        (
            json!({"to": to, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00"}),
            "timeZone",
        ),
        (
            json!({"to": to, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00", "timeZone": "Mars/Olympus"}),
            "timeZone",
        ),
        (
            json!({"to": to, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00", "timeZone": "UTC",
                "deliverAt": "2026-12-07T09:00:00Z"}),
            "deliverAtLocal",
        ),
        (
            json!({"to": to, "message": {"text": "x"}, "window": {"from": "09:00", "to": "09:00"}}),
            "window",
        ),
    ] {
        let (status, body) = api.create(&request, None).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{request}: {body}"
        );
    }
    stack.stop().await;
}
