//! `kiln-plugin`: write a Kiln plugin in Rust by implementing one trait and
//! calling one macro.
//!
//! The crate hides the WebAssembly component plumbing (`wit-bindgen`, the
//! `kiln:plugin@0.1.0` contract in `wit/kiln-plugin.wit`): a plugin is a
//! type that implements [`Plugin`], exported with [`export!`]. Logging and
//! config are plain functions ([`log`], [`config`]) and macros ([`info!`]
//! and friends); a plugin granted outbound access calls services with
//! [`http::get`] and [`http::send`].
//!
//! ```ignore
//! use kiln_plugin::{Error, Output, Plugin};
//!
//! struct Shout;
//!
//! impl Plugin for Shout {
//!     fn process(input: String) -> Result<Output, Error> {
//!         if input.is_empty() {
//!             return Err(Error::invalid_input("empty input"));
//!         }
//!         kiln_plugin::info!("shouting {} bytes", input.len());
//!         Ok(Output::new(input.to_uppercase()).with_metadata("chars", input.chars().count()))
//!     }
//! }
//!
//! // Name and version default to the crate's `CARGO_PKG_NAME` and
//! // `CARGO_PKG_VERSION`; add `batch` to also export `process-batch`.
//! kiln_plugin::export!(Shout);
//! ```
//!
//! The plugin crate is a `cdylib` built with
//! `cargo build --release --target wasm32-wasip2`: on that target rustc
//! links it straight into a component. `kiln new plugin NAME` scaffolds one;
//! docs/SDK.md walks through the whole loop.

#![warn(missing_docs)]

use std::fmt;

pub mod http;

/// The bindings `wit-bindgen` generates. Not part of the API: [`export!`]
/// is the way in.
///
/// `text` is the contract's `text-plugin` world. `batch` adds only the
/// `batch` export, through a one-line world of the SDK's own: generating
/// `batch-text-plugin` a second time would define the `plugin` interface's
/// export macro twice at the crate root (`#[macro_export]`). `batch` reuses
/// `text`'s types (`with`). A component that exports both gets the union of
/// the two worlds' type sections: the contract's `batch-text-plugin`.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod __bindings {
    /// World `kiln:plugin/text-plugin`: imports `host-api`, exports `plugin`.
    pub mod text {
        wit_bindgen::generate!({
            path: "../../../../wit",
            world: "kiln:plugin/text-plugin",
            pub_export_macro: true,
            export_macro_name: "export_text",
            default_bindings_module: "kiln_plugin::__bindings::text",
        });
    }

    /// World `kiln:sdk/batch-export`: exports `kiln:plugin/batch` only.
    pub mod batch {
        wit_bindgen::generate!({
            path: "../../../../wit",
            inline: "
                package kiln:sdk;

                world batch-export {
                    export kiln:plugin/batch@0.1.0;
                }
            ",
            world: "kiln:sdk/batch-export",
            pub_export_macro: true,
            export_macro_name: "export_batch",
            default_bindings_module: "kiln_plugin::__bindings::batch",
            with: {
                "kiln:plugin/types@0.1.0": crate::__bindings::text::kiln::plugin::types,
            },
        });
    }
}

use __bindings::text::kiln::plugin::host_api;

/// A Kiln plugin: a transformation of one text into another.
///
/// Each job runs in a fresh instance of the component, so a plugin keeps no
/// state between jobs; the functions take no `self`.
pub trait Plugin {
    /// Transforms one input. A job's `input` arrives here; the returned
    /// [`Output`] becomes the reply's `output` and `metadata`, an [`Error`]
    /// the reply's typed error.
    fn process(input: String) -> Result<Output, Error>;

    /// Transforms many inputs: one result per input, in order. Exported only
    /// by `export!(Type, batch)`. The default calls [`Plugin::process`] on
    /// each input; override it when a batch can share work (for example one
    /// log line or one config look-up for the whole batch).
    fn process_batch(inputs: Vec<String>) -> Vec<Result<Output, Error>> {
        inputs.into_iter().map(Self::process).collect()
    }
}

/// A successful result: the output text and its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The output text.
    pub text: String,
    /// Free-form key-value pairs, in the order they were added.
    pub metadata: Vec<(String, String)>,
}

impl Output {
    /// An output with `text` and no metadata.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata entry (`value` is formatted with `Display`).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.metadata.push((key.into(), value.to_string()));
        self
    }
}

impl From<String> for Output {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for Output {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

/// Why a plugin refused or failed an input (the contract's `error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is not acceptable (for example empty, or malformed).
    InvalidInput,
    /// The input or the requested mode is of a kind the plugin does not
    /// handle.
    UnsupportedFormat,
    /// The plugin failed for its own reasons.
    InternalError,
}

impl ErrorKind {
    /// The contract's name for the kind, as it appears in replies
    /// (`invalid-input`, `unsupported-format`, `internal-error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid-input",
            Self::UnsupportedFormat => "unsupported-format",
            Self::InternalError => "internal-error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed failure returned to the host: a kind the host acts on (see the
/// outcome table in docs/PROTOCOL.md) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// What went wrong, for the reply and the logs.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The input is not acceptable (`invalid-input`).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// The input or the requested mode is not handled (`unsupported-format`).
    pub fn unsupported_format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnsupportedFormat, message)
    }

    /// The plugin failed for its own reasons (`internal-error`).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InternalError, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// A failure.
    Error,
}

/// Sends one log line to the host, which tags it with the plugin and the
/// job and bounds the number and size of lines per job (lines over the
/// budget are dropped). The macros [`debug!`], [`info!`], [`warn!`] and
/// [`error!`] format and call this.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => host_api::LogLevel::Debug,
        Level::Info => host_api::LogLevel::Info,
        Level::Warn => host_api::LogLevel::Warn,
        Level::Error => host_api::LogLevel::Error,
    };
    host_api::log(level, message);
}

/// Looks `key` up in the job's config, then in the plugin's config (the
/// operator's); `None` when neither has it.
pub fn config(key: &str) -> Option<String> {
    host_api::get_config(key)
}

/// Logs a `format!`-style line at `debug` level through [`log`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style line at `info` level through [`log`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Info, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style line at `warn` level through [`log`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Logs a `format!`-style line at `error` level through [`log`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Error, &::std::format!($($arg)+))
    };
}

/// Exports a [`Plugin`] as the component's implementation of the contract.
///
/// Call it once, at the top level of the plugin crate:
///
/// ```ignore
/// kiln_plugin::export!(MyPlugin);                    // world text-plugin
/// kiln_plugin::export!(MyPlugin, batch);             // also exports batch
/// kiln_plugin::export!(MyPlugin, name = "my-plugin", version = "2.1.0");
/// ```
///
/// - `name` (what jobs address the plugin by) defaults to the plugin
///   crate's `CARGO_PKG_NAME`, and `version` (semver) to its
///   `CARGO_PKG_VERSION`: keep them in `Cargo.toml`, or override them here
///   with any expression that converts into a `String`.
/// - `batch` exports the `batch-text-plugin` world: the host may then hand
///   the plugin many inputs in one call, answered by
///   [`Plugin::process_batch`].
///
/// The options come in any order, separated by commas.
#[macro_export]
macro_rules! export {
    ($plugin:ty $(, $($option:tt)*)?) => {
        $crate::__export_options!(
            [$plugin]
            [::core::env!("CARGO_PKG_NAME")]
            [::core::env!("CARGO_PKG_VERSION")]
            [text]
            $($($option)*)?
        );
    };
}

/// Parses [`export!`]'s options, one at a time.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_options {
    ([$plugin:ty] [$name:expr] [$version:expr] [$world:ident] $(,)?) => {
        $crate::__export_world!($world, $plugin, $name, $version);
    };
    ([$plugin:ty] [$name:expr] [$version:expr] [$world:ident] name = $new:expr $(, $($rest:tt)*)?) => {
        $crate::__export_options!([$plugin] [$new] [$version] [$world] $($($rest)*)?);
    };
    ([$plugin:ty] [$name:expr] [$version:expr] [$world:ident] version = $new:expr $(, $($rest:tt)*)?) => {
        $crate::__export_options!([$plugin] [$name] [$new] [$world] $($($rest)*)?);
    };
    ([$plugin:ty] [$name:expr] [$version:expr] [$world:ident] batch $(, $($rest:tt)*)?) => {
        $crate::__export_options!([$plugin] [$name] [$version] [batch] $($($rest)*)?);
    };
    ([$plugin:ty] [$name:expr] [$version:expr] [$world:ident] $($other:tt)+) => {
        ::core::compile_error!(::core::concat!(
            "kiln_plugin::export!: unknown option `",
            ::core::stringify!($($other)+),
            "` (expected `name = ...`, `version = ...` or `batch`)"
        ));
    };
}

/// Defines the hidden type that carries the plugin's identity and runs the
/// world's `wit-bindgen` export macro on it (that macro takes an ident, not
/// a type).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_world {
    ($world:ident, $plugin:ty, $name:expr, $version:expr) => {
        const _: () = {
            #[doc(hidden)]
            struct __KilnPluginExport;

            impl $crate::__private::Exported for __KilnPluginExport {
                type Plugin = $plugin;

                fn name() -> ::std::string::String {
                    ::std::string::String::from($name)
                }

                fn version() -> ::std::string::String {
                    ::std::string::String::from($version)
                }
            }

            $crate::__export_world!(@macro $world __KilnPluginExport);
        };
    };
    (@macro text $export:ident) => {
        $crate::__bindings::text::export_text!($export with_types_in $crate::__bindings::text);
    };
    (@macro batch $export:ident) => {
        $crate::__bindings::text::export_text!($export with_types_in $crate::__bindings::text);
        $crate::__bindings::batch::export_batch!($export with_types_in $crate::__bindings::batch);
    };
}

/// What [`export!`] expands to relies on; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::{Error, ErrorKind, Output, Plugin};
    use crate::__bindings::batch::exports::kiln::plugin::batch;
    use crate::__bindings::text::exports::kiln::plugin::plugin;
    use crate::__bindings::text::kiln::plugin::types;

    /// A plugin with its identity: implemented by the type [`export!`]
    /// defines, which the generated `Guest` traits are implemented for.
    pub trait Exported {
        /// The author's plugin.
        type Plugin: Plugin;
        /// What `get-name` returns.
        fn name() -> String;
        /// What `get-version` returns.
        fn version() -> String;
    }

    /// The contract's result for one input.
    fn result(result: Result<Output, Error>) -> Result<types::ProcessResult, types::ProcessError> {
        match result {
            Ok(output) => Ok(types::ProcessResult {
                output: output.text,
                metadata: output
                    .metadata
                    .into_iter()
                    .map(|(key, value)| types::KeyValue { key, value })
                    .collect(),
            }),
            Err(error) => Err(types::ProcessError {
                kind: match error.kind {
                    ErrorKind::InvalidInput => types::ErrorKind::InvalidInput,
                    ErrorKind::UnsupportedFormat => types::ErrorKind::UnsupportedFormat,
                    ErrorKind::InternalError => types::ErrorKind::InternalError,
                },
                message: error.message,
            }),
        }
    }

    impl<T: Exported> plugin::Guest for T {
        fn get_name() -> String {
            T::name()
        }

        fn get_version() -> String {
            T::version()
        }

        fn process(input: String) -> Result<types::ProcessResult, types::ProcessError> {
            result(<T::Plugin as Plugin>::process(input))
        }
    }

    impl<T: Exported> batch::Guest for T {
        fn process_batch(
            inputs: Vec<String>,
        ) -> Vec<Result<types::ProcessResult, types::ProcessError>> {
            <T::Plugin as Plugin>::process_batch(inputs)
                .into_iter()
                .map(result)
                .collect()
        }
    }
}
