//! The broadcast's AMQP contract: `schemas/broadcast.v1.json` and the Rust type agree both
//! ways (what one accepts the other accepts, what one refuses the other refuses), and a
//! `broadcast.v1` published straight to RabbitMQ is sent like one made over HTTP.

use std::time::Duration;

use herald_shared::broadcast::Broadcast;
use herald_tests::{StackOptions, TestStack, publish_broadcast, repository, wait_until};
use serde_json::{Value, json};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repository().join("schemas/broadcast.v1.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect()
}

fn user() -> Value {
    json!({"tenantId": "t", "aadObjectId": "u"})
}

fn valid_bodies() -> Vec<Value> {
    let message = json!({"text": "The office is closed on Friday"});
    vec![
        json!({"id": "b-1", "audience": {"users": [user()]}, "message": message}),
        json!({"id": "b-2", "audience": {"list": {}}, "message": message,
               "deliverAt": "2030-01-01T09:00:00Z", "expiresAt": "2030-01-02T09:00:00Z"}),
        json!({"id": "b-3", "audience": {"tenant": {"tenantId": "t"}}, "message": message}),
        json!({"id": "b-4", "audience": {"tenant": {"tenantId": "t", "source": "installs"}}, "message": message}),
        json!({"id": "b-9", "audience": {"tenant": {"tenantId": "t", "source": "directory"}}, "message": message}),
        json!({"id": "b-10", "audience": {"group": {"tenantId": "t", "groupId": "0b7c1e2d-5a4f-4e3b-9c8d-7a6b5c4d3e2f"}},
               "message": message}),
        json!({"id": "b-5", "audience": {"team": {"tenantId": "t", "teamId": "19:x@thread.tacv2"}},
               "message": message, "window": {"from": "09:00", "to": "17:00"}}),
        json!({"id": "b-6", "audience": {"channels": [{"tenantId": "t", "teamId": "19:x", "channelId": "19:y"}]},
               "message": {"attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                            "content": {"type": "AdaptiveCard", "version": "1.5", "body": []}}]}}),
        json!({"id": "b-8", "audience": {"users": [user(), {"tenantId": "t", "userPrincipalName": "ann@contoso.com"},
                                                  {"tenantId": "t", "email": "ann@mail.contoso.com"}]},
               "message": message}),
        json!({"id": "b-7", "audience": {"users": [user()]}, "message": message,
               "deliverAtLocal": "2030-01-01T09:00", "timeZone": "recipient", "urgent": true,
               "unknownField": "ignored"}),
    ]
}

fn invalid_bodies() -> Vec<Value> {
    let message = json!({"text": "x"});
    vec![
        json!({"audience": {"users": [user()]}, "message": message}),
        json!({"id": "", "audience": {"users": [user()]}, "message": message}),
        json!({"id": "a", "audience": {"users": []}, "message": message}),
        json!({"id": "a", "audience": {"users": [{"tenantId": "t"}]}, "message": message}),
        json!({"id": "a", "audience": {"users": [{"tenantId": "t", "aadObjectId": "a|b"}]}, "message": message}),
        json!({"id": "a", "audience": {"users": [{"tenantId": "t", "aadObjectId": "u", "email": "a@b.c"}]}, "message": message}),
        json!({"id": "a", "audience": {"users": [{"tenantId": "t", "userPrincipalName": "a|b"}]}, "message": message}),
        json!({"id": "a", "audience": {"users": [{"tenantId": "t\u{1}", "aadObjectId": "u"}]}, "message": message}),
        json!({"id": "a", "audience": {"everyone": {}}, "message": message}),
        json!({"id": "a", "audience": {"list": {}, "users": [user()]}, "message": message}),
        json!({"id": "a", "audience": {"tenant": {}}, "message": message}),
        json!({"id": "a", "audience": {"tenant": {"tenantId": "t", "source": "everyone"}}, "message": message}),
        json!({"id": "a", "audience": {"group": {"tenantId": "t"}}, "message": message}),
        json!({"id": "a", "audience": {"team": {"tenantId": "t"}}, "message": message}),
        json!({"id": "a", "audience": {"channels": []}, "message": message}),
        json!({"id": "a", "audience": {"channels": [{"tenantId": "t", "teamId": "x"}]}, "message": message}),
        json!({"id": "a", "audience": {"list": {}}, "message": {}}),
        json!({"id": "a", "audience": {"list": {}}, "message": message, "deliverAt": "soon"}),
        json!({"id": "a", "audience": {"list": {}}, "message": message, "timeZone": 3}),
    ]
}

#[test]
fn what_the_schema_accepts_herald_accepts() {
    let validator = schema();
    for instance in valid_bodies() {
        assert!(
            errors(&validator, &instance).is_empty(),
            "{instance}: {:?}",
            errors(&validator, &instance)
        );
        Broadcast::from_slice(instance.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{instance}: {e}"));
    }
}

#[test]
fn what_the_schema_refuses_herald_refuses_too() {
    let validator = schema();
    for instance in invalid_bodies() {
        assert!(
            !errors(&validator, &instance).is_empty(),
            "the schema accepts {instance}"
        );
        assert!(
            Broadcast::from_slice(instance.to_string().as_bytes()).is_err(),
            "Herald accepts {instance}"
        );
    }
}

#[test]
fn inline_lists_are_bounded_in_both() {
    let validator = schema();
    let users: Vec<Value> = (0..10_001)
        .map(|i| json!({"tenantId": "t", "aadObjectId": format!("u-{i}")}))
        .collect();
    let instance = json!({"id": "big", "audience": {"users": users}, "message": {"text": "x"}});
    assert!(!errors(&validator, &instance).is_empty());
    assert!(Broadcast::from_slice(instance.to_string().as_bytes()).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_published_to_rabbitmq_is_sent_and_a_bad_one_is_dead_lettered() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let (user, conversation) = stack.installed_user().await;
    let body = json!({
        "id": "from-amqp",
        "audience": {"users": [{"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}]},
        "message": {"text": "Published to RabbitMQ"},
    });
    publish_broadcast(&stack.namespace, "from-amqp", body.to_string().as_bytes())
        .await
        .unwrap();
    wait_until(
        "the broadcast's message",
        Duration::from_secs(20),
        || async {
            stack
                .emulator
                .activities(&conversation)
                .iter()
                .any(|a| a.text.as_deref() == Some("Published to RabbitMQ"))
        },
    )
    .await;
    // A broadcast that can never be created (a team Herald has no install in) is set aside
    // with the reason.
    let unknown_team = json!({
        "id": "nowhere",
        "audience": {"team": {"tenantId": user.tenant_id, "teamId": "19:none@thread.tacv2"}},
        "message": {"text": "x"},
    });
    publish_broadcast(
        &stack.namespace,
        "nowhere",
        unknown_team.to_string().as_bytes(),
    )
    .await
    .unwrap();
    let dead = format!("{}.dead", stack.namespace);
    wait_until(
        "the broadcast to be dead-lettered",
        Duration::from_secs(20),
        || async {
            herald_tests::queue_depth_of(&dead)
                .await
                .is_ok_and(|depth| depth.messages >= 1)
        },
    )
    .await;
}
