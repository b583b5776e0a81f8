//! `reverse`: reverses its input by characters.
//!
//! It shows how a plugin refuses an input with a typed error: an empty input
//! gets `error-kind::invalid-input` rather than an empty output.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::types::{ErrorKind, KeyValue};

struct Reverse;

impl Guest for Reverse {
    fn get_name() -> String {
        "reverse".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        if input.is_empty() {
            return Err(ProcessError {
                kind: ErrorKind::InvalidInput,
                message: "empty input".to_string(),
            });
        }
        Ok(ProcessResult {
            output: input.chars().rev().collect(),
            metadata: vec![KeyValue {
                key: "chars".to_string(),
                value: input.chars().count().to_string(),
            }],
        })
    }
}

export!(Reverse);
