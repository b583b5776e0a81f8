//! The `[amqp]` section of the worker config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How Kiln talks to RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// The broker URL. Its password never appears in logs (see
    /// [`AmqpConfig::redacted_url`]). Default:
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// A file holding the broker URL (a mounted Kubernetes Secret). When
    /// set, its trimmed contents replace `url` at load. Default: none.
    pub url_file: Option<std::path::PathBuf>,
    /// The jobs queue. Every other name derives from it: `<queue>.dead`,
    /// `<queue>.retry.<n>`, `<queue>.results`. Default: `kiln.jobs`.
    #[schemars(length(min = 1))]
    pub queue: String,
    /// The type of the jobs, dead-letter and results queues. Default: `quorum`.
    pub queue_type: QueueType,
    /// Deliveries the broker sends before waiting for acks (`basic.qos`).
    /// Higher keeps workers busy across network round trips; lower spreads
    /// jobs over more workers. Keep `prefetch × deadline` well under the
    /// broker's 30-minute `consumer_timeout`. Default: 64.
    #[schemars(range(min = 1))]
    pub prefetch: u16,
    /// The quorum queue's `x-delivery-limit`: deliveries (including the
    /// redeliveries that kills and reconnects cause) after which the broker
    /// dead-letters a job itself. Kiln gives up and replies one delivery
    /// before that. Must be well above `pipeline.max_attempts`. Default: 20.
    pub delivery_limit: u32,
    /// The connection name shown by `rabbitmqctl list_connections`.
    /// Default: `kiln-worker-<hostname>-<pid>` (in Kubernetes the hostname
    /// is the pod's name, and every container's pid is 1).
    pub connection_name: Option<String>,
    /// First delay before reconnecting, in milliseconds; it doubles up to
    /// `reconnect_max_ms`. Default: 500.
    pub reconnect_initial_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds. Default: 10,000.
    pub reconnect_max_ms: u64,
    /// A consumer that delivers nothing for this long, in milliseconds,
    /// while its queue holds ready messages and a job slot is free, is
    /// treated as dead and the connection is rebuilt. Default: 15,000.
    pub stall_timeout_ms: u64,
    /// On SIGTERM, how long in-flight jobs may run before they are
    /// requeued, in milliseconds. Default: 30,000.
    pub shutdown_timeout_ms: u64,
    /// How long a reply may wait unread in `<queue>.results` (replies to
    /// jobs without `reply_to`) before the broker drops it
    /// (`x-message-ttl`), in milliseconds; 0 keeps replies until read.
    /// Shorter bounds the queue sooner; longer gives a slow reader more
    /// time. Default: 86,400,000 (24 h).
    pub results_ttl_ms: u64,
    /// Most replies `<queue>.results` holds (`x-max-length`); past it the
    /// oldest unread reply is dropped (`drop-head`), so a full results
    /// queue never blocks or loops a job; 0 means no cap. Higher keeps
    /// more unread replies; lower bounds the broker's memory and disk
    /// sooner. Default: 100,000.
    pub results_max_length: u64,
    /// How many queues the jobs are spread over. 1 (the default) is one
    /// jobs queue named `queue`. With N > 1, `queue` names a
    /// consistent-hash exchange (RabbitMQ's bundled
    /// `rabbitmq_consistent_hash_exchange` plugin) bound with equal weights
    /// to the durable queues `<queue>.s0` … `<queue>.s<N-1>`, each with its
    /// own `.dead` and `.retry.<n>` queues; producers publish to the
    /// exchange with the job's `key` (default: its id) as the routing key.
    /// More shards lift the one-queue ceiling (one queue is one Erlang
    /// process); each costs a channel per worker and its own queues. See
    /// docs/SCALING.md. Default: 1.
    #[schemars(range(min = 1, max = 1024))]
    pub shards: u16,
    /// The shards this worker consumes, by index (`0` … `shards - 1`);
    /// empty (the default) consumes every shard. Pins a deployment's
    /// workers to a subset, e.g. one deployment per half of the shards.
    pub shard_ids: Vec<u16>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            url_file: None,
            queue: "kiln.jobs".into(),
            queue_type: QueueType::Quorum,
            prefetch: 64,
            delivery_limit: 20,
            connection_name: None,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 10_000,
            stall_timeout_ms: 15_000,
            shutdown_timeout_ms: 30_000,
            results_ttl_ms: 86_400_000,
            results_max_length: 100_000,
            shards: 1,
            shard_ids: Vec::new(),
        }
    }
}

impl AmqpConfig {
    /// The URL with its password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Why `shards` and `shard_ids` cannot work together, if they cannot:
    /// the config key and the message.
    pub fn shard_problem(&self) -> Option<(&'static str, String)> {
        if self.shards == 0 {
            return Some(("amqp.shards", "must be at least 1".to_owned()));
        }
        if self.shards > MAX_SHARDS {
            return Some(("amqp.shards", format!("must be at most {MAX_SHARDS}")));
        }
        let mut seen = std::collections::HashSet::new();
        for &id in &self.shard_ids {
            if id >= self.shards {
                return Some((
                    "amqp.shard_ids",
                    format!(
                        "shard {id} does not exist: with amqp.shards = {} the shards are 0 to {}",
                        self.shards,
                        self.shards - 1
                    ),
                ));
            }
            if !seen.insert(id) {
                return Some(("amqp.shard_ids", format!("shard {id} is listed twice")));
            }
        }
        None
    }

    /// The connection name to announce to the broker.
    pub fn connection_name(&self) -> String {
        self.connection_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            format!("kiln-worker-{host}-{}", std::process::id())
        })
    }
}

/// The most shards a jobs queue may have.
pub const MAX_SHARDS: u16 = 1024;

/// Replaces the password of an AMQP URL with `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The kind of durable queue for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, with a delivery limit and at-least-once dead-lettering.
    Quorum,
    /// A classic durable queue.
    Classic,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, expected) in [
            (
                "amqp://guest:secret@host:5672/%2f",
                "amqp://guest:***@host:5672/%2f",
            ),
            ("amqp://host:5672", "amqp://host:5672"),
            ("amqp://user@host", "amqp://user@host"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), expected);
        }
    }

    #[test]
    fn shard_settings_are_checked() {
        let with = |shards, shard_ids: &[u16]| AmqpConfig {
            shards,
            shard_ids: shard_ids.to_vec(),
            ..AmqpConfig::default()
        };
        assert_eq!(AmqpConfig::default().shard_problem(), None);
        assert_eq!(with(4, &[0, 3]).shard_problem(), None);
        for (config, key, needle) in [
            (with(0, &[]), "amqp.shards", "at least 1"),
            (with(MAX_SHARDS + 1, &[]), "amqp.shards", "at most 1024"),
            (with(4, &[4]), "amqp.shard_ids", "shard 4 does not exist"),
            (with(1, &[1]), "amqp.shard_ids", "0 to 0"),
            (with(4, &[1, 1]), "amqp.shard_ids", "listed twice"),
        ] {
            let Some((k, message)) = config.shard_problem() else {
                panic!("{config:?} passed");
            };
            assert_eq!(k, key);
            assert!(message.contains(needle), "{message}");
        }
    }
}
