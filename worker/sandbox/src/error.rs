//! Typed failures of the sandbox: loading a plugin ([`LoadError`]) and running
//! a job ([`JobFailure`]). The worker maps a [`JobFailure`] onto the outcome
//! table; this crate does not know that table.

use std::path::PathBuf;

/// A plugin file that could not be loaded. The other plugins still load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid component, or wasmtime could not compile it.
    #[error("plugin {path}: cannot compile: {message}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// The plugin's manifest (`<stem>.toml`) is malformed, asks for more than
    /// the operator's caps, or names another plugin.
    #[error("plugin {path}: manifest: {message}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong: the key, and the cap when one was exceeded.
        message: String,
    },
    /// The component was built against a version of the `kiln:plugin`
    /// contract this host does not serve.
    #[error("plugin {path}: incompatible contract: {message}")]
    Contract {
        /// The plugin file.
        path: PathBuf,
        /// Both versions, and the interface that carried the other one.
        message: String,
    },
    /// The component does not fit the `kiln:plugin` world: a missing
    /// export, wrong types, or an import the host does not provide.
    #[error("plugin {path}: does not fit the kiln:plugin@0.1.0 world: {message}")]
    World {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `get-name` or `get-version` failed or returned something unusable.
    #[error("plugin {path}: bad identity: {message}")]
    Identity {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Why one job failed inside the sandbox. Each limit has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// The plugin returned a typed `process-error`.
    #[error("{kind}: {message}")]
    Plugin {
        /// The kind the plugin chose.
        kind: PluginErrorKind,
        /// The plugin's message.
        message: String,
    },
    /// The wall-clock deadline passed.
    #[error("timeout: deadline of {deadline_ms} ms passed")]
    Timeout {
        /// The deadline that applied, in milliseconds.
        deadline_ms: u64,
    },
    /// The fuel budget ran out.
    #[error("fuel-exhausted: fuel budget of {budget} units ran out")]
    FuelExhausted {
        /// The budget that applied.
        budget: u64,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("memory-limit: instance tried to grow to {requested} bytes, cap is {cap} bytes")]
    MemoryLimit {
        /// Total bytes the growth would have reached.
        requested: usize,
        /// The cap.
        cap: usize,
    },
    /// The guest trapped.
    #[error("trap: {code}: {message}")]
    Trap {
        /// The trap code in kebab-case (`unreachable`, `stack-overflow`, ...).
        code: String,
        /// Details, including the guest's last stderr line when it had one.
        message: String,
    },
    /// The input is larger than `max_input_bytes`.
    #[error("payload-too-large: input of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge {
        /// The input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The output is larger than `max_output_bytes`.
    #[error("output-too-large: output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// The output size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Kiln's own failure (for example the instance pool is exhausted).
    #[error("internal: {0}")]
    Internal(String),
}

/// The plugin's own error kinds, as in the WIT `error-kind` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginErrorKind {
    /// `invalid-input`.
    InvalidInput,
    /// `unsupported-format`.
    UnsupportedFormat,
    /// `internal-error`.
    InternalError,
}

impl std::fmt::Display for PluginErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid-input",
            Self::UnsupportedFormat => "unsupported-format",
            Self::InternalError => "internal-error",
        })
    }
}

/// Errors building the sandbox itself (the engine and its pool).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The engine could not be built from the config.
    #[error("cannot build the wasmtime engine: {0}")]
    Engine(String),
    /// The host functions could not be linked.
    #[error("cannot link host functions: {0}")]
    Link(String),
}
