//! Queue names and the one declare function shared by `kiln worker` and
//! `kiln enqueue`, so the two can never disagree on arguments (the broker
//! answers 406 PRECONDITION_FAILED if they do).

use std::time::Duration;

use kiln_protocol::RetryPolicy;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

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

    /// Declares every queue (idempotent with the same arguments).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        declare(channel, &self.jobs, self.jobs_arguments()).await?;
        declare(channel, &self.dead, self.plain_arguments()).await?;
        declare(channel, &self.results, self.plain_arguments()).await?;
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

async fn declare(channel: &Channel, name: &str, args: FieldTable) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            ShortString::from(name.to_owned()),
            QueueDeclareOptions::durable(),
            args,
        )
        .await
        .map(drop)
        .map_err(|source| BrokerError::Declare {
            queue: name.to_owned(),
            source,
        })
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
}
