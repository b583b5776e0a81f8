//! `hostile-fail`: a plugin that fails the way its config says.
//!
//! It exists for the host's tests, so every error kind a plugin can return
//! is seen end to end: `get-config("kind")` names it (`invalid-input`,
//! `unsupported-format` or `internal-error`), and the message echoes the
//! input. Without a `kind` it returns its input.

hostile_export::export_hostile!("hostile-fail");

use kiln::plugin::host_api::get_config;
use kiln::plugin::types::ErrorKind;

fn process(input: String) -> Result<ProcessResult, ProcessError> {
    let kind = match get_config("kind").as_deref() {
        None => return ok(input),
        Some("invalid-input") => ErrorKind::InvalidInput,
        Some("unsupported-format") => ErrorKind::UnsupportedFormat,
        Some(_) => ErrorKind::InternalError,
    };
    Err(ProcessError {
        kind,
        message: format!("failed on purpose: {input}"),
    })
}
