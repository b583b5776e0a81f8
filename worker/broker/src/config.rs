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
        }
    }
}

impl AmqpConfig {
    /// The URL with its password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
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
}
