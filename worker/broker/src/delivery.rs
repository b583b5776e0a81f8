//! One delivery's task, from the delivery to its verdict: read its headers,
//! open its span, run its job through the [`JobHandler`] (or give it up,
//! by the outcome table's poison rule), carry out the publishes that
//! [`crate::dispose::plan`] lists, each confirmed, and hand the verdict
//! (ack, or requeue) to the settler.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_protocol::{Admission, Envelope, Handled, span as fields};
use lapin::message::Delivery;
use lapin::types::FieldTable;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use crate::dispose::{self, Delivered, Publish, Purpose};
use crate::headers::Incoming;
use crate::publisher::Publisher;
use crate::settle::Settler;
use crate::stats::WorkerStats;
use crate::topology::Topology;
use crate::{BrokerError, TraceHeaders};

/// Runs one job: whoever joins the broker to the sandbox implements this.
pub trait JobHandler: Send + Sync + 'static {
    /// Handles attempt `attempt` (1-based) of the job in `body`.
    fn handle(
        &self,
        body: &[u8],
        envelope: &Envelope<'_>,
        attempt: u32,
    ) -> impl Future<Output = Handled> + Send;

    /// Told, once a job's first attempt is handled, how long the job
    /// waited before a job slot took it (`queue_wait` here): only for jobs
    /// whose producer set the AMQP `timestamp`. `handled` names the plugin
    /// that ran it. The broker only measures; the default ignores it.
    fn waited(&self, handled: &Handled, wait: Duration) {
        let _ = (handled, wait);
    }
}

/// How long a job waited in the queue: `received` minus its AMQP
/// `timestamp` (whole Unix seconds, set by the producer), so up to a second
/// more than it really waited. `None` without a timestamp (or with 0, which
/// some clients send for none). A timestamp ahead of `received` (the
/// producer's clock runs ahead of this worker's) gives zero rather than
/// nothing: the job waited about that long, and skipping it would drop
/// exactly the shortest waits.
pub(crate) fn queue_wait(timestamp: Option<u64>, received: SystemTime) -> Option<Duration> {
    let sent = UNIX_EPOCH.checked_add(Duration::from_secs(timestamp.filter(|t| *t > 0)?))?;
    Some(received.duration_since(sent).unwrap_or(Duration::ZERO))
}

/// What a delivery's task needs: one per consume channel, shared by its
/// deliveries' tasks.
pub(crate) struct Job<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) publisher: Publisher,
    pub(crate) settler: Settler,
    pub(crate) topology: Topology,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) delivery_limit: u32,
    pub(crate) trace: Arc<dyn TraceHeaders>,
}

impl<H: JobHandler> Job<H> {
    /// Runs the job while holding its `slot`, then frees the slot before
    /// the reply's confirm and the ack: the concurrency limit bounds the
    /// sandboxes running, not round trips to the broker (prefetch bounds
    /// those).
    pub(crate) async fn process(self: Arc<Self>, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let incoming = Incoming::read(&delivery.properties);
        // A retry keeps the producer's timestamp, so its wait would count
        // the earlier attempts and the backoff: only first attempts count.
        let waited = if incoming.attempt == 1 {
            queue_wait(*delivery.properties.timestamp(), SystemTime::now())
        } else {
            None
        };
        let span = job_span(
            &self.topology.jobs,
            delivery.routing_key.as_str(),
            &incoming,
            delivery.data.len(),
        );
        if self.trace.enabled() && !span.is_disabled() {
            self.trace
                .extract(delivery.properties.headers().as_ref(), &span);
        }
        async {
            let handled = match kiln_protocol::admission(incoming.redeliveries, self.delivery_limit)
            {
                Admission::Run => {
                    self.handler
                        .handle(&delivery.data, &incoming.envelope, incoming.attempt)
                        .await
                }
                Admission::GiveUp { error, disposition } => {
                    Handled::unrun(&delivery.data, &incoming.envelope, error, disposition)
                }
            };
            drop(slot);
            if let Some(wait) = waited {
                self.handler.waited(&handled, wait);
            }
            record_outcome(&tracing::Span::current(), &handled);
            let failure = Failure::of(&handled);
            let delivered = Delivered {
                body: &delivery.data,
                properties: &delivery.properties,
                attempt: incoming.attempt,
            };
            let plan = dispose::plan(
                &handled,
                &self.topology,
                delivered,
                self.reply_headers(),
                unix_now(),
            );
            // Only a confirmed outcome acks the job; the settler sends the
            // ack (coalesced with others), this task does not wait for it.
            let published = self.publish(plan, &failure).await;
            if let Err(error) = &published {
                tracing::warn!(%error, "publish not confirmed, requeueing the job");
            }
            self.settler
                .settle(delivery.delivery_tag, dispose::verdict(published.is_ok()));
        }
        .instrument(span)
        .await;
    }

    /// The trace context of the current span, for the reply's headers.
    fn reply_headers(&self) -> Option<FieldTable> {
        if !self.trace.enabled() {
            return None;
        }
        let mut headers = FieldTable::default();
        self.trace.inject(&tracing::Span::current(), &mut headers);
        Some(headers)
    }

    /// Publishes `plan` in order, each publish confirmed before the next;
    /// the first that is not confirmed ends it. A returned message a
    /// confirm carries is a reply whose requester's queue is gone (only
    /// replies are `mandatory`), not necessarily this publish's: nobody can
    /// receive it, and retrying would loop forever, so it is logged by its
    /// own job id, counted, and dropped.
    async fn publish(
        &self,
        plan: Vec<Publish<'_>>,
        failure: &Failure<'_>,
    ) -> Result<(), BrokerError> {
        for publish in plan {
            let Publish {
                purpose,
                queue,
                body,
                properties,
                mandatory,
            } = publish;
            let returned = self
                .publisher
                .publish(queue, body, properties, mandatory)
                .await?;
            if let Some(returned) = returned {
                self.stats.unroutable_replies.fetch_add(1, Relaxed);
                tracing::warn!(
                    reply_to = returned.routing_key,
                    job_id = returned.message_id,
                    reply_bytes = returned.body.len(),
                    reason = returned.reply_text,
                    "reply unroutable, dropped"
                );
            }
            match purpose {
                Purpose::Reply => {}
                Purpose::Retry { next_attempt } => {
                    self.stats.count_retry(failure.plugin, failure.kind);
                    tracing::info!(
                        queue,
                        job_id = failure.job_id,
                        next_attempt,
                        "job scheduled for retry"
                    );
                }
                Purpose::DeadLetter { kind } => {
                    self.stats.count_dead_letter(failure.plugin, kind);
                    tracing::warn!(queue, job_id = failure.job_id, kind, "job dead-lettered");
                }
            }
        }
        Ok(())
    }
}

/// The labels of a job's retry or dead letter: the plugin it resolved to
/// (or [`UNKNOWN_PLUGIN`](crate::stats::UNKNOWN_PLUGIN): a name taken from
/// a job makes no series unless it was loaded) and its error kind.
struct Failure<'a> {
    job_id: &'a str,
    plugin: &'a str,
    kind: &'static str,
}

impl<'a> Failure<'a> {
    fn of(handled: &'a Handled) -> Self {
        // A version is only set when a loaded plugin served the job.
        let plugin = match handled.reply.plugin_version {
            Some(_) => handled.reply.plugin.as_str(),
            None => crate::stats::UNKNOWN_PLUGIN,
        };
        let kind = handled.error.map_or("ok", kiln_protocol::ErrorKind::as_str);
        Self {
            job_id: &handled.job_id,
            plugin,
            kind,
        }
    }
}

/// Records the job's id and outcome into its `span`; a failed job also
/// gets the OTel error status and its kind as `error.type`.
fn record_outcome(span: &tracing::Span, handled: &Handled) {
    span.record(fields::JOB_ID, handled.job_id.as_str());
    span.record(
        fields::OUTCOME,
        handled.error.map_or("ok", kiln_protocol::ErrorKind::as_str),
    );
    if let Some(kind) = handled.error {
        span.record(fields::STATUS_CODE, "ERROR");
        span.record(fields::ERROR_TYPE, kind.as_str());
    }
}

/// The job's span, after the OTel messaging conventions, with every
/// `kiln.*` field of [`kiln_protocol::span`] (the ones recorded later start
/// empty). With its level filtered out (the default `warn`, and no trace
/// export) the macro evaluates none of the fields and this costs a branch.
fn job_span(
    queue: &str,
    routing_key: &str,
    incoming: &Incoming<'_>,
    body_size: usize,
) -> tracing::Span {
    tracing::info_span!(
        "job",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = incoming.envelope.message_id,
        messaging.message.conversation_id = incoming.envelope.correlation_id,
        messaging.message.body.size = body_size,
        { fields::JOB_ID } = tracing::field::Empty,
        { fields::ATTEMPT } = incoming.attempt,
        { fields::PLUGIN } = tracing::field::Empty,
        { fields::PLUGIN_VERSION } = tracing::field::Empty,
        { fields::OUTCOME } = tracing::field::Empty,
        { fields::STATUS_CODE } = tracing::field::Empty,
        { fields::ERROR_TYPE } = tracing::field::Empty,
    )
}

/// Now, in Unix seconds (0 if the clock is before 1970): the dead-letter
/// time, and the `timestamp` `kiln enqueue` sets.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Enables every span and event, and keeps nothing.
    struct Everything;

    impl Subscriber for Everything {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Keeps every field recorded into a span after its creation.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, String)>>);

    impl tracing::field::Visit for &Recorder {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for &'static Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            let mut visitor: &Recorder = self;
            values.record(&mut visitor);
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn recorded(handled: &Handled) -> Vec<(String, String)> {
        let recorder: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::with_default(recorder, || {
            let props = lapin::BasicProperties::default();
            let span = job_span("q", "q", &Incoming::read(&props), 3);
            record_outcome(&span, handled);
        });
        std::mem::take(
            &mut *recorder
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// A failed job's span carries the OTel error status and its kind; a
    /// successful one neither.
    #[test]
    fn a_failed_job_span_has_the_error_status_and_type() {
        use kiln_protocol::{Disposition, ErrorKind, JobError, Reply};
        let failed = Handled {
            job_id: "j1".into(),
            reply: Reply::error("j1", "upper", JobError::new(ErrorKind::Trap, "it broke")),
            encoded: Vec::new(),
            error: Some(ErrorKind::Trap),
            disposition: Disposition::Reply,
        };
        let fields = recorded(&failed);
        for (name, value) in [
            (fields::OUTCOME, "trap"),
            (fields::STATUS_CODE, "ERROR"),
            (fields::ERROR_TYPE, "trap"),
        ] {
            assert!(
                fields.contains(&(name.to_owned(), value.to_owned())),
                "{name}={value} in {fields:?}"
            );
        }
        let ok = Handled {
            error: None,
            ..failed
        };
        let fields = recorded(&ok);
        assert!(
            fields
                .iter()
                .all(|(name, _)| name != fields::STATUS_CODE && name != fields::ERROR_TYPE),
            "{fields:?}"
        );
    }

    /// The queue wait is the time since the producer's timestamp; a clock
    /// ahead of ours gives zero, and no timestamp (or 0) no wait at all.
    #[test]
    fn queue_wait_is_the_time_since_the_timestamp_clamped_at_zero() {
        let received = UNIX_EPOCH + Duration::from_millis(1_700_000_010_250);
        assert_eq!(
            queue_wait(Some(1_700_000_000), received),
            Some(Duration::from_millis(10_250))
        );
        assert_eq!(
            queue_wait(Some(1_700_000_010), received),
            Some(Duration::from_millis(250))
        );
        // The producer's clock runs 50 s ahead.
        assert_eq!(
            queue_wait(Some(1_700_000_060), received),
            Some(Duration::ZERO)
        );
        assert_eq!(queue_wait(None, received), None);
        assert_eq!(queue_wait(Some(0), received), None);
        // Past what the clock can hold: no overflow, no wait.
        assert_eq!(queue_wait(Some(u64::MAX), received), None);
    }

    /// Retries and dead letters are labelled by a loaded plugin only.
    #[test]
    fn failure_labels_name_only_a_resolved_plugin() {
        use kiln_protocol::{Disposition, ErrorKind, JobError, Reply};
        let mut handled = Handled {
            job_id: "j1".into(),
            reply: Reply::error(
                "j1",
                "made-up",
                JobError::new(ErrorKind::UnknownPlugin, "no"),
            ),
            encoded: Vec::new(),
            error: Some(ErrorKind::UnknownPlugin),
            disposition: Disposition::ReplyAndDeadLetter,
        };
        let failure = Failure::of(&handled);
        assert_eq!(
            (failure.plugin, failure.kind),
            ("unknown", "unknown-plugin")
        );
        handled.reply.plugin = "upper".into();
        handled.reply.plugin_version = Some("1.0.0".into());
        handled.error = Some(ErrorKind::Timeout);
        let failure = Failure::of(&handled);
        assert_eq!((failure.plugin, failure.kind), ("upper", "timeout"));
    }

    /// The pipeline records into the job's span by the names of
    /// `kiln_protocol::span`: the span must declare every one of them, or
    /// the records are silently dropped.
    #[test]
    fn the_job_span_declares_every_kiln_field() {
        let props = lapin::BasicProperties::default();
        let incoming = Incoming::read(&props);
        let span =
            tracing::subscriber::with_default(Everything, || job_span("q", "q", &incoming, 3));
        let Some(metadata) = span.metadata() else {
            panic!("the job span has no metadata under a subscriber that enables it");
        };
        assert_eq!(metadata.name(), "job");
        for name in fields::ALL {
            assert!(
                metadata.fields().field(name).is_some(),
                "the job span lacks the field {name}"
            );
        }
    }
}
