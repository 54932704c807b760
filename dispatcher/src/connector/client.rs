//! REST calls to the Bot Connector at a conversation's serviceUrl.

use std::{sync::Arc, time::Duration};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use super::{
    error::{ConnectorError, parse_error_body},
    token::TokenSource,
};
use crate::bearer;
use herald_shared::{allowlist::ServiceUrlAllowlist, error::Chain};

/// Conversation ids carry `:`, `@` and `;`; everything but unreserved characters is encoded
/// (as teams.net does), which every Teams front end accepts.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What Teams answered to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentActivity {
    /// The new activity's id; absent when Teams split the message and returned none.
    pub id: Option<String>,
}

#[derive(Deserialize)]
struct ResourceResponse {
    id: Option<String>,
}

/// What Teams answered to a conversation creation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedConversation {
    pub id: String,
    /// The first message's id, when the conversation was created with one (a channel thread).
    #[serde(default)]
    pub activity_id: Option<String>,
}

/// One page of a team's roster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterPage {
    /// Absent (or empty) on the last page.
    #[serde(default)]
    pub continuation_token: Option<String>,
    #[serde(default)]
    pub members: Vec<RosterMember>,
}

/// A member as the roster names them; anonymous members have no object id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterMember {
    /// The roster id (`29:…`), by which a 1:1 chat is created.
    pub id: String,
    /// Teams' docs say `objectId` in one sample; both are read.
    #[serde(default, alias = "objectId")]
    pub aad_object_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BotConnector {
    http: reqwest::Client,
    tokens: Arc<TokenSource>,
    allowlist: ServiceUrlAllowlist,
    timeout: Duration,
}

impl BotConnector {
    pub fn new(
        http: reqwest::Client,
        tokens: Arc<TokenSource>,
        allowlist: ServiceUrlAllowlist,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            tokens,
            allowlist,
            timeout,
        }
    }

    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    pub fn allows(&self, service_url: &str) -> bool {
        self.allowlist.allows(service_url)
    }

    /// `POST {serviceUrl}/v3/conversations/{id}/activities`.
    pub async fn send_to_conversation(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity: &serde_json::Value,
    ) -> Result<SentActivity, ConnectorError> {
        let path = ["v3", "conversations", conversation_id, "activities"];
        let body = self
            .call(
                reqwest::Method::POST,
                service_url,
                &path,
                &[],
                Some(activity),
            )
            .await?;
        let parsed: ResourceResponse =
            serde_json::from_str(&body).unwrap_or(ResourceResponse { id: None });
        Ok(SentActivity {
            id: parsed.id.filter(|id| !id.is_empty()),
        })
    }

    /// `POST {serviceUrl}/v3/conversations` for a 1:1 chat between the bot and a user.
    pub async fn create_personal_conversation(
        &self,
        service_url: &str,
        bot_id: &str,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<CreatedConversation, ConnectorError> {
        let body = serde_json::json!({
            "isGroup": false,
            "bot": {"id": bot_id},
            "members": [{"id": user_id}],
            "tenantId": tenant_id,
            "channelData": {"tenant": {"id": tenant_id}},
        });
        self.create_conversation(service_url, &body).await
    }

    /// `POST {serviceUrl}/v3/conversations` starting a thread in a channel with `activity`.
    pub async fn create_channel_thread(
        &self,
        service_url: &str,
        tenant_id: &str,
        channel_id: &str,
        activity: &serde_json::Value,
    ) -> Result<CreatedConversation, ConnectorError> {
        let body = serde_json::json!({
            "isGroup": true,
            "channelData": {"channel": {"id": channel_id}, "tenant": {"id": tenant_id}},
            "tenantId": tenant_id,
            "activity": activity,
        });
        self.create_conversation(service_url, &body).await
    }

    async fn create_conversation(
        &self,
        service_url: &str,
        body: &serde_json::Value,
    ) -> Result<CreatedConversation, ConnectorError> {
        let path = ["v3", "conversations"];
        let text = self
            .call(reqwest::Method::POST, service_url, &path, &[], Some(body))
            .await?;
        serde_json::from_str(&text).map_err(|e| ConnectorError::Teams {
            status: 200,
            code: None,
            message: format!("the created conversation has no id: {}", Chain(&e)),
            retry_after: None,
        })
    }

    /// One page of a team's roster: `GET {serviceUrl}/v3/conversations/{teamId}/pagedmembers`,
    /// from `continuation` (the previous page's token; none for the first). Teams takes 50 to
    /// 500 members a page.
    pub async fn roster_page(
        &self,
        service_url: &str,
        team_id: &str,
        continuation: Option<&str>,
        page_size: u32,
    ) -> Result<RosterPage, ConnectorError> {
        let path = ["v3", "conversations", team_id, "pagedmembers"];
        let size = page_size.clamp(50, 500).to_string();
        let mut query = vec![("pageSize", size.as_str())];
        if let Some(token) = continuation {
            query.push(("continuationToken", token));
        }
        let text = self
            .call(reqwest::Method::GET, service_url, &path, &query, None)
            .await?;
        serde_json::from_str(&text).map_err(|e| ConnectorError::Teams {
            status: 200,
            code: None,
            message: format!("the roster page does not read: {}", Chain(&e)),
            retry_after: None,
        })
    }

    /// `PUT {serviceUrl}/v3/conversations/{id}/activities/{activityId}`: edits a sent message.
    pub async fn update_activity(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity_id: &str,
        activity: &serde_json::Value,
    ) -> Result<(), ConnectorError> {
        let path = activity_path(conversation_id, activity_id);
        let mut activity = activity.clone();
        activity["id"] = activity_id.into();
        self.call(
            reqwest::Method::PUT,
            service_url,
            &path,
            &[],
            Some(&activity),
        )
        .await?;
        Ok(())
    }

    /// `DELETE {serviceUrl}/v3/conversations/{id}/activities/{activityId}`: deletes a sent message.
    pub async fn delete_activity(
        &self,
        service_url: &str,
        conversation_id: &str,
        activity_id: &str,
    ) -> Result<(), ConnectorError> {
        let path = activity_path(conversation_id, activity_id);
        self.call(reqwest::Method::DELETE, service_url, &path, &[], None)
            .await?;
        Ok(())
    }

    /// Makes one authenticated call to `path` (segments, encoded here) below `service_url`,
    /// with `query` (encoded here). The allowlist is checked before a token is even fetched,
    /// on the very URL the request then goes to: it is parsed once, and only its path and
    /// query are set.
    async fn call(
        &self,
        method: reqwest::Method,
        service_url: &str,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<String, ConnectorError> {
        let not_allowed = || ConnectorError::ServiceUrlNotAllowed(service_url.to_owned());
        let mut url = Url::parse(service_url).map_err(|_| not_allowed())?;
        if !self.allowlist.allows_url(&url) {
            return Err(not_allowed());
        }
        url.set_path(&endpoint_path(url.path(), path));
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url.set_fragment(None);
        let token = self.tokens.token().await?;
        let answer = bearer::call(&self.http, method, url, &token, self.timeout, body)
            .await
            .map_err(ConnectorError::Transport)?;
        let (status, retry_after, text) = (answer.status, answer.retry_after, answer.body);
        if status.is_success() {
            return Ok(text);
        }
        if status == StatusCode::UNAUTHORIZED {
            // The token may have been revoked; the next call fetches a new one.
            self.tokens.invalidate();
        }
        let (code, message) = parse_error_body(&text);
        Err(ConnectorError::Teams {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }
}

fn activity_path<'a>(conversation_id: &'a str, activity_id: &'a str) -> [&'a str; 5] {
    [
        "v3",
        "conversations",
        conversation_id,
        "activities",
        activity_id,
    ]
}

/// The serviceUrl's own path (tenant-scoped ones carry a region and tenant id) followed by the
/// operation's segments, each percent-encoded.
fn endpoint_path(base: &str, segments: &[&str]) -> String {
    let mut path = base.trim_end_matches('/').to_owned();
    for segment in segments {
        path.push('/');
        path.extend(utf8_percent_encode(segment, PATH_SEGMENT));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operation_goes_below_the_service_urls_own_path() {
        let conversation = "a:1Xy@thread;messageid=2";
        assert_eq!(
            endpoint_path("/amer/tenant-1/", &["v3", "conversations", conversation]),
            "/amer/tenant-1/v3/conversations/a%3A1Xy%40thread%3Bmessageid%3D2"
        );
        assert_eq!(
            endpoint_path("/", &["v3", "conversations"]),
            "/v3/conversations"
        );
        // A segment cannot climb out of the path it is put in.
        assert_eq!(endpoint_path("/teams", &["../x"]), "/teams/..%2Fx");
    }

    #[test]
    fn conversation_ids_are_percent_encoded() {
        let id = "19:abc@thread.tacv2;messageid=123";
        let encoded = utf8_percent_encode(id, PATH_SEGMENT).to_string();
        assert_eq!(encoded, "19%3Aabc%40thread.tacv2%3Bmessageid%3D123");
        assert_eq!(
            utf8_percent_encode("a:1-x_y.z~", PATH_SEGMENT).to_string(),
            "a%3A1-x_y.z~"
        );
    }
}
