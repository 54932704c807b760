//! `/v1/users/{tenantId}/{aadObjectId}`: what Herald knows of a user (their personal chat with
//! the bot, whether the app is installed) and their clock: the time zone their local times
//! are read in (learned from Teams, or set here, which Teams' later activities never
//! override) and the quiet hours that hold messages to them unless they are urgent.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use herald_shared::{
    calendar::{QuietHours, TimeOfDay, Zone},
    job::openapi,
    store::{ConversationAddress, Profile, ProfileChange},
};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::{
    Ref,
    schema::{ObjectBuilder, OneOfBuilder, Schema, Type},
};

use super::{Api, extract::ApiJson};
use crate::problem::Problem;

/// A user, as Herald knows them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub tenant_id: String,
    /// The user's Entra object id.
    pub aad_object_id: String,
    /// Their personal chat with the bot, if Herald has heard from it.
    pub conversation_id: Option<String>,
    pub service_url: Option<String>,
    /// Whether the app is installed for them (their chat is stored and not removed).
    pub installed: bool,
    /// Their IANA zone: set here, or learned from Teams; null when unknown (local times are
    /// then read in `HERALD_DEFAULT_TIME_ZONE`).
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<Zone>,
    pub quiet_hours: Option<QuietHoursBody>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// Hours in which messages to the user wait (unless `urgent`); `to` earlier than `from` runs
/// past midnight. `from` and `to` must differ.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    #[schema(schema_with = openapi::time_of_day)]
    pub from: TimeOfDay,
    #[schema(schema_with = openapi::time_of_day)]
    pub to: TimeOfDay,
}

/// A change to a user's clock: a field left out stays as it is, null clears it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"timeZone": "Europe/Berlin", "quietHours": {"from": "18:00", "to": "08:00"}}))]
pub struct UserChange {
    /// An IANA zone; it wins over the one Teams reports from now on. Null: forget it (Teams'
    /// next activity may report one again).
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = optional_zone_name)]
    pub time_zone: Option<Option<Zone>>,
    /// Null: no quiet hours.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = optional_quiet_hours)]
    pub quiet_hours: Option<Option<QuietHoursBody>>,
}

/// A field that is present reads as `Some`, null included (`Some(None)`); an absent one is
/// left to `default` (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn optional_zone_name() -> Schema {
    let names = Zone::all_names().map(serde_json::Value::from);
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(names))
                    .description(Some("An IANA time zone name, such as `Europe/Berlin`.")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

fn optional_quiet_hours() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(Ref::from_schema_name("QuietHoursBody"))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// What Herald knows of a user and their clock.
#[utoipa::path(
    get,
    path = "/v1/users/{tenantId}/{aadObjectId}",
    operation_id = "getUser",
    tag = "users",
    params(
        ("tenantId" = String, Path, description = "The user's tenant"),
        ("aadObjectId" = String, Path, description = "The user's Entra object id"),
    ),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Herald has neither heard from nor been told about this user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Path((tenant_id, aad_object_id)): Path<(String, String)>,
) -> Result<Json<User>, Problem> {
    let (profile, chat) = tokio::try_join!(
        api.users.get(&tenant_id, &aad_object_id),
        api.conversations
            .personal_conversation(&tenant_id, &aad_object_id),
    )?;
    if profile.is_none() && chat.is_none() {
        return Err(Problem::not_found(format!(
            "Herald has neither heard from nor been told about user {aad_object_id} of tenant {tenant_id}"
        )));
    }
    Ok(Json(user(
        tenant_id,
        aad_object_id,
        profile.unwrap_or_default(),
        chat,
    )))
}

/// The answer of both calls: the stored profile beside the user's personal chat.
fn user(
    tenant_id: String,
    aad_object_id: String,
    profile: Profile,
    chat: Option<ConversationAddress>,
) -> User {
    User {
        installed: chat.as_ref().is_some_and(|c| c.removed_reason.is_none()),
        conversation_id: chat.as_ref().map(|c| c.conversation_id.clone()),
        service_url: chat.map(|c| c.service_url),
        time_zone: profile.time_zone,
        quiet_hours: profile.quiet_hours.map(|q| QuietHoursBody {
            from: q.from,
            to: q.to,
        }),
        updated_at: profile.updated_at,
        tenant_id,
        aad_object_id,
    }
}

/// Set a user's time zone or quiet hours.
#[utoipa::path(
    patch,
    path = "/v1/users/{tenantId}/{aadObjectId}",
    operation_id = "changeUser",
    tag = "users",
    params(
        ("tenantId" = String, Path, description = "The user's tenant"),
        ("aadObjectId" = String, Path, description = "The user's Entra object id"),
    ),
    request_body = UserChange,
    responses(
        (status = 200, description = "The user, changed", body = User),
        (status = 400, description = "Malformed or invalid (an unknown zone, quiet hours whose `from` equals their `to`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change(
    State(api): State<Arc<Api>>,
    Path((tenant_id, aad_object_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<UserChange>,
) -> Result<Json<User>, Problem> {
    let quiet_hours = request
        .quiet_hours
        .map(|quiet| quiet.map(QuietHours::try_from).transpose())
        .transpose()?;
    let change = ProfileChange {
        time_zone: request.time_zone,
        quiet_hours,
    };
    let now = OffsetDateTime::now_utc();
    // The change answers the profile as it then stands; only the chat is read besides.
    let (profile, chat) = tokio::try_join!(
        api.users.change(&tenant_id, &aad_object_id, &change, now),
        api.conversations
            .personal_conversation(&tenant_id, &aad_object_id),
    )?;
    Ok(Json(user(tenant_id, aad_object_id, profile, chat)))
}

impl TryFrom<QuietHoursBody> for QuietHours {
    type Error = Problem;

    fn try_from(body: QuietHoursBody) -> Result<Self, Problem> {
        if body.from == body.to {
            return Err(Problem::bad_request("quietHours: from and to must differ"));
        }
        Ok(QuietHours {
            from: body.from,
            to: body.to,
        })
    }
}
