//! The job record: [`Job`] and its [`Payload`], decoding a message body into
//! one ([`decode_job`]) under [`DecodeLimits`], the typed [`RequestError`]
//! for bodies that cannot be accepted, and the deterministic default job id
//! ([`job_id_from_body`]).

use std::collections::BTreeMap;

use semver::VersionReq;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::outcome::{ErrorKind, JobError};
use crate::reply::Reply;

/// What a job asks the plugin to transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// One input (the job's `input` field).
    Single(String),
    /// A batch of inputs (the job's `inputs` field), never empty.
    Batch(Vec<String>),
}

impl Payload {
    /// The inputs as a slice: one element for [`Payload::Single`].
    pub fn inputs(&self) -> &[String] {
        match self {
            Payload::Single(input) => std::slice::from_ref(input),
            Payload::Batch(inputs) => inputs,
        }
    }

    /// Whether the job is a batch.
    pub fn is_batch(&self) -> bool {
        matches!(self, Payload::Batch(_))
    }
}

/// A decoded job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id: from the body, else the transport's message id, else a
    /// hash of the body (see [`job_id_from_body`]). Never empty.
    pub job_id: String,
    /// The name of the plugin to run. Never empty.
    pub plugin: String,
    /// The plugin version the job requires, if any.
    pub version: Option<VersionReq>,
    /// The input or inputs.
    pub payload: Payload,
    /// Per-job configuration the plugin reads with `get-config`.
    pub config: BTreeMap<String, String>,
    /// The job's own deadline in milliseconds, if any (the worker caps it).
    pub timeout_ms: Option<u64>,
    /// What the job is routed by across the shards of a sharded jobs
    /// queue (a tenant, a document id): jobs with the same key go to the
    /// same shard. Producers also send it as the `x-kiln-key` header and
    /// route by [`routing_key`] (the job id when absent); the worker
    /// ignores it.
    pub key: Option<String>,
}

/// The routing key of a job on a sharded jobs queue: its `key` when
/// present and not empty, else its `job_id`, so that jobs without a key
/// spread evenly over the shards.
pub fn routing_key<'a>(key: Option<&'a str>, job_id: &'a str) -> &'a str {
    key.filter(|k| !k.is_empty()).unwrap_or(job_id)
}

/// Serializes as the job record of `docs/PROTOCOL.md`; `decode_job` reads it
/// back to an equal job.
impl Serialize for Job {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Job", 7)?;
        s.serialize_field("job_id", &self.job_id)?;
        s.serialize_field("plugin", &self.plugin)?;
        match &self.version {
            Some(version) => s.serialize_field("version", &version.to_string())?,
            None => s.skip_field("version")?,
        }
        match &self.payload {
            Payload::Single(input) => s.serialize_field("input", input)?,
            Payload::Batch(inputs) => s.serialize_field("inputs", inputs)?,
        }
        if self.config.is_empty() {
            s.skip_field("config")?;
        } else {
            s.serialize_field("config", &self.config)?;
        }
        match self.timeout_ms {
            Some(timeout_ms) => s.serialize_field("timeout_ms", &timeout_ms)?,
            None => s.skip_field("timeout_ms")?,
        }
        match &self.key {
            Some(key) => s.serialize_field("key", key)?,
            None => s.skip_field("key")?,
        }
        s.end()
    }
}

/// Transport facts that come with a body (AMQP properties, or nothing for a
/// JSONL line). Empty strings count as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The AMQP `message_id` property.
    pub message_id: Option<&'a str>,
    /// The AMQP `correlation_id` property.
    pub correlation_id: Option<&'a str>,
}

/// Size limits applied while decoding a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The largest input, in bytes of UTF-8; for a batch, also the largest
    /// sum of its inputs.
    pub max_input_bytes: usize,
    /// The largest body, in bytes, checked before anything is parsed.
    pub max_body_bytes: usize,
}

impl Default for DecodeLimits {
    /// 1 MiB of input, 8 MiB of body (JSON escaping can make a body up to six
    /// times larger than its inputs).
    fn default() -> Self {
        DecodeLimits {
            max_input_bytes: 1 << 20,
            max_body_bytes: 8 << 20,
        }
    }
}

/// A job that could not be decoded: enough to address an error reply and a
/// dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job `{job_id}`: {error}")]
pub struct RequestError {
    /// The job's id, found as for a decoded job. Never empty.
    pub job_id: String,
    /// The plugin named by the body, when it could be read.
    pub plugin: Option<String>,
    /// Why the job was refused: a request kind (`bad-request` or
    /// `payload-too-large`).
    pub error: JobError,
}

impl RequestError {
    /// The error reply to send for this request (its `plugin` is empty when
    /// the body did not name one).
    pub fn to_reply(&self) -> Reply {
        Reply::error(
            self.job_id.clone(),
            self.plugin.clone().unwrap_or_default(),
            self.error.clone(),
        )
    }
}

impl From<RequestError> for Reply {
    fn from(error: RequestError) -> Self {
        Reply::error(error.job_id, error.plugin.unwrap_or_default(), error.error)
    }
}

/// The deterministic default job id of a body, the same on every redelivery:
/// the envelope's `message_id` if not empty, else `"sha256:"` followed by the
/// first 32 hex digits of SHA-256 over the `correlation_id` bytes (empty when
/// absent), a 0 byte, and the body.
pub fn job_id_from_body(body: &[u8], envelope: &Envelope<'_>) -> String {
    if let Some(id) = non_empty(envelope.message_id) {
        return id.to_owned();
    }
    let mut hasher = Sha256::new();
    hasher.update(envelope.correlation_id.unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let digest = hasher.finalize();
    let mut id = String::with_capacity(7 + 32);
    id.push_str("sha256:");
    id.push_str(&hex::encode(&digest[..16]));
    id
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The job as it appears on the wire; what the happy path deserializes into.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireJob {
    job_id: Option<String>,
    plugin: String,
    version: Option<String>,
    input: Option<String>,
    inputs: Option<Vec<String>>,
    config: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    key: Option<String>,
}

/// The fields a job may have, for the unknown-field message.
const FIELDS: [&str; 8] = [
    "job_id",
    "plugin",
    "version",
    "input",
    "inputs",
    "config",
    "timeout_ms",
    "key",
];

/// Decodes one job body.
///
/// Checks, in order: the body size (`payload-too-large`, nothing parsed);
/// UTF-8, JSON, the shape of the record, unknown fields, the plugin name,
/// exactly one of `input`/`inputs`, a non-empty batch and the `version`
/// requirement (`bad-request`); the input sizes (`payload-too-large`).
/// Optional fields may be `null`, meaning absent. Every error names the
/// failing field and carries the job id and plugin when they could be read.
pub fn decode_job(
    body: &[u8],
    envelope: &Envelope<'_>,
    limits: &DecodeLimits,
) -> Result<Job, RequestError> {
    if body.len() > limits.max_body_bytes {
        return Err(RequestError {
            job_id: job_id_from_body(body, envelope),
            plugin: None,
            error: JobError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "body is {} bytes, over the limit of {} bytes",
                    body.len(),
                    limits.max_body_bytes
                ),
            ),
        });
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Err(RequestError {
                job_id: job_id_from_body(body, envelope),
                plugin: None,
                error: JobError::new(ErrorKind::BadRequest, format!("body is not utf-8: {e}")),
            });
        }
    };
    match serde_json::from_str::<WireJob>(text) {
        Ok(wire) => finish(wire, body, envelope, limits),
        Err(e) => Err(diagnose(text, &e, body, envelope)),
    }
}

/// Applies the checks serde cannot express to a well-shaped job.
fn finish(
    wire: WireJob,
    body: &[u8],
    envelope: &Envelope<'_>,
    limits: &DecodeLimits,
) -> Result<Job, RequestError> {
    let WireJob {
        job_id,
        plugin,
        version,
        input,
        inputs,
        config,
        timeout_ms,
        key,
    } = wire;
    let job_id = match job_id.filter(|id| !id.is_empty()) {
        Some(id) => id,
        None => job_id_from_body(body, envelope),
    };
    match check(&plugin, version.as_deref(), input, inputs, limits) {
        Ok((payload, version)) => Ok(Job {
            job_id,
            plugin,
            version,
            payload,
            config: config.unwrap_or_default(),
            timeout_ms,
            key,
        }),
        Err(error) => Err(RequestError {
            job_id,
            plugin: (!plugin.is_empty()).then_some(plugin),
            error,
        }),
    }
}

fn check(
    plugin: &str,
    version: Option<&str>,
    input: Option<String>,
    inputs: Option<Vec<String>>,
    limits: &DecodeLimits,
) -> Result<(Payload, Option<VersionReq>), JobError> {
    let bad = |message: String| JobError::new(ErrorKind::BadRequest, message);
    let too_large = |message: String| JobError::new(ErrorKind::PayloadTooLarge, message);
    if plugin.is_empty() {
        return Err(bad("field `plugin` must not be empty".into()));
    }
    let payload = match (input, inputs) {
        (Some(input), None) => Payload::Single(input),
        (None, Some(inputs)) if inputs.is_empty() => {
            return Err(bad("field `inputs` must not be empty".into()));
        }
        (None, Some(inputs)) => Payload::Batch(inputs),
        (Some(_), Some(_)) => {
            return Err(bad(
                "fields `input` and `inputs` are exclusive: give one of them".into(),
            ));
        }
        (None, None) => return Err(bad("missing field `input` (or `inputs` for a batch)".into())),
    };
    let version = match version {
        None => None,
        Some(req) => Some(
            VersionReq::parse(req)
                .map_err(|e| bad(format!("field `version` is not a semver requirement: {e}")))?,
        ),
    };
    let max = limits.max_input_bytes;
    match &payload {
        Payload::Single(input) if input.len() > max => {
            return Err(too_large(format!(
                "field `input` is {} bytes, over the limit of {max} bytes",
                input.len()
            )));
        }
        Payload::Single(_) => {}
        Payload::Batch(inputs) => {
            let mut total = 0usize;
            for (i, input) in inputs.iter().enumerate() {
                if input.len() > max {
                    return Err(too_large(format!(
                        "field `inputs[{i}]` is {} bytes, over the limit of {max} bytes",
                        input.len()
                    )));
                }
                total = total.saturating_add(input.len());
            }
            if total > max {
                return Err(too_large(format!(
                    "field `inputs` totals {total} bytes, over the limit of {max} bytes"
                )));
            }
        }
    }
    Ok((payload, version))
}

/// The error path: re-reads the body leniently to name the failing field and
/// to recover the job id and plugin for the error reply.
fn diagnose(
    text: &str,
    serde_error: &serde_json::Error,
    body: &[u8],
    envelope: &Envelope<'_>,
) -> RequestError {
    let fail = |job_id: Option<&str>, plugin: Option<&str>, message: String| RequestError {
        job_id: match non_empty(job_id) {
            Some(id) => id.to_owned(),
            None => job_id_from_body(body, envelope),
        },
        plugin: non_empty(plugin).map(str::to_owned),
        error: JobError::new(ErrorKind::BadRequest, message),
    };
    let value = match serde_json::from_str::<Value>(text) {
        Ok(value) => value,
        Err(e) => return fail(None, None, format!("body is not json: {e}")),
    };
    let Value::Object(fields) = &value else {
        return fail(
            None,
            None,
            format!("body must be a json object, not {}", describe(&value)),
        );
    };
    let job_id = fields.get("job_id").and_then(Value::as_str);
    let plugin = fields.get("plugin").and_then(Value::as_str);
    let message = shape_problem(fields).unwrap_or_else(|| format!("invalid job: {serde_error}"));
    fail(job_id, plugin, message)
}

/// The first problem with the shape of a job object, naming the field.
fn shape_problem(fields: &serde_json::Map<String, Value>) -> Option<String> {
    if let Some(unknown) = fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Some(format!(
            "unknown field `{unknown}` (a job has {})",
            FIELDS.map(|f| format!("`{f}`")).join(", ")
        ));
    }
    let optional_string = |name: &str| match fields.get(name) {
        None | Some(Value::Null | Value::String(_)) => None,
        Some(other) => Some(format!(
            "field `{name}` must be a string, not {}",
            describe(other)
        )),
    };
    if let Some(problem) = optional_string("job_id") {
        return Some(problem);
    }
    match fields.get("plugin") {
        None => return Some("missing field `plugin`".into()),
        Some(Value::String(_)) => {}
        Some(other) => {
            return Some(format!(
                "field `plugin` must be a string, not {}",
                describe(other)
            ));
        }
    }
    for name in ["version", "input", "key"] {
        if let Some(problem) = optional_string(name) {
            return Some(problem);
        }
    }
    match fields.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, item)| !item.is_string()) {
                return Some(format!(
                    "field `inputs[{i}]` must be a string, not {}",
                    describe(item)
                ));
            }
        }
        Some(other) => {
            return Some(format!(
                "field `inputs` must be an array of strings, not {}",
                describe(other)
            ));
        }
    }
    match fields.get("config") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            if let Some((key, value)) = entries.iter().find(|(_, value)| !value.is_string()) {
                return Some(format!(
                    "field `config.{key}` must be a string, not {}",
                    describe(value)
                ));
            }
        }
        Some(other) => {
            return Some(format!(
                "field `config` must be an object of strings, not {}",
                describe(other)
            ));
        }
    }
    match fields.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(value) if value.is_u64() => None,
        Some(other) => Some(format!(
            "field `timeout_ms` must be a non-negative integer, not {}",
            describe(other)
        )),
    }
}

/// A short description of a JSON value for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_input_bytes: 16,
        max_body_bytes: 256,
    };

    /// Decodes `body` with no envelope and the test limits.
    fn decode(body: &[u8]) -> Result<Job, RequestError> {
        decode_job(body, &Envelope::default(), &LIMITS)
    }

    /// Checks that `body` is refused with `kind` and a message containing `needle`.
    fn check_err(body: &[u8], kind: ErrorKind, needle: &str) {
        let err = decode(body).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(err.error.kind, kind, "{err}");
        assert!(
            err.error.message.contains(needle),
            "{:?} lacks {needle:?}",
            err.error.message
        );
        assert!(!err.job_id.is_empty());
    }

    #[test]
    #[rustfmt::skip]
    fn malformed_jobs() {
        use ErrorKind::{BadRequest, PayloadTooLarge};
        let cases: &[(&[u8], ErrorKind, &str)] = &[
            (b"{\"plugin\":\"p\",\"input\":\"\xff\"}", BadRequest, "body is not utf-8"),
            (b"", BadRequest, "body is not json"),
            (b"{\"plugin\":", BadRequest, "body is not json"),
            (b"{\"plugin\":\"p\",\"input\":\"x\"} trailing", BadRequest, "body is not json"),
            (b"[\"plugin\"]", BadRequest, "body must be a json object, not an array"),
            (b"\"job\"", BadRequest, "body must be a json object, not a string"),
            (b"null", BadRequest, "body must be a json object, not null"),
            (br#"{"input":"x"}"#, BadRequest, "missing field `plugin`"),
            (br#"{"plugin":null,"input":"x"}"#, BadRequest, "field `plugin` must be a string, not null"),
            (br#"{"plugin":"","input":"x"}"#, BadRequest, "field `plugin` must not be empty"),
            (br#"{"plugin":"p","input":"x","inputs":["y"]}"#, BadRequest, "fields `input` and `inputs` are exclusive"),
            (br#"{"plugin":"p"}"#, BadRequest, "missing field `input`"),
            (br#"{"plugin":"p","input":null}"#, BadRequest, "missing field `input`"),
            (br#"{"plugin":"p","inputs":[]}"#, BadRequest, "field `inputs` must not be empty"),
            (br#"{"plugin":"p","input":5}"#, BadRequest, "field `input` must be a string, not 5"),
            (br#"{"plugin":"p","inputs":"x"}"#, BadRequest, "field `inputs` must be an array of strings, not a string"),
            (br#"{"plugin":"p","inputs":["x",true]}"#, BadRequest, "field `inputs[1]` must be a string, not true"),
            (br#"{"plugin":"p","input":"x","config":{"a":"b","n":1}}"#, BadRequest, "field `config.n` must be a string, not 1"),
            (br#"{"plugin":"p","input":"x","config":["a"]}"#, BadRequest, "field `config` must be an object of strings, not an array"),
            (br#"{"plugin":"p","input":"x","timeout_ms":-5}"#, BadRequest, "field `timeout_ms` must be a non-negative integer, not -5"),
            (br#"{"plugin":"p","input":"x","timeout_ms":1.5}"#, BadRequest, "field `timeout_ms` must be a non-negative integer, not 1.5"),
            (br#"{"plugin":"p","input":"x","timeout_ms":"9"}"#, BadRequest, "field `timeout_ms` must be a non-negative integer, not a string"),
            (br#"{"job_id":7,"plugin":"p","input":"x"}"#, BadRequest, "field `job_id` must be a string, not 7"),
            (br#"{"plugin":"p","input":"x","version":1}"#, BadRequest, "field `version` must be a string, not 1"),
            (br#"{"plugin":"p","imput":"x"}"#, BadRequest, "unknown field `imput` (a job has `job_id`, `plugin`, `version`, `input`, `inputs`, `config`, `timeout_ms`, `key`)"),
            (br#"{"plugin":"p","input":"x","plugin":"q"}"#, BadRequest, "duplicate field `plugin`"),
            (br#"{"plugin":"p","input":"x","version":"one"}"#, BadRequest, "field `version` is not a semver requirement"),
            (br#"{"plugin":"p","input":"x","version":""}"#, BadRequest, "field `version` is not a semver requirement"),
            (br#"{"plugin":"p","input":"x","version":">=1 <2"}"#, BadRequest, "field `version` is not a semver requirement"),
            (br#"{"plugin":"p","input":"0123456789abcdefg"}"#, PayloadTooLarge, "field `input` is 17 bytes, over the limit of 16 bytes"),
            (br#"{"plugin":"p","inputs":["a","0123456789abcdefg"]}"#, PayloadTooLarge, "field `inputs[1]` is 17 bytes"),
            (br#"{"plugin":"p","inputs":["0123456789","0123456789"]}"#, PayloadTooLarge, "field `inputs` totals 20 bytes, over the limit of 16 bytes"),
        ];
        for (body, kind, needle) in cases {
            check_err(body, *kind, needle);
        }
        let big = format!(r#"{{"plugin":"p","input":"{}"}}"#, " ".repeat(300));
        check_err(big.as_bytes(), PayloadTooLarge, "body is 325 bytes, over the limit of 256 bytes");
    }

    #[test]
    fn errors_carry_what_could_be_read() {
        // (body, job_id or None for the hash, plugin)
        let check = |body: &str, job_id: Option<&str>, plugin: Option<&str>| {
            let err = decode(body.as_bytes()).unwrap_err();
            let expected_id = job_id.map_or_else(
                || job_id_from_body(body.as_bytes(), &Envelope::default()),
                str::to_owned,
            );
            assert_eq!(err.job_id, expected_id, "{body}");
            assert_eq!(err.plugin.as_deref(), plugin, "{body}");
        };
        check(
            r#"{"job_id":"j1","plugin":"p","input":5}"#,
            Some("j1"),
            Some("p"),
        );
        check(
            r#"{"job_id":"j1","plugin":"p","bogus":1}"#,
            Some("j1"),
            Some("p"),
        );
        check(
            r#"{"job_id":"j1","plugin":"p","input":"x","version":"?"}"#,
            Some("j1"),
            Some("p"),
        );
        check(
            r#"{"job_id":"j1","plugin":"p","input":"0123456789abcdefg"}"#,
            Some("j1"),
            Some("p"),
        );
        check(r#"{"job_id":"","plugin":"","input":"x"}"#, None, None);
        check(r#"{"job_id":3,"plugin":4}"#, None, None);
        check(r#"{"job_id":"j1","plugin":"p""#, None, None);
        check(r#"["j1"]"#, None, None);
    }

    #[test]
    fn request_error_becomes_an_error_reply() {
        let err = decode(br#"{"job_id":"j1","input":"x"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job `j1`: bad-request: missing field `plugin`"
        );
        let reply = err.to_reply();
        assert_eq!(reply, Reply::from(err));
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            serde_json::json!({
                "job_id": "j1", "plugin": "", "status": "error",
                "error": {"kind": "bad-request", "source": "request", "message": "missing field `plugin`"},
            })
        );
    }

    #[test]
    fn decodes_full_and_minimal_jobs() {
        let job = decode(
            br#"{"job_id":"j1","plugin":"upper","version":"^1.2","input":"hi","config":{"mode":"x"},"timeout_ms":500}"#,
        )
        .unwrap();
        assert_eq!(
            job,
            Job {
                job_id: "j1".into(),
                plugin: "upper".into(),
                version: Some(VersionReq::parse("^1.2").unwrap()),
                payload: Payload::Single("hi".into()),
                config: [("mode".to_owned(), "x".to_owned())].into(),
                timeout_ms: Some(500),
                key: None,
            }
        );
        let job = decode(br#"{"plugin":"upper","inputs":["a","b"],"config":null,"version":null}"#)
            .unwrap();
        assert_eq!(job.payload, Payload::Batch(vec!["a".into(), "b".into()]));
        assert_eq!(job.payload.inputs(), ["a", "b"]);
        assert!(job.payload.is_batch());
        assert_eq!(job.version, None);
        assert!(job.config.is_empty());
        // Exactly at the limits is fine.
        let at_limit = decode(br#"{"plugin":"p","inputs":["01234567","89abcdef"]}"#).unwrap();
        assert_eq!(at_limit.payload.inputs().len(), 2);
    }

    #[test]
    fn job_id_precedence() {
        let body = br#"{"plugin":"p","input":"x"}"#;
        let with_id = br#"{"job_id":"body-id","plugin":"p","input":"x"}"#;
        let empty_id = br#"{"job_id":"","plugin":"p","input":"x"}"#;
        let envelope = |message_id, correlation_id| Envelope {
            message_id,
            correlation_id,
        };
        // (body, envelope, expected id)
        let check = |body: &[u8], env: Envelope<'_>, expected: &str| {
            assert_eq!(decode_job(body, &env, &LIMITS).unwrap().job_id, expected);
        };
        check(with_id, envelope(Some("msg"), Some("c")), "body-id");
        check(body, envelope(Some("msg"), Some("c")), "msg");
        check(empty_id, envelope(Some("msg"), None), "msg");
        let hashed = job_id_from_body(body, &Envelope::default());
        check(body, envelope(None, None), &hashed);
        check(body, envelope(Some(""), Some("")), &hashed);
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 7 + 32,
            "{hashed}"
        );
        assert!(
            hashed[7..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // The hash follows the documented recipe.
        let mut hasher = Sha256::new();
        hasher.update(b"corr\0");
        hasher.update(body);
        let expected = format!("sha256:{}", &hex::encode(hasher.finalize())[..32]);
        assert_eq!(
            job_id_from_body(body, &envelope(None, Some("corr"))),
            expected
        );
        // Deterministic, and separated by correlation id and body.
        let id = |body: &[u8], corr| job_id_from_body(body, &envelope(None, corr));
        assert_eq!(id(body, Some("a")), id(body, Some("a")));
        assert_ne!(id(body, Some("a")), id(body, Some("b")));
        assert_ne!(id(body, Some("a")), id(body, None));
        assert_ne!(id(body, None), id(with_id, None));
        // The separator keeps (correlation id, body) splits apart.
        assert_ne!(id(b"bc", Some("a")), id(b"c", Some("ab")));
        // Undecodable bodies get the same ids.
        let err = decode_job(b"\xff", &envelope(None, Some("c")), &LIMITS).unwrap_err();
        assert_eq!(err.job_id, id(b"\xff", Some("c")));
        let err = decode_job(b"\xff", &envelope(Some("m"), None), &LIMITS).unwrap_err();
        assert_eq!(err.job_id, "m");
    }

    #[test]
    fn the_routing_key_defaults_to_the_job_id() {
        assert_eq!(routing_key(Some("tenant-7"), "j1"), "tenant-7");
        assert_eq!(routing_key(Some(""), "j1"), "j1");
        assert_eq!(routing_key(None, "j1"), "j1");
        let job = decode_job(
            br#"{"job_id":"j1","plugin":"p","input":"x","key":"t"}"#,
            &Envelope::default(),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(job.key.as_deref(), Some("t"));
        let err = decode_job(
            br#"{"plugin":"p","input":"x","key":7}"#,
            &Envelope::default(),
            &LIMITS,
        )
        .unwrap_err();
        assert!(
            err.error.message.contains("field `key` must be a string"),
            "{}",
            err.error.message
        );
    }

    #[test]
    fn jobs_serialize_to_the_record() {
        let job = Job {
            job_id: "j".into(),
            plugin: "p".into(),
            version: Some(VersionReq::parse(">=1.0, <2").unwrap()),
            payload: Payload::Batch(vec!["a".into()]),
            config: BTreeMap::new(),
            timeout_ms: None,
            key: None,
        };
        assert_eq!(
            serde_json::to_value(&job).unwrap(),
            serde_json::json!({"job_id": "j", "plugin": "p", "version": ">=1.0, <2", "inputs": ["a"]})
        );
    }

    fn version_req() -> impl Strategy<Value = Option<VersionReq>> {
        let req = prop_oneof![
            Just("*".to_owned()),
            (0u64..20, 0u64..20, 0u64..20).prop_map(|(a, b, c)| format!("^{a}.{b}.{c}")),
            (0u64..20, 0u64..20).prop_map(|(a, b)| format!("~{a}.{b}")),
            (0u64..20, 1u64..20).prop_map(|(a, b)| format!(">={a}.0.0, <{}.0.0", a + b)),
            (0u64..20, 0u64..20, 0u64..20).prop_map(|(a, b, c)| format!("={a}.{b}.{c}-rc.1")),
        ];
        proptest::option::of(req.prop_map(|r| VersionReq::parse(&r).unwrap()))
    }

    fn job() -> impl Strategy<Value = Job> {
        let payload = prop_oneof![
            ".{0,8}".prop_map(Payload::Single),
            proptest::collection::vec(".{0,4}", 1..4).prop_map(Payload::Batch),
        ];
        (
            ".{1,12}",
            ".{1,12}",
            version_req(),
            payload,
            proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..3),
            proptest::option::of(any::<u64>()),
            proptest::option::of(".{0,8}"),
        )
            .prop_map(
                |(job_id, plugin, version, payload, config, timeout_ms, key)| Job {
                    job_id,
                    plugin,
                    version,
                    payload,
                    config,
                    timeout_ms,
                    key,
                },
            )
    }

    /// Bodies worth fuzzing: raw bytes, JSON-ish text, and valid jobs with a
    /// byte flipped.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            r#"[{}\[\]":,0-9a-z_ \\-]{0,64}"#.prop_map(String::into_bytes),
            (job(), any::<usize>(), any::<u8>()).prop_map(|(job, at, byte)| {
                let mut body = serde_json::to_vec(&job).unwrap();
                let at = at % body.len();
                body[at] = byte;
                body
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(
            body in body(),
            message_id in proptest::option::of(".{0,8}"),
            correlation_id in proptest::option::of(".{0,8}"),
            max_input_bytes in 0usize..32,
            max_body_bytes in 0usize..128,
        ) {
            let envelope = Envelope {
                message_id: message_id.as_deref(),
                correlation_id: correlation_id.as_deref(),
            };
            let limits = DecodeLimits { max_input_bytes, max_body_bytes };
            match decode_job(&body, &envelope, &limits) {
                Ok(job) => {
                    prop_assert!(!job.job_id.is_empty());
                    prop_assert!(!job.plugin.is_empty());
                }
                Err(err) => {
                    prop_assert!(!err.job_id.is_empty());
                    prop_assert!(matches!(
                        err.error.kind,
                        ErrorKind::BadRequest | ErrorKind::PayloadTooLarge
                    ));
                    prop_assert!(!err.error.message.is_empty());
                    prop_assert_ne!(err.plugin.as_deref(), Some(""));
                }
            }
        }

        #[test]
        fn valid_jobs_round_trip(job in job(), message_id in proptest::option::of(".{0,8}")) {
            let body = serde_json::to_vec(&job).unwrap();
            let envelope = Envelope { message_id: message_id.as_deref(), correlation_id: None };
            let limits = DecodeLimits { max_input_bytes: 1 << 10, max_body_bytes: 1 << 16 };
            prop_assert_eq!(decode_job(&body, &envelope, &limits), Ok(job));
        }
    }
}
