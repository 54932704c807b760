//! The job types' OpenAPI schemas, completed with the rules their derived schemas cannot state
//! through attributes, so that the document says everything [`Job::new`](super::Job::new)
//! checks that JSON Schema can say (the rest is in the schemas' descriptions).
//!
//! `schemas/notification.v1.json`, the AMQP contract, states the same rules; the contract tests
//! hold the two documents and the Rust types to the same verdict on every example body.

use utoipa::openapi::{
    KnownFormat, OpenApi, Ref, RefOr, SchemaFormat,
    schema::{
        AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder,
        OneOfBuilder, Schema, Type,
    },
};

/// An optional RFC 3339 date-time (`deliverAt`, `expiresAt`): null means absent.
pub fn optional_date_time(description: &str) -> Schema {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(description)),
    )
}

/// An optional serviceUrl, with the shape `Job::new` checks.
pub fn optional_service_url() -> Schema {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(SERVICE_URL_PATTERN))
            .description(Some(
                "The Bot Connector endpoint for the conversation; it must also be allowed by \
                 HERALD_SERVICE_URL_ALLOWLIST, or the job ends `failed`.",
            )),
    )
}

/// An optional local date-time (`deliverAtLocal`): null means absent.
pub fn optional_local_date_time(description: &str) -> Schema {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(LOCAL_DATE_TIME_PATTERN))
            .description(Some(description)),
    )
}

/// `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`; that it is a real date (no 30 February) is
/// said in the description.
pub const LOCAL_DATE_TIME_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$";

/// `HH:MM`, from 00:00 to 23:59.
pub const TIME_OF_DAY_PATTERN: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]$";

/// A time of day (a window's or quiet hours' `from` and `to`).
pub fn time_of_day() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(TIME_OF_DAY_PATTERN))
            .description(Some("A wall-clock time, HH:MM (00:00 to 23:59)."))
            .build(),
    )
}

/// The name of the component listing every zone name the service knows, and `recipient`.
pub const TIME_ZONE_COMPONENT: &str = "TimeZone";

/// An optional zone: `recipient` or an IANA name (the `TimeZone` component), or null.
pub fn optional_zone_choice() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(Ref::from_schema_name(TIME_ZONE_COMPONENT))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// A zone: `recipient` or an IANA name (the `TimeZone` component).
pub fn zone_choice() -> Ref {
    Ref::from_schema_name(TIME_ZONE_COMPONENT)
}

/// A local date-time or an RFC 3339 instant (a schedule's `start`).
pub fn local_or_instant() -> Schema {
    local_or_instant_or(None)
}

/// [`local_or_instant`], or null (a schedule's `until`).
pub fn optional_local_or_instant() -> Schema {
    local_or_instant_or(Some(ObjectBuilder::new().schema_type(Type::Null)))
}

fn local_or_instant_or(other: Option<ObjectBuilder>) -> Schema {
    let either = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(LOCAL_DATE_TIME_PATTERN)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        );
    let either = match other {
        Some(other) => either.item(other),
        None => either,
    };
    Schema::OneOf(
        either
            .description(Some(
                "A wall-clock time in the recurrence's `timeZone` (YYYY-MM-DDTHH:MM[:SS], a real \
                 date and time), or an RFC 3339 instant (then `timeZone` must name a zone).",
            ))
            .build(),
    )
}

/// A component by name, or null.
pub fn nullable_ref(component: &str, description: &str) -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(Ref::from_schema_name(component))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(description))
            .build(),
    )
}

/// An optional boolean: null means false.
pub fn optional_boolean(description: &str) -> Schema {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some(description)),
    )
}

/// The `TimeZone` component: `recipient`, or a zone of the IANA database the service was built
/// with, listed so that a client (and a request generator) knows exactly which names it takes.
fn time_zone_component() -> Schema {
    let names = std::iter::once("recipient")
        .chain(crate::calendar::Zone::all_names())
        .map(serde_json::Value::from);
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .description(Some(
                "An IANA time zone name (such as `Europe/Berlin`), or `recipient`: the user's own \
                 zone, learned from Teams or set through `/v1/users` (`HERALD_DEFAULT_TIME_ZONE` \
                 when unknown, and for targets that are not a user).",
            ))
            .build(),
    )
}

/// [`super::is_service_url`] as a regular expression.
pub(super) const SERVICE_URL_PATTERN: &str = "^https?://[!-~]+$";

/// `schema` or null, written as `oneOf` rather than as the type list `["string", "null"]`
/// derive writes: request generators (schemathesis among them) read a type list as "any
/// string" and drop the format or pattern beside it.
fn nullable(schema: ObjectBuilder) -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(schema)
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// What an id that becomes a broadcast recipient may hold: no `|`, no control characters.
pub const RECIPIENT_ID_PATTERN: &str = "^[^|\\u0000-\\u001f\\u007f-\\u009f]+$";

/// Adds the rules derive cannot express to the job types' schemas in `openapi`'s components,
/// and the `TimeZone` component the local-time fields refer to:
/// - a message has non-empty `text` or at least one attachment (`anyOf`);
/// - a user is named by exactly one of `aadObjectId`, `userPrincipalName` and `email`
///   (`oneOf`);
/// - a target names exactly one kind of recipient: its object has no other property (serde
///   refuses a second key in an externally tagged enum).
pub fn complete(openapi: &mut OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    components.schemas.insert(
        TIME_ZONE_COMPONENT.to_owned(),
        RefOr::T(time_zone_component()),
    );
    if let Some(entry) = components.schemas.get_mut("Message")
        && let RefOr::T(Schema::Object(message)) = entry
    {
        *entry = RefOr::T(message_with_content(message.clone()));
    }
    if let Some(entry) = components.schemas.get_mut("UserTarget")
        && let RefOr::T(Schema::Object(user)) = entry
    {
        *entry = RefOr::T(user_named_once(user.clone()));
    }
    // A broadcast's gathered audiences name ids that become its recipients, stored as
    // `tenant|user` members: no `|`, no control characters (`recipientId` in
    // `schemas/broadcast.v1.json`).
    for (component, fields) in [
        ("TenantAudience", &["tenantId"][..]),
        ("TeamAudience", &["tenantId", "teamId"]),
        ("GroupAudience", &["tenantId", "groupId"]),
    ] {
        if let Some(RefOr::T(Schema::Object(audience))) = components.schemas.get_mut(component) {
            for field in fields {
                if let Some(RefOr::T(Schema::Object(id))) = audience.properties.get_mut(*field) {
                    id.pattern = Some(RECIPIENT_ID_PATTERN.to_owned());
                    id.max_length = Some(crate::broadcast::MAX_RECIPIENT_ID);
                }
            }
        }
    }
    // An enum's object names exactly one variant: `{"user": …}`, never with other keys.
    for one_of in ["Target", "Audience"] {
        if let Some(RefOr::T(Schema::OneOf(variants))) = components.schemas.get_mut(one_of) {
            for variant in &mut variants.items {
                if let RefOr::T(Schema::Object(variant)) = variant {
                    variant.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                    bound_inline_lists(variant);
                }
            }
        }
    }
}

/// An audience's inline lists: 1 to 10,000 users, 1 to 1,000 channels.
fn bound_inline_lists(variant: &mut Object) {
    use crate::broadcast::{MAX_CHANNELS, MAX_INLINE_USERS};
    for (name, most) in [("users", MAX_INLINE_USERS), ("channels", MAX_CHANNELS)] {
        if let Some(RefOr::T(Schema::Array(list))) = variant.properties.get_mut(name) {
            list.min_items = Some(1);
            list.max_items = Some(most);
        }
    }
}

/// The user object, with exactly one of its names.
fn user_named_once(mut user: Object) -> Schema {
    let description = user.description.take();
    let mut names = OneOfBuilder::new();
    // Each branch wants its name as a string: one sent as `null` is absent.
    for name in ["aadObjectId", "userPrincipalName", "email"] {
        let given = ObjectBuilder::new().schema_type(Type::String);
        names = names.item(ObjectBuilder::new().required(name).property(name, given));
    }
    Schema::AllOf(
        AllOfBuilder::new()
            .item(Schema::Object(user))
            .item(Schema::OneOf(names.build()))
            .description(description)
            .build(),
    )
}

/// The message object, and one of: non-empty `text`, or one attachment at least.
fn message_with_content(mut message: Object) -> Schema {
    let with_text = ObjectBuilder::new().required("text").property(
        "text",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1)),
    );
    let with_attachments = ObjectBuilder::new().required("attachments").property(
        "attachments",
        ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::Object))
            .min_items(Some(1)),
    );
    let description = message.description.take();
    let content = AnyOfBuilder::new()
        .item(with_text)
        .item(with_attachments)
        .build();
    Schema::AllOf(
        AllOfBuilder::new()
            .item(Schema::Object(message))
            .item(Schema::AnyOf(content))
            .description(description)
            .build(),
    )
}
