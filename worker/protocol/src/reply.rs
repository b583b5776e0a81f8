//! The reply records: [`Reply`] for a single job, a failed job or a batch,
//! its JSON form (a hand-written `Serialize` on the hot path, and a checked
//! `Deserialize` for readers), and [`encode_reply`], which enforces the reply
//! size limit by swapping an oversized reply for an `output-too-large` one.

use std::io;

use indexmap::IndexMap;
use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::outcome::{ErrorKind, JobError};

/// A result's metadata: key-value pairs in the plugin's order, rendered as a
/// JSON object. Built from the plugin's list with `collect()`, so for a
/// duplicate key the last value wins, kept at the key's first position.
///
/// Note that `IndexMap`'s `==` ignores order; compare `iter()`s when order
/// matters.
pub type Metadata = IndexMap<String, String>;

/// A successful single job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    /// The plugin's output text.
    pub output: String,
    /// The plugin's metadata.
    pub metadata: Metadata,
    /// Wall time of the plugin call, in microseconds.
    pub duration_us: u64,
    /// Fuel the plugin consumed.
    pub fuel_used: u64,
}

/// One successful input of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOk {
    /// The plugin's output text for this input.
    pub output: String,
    /// The plugin's metadata for this input.
    pub metadata: Metadata,
}

/// What a reply says about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// A single job succeeded.
    Ok(Success),
    /// The job (single or whole batch) failed.
    Error(JobError),
    /// A batch ran: one result per input, in order.
    Batch {
        /// The result of each input, in input order.
        results: Vec<Result<ItemOk, JobError>>,
        /// Wall time of the plugin call, in microseconds.
        duration_us: u64,
        /// Fuel the plugin consumed for the whole batch.
        fuel_used: u64,
    },
}

/// A reply's `status` field. Serialized lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The job, or every input of the batch, succeeded.
    Ok,
    /// The batch ran but at least one input failed.
    Partial,
    /// The job, or the whole batch, failed.
    Error,
}

impl Status {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Error => "error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which instance served a job of a plugin with warm instances
/// (`[instances] reuse_jobs` above 1): the reply's `instance` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceUse {
    /// A new instance, created for this job.
    Fresh,
    /// A warm instance that had served an earlier job.
    Reused,
}

/// The reply to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The job's id, so receivers can match and de-duplicate replies.
    pub job_id: String,
    /// The plugin the job named; empty when the request did not name one.
    pub plugin: String,
    /// The version of the plugin that ran, when known.
    pub plugin_version: Option<String>,
    /// Which instance ran the job; set only for plugins that reuse
    /// instances, so replies of the default (a fresh instance per job) stay
    /// as they were.
    pub instance: Option<InstanceUse>,
    /// Outgoing HTTP requests the job made through its plugin's grants
    /// (`http_requests`, present when above 0).
    pub http_requests: u32,
    /// The outcome.
    pub body: ReplyBody,
}

impl Reply {
    /// An error reply with no plugin version.
    pub fn error(job_id: impl Into<String>, plugin: impl Into<String>, error: JobError) -> Self {
        Reply {
            job_id: job_id.into(),
            plugin: plugin.into(),
            plugin_version: None,
            instance: None,
            http_requests: 0,
            body: ReplyBody::Error(error),
        }
    }

    /// The reply's status: `partial` when any batch input failed.
    pub fn status(&self) -> Status {
        match &self.body {
            ReplyBody::Ok(_) => Status::Ok,
            ReplyBody::Error(_) => Status::Error,
            ReplyBody::Batch { results, .. } => batch_status(results),
        }
    }

    /// The kind of a whole-reply error (not of failed batch inputs).
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match &self.body {
            ReplyBody::Error(error) => Some(error.kind),
            ReplyBody::Ok(_) | ReplyBody::Batch { .. } => None,
        }
    }

    /// A cheap guess of the serialized size, to size the buffer once.
    fn size_hint(&self) -> usize {
        let metadata = |m: &Metadata| m.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
        let body = match &self.body {
            ReplyBody::Ok(success) => success.output.len() + metadata(&success.metadata) + 96,
            ReplyBody::Error(error) => error.message.len() + 64,
            ReplyBody::Batch { results, .. } => results
                .iter()
                .map(|result| match result {
                    Ok(item) => item.output.len() + metadata(&item.metadata) + 48,
                    Err(error) => error.message.len() + 80,
                })
                .sum::<usize>()
                .saturating_add(96),
        };
        let version = self.plugin_version.as_ref().map_or(0, |v| v.len() + 20);
        body.saturating_add(self.job_id.len() + self.plugin.len() + version + 48)
    }
}

fn batch_status(results: &[Result<ItemOk, JobError>]) -> Status {
    if results.iter().all(Result::is_ok) {
        Status::Ok
    } else {
        Status::Partial
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Reply", 10)?;
        s.serialize_field("job_id", &self.job_id)?;
        s.serialize_field("plugin", &self.plugin)?;
        match &self.plugin_version {
            Some(version) => s.serialize_field("plugin_version", version)?,
            None => s.skip_field("plugin_version")?,
        }
        match &self.instance {
            Some(instance) => s.serialize_field("instance", instance)?,
            None => s.skip_field("instance")?,
        }
        if self.http_requests > 0 {
            s.serialize_field("http_requests", &self.http_requests)?;
        } else {
            s.skip_field("http_requests")?;
        }
        s.serialize_field("status", &self.status())?;
        match &self.body {
            ReplyBody::Ok(success) => {
                s.serialize_field("output", &success.output)?;
                s.serialize_field("metadata", &success.metadata)?;
                s.serialize_field("duration_us", &success.duration_us)?;
                s.serialize_field("fuel_used", &success.fuel_used)?;
            }
            ReplyBody::Error(error) => s.serialize_field("error", error)?,
            ReplyBody::Batch {
                results,
                duration_us,
                fuel_used,
            } => {
                s.serialize_field("results", &Items(results))?;
                s.serialize_field("duration_us", duration_us)?;
                s.serialize_field("fuel_used", fuel_used)?;
            }
        }
        s.end()
    }
}

/// Serializes batch results as `[{"status":"ok",...} | {"status":"error",...}]`.
struct Items<'a>(&'a [Result<ItemOk, JobError>]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Item))
    }
}

struct Item<'a>(&'a Result<ItemOk, JobError>);

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Ok(item) => {
                let mut s = serializer.serialize_struct("Item", 3)?;
                s.serialize_field("status", &Status::Ok)?;
                s.serialize_field("output", &item.output)?;
                s.serialize_field("metadata", &item.metadata)?;
                s.end()
            }
            Err(error) => {
                let mut s = serializer.serialize_struct("Item", 2)?;
                s.serialize_field("status", &Status::Error)?;
                s.serialize_field("error", error)?;
                s.end()
            }
        }
    }
}

/// A reply as read back; checked into a [`Reply`]. Unknown fields are
/// ignored so that readers tolerate additions.
#[derive(Deserialize)]
struct WireReply {
    job_id: String,
    plugin: String,
    plugin_version: Option<String>,
    instance: Option<InstanceUse>,
    #[serde(default)]
    http_requests: u32,
    status: Status,
    output: Option<String>,
    metadata: Option<Metadata>,
    duration_us: Option<u64>,
    fuel_used: Option<u64>,
    error: Option<JobError>,
    results: Option<Vec<WireItem>>,
}

#[derive(Deserialize)]
struct WireItem {
    status: Status,
    output: Option<String>,
    metadata: Option<Metadata>,
    error: Option<JobError>,
}

fn missing(field: &str, status: Status) -> String {
    format!("missing field `{field}` in a reply of status `{status}`")
}

impl WireItem {
    fn check(self, i: usize) -> Result<Result<ItemOk, JobError>, String> {
        match self.status {
            Status::Ok => Ok(Ok(ItemOk {
                output: self
                    .output
                    .ok_or_else(|| format!("missing field `results[{i}].output`"))?,
                metadata: self.metadata.unwrap_or_default(),
            })),
            Status::Error => Ok(Err(self
                .error
                .ok_or_else(|| format!("missing field `results[{i}].error`"))?)),
            Status::Partial => Err(format!(
                "field `results[{i}].status` must be `ok` or `error`"
            )),
        }
    }
}

impl WireReply {
    fn check(self) -> Result<Reply, String> {
        let status = self.status;
        let body = match (status, self.results) {
            (Status::Error, _) => {
                ReplyBody::Error(self.error.ok_or_else(|| missing("error", status))?)
            }
            (_, Some(items)) => {
                let results = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| item.check(i))
                    .collect::<Result<Vec<_>, _>>()?;
                let derived = batch_status(&results);
                if derived != status {
                    return Err(format!(
                        "field `status` is `{status}` but the results make it `{derived}`"
                    ));
                }
                ReplyBody::Batch {
                    results,
                    duration_us: self
                        .duration_us
                        .ok_or_else(|| missing("duration_us", status))?,
                    fuel_used: self.fuel_used.ok_or_else(|| missing("fuel_used", status))?,
                }
            }
            (Status::Ok, None) => ReplyBody::Ok(Success {
                output: self.output.ok_or_else(|| missing("output", status))?,
                metadata: self.metadata.unwrap_or_default(),
                duration_us: self
                    .duration_us
                    .ok_or_else(|| missing("duration_us", status))?,
                fuel_used: self.fuel_used.ok_or_else(|| missing("fuel_used", status))?,
            }),
            (Status::Partial, None) => return Err(missing("results", status)),
        };
        Ok(Reply {
            job_id: self.job_id,
            plugin: self.plugin,
            plugin_version: self.plugin_version,
            instance: self.instance,
            http_requests: self.http_requests,
            body,
        })
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WireReply::deserialize(deserializer)?
            .check()
            .map_err(D::Error::custom)
    }
}

/// A writer that keeps bytes only while the total stays within `limit`, and
/// counts them all.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
    total: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.total = self.total.saturating_add(data.len());
        if self.total <= self.limit {
            self.buf.extend_from_slice(data);
        } else if self.buf.capacity() != 0 {
            // Over the limit: the reply will be swapped, so free the memory.
            self.buf = Vec::new();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serializes a reply as compact JSON.
///
/// If the serialized reply is larger than `max_reply_bytes` (JSON escaping
/// can make it up to six times the raw output), returns instead the error
/// reply of kind `output-too-large` for the same job, whose message gives
/// both sizes; that reply is small and is returned even if it too exceeds a
/// tiny limit. Memory stays bounded by the limit either way.
pub fn encode_reply(reply: &Reply, max_reply_bytes: usize) -> Vec<u8> {
    encode_reply_checked(reply, max_reply_bytes).0
}

/// Like [`encode_reply`], and also returns the error that replaced the
/// reply when it had to be swapped (`output-too-large`), so the caller
/// accounts for the outcome that was actually sent.
pub fn encode_reply_checked(reply: &Reply, max_reply_bytes: usize) -> (Vec<u8>, Option<JobError>) {
    let mut out = Capped {
        buf: Vec::with_capacity(reply.size_hint().min(max_reply_bytes)),
        limit: max_reply_bytes,
        total: 0,
    };
    let error = match serde_json::to_writer(&mut out, reply) {
        Ok(()) if out.total <= max_reply_bytes => return (out.buf, None),
        Ok(()) => JobError::new(
            ErrorKind::OutputTooLarge,
            format!(
                "reply is {} bytes, over the limit of {max_reply_bytes} bytes",
                out.total
            ),
        ),
        // Unreachable with these types and this writer; still, answer.
        Err(e) => JobError::new(
            ErrorKind::Internal,
            format!("reply could not be serialized: {e}"),
        ),
    };
    let fallback = Reply {
        job_id: reply.job_id.clone(),
        plugin: reply.plugin.clone(),
        plugin_version: reply.plugin_version.clone(),
        instance: reply.instance,
        http_requests: reply.http_requests,
        body: ReplyBody::Error(error.clone()),
    };
    (
        serde_json::to_vec(&fallback).unwrap_or_default(),
        Some(error),
    )
}

/// What became of one attempt at a job.
#[derive(Debug)]
pub struct Handled {
    /// The job's id (filled in deterministically when the record had none).
    pub job_id: String,
    /// The reply record.
    pub reply: Reply,
    /// The reply, serialized and size-checked, ready to publish or write.
    pub encoded: Vec<u8>,
    /// The whole job's error kind, if it failed.
    pub error: Option<crate::ErrorKind>,
    /// What the outcome table says to do now.
    pub disposition: crate::Disposition,
}

impl Handled {
    /// The answer to a job that was not run (see [`crate::admission`]):
    /// the error reply, under the body's default job id
    /// ([`crate::job_id_from_body`]: the envelope's message id, or a hash;
    /// any bytes have one) and the plugin the body names if it decodes, and
    /// the table's `disposition`.
    pub fn unrun(
        body: &[u8],
        envelope: &crate::Envelope<'_>,
        error: JobError,
        disposition: crate::Disposition,
    ) -> Self {
        let job_id = crate::job_id_from_body(body, envelope);
        let plugin = crate::decode_job(body, envelope, &crate::DecodeLimits::default())
            .map(|job| job.plugin)
            .unwrap_or_default();
        let kind = error.kind;
        let reply = Reply::error(job_id.clone(), plugin, error);
        let encoded = encode_reply(&reply, usize::MAX);
        Handled {
            job_id,
            reply,
            encoded,
            error: Some(kind),
            disposition,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn reply(plugin_version: Option<&str>, body: ReplyBody) -> Reply {
        Reply {
            job_id: "j1".into(),
            plugin: "upper".into(),
            plugin_version: plugin_version.map(str::to_owned),
            instance: None,
            http_requests: 0,
            body,
        }
    }

    fn error(kind: ErrorKind, message: &str) -> JobError {
        JobError::new(kind, message)
    }

    /// Checks the JSON form, the status and the round trip of a reply.
    fn check(reply: &Reply, status: Status, expected: serde_json::Value) {
        let bytes = encode_reply(reply, usize::MAX);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value, expected);
        assert_eq!(reply.status(), status);
        let back: Reply = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(&back, reply);
    }

    #[test]
    fn reply_shapes() {
        let success = Success {
            output: "HI".into(),
            metadata: meta(&[("lang", "en"), ("chars", "2")]),
            duration_us: 42,
            fuel_used: 1000,
        };
        check(
            &reply(Some("1.2.0"), ReplyBody::Ok(success)),
            Status::Ok,
            json!({
                "job_id": "j1", "plugin": "upper", "plugin_version": "1.2.0", "status": "ok",
                "output": "HI", "metadata": {"lang": "en", "chars": "2"},
                "duration_us": 42, "fuel_used": 1000,
            }),
        );
        check(
            &reply(
                None,
                ReplyBody::Error(error(ErrorKind::InvalidInput, "empty input")),
            ),
            Status::Error,
            json!({
                "job_id": "j1", "plugin": "upper", "status": "error",
                "error": {"kind": "invalid-input", "source": "plugin", "message": "empty input"},
            }),
        );
        check(
            &reply(
                Some("1.2.0"),
                ReplyBody::Error(error(ErrorKind::Trap, "unreachable")),
            ),
            Status::Error,
            json!({
                "job_id": "j1", "plugin": "upper", "plugin_version": "1.2.0", "status": "error",
                "error": {"kind": "trap", "source": "host", "message": "unreachable"},
            }),
        );
        let item = |output: &str| {
            Ok(ItemOk {
                output: output.into(),
                metadata: meta(&[("n", "1")]),
            })
        };
        check(
            &reply(
                Some("1.2.0"),
                ReplyBody::Batch {
                    results: vec![item("A"), item("B")],
                    duration_us: 7,
                    fuel_used: 9,
                },
            ),
            Status::Ok,
            json!({
                "job_id": "j1", "plugin": "upper", "plugin_version": "1.2.0", "status": "ok",
                "results": [
                    {"status": "ok", "output": "A", "metadata": {"n": "1"}},
                    {"status": "ok", "output": "B", "metadata": {"n": "1"}},
                ],
                "duration_us": 7, "fuel_used": 9,
            }),
        );
        check(
            &reply(
                Some("1.2.0"),
                ReplyBody::Batch {
                    results: vec![
                        item("A"),
                        Err(error(ErrorKind::UnsupportedFormat, "binary")),
                    ],
                    duration_us: 7,
                    fuel_used: 9,
                },
            ),
            Status::Partial,
            json!({
                "job_id": "j1", "plugin": "upper", "plugin_version": "1.2.0", "status": "partial",
                "results": [
                    {"status": "ok", "output": "A", "metadata": {"n": "1"}},
                    {"status": "error", "error": {"kind": "unsupported-format", "source": "plugin", "message": "binary"}},
                ],
                "duration_us": 7, "fuel_used": 9,
            }),
        );
        // Every input failing is still a batch that ran: partial.
        let all_failed = reply(
            None,
            ReplyBody::Batch {
                results: vec![Err(error(ErrorKind::InvalidInput, "x"))],
                duration_us: 1,
                fuel_used: 1,
            },
        );
        assert_eq!(all_failed.status(), Status::Partial);
        assert_eq!(all_failed.error_kind(), None);
        // A whole-batch failure is an error reply without results.
        let whole = reply(
            Some("1.2.0"),
            ReplyBody::Error(error(ErrorKind::FuelExhausted, "out of fuel")),
        );
        assert_eq!(whole.error_kind(), Some(ErrorKind::FuelExhausted));
    }

    #[test]
    fn metadata_keeps_order_and_last_duplicate_wins() {
        let pairs = vec![("b", "1"), ("a", "2"), ("b", "3")];
        let metadata: Metadata = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let body = ReplyBody::Ok(Success {
            output: String::new(),
            metadata,
            duration_us: 0,
            fuel_used: 0,
        });
        let text = String::from_utf8(encode_reply(&reply(None, body), usize::MAX)).unwrap();
        assert!(text.contains(r#""metadata":{"b":"3","a":"2"}"#), "{text}");
    }

    #[test]
    fn oversized_replies_become_output_too_large() {
        let body = ReplyBody::Ok(Success {
            output: "\u{1}".repeat(100),
            metadata: Metadata::new(),
            duration_us: 1,
            fuel_used: 2,
        });
        let big = reply(Some("1.0.0"), body);
        let full = encode_reply(&big, usize::MAX);
        // Escaping makes the reply 6x the raw output, and more.
        assert!(full.len() > 600, "{}", full.len());
        assert_eq!(encode_reply(&big, full.len()), full);
        let swapped: serde_json::Value =
            serde_json::from_slice(&encode_reply(&big, full.len() - 1)).unwrap();
        let message = format!(
            "reply is {} bytes, over the limit of {} bytes",
            full.len(),
            full.len() - 1
        );
        assert_eq!(
            swapped,
            json!({
                "job_id": "j1", "plugin": "upper", "plugin_version": "1.0.0", "status": "error",
                "error": {"kind": "output-too-large", "source": "host", "message": message},
            })
        );
        // Even a limit too small for the error reply yields the error reply.
        let tiny: Reply = serde_json::from_slice(&encode_reply(&big, 1)).unwrap();
        assert_eq!(tiny.error_kind(), Some(ErrorKind::OutputTooLarge));
    }

    #[test]
    fn malformed_replies_are_refused() {
        let check = |value: serde_json::Value, needle: &str| {
            let err = serde_json::from_value::<Reply>(value)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        };
        check(
            json!({"job_id": "j", "plugin": "p", "status": "error"}),
            "missing field `error`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "ok", "duration_us": 1, "fuel_used": 1}),
            "missing field `output`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "ok", "output": "x", "fuel_used": 1}),
            "missing field `duration_us`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "partial"}),
            "missing field `results`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "partial", "results": [{"status": "ok", "output": "x"}], "duration_us": 1, "fuel_used": 1}),
            "field `status` is `partial` but the results make it `ok`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "ok", "results": [{"status": "partial"}], "duration_us": 1, "fuel_used": 1}),
            "field `results[0].status` must be `ok` or `error`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "partial", "results": [{"status": "error"}], "duration_us": 1, "fuel_used": 1}),
            "missing field `results[0].error`",
        );
        check(
            json!({"job_id": "j", "plugin": "p", "status": "done"}),
            "unknown variant `done`",
        );
    }

    fn error_strategy() -> impl Strategy<Value = JobError> {
        (proptest::sample::select(ErrorKind::ALL.to_vec()), ".{0,8}")
            .prop_map(|(kind, message)| JobError::new(kind, message))
    }

    fn metadata_strategy() -> impl Strategy<Value = Metadata> {
        proptest::collection::vec((".{0,4}", ".{0,4}"), 0..4)
            .prop_map(|pairs| pairs.into_iter().collect())
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let item = prop_oneof![
            (".{0,8}", metadata_strategy())
                .prop_map(|(output, metadata)| Ok(ItemOk { output, metadata })),
            error_strategy().prop_map(Err),
        ];
        let body = prop_oneof![
            (".{0,8}", metadata_strategy(), any::<u64>(), any::<u64>()).prop_map(
                |(output, metadata, duration_us, fuel_used)| {
                    ReplyBody::Ok(Success {
                        output,
                        metadata,
                        duration_us,
                        fuel_used,
                    })
                }
            ),
            error_strategy().prop_map(ReplyBody::Error),
            (
                proptest::collection::vec(item, 0..4),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(results, duration_us, fuel_used)| ReplyBody::Batch {
                    results,
                    duration_us,
                    fuel_used
                }),
        ];
        let instance = proptest::option::of(proptest::sample::select(vec![
            InstanceUse::Fresh,
            InstanceUse::Reused,
        ]));
        (
            ".{0,8}",
            ".{0,8}",
            proptest::option::of(".{0,8}"),
            instance,
            0u32..4,
            body,
        )
            .prop_map(
                |(job_id, plugin, plugin_version, instance, http_requests, body)| Reply {
                    job_id,
                    plugin,
                    plugin_version,
                    instance,
                    http_requests,
                    body,
                },
            )
    }

    /// Metadata in order, since `IndexMap`'s `==` ignores it.
    fn ordered(reply: &Reply) -> Vec<Vec<(String, String)>> {
        let pairs = |m: &Metadata| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match &reply.body {
            ReplyBody::Ok(success) => vec![pairs(&success.metadata)],
            ReplyBody::Error(_) => vec![],
            ReplyBody::Batch { results, .. } => results
                .iter()
                .flatten()
                .map(|item| pairs(&item.metadata))
                .collect(),
        }
    }

    #[test]
    fn an_unrun_job_is_answered_with_its_id_and_plugin() {
        let error = JobError::new(ErrorKind::Internal, "given up");
        let disposition = crate::Disposition::ReplyAndDeadLetter;
        let body = br#"{"plugin":"upper","input":"x"}"#;
        let envelope = crate::Envelope {
            message_id: Some("j9"),
            correlation_id: None,
        };
        let handled = Handled::unrun(body, &envelope, error.clone(), disposition);
        assert_eq!(handled.job_id, "j9");
        assert_eq!(handled.reply, Reply::error("j9", "upper", error.clone()));
        assert_eq!(handled.error, Some(ErrorKind::Internal));
        assert_eq!(handled.disposition, disposition);
        let back: Reply = serde_json::from_slice(&handled.encoded).unwrap();
        assert_eq!(back, handled.reply);
        // Unreadable bytes still get the deterministic job id, and no plugin.
        let handled = Handled::unrun(b"\xff", &crate::Envelope::default(), error, disposition);
        assert!(handled.job_id.starts_with("sha256:"), "{}", handled.job_id);
        assert_eq!(handled.reply.plugin, "");
    }

    proptest! {
        #[test]
        fn replies_round_trip(reply in reply_strategy()) {
            let bytes = encode_reply(&reply, usize::MAX);
            let back: Reply = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &reply);
            prop_assert_eq!(ordered(&back), ordered(&reply));
            prop_assert_eq!(bytes.len(), serde_json::to_vec(&reply).unwrap().len());
        }

        #[test]
        fn encode_respects_the_limit(reply in reply_strategy(), limit in 0usize..400) {
            let bytes = encode_reply(&reply, limit);
            let back: Reply = serde_json::from_slice(&bytes).unwrap();
            if back.error_kind() == Some(ErrorKind::OutputTooLarge) && back != reply {
                prop_assert!(serde_json::to_vec(&reply).unwrap().len() > limit);
            } else {
                prop_assert!(bytes.len() <= limit);
                prop_assert_eq!(back, reply);
            }
        }
    }

    #[test]
    fn http_requests_is_written_when_there_were_any_and_read_back() {
        let mut reply = Reply::error("j", "p", JobError::new(ErrorKind::Timeout, "t"));
        let none = serde_json::to_value(&reply).unwrap();
        assert!(none.get("http_requests").is_none(), "{none}");
        reply.http_requests = 3;
        let encoded = encode_reply(&reply, 1 << 20);
        let value: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(value["http_requests"], 3, "{value}");
        let back: Reply = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(back, reply);
    }
}
