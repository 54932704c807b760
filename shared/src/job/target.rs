//! Who receives a message: a user, a conversation or a channel.
//!
//! A user is named by their Entra object id, or — for someone Herald has never heard from —
//! by `userPrincipalName` or `email`, which the dispatcher resolves through Microsoft Graph
//! when it sends. On the wire both are `{"user": {...}}`; in Rust they are two variants, so
//! that everything past the resolution works with an object id in hand.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::openapi::{RefOr, schema::Schema};

/// Who receives the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetForm", into = "TargetForm")]
pub enum Target {
    /// The user's personal conversation with the bot.
    User(UserTarget),
    /// A user named by `userPrincipalName` or `email`, found through Microsoft Graph.
    NamedUser(NamedUser),
    /// A conversation Herald may or may not have heard from.
    Conversation(ConversationTarget),
    /// A new post in a team channel.
    Channel(ChannelTarget),
}

/// A user by their object id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserTarget {
    pub tenant_id: String,
    /// The user's Entra object id.
    pub aad_object_id: String,
}

/// A user by a name their tenant's directory knows them by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedUser {
    pub tenant_id: String,
    pub name: UserName,
}

/// How a user is named when their object id is not known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserName {
    /// `userPrincipalName`, the sign-in name (`GET /users/{upn}`).
    PrincipalName(String),
    /// `email`, the user's `mail` (`$filter=mail eq '…'`); it may differ from the UPN.
    Email(String),
}

impl UserName {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        match self {
            UserName::PrincipalName(name) | UserName::Email(name) => name,
        }
    }

    /// `userPrincipalName` or `email`: the field it came in.
    pub fn field(&self) -> &'static str {
        match self {
            UserName::PrincipalName(_) => "userPrincipalName",
            UserName::Email(_) => "email",
        }
    }

    /// The name as a key: directories compare both kinds without regard to case.
    pub fn key(&self) -> String {
        let kind = match self {
            UserName::PrincipalName(_) => "upn",
            UserName::Email(_) => "mail",
        };
        format!("{kind}:{}", self.as_str().to_lowercase())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationTarget {
    #[schema(min_length = 1)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The Bot Connector endpoint for the conversation; it must also be allowed by
    /// `HERALD_SERVICE_URL_ALLOWLIST`, or the job ends `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::openapi::optional_service_url)]
    pub service_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTarget {
    #[schema(min_length = 1)]
    pub tenant_id: String,
    #[schema(min_length = 1)]
    pub team_id: String,
    #[schema(min_length = 1)]
    pub channel_id: String,
}

impl Target {
    /// The thread this target's messages count against in Teams' per-thread limits, known
    /// before any lookup: a user's personal chat is one thread per user.
    pub fn thread(&self) -> String {
        match self {
            Target::User(u) => format!(
                "user:{}:{}",
                u.tenant_id,
                u.aad_object_id.to_ascii_lowercase()
            ),
            Target::NamedUser(u) => format!("user:{}:{}", u.tenant_id, u.name.key()),
            Target::Conversation(c) => c.id.clone(),
            Target::Channel(c) => c.channel_id.clone(),
        }
    }

    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Target::User(u) => Some(&u.tenant_id),
            Target::NamedUser(u) => Some(&u.tenant_id),
            Target::Conversation(c) => c.tenant_id.as_deref(),
            Target::Channel(c) => Some(&c.tenant_id),
        }
    }
}

/// A user as the contract writes them: a tenant and exactly one of the three names (a name
/// sent as `null` is taken as absent, like any optional field).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UserTarget)]
pub struct UserForm {
    #[schema(min_length = 1)]
    tenant_id: String,
    /// The user's Entra object id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    aad_object_id: Option<String>,
    /// The user's sign-in name, for a user Herald has never heard from: resolved through
    /// Microsoft Graph (`User.Read.All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    user_principal_name: Option<String>,
    /// The user's mail address (which may differ from the sign-in name): resolved through
    /// Microsoft Graph (`User.Read.All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    email: Option<String>,
}

/// A user, either way they can be named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UserForm", into = "UserForm")]
pub enum AnyUser {
    ById(UserTarget),
    ByName(NamedUser),
}

impl AnyUser {
    pub fn tenant_id(&self) -> &str {
        match self {
            AnyUser::ById(user) => &user.tenant_id,
            AnyUser::ByName(user) => &user.tenant_id,
        }
    }
}

/// The words a user form with no name, or two, is refused in.
pub const ONE_USER_NAME: &str =
    "names a user by exactly one of aadObjectId, userPrincipalName and email";

impl TryFrom<UserForm> for AnyUser {
    type Error = String;

    fn try_from(form: UserForm) -> Result<Self, Self::Error> {
        let name = match (form.aad_object_id, form.user_principal_name, form.email) {
            (Some(aad_object_id), None, None) => {
                return Ok(AnyUser::ById(UserTarget {
                    tenant_id: form.tenant_id,
                    aad_object_id,
                }));
            }
            (None, Some(upn), None) => UserName::PrincipalName(upn),
            (None, None, Some(mail)) => UserName::Email(mail),
            _ => return Err(format!("a user {ONE_USER_NAME}")),
        };
        Ok(AnyUser::ByName(NamedUser {
            tenant_id: form.tenant_id,
            name,
        }))
    }
}

impl From<AnyUser> for UserForm {
    fn from(user: AnyUser) -> Self {
        match user {
            AnyUser::ById(user) => UserForm {
                tenant_id: user.tenant_id,
                aad_object_id: Some(user.aad_object_id),
                user_principal_name: None,
                email: None,
            },
            AnyUser::ByName(NamedUser { tenant_id, name }) => {
                let (upn, email) = match name {
                    UserName::PrincipalName(upn) => (Some(upn), None),
                    UserName::Email(mail) => (None, Some(mail)),
                };
                UserForm {
                    tenant_id,
                    aad_object_id: None,
                    user_principal_name: upn,
                    email,
                }
            }
        }
    }
}

impl From<AnyUser> for Target {
    fn from(user: AnyUser) -> Self {
        match user {
            AnyUser::ById(user) => Target::User(user),
            AnyUser::ByName(user) => Target::NamedUser(user),
        }
    }
}

/// A target as the contract writes it (an object with one key); its schema is the
/// `Target` component.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Target)]
enum TargetForm {
    /// The user's personal conversation with the bot; created when Herald has none stored
    /// (not for a user who uninstalled the app).
    User(UserForm),
    /// A conversation Herald may or may not have heard from.
    Conversation(ConversationTarget),
    /// A new post in a team channel.
    Channel(ChannelTarget),
}

impl TryFrom<TargetForm> for Target {
    type Error = String;

    fn try_from(form: TargetForm) -> Result<Self, Self::Error> {
        Ok(match form {
            TargetForm::User(user) => AnyUser::try_from(user)?.into(),
            TargetForm::Conversation(c) => Target::Conversation(c),
            TargetForm::Channel(c) => Target::Channel(c),
        })
    }
}

impl From<Target> for TargetForm {
    fn from(target: Target) -> Self {
        match target {
            Target::User(user) => TargetForm::User(AnyUser::ById(user).into()),
            Target::NamedUser(user) => TargetForm::User(AnyUser::ByName(user).into()),
            Target::Conversation(c) => TargetForm::Conversation(c),
            Target::Channel(c) => TargetForm::Channel(c),
        }
    }
}

/// The schema of what is read and written: the contract's form.
impl utoipa::PartialSchema for Target {
    fn schema() -> RefOr<Schema> {
        <TargetForm as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Target {
    fn name() -> Cow<'static, str> {
        <TargetForm as utoipa::ToSchema>::name()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <TargetForm as utoipa::ToSchema>::schemas(schemas);
    }
}

impl utoipa::PartialSchema for AnyUser {
    fn schema() -> RefOr<Schema> {
        <UserForm as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for AnyUser {
    fn name() -> Cow<'static, str> {
        <UserForm as utoipa::ToSchema>::name()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <UserForm as utoipa::ToSchema>::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_user_is_named_by_object_id_principal_name_or_email_and_reads_back_as_given() {
        for (body, expected) in [
            (
                json!({"user": {"tenantId": "t", "aadObjectId": "a"}}),
                Target::User(UserTarget {
                    tenant_id: "t".into(),
                    aad_object_id: "a".into(),
                }),
            ),
            (
                json!({"user": {"tenantId": "t", "userPrincipalName": "Ann@Contoso.com"}}),
                Target::NamedUser(NamedUser {
                    tenant_id: "t".into(),
                    name: UserName::PrincipalName("Ann@Contoso.com".into()),
                }),
            ),
            (
                json!({"user": {"tenantId": "t", "email": "ann@mail.contoso.com"}}),
                Target::NamedUser(NamedUser {
                    tenant_id: "t".into(),
                    name: UserName::Email("ann@mail.contoso.com".into()),
                }),
            ),
        ] {
            let target: Target = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(target, expected);
            assert_eq!(serde_json::to_value(&target).unwrap(), body);
        }
    }

    #[test]
    fn a_user_with_no_name_or_two_is_refused_with_the_rule() {
        for body in [
            json!({"user": {"tenantId": "t"}}),
            json!({"user": {"tenantId": "t", "aadObjectId": "a", "email": "a@b.c"}}),
            json!({"user": {"tenantId": "t", "userPrincipalName": "a@b.c", "email": "a@b.c"}}),
        ] {
            let error = serde_json::from_value::<Target>(body).unwrap_err();
            assert!(error.to_string().contains(ONE_USER_NAME), "{error}");
        }
    }

    #[test]
    fn a_name_keys_the_same_whatever_its_case_and_never_like_the_other_kind() {
        let upn = UserName::PrincipalName("Ann@Contoso.com".into());
        assert_eq!(
            upn.key(),
            UserName::PrincipalName("ann@contoso.COM".into()).key()
        );
        assert_ne!(upn.key(), UserName::Email("ann@contoso.com".into()).key());
    }
}
