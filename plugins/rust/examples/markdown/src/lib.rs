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

use kiln_plugin::{Error, Output, Plugin};
use pulldown_cmark::{Event, Options, Parser, Tag, html};

struct Markdown;

/// Builds the parser options from the host's config.
fn options() -> Result<Options, Error> {
    let mut options = Options::empty();
    match kiln_plugin::config("flavor").as_deref() {
        None | Some("commonmark") => {}
        Some("gfm") => {
            options |=
                Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS | Options::ENABLE_GFM;
        }
        Some(other) => {
            return Err(Error::unsupported_format(format!(
                "unsupported flavor {other:?}: expected \"commonmark\" or \"gfm\""
            )));
        }
    }
    if kiln_plugin::config("tables").as_deref() != Some("false") {
        options |= Options::ENABLE_TABLES;
    }
    if kiln_plugin::config("smart_punctuation").as_deref() == Some("true") {
        options |= Options::ENABLE_SMART_PUNCTUATION;
    }
    Ok(options)
}

impl Plugin for Markdown {
    fn process(input: String) -> Result<Output, Error> {
        let options = options()?;
        let (mut headings, mut links) = (0usize, 0usize);
        let events = Parser::new_ext(&input, options).inspect(|event| match event {
            Event::Start(Tag::Heading { .. }) => headings += 1,
            Event::Start(Tag::Link { .. }) => links += 1,
            _ => {}
        });
        let mut html = String::with_capacity(input.len() * 3 / 2);
        html::push_html(&mut html, events);

        kiln_plugin::info!(
            "rendered {} bytes of markdown to {} bytes of html ({headings} headings, {links} links)",
            input.len(),
            html.len()
        );
        Ok(Output::new(html)
            .with_metadata("headings", headings)
            .with_metadata("links", links))
    }
}

kiln_plugin::export!(Markdown);
