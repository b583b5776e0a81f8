//! Queue names and the one declare function shared by `kiln worker` and
//! `kiln enqueue`, so the two can never disagree on arguments (the broker
//! answers 406 PRECONDITION_FAILED if they do).
//!
//! `<queue>.results` is bounded (a message TTL and a length cap, dropping
//! the oldest reply). A results queue declared by an older Kiln without
//! those arguments answers 406 to the new declare: Kiln then logs the
//! policy that bounds it, checks it exists on a fresh channel, and carries
//! on with it as it is.
//!
//! **Shards.** With `[amqp] shards = N > 1`, `<queue>` is a consistent-hash
//! exchange (type `x-consistent-hash`, from the bundled
//! `rabbitmq_consistent_hash_exchange` plugin) bound with equal weights to
//! the jobs queues `<queue>.s0` … `<queue>.s<N-1>`. Each shard is a jobs
//! queue like the unsharded one, with its own `.dead` and `.retry.<n>`
//! queues ([`Topology::shards`]), so a retry comes back to its own shard
//! and no queue but the results queue is shared. Replies without
//! `reply_to` go to the one `<queue>.results`. Producers publish to the
//! exchange with the job's key as the routing key ([`Topology::route`]).

use std::time::Duration;

use kiln_protocol::RetryPolicy;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::BrokerError;
use crate::config::{AmqpConfig, QueueType};
use crate::headers::text;

/// Every queue Kiln uses for one jobs queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The jobs queue.
    pub jobs: String,
    /// Dead letters: `<jobs>.dead`.
    pub dead: String,
    /// Replies for jobs without `reply_to`: `<jobs>.results`.
    pub results: String,
    /// One delay queue per backoff step, `<jobs>.retry.<n>`, with its TTL.
    /// A TTL only expires at the head of a queue, so each step has its own.
    pub retries: Vec<(String, Duration)>,
    queue_type: QueueType,
    delivery_limit: u32,
    results_ttl_ms: u64,
    results_max_length: u64,
    /// With `shards > 1`: how many, and which of them this worker consumes.
    sharding: Option<Sharding>,
}

/// The shards of a sharded jobs queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sharding {
    /// How many shard queues the exchange is bound to.
    count: u16,
    /// The shards consumed (every one when the config lists none).
    consumed: Vec<u16>,
}

/// The exchange type of a sharded jobs queue.
pub const CONSISTENT_HASH: &str = "x-consistent-hash";

/// The command that enables the consistent-hash exchange type.
pub const ENABLE_CONSISTENT_HASH: &str =
    "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange";

/// The name of shard `index` of the jobs queue `queue`: `<queue>.s<index>`.
pub fn shard_queue(queue: &str, index: u16) -> String {
    format!("{queue}.s{index}")
}

impl Topology {
    /// The queues for `config.queue`, with one delay queue per retry the
    /// policy allows.
    pub fn new(config: &AmqpConfig, policy: &RetryPolicy) -> Self {
        let jobs = config.queue.clone();
        let retries = (1..=policy.delay_steps())
            .map(|attempt| (format!("{jobs}.retry.{attempt}"), policy.backoff(attempt)))
            .collect();
        Self {
            dead: format!("{jobs}.dead"),
            results: format!("{jobs}.results"),
            retries,
            jobs,
            queue_type: config.queue_type,
            delivery_limit: config.delivery_limit,
            results_ttl_ms: config.results_ttl_ms,
            results_max_length: config.results_max_length,
            sharding: (config.shards > 1).then(|| Sharding {
                count: config.shards,
                consumed: if config.shard_ids.is_empty() {
                    (0..config.shards).collect()
                } else {
                    config.shard_ids.clone()
                },
            }),
        }
    }

    /// The consistent-hash exchange producers publish to, when the jobs
    /// queue is sharded (it is named like the unsharded jobs queue).
    pub fn exchange(&self) -> Option<&str> {
        self.sharding.as_ref().map(|_| self.jobs.as_str())
    }

    /// Where a job with routing key `key` is published: the exchange and
    /// the routing key. Sharded, the consistent-hash exchange with `key`;
    /// else the default exchange with the jobs queue's name.
    pub fn route<'a>(&'a self, key: &'a str) -> (&'a str, &'a str) {
        match self.exchange() {
            Some(exchange) => (exchange, key),
            None => ("", self.jobs.as_str()),
        }
    }

    /// Every jobs queue with its own dead-letter and delay queues: the one
    /// jobs queue, or each shard in order (`<queue>.s<i>`, its
    /// `<queue>.s<i>.dead` and `<queue>.s<i>.retry.<n>`, sharing
    /// `<queue>.results`).
    pub fn shards(&self) -> Vec<Topology> {
        match &self.sharding {
            None => vec![self.clone()],
            Some(sharding) => (0..sharding.count).map(|i| self.shard(i)).collect(),
        }
    }

    /// The jobs queues this worker consumes: the one jobs queue, or the
    /// shards `shard_ids` lists (every shard when it lists none).
    pub fn consumed(&self) -> Vec<Topology> {
        match &self.sharding {
            None => vec![self.clone()],
            Some(sharding) => sharding.consumed.iter().map(|&i| self.shard(i)).collect(),
        }
    }

    /// Shard `index`: a jobs queue of its own, unsharded.
    fn shard(&self, index: u16) -> Topology {
        let jobs = shard_queue(&self.jobs, index);
        let retries = self
            .retries
            .iter()
            .enumerate()
            .map(|(step, (_, delay))| (format!("{jobs}.retry.{}", step + 1), *delay))
            .collect();
        Topology {
            dead: format!("{jobs}.dead"),
            results: self.results.clone(),
            retries,
            jobs,
            sharding: None,
            ..*self
        }
    }

    /// The delay queue a job goes to after its failed attempt `attempt`.
    pub fn retry_queue(&self, attempt: u32) -> Option<&str> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.retries.get(index).map(|(name, _)| name.as_str())
    }

    /// How many delay queues there are: retries after attempts 1 to this.
    pub fn delay_steps(&self) -> u32 {
        u32::try_from(self.retries.len()).unwrap_or(u32::MAX)
    }

    /// The arguments of the jobs queue.
    fn jobs_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(&self.dead));
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), text("quorum"));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
            // Quorum dead-lettering is at-most-once unless both are set.
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
        args
    }

    fn plain_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), text("quorum"));
        }
        args
    }

    /// The arguments of the results queue: those of [`Self::plain_arguments`],
    /// bounded by `results_ttl_ms` and `results_max_length` (0: unbounded),
    /// dropping the oldest reply when full.
    pub fn results_arguments(&self) -> FieldTable {
        let mut args = self.plain_arguments();
        let long = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        if self.results_ttl_ms > 0 {
            args.insert("x-message-ttl".into(), long(self.results_ttl_ms));
        }
        if self.results_max_length > 0 {
            args.insert("x-max-length".into(), long(self.results_max_length));
            args.insert("x-overflow".into(), text("drop-head"));
        }
        args
    }

    /// The `rabbitmqctl set_policy` command that gives a results queue
    /// declared without [`Self::results_arguments`] the same bounds.
    pub fn results_policy_command(&self) -> String {
        let mut definition = Vec::new();
        if self.results_ttl_ms > 0 {
            definition.push(format!("\"message-ttl\":{}", self.results_ttl_ms));
        }
        if self.results_max_length > 0 {
            definition.push(format!("\"max-length\":{}", self.results_max_length));
            definition.push("\"overflow\":\"drop-head\"".to_owned());
        }
        let pattern = format!("^{}$", self.results.replace('.', "\\."));
        format!(
            "rabbitmqctl set_policy kiln-results '{pattern}' '{{{}}}' --apply-to queues",
            definition.join(",")
        )
    }

    /// Declares every queue (idempotent with the same arguments), on a
    /// channel of its own that it closes. A results queue that exists with
    /// other arguments (an older Kiln's) is kept as it is, with a warning
    /// saying how to bound it.
    pub async fn declare(&self, conn: &Connection) -> Result<(), BrokerError> {
        let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
        if let Some(exchange) = self.exchange() {
            declare_hash_exchange(&channel, exchange).await?;
            for shard in self.shards() {
                shard.declare_on(&channel).await?;
                channel
                    .queue_bind(
                        ShortString::from(shard.jobs.clone()),
                        ShortString::from(exchange.to_owned()),
                        // A consistent-hash binding's key is its weight.
                        ShortString::from("1"),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|source| BrokerError::Declare {
                        queue: shard.jobs.clone(),
                        source,
                    })?;
            }
        } else {
            self.declare_on(&channel).await?;
        }
        match declare(&channel, &self.results, self.results_arguments()).await {
            Ok(()) => {
                let _ = channel.close(200, ShortString::from("declared")).await;
            }
            Err(BrokerError::Declare { source, .. })
                if is_soft_error(&source, &AMQPSoftError::PRECONDITIONFAILED) =>
            {
                tracing::warn!(
                    queue = %self.results,
                    policy = %self.results_policy_command(),
                    "results queue exists without its bounds (declared by an older kiln): it is used as it is and may grow without limit; bound it with the policy, or delete it and let kiln redeclare it"
                );
                // The 406 closed the channel: check it exists on a fresh one.
                let fresh = conn.create_channel().await.map_err(BrokerError::Channel)?;
                declare_passive(&fresh, &self.results).await?;
                let _ = fresh.close(200, ShortString::from("declared")).await;
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    /// Declares every queue but the results queue on `channel`.
    async fn declare_on(&self, channel: &Channel) -> Result<(), BrokerError> {
        declare(channel, &self.jobs, self.jobs_arguments()).await?;
        declare(channel, &self.dead, self.plain_arguments()).await?;
        for (name, ttl) in &self.retries {
            // Classic delay queues: expired messages go back to the jobs queue.
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(&self.jobs));
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
            declare(channel, name, args).await?;
        }
        Ok(())
    }
}

/// Declares the durable consistent-hash exchange `name` on `channel`. A
/// broker without the plugin refuses the type (503 COMMAND_INVALID, which
/// closes the connection): that error names the plugin and the command
/// that enables it.
async fn declare_hash_exchange(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            ShortString::from(name.to_owned()),
            ExchangeKind::Custom(CONSISTENT_HASH.to_owned()),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| {
            if is_unknown_exchange_type(&source) {
                BrokerError::HashExchangeMissing {
                    exchange: name.to_owned(),
                    source,
                }
            } else {
                BrokerError::Declare {
                    queue: name.to_owned(),
                    source,
                }
            }
        })
}

/// Whether `error` is the broker refusing an exchange type it does not
/// know (503 COMMAND_INVALID, "invalid exchange type").
fn is_unknown_exchange_type(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID))
            || e.get_message().as_str().contains("invalid exchange type"))
}

/// Declares the durable queue `name` with `args` on `channel` (a failed
/// declare closes the channel).
pub(crate) async fn declare(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), BrokerError> {
    queue_declare(channel, name, QueueDeclareOptions::durable(), args).await
}

/// Checks that the queue `name` exists (a passive declare: 404 NOT_FOUND
/// when it does not, which closes `channel`).
pub(crate) async fn declare_passive(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    queue_declare(channel, name, passive, FieldTable::default()).await
}

async fn queue_declare(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(ShortString::from(name.to_owned()), options, args)
        .await
        .map(drop)
        .map_err(|source| BrokerError::Declare {
            queue: name.to_owned(),
            source,
        })
}

/// Whether `error` is the broker's soft error `code` (which closes the
/// channel but not the connection).
pub(crate) fn is_soft_error(error: &lapin::Error, code: &AMQPSoftError) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(soft) if soft == code))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_jobs_queue() {
        let config = AmqpConfig {
            queue: "q".into(),
            ..AmqpConfig::default()
        };
        let t = Topology::new(&config, &RetryPolicy::default());
        assert_eq!(t.dead, "q.dead");
        assert_eq!(t.results, "q.results");
        let names: Vec<_> = t
            .retries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_secs()))
            .collect();
        assert_eq!(names, [("q.retry.1", 1), ("q.retry.2", 4)]);
        assert_eq!(t.retry_queue(1), Some("q.retry.1"));
        assert_eq!(t.retry_queue(3), None);
        assert_eq!(t.retry_queue(0), None);
        assert_eq!(t.delay_steps(), 2);
    }

    fn sharded(shards: u16, shard_ids: &[u16]) -> Topology {
        let config = AmqpConfig {
            queue: "q".into(),
            shards,
            shard_ids: shard_ids.to_vec(),
            ..AmqpConfig::default()
        };
        Topology::new(&config, &RetryPolicy::default())
    }

    #[test]
    fn one_shard_is_the_plain_jobs_queue() {
        let t = sharded(1, &[]);
        assert_eq!(t.exchange(), None);
        assert_eq!(t.route("k"), ("", "q"));
        assert_eq!(t.shards(), std::slice::from_ref(&t));
        assert_eq!(t.consumed(), std::slice::from_ref(&t));
    }

    #[test]
    fn shards_have_their_own_dead_and_delay_queues() {
        assert_eq!(shard_queue("q", 3), "q.s3");
        let t = sharded(4, &[]);
        assert_eq!(t.exchange(), Some("q"));
        assert_eq!(t.route("tenant-7"), ("q", "tenant-7"));
        let shards = t.shards();
        let jobs: Vec<_> = shards.iter().map(|s| s.jobs.as_str()).collect();
        assert_eq!(jobs, ["q.s0", "q.s1", "q.s2", "q.s3"]);
        let s2 = &shards[2];
        assert_eq!(s2.dead, "q.s2.dead");
        assert_eq!(s2.results, "q.results");
        assert_eq!(s2.retry_queue(1), Some("q.s2.retry.1"));
        assert_eq!(s2.retry_queue(2), Some("q.s2.retry.2"));
        assert_eq!(s2.delay_steps(), t.delay_steps());
        // A shard is a plain jobs queue: published to directly.
        assert_eq!(s2.exchange(), None);
        assert_eq!(s2.route("k"), ("", "q.s2"));
        assert_eq!(
            s2.jobs_arguments().inner().get("x-dead-letter-routing-key"),
            Some(&text("q.s2.dead"))
        );
        // Every shard is consumed unless the config pins some.
        assert_eq!(t.consumed(), shards);
        let pinned = sharded(4, &[3, 1]);
        let consumed: Vec<_> = pinned.consumed().into_iter().map(|s| s.jobs).collect();
        assert_eq!(consumed, ["q.s3", "q.s1"]);
        assert_eq!(pinned.shards().len(), 4);
    }

    #[test]
    fn an_unknown_exchange_type_is_told_apart() {
        use lapin::protocol::AMQPError;
        let refused = |kind, message: &str| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
                kind,
                ShortString::from(message.to_owned()),
            )))
        };
        assert!(is_unknown_exchange_type(&refused(
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID),
            "COMMAND_INVALID - invalid exchange type 'x-consistent-hash'",
        )));
        assert!(!is_unknown_exchange_type(&refused(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'type'",
        )));
        let missing = BrokerError::HashExchangeMissing {
            exchange: "q".into(),
            source: refused(AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID), "x"),
        };
        let message = missing.to_string();
        assert!(
            message.contains("rabbitmq_consistent_hash_exchange"),
            "{message}"
        );
        assert!(message.contains(ENABLE_CONSISTENT_HASH), "{message}");
    }

    #[test]
    fn the_results_queue_is_bounded_and_drops_its_oldest_reply() {
        let config = AmqpConfig {
            queue: "q.x".into(),
            ..AmqpConfig::default()
        };
        let t = Topology::new(&config, &RetryPolicy::default());
        let args = t.results_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-message-ttl"),
            Some(AMQPValue::LongLongInt(86_400_000))
        );
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(100_000)));
        assert_eq!(get("x-overflow"), Some(text("drop-head")));
        assert_eq!(get("x-queue-type"), Some(text("quorum")));
        assert_eq!(
            t.results_policy_command(),
            r#"rabbitmqctl set_policy kiln-results '^q\.x\.results$' '{"message-ttl":86400000,"max-length":100000,"overflow":"drop-head"}' --apply-to queues"#
        );
        // 0: unbounded, as before.
        let unbounded = Topology::new(
            &AmqpConfig {
                results_ttl_ms: 0,
                results_max_length: 0,
                queue_type: QueueType::Classic,
                ..config
            },
            &RetryPolicy::default(),
        );
        assert!(unbounded.results_arguments().inner().is_empty());
    }
}
