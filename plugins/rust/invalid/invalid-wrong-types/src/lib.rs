//! `invalid-wrong-types`: exports `kiln:plugin/plugin@0.1.0` with the wrong shape.
//!
//! It exists for the host's load-rejection tests: the interface name matches
//! the contract but `process` takes and returns a `u32` instead of a string
//! and a result, so the host must refuse to load it. The WIT is inline on
//! purpose; it is not the contract.

wit_bindgen::generate!({
    inline: "
        package kiln:plugin@0.1.0;

        interface plugin {
            get-name: func() -> string;
            get-version: func() -> string;
            process: func(input: u32) -> u32;
        }

        world w {
            export plugin;
        }
    ",
});

use exports::kiln::plugin::plugin::Guest;

struct InvalidWrongTypes;

impl Guest for InvalidWrongTypes {
    fn get_name() -> String {
        "invalid-wrong-types".to_string()
    }

    fn get_version() -> String {
        "1.0.0".to_string()
    }

    fn process(input: u32) -> u32 {
        input.wrapping_add(1)
    }
}

export!(InvalidWrongTypes);
