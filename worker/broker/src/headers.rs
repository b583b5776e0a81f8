//! The AMQP header codec: the `x-kiln-*` headers Kiln writes on retries and
//! dead letters, and what a delivery's properties say about its job
//! ([`Incoming`]), read from any message, however malformed its headers.

use kiln_protocol::Envelope;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header carrying the 1-based attempt number of a retried job.
pub const ATTEMPT_HEADER: &str = "x-kiln-attempt";
/// Header carrying the error kind of a dead letter.
pub const ERROR_KIND_HEADER: &str = "x-kiln-error-kind";
/// Header carrying the error message of a dead letter.
pub const ERROR_MESSAGE_HEADER: &str = "x-kiln-error-message";
/// Header carrying the job's `key` (see `docs/PROTOCOL.md`), set by
/// producers; a sharded jobs queue routes by it. Kept on retries, dead
/// letters and replays.
pub const KEY_HEADER: &str = "x-kiln-key";
/// Header in which a quorum queue counts a message's redeliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What a delivery's AMQP properties say about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// `message_id` and `correlation_id`, for the job id and the reply.
    pub envelope: Envelope<'a>,
    /// The 1-based attempt (`x-kiln-attempt`, default 1).
    pub attempt: u32,
    /// How often the broker redelivered it (`x-delivery-count`, quorum queues).
    pub redeliveries: u32,
}

impl<'a> Incoming<'a> {
    /// Reads the properties of any message, however malformed its headers.
    pub fn read(props: &'a BasicProperties) -> Self {
        let headers = props.headers().as_ref();
        Self {
            envelope: Envelope {
                message_id: props.message_id().as_ref().map(ShortString::as_str),
                correlation_id: props.correlation_id().as_ref().map(ShortString::as_str),
            },
            attempt: header_u32(headers, ATTEMPT_HEADER).unwrap_or(1).max(1),
            redeliveries: header_u32(headers, DELIVERY_COUNT_HEADER).unwrap_or(0),
        }
    }
}

/// Reads an integer header, whatever integer type the sender used.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(name)?;
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Reads a text header (empty when absent or not text).
pub(crate) fn header_text(headers: Option<&FieldTable>, name: &str) -> String {
    match headers.and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    }
}

/// A text value, as Kiln writes headers and queue arguments.
pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// An integer value, as Kiln writes `x-kiln-attempt`.
pub(crate) fn integer(n: u32) -> AMQPValue {
    AMQPValue::LongLongInt(i64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Admission, Disposition, Handled};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f64>().prop_map(AMQPValue::Double),
            any::<Vec<u8>>().prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            Just(AMQPValue::Void),
        ]
    }

    proptest! {
        /// Arbitrary bodies and AMQP properties never panic: they always
        /// give a typed outcome (a job, or a request error with a job id),
        /// and a job given up on by the poison rule an answer with a job id.
        #[test]
        fn any_delivery_reads_to_a_typed_outcome(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            message_id in proptest::option::of("\\PC{0,40}"),
            correlation_id in proptest::option::of("\\PC{0,40}"),
            attempt in proptest::option::of(value()),
            count in proptest::option::of(value()),
        ) {
            let mut headers = FieldTable::default();
            if let Some(v) = attempt {
                headers.insert(ATTEMPT_HEADER.into(), v);
            }
            if let Some(v) = count {
                headers.insert(DELIVERY_COUNT_HEADER.into(), v);
            }
            let mut props = BasicProperties::default().with_headers(headers);
            if let Some(m) = message_id {
                props = props.with_message_id(ShortString::from(m));
            }
            if let Some(c) = correlation_id {
                props = props.with_correlation_id(ShortString::from(c));
            }
            let incoming = Incoming::read(&props);
            prop_assert!(incoming.attempt >= 1);
            match kiln_protocol::decode_job(&body, &incoming.envelope, &kiln_protocol::DecodeLimits::default()) {
                Ok(job) => prop_assert!(!job.job_id.is_empty()),
                Err(e) => prop_assert!(!e.job_id.is_empty()),
            }
            // A limit of 0 gives up on any delivery.
            let Admission::GiveUp { error, disposition } = kiln_protocol::admission(incoming.redeliveries, 0) else {
                return Err(TestCaseError::fail("the poison rule let a job run past its limit"));
            };
            let poisoned = Handled::unrun(&body, &incoming.envelope, error, disposition);
            prop_assert_eq!(poisoned.disposition, Disposition::ReplyAndDeadLetter);
            prop_assert!(!poisoned.job_id.is_empty());
        }
    }

    #[test]
    fn integer_headers_of_any_width() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongLongInt(3));
        t.insert("b".into(), AMQPValue::ShortShortUInt(2));
        t.insert(
            "c".into(),
            AMQPValue::LongString(LongString::from(b"7".to_vec())),
        );
        t.insert("d".into(), AMQPValue::LongLongInt(-1));
        t.insert("e".into(), AMQPValue::Boolean(true));
        let t = Some(&t);
        assert_eq!(header_u32(t, "a"), Some(3));
        assert_eq!(header_u32(t, "b"), Some(2));
        assert_eq!(header_u32(t, "c"), Some(7));
        assert_eq!(header_u32(t, "d"), None);
        assert_eq!(header_u32(t, "e"), None);
        assert_eq!(header_u32(t, "missing"), None);
        assert_eq!(header_u32(None, "a"), None);
    }

    #[test]
    fn written_headers_read_back() {
        let mut t = FieldTable::default();
        t.insert(ATTEMPT_HEADER.into(), integer(4));
        t.insert(ERROR_KIND_HEADER.into(), text("timeout"));
        let t = Some(&t);
        assert_eq!(header_u32(t, ATTEMPT_HEADER), Some(4));
        assert_eq!(header_text(t, ERROR_KIND_HEADER), "timeout");
        assert_eq!(header_text(t, ATTEMPT_HEADER), "");
        assert_eq!(header_text(t, ERROR_MESSAGE_HEADER), "");
    }
}
