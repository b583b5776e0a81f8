//! The worker's one typed config, read with the `config` crate: built-in
//! defaults, then a TOML or JSON file (by its extension), then environment
//! variables (`KILN__SECTION__KEY`, for example
//! `KILN__SANDBOX__LIMITS__FUEL=1000`). The `__` separator keeps
//! Kubernetes' `<SERVICE>_SERVICE_HOST` variables from ever matching a key.
//! [`json_schema`] describes the file, generated from these types; the Helm
//! chart's `values.schema.json` embeds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_broker::AmqpConfig;
use kiln_protocol::RetryPolicy;
use kiln_sandbox::SandboxConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The file read when `--config-file` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/kiln/kiln.toml";

/// Everything Kiln reads at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Plugins pulled from OCI registries (docs/PLUGINS.md, "From an OCI
    /// registry").
    pub registry: RegistryConfig,
    /// Log output.
    pub log: LogConfig,
}

/// Log output (to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Default: `0.0.0.0:9090`.
    #[schemars(regex(pattern = r"^.+:[0-9]{1,5}$"))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[schemars(range(min = 1, max = 60_000))]
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

/// Plugins pulled from OCI registries by `kiln worker`, `kiln run` and
/// `kiln plugins`: verified, stored under `<sandbox.cache.dir>/oci/`, and
/// loaded next to `plugins_dir` through hot reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The references to serve, `oci://HOST[:PORT]/REPO:TAG@sha256:…`.
    /// Pulled on start and re-checked every `refresh_ms` (the worker also
    /// re-reads this list from its config file then). Default: none.
    pub plugins: Vec<String>,
    /// A docker `config.json` with the registries' credentials (`auths`),
    /// for example a mounted `kubernetes.io/dockerconfigjson` Secret.
    /// Default: none (anonymous).
    pub auth_file: Option<PathBuf>,
    /// Registries (`HOST[:PORT]`) reached over plain HTTP; loopback always
    /// is. Default: none.
    pub insecure: Vec<String>,
    /// How often the references are re-checked, in milliseconds: a tag is
    /// re-resolved, a changed list pulled. Default: 60,000.
    #[schemars(range(min = 100))]
    pub refresh_ms: u64,
    /// Refuse a reference without a digest. With `false`, a bare tag is
    /// allowed and re-resolved on every refresh. Default: true.
    pub require_digest: bool,
    /// Largest manifest or layer accepted, in bytes; a larger one is
    /// refused. Default: 64 MiB.
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
    /// References the worker may be ready without (their plugin may be
    /// missing, for example on a cold store during an outage). Default:
    /// none, so every configured reference must be loaded.
    pub ready_without: Vec<String>,
    /// The config file `plugins` is re-read from on every refresh (set by
    /// the command line, never read from a file).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            auth_file: None,
            insecure: Vec::new(),
            refresh_ms: 60_000,
            require_digest: true,
            max_bytes: 64 << 20,
            ready_without: Vec::new(),
            config_file: None,
        }
    }
}

/// The plugins directory (a newtype for its default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PluginsDir(pub PathBuf);

impl Default for PluginsDir {
    fn default() -> Self {
        Self(PathBuf::from("plugins"))
    }
}

/// How jobs flow through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Jobs run at once. `0` means one per CPU. More than the CPUs only
    /// helps when jobs wait (deadline yields); it never speeds up pure
    /// compute. Default: 0.
    pub concurrency: usize,
    /// Attempts for a retryable outcome (`timeout`, `internal`) before the
    /// job is answered with its error and dead-lettered. Default: 3.
    #[schemars(range(min = 1))]
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
    /// The cause says which key and which file; it is printed once, as the
    /// source.
    #[error("invalid config ({layers})")]
    Read {
        /// The layers read: the file, if there is one, and the environment.
        layers: String,
        /// What is wrong, and where.
        #[source]
        source: config::ConfigError,
    },
    /// The file's extension names no format Kiln reads.
    #[error("invalid config: {}: unknown format (name it *.toml or *.json)", path.display())]
    UnknownFormat {
        /// The file given.
        path: PathBuf,
    },
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
    /// when it exists), then `KILN__*` environment variables. The file is
    /// JSON if its name ends in `.json`, TOML if in `.toml`.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match file {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG_FILE), false),
        };
        let format = file_format(path).ok_or_else(|| ConfigError::UnknownFormat {
            path: path.to_owned(),
        })?;
        let builder = config::Config::builder()
            .add_source(FileAsGiven {
                path: path.to_owned(),
                format,
                required,
            })
            .add_source(
                config::Environment::with_prefix("KILN")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        let layers = if required || path.exists() {
            format!("{} and KILN__* variables", path.display())
        } else {
            "defaults and KILN__* variables".to_owned()
        };
        let mut config: Self = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|source| ConfigError::Read { layers, source })?;
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
            + u64::from(pool.max_instances) * self.sandbox.keep_resident_bytes() as u64
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
                self.sandbox.keep_resident_bytes(),
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
        if let Some((key, message)) = self.amqp.shard_problem() {
            return invalid(key, &message);
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
        if self.registry.refresh_ms < 100 {
            return invalid("registry.refresh_ms", "must be at least 100");
        }
        if self.registry.max_bytes == 0 {
            return invalid("registry.max_bytes", "must be at least 1");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return invalid("log.filter", "is not a valid RUST_LOG filter");
        }
        Ok(())
    }
}

/// The format of a config file, by its extension (`.toml` or `.json`).
/// The config file layer. `config::File` names a file in its errors by a
/// path it makes relative to the working directory (`/tmp/k.toml` comes
/// back as `../../tmp/k.toml`); this source reads the file itself and hands
/// the text to the same parser, so errors name the path as the operator
/// gave it.
#[derive(Debug, Clone)]
struct FileAsGiven {
    path: PathBuf,
    format: config::FileFormat,
    required: bool,
}

impl config::Source for FileAsGiven {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        use config::Format as _;
        let uri = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.required => {
                return Ok(config::Map::new());
            }
            Err(e) => {
                return Err(config::ConfigError::FileParse {
                    uri: Some(uri),
                    cause: Box::new(e),
                });
            }
        };
        self.format
            .parse(Some(&uri), text.trim_start_matches('\u{feff}'))
            .map_err(|cause| config::ConfigError::FileParse {
                uri: Some(uri),
                cause,
            })
    }
}

fn file_format(path: &Path) -> Option<config::FileFormat> {
    match path.extension()?.to_str()? {
        "toml" => Some(config::FileFormat::Toml),
        "json" => Some(config::FileFormat::Json),
        _ => None,
    }
}

/// The JSON schema (draft 07) of the config file, generated from
/// [`KilnConfig`]'s types: unknown keys, wrong types, unknown enum values and
/// the ranges [`KilnConfig::validate`] checks one key at a time fail it.
/// Every subschema is inlined and `$schema` left out, so it can be embedded
/// in another schema: the Helm chart's `values.schema.json` types its
/// `config` section with it (a unit test keeps the two equal).
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<KilnConfig>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
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

    /// The error as the binary prints it (`{:#}`): each cause after a colon.
    fn report(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            out = format!("{out}: {cause}");
            next = cause.source();
        }
        out
    }

    /// Each cause is printed once, and the file is named by the path given,
    /// not one made relative to the working directory.
    #[test]
    fn errors_print_each_cause_once_with_the_path_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[sandbox.limits]\ntimeot_ms = 5\n").unwrap();
        let err = report(&KilnConfig::load(Some(&path)).unwrap_err());
        assert_eq!(err.matches("timeot_ms").count(), 1, "{err}");
        // The key's own error names no file: the layers read say which.
        assert_eq!(err.matches("invalid config").count(), 1, "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");

        std::fs::write(&path, "[amqp]\nprefetch = \"x\"\n").unwrap();
        let err = report(&KilnConfig::load(Some(&path)).unwrap_err());
        assert_eq!(err.matches("expected an integer").count(), 1, "{err}");
        assert!(err.contains("amqp.prefetch"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");

        std::fs::write(&path, "[amqp\n").unwrap();
        let err = report(&KilnConfig::load(Some(&path)).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");

        let missing = dir.path().join("missing.toml");
        let err = report(&KilnConfig::load(Some(&missing)).unwrap_err());
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    fn load_toml(text: &str) -> Result<KilnConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, text).unwrap();
        KilnConfig::load(Some(&path))
    }

    #[test]
    fn json_files_load_like_toml_files() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("kiln.json");
        std::fs::write(
            &json,
            r#"{"sandbox": {"limits": {"fuel": 5}}, "pipeline": {"concurrency": 3}}"#,
        )
        .unwrap();
        let from_json = KilnConfig::load(Some(&json)).unwrap();
        let from_toml =
            load_toml("[sandbox.limits]\nfuel = 5\n[pipeline]\nconcurrency = 3\n").unwrap();
        assert_eq!(from_json, from_toml);

        std::fs::write(&json, r#"{"pipeline": {"concurency": 3}}"#).unwrap();
        let err = report(&KilnConfig::load(Some(&json)).unwrap_err());
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn the_extension_picks_the_format() {
        for (name, format) in [
            ("/etc/kiln/kiln.toml", Some(config::FileFormat::Toml)),
            ("kiln.json", Some(config::FileFormat::Json)),
            ("kiln.yaml", None),
            ("kiln", None),
        ] {
            assert_eq!(file_format(Path::new(name)), format, "{name}");
        }
        let err = KilnConfig::load(Some(Path::new("kiln.conf")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kiln.conf") && err.contains("*.json"), "{err}");
    }

    /// The Helm chart's `values.schema.json` types `config` with
    /// [`json_schema`]; this keeps the committed copy current (CI runs it).
    #[test]
    fn chart_schema_types_the_config_as_kiln_does() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/kiln/values.schema.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut values: serde_json::Value = serde_json::from_str(&text).unwrap();
        let generated = json_schema();
        if values["properties"]["config"] == generated {
            return;
        }
        if std::env::var_os("KILN_UPDATE_SCHEMA").is_some() {
            values["properties"]["config"] = generated;
            let text = serde_json::to_string_pretty(&values).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
            return;
        }
        panic!(
            "{}: properties.config differs from Kiln's config types; rewrite it with \
             `KILN_UPDATE_SCHEMA=1 cargo test --release --workspace --lib config::` and commit it",
            path.display()
        );
    }

    #[test]
    fn the_schema_is_self_contained_and_strict() {
        let schema = json_schema();
        let text = schema.to_string();
        assert!(
            !text.contains("$ref") && !text.contains("$schema"),
            "{text}"
        );
        assert_eq!(schema["additionalProperties"], false);
        let limits = &schema["properties"]["sandbox"]["properties"]["limits"];
        assert_eq!(limits["additionalProperties"], false);
        assert_eq!(limits["properties"]["timeout_ms"]["minimum"], 1);
        assert_eq!(
            schema["properties"]["amqp"]["properties"]["prefetch"]["minimum"],
            1
        );
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
    fn registry_defaults_and_overrides() {
        let defaults = load_toml("").unwrap().registry;
        assert_eq!(defaults, RegistryConfig::default());
        assert!(defaults.require_digest && defaults.plugins.is_empty());
        let c = load_toml(
            "[registry]\nplugins = [\"oci://r:5000/a:1\"]\nrequire_digest = false\ninsecure = [\"r:5000\"]\nrefresh_ms = 500\n",
        )
        .unwrap();
        assert_eq!(c.registry.plugins, ["oci://r:5000/a:1"]);
        assert!(!c.registry.require_digest);
        assert_eq!(c.registry.refresh_ms, 500);
        assert_eq!(c.registry.insecure, ["r:5000"]);
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
            ("[amqp]\nshards = 0\n", "amqp.shards"),
            ("[amqp]\nshards = 4\nshard_ids = [4]\n", "amqp.shard_ids"),
            ("[reload]\nwach = false\n", "wach"),
            ("[registry]\nrefresh_ms = 5\n", "registry.refresh_ms"),
            ("[registry]\nplugin = []\n", "plugin"),
        ] {
            let err = report(&load_toml(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn bad_url_is_named_but_never_echoed() {
        let err = report(&load_toml("[amqp]\nurl = \"http://u:hunter2@h\"\n").unwrap_err());
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
        let err = report(&load_toml(&text).unwrap_err());
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
