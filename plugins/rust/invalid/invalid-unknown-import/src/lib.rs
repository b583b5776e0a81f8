//! `invalid-unknown-import`: a correct plugin that imports what the host lacks.
//!
//! It exists for the host's load-rejection tests: apart from one extra import,
//! `kiln:plugin/secret-vault@0.1.0`, it is a well-formed `text-plugin`, so
//! the host must refuse it at link time. `process` calls the import so that
//! it is not dropped from the component. The WIT is inline on purpose: it is
//! the contract plus `secret-vault`, deliberately not the contract itself.

wit_bindgen::generate!({
    inline: "
        package kiln:plugin@0.1.0;

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

        /// Not part of the contract: no host provides it.
        interface secret-vault {
            open: func() -> string;
        }

        world text-plugin-with-vault {
            import host-api;
            import secret-vault;
            export plugin;
        }
    ",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::secret_vault;

struct InvalidUnknownImport;

impl Guest for InvalidUnknownImport {
    fn get_name() -> String {
        "invalid-unknown-import".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(_input: String) -> Result<ProcessResult, ProcessError> {
        Ok(ProcessResult {
            output: secret_vault::open(),
            metadata: Vec::new(),
        })
    }
}

export!(InvalidUnknownImport);
