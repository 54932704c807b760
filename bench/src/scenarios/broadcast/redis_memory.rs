//! Redis' memory at one moment, and what it grew by per recipient: all of it (`used_memory`,
//! which whatever else shares the Redis can disturb) and the run's namespace alone.

use serde_json::json;

use crate::{
    procs::round,
    redis_stats::{self, NamespaceMemory},
    report::Report,
};

#[derive(Debug, Clone)]
pub(super) struct RedisMemory {
    used: u64,
    namespace: NamespaceMemory,
}

impl RedisMemory {
    pub(super) async fn now(namespace: &str) -> anyhow::Result<Self> {
        Ok(Self {
            used: redis_stats::used_memory().await?,
            namespace: redis_stats::namespace_memory(namespace).await?,
        })
    }

    /// What Redis grew by since `before`, per recipient: by `used_memory`, and by the
    /// namespace's own keys (which no other user of the same Redis can disturb), with the
    /// kinds of key that hold it.
    pub(super) fn report_growth(
        &self,
        before: &Self,
        report: &mut Report,
        key: &str,
        label: &str,
        recipients: usize,
    ) {
        let per = |after: u64, before: u64| {
            round(
                after.saturating_sub(before) as f64 / recipients.max(1) as f64,
                0,
            )
        };
        let own = per(self.namespace.bytes(), before.namespace.bytes());
        report.figure(
            key,
            &format!("Redis per recipient: {label}"),
            json!(per(self.used, before.used)),
            &format!("bytes (used_memory; the namespace's own keys: {own} bytes)"),
        );
        report.number(
            &format!("{key}Namespace"),
            &format!("Redis per recipient: {label}, own keys"),
            own,
            "bytes",
        );
        report.text(&format!(
            "  the namespace's keys by kind, bytes per recipient: {}",
            self.namespace.breakdown(recipients)
        ));
    }
}
