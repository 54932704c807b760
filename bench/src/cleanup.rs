//! Removing a run's namespace: its queues and exchanges, and its Redis keys in batches (a big
//! run leaves a few hundred thousand keys, too many for one `DEL` within a client's timeout).

use herald_shared::{amqp::Topology, config::Namespace};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// Keys unlinked per command.
const BATCH: usize = 2_000;

/// Deletes the namespace when dropped, on success, error or panic alike.
#[derive(Debug)]
pub struct NamespaceCleanup {
    namespace: String,
}

impl NamespaceCleanup {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }
}

impl Drop for NamespaceCleanup {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        // A runtime of its own: this may run inside or outside the program's runtime.
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(delete_namespace(&namespace)))
        })
        .join();
        match cleaned {
            Ok(Ok(keys)) => eprintln!("namespace {} deleted ({keys} Redis keys)", self.namespace),
            Ok(Err(error)) => eprintln!(
                "cleaning up namespace {}: {}",
                self.namespace,
                herald_shared::error::Chain(error.as_ref())
            ),
            Err(_) => eprintln!("cleaning up namespace {}: panicked", self.namespace),
        }
    }
}

/// Deletes every queue and exchange of the namespace and its Redis keys; returns the number of
/// keys removed.
pub async fn delete_namespace(namespace: &str) -> anyhow::Result<usize> {
    let topology = Topology::new(namespace.parse::<Namespace>().map_err(anyhow::Error::msg)?);
    let connection = lapin::Connection::connect(
        &herald_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = connection.create_channel().await?;
    let mut queues = topology.all_queues();
    queues.push(format!("{namespace}.bench-ceiling"));
    // Binaries from before timers moved to Redis (`--bin-dir`) declare delay levels.
    let delay_levels: Vec<String> = (0..21)
        .map(|level| format!("{namespace}.delay.{level}"))
        .collect();
    queues.extend(delay_levels.iter().cloned());
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in topology.all_exchanges().into_iter().chain(delay_levels) {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;

    let client = redis::Client::open(herald_tests::redis_url())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH * 5)
            .query_async(&mut redis)
            .await?;
        for batch in keys.chunks(BATCH) {
            let unlinked: usize = redis::cmd("UNLINK")
                .arg(batch)
                .query_async(&mut redis)
                .await?;
            removed += unlinked;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
