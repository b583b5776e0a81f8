//! What to publish for a handled job: a pure plan, unit-tested without a
//! broker, that the delivery task ([`crate::delivery`]) carries out.
//!
//! The outcome table of `kiln-protocol` decides; [`plan`] only spells its
//! decision out as messages. It asks the table once more with the delay
//! steps this topology has ([`kiln_protocol::carried`]: a retry with no
//! delay queue for its step replies and dead-letters), then lists, in the
//! order they must be confirmed: the reply (to `reply_to`, else
//! `<queue>.results`), the job again to its delay queue with the next
//! `x-kiln-attempt`, or the job to `<queue>.dead` with the reason in
//! headers. The one thing the carrier decides itself is [`verdict`]: a
//! delivery whose publishes were not all confirmed is requeued, because
//! that is about delivering the outcome, not about the job's outcome.

use kiln_protocol::{Disposition, Handled, ReplyBody};
use lapin::BasicProperties;
use lapin::types::{FieldTable, ShortString};

use crate::headers::{ATTEMPT_HEADER, ERROR_KIND_HEADER, ERROR_MESSAGE_HEADER, integer, text};
use crate::settle::Verdict;
use crate::topology::Topology;

/// The delivery a plan is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivered<'a> {
    /// The job's body, republished as is by a retry or a dead letter.
    pub(crate) body: &'a [u8],
    /// Its AMQP properties (`reply_to`, `correlation_id`, headers).
    pub(crate) properties: &'a BasicProperties,
    /// The attempt that was handled (1-based).
    pub(crate) attempt: u32,
}

/// Why a message is published, for the counters and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The reply to the requester.
    Reply,
    /// The job again, to a delay queue, as attempt `next_attempt`.
    Retry { next_attempt: u32 },
    /// The job to the dead-letter queue, failed with error `kind`.
    DeadLetter { kind: &'static str },
}

/// One message to publish on the default exchange.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Publish<'a> {
    /// What it is.
    pub(crate) purpose: Purpose,
    /// The queue it goes to.
    pub(crate) queue: &'a str,
    /// Its body.
    pub(crate) body: &'a [u8],
    /// Its properties.
    pub(crate) properties: BasicProperties,
    /// Whether the broker is to return it when no queue takes it (replies
    /// only: a requester's queue may be gone).
    pub(crate) mandatory: bool,
}

/// The publishes for one handled job, in order: each must be confirmed
/// before the next is sent, and all of them before the job is acked.
pub(crate) fn plan<'a>(
    handled: &'a Handled,
    topology: &'a Topology,
    delivered: Delivered<'a>,
    reply_headers: Option<FieldTable>,
    now: u64,
) -> Vec<Publish<'a>> {
    let attempt = delivered.attempt;
    let disposition = kiln_protocol::carried(handled.disposition, attempt, topology.delay_steps());
    match (disposition, topology.retry_queue(attempt)) {
        (Disposition::Reply, _) => vec![reply(handled, topology, delivered, reply_headers)],
        (Disposition::Retry { next_attempt, .. }, Some(queue)) => {
            vec![retry(queue, delivered, next_attempt)]
        }
        // Reply and dead-letter. (A retry the table let through always has
        // its delay queue: the table counted this topology's steps.)
        (Disposition::ReplyAndDeadLetter | Disposition::Retry { .. }, _) => vec![
            reply(handled, topology, delivered, reply_headers),
            dead_letter(handled, topology, delivered, now),
        ],
    }
}

/// What becomes of the delivery once its publishes are done: acked when
/// every one was confirmed; otherwise requeued, to be handled again (a nack,
/// a channel without confirm mode, a lost channel).
pub(crate) fn verdict(confirmed: bool) -> Verdict {
    if confirmed {
        Verdict::Ack
    } else {
        Verdict::Requeue
    }
}

/// The reply: to `reply_to`, or else `<queue>.results`, persistent and
/// `mandatory`, with the job's id and correlation id, and `reply_headers`
/// (the trace context) when not empty.
fn reply<'a>(
    handled: &'a Handled,
    topology: &'a Topology,
    delivered: Delivered<'a>,
    reply_headers: Option<FieldTable>,
) -> Publish<'a> {
    let props = delivered.properties;
    let queue = props
        .reply_to()
        .as_ref()
        .map_or(topology.results.as_str(), ShortString::as_str);
    let mut properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(handled.job_id.clone()));
    if let Some(correlation) = props.correlation_id() {
        properties = properties.with_correlation_id(correlation.clone());
    }
    if let Some(headers) = reply_headers.filter(|h| !h.inner().is_empty()) {
        properties = properties.with_headers(headers);
    }
    Publish {
        purpose: Purpose::Reply,
        queue,
        body: &handled.encoded,
        properties,
        mandatory: true,
    }
}

/// The job again, persistent, with `x-kiln-attempt` raised to `next_attempt`.
fn retry<'a>(queue: &'a str, delivered: Delivered<'a>, next_attempt: u32) -> Publish<'a> {
    let props = delivered.properties.clone();
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT_HEADER.into(), integer(next_attempt));
    Publish {
        purpose: Purpose::Retry { next_attempt },
        queue,
        body: delivered.body,
        properties: props.with_headers(headers).with_delivery_mode(2),
        mandatory: false,
    }
}

/// The job to `<queue>.dead`, persistent, with the attempt and the error's
/// kind and message in headers, the job id as its message id if it had
/// none, and the time it was dead-lettered (`now`, Unix seconds: `kiln dlq
/// list` shows the age).
fn dead_letter<'a>(
    handled: &'a Handled,
    topology: &'a Topology,
    delivered: Delivered<'a>,
    now: u64,
) -> Publish<'a> {
    let (kind, message) = match &handled.reply.body {
        ReplyBody::Error(e) => (e.kind.as_str(), e.message.as_str()),
        ReplyBody::Ok(_) | ReplyBody::Batch { .. } => ("unknown", ""),
    };
    let mut headers = delivered.properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT_HEADER.into(), integer(delivered.attempt));
    headers.insert(ERROR_KIND_HEADER.into(), text(kind));
    headers.insert(ERROR_MESSAGE_HEADER.into(), text(message));
    let mut properties = delivered
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_timestamp(now);
    if properties.message_id().is_none() {
        properties = properties.with_message_id(ShortString::from(handled.job_id.clone()));
    }
    Publish {
        purpose: Purpose::DeadLetter { kind },
        queue: &topology.dead,
        body: delivered.body,
        properties,
        mandatory: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::AmqpConfig;
    use crate::headers::{header_text, header_u32};
    use kiln_protocol::{ErrorKind, JobError, Metadata, Reply, RetryPolicy, Success, encode_reply};
    use lapin::types::AMQPValue;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    /// `q` with the default policy: delay queues `q.retry.1` and `q.retry.2`.
    fn queues(policy: &RetryPolicy) -> Topology {
        let config = AmqpConfig {
            queue: "q".into(),
            ..AmqpConfig::default()
        };
        Topology::new(&config, policy)
    }

    fn handled_as(error: Option<ErrorKind>, disposition: Disposition) -> Handled {
        let reply = match error {
            Some(kind) => Reply::error("j1", "upper", JobError::new(kind, "it broke")),
            None => Reply {
                job_id: "j1".into(),
                plugin: "upper".into(),
                plugin_version: Some("1.0.0".into()),
                instance: None,
                http_requests: 0,
                body: ReplyBody::Ok(Success {
                    output: "X".into(),
                    metadata: Metadata::default(),
                    duration_us: 1,
                    fuel_used: 2,
                }),
            },
        };
        let encoded = encode_reply(&reply, usize::MAX);
        Handled {
            job_id: "j1".into(),
            reply,
            encoded,
            error,
            disposition,
        }
    }

    /// A delivery with a header of its own, and `reply_to` and
    /// `correlation_id` when given.
    fn properties(reply_to: Option<&str>, correlation_id: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("x-own".into(), text("kept"));
        let mut props = BasicProperties::default().with_headers(headers);
        if let Some(to) = reply_to {
            props = props.with_reply_to(ShortString::from(to));
        }
        if let Some(id) = correlation_id {
            props = props.with_correlation_id(ShortString::from(id));
        }
        props
    }

    fn delivered(properties: &BasicProperties, attempt: u32) -> Delivered<'_> {
        Delivered {
            body: b"{\"plugin\":\"upper\"}",
            properties,
            attempt,
        }
    }

    fn retry_to(next_attempt: u32) -> Disposition {
        Disposition::Retry {
            next_attempt,
            delay: Duration::from_secs(1),
        }
    }

    fn purposes<'a>(plan: &[Publish<'a>]) -> Vec<(Purpose, &'a str)> {
        plan.iter().map(|p| (p.purpose, p.queue)).collect()
    }

    fn assert_reply(
        publish: &Publish<'_>,
        handled: &Handled,
        queue: &str,
        correlation: Option<&str>,
    ) {
        assert_eq!(publish.purpose, Purpose::Reply);
        assert_eq!(publish.queue, queue);
        assert_eq!(publish.body, handled.encoded.as_slice());
        assert!(publish.mandatory);
        let props = &publish.properties;
        assert_eq!(
            props.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            props.message_id().as_ref().map(ShortString::as_str),
            Some("j1")
        );
        assert_eq!(
            props.correlation_id().as_ref().map(ShortString::as_str),
            correlation
        );
    }

    #[test]
    fn a_reply_goes_to_reply_to_with_the_correlation_id() {
        let topology = queues(&RetryPolicy::default());
        let handled = handled_as(None, Disposition::Reply);
        let props = properties(Some("caller"), Some("c1"));
        let planned = plan(&handled, &topology, delivered(&props, 1), None, NOW);
        assert_eq!(purposes(&planned), [(Purpose::Reply, "caller")]);
        assert_reply(&planned[0], &handled, "caller", Some("c1"));
        // The delivery's own headers are not the reply's.
        assert_eq!(*planned[0].properties.headers(), None);
    }

    #[test]
    fn a_reply_without_reply_to_goes_to_the_results_queue() {
        let topology = queues(&RetryPolicy::default());
        let handled = handled_as(Some(ErrorKind::InvalidInput), Disposition::Reply);
        let props = properties(None, None);
        let planned = plan(&handled, &topology, delivered(&props, 2), None, NOW);
        assert_eq!(purposes(&planned), [(Purpose::Reply, "q.results")]);
        assert_reply(&planned[0], &handled, "q.results", None);
    }

    #[test]
    fn a_reply_carries_the_trace_headers_when_there_are_any() {
        let topology = queues(&RetryPolicy::default());
        let handled = handled_as(None, Disposition::Reply);
        let props = properties(None, None);
        let mut trace = FieldTable::default();
        trace.insert("traceparent".into(), text("00-abc-def-01"));
        let planned = plan(
            &handled,
            &topology,
            delivered(&props, 1),
            Some(trace.clone()),
            NOW,
        );
        assert_eq!(*planned[0].properties.headers(), Some(trace));
        let empty = Some(FieldTable::default());
        let planned = plan(&handled, &topology, delivered(&props, 1), empty, NOW);
        assert_eq!(*planned[0].properties.headers(), None);
    }

    #[test]
    fn a_retry_republishes_the_job_with_the_next_attempt() {
        let topology = queues(&RetryPolicy::default());
        let props = properties(Some("caller"), Some("c1"));
        for (attempt, queue) in [(1, "q.retry.1"), (2, "q.retry.2")] {
            let handled = handled_as(Some(ErrorKind::Timeout), retry_to(attempt + 1));
            let delivered = delivered(&props, attempt);
            let planned = plan(&handled, &topology, delivered, None, NOW);
            let retry = Purpose::Retry {
                next_attempt: attempt + 1,
            };
            assert_eq!(purposes(&planned), [(retry, queue)]);
            let publish = &planned[0];
            assert_eq!(publish.body, delivered.body);
            assert!(!publish.mandatory);
            let out = &publish.properties;
            assert_eq!(*out.delivery_mode(), Some(2));
            assert_eq!(out.reply_to(), props.reply_to());
            assert_eq!(out.correlation_id(), props.correlation_id());
            let headers = out.headers().as_ref();
            assert_eq!(header_u32(headers, ATTEMPT_HEADER), Some(attempt + 1));
            assert_eq!(header_text(headers, "x-own"), "kept");
        }
    }

    #[test]
    fn reply_and_dead_letter_carry_the_reason() {
        let topology = queues(&RetryPolicy::default());
        let handled = handled_as(Some(ErrorKind::Timeout), Disposition::ReplyAndDeadLetter);
        let props = properties(Some("caller"), Some("c1"));
        let delivered = delivered(&props, 3);
        let planned = plan(&handled, &topology, delivered, None, NOW);
        let dead = Purpose::DeadLetter { kind: "timeout" };
        assert_eq!(
            purposes(&planned),
            [(Purpose::Reply, "caller"), (dead, "q.dead")]
        );
        assert_reply(&planned[0], &handled, "caller", Some("c1"));
        let letter = &planned[1];
        assert_eq!(letter.body, delivered.body);
        assert!(!letter.mandatory);
        let out = &letter.properties;
        assert_eq!(*out.delivery_mode(), Some(2));
        assert_eq!(*out.timestamp(), Some(NOW));
        // The job id becomes the message id of a job that had none...
        assert_eq!(
            out.message_id().as_ref().map(ShortString::as_str),
            Some("j1")
        );
        assert_eq!(out.correlation_id(), props.correlation_id());
        let headers = out.headers().as_ref();
        assert_eq!(header_u32(headers, ATTEMPT_HEADER), Some(3));
        assert_eq!(header_text(headers, ERROR_KIND_HEADER), "timeout");
        assert_eq!(header_text(headers, ERROR_MESSAGE_HEADER), "it broke");
        assert_eq!(header_text(headers, "x-own"), "kept");
        // ...and a job's own message id is kept.
        let own = props.clone().with_message_id(ShortString::from("m7"));
        let planned = plan(
            &handled,
            &topology,
            Delivered {
                properties: &own,
                ..delivered
            },
            None,
            NOW,
        );
        assert_eq!(
            planned[1]
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("m7")
        );
    }

    #[test]
    fn a_dead_letter_without_an_error_says_unknown() {
        let topology = queues(&RetryPolicy::default());
        let handled = handled_as(None, Disposition::ReplyAndDeadLetter);
        let props = properties(None, None);
        let planned = plan(&handled, &topology, delivered(&props, 1), None, NOW);
        assert_eq!(planned[1].purpose, Purpose::DeadLetter { kind: "unknown" });
        let headers = planned[1].properties.headers().as_ref();
        assert_eq!(header_text(headers, ERROR_KIND_HEADER), "unknown");
        assert!(matches!(
            headers.unwrap().inner().get(ERROR_MESSAGE_HEADER),
            Some(AMQPValue::LongString(s)) if s.as_bytes().is_empty()
        ));
    }

    #[test]
    fn a_retry_without_a_delay_queue_replies_and_dead_letters() {
        let props = properties(Some("caller"), None);
        // Past the default policy's two delay queues (a handler under a
        // policy with more attempts than the topology's), and a topology
        // with no delay queue at all.
        for (max_attempts, attempt, kind) in
            [(3, 3, ErrorKind::Internal), (1, 1, ErrorKind::Timeout)]
        {
            let topology = queues(&RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            });
            let handled = handled_as(Some(kind), retry_to(attempt + 1));
            let planned = plan(&handled, &topology, delivered(&props, attempt), None, NOW);
            let dead = Purpose::DeadLetter {
                kind: kind.as_str(),
            };
            assert_eq!(
                purposes(&planned),
                [(Purpose::Reply, "caller"), (dead, "q.dead")]
            );
            assert_reply(&planned[0], &handled, "caller", None);
            let headers = planned[1].properties.headers().as_ref();
            assert_eq!(header_u32(headers, ATTEMPT_HEADER), Some(attempt));
            assert_eq!(header_text(headers, ERROR_KIND_HEADER), kind.as_str());
        }
    }

    #[test]
    fn only_confirmed_publishes_ack() {
        assert_eq!(verdict(true), Verdict::Ack);
        assert_eq!(verdict(false), Verdict::Requeue);
    }
}
