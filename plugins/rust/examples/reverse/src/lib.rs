//! `reverse`: reverses its input by characters.
//!
//! It shows how a plugin refuses an input with a typed error: an empty input
//! gets `Error::invalid_input` (`error-kind::invalid-input` in the contract)
//! rather than an empty output.

use kiln_plugin::{Error, Output, Plugin};

struct Reverse;

impl Plugin for Reverse {
    fn process(input: String) -> Result<Output, Error> {
        if input.is_empty() {
            return Err(Error::invalid_input("empty input"));
        }
        Ok(Output::new(input.chars().rev().collect::<String>())
            .with_metadata("chars", input.chars().count()))
    }
}

kiln_plugin::export!(Reverse);
