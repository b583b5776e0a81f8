//! Kiln's wire protocol: the job record and its decoding ([`job`]), the reply
//! records and their encoding ([`reply`]), the one outcome table that
//! says what to do with each kind of failure ([`outcome`]), and the names
//! of the `kiln.*` fields of a job's span ([`span`]).
//!
//! This crate knows nothing of wasmtime or AMQP; `docs/PROTOCOL.md` is its
//! specification in prose. Everything but the span names is re-exported at
//! the crate root.

pub mod job;
pub mod outcome;
pub mod reply;
pub mod span;

pub use job::{
    DecodeLimits, Envelope, Job, Payload, RequestError, decode_job, job_id_from_body, routing_key,
};
pub use outcome::{
    Action, Admission, Disposition, ErrorKind, JobError, RetryPolicy, Source, UnknownErrorKind,
    admission, carried, disposition,
};
pub use reply::{
    Handled, InstanceUse, ItemOk, Metadata, Reply, ReplyBody, Status, Success, encode_reply,
    encode_reply_checked,
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every JSON example in `docs/PROTOCOL.md` is a job that decodes, a
    /// reply that reads back and encodes to the same JSON, or a dead-letter
    /// line with its four fields.
    #[test]
    fn protocol_md_examples_are_valid() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let blocks: Vec<&str> = doc
            .split("```json\n")
            .skip(1)
            .map(|rest| rest.split("```").next().unwrap())
            .collect();
        assert_eq!(blocks.len(), 5);
        for block in blocks {
            let value: serde_json::Value = serde_json::from_str(block).expect(block);
            if value.get("body").is_some() {
                for key in ["job_id", "attempts", "error", "body"] {
                    assert!(value.get(key).is_some(), "{key} missing in {block}");
                }
                let _: JobError = serde_json::from_value(value["error"].clone()).expect(block);
            } else if value.get("status").is_none() {
                let job = decode_job(
                    block.as_bytes(),
                    &Envelope::default(),
                    &DecodeLimits::default(),
                )
                .expect(block);
                assert_eq!(serde_json::to_value(&job).unwrap(), value);
            } else {
                let reply: Reply = serde_json::from_str(block).expect(block);
                let encoded = encode_reply(&reply, usize::MAX);
                assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&encoded).unwrap(),
                    value
                );
            }
        }
    }
}
