//! `hostile-fail`: a plugin that fails the way its config says.
//!
//! It exists for the host's tests, so every error kind a plugin can return
//! is seen end to end: `get-config("kind")` names it (`invalid-input`,
//! `unsupported-format` or `internal-error`), and the message echoes the
//! input. Without a `kind` it returns its input.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::host_api::get_config;
use kiln::plugin::types::ErrorKind;

struct HostileFail;

impl Guest for HostileFail {
    fn get_name() -> String {
        "hostile-fail".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        let kind = match get_config("kind").as_deref() {
            None => {
                return Ok(ProcessResult {
                    output: input,
                    metadata: Vec::new(),
                });
            }
            Some("invalid-input") => ErrorKind::InvalidInput,
            Some("unsupported-format") => ErrorKind::UnsupportedFormat,
            Some(_) => ErrorKind::InternalError,
        };
        Err(ProcessError {
            kind,
            message: format!("failed on purpose: {input}"),
        })
    }
}

export!(HostileFail);
