//! `invalid-no-plugin-export`: a valid component that is not a Kiln plugin.
//!
//! It exists for the host's load-rejection tests: it exports only
//! `other:thing/hello@1.0.0` and no `kiln:plugin/plugin`, so the host must
//! refuse it. The WIT is inline on purpose.

wit_bindgen::generate!({
    inline: "
        package other:thing@1.0.0;

        interface hello {
            hi: func() -> string;
        }

        world w {
            export hello;
        }
    ",
});

use exports::other::thing::hello::Guest;

struct InvalidNoPluginExport;

impl Guest for InvalidNoPluginExport {
    fn hi() -> String {
        "hi".to_string()
    }
}

export!(InvalidNoPluginExport);
