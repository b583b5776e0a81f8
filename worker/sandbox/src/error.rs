//! Typed failures of the sandbox: loading a plugin ([`LoadError`]) and running
//! a job ([`JobFailure`]). The worker maps a [`JobFailure`] onto the outcome
//! table; this crate does not know that table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A cause kept as it came (shared, so a [`LoadError`] clones cheaply).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A plugin file that could not be loaded. The other plugins still load.
///
/// Cheap to clone: hot reload keeps a file's error in every registry it
/// builds until the file changes. A variant with an underlying error keeps
/// it as its [`source`](std::error::Error::source), and its message does not
/// repeat it: show [`LoadError::report`] (the message and its causes) to
/// users. The other variants' messages are Kiln's own description.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The file is not a valid component, or wasmtime could not compile it.
    #[error("plugin {path}: cannot compile")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What wasmtime said (with its own causes).
        #[source]
        source: Cause,
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

impl LoadError {
    /// The plugin file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Compile { path, .. }
            | Self::Manifest { path, .. }
            | Self::Contract { path, .. }
            | Self::World { path, .. }
            | Self::Identity { path, .. } => path,
        }
    }

    /// The message and every cause, `: `-joined, each said once: the one
    /// line users are shown (logs, `kiln plugins`, a worker's `/plugins`).
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            // Writing to a String cannot fail.
            let _ = write!(text, ": {error}");
            cause = error.source();
        }
        text
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_says_every_cause_once() {
        let error = LoadError::Read {
            path: PathBuf::from("/p/a.wasm"),
            source: Arc::new(std::io::Error::new(std::io::ErrorKind::NotFound, "gone")),
        };
        assert_eq!(error.to_string(), "plugin /p/a.wasm: cannot read");
        assert_eq!(error.report(), "plugin /p/a.wasm: cannot read: gone");
        assert_eq!(error.path(), Path::new("/p/a.wasm"));
        // A clone shares the cause and says the same.
        let copy = error.clone();
        assert_eq!(copy.report(), error.report());
        assert!(std::error::Error::source(&copy).is_some());
    }

    #[test]
    fn a_compile_report_is_what_wasmtime_says_with_its_causes() {
        let engine = wasmtime::Engine::default();
        let Err(error) = engine.precompile_component(b"\0asm garbage") else {
            panic!("garbage compiled");
        };
        let said = format!("{error:#}");
        let error = LoadError::Compile {
            path: PathBuf::from("/p/garbage.wasm"),
            source: Arc::from(error.into_boxed_dyn_error()),
        };
        assert_eq!(
            error.report(),
            format!("plugin /p/garbage.wasm: cannot compile: {said}")
        );
    }

    #[test]
    fn a_description_is_said_once() {
        let error = LoadError::Identity {
            path: PathBuf::from("/p/a.wasm"),
            message: "no name".into(),
        };
        assert_eq!(error.report(), "plugin /p/a.wasm: bad identity: no name");
        assert_eq!(error.report(), error.to_string());
    }
}
