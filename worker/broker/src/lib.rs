//! Kiln's RabbitMQ side, on lapin and tokio.
//!
//! It owns the topology (one declare function for every queue), confirmed
//! publishing on a shared channel, and the at-least-once consumer: reply,
//! wait for the confirm, then ack (coalesced by one settler task per
//! channel); retries through per-step delay
//! queues; dead letters carrying the reason in headers; reconnects with
//! backoff; and a graceful drain on shutdown.
//!
//! The consumer, by role: `session` (the supervised connection and the
//! stall watchdog), `delivery` (one task per delivery), `dispose` (the pure
//! plan of what to publish for a job's outcome), `settle` (acks and
//! requeues), `drain` (shutdown), `headers` (the AMQP header codec) and
//! `stats` (the counters). What becomes of a job is decided by the outcome
//! table of `kiln-protocol`; these modules only carry it out.
//!
//! It knows the job and reply records of `kiln-protocol`, but nothing of
//! the sandbox: jobs are run by a [`JobHandler`] that the worker's pipeline
//! implements. Nor does it know OpenTelemetry: it opens `tracing` spans and
//! hands message headers to a [`TraceHeaders`] that the worker implements.

mod config;
mod delivery;
mod dispose;
pub mod dlq;
mod drain;
pub mod enqueue;
mod headers;
mod publisher;
mod session;
mod settle;
mod stats;
mod topology;

pub use config::{AmqpConfig, QueueType, redact};
pub use delivery::JobHandler;
pub use headers::{
    ATTEMPT_HEADER, ERROR_KIND_HEADER, ERROR_MESSAGE_HEADER, Incoming, KEY_HEADER, header_u32,
};
pub use publisher::{Publisher, Returned};
pub use session::Worker;
pub use stats::WorkerStats;
pub use topology::{CONSISTENT_HASH, ENABLE_CONSISTENT_HASH, Topology, shard_queue};

use lapin::types::FieldTable;

/// Carries trace context (W3C `traceparent`/`tracestate`) through AMQP
/// headers. The broker only calls it, around the `tracing` spans it opens
/// for each job and each publish; the worker implements it (with
/// OpenTelemetry) when trace export is on, so this crate holds no tracing
/// SDK and no global state.
pub trait TraceHeaders: Send + Sync + 'static {
    /// Whether there is anything to extract or inject. When `false`, the
    /// broker skips both calls and the header copies they would need.
    fn enabled(&self) -> bool;
    /// Makes `span` (just created, not yet entered) a child of the trace
    /// context found in a delivery's `headers`, if any.
    fn extract(&self, headers: Option<&FieldTable>, span: &tracing::Span);
    /// Writes the context of `span` into the `headers` of an outgoing message.
    fn inject(&self, span: &tracing::Span, headers: &mut FieldTable);
}

/// No propagation: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTraceHeaders;

impl TraceHeaders for NoTraceHeaders {
    fn enabled(&self) -> bool {
        false
    }
    fn extract(&self, _: Option<&FieldTable>, _: &tracing::Span) {}
    fn inject(&self, _: &tracing::Span, _: &mut FieldTable) {}
}

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A channel or connection operation failed.
    #[error("broker channel error: {0}")]
    Channel(lapin::Error),
    /// A queue could not be declared (for example it exists with other
    /// arguments: 406 PRECONDITION_FAILED).
    #[error("cannot declare queue {queue}: {source}")]
    Declare {
        /// The queue.
        queue: String,
        /// What the broker said.
        source: lapin::Error,
    },
    /// The broker does not know the exchange type `x-consistent-hash`: the
    /// plugin that brings it is not enabled (sharded jobs queues need it).
    #[error(
        "cannot declare the sharded jobs exchange {exchange}: the broker has no consistent-hash exchange type, the rabbitmq_consistent_hash_exchange plugin is missing; enable it with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (or set [amqp] shards = 1)"
    )]
    HashExchangeMissing {
        /// The exchange.
        exchange: String,
        /// What the broker said.
        source: lapin::Error,
    },
    /// The broker refused a publish (`basic.nack`).
    #[error("publish refused by the broker (nack)")]
    Nacked,
    /// The channel is not in confirm mode (a recovered channel).
    #[error("publish not confirmed: channel not in confirm mode")]
    NotConfirmed,
    /// Writing collected replies failed.
    #[error("cannot write replies: {0}")]
    Output(String),
}

/// Opens a connection that announces `name` to the broker (shown by
/// `rabbitmqctl list_connections`).
pub(crate) async fn connect(url: &str, name: &str) -> Result<lapin::Connection, BrokerError> {
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(lapin::types::LongString::from(name.as_bytes().to_vec()));
    lapin::Connection::connect(url, props)
        .await
        .map_err(BrokerError::Channel)
}
