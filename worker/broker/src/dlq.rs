//! `kiln dlq`: look at the dead letters, and put them back on the jobs
//! queue after a fix has been deployed.
//!
//! Both walk the dead-letter queue with `basic.get` at most once per
//! message it held when they started. `list` gives every message back
//! (requeue); `replay` republishes a match to the jobs queue with its
//! attempt count reset, waits for the confirm, and only then acks the dead
//! letter, so a crash in between can duplicate a job but never lose one
//! (job ids let receivers de-duplicate). Running either twice is safe.
//!
//! A replayed job keeps its `reply_to` only while that queue exists: the
//! reply queue of a `kiln enqueue --wait` run is long gone by the time a
//! job is replayed, and a reply to it would be dropped as unroutable. So
//! replay checks each reply queue (a passive declare, on a channel of its
//! own since a 404 closes it) and, when it is gone, drops `reply_to`: the
//! worker then answers to `<queue>.results`. [`ReplayOptions::reply_to`]
//! sends every reply to one queue instead.
//!
//! On a sharded jobs queue both walk every shard's `<queue>.s<i>.dead` in
//! turn, and `replay` publishes to the consistent-hash exchange with the
//! job's key (its `x-kiln-key` header, else its job id), like `kiln
//! enqueue`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::headers::{
    ATTEMPT_HEADER, ERROR_KIND_HEADER, ERROR_MESSAGE_HEADER, KEY_HEADER, header_text, header_u32,
};
use crate::{BrokerError, Topology};

/// One dead letter, as `kiln dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The job id (the message id Kiln set).
    pub job_id: String,
    /// The plugin the job asked for, when the body says.
    pub plugin: Option<String>,
    /// The error kind that dead-lettered it.
    pub kind: String,
    /// The error message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// Seconds since it was dead-lettered, when known.
    pub age_secs: Option<u64>,
}

/// Which dead letters `replay` takes.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only this job id.
    pub job_id: Option<String>,
    /// Only jobs for this plugin.
    pub plugin: Option<String>,
}

impl ReplayFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.job_id.as_ref().is_none_or(|id| *id == letter.job_id)
            && self
                .plugin
                .as_ref()
                .is_none_or(|p| letter.plugin.as_ref() == Some(p))
    }
}

/// Where the reply of a replayed job goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyRoute {
    /// The job had no `reply_to`: `<queue>.results`, as before.
    Results,
    /// To its own `reply_to`, which still exists.
    Kept(String),
    /// Its `reply_to` (this queue) is gone: to `<queue>.results` instead.
    Gone(String),
    /// To the queue `--reply-to` named.
    Overridden(String),
}

/// One replayed dead letter and where its reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The dead letter.
    pub letter: DeadLetter,
    /// Where its reply goes.
    pub reply: ReplyRoute,
}

/// How `replay` routes the replies.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Which dead letters to take.
    pub filter: ReplayFilter,
    /// With `Some`, every reply goes to this queue instead of `reply_to`.
    pub reply_to: Option<String>,
}

/// `props` without `reply_to` (the properties have no unsetter).
fn without_reply_to(props: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = props.$get().clone() {
                out = out.$set(v);
            })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        expiration => with_expiration,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

/// Whether the queue `name` exists, asked on a channel of its own (a
/// passive declare of a missing queue closes its channel with 404).
async fn queue_exists(conn: &Connection, name: &str) -> Result<bool, BrokerError> {
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
    match crate::topology::declare_passive(&channel, name).await {
        Ok(()) => {
            let _ = channel.close(200, ShortString::from("checked")).await;
            Ok(true)
        }
        Err(BrokerError::Declare { source, .. })
            if crate::topology::is_soft_error(&source, &AMQPSoftError::NOTFOUND) =>
        {
            Ok(false)
        }
        // Exclusive to another connection (a live reply queue): it exists.
        Err(BrokerError::Declare { source, .. })
            if crate::topology::is_soft_error(&source, &AMQPSoftError::RESOURCELOCKED) =>
        {
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    #[derive(serde::Deserialize)]
    struct Peek {
        job_id: Option<String>,
        plugin: Option<String>,
    }
    let peek: Option<Peek> = serde_json::from_slice(&delivery.data).ok();
    let job_id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .or_else(|| peek.as_ref().and_then(|p| p.job_id.clone()))
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DeadLetter {
        job_id,
        plugin: peek.and_then(|p| p.plugin),
        kind: header_text(headers, ERROR_KIND_HEADER),
        message: header_text(headers, ERROR_MESSAGE_HEADER),
        attempts: header_u32(headers, ATTEMPT_HEADER).unwrap_or(1),
        age_secs: props.timestamp().map(|t| now.saturating_sub(t)),
    }
}

async fn open(url: &str) -> Result<(Connection, Channel), BrokerError> {
    let conn = crate::connect(url, &format!("kiln-dlq-{}", std::process::id())).await?;
    let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
    Ok((conn, channel))
}

/// Walks the dead letters once: `visit` says whether to keep each one
/// (requeue) or whether it was dealt with (ack).
async fn walk(
    channel: &Channel,
    queue: &str,
    mut visit: impl AsyncFnMut(&lapin::message::Delivery) -> Result<bool, BrokerError>,
) -> Result<(), BrokerError> {
    let mut keep = Vec::new();
    let mut budget: Option<u32> = None;
    loop {
        if budget == Some(0) {
            break;
        }
        let got = channel
            .basic_get(
                ShortString::from(queue.to_owned()),
                BasicGetOptions::default(),
            )
            .await
            .map_err(BrokerError::Channel)?;
        let Some(message) = got else { break };
        // Visit at most what the queue held at the first get.
        let left = budget.get_or_insert(message.message_count.saturating_add(1));
        *left -= 1;
        let delivery = message.delivery;
        if visit(&delivery).await? {
            keep.push(delivery);
        } else {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(BrokerError::Channel)?;
        }
    }
    // Requeue only now, so the walk never meets the same message twice.
    for delivery in keep {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map_err(BrokerError::Channel)?;
    }
    Ok(())
}

/// The dead-letter queues of `topology`: the one, or one per shard.
pub fn dead_queues(topology: &Topology) -> Vec<String> {
    topology.shards().into_iter().map(|s| s.dead).collect()
}

/// Lists the dead letters of `topology` (every shard's), leaving them in
/// place.
pub async fn list(url: &str, topology: &Topology) -> Result<Vec<DeadLetter>, BrokerError> {
    let (conn, channel) = open(url).await?;
    topology.declare(&conn).await?;
    let mut letters = Vec::new();
    for dead in dead_queues(topology) {
        walk(&channel, &dead, async |d| {
            letters.push(describe(d));
            Ok(true)
        })
        .await?;
    }
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(letters)
}

/// Puts the matching dead letters back on the jobs queue with a reset
/// attempt count, each reply routed as the module says. Returns the ones
/// replayed and where their replies go.
pub async fn replay(
    url: &str,
    topology: &Topology,
    options: &ReplayOptions,
) -> Result<Vec<Replayed>, BrokerError> {
    let (conn, channel) = open(url).await?;
    topology.declare(&conn).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    let mut replayed = Vec::new();
    // Whether each reply queue met so far exists, asked once per queue.
    let mut exists: HashMap<String, bool> = HashMap::new();
    for dead in dead_queues(topology) {
        walk(&channel, &dead, async |d| {
            let letter = describe(d);
            if !options.filter.matches(&letter) {
                return Ok(true);
            }
            let headers: FieldTable = d
                .properties
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .filter(|(k, _)| {
                            let k = k.as_str();
                            k == KEY_HEADER
                                || !(k.starts_with("x-kiln-") || k.starts_with("x-death"))
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<std::collections::BTreeMap<_, _>>()
                        .into()
                })
                .unwrap_or_default();
            let original = d
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.as_str().to_owned());
            let reply = match (&options.reply_to, original) {
                (Some(to), _) => ReplyRoute::Overridden(to.clone()),
                (None, None) => ReplyRoute::Results,
                (None, Some(to)) => {
                    let present = match exists.get(&to) {
                        Some(present) => *present,
                        None => {
                            let present = queue_exists(&conn, &to).await?;
                            exists.insert(to.clone(), present);
                            present
                        }
                    };
                    if present {
                        ReplyRoute::Kept(to)
                    } else {
                        ReplyRoute::Gone(to)
                    }
                }
            };
            let props = match &reply {
                ReplyRoute::Results | ReplyRoute::Kept(_) => d.properties.clone(),
                ReplyRoute::Gone(_) => without_reply_to(&d.properties),
                ReplyRoute::Overridden(to) => d
                    .properties
                    .clone()
                    .with_reply_to(ShortString::from(to.clone())),
            }
            .with_headers(headers);
            let key = header_text(d.properties.headers().as_ref(), KEY_HEADER);
            let key = kiln_protocol::routing_key(Some(key.as_str()), &letter.job_id);
            let (exchange, routing_key) = topology.route(key);
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange.to_owned()),
                    ShortString::from(routing_key.to_owned()),
                    BasicPublishOptions::default(),
                    &d.data,
                    props,
                )
                .await
                .map_err(BrokerError::Channel)?
                .await
                .map_err(BrokerError::Channel)?;
            match confirm {
                Confirmation::Ack(_) => {
                    replayed.push(Replayed { letter, reply });
                    Ok(false)
                }
                Confirmation::Nack(_) => Err(BrokerError::Nacked),
                Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
            }
        })
        .await?;
    }
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(replayed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn without_reply_to_keeps_every_other_property() {
        let mut headers = FieldTable::default();
        headers.insert("h".into(), crate::headers::text("v"));
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_correlation_id(ShortString::from("c"))
            .with_message_id(ShortString::from("m"))
            .with_timestamp(7)
            .with_headers(headers)
            .with_reply_to(ShortString::from("gone"));
        let out = without_reply_to(&props);
        assert_eq!(out.reply_to(), &None);
        // Given its reply_to back, it is the original again.
        assert_eq!(out.with_reply_to(ShortString::from("gone")), props);
    }
}
