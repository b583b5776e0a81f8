//! `markdown`: renders Markdown to HTML with the `pulldown-cmark` crate.
//!
//! It shows a real-world plugin: a third-party crate compiled into the
//! component, behaviour driven by the host's `get-config`, a typed error for a
//! mode it does not handle, and one `info` log line per call.
//!
//! Config keys (job config first, then plugin config, as the host resolves):
//! - `flavor`: `commonmark` (the default when unset) or `gfm`, which adds
//!   strikethrough, task lists and GFM blockquote tags; anything else is
//!   refused with `unsupported-format`.
//! - `tables`: tables are on unless this is `false`.
//! - `smart_punctuation`: `true` turns on smart quotes and dashes.
//!
//! Metadata: `headings` and `links`, the number of each in the input.

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "text-plugin",
});

use exports::kiln::plugin::plugin::{Guest, ProcessError, ProcessResult};
use kiln::plugin::host_api::{LogLevel, get_config, log};
use kiln::plugin::types::{ErrorKind, KeyValue};
use pulldown_cmark::{Event, Options, Parser, Tag, html};

struct Markdown;

/// Builds the parser options from the host's config.
fn options() -> Result<Options, ProcessError> {
    let mut options = Options::empty();
    match get_config("flavor").as_deref() {
        None | Some("commonmark") => {}
        Some("gfm") => {
            options |=
                Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS | Options::ENABLE_GFM;
        }
        Some(other) => {
            return Err(ProcessError {
                kind: ErrorKind::UnsupportedFormat,
                message: format!(
                    "unsupported flavor {other:?}: expected \"commonmark\" or \"gfm\""
                ),
            });
        }
    }
    if get_config("tables").as_deref() != Some("false") {
        options |= Options::ENABLE_TABLES;
    }
    if get_config("smart_punctuation").as_deref() == Some("true") {
        options |= Options::ENABLE_SMART_PUNCTUATION;
    }
    Ok(options)
}

impl Guest for Markdown {
    fn get_name() -> String {
        "markdown".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: String) -> Result<ProcessResult, ProcessError> {
        let options = options()?;
        let (mut headings, mut links) = (0usize, 0usize);
        let events = Parser::new_ext(&input, options).inspect(|event| match event {
            Event::Start(Tag::Heading { .. }) => headings += 1,
            Event::Start(Tag::Link { .. }) => links += 1,
            _ => {}
        });
        let mut output = String::with_capacity(input.len() * 3 / 2);
        html::push_html(&mut output, events);

        log(
            LogLevel::Info,
            &format!(
                "rendered {} bytes of markdown to {} bytes of html ({headings} headings, {links} links)",
                input.len(),
                output.len()
            ),
        );
        Ok(ProcessResult {
            output,
            metadata: vec![
                KeyValue {
                    key: "headings".to_string(),
                    value: headings.to_string(),
                },
                KeyValue {
                    key: "links".to_string(),
                    value: links.to_string(),
                },
            ],
        })
    }
}

export!(Markdown);
