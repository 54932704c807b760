//! The events' contract: each type's `data` as the JSON Schema in `schemas/events/` states it
//! and as the Rust types write and read it agree both ways. What Herald writes is valid; what
//! the schema refuses, the Rust types refuse too.

use herald_shared::events::{
    BroadcastCompleted, EventType, EventUser, InstallationChanged, MessageReceived,
    NotificationAction, NotificationChanged, NotificationRead,
};
use herald_tests::repository;
use serde_json::{Value, json};
use time::macros::datetime;

fn schema(kind: EventType) -> jsonschema::Validator {
    let path = repository().join(format!("schemas/events/{}.json", kind.as_str()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&serde_json::from_str(&text).unwrap())
        .expect("a valid JSON Schema")
}

/// Whether the Rust type of `kind`'s data reads `data`.
fn rust_reads(kind: EventType, data: &Value) -> bool {
    let data = data.clone();
    match kind {
        EventType::NotificationDelivered
        | EventType::NotificationFailed
        | EventType::NotificationExpired
        | EventType::NotificationCancelled => {
            serde_json::from_value::<NotificationChanged>(data).is_ok()
        }
        EventType::NotificationRead => serde_json::from_value::<NotificationRead>(data).is_ok(),
        EventType::NotificationAction => serde_json::from_value::<NotificationAction>(data).is_ok(),
        EventType::BroadcastCompleted => serde_json::from_value::<BroadcastCompleted>(data).is_ok(),
        EventType::InstallationAdded | EventType::InstallationRemoved => {
            serde_json::from_value::<InstallationChanged>(data).is_ok()
        }
        EventType::MessageReceived => serde_json::from_value::<MessageReceived>(data).is_ok(),
    }
}

fn user() -> EventUser {
    EventUser {
        aad_object_id: Some("u-1".into()),
        name: Some("Ada".into()),
    }
}

/// Data as Herald writes it, for every type (the fullest and the barest forms).
fn written() -> Vec<(EventType, Value)> {
    let changed = |status: &str, full: bool| NotificationChanged {
        notification_id: "n-1".into(),
        broadcast_id: full.then(|| "b-1".into()),
        tenant_id: full.then(|| "t-1".into()),
        conversation_id: full.then(|| "a:1".into()),
        activity_id: full.then(|| "1700000000000".into()),
        status: status.into(),
        last_error: full.then(|| "403 BotDisabledByAdmin".into()),
    };
    let mut all = Vec::new();
    for (kind, status) in [
        (EventType::NotificationDelivered, "delivered"),
        (EventType::NotificationFailed, "failed"),
        (EventType::NotificationExpired, "expired"),
        (EventType::NotificationCancelled, "cancelled"),
    ] {
        for full in [true, false] {
            all.push((kind, serde_json::to_value(changed(status, full)).unwrap()));
        }
    }
    all.push((
        EventType::NotificationRead,
        serde_json::to_value(NotificationRead {
            notification_id: "n-1".into(),
            broadcast_id: None,
            tenant_id: "t-1".into(),
            aad_object_id: "u-1".into(),
            conversation_id: "a:1".into(),
            activity_id: "1700000000000".into(),
            read_at: datetime!(2026-12-06 09:00 UTC),
        })
        .unwrap(),
    ));
    for verb in [Some("ack".to_owned()), None] {
        all.push((
            EventType::NotificationAction,
            serde_json::to_value(NotificationAction {
                notification_id: "n-1".into(),
                broadcast_id: None,
                tenant_id: Some("t-1".into()),
                user: user(),
                conversation_id: "a:1".into(),
                activity_id: "1700000000000".into(),
                verb,
                data: json!({"build": 42}),
            })
            .unwrap(),
        ));
    }
    all.push((
        EventType::BroadcastCompleted,
        serde_json::to_value(BroadcastCompleted {
            broadcast_id: "b-1".into(),
            counts: herald_shared::store::Counts {
                total: 3,
                pending: 0,
                delivered: 2,
                failed: 1,
                cancelled: 0,
                expired: 0,
                read: 1,
            },
        })
        .unwrap(),
    ));
    for kind in [EventType::InstallationAdded, EventType::InstallationRemoved] {
        all.push((
            kind,
            serde_json::to_value(InstallationChanged {
                tenant_id: Some("t-1".into()),
                scope: "team".into(),
                aad_object_id: None,
                team_id: Some("19:team@thread.tacv2".into()),
                conversation_id: "19:team@thread.tacv2".into(),
            })
            .unwrap(),
        ));
    }
    all.push((
        EventType::MessageReceived,
        serde_json::to_value(MessageReceived {
            tenant_id: Some("t-1".into()),
            user: user(),
            conversation_id: "a:1".into(),
            conversation_type: Some("personal".into()),
            activity_id: "1700000000001".into(),
            text: "hello".into(),
            value: None,
            reply_to_id: None,
            timestamp: Some("2026-12-06T09:00:00.000Z".into()),
        })
        .unwrap(),
    ));
    all
}

#[test]
fn every_type_has_a_schema_and_what_herald_writes_is_valid_and_reads_back() {
    let covered: std::collections::HashSet<_> = written().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        covered.len(),
        EventType::ALL.len(),
        "every type is written here"
    );
    for (kind, data) in written() {
        let errors: Vec<String> = schema(kind)
            .iter_errors(&data)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {data}: {errors:?}", kind.as_str());
        assert!(rust_reads(kind, &data), "{}: {data}", kind.as_str());
    }
}

#[test]
fn what_the_schemas_refuse_the_rust_types_refuse_too() {
    for (kind, data) in written() {
        let object = data.as_object().unwrap();
        let mut refused = vec![];
        // Every field the schema requires, left out.
        let schema_text: Value = serde_json::from_str(
            &std::fs::read_to_string(
                repository().join(format!("schemas/events/{}.json", kind.as_str())),
            )
            .unwrap(),
        )
        .unwrap();
        for required in schema_text["required"].as_array().unwrap() {
            let mut without = object.clone();
            without.remove(required.as_str().unwrap());
            refused.push(Value::Object(without));
        }
        // A field neither knows.
        let mut unknown = object.clone();
        unknown.insert("surprise".into(), json!(1));
        refused.push(Value::Object(unknown));
        let validator = schema(kind);
        for instance in refused {
            assert!(
                !validator.is_valid(&instance),
                "{}: the schema takes {instance}",
                kind.as_str()
            );
            // A field that may be null reads as absent in Rust; the schema is the stricter
            // one there, which is the direction that matters for consumers.
            let nullable_left_out = schema_text["required"].as_array().unwrap().iter().any(|r| {
                !instance
                    .as_object()
                    .unwrap()
                    .contains_key(r.as_str().unwrap())
                    && schema_text["properties"][r.as_str().unwrap()]["type"]
                        .as_array()
                        .is_some_and(|t| t.contains(&json!("null")))
            });
            if !nullable_left_out {
                assert!(
                    !rust_reads(kind, &instance),
                    "{}: Rust reads {instance}",
                    kind.as_str()
                );
            }
        }
    }
}
