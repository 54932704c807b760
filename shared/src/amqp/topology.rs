//! Every exchange, queue, binding and argument Herald uses, in one place: RabbitMQ closes the
//! channel when a queue is redeclared with other arguments, so nothing else declares anything.
//!
//! ```text
//! publish ─▶ {ns}.jobs (topic) ──#.notification──▶ {ns}.dispatch (quorum) ─▶ dispatcher
//!                                                       └─ x-delivery-limit / dead-letter ─▶ {ns}.dead
//! delayed ─▶ {ns}.delay.20 ─▶ … ─▶ {ns}.delay.0 ─▶ {ns}.jobs
//! ```
//!
//! Delays use the binary delay-levels scheme (NServiceBus, kombu) because the delayed-message
//! plugin is neither available nor replicated. Level `L` is a quorum queue whose messages all
//! live `2^L` seconds, so its head is always the next to expire. The routing key spells the
//! delay in binary, one word per level from the highest down, then the final routing key: a
//! delay of 5 s is `0.….0.1.0.1.notification`. Level exchange `L` sends a message whose bit `L`
//! is 1 into its queue and one whose bit is 0 straight on to level `L-1`; the queue dead-letters
//! expired messages (with their routing key) to level `L-1` too, and level 0 hands them to
//! `{ns}.jobs`. Dead-lettering is at-least-once, so a delayed job is never dropped in between.
//!
//! A delayed job enters its first level with a per-message TTL a little shorter than the
//! level's, so that it expires on the next [`EXPIRY_GRID`] boundary: jobs entering within one
//! grid step leave together and stay together down the cascade (each hop moves a batch at
//! once). RabbitMQ moves a dead-lettered batch at a fraction of the cost of the same messages
//! expiring one by one, and batches keep the hops prompt under load. Expiry times still rise
//! in queue order, as a queue's head must expire first; the per-message TTL is dropped when a
//! message is dead-lettered, so later levels use their own.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::config::Namespace;

/// The routing key of notification jobs, as other services publish them.
pub const NOTIFICATION_ROUTING_KEY: &str = "notification";

/// Delay levels: the longest single delay is `2^LEVELS - 1` seconds (about 24 days); a job due
/// later than that goes round again when it arrives early.
pub const DELAY_LEVELS: u32 = 21;

/// Delayed jobs leave their first level on a boundary of this grid (see the module docs): it
/// bounds how early they arrive, on top of the sub-second remainder the dispatcher waits out.
pub const EXPIRY_GRID: Duration = Duration::from_millis(250);

/// How many times RabbitMQ redelivers a job whose handler keeps dying before it dead-letters it.
pub const DISPATCH_DELIVERY_LIMIT: i64 = 10;

/// The names of one namespace's exchanges and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: Namespace,
}

impl Topology {
    pub fn new(namespace: Namespace) -> Self {
        Self { namespace }
    }

    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    pub fn dispatch_queue(&self) -> String {
        format!("{}.dispatch", self.namespace)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    pub fn delay_exchange(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.namespace)
    }

    pub fn delay_queue(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.namespace)
    }

    /// Where a message delayed by `delay` enters the cascade, published at `now_ms` (Unix
    /// milliseconds): straight at the level of the delay's highest bit. The levels above
    /// would only pass it down (their bits are 0), and each exchange-to-exchange hop costs a
    /// topic match; entering low makes a delayed publish several times cheaper.
    pub fn delay_entry(&self, delay: Duration, final_key: &str, now_ms: u64) -> DelayEntry {
        let seconds = delay.as_secs().clamp(1, (1 << DELAY_LEVELS) - 1);
        let highest_bit = 63 - seconds.leading_zeros();
        let level_ms = 1000u64 << highest_bit;
        let grid_ms = EXPIRY_GRID.as_millis() as u64;
        DelayEntry {
            exchange: self.delay_exchange(highest_bit),
            routing_key: delay_routing_key(delay, final_key),
            expiration_ms: level_ms - now_ms % grid_ms,
        }
    }

    /// Every queue, for operators and for tests that clean up after themselves.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.dispatch_queue(), self.dead_queue()];
        queues.extend((0..DELAY_LEVELS).map(|l| self.delay_queue(l)));
        queues
    }

    pub fn all_exchanges(&self) -> Vec<String> {
        let mut exchanges = vec![self.jobs_exchange(), self.dead_exchange()];
        exchanges.extend((0..DELAY_LEVELS).map(|l| self.delay_exchange(l)));
        exchanges
    }

    /// Declares everything; idempotent, so every service does it at every (re)connection.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.jobs_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        declare_quorum_queue(channel, &self.dead_queue(), &[]).await?;
        bind_queue(channel, &self.dead_queue(), &self.dead_exchange(), "").await?;

        declare_quorum_queue(
            channel,
            &self.dispatch_queue(),
            &[
                ("x-dead-letter-exchange", long_string(&self.dead_exchange())),
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(DISPATCH_DELIVERY_LIMIT),
                ),
            ],
        )
        .await?;
        bind_queue(
            channel,
            &self.dispatch_queue(),
            &self.jobs_exchange(),
            &format!("#.{NOTIFICATION_ROUTING_KEY}"),
        )
        .await?;

        for level in 0..DELAY_LEVELS {
            let exchange = self.delay_exchange(level);
            let next = if level == 0 {
                self.jobs_exchange()
            } else {
                self.delay_exchange(level - 1)
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            let ttl_ms = 1000i64 << level;
            declare_quorum_queue(
                channel,
                &self.delay_queue(level),
                &[
                    ("x-message-ttl", AMQPValue::LongLongInt(ttl_ms)),
                    ("x-dead-letter-exchange", long_string(&next)),
                ],
            )
            .await?;
            bind_queue(
                channel,
                &self.delay_queue(level),
                &exchange,
                &level_pattern(level, '1'),
            )
            .await?;
            channel
                .exchange_bind(
                    next.as_str().into(),
                    exchange.as_str().into(),
                    level_pattern(level, '0').into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Where and how a delayed message is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayEntry {
    pub exchange: String,
    pub routing_key: String,
    /// The message's own TTL in its first level: the level's, shortened to end on the grid.
    pub expiration_ms: u64,
}

/// Every queue is a quorum queue; dead-lettering out of it is at-least-once, which RabbitMQ
/// allows only with `reject-publish` overflow.
async fn declare_quorum_queue(
    channel: &Channel,
    name: &str,
    extra: &[(&str, AMQPValue)],
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    for (key, value) in extra {
        args.insert(ShortString::from(*key), value.clone());
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(name.into(), options, args).await?;
    Ok(())
}

async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The binding pattern matching bit `level` = `bit`: one word per higher level, then the bit.
fn level_pattern(level: u32, bit: char) -> String {
    let higher = (DELAY_LEVELS - 1 - level) as usize;
    format!("{}{bit}.#", "*.".repeat(higher))
}

/// The routing key that carries a message through the delay levels for `delay` (whole
/// seconds, rounded down; the dispatcher waits out the remainder) and then on with `final_key`.
pub fn delay_routing_key(delay: Duration, final_key: &str) -> String {
    let max = (1u64 << DELAY_LEVELS) - 1;
    let seconds = delay.as_secs().min(max);
    let mut key = String::with_capacity(DELAY_LEVELS as usize * 2 + final_key.len());
    for level in (0..DELAY_LEVELS).rev() {
        key.push(if seconds >> level & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(final_key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_spells_the_delay_in_binary() {
        let key = delay_routing_key(Duration::from_millis(5_900), "notification");
        let words: Vec<&str> = key.split('.').collect();
        assert_eq!(words.len(), DELAY_LEVELS as usize + 1);
        assert_eq!(
            &words[DELAY_LEVELS as usize - 3..],
            ["1", "0", "1", "notification"]
        );
        assert!(words[..DELAY_LEVELS as usize - 3].iter().all(|w| *w == "0"));
        let longest = delay_routing_key(Duration::from_secs(u64::MAX / 2), "notification");
        assert!(longest.starts_with("1.1.1.") && longest.ends_with(".1.notification"));
    }

    #[test]
    fn a_delay_enters_at_its_highest_level() {
        let topology = Topology::new("ns".parse().unwrap());
        let entry = |delay| topology.delay_entry(delay, "n", 0).exchange;
        assert_eq!(entry(Duration::from_secs(1)), "ns.delay.0");
        assert_eq!(entry(Duration::from_secs(300)), "ns.delay.8");
        assert_eq!(entry(Duration::from_secs(u64::MAX / 4)), "ns.delay.20");
    }

    #[test]
    fn a_delayed_message_leaves_its_first_level_on_the_grid() {
        let topology = Topology::new("ns".parse().unwrap());
        let grid = EXPIRY_GRID.as_millis() as u64;
        // Published anywhere within one grid step, 5 s messages all expire from the 4 s level
        // at the same instant, and never later than the level's own TTL.
        let published = [1_000_000 * grid, 1_000_000 * grid + 1, 1_000_001 * grid - 1];
        let expiries: Vec<u64> = published
            .iter()
            .map(|now| {
                now + topology
                    .delay_entry(Duration::from_secs(5), "n", *now)
                    .expiration_ms
            })
            .collect();
        assert!(expiries.iter().all(|at| *at == 1_000_000 * grid + 4_000));
        for now in published {
            let entry = topology.delay_entry(Duration::from_secs(5), "n", now);
            assert!(entry.expiration_ms <= 4_000 && entry.expiration_ms > 4_000 - grid);
        }
    }

    #[test]
    fn level_patterns_pick_their_own_word() {
        assert_eq!(level_pattern(DELAY_LEVELS - 1, '1'), "1.#");
        assert_eq!(
            level_pattern(0, '0'),
            format!("{}0.#", "*.".repeat(DELAY_LEVELS as usize - 1))
        );
    }
}
