//! The worker's one typed config, read with the `config` crate: built-in
//! defaults, then a TOML file, then environment variables
//! (`KILN__SECTION__KEY`, for example `KILN__SANDBOX__LIMITS__FUEL=1000`).
//! The `__` separator keeps Kubernetes' `<SERVICE>_SERVICE_HOST` variables
//! from ever matching a key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_broker::AmqpConfig;
use kiln_protocol::RetryPolicy;
use kiln_sandbox::SandboxConfig;
use serde::{Deserialize, Serialize};

/// The file read when `--config-file` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/kiln/kiln.toml";

/// Everything Kiln reads at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KilnConfig {
    /// Directory scanned for plugin `*.wasm` files. Default: `plugins`.
    pub plugins_dir: PluginsDir,
    /// The sandbox: limits, pool and cache.
    pub sandbox: SandboxConfig,
    /// How jobs flow: concurrency, retries and size limits.
    pub pipeline: PipelineConfig,
    /// The broker (`kiln worker`, `kiln enqueue`, `kiln dlq`).
    pub amqp: AmqpConfig,
    /// The health endpoints.
    pub http: HttpConfig,
}

/// The HTTP server of `kiln worker`: `/healthz` (liveness) and `/readyz`
/// (readiness: connected, consuming, not draining).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Default: `0.0.0.0:9090`.
    pub listen: std::net::SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// The plugins directory (a newtype for its default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PluginsDir(pub PathBuf);

impl Default for PluginsDir {
    fn default() -> Self {
        Self(PathBuf::from("plugins"))
    }
}

/// How jobs flow through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Jobs run at once. `0` means one per CPU. More than the CPUs only
    /// helps when jobs wait (deadline yields); it never speeds up pure
    /// compute. Default: 0.
    pub concurrency: usize,
    /// Attempts for a retryable outcome (`timeout`, `internal`) before the
    /// job is answered with its error and dead-lettered. Default: 3.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; each further retry
    /// multiplies it by 4, up to `max_backoff_ms`. Default: 1,000.
    pub initial_backoff_ms: u64,
    /// Longest delay between retries, in milliseconds. Default: 60,000.
    pub max_backoff_ms: u64,
    /// Largest job record accepted, in bytes, before parsing. Larger gives
    /// `payload-too-large`. Default: 16 MiB.
    pub max_body_bytes: usize,
    /// Largest serialized reply, in bytes. A larger reply is replaced by an
    /// `output-too-large` error reply. Default: 16 MiB.
    pub max_reply_bytes: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_body_bytes: 16 << 20,
            max_reply_bytes: 16 << 20,
        }
    }
}

impl PipelineConfig {
    /// The effective concurrency (`0` resolved to the CPU count).
    pub fn effective_concurrency(&self) -> usize {
        match self.concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            ..RetryPolicy::default()
        }
    }
}

/// A config that could not be read or does not validate.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or merged, or a key is unknown or mistyped.
    #[error("invalid config: {0}")]
    Read(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The offending key, dotted.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl KilnConfig {
    /// Reads the layers: defaults, then `file` (or [`DEFAULT_CONFIG_FILE`]
    /// when it exists), then `KILN__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => builder = builder.add_source(config::File::from(path).required(true)),
            None => {
                builder = builder
                    .add_source(config::File::with_name(DEFAULT_CONFIG_FILE).required(false));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("KILN")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let config: Self = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let limits = &self.sandbox.limits;
        if limits.timeout_ms == 0 {
            return invalid("sandbox.limits.timeout_ms", "must be at least 1");
        }
        if limits.memory_bytes < 64 << 10 {
            return invalid(
                "sandbox.limits.memory_bytes",
                "must be at least one wasm page (65536)",
            );
        }
        if self.sandbox.pool.max_instances == 0 {
            return invalid("sandbox.pool.max_instances", "must be at least 1");
        }
        if self.pipeline.max_attempts == 0 {
            return invalid("pipeline.max_attempts", "must be at least 1");
        }
        if self.amqp.prefetch == 0 {
            return invalid("amqp.prefetch", "must be at least 1");
        }
        if self.amqp.delivery_limit <= self.pipeline.max_attempts {
            return invalid(
                "amqp.delivery_limit",
                "must be above pipeline.max_attempts (redeliveries count too)",
            );
        }
        if self.amqp.queue.is_empty() {
            return invalid("amqp.queue", "must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<KilnConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, text).unwrap();
        KilnConfig::load(Some(&path))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_toml("").unwrap();
        assert_eq!(c.pipeline, PipelineConfig::default());
        assert_eq!(c.sandbox, SandboxConfig::default());
    }

    #[test]
    fn file_overrides_nested_keys() {
        let c = load_toml("[sandbox.limits]\nfuel = 5\n[pipeline]\nconcurrency = 3\n").unwrap();
        assert_eq!(c.sandbox.limits.fuel, 5);
        assert_eq!(c.pipeline.effective_concurrency(), 3);
    }

    #[test]
    fn bad_config_names_the_key() {
        for (text, needle) in [
            ("[pipeline]\nconcurency = 3\n", "concurency"),
            ("[sandbox.limits]\nfuel = \"lots\"\n", "fuel"),
            (
                "[sandbox.limits]\ntimeout_ms = 0\n",
                "sandbox.limits.timeout_ms",
            ),
            ("[pipeline]\nmax_attempts = 0\n", "pipeline.max_attempts"),
        ] {
            let err = load_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
