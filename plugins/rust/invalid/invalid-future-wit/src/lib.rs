//! `invalid-future-wit`: a plugin built against a future contract,
//! `kiln:plugin@0.2.0`.
//!
//! It exists for the host's compatibility test: its interfaces have the same
//! shapes as 0.1.0, so only the version tells the host it cannot serve it,
//! and the load error must name both versions. The WIT is inline on purpose:
//! it is the contract with its package version bumped, not the contract.

wit_bindgen::generate!({
    inline: "
        package kiln:plugin@0.2.0;

        interface types {
            record key-value { key: string, value: string }
            record process-result { output: string, metadata: list<key-value> }
            enum error-kind { invalid-input, unsupported-format, internal-error }
            record process-error { kind: error-kind, message: string }
        }

        interface host-api {
            enum log-level { debug, info, warn, error }
            log: func(level: log-level, msg: string);
            get-config: func(key: string) -> option<string>;
        }

        interface plugin {
            use types.{process-result, process-error};
            get-name: func() -> string;
            get-version: func() -> string;
            process: func(input: string) -> result<process-result, process-error>;
        }

        world text-plugin {
            import host-api;
            export plugin;
        }
    ",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::host_api::{LogLevel, log};

struct InvalidFutureWit;

impl Guest for InvalidFutureWit {
    fn get_name() -> String {
        "invalid-future-wit".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        // Use the import so that it stays in the component.
        log(LogLevel::Info, "processing");
        Ok(ProcessResult {
            output: input,
            metadata: Vec::new(),
        })
    }
}

export!(InvalidFutureWit);
