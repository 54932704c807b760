//! The AMQP contract other services publish to: the JSON Schema in `schemas/`, the OpenAPI
//! document's schema of the same body and the Rust types agree both ways, and a service in
//! another language (Python, pika) publishes a job that Herald delivers.

use std::time::Duration;

use herald_emulator::TeamsUser;
use herald_shared::job::{
    ChannelTarget, ConversationTarget, Job, Message, NamedUser, Target, TextFormat, UserName,
    UserTarget,
};
use herald_tests::{StackOptions, TestStack, python, repository};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repository().join("schemas/notification.v1.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

/// The OpenAPI document's schema of a `POST /v1/notifications` body, resolved within the
/// document's components.
fn openapi_schema() -> jsonschema::Validator {
    let document = serde_json::to_value(herald_ingress::api::openapi()).unwrap();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/components/schemas/NotificationRequest",
        "components": document["components"],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the OpenAPI schemas are valid JSON Schema")
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn every_example_in_the_repository_is_schema_valid_and_a_job() {
    let validator = schema();
    let examples = std::fs::read_dir(repository().join("schemas/examples")).unwrap();
    let mut seen = 0;
    for entry in examples {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let instance: Value = serde_json::from_str(&text).unwrap();
        assert!(
            schema_errors(&validator, &instance).is_empty(),
            "{}: {:?}",
            path.display(),
            schema_errors(&validator, &instance)
        );
        Job::from_slice(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3);
}

#[test]
fn jobs_herald_writes_are_schema_valid() {
    let validator = schema();
    let now = OffsetDateTime::now_utc();
    let targets = [
        Target::User(UserTarget {
            tenant_id: "t".into(),
            aad_object_id: "u".into(),
        }),
        Target::NamedUser(NamedUser {
            tenant_id: "t".into(),
            name: UserName::PrincipalName("ann@contoso.com".into()),
        }),
        Target::NamedUser(NamedUser {
            tenant_id: "t".into(),
            name: UserName::Email("ann@mail.contoso.com".into()),
        }),
        Target::Conversation(ConversationTarget {
            id: "a:1".into(),
            tenant_id: None,
            service_url: None,
        }),
        Target::Conversation(ConversationTarget {
            id: "19:x@thread.tacv2;messageid=1".into(),
            tenant_id: Some("t".into()),
            service_url: Some("https://smba.trafficmanager.net/amer/t/".into()),
        }),
        Target::Channel(ChannelTarget {
            tenant_id: "t".into(),
            team_id: "19:t".into(),
            channel_id: "19:c".into(),
        }),
    ];
    let messages = [
        Message::text("plain"),
        Message {
            text: Some("**md**".into()),
            text_format: Some(TextFormat::Markdown),
            attachments: vec![
                json!({"contentType": "application/vnd.microsoft.card.adaptive", "content": {}}),
            ],
            summary: Some("s".into()),
            entities: vec![json!({"type": "mention"})],
        },
        Message {
            attachments: vec![json!({"contentType": "x"})],
            ..Message::default()
        },
    ];
    for to in &targets {
        for message in &messages {
            for times in [
                (None, None),
                (Some(now), Some(now + Duration::from_secs(60))),
            ] {
                let job = Job::new(
                    "job-1".parse().unwrap(),
                    to.clone(),
                    message.clone(),
                    times.0,
                    times.1,
                )
                .unwrap();
                let instance = serde_json::to_value(&job).unwrap();
                assert!(
                    schema_errors(&validator, &instance).is_empty(),
                    "{instance}: {:?}",
                    schema_errors(&validator, &instance)
                );
            }
        }
    }
}

/// Bodies every rule admits, each with an id (which only the AMQP contract requires).
fn valid_bodies() -> Vec<Value> {
    let user = json!({"user": {"tenantId": "t", "aadObjectId": "u"}});
    vec![
        json!({"id": "a", "to": user, "message": {"text": "x"}}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "someFutureField": [1]}),
        json!({"id": "a", "to": user, "message": {"attachments": [{"contentType": "x"}], "text": null}}),
        json!({"id": "a", "to": user, "message": {"text": "x", "textFormat": null, "summary": null},
               "deliverAt": null, "expiresAt": null}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": "u", "upn": "ignored"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "userPrincipalName": "ann@contoso.com"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "email": "ann@mail.contoso.com"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": null, "email": "ann@mail.contoso.com"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"conversation": {"id": "c", "tenantId": null, "serviceUrl": null}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"conversation": {"id": "c", "serviceUrl": "http://127.0.0.1:3979/teams/"}},
               "message": {"text": "x"}}),
        json!({"id": "~!", "to": {"channel": {"tenantId": "t", "teamId": "19:t", "channelId": "19:c"}},
               "message": {"text": "x", "entities": [{"type": "mention"}]},
               "deliverAt": "2026-11-25T09:00:00+01:00", "expiresAt": "2026-11-25T10:00:00.5Z"}),
        json!({"id": "a", "to": user, "message": {"text": "x"},
               "deliverAtLocal": "2026-12-07T09:00", "timeZone": "recipient"}),
        json!({"id": "a", "to": user, "message": {"text": "x"},
               "deliverAtLocal": "2028-02-29T23:59:59", "timeZone": "Pacific/Auckland",
               "window": {"from": "22:00", "to": "06:00", "days": ["fri", "sat"], "timeZone": "recipient"},
               "urgent": true}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAt": null,
               "deliverAtLocal": null, "timeZone": null, "window": null, "urgent": null}),
        json!({"id": "a", "to": user, "message": {"text": "x"},
               "window": {"from": "09:00", "to": "17:00", "days": null, "timeZone": null}}),
    ]
}

/// Bodies Herald refuses for a rule between fields, or a value, that the schemas state in
/// prose only, each with the field the refusal names.
fn refused_by_prose() -> Vec<(Value, &'static str)> {
    let user = json!({"user": {"tenantId": "t", "aadObjectId": "u"}});
    vec![
        (
            json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00"}),
            "timeZone",
        ),
        (
            json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00",
                "timeZone": "UTC", "deliverAt": "2026-12-07T09:00:00Z"}),
            "deliverAtLocal",
        ),
        (
            json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAtLocal": "2026-02-30T09:00",
                "timeZone": "UTC"}),
            "deliverAtLocal",
        ),
        (
            json!({"id": "a", "to": user, "message": {"text": "x"}, "timeZone": "Mars/Olympus"}),
            "timeZone",
        ),
        (
            json!({"id": "a", "to": user, "message": {"text": "x"}, "window": {"from": "09:00", "to": "09:00"}}),
            "window",
        ),
    ]
}

#[test]
fn herald_refuses_what_the_schemas_say_in_prose_naming_the_field() {
    for (instance, field) in refused_by_prose() {
        let error = Job::from_slice(instance.to_string().as_bytes())
            .expect_err(&format!("Herald accepts {instance}"))
            .to_string();
        assert!(error.contains(&format!("{field}:")), "{instance}: {error}");
    }
}

/// Bodies the schemas refuse, and Herald with them. (Herald also refuses what JSON Schema
/// cannot say, so no schema refuses it: an `expiresAt` not after `deliverAt`, a message over
/// 28,000 bytes as an activity.)
fn invalid_bodies() -> Vec<Value> {
    let user = json!({"user": {"tenantId": "t", "aadObjectId": "u"}});
    vec![
        json!({"id": "", "to": user, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"pigeon": {}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"aadObjectId": "u"}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "", "aadObjectId": "u"}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t"}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": null}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": "u", "email": "a@b.c"}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "userPrincipalName": ""}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": "u"}, "channel": {}}, "message": {"text": "x"}}),
        json!({"id": "a", "to": user, "message": {}}),
        json!({"id": "a", "to": user, "message": {"text": ""}}),
        json!({"id": "a", "to": user, "message": {"text": "x", "textFormat": "html"}}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAt": "tomorrow"}),
        json!({"id": "a", "to": {"channel": {"tenantId": "t", "teamId": "x"}}, "message": {"text": "x"}}),
        json!({"id": "a b", "to": user, "message": {"text": "x"}}),
        json!({"id": "a".repeat(129), "to": user, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"user": {"tenantId": "t", "aadObjectId": "u"}, "note": 1}, "message": {"text": "x"}}),
        json!({"id": "a", "to": {"conversation": {"id": "c", "serviceUrl": "smba.trafficmanager.net/amer/"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": {"conversation": {"id": "c", "serviceUrl": "https://a b/"}},
               "message": {"text": "x"}}),
        json!({"id": "a", "to": user, "message": {"text": null}}),
        json!({"id": "a", "to": user, "message": {"text": "", "attachments": []}}),
        json!({"id": "a", "to": user, "message": {"attachments": ["card"]}}),
        json!({"id": "a", "to": user, "message": {"text": "x", "entities": [1]}}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAt": ""}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "expiresAt": 1}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07 09:00",
               "timeZone": "UTC"}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "deliverAtLocal": "2026-12-07T09:00Z",
               "timeZone": "UTC"}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "timeZone": 5}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "window": {"from": "9:00", "to": "17:00"}}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "window": {"from": "09:00"}}),
        json!({"id": "a", "to": user, "message": {"text": "x"},
               "window": {"from": "09:00", "to": "17:00", "days": ["funday"]}}),
        json!({"id": "a", "to": user, "message": {"text": "x"}, "urgent": "yes"}),
    ]
}

#[test]
fn what_the_schema_refuses_herald_refuses_too() {
    let validator = schema();
    // A job needs its id; a request to `/v1` does not (Herald names the job).
    let without_id =
        json!({"to": {"user": {"tenantId": "t", "aadObjectId": "u"}}, "message": {"text": "x"}});
    for instance in invalid_bodies().into_iter().chain([without_id]) {
        assert!(
            !schema_errors(&validator, &instance).is_empty(),
            "the schema accepts {instance}"
        );
        assert!(
            Job::from_slice(instance.to_string().as_bytes()).is_err(),
            "Herald accepts {instance}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_service_publishes_a_job_that_herald_delivers() {
    let stack = TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let user = TeamsUser::random();
    stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);

    let output = tokio::process::Command::new(python())
        .arg(repository().join("examples/python/publish_notification.py"))
        .args([
            &user.tenant_id,
            &user.aad_object_id,
            "Hello from **Python**",
        ])
        .env("HERALD_AMQP_URL", herald_tests::amqp_url())
        .env("HERALD_NAMESPACE", &stack.namespace)
        .output()
        .await
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example failed (run scripts/test, which installs pika): {stderr}"
    );
    let job_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let record = stack.api().wait_for_status(&job_id, "delivered").await;
    assert_eq!(record["conversationId"], conversation);
    let texts: Vec<_> = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .filter_map(|a| a.text)
        .collect();
    assert!(
        texts.contains(&"Hello from **Python**".to_owned()),
        "{texts:?}"
    );
    stack.stop().await;
}

#[test]
fn the_openapi_document_and_the_job_schema_say_the_same() {
    let (amqp, openapi) = (schema(), openapi_schema());
    for instance in valid_bodies() {
        for (name, validator) in [
            ("the job schema", &amqp),
            ("the OpenAPI document", &openapi),
        ] {
            let errors = schema_errors(validator, &instance);
            assert!(errors.is_empty(), "{name} refuses {instance}: {errors:?}");
        }
        Job::from_slice(instance.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("Herald refuses {instance}: {e}"));
    }
    for instance in invalid_bodies() {
        for (name, validator) in [
            ("the job schema", &amqp),
            ("the OpenAPI document", &openapi),
        ] {
            assert!(
                !schema_errors(validator, &instance).is_empty(),
                "{name} accepts {instance}"
            );
        }
    }
}
