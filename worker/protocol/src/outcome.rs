//! The outcome table: every way a job can fail ([`ErrorKind`]), who is to
//! blame ([`Source`]), what Kiln does about it ([`Action`]), and the one
//! policy function, [`disposition`], that turns a finished attempt into a
//! [`Disposition`] (reply, retry after a backoff, or reply and dead-letter).
//!
//! Two more rules are about deliveries rather than a job's result, and the
//! broker asks them here instead of deciding on its own: [`admission`] (the
//! poison rule: a job delivered too often is answered and dead-lettered
//! without running) and [`carried`] (a retry with no delay queue for its
//! step replies and dead-letters).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a job failed. Serialized as its kebab-case name (`fuel-exhausted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The plugin rejected the input as not acceptable.
    InvalidInput,
    /// The plugin does not handle this kind of input or mode.
    UnsupportedFormat,
    /// The plugin failed for its own reasons.
    InternalError,
    /// The plugin ran out of its fuel (instruction budget).
    FuelExhausted,
    /// The plugin tried to grow its memory past the limit.
    MemoryLimit,
    /// The plugin trapped (panic, unreachable, out-of-bounds access...).
    Trap,
    /// The serialized reply is larger than the reply limit.
    OutputTooLarge,
    /// The plugin ran past its deadline.
    Timeout,
    /// Kiln's own failure (pool exhausted, I/O): not the job's fault.
    Internal,
    /// The request is malformed: not UTF-8, not JSON, missing or wrong fields.
    BadRequest,
    /// The body or an input is larger than its limit.
    PayloadTooLarge,
    /// No plugin of the requested name is loaded.
    UnknownPlugin,
    /// The plugin is loaded but its version does not match the requirement.
    VersionMismatch,
}

/// Who a failure is attributed to. Serialized lowercase (`plugin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The plugin reported the failure itself.
    Plugin,
    /// The host (Kiln's sandbox or Kiln itself) stopped or failed the job.
    Host,
    /// The request could not be accepted as sent.
    Request,
}

/// What the outcome table prescribes for an error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Final: send the error reply.
    Reply,
    /// Retryable: retry until the attempts run out, then reply and dead-letter.
    Retry,
    /// Final: send the error reply and dead-letter the request with the reason.
    ReplyAndDeadLetter,
}

impl ErrorKind {
    /// Every kind, in the order of the outcome table.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::InvalidInput,
        ErrorKind::UnsupportedFormat,
        ErrorKind::InternalError,
        ErrorKind::FuelExhausted,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::OutputTooLarge,
        ErrorKind::Timeout,
        ErrorKind::Internal,
        ErrorKind::BadRequest,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnknownPlugin,
        ErrorKind::VersionMismatch,
    ];

    /// The kebab-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::UnsupportedFormat => "unsupported-format",
            ErrorKind::InternalError => "internal-error",
            ErrorKind::FuelExhausted => "fuel-exhausted",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Trap => "trap",
            ErrorKind::OutputTooLarge => "output-too-large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::PayloadTooLarge => "payload-too-large",
            ErrorKind::UnknownPlugin => "unknown-plugin",
            ErrorKind::VersionMismatch => "version-mismatch",
        }
    }

    /// Who the kind is attributed to (the outcome table's `source` column).
    pub fn source(self) -> Source {
        self.row().0
    }

    /// What to do about the kind (the outcome table's `action` column).
    pub fn action(self) -> Action {
        self.row().1
    }

    /// The outcome table: the single place that maps a kind to its row.
    fn row(self) -> (Source, Action) {
        match self {
            ErrorKind::InvalidInput | ErrorKind::UnsupportedFormat | ErrorKind::InternalError => {
                (Source::Plugin, Action::Reply)
            }
            ErrorKind::FuelExhausted
            | ErrorKind::MemoryLimit
            | ErrorKind::Trap
            | ErrorKind::OutputTooLarge => (Source::Host, Action::Reply),
            ErrorKind::Timeout | ErrorKind::Internal => (Source::Host, Action::Retry),
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnknownPlugin
            | ErrorKind::VersionMismatch => (Source::Request, Action::ReplyAndDeadLetter),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`ErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error kind `{0}`")]
pub struct UnknownErrorKind(pub String);

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownErrorKind(s.to_owned()))
    }
}

impl Source {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Plugin => "plugin",
            Source::Host => "host",
            Source::Request => "request",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed failure of a job, as carried in replies and dead letters.
///
/// Serialized as `{"kind", "source", "message"}`; `source` is derived from
/// `kind` (`error.kind.source()`; there is no inherent `source` method, which
/// would shadow [`std::error::Error::source`]) and, when read back, must agree
/// with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct JobError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A human-readable explanation.
    pub message: String,
}

impl JobError {
    /// A failure of `kind` explained by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
        }
    }
}

impl Serialize for JobError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("JobError", 3)?;
        s.serialize_field("kind", &self.kind)?;
        s.serialize_field("source", &self.kind.source())?;
        s.serialize_field("message", &self.message)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for JobError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            kind: ErrorKind,
            #[serde(default)]
            source: Option<Source>,
            message: String,
        }
        let wire = Wire::deserialize(deserializer)?;
        if let Some(source) = wire.source
            && source != wire.kind.source()
        {
            return Err(D::Error::custom(format!(
                "error source `{source}` does not match kind `{}` (expected `{}`)",
                wire.kind,
                wire.kind.source()
            )));
        }
        Ok(JobError::new(wire.kind, wire.message))
    }
}

/// How retryable failures are retried.
///
/// The delay before attempt `n + 1` is
/// `min(max_backoff, initial_backoff * multiplier^(n - 1))`.
/// The default is 3 attempts in all, with delays of 1 s and then 4 s,
/// capped at 60 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, counting the first; 0 and 1 both mean no retry.
    pub max_attempts: u32,
    /// The delay before the first retry.
    pub initial_backoff: Duration,
    /// The factor between successive delays; values below 1 (and NaN) act as 1.
    pub multiplier: f64,
    /// The cap on any delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            multiplier: 4.0,
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay steps this policy retries through: one after each attempt
    /// but the last (`max_attempts - 1`; none for 0 or 1 attempts). The
    /// broker declares a delay queue per step, and [`carried`] retries only
    /// within the steps a carrier has.
    pub fn delay_steps(&self) -> u32 {
        self.max_attempts.max(1) - 1
    }

    /// The delay after failed attempt `attempt` (1-based; 0 counts as 1)
    /// before the next one: exponential, capped at `max_backoff`, never
    /// panicking or overflowing.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.max_backoff;
        if self.initial_backoff.is_zero() {
            // 0 * inf would be NaN below: a zero delay stays zero.
            return Duration::ZERO;
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        // `max` maps NaN and anything below 1 to 1, so delays never shrink.
        let multiplier = self.multiplier.max(1.0);
        let secs = self.initial_backoff.as_secs_f64() * multiplier.powi(exponent);
        if secs.is_finite() && secs < cap.as_secs_f64() {
            Duration::try_from_secs_f64(secs).unwrap_or(cap).min(cap)
        } else {
            cap
        }
    }
}

/// What to do with a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Send the reply (success or final error) and acknowledge the job.
    Reply,
    /// Run the job again as attempt `next_attempt` after `delay`.
    Retry {
        /// The 1-based number of the next attempt.
        next_attempt: u32,
        /// How long to wait before it.
        delay: Duration,
    },
    /// Send the error reply and dead-letter the job with the reason.
    ReplyAndDeadLetter,
}

/// The one outcome policy: what to do with a finished attempt.
///
/// `attempt` is 1-based (0 is treated as 1). Success and final kinds reply;
/// request kinds reply and dead-letter; retryable kinds retry with
/// [`RetryPolicy::backoff`] while `attempt < max_attempts`, then reply and
/// dead-letter.
pub fn disposition(
    outcome: Result<(), ErrorKind>,
    attempt: u32,
    policy: &RetryPolicy,
) -> Disposition {
    let Err(kind) = outcome else {
        return Disposition::Reply;
    };
    match kind.action() {
        Action::Reply => Disposition::Reply,
        Action::ReplyAndDeadLetter => Disposition::ReplyAndDeadLetter,
        Action::Retry => {
            let attempt = attempt.max(1);
            if attempt < policy.max_attempts {
                Disposition::Retry {
                    // Cannot overflow: attempt < max_attempts <= u32::MAX.
                    next_attempt: attempt + 1,
                    delay: policy.backoff(attempt),
                }
            } else {
                Disposition::ReplyAndDeadLetter
            }
        }
    }
}

/// Whether a delivery's job runs at all: the poison rule of [`admission`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it; [`disposition`] decides what becomes of the attempt.
    Run,
    /// Do not run it: answer with `error` and carry out `disposition`.
    GiveUp {
        /// An `internal` error saying how often the job was delivered.
        error: JobError,
        /// Always [`Disposition::ReplyAndDeadLetter`]: the job is not
        /// retried, whatever the table says of `internal`, since every
        /// delivery so far ended without an answer (most likely by ending
        /// its worker).
        disposition: Disposition,
    },
}

/// The poison rule, decided before a delivery's job runs.
///
/// A broker gives up on a message delivered `delivery_limit` times (a
/// quorum queue's `x-delivery-limit`) by dead-lettering it silently. So on
/// the delivery before that (`redeliveries + 1 >= delivery_limit`), Kiln does
/// not run the job: it answers it itself with an `internal` error and
/// dead-letters it with the reason. Every kill, reconnect and requeue counts
/// as a delivery, which is why the limit sits well above the attempts.
pub fn admission(redeliveries: u32, delivery_limit: u32) -> Admission {
    let deliveries = redeliveries.saturating_add(1);
    if deliveries < delivery_limit {
        return Admission::Run;
    }
    Admission::GiveUp {
        error: JobError::new(
            ErrorKind::Internal,
            format!("delivered {deliveries} times without being answered; giving up"),
        ),
        disposition: Disposition::ReplyAndDeadLetter,
    }
}

/// What a carrier with `delay_steps` delay queues does with the
/// `disposition` of attempt `attempt` (1-based; 0 is treated as 1).
///
/// A retry needs a delay queue for its step. When the carrier has none for
/// it (its policy allows fewer attempts than the one that decided, after a
/// configuration change), the attempts have run out as far as it can tell:
/// reply and dead-letter. With the deciding policy's own
/// [`RetryPolicy::delay_steps`] this changes nothing.
pub fn carried(disposition: Disposition, attempt: u32, delay_steps: u32) -> Disposition {
    match disposition {
        Disposition::Retry { .. } if attempt.max(1) > delay_steps => {
            Disposition::ReplyAndDeadLetter
        }
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The outcome table, spelled out once more as the spec gives it.
    #[rustfmt::skip]
    const TABLE: [(ErrorKind, &str, Source, Action); 13] = [
        (ErrorKind::InvalidInput, "invalid-input", Source::Plugin, Action::Reply),
        (ErrorKind::UnsupportedFormat, "unsupported-format", Source::Plugin, Action::Reply),
        (ErrorKind::InternalError, "internal-error", Source::Plugin, Action::Reply),
        (ErrorKind::FuelExhausted, "fuel-exhausted", Source::Host, Action::Reply),
        (ErrorKind::MemoryLimit, "memory-limit", Source::Host, Action::Reply),
        (ErrorKind::Trap, "trap", Source::Host, Action::Reply),
        (ErrorKind::OutputTooLarge, "output-too-large", Source::Host, Action::Reply),
        (ErrorKind::Timeout, "timeout", Source::Host, Action::Retry),
        (ErrorKind::Internal, "internal", Source::Host, Action::Retry),
        (ErrorKind::BadRequest, "bad-request", Source::Request, Action::ReplyAndDeadLetter),
        (ErrorKind::PayloadTooLarge, "payload-too-large", Source::Request, Action::ReplyAndDeadLetter),
        (ErrorKind::UnknownPlugin, "unknown-plugin", Source::Request, Action::ReplyAndDeadLetter),
        (ErrorKind::VersionMismatch, "version-mismatch", Source::Request, Action::ReplyAndDeadLetter),
    ];

    #[test]
    fn table_covers_every_kind_once() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                TABLE.iter().filter(|row| row.0 == kind).count(),
                1,
                "{kind}"
            );
        }
    }

    #[test]
    fn kinds_follow_the_table() {
        for (kind, name, source, action) in TABLE {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<ErrorKind>(name.into()).unwrap(),
                kind
            );
            assert_eq!(name.parse::<ErrorKind>().unwrap(), kind);
            assert_eq!(kind.source(), source, "{kind}");
            assert_eq!(kind.action(), action, "{kind}");
            assert_eq!(serde_json::to_value(source).unwrap(), source.as_str());
        }
        assert_eq!(
            "nope".parse::<ErrorKind>().unwrap_err().to_string(),
            "unknown error kind `nope`"
        );
    }

    #[test]
    fn job_error_serializes_with_its_source() {
        let error = JobError::new(ErrorKind::Trap, "unreachable");
        let json = serde_json::json!({"kind": "trap", "source": "host", "message": "unreachable"});
        assert_eq!(serde_json::to_value(&error).unwrap(), json);
        assert_eq!(serde_json::from_value::<JobError>(json).unwrap(), error);
        let no_source = serde_json::json!({"kind": "trap", "message": "unreachable"});
        assert_eq!(
            serde_json::from_value::<JobError>(no_source).unwrap(),
            error
        );
        let wrong = serde_json::json!({"kind": "trap", "source": "plugin", "message": "x"});
        let err = serde_json::from_value::<JobError>(wrong)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("error source `plugin` does not match kind `trap`"),
            "{err}"
        );
        assert_eq!(error.to_string(), "trap: unreachable");
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn disposition_for_every_kind() {
        let policy = RetryPolicy::default();
        // (kind, attempt, expected)
        let check = |outcome: Result<(), ErrorKind>, attempt: u32, expected: Disposition| {
            assert_eq!(
                disposition(outcome, attempt, &policy),
                expected,
                "{outcome:?} at attempt {attempt}"
            );
        };
        for attempt in [0, 1, 2, 3, 4, u32::MAX] {
            check(Ok(()), attempt, Disposition::Reply);
        }
        for kind in ErrorKind::ALL {
            for attempt in [0, 1, 2, 3, 4, u32::MAX] {
                let expected = match kind.action() {
                    Action::Reply => Disposition::Reply,
                    Action::ReplyAndDeadLetter => Disposition::ReplyAndDeadLetter,
                    Action::Retry => match attempt {
                        0 | 1 => Disposition::Retry {
                            next_attempt: 2,
                            delay: secs(1),
                        },
                        2 => Disposition::Retry {
                            next_attempt: 3,
                            delay: secs(4),
                        },
                        _ => Disposition::ReplyAndDeadLetter,
                    },
                };
                check(Err(kind), attempt, expected);
            }
        }
    }

    #[test]
    fn retry_edges() {
        let check = |max_attempts: u32, attempt: u32, expected: Disposition| {
            let policy = RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            };
            assert_eq!(
                disposition(Err(ErrorKind::Timeout), attempt, &policy),
                expected,
                "max_attempts {max_attempts}, attempt {attempt}"
            );
        };
        check(0, 0, Disposition::ReplyAndDeadLetter);
        check(0, 1, Disposition::ReplyAndDeadLetter);
        check(1, 1, Disposition::ReplyAndDeadLetter);
        check(
            2,
            1,
            Disposition::Retry {
                next_attempt: 2,
                delay: secs(1),
            },
        );
        check(
            u32::MAX,
            u32::MAX - 1,
            Disposition::Retry {
                next_attempt: u32::MAX,
                delay: secs(60),
            },
        );
        check(u32::MAX, u32::MAX, Disposition::ReplyAndDeadLetter);
    }

    #[test]
    fn delay_steps_are_the_retries_a_policy_allows() {
        for (max_attempts, steps) in [(0, 0), (1, 0), (2, 1), (3, 2), (u32::MAX, u32::MAX - 1)] {
            let policy = RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            };
            assert_eq!(policy.delay_steps(), steps, "max_attempts {max_attempts}");
        }
    }

    #[test]
    fn the_poison_rule() {
        assert_eq!(admission(0, 20), Admission::Run);
        assert_eq!(admission(18, 20), Admission::Run);
        let give_up = |deliveries: u32| Admission::GiveUp {
            error: JobError::new(
                ErrorKind::Internal,
                format!("delivered {deliveries} times without being answered; giving up"),
            ),
            disposition: Disposition::ReplyAndDeadLetter,
        };
        // One delivery before the broker's limit, and any past it.
        assert_eq!(admission(19, 20), give_up(20));
        assert_eq!(admission(25, 20), give_up(26));
        // Limits of 0 and 1 give up on the first delivery.
        assert_eq!(admission(0, 1), give_up(1));
        assert_eq!(admission(0, 0), give_up(1));
        assert_eq!(admission(u32::MAX, u32::MAX), give_up(u32::MAX));
        assert_eq!(admission(u32::MAX - 2, u32::MAX), Admission::Run);
    }

    #[test]
    fn a_retry_without_a_delay_step_replies_and_dead_letters() {
        let retry = Disposition::Retry {
            next_attempt: 2,
            delay: secs(1),
        };
        let check = |disposition: Disposition, attempt: u32, steps: u32, expected: Disposition| {
            assert_eq!(
                carried(disposition, attempt, steps),
                expected,
                "{disposition:?} at attempt {attempt} with {steps} steps"
            );
        };
        check(retry, 1, 2, retry);
        check(retry, 2, 2, retry);
        check(retry, 3, 2, Disposition::ReplyAndDeadLetter);
        check(retry, 1, 0, Disposition::ReplyAndDeadLetter);
        // Attempt 0 counts as 1, as in `disposition`.
        check(retry, 0, 1, retry);
        check(retry, 0, 0, Disposition::ReplyAndDeadLetter);
        for steps in [0, 1, u32::MAX] {
            for last in [Disposition::Reply, Disposition::ReplyAndDeadLetter] {
                check(last, 7, steps, last);
            }
        }
    }

    proptest::proptest! {
        /// With the deciding policy's own delay steps, the carrier carries
        /// out exactly what `disposition` decided; with fewer, it never
        /// retries past its last step and changes nothing else.
        #[test]
        fn carried_agrees_with_the_policy(
            max_attempts in proptest::prop_oneof![0_u32..8, proptest::prelude::any::<u32>()],
            attempt in proptest::prop_oneof![0_u32..10, proptest::prelude::any::<u32>()],
            kind in proptest::sample::select(ErrorKind::ALL.to_vec()),
            ok in proptest::prelude::any::<bool>(),
            fewer in 0_u32..4,
        ) {
            let policy = RetryPolicy { max_attempts, ..RetryPolicy::default() };
            let outcome = if ok { Ok(()) } else { Err(kind) };
            let decided = disposition(outcome, attempt, &policy);
            proptest::prop_assert_eq!(carried(decided, attempt, policy.delay_steps()), decided);
            let steps = policy.delay_steps().saturating_sub(fewer);
            let done = carried(decided, attempt, steps);
            match decided {
                Disposition::Retry { .. } if attempt.max(1) > steps => {
                    proptest::prop_assert_eq!(done, Disposition::ReplyAndDeadLetter);
                }
                _ => proptest::prop_assert_eq!(done, decided),
            }
        }
    }

    #[test]
    fn backoff_is_exponential_and_capped() {
        let check = |policy: RetryPolicy, attempt: u32, expected: Duration| {
            assert_eq!(
                policy.backoff(attempt),
                expected,
                "{policy:?} attempt {attempt}"
            );
        };
        let default = RetryPolicy::default();
        check(default, 0, secs(1));
        check(default, 1, secs(1));
        check(default, 2, secs(4));
        check(default, 3, secs(16));
        check(default, 4, secs(60));
        check(default, 1000, secs(60));
        check(default, u32::MAX, secs(60));
        let double = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(250),
            ..default
        };
        check(double, 1, Duration::from_millis(100));
        check(double, 2, Duration::from_millis(200));
        check(double, 3, Duration::from_millis(250));
        for multiplier in [1.0, 0.5, 0.0, -3.0, f64::NAN] {
            check(
                RetryPolicy {
                    multiplier,
                    ..default
                },
                7,
                secs(1),
            );
            check(
                RetryPolicy {
                    multiplier,
                    ..default
                },
                u32::MAX,
                secs(1),
            );
        }
        check(
            RetryPolicy {
                multiplier: f64::INFINITY,
                ..default
            },
            2,
            secs(60),
        );
        check(
            RetryPolicy {
                multiplier: f64::INFINITY,
                ..default
            },
            1,
            secs(1),
        );
        let huge = RetryPolicy {
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..default
        };
        check(huge, 1, Duration::MAX);
        check(huge, u32::MAX, Duration::MAX);
        let above_cap = RetryPolicy {
            initial_backoff: secs(120),
            ..default
        };
        check(above_cap, 1, secs(60));
        let zero = RetryPolicy {
            initial_backoff: Duration::ZERO,
            ..default
        };
        check(zero, u32::MAX, Duration::ZERO);
    }
}
