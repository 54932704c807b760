//! Herald's broadcast API as a caller uses it: a `list` broadcast created, its recipients
//! uploaded as NDJSON in parts of at most 10 MiB, released, and its `GET` view read.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_emulator::GeneratedUsers;
use serde_json::{Value, json};

/// The most the ingress takes in one upload (`ingress/src/api/broadcasts/recipients.rs`).
pub const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// `/v1/broadcasts` on one ingress, with the test stack's API key, and single notifications
/// beside a broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastApi {
    http: reqwest::Client,
    base: String,
    notifications: String,
}

/// What uploading a list took.
#[derive(Debug, Clone, Copy)]
pub struct Upload {
    pub took: Duration,
    pub parts: usize,
    pub bytes: usize,
    /// Distinct recipients the list holds, as the last part's answer says.
    pub total: u64,
}

impl BroadcastApi {
    pub fn new(http: &reqwest::Client, ingress_url: &str) -> Self {
        Self {
            http: http.clone(),
            base: format!("{ingress_url}/v1/broadcasts"),
            notifications: format!("{ingress_url}/v1/notifications"),
        }
    }

    /// Creates a draft `list` broadcast of `text`.
    pub async fn create_list(&self, id: &str, text: &str) -> anyhow::Result<()> {
        let body = json!({"id": id, "audience": {"list": {}}, "message": {"text": text}});
        let (status, answer) = self.call(self.http.post(&self.base).json(&body)).await?;
        anyhow::ensure!(status == 202, "creating the broadcast: {status} {answer}");
        Ok(())
    }

    /// Uploads every user of `users` (one tenant) to the draft, in parts of at most
    /// [`MAX_UPLOAD_BYTES`], one after another as a caller would.
    pub async fn upload(&self, id: &str, users: &GeneratedUsers) -> anyhow::Result<Upload> {
        let url = format!("{}/{id}/recipients", self.base);
        let started = Instant::now();
        let (mut parts, mut bytes, mut total) = (0, 0, 0);
        let mut next = 0;
        while next < users.count {
            let (part, end) = ndjson_part(users, next);
            next = end;
            parts += 1;
            bytes += part.len();
            let request = self
                .http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(part);
            let (status, answer) = self.call(request).await?;
            anyhow::ensure!(status == 200, "uploading part {parts}: {status} {answer}");
            total = answer["total"]
                .as_u64()
                .context("an upload's answer has no total")?;
        }
        Ok(Upload {
            took: started.elapsed(),
            parts,
            bytes,
            total,
        })
    }

    pub async fn release(&self, id: &str) -> anyhow::Result<()> {
        let url = format!("{}/{id}/release", self.base);
        let (status, answer) = self.call(self.http.post(&url)).await?;
        anyhow::ensure!(status == 202, "releasing the broadcast: {status} {answer}");
        Ok(())
    }

    /// `GET /v1/broadcasts/{id}`.
    pub async fn view(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/{id}", self.base);
        let (status, view) = self.call(self.http.get(&url)).await?;
        anyhow::ensure!(status == 200, "reading the broadcast: {status} {view}");
        Ok(view)
    }

    /// `POST /v1/notifications`: `text` to one user of the emulator's generated `users`, now.
    /// Answers the notification's id.
    pub async fn notify(
        &self,
        users: &GeneratedUsers,
        index: usize,
        text: &str,
    ) -> anyhow::Result<String> {
        let body = json!({
            "to": {"user": {"tenantId": users.tenant_id, "aadObjectId": users.aad_object_id(index)}},
            "message": {"text": text},
        });
        let request = self.http.post(&self.notifications).json(&body);
        let (status, answer) = self.call(request).await?;
        anyhow::ensure!(status == 202, "sending a notification: {status} {answer}");
        answer["id"]
            .as_str()
            .map(str::to_owned)
            .context("an accepted notification has no id")
    }

    /// `GET /v1/notifications/{id}`.
    pub async fn notification(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/{id}", self.notifications);
        let (status, view) = self.call(self.http.get(&url)).await?;
        anyhow::ensure!(status == 200, "reading the notification: {status} {view}");
        Ok(view)
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = request
            .bearer_auth(herald_tests::API_KEY)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        if body.is_empty() {
            return Ok((status, Value::Null));
        }
        match serde_json::from_slice(&body) {
            Ok(value) => Ok((status, value)),
            Err(_) => bail!("{status}: {}", String::from_utf8_lossy(&body)),
        }
    }
}

/// The NDJSON lines of users `from..end`, as many as fit in one upload; returns them and `end`.
fn ndjson_part(users: &GeneratedUsers, from: usize) -> (String, usize) {
    let mut part = String::with_capacity(MAX_UPLOAD_BYTES);
    let mut index = from;
    while index < users.count {
        let line = format!(
            "{}\n",
            json!({"tenantId": users.tenant_id, "aadObjectId": users.aad_object_id(index)})
        );
        if part.len() + line.len() > MAX_UPLOAD_BYTES {
            break;
        }
        part.push_str(&line);
        index += 1;
    }
    (part, index)
}
