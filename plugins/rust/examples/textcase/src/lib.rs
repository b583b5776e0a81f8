//! `textcase-rust`: the Rust implementation of `textcase`, the plugin that
//! every supported language implements the same way (see
//! `plugins/golden/textcase.json` and docs/PLUGINS.md).
//!
//! Config `mode` (job config first, then plugin config): `upper`, `lower`,
//! `title` (the default) or `snake`; anything else is `unsupported-format`.
//! Empty input is `invalid-input`. Whitespace is exactly space, tab, LF, FF
//! and CR; a word is a maximal run of anything else. Metadata: `words`.
//! Each successful call logs one `info` line, `textcase: mode=M words=N`.

use kiln_plugin::{Error, Output, Plugin};

struct Textcase;

/// The contract's whitespace: ASCII space, tab, LF, FF and CR.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// The first character uppercased, the rest of the word lowercased.
fn title_word(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// Applies `f` to every word, keeping the whitespace between words as is.
fn map_words(input: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while !rest.is_empty() {
        let start = rest.find(|c: char| !is_space(c)).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(is_space).unwrap_or(rest.len());
        out.push_str(&f(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

impl Plugin for Textcase {
    fn process(input: String) -> Result<Output, Error> {
        let mode = kiln_plugin::config("mode").unwrap_or_else(|| "title".to_string());
        if !matches!(mode.as_str(), "upper" | "lower" | "title" | "snake") {
            return Err(Error::unsupported_format(format!(
                "unsupported mode: {mode} (expected upper, lower, title or snake)"
            )));
        }
        if input.is_empty() {
            return Err(Error::invalid_input("empty input"));
        }
        let words: Vec<&str> = input.split(is_space).filter(|w| !w.is_empty()).collect();
        let output = match mode.as_str() {
            "upper" => input.to_uppercase(),
            "lower" => input.to_lowercase(),
            "snake" => words
                .iter()
                .map(|w| w.to_lowercase())
                .collect::<Vec<_>>()
                .join("_"),
            _ => map_words(&input, title_word),
        };
        kiln_plugin::info!("textcase: mode={mode} words={}", words.len());
        Ok(Output::new(output).with_metadata("words", words.len()))
    }
}

kiln_plugin::export!(Textcase);
