//! `wordcount`: counts the words, lines and characters of its input.
//!
//! It shows the `batch-text-plugin` world: `export!(Wordcount, batch)` also
//! exports `batch`, so the host can hand it many inputs in one call. It
//! overrides `process_batch` to log one line per batch rather than one per
//! input. Each call logs one `debug` line through the host's `log`, which
//! exercises the host's log path.

use kiln_plugin::{Error, Output, Plugin};

struct Wordcount;

/// Counts one input; shared by `process` and `process_batch`.
fn count(input: &str) -> Output {
    let words = input.split_whitespace().count();
    Output::new(words.to_string())
        .with_metadata("words", words)
        .with_metadata("lines", input.lines().count())
        .with_metadata("chars", input.chars().count())
}

impl Plugin for Wordcount {
    fn process(input: String) -> Result<Output, Error> {
        let output = count(&input);
        kiln_plugin::debug!("counted {} words", output.text);
        Ok(output)
    }

    fn process_batch(inputs: Vec<String>) -> Vec<Result<Output, Error>> {
        let results: Vec<_> = inputs.iter().map(|input| Ok(count(input))).collect();
        kiln_plugin::debug!("counted words in a batch of {} inputs", results.len());
        results
    }
}

kiln_plugin::export!(Wordcount, batch);
