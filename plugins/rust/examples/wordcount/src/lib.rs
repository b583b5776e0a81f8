//! `wordcount`: counts the words, lines and characters of its input.
//!
//! It shows the `batch-text-plugin` world: besides `plugin` it exports
//! `batch`, so the host can hand it many inputs in one call. Each call logs
//! one `debug` line through the host's `log`, which exercises the host's log
//! path.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "batch-text-plugin",
});

use exports::kiln::plugin::batch;
use exports::kiln::plugin::plugin::{self, ProcessError, ProcessResult};
use kiln::plugin::host_api::{LogLevel, log};
use kiln::plugin::types::KeyValue;

struct Wordcount;

/// Counts one input; shared by `process` and `process-batch`.
fn count(input: &str) -> ProcessResult {
    let words = input.split_whitespace().count();
    let lines = input.lines().count();
    let chars = input.chars().count();
    let kv = |key: &str, value: usize| KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    };
    ProcessResult {
        output: words.to_string(),
        metadata: vec![kv("words", words), kv("lines", lines), kv("chars", chars)],
    }
}

impl plugin::Guest for Wordcount {
    fn get_name() -> String {
        "wordcount".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        let result = count(&input);
        log(LogLevel::Debug, &format!("counted {} words", result.output));
        Ok(result)
    }
}

impl batch::Guest for Wordcount {
    fn process_batch(inputs: Vec<String>) -> Vec<Result<ProcessResult, ProcessError>> {
        let results: Vec<_> = inputs.iter().map(|input| Ok(count(input))).collect();
        log(
            LogLevel::Debug,
            &format!("counted words in a batch of {} inputs", results.len()),
        );
        results
    }
}

export!(Wordcount);
