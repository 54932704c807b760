//! Operator tooling for the dead-letter queue `{ns}.dead`: list what is there and why, and
//! redrive jobs back to the dispatch queue (`herald-dispatcher dead …`).
//!
//! A redriven job keeps its id, so the status record still decides: a job that was in fact
//! delivered is not sent again, and a `failed` one is reopened (`queued`) with a fresh retry
//! budget. Messages that are not jobs (poison) stay in the queue for a person to look at.

use std::{collections::BTreeMap, time::Duration};

use herald_shared::{
    amqp::{Broker, InvalidAmqpUrl, Publisher, Topology, headers},
    config::DispatcherConfig,
    job::Job,
    store::{JobStatus, Redis, StatusStore, StoreError},
};
use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions},
    types::AMQPValue,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Url(#[from] InvalidAmqpUrl),
    #[error("RabbitMQ could not be reached within 10 s")]
    Unreachable,
    #[error("RabbitMQ failed")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] herald_shared::amqp::PublishError),
}

/// One message in the dead-letter queue, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// Why it is here: Herald's own reason, or RabbitMQ's (`delivery_limit`).
    pub reason: String,
    pub dead_at: Option<String>,
    /// The job's current status, when the body is a job with a status record.
    pub status: Option<JobStatus>,
    pub body: String,
    pub headers: BTreeMap<String, String>,
}

/// What a redrive did with each message it looked at.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Sent back to the dispatch queue (and reopened where it had failed).
    pub redriven: Vec<String>,
    /// Ended already (delivered, cancelled, expired): removed from the queue, not sent.
    pub already_ended: Vec<String>,
    /// Not jobs: left in the queue.
    pub not_jobs: Vec<String>,
}

/// A short-lived connection to the broker and Redis for one command.
pub struct Tools {
    broker: Broker,
    publisher: Publisher,
    statuses: StatusStore,
    stop: CancellationToken,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
    }
}

impl Tools {
    pub async fn connect(config: &DispatcherConfig) -> Result<Self, DeadLetterError> {
        let common = &config.common;
        let stop = CancellationToken::new();
        let topology = Topology::new(common.namespace.clone());
        let broker = Broker::start(
            &common.amqp,
            topology,
            "herald-dead-letters",
            stop.clone(),
            &TaskTracker::new(),
        )?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !broker.is_ready() {
            if tokio::time::Instant::now() > deadline {
                return Err(DeadLetterError::Unreachable);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let redis = Redis::new(&common.redis, common.namespace.clone())?;
        Ok(Self {
            publisher: Publisher::new(broker.clone()),
            statuses: StatusStore::new(redis, common.status_ttl),
            broker,
            stop,
        })
    }

    /// Up to `limit` messages, oldest first; the queue is left as it was.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let channel = self.channel().await?;
        let mut found = Vec::new();
        while found.len() < limit {
            let Some(message) = self.next(&channel).await? else {
                break;
            };
            found.push(self.describe(&message).await?);
        }
        // Closing the channel hands every message looked at back to the queue, in order.
        channel.close(200, "listed".into()).await?;
        Ok(found)
    }

    /// Redrives the messages whose message id is in `ids` (every one when `ids` is empty).
    pub async fn redrive(&self, ids: &[String]) -> Result<RedriveReport, DeadLetterError> {
        let channel = self.channel().await?;
        let mut report = RedriveReport::default();
        while let Some(message) = self.next(&channel).await? {
            let id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            if !ids.is_empty() && !ids.contains(&id) {
                continue; // left unacked: back in the queue when the channel closes
            }
            let Ok(job) = Job::from_slice(&message.delivery.data) else {
                report.not_jobs.push(id);
                continue;
            };
            let now = OffsetDateTime::now_utc();
            let record = self.statuses.get(&job.id).await?;
            let ended = record
                .as_ref()
                .is_some_and(|r| r.status.is_terminal() && r.status != JobStatus::Failed);
            if ended {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                report.already_ended.push(job.id.into());
                continue;
            }
            self.statuses.reopen(&job.id, now).await?;
            // A fresh start: the trace context stays, the retry count and the verdict go.
            let kept = headers::carried_over_except(
                message.delivery.properties.headers().as_ref(),
                &[
                    headers::ATTEMPTS,
                    headers::NOT_BEFORE,
                    headers::PACE_TURN,
                    headers::DEAD_REASON,
                    headers::DEAD_AT,
                ],
            );
            self.publisher
                .publish_job(&job.id, &message.delivery.data, kept)
                .await?;
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
            report.redriven.push(job.id.into());
        }
        channel.close(200, "redriven".into()).await?;
        Ok(report)
    }

    async fn channel(&self) -> Result<lapin::Channel, DeadLetterError> {
        let link = self.broker.current().ok_or(DeadLetterError::Unreachable)?;
        Ok(link.connection.create_channel().await?)
    }

    async fn next(
        &self,
        channel: &lapin::Channel,
    ) -> Result<Option<BasicGetMessage>, DeadLetterError> {
        let queue = self.broker.topology().dead_queue();
        Ok(channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?)
    }

    async fn describe(&self, message: &BasicGetMessage) -> Result<DeadLetter, DeadLetterError> {
        let properties = &message.delivery.properties;
        let amqp_headers = properties.headers().as_ref();
        let reason = headers::text(amqp_headers, headers::DEAD_REASON)
            .or_else(|| {
                headers::text(amqp_headers, "x-first-death-reason")
                    .map(|r| format!("RabbitMQ: {r}"))
            })
            .unwrap_or_else(|| "unknown".into());
        let status = match Job::from_slice(&message.delivery.data) {
            Ok(job) => self.statuses.get(&job.id).await?.map(|r| r.status),
            Err(_) => None,
        };
        let headers = amqp_headers
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), header_text(v)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(DeadLetter {
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            reason,
            dead_at: headers::text(amqp_headers, headers::DEAD_AT),
            status,
            body: String::from_utf8_lossy(&message.delivery.data).into_owned(),
            headers,
        })
    }

    pub async fn close(self) {
        self.stop.cancel();
    }
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}
