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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The health and metrics endpoints.
    pub http: HttpConfig,
    /// Hot reload of the plugins directory (`kiln worker` only).
    pub reload: ReloadConfig,
    /// Log output.
    pub log: LogConfig,
}

/// Log output (to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (human-readable on a terminal, JSON lines otherwise), `json`
    /// or `text`. Default: `auto`.
    pub format: LogFormat,
    /// The filter used when `RUST_LOG` is unset, in the same syntax (for
    /// example `info,kiln_broker=debug`). Default: empty, `info` for `kiln worker`'s lifecycle and `warn` otherwise.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: String::new(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    /// One JSON object per line, for cluster log pipelines.
    Json,
    /// Human-readable text.
    Text,
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

/// Hot reload of the plugins directory by `kiln worker` (docs/PLUGINS.md,
/// "Hot reload"). SIGHUP always rescans, whatever these say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch the directory for changes (inotify on Linux). Cheap and
    /// immediate, but blind on some network filesystems (NFS, SMB): keep
    /// `poll_ms` on there. Default: true.
    pub watch: bool,
    /// How long a changed file must stay unchanged (size, mtime, inode)
    /// before it is loaded, in milliseconds, so a file still being copied
    /// is never loaded half-written. Longer is safer for slow writers and
    /// delays every reload by as much. Default: 300.
    pub settle_ms: u64,
    /// Rescan the directory this often, in milliseconds, whether or not
    /// the watcher saw anything; `0` turns polling off. A scan reads only
    /// the directory and file metadata. Default: 2,000.
    pub poll_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            settle_ms: 300,
            poll_ms: 2_000,
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
        let mut config: Self = builder.build()?.try_deserialize()?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces `amqp.url` with the contents of `amqp.url_file`, if set. The
    /// error names the file, never its contents.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.amqp.url_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key: "amqp.url_file",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            self.amqp.url = text.trim().to_owned();
        }
        Ok(())
    }

    /// A copy safe to print: the AMQP password is replaced by `***`.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.amqp.url = self.amqp.redacted_url();
        copy
    }

    /// The most memory the jobs can hold at once, in bytes: every job slot
    /// at its memory cap, plus the pool's resident pages kept per slot.
    pub fn peak_job_memory(&self) -> u64 {
        let slots = self.pipeline.effective_concurrency() as u64;
        let limits = &self.sandbox.limits;
        let pool = &self.sandbox.pool;
        slots * limits.memory_bytes as u64
            + u64::from(pool.max_instances) * pool.keep_resident_bytes as u64
    }

    /// Settings that load but will hurt in production, given the container's
    /// memory limit (`None`: unlimited or unknown).
    pub fn warnings(&self, memory_limit: Option<u64>) -> Vec<String> {
        let mut warnings = Vec::new();
        let peak = self.peak_job_memory();
        if let Some(limit) = memory_limit.filter(|&limit| peak > limit) {
            warnings.push(format!(
                "pipeline.concurrency ({}) x sandbox.limits.memory_bytes ({}) plus the pool's \
                 resident pages ({} instances x {} bytes) is {peak} bytes, above the \
                 container memory limit of {limit} bytes: a burst of large jobs can get \
                 the worker OOM-killed",
                self.pipeline.effective_concurrency(),
                self.sandbox.limits.memory_bytes,
                self.sandbox.pool.max_instances,
                self.sandbox.pool.keep_resident_bytes,
            ));
        }
        warnings
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
        if !(self.amqp.url.starts_with("amqp://") || self.amqp.url.starts_with("amqps://")) {
            // Never echo the value: it may hold a password.
            let key = match self.amqp.url_file {
                Some(_) => "amqp.url_file",
                None => "amqp.url",
            };
            return invalid(key, "must be an amqp:// or amqps:// URL");
        }
        if !(1..=60_000).contains(&self.reload.settle_ms) {
            return invalid("reload.settle_ms", "must be from 1 to 60000");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return invalid("log.filter", "is not a valid RUST_LOG filter");
        }
        Ok(())
    }
}

/// The memory limit of the cgroup this process runs in, in bytes, or `None`
/// when unlimited or not in a cgroup (cgroup v2, then v1).
pub fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| parse_memory_limit(&text))
}

/// Parses a cgroup memory limit file: `max` (v2) or a near-`i64::MAX` page
/// multiple (v1) mean unlimited.
fn parse_memory_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.trim().parse().ok()?;
    (limit < 1 << 60).then_some(limit)
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
    fn reload_defaults_and_overrides() {
        assert_eq!(load_toml("").unwrap().reload, ReloadConfig::default());
        let c = load_toml("[reload]\nwatch = false\nsettle_ms = 50\npoll_ms = 0\n").unwrap();
        assert_eq!(
            c.reload,
            ReloadConfig {
                watch: false,
                settle_ms: 50,
                poll_ms: 0
            }
        );
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
            ("[amqp]\nurl = \"http://u:hunter2@h\"\n", "amqp.url"),
            ("[log]\nformat = \"xml\"\n", "format"),
            ("[log]\nfilter = \"[[[\"\n", "log.filter"),
            ("[reload]\nsettle_ms = 0\n", "reload.settle_ms"),
            ("[reload]\nwach = false\n", "wach"),
        ] {
            let err = load_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn bad_url_is_named_but_never_echoed() {
        let err = load_toml("[amqp]\nurl = \"http://u:hunter2@h\"\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn url_file_replaces_the_url_and_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("amqp-url");
        std::fs::write(&secret, "amqp://kiln:hunter2@rabbit:5672/%2f\n").unwrap();
        let text = format!("[amqp]\nurl_file = {:?}\n", secret.display().to_string());
        let c = load_toml(&text).unwrap();
        assert_eq!(c.amqp.url, "amqp://kiln:hunter2@rabbit:5672/%2f");
        let printed = toml::to_string(&c.redacted()).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("kiln:***@rabbit"), "{printed}");

        std::fs::remove_file(&secret).unwrap();
        let err = load_toml(&text).unwrap_err().to_string();
        assert!(err.contains("amqp.url_file"), "{err}");
    }

    #[test]
    fn printed_config_loads_back_unchanged() {
        let c = load_toml("[pipeline]\nconcurrency = 7\n[log]\nformat = \"json\"\n").unwrap();
        let again = load_toml(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn memory_warning_compares_peak_with_the_limit() {
        let c =
            load_toml("[pipeline]\nconcurrency = 4\n[sandbox.limits]\nmemory_bytes = 67108864\n")
                .unwrap();
        let peak = c.peak_job_memory();
        assert!(peak >= (4 * 64) << 20);
        assert!(c.warnings(None).is_empty());
        assert!(c.warnings(Some(peak)).is_empty());
        let warnings = c.warnings(Some(peak - 1));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("pipeline.concurrency (4)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn cgroup_limits_parse() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit("garbage"), None);
    }
}
