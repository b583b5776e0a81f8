//! `kiln dlq`: look at the dead letters, and put them back on the jobs
//! queue after a fix has been deployed.
//!
//! Both walk the dead-letter queue with `basic.get` at most once per
//! message it held when they started. `list` gives every message back
//! (requeue); `replay` republishes a match to the jobs queue with its
//! attempt count reset, waits for the confirm, and only then acks the dead
//! letter, so a crash in between can duplicate a job but never lose one
//! (job ids let receivers de-duplicate). Running either twice is safe.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection};

use crate::headers::{
    ATTEMPT_HEADER, ERROR_KIND_HEADER, ERROR_MESSAGE_HEADER, header_text, header_u32,
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

/// Lists the dead letters of `topology`, leaving them in place.
pub async fn list(url: &str, topology: &Topology) -> Result<Vec<DeadLetter>, BrokerError> {
    let (conn, channel) = open(url).await?;
    topology.declare(&channel).await?;
    let mut letters = Vec::new();
    walk(&channel, &topology.dead, async |d| {
        letters.push(describe(d));
        Ok(true)
    })
    .await?;
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(letters)
}

/// Puts the matching dead letters back on the jobs queue with a reset
/// attempt count. Returns the ones replayed.
pub async fn replay(
    url: &str,
    topology: &Topology,
    filter: &ReplayFilter,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let (conn, channel) = open(url).await?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    let mut replayed = Vec::new();
    walk(&channel, &topology.dead, async |d| {
        let letter = describe(d);
        if !filter.matches(&letter) {
            return Ok(true);
        }
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let kept: FieldTable = headers
            .inner()
            .iter()
            .filter(|(k, _)| {
                !k.as_str().starts_with("x-kiln-") && !k.as_str().starts_with("x-death")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        headers = kept;
        let props = d.properties.clone().with_headers(headers);
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(topology.jobs.clone()),
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
                replayed.push(letter);
                Ok(false)
            }
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
        }
    })
    .await?;
    let _ = conn.close(200, ShortString::from("done")).await;
    Ok(replayed)
}
