//! The names of the `kiln.*` fields of a job's `tracing` span, declared
//! once for both sides: `kiln-broker` opens the span with every one of them,
//! and the worker's pipeline records into it by name. `tracing` ignores a
//! record into a field its span lacks, so a name spelled differently on one
//! side would silently stop being recorded; a test in `kiln-broker` checks
//! that its span declares each name in [`ALL`].
//!
//! Plain strings: this crate does not depend on `tracing`.

/// The job's id.
pub const JOB_ID: &str = "kiln.job_id";
/// The 1-based attempt.
pub const ATTEMPT: &str = "kiln.attempt";
/// The name of the plugin that ran the job.
pub const PLUGIN: &str = "kiln.plugin";
/// The version of the plugin that ran the job.
pub const PLUGIN_VERSION: &str = "kiln.plugin_version";
/// `ok`, or the job's error kind.
pub const OUTCOME: &str = "kiln.outcome";

/// The OTel span status, set to `ERROR` on a failed job's span
/// (`tracing-opentelemetry` maps this field to the span's status).
pub const STATUS_CODE: &str = "otel.status_code";
/// The error kind of a failed job (OTel semantic conventions' `error.type`).
pub const ERROR_TYPE: &str = "error.type";

/// Every `kiln.*` field above; a new one belongs here too.
pub const ALL: [&str; 5] = [JOB_ID, ATTEMPT, PLUGIN, PLUGIN_VERSION, OUTCOME];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_namespaced() {
        for (i, name) in ALL.iter().enumerate() {
            assert!(name.starts_with("kiln."), "{name}");
            assert!(!ALL[..i].contains(name), "{name} twice");
        }
    }
}
