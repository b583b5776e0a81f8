//! `hostile-export`: the export glue every hostile plugin shares, so each
//! plugin's `lib.rs` holds only its misbehaviour.
//!
//! The glue stays on raw `wit-bindgen`, as the hostile plugins always
//! were (not on the `kiln-plugin` SDK): they test the host against any
//! component, so no change to the SDK can change what the limit tests
//! exercise.

/// Generates the bindings of the contract's `text-plugin` world from the
/// repository's `wit/` and exports a plugin named `$name`, version
/// `1.0.0`, whose `process` is the calling crate's
/// `fn process(input: String) -> Result<ProcessResult, ProcessError>`.
///
/// It also brings `ProcessResult` and `ProcessError` into scope and
/// defines `ok(output)`, a successful result without metadata. Call it
/// once, at the crate root of a plugin in `plugins/rust/hostile/` (the WIT
/// path is relative to the plugin's manifest); the plugin depends on
/// `wit-bindgen`.
#[macro_export]
macro_rules! export_hostile {
    ($name:literal) => {
        ::wit_bindgen::generate!({
            path: "../../../../wit",
            world: "text-plugin",
        });

        use exports::kiln::plugin::plugin::{ProcessError, ProcessResult};

        /// The plugin, as the bindings export it.
        struct Hostile;

        impl exports::kiln::plugin::plugin::Guest for Hostile {
            fn get_name() -> String {
                $name.to_string()
            }

            fn get_version() -> String {
                "1.0.0".to_string()
            }

            fn process(input: String) -> Result<ProcessResult, ProcessError> {
                process(input)
            }
        }

        /// A successful result: `output`, without metadata.
        fn ok(output: String) -> Result<ProcessResult, ProcessError> {
            Ok(ProcessResult {
                output,
                metadata: Vec::new(),
            })
        }

        export!(Hostile);
    };
}
