//! `kiln new plugin`: scaffolds a plugin project in Rust, C, JavaScript,
//! Python or Go ([`Lang`]).
//!
//! Every project is a directory named after the plugin with an executable
//! `build.sh` at its root that writes `<name>.wasm` beside it, the manifest
//! stub `<name>.toml`, a `README.md` and a `.gitignore`.
//!
//! The Rust project is a crate written with the `kiln-plugin` SDK
//! (`plugins/rust/sdk/kiln-plugin`): `Cargo.toml` (a `cdylib` with the
//! size-tuned release profile, a workspace of its own) and `src/lib.rs`
//! implementing the SDK's `Plugin` trait; `build.sh` runs
//! [`BUILD_COMMAND`]. The templates are the files of `templates/plugin/`.
//! The other languages are in [`langs`] (templates in `templates/<lang>/`
//! and `templates/common/`): the source, the language's thin helper, the
//! contract in `wit/`, and a `build.sh` that installs the pinned toolchain
//! into the shared cache on first use.
//!
//! The SDK is not published on crates.io. Inside a Kiln checkout the crate
//! gets a relative path dependency on it; elsewhere, a git dependency on
//! Kiln's repository, with a comment on how to point it at a checkout.
//!
//! Only `std` (and the pins of `kiln_xtask::lang`): nothing here needs the
//! async runtime or the config.

use std::fmt;
use std::path::{Component, Path, PathBuf};

pub mod langs;

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.tmpl");
const MANIFEST: &str = include_str!("../../templates/plugin/manifest.toml.tmpl");
const LIB_RS: &str = include_str!("../../templates/plugin/lib.rs.tmpl");
const README: &str = include_str!("../../templates/plugin/README.md.tmpl");
const GITIGNORE: &str = include_str!("../../templates/plugin/gitignore.tmpl");
const RUST_BUILD_SH: &str = include_str!("../../templates/plugin/build.sh.tmpl");

/// The language of a scaffolded plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    /// Rust, on the `kiln-plugin` SDK.
    Rust,
    /// C, on the bindings of `wit-bindgen c` (no helper; no `--batch`).
    C,
    /// JavaScript (componentize-js), with the `kiln-plugin.js` helper.
    Js,
    /// Python (componentize-py), with the `kiln_plugin.py` helper.
    Python,
    /// Go (wasip1 Go and `wit-bindgen go`), with the `kiln` package.
    Go,
}

impl Lang {
    /// Every language, in the order `--lang` lists them.
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::C, Lang::Js, Lang::Python, Lang::Go];

    /// The name `--lang` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::C => "c",
            Self::Js => "js",
            Self::Python => "python",
            Self::Go => "go",
        }
    }

    /// Whether the scaffold can also export `batch`.
    pub fn supports_batch(self) -> bool {
        self != Self::C
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|lang| lang.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|l| l.as_str()).collect();
                format!(
                    "unknown language {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The SDK crate, relative to the root of a Kiln checkout.
pub const SDK_IN_REPO: &str = "plugins/rust/sdk/kiln-plugin";

/// Kiln's repository, as the root `Cargo.toml` declares it
/// (`workspace.package.repository`; a test keeps the two in step): the git
/// source of the SDK outside a checkout.
pub const REPOSITORY: &str = "https://example.invalid/kiln";

/// The command that `build.sh` of a Rust plugin runs.
pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

/// The one command that builds any scaffolded plugin into `<name>.wasm`.
pub const BUILD_SCRIPT: &str = "./build.sh";

/// Where a scaffolded crate gets the SDK from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A path dependency, written as given (relative to the crate, or
    /// absolute).
    Path(PathBuf),
    /// A git dependency on [`REPOSITORY`]: the SDK is not on crates.io.
    Git,
}

/// What to scaffold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTemplate {
    /// The plugin's name: the crate's and the one jobs address.
    pub name: String,
    /// The language.
    pub lang: Lang,
    /// Also export `batch` (the `batch-text-plugin` world).
    pub batch: bool,
    /// Where the Rust SDK comes from (unused by the other languages).
    pub sdk: SdkSource,
}

/// A scaffolded project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaffolded {
    /// The project's directory.
    pub dir: PathBuf,
    /// The files written, in order.
    pub files: Vec<PathBuf>,
    /// Where a Rust project's `Cargo.toml` gets the SDK from.
    pub sdk: SdkSource,
}

/// Why a plugin could not be scaffolded.
#[derive(Debug)]
pub enum ScaffoldError {
    /// The name is not a usable plugin and crate name.
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The crate's directory already exists; nothing is overwritten.
    Exists(PathBuf),
    /// An explicit SDK path is not the `kiln-plugin` crate.
    NotTheSdk(PathBuf),
    /// The language's scaffold cannot do what was asked (`--batch` in C).
    Unsupported {
        /// The language.
        lang: Lang,
        /// What it cannot do.
        what: &'static str,
    },
    /// Reading or writing a file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

impl fmt::Display for ScaffoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { name, reason } => {
                write!(f, "invalid plugin name {name:?}: {reason}")
            }
            Self::Exists(dir) => write!(f, "{} already exists", dir.display()),
            Self::NotTheSdk(dir) => write!(
                f,
                "{} is not the kiln-plugin crate (no Cargo.toml naming kiln-plugin)",
                dir.display()
            ),
            Self::Unsupported { lang, what } => {
                write!(f, "the {lang} scaffold does not support {what}")
            }
            Self::Io { path, source } => write!(f, "cannot write {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ScaffoldError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Rust's strict and reserved keywords: cargo refuses them as package names.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Checks that `name` works as the plugin's name, the crate's name and a
/// file stem: a lowercase ASCII letter, then lowercase letters, digits, `-`
/// or `_`, at most 64 characters in all.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason| {
        Err(ScaffoldError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("it must start with a lowercase ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return invalid("use only lowercase ASCII letters, digits, '-' and '_'");
    }
    if name.len() > 64 {
        return invalid("it is longer than 64 characters");
    }
    if KEYWORDS.contains(&name) {
        return invalid("it is a Rust keyword");
    }
    if matches!(
        name.replace('-', "_").as_str(),
        "kiln_plugin" | "std" | "core" | "alloc"
    ) {
        return invalid("it is the name of a crate the plugin depends on");
    }
    Ok(())
}

/// The plugin's type name: `my-plugin` becomes `MyPlugin`.
pub fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `kiln-plugin` line (with its comment) of the crate's dependencies.
fn sdk_dependency(sdk: &SdkSource) -> String {
    match sdk {
        SdkSource::Path(path) => {
            // Forward slashes, so the file works on every platform.
            let path = path.to_string_lossy().replace('\\', "/");
            format!(
                "# The SDK from this Kiln checkout (it is not on crates.io).\n\
                 kiln-plugin = {{ path = {} }}",
                toml_string(&path)
            )
        }
        SdkSource::Git => format!(
            "# The SDK is not on crates.io: this fetches it from Kiln's repository.\n\
             # To build against a checkout of Kiln instead:\n\
             #   kiln-plugin = {{ path = \"/path/to/kiln/{SDK_IN_REPO}\" }}\n\
             kiln-plugin = {{ git = {} }}",
            toml_string(REPOSITORY)
        ),
    }
}

/// Renders the project's files: (path relative to its directory,
/// contents), in the order they are written. `build.sh` is the one to make
/// executable.
pub fn render(template: &PluginTemplate) -> Vec<(PathBuf, String)> {
    let name = template.name.as_str();
    let type_name = type_name(name);
    if template.lang != Lang::Rust {
        let world_note = if template.batch {
            "world `batch-text-plugin`: it also answers a batch of inputs in one call"
        } else {
            "world `text-plugin`"
        };
        let (python_exports, js_batch_export) = if template.batch {
            ("Plugin, Batch", "export const batch = exported.batch;\n")
        } else {
            ("Plugin, _", "")
        };
        let fill = |text: &str| {
            text.replace("{{name}}", name)
                .replace("{{description}}", "A Kiln plugin (say what it does)")
                .replace("{{world_note}}", world_note)
                .replace("{{python_exports}}", python_exports)
                .replace("{{js_batch_export}}\n", js_batch_export)
        };
        let mut files = vec![(PathBuf::from(format!("{name}.toml")), fill(MANIFEST))];
        files.extend(langs::files(template.lang, name, template.batch, &fill));
        return files;
    }
    let (batch_method, export, world_note) = if template.batch {
        (
            "\n    // `export!(.., batch)` also exports `process-batch`. Its default\n    \
             // calls `process` on each input; override `process_batch` to share\n    \
             // work across the inputs of a batch.\n",
            format!("kiln_plugin::export!({type_name}, batch);"),
            "world `batch-text-plugin`: it also answers a batch of inputs in one call",
        )
    } else {
        (
            "",
            format!("kiln_plugin::export!({type_name});"),
            "world `text-plugin`",
        )
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{type_name}}", &type_name)
            .replace("{{sdk_dependency}}", &sdk_dependency(&template.sdk))
            .replace("{{description}}", "A Kiln plugin (say what it does)")
            .replace("{{batch_method}}", batch_method)
            .replace("{{export}}", &export)
            .replace("{{world_note}}", world_note)
            .replace("{{build_command}}", BUILD_COMMAND)
    };
    vec![
        (PathBuf::from("build.sh"), fill(RUST_BUILD_SH)),
        (PathBuf::from("Cargo.toml"), fill(CARGO_TOML)),
        (PathBuf::from(format!("{name}.toml")), fill(MANIFEST)),
        (PathBuf::from("src").join("lib.rs"), fill(LIB_RS)),
        (PathBuf::from("README.md"), fill(README)),
        (PathBuf::from(".gitignore"), fill(GITIGNORE)),
    ]
}

/// `path` made absolute (against the current directory) with `.` and `..`
/// resolved lexically, without following symlinks.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in std::path::absolute(path)?.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Whether `dir` holds the `kiln-plugin` crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|text| {
        text.lines()
            .any(|line| line.replace(' ', "") == "name=\"kiln-plugin\"")
    })
}

/// The SDK of the Kiln checkout that `crate_dir` (absolute, normalized)
/// would be created in, as a path relative to `crate_dir`; `None` outside
/// a checkout.
pub fn find_sdk(crate_dir: &Path) -> Option<PathBuf> {
    crate_dir
        .ancestors()
        .skip(1)
        .enumerate()
        .find(|(_, root)| is_sdk(&root.join(SDK_IN_REPO)))
        .map(|(up, _)| {
            let mut rel = PathBuf::new();
            for _ in 0..=up {
                rel.push("..");
            }
            rel.join(SDK_IN_REPO)
        })
}

/// Makes `path` executable by everyone who can read it (`build.sh`).
#[cfg(unix)]
fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(perms.mode() | ((perms.mode() & 0o444) >> 2));
    std::fs::set_permissions(path, perms)
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Creates the project `parent/name` in `lang`. For Rust, the SDK comes
/// from `sdk` if given (a directory holding the `kiln-plugin` crate,
/// written into `Cargo.toml` as an absolute path), else from the Kiln
/// checkout around `parent` if there is one, else from git. Refuses to
/// touch an existing directory.
pub fn create(
    parent: &Path,
    name: &str,
    lang: Lang,
    batch: bool,
    sdk: Option<&Path>,
) -> Result<Scaffolded, ScaffoldError> {
    validate_name(name)?;
    if batch && !lang.supports_batch() {
        return Err(ScaffoldError::Unsupported {
            lang,
            what: "--batch",
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    let dir = absolute(&parent.join(name)).map_err(io(parent))?;
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let sdk = match sdk {
        _ if lang != Lang::Rust => SdkSource::Git,
        Some(path) => {
            let path = absolute(path).map_err(io(path))?;
            if !is_sdk(&path) {
                return Err(ScaffoldError::NotTheSdk(path));
            }
            SdkSource::Path(path)
        }
        None => find_sdk(&dir).map_or(SdkSource::Git, SdkSource::Path),
    };
    let template = PluginTemplate {
        name: name.to_owned(),
        lang,
        batch,
        sdk: sdk.clone(),
    };
    let mut files = Vec::new();
    for (rel, text) in render(&template) {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        if rel == Path::new("build.sh") {
            make_executable(&path).map_err(io(&path))?;
        }
        files.push(path);
    }
    Ok(Scaffolded { dir, files, sdk })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn template(name: &str, batch: bool, sdk: SdkSource) -> PluginTemplate {
        PluginTemplate {
            name: name.to_owned(),
            lang: Lang::Rust,
            batch,
            sdk,
        }
    }

    fn file<'a>(files: &'a [(PathBuf, String)], name: &str) -> &'a str {
        files
            .iter()
            .find(|(path, _)| path == Path::new(name))
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| panic!("no {name} rendered"))
    }

    #[test]
    fn names() {
        fn check(name: &str, ok: bool) {
            assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
        }
        for good in ["rot13", "my-plugin", "my_plugin", "a", "x1-2"] {
            check(good, true);
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "1abc",
            "-abc",
            "Upper",
            "has space",
            "dots.no",
            "slash/no",
            "..",
            "fn",
            "self",
            "kiln-plugin",
            "std",
            too_long.as_str(),
        ] {
            check(bad, false);
        }
    }

    #[test]
    fn repository_is_the_workspaces() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let root: toml::Table = toml::from_str(&std::fs::read_to_string(root).unwrap()).unwrap();
        assert_eq!(
            root["workspace"]["package"]["repository"].as_str(),
            Some(REPOSITORY)
        );
    }

    #[test]
    fn type_names() {
        for (name, expected) in [
            ("rot13", "Rot13"),
            ("my-plugin", "MyPlugin"),
            ("my_plugin", "MyPlugin"),
            ("a--b", "AB"),
            ("x1-2", "X12"),
        ] {
            assert_eq!(type_name(name), expected, "{name}");
        }
    }

    #[test]
    fn renders_every_placeholder_into_valid_files() {
        for batch in [false, true] {
            for sdk in [SdkSource::Git, SdkSource::Path("../sdk \"x\"".into())] {
                let files = render(&template("my-plugin", batch, sdk.clone()));
                for (path, text) in &files {
                    assert!(!text.contains("{{"), "{}: {text}", path.display());
                }

                let cargo: toml::Table = toml::from_str(file(&files, "Cargo.toml")).unwrap();
                assert_eq!(cargo["package"]["name"].as_str(), Some("my-plugin"));
                assert_eq!(
                    cargo["lib"]["crate-type"].as_array().unwrap()[0].as_str(),
                    Some("cdylib")
                );
                assert!(cargo["workspace"].is_table());
                assert_eq!(cargo["profile"]["release"]["panic"].as_str(), Some("abort"));
                let dep = &cargo["dependencies"]["kiln-plugin"];
                match &sdk {
                    SdkSource::Git => assert_eq!(dep["git"].as_str(), Some(REPOSITORY)),
                    SdkSource::Path(p) => {
                        assert_eq!(dep["path"].as_str(), p.to_str());
                    }
                }

                let manifest: toml::Table = toml::from_str(file(&files, "my-plugin.toml")).unwrap();
                let keys: Vec<&str> = manifest.keys().map(String::as_str).collect();
                assert_eq!(keys, ["description", "name", "version"]);
                assert_eq!(manifest["name"].as_str(), Some("my-plugin"));
                assert_eq!(
                    manifest["version"].as_str(),
                    cargo["package"]["version"].as_str(),
                    "the manifest and Cargo.toml start at the same version"
                );

                let lib = file(&files, "src/lib.rs");
                // rustfmt's width: the author starts from formatted code.
                assert!(lib.lines().all(|l| l.len() <= 100), "{lib}");
                assert!(lib.contains("impl Plugin for MyPlugin {"));
                let export = if batch {
                    "kiln_plugin::export!(MyPlugin, batch);"
                } else {
                    "kiln_plugin::export!(MyPlugin);"
                };
                assert!(lib.contains(export), "{lib}");
                assert_eq!(lib.contains("batch"), batch, "{lib}");

                let readme = file(&files, "README.md");
                assert!(readme.contains(BUILD_COMMAND));
                assert!(readme.contains("target/wasm32-wasip2/release/my_plugin.wasm"));
            }
        }
    }

    /// A directory tree with a fake Kiln checkout at its root.
    fn checkout() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let sdk = root.path().join(SDK_IN_REPO);
        std::fs::create_dir_all(&sdk).unwrap();
        std::fs::write(
            sdk.join("Cargo.toml"),
            "[package]\nname = \"kiln-plugin\"\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn finds_the_sdk_of_the_enclosing_checkout() {
        let root = checkout();
        let base = absolute(root.path()).unwrap();
        assert_eq!(
            find_sdk(&base.join("mine")),
            Some(PathBuf::from("..").join(SDK_IN_REPO))
        );
        assert_eq!(
            find_sdk(&base.join("a").join("b").join("mine")),
            Some(PathBuf::from("../../..").join(SDK_IN_REPO))
        );
        // Outside any checkout (a directory that is not the SDK doesn't count).
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(elsewhere.path().join(SDK_IN_REPO)).unwrap();
        assert_eq!(find_sdk(&elsewhere.path().join("mine")), None);
    }

    #[test]
    fn creates_the_crate_and_never_overwrites() {
        let root = checkout();
        let parent = root.path().join("plugins");
        let made = create(&parent, "rot13", Lang::Rust, true, None).unwrap();
        assert_eq!(made.dir, absolute(&parent.join("rot13")).unwrap());
        assert_eq!(
            made.sdk,
            SdkSource::Path(PathBuf::from("../..").join(SDK_IN_REPO))
        );
        for rel in [
            "build.sh",
            "Cargo.toml",
            "rot13.toml",
            "src/lib.rs",
            "README.md",
            ".gitignore",
        ] {
            assert!(made.dir.join(rel).is_file(), "{rel}");
        }
        // The relative path written into Cargo.toml really leads to the SDK.
        let SdkSource::Path(rel) = &made.sdk else {
            unreachable!()
        };
        assert!(is_sdk(&made.dir.join(rel)));

        let again = create(&parent, "rot13", Lang::Rust, false, None).unwrap_err();
        assert!(matches!(again, ScaffoldError::Exists(_)), "{again}");
        let bad = create(&parent, "Rot13", Lang::Rust, false, None).unwrap_err();
        assert!(matches!(bad, ScaffoldError::InvalidName { .. }), "{bad}");
        assert!(!parent.join("Rot13").exists());
    }

    #[test]
    fn explicit_sdk_paths_are_checked_and_made_absolute() {
        let root = checkout();
        let out = tempfile::tempdir().unwrap();
        let sdk = root.path().join(SDK_IN_REPO);
        let made = create(out.path(), "p", Lang::Rust, false, Some(&sdk)).unwrap();
        assert_eq!(made.sdk, SdkSource::Path(absolute(&sdk).unwrap()));

        let not_sdk = create(out.path(), "q", Lang::Rust, false, Some(out.path())).unwrap_err();
        assert!(matches!(not_sdk, ScaffoldError::NotTheSdk(_)), "{not_sdk}");

        let outside = create(out.path(), "r", Lang::Rust, false, None).unwrap();
        assert_eq!(outside.sdk, SdkSource::Git);
    }

    fn render_lang(lang: Lang, batch: bool) -> Vec<(PathBuf, String)> {
        render(&PluginTemplate {
            name: "my-plugin".to_owned(),
            lang,
            batch,
            sdk: SdkSource::Git,
        })
    }

    #[test]
    fn languages_parse_and_print() {
        for lang in Lang::ALL {
            assert_eq!(lang.as_str().parse::<Lang>(), Ok(lang));
        }
        let err = "cobol".parse::<Lang>().unwrap_err();
        assert!(err.contains("rust, c, js, python, go"), "{err}");
    }

    #[test]
    fn every_language_renders_a_build_script_the_helper_and_the_contract() {
        let sources: [(Lang, &[&str]); 5] = [
            (Lang::Rust, &["Cargo.toml", "src/lib.rs"]),
            (Lang::C, &["plugin.c", "wit/kiln-plugin.wit"]),
            (
                Lang::Js,
                &[
                    "plugin.js",
                    "kiln-plugin.js",
                    "toolchain/package.json",
                    "toolchain/package-lock.json",
                    "wit/kiln-plugin.wit",
                ],
            ),
            (
                Lang::Python,
                &["app.py", "kiln_plugin.py", "wit/kiln-plugin.wit"],
            ),
            (
                Lang::Go,
                &[
                    "go.mod",
                    "plugin/plugin.go",
                    "kiln/kiln.go",
                    "export_kiln_plugin_plugin/export.go",
                    "wit/kiln-plugin.wit",
                ],
            ),
        ];
        for (lang, expected) in sources {
            for batch in [false, true] {
                if batch && !lang.supports_batch() {
                    continue;
                }
                let files = render_lang(lang, batch);
                for (path, text) in &files {
                    assert!(
                        !text.contains("{{"),
                        "{lang} {}: a placeholder is left: {text}",
                        path.display()
                    );
                }
                for rel in expected
                    .iter()
                    .chain(&["build.sh", "my-plugin.toml", "README.md"])
                {
                    file(&files, rel);
                }
                let script = file(&files, "build.sh");
                assert!(script.starts_with("#!/usr/bin/env bash\n"), "{script}");
                assert!(script.contains("set -euo pipefail"), "{script}");
                assert!(script.contains("my-plugin.wasm") || script.contains("$name.wasm"));
                let manifest: toml::Table = toml::from_str(file(&files, "my-plugin.toml")).unwrap();
                assert_eq!(manifest["name"].as_str(), Some("my-plugin"));
                assert_eq!(manifest["version"].as_str(), Some("0.1.0"));
                let readme = file(&files, "README.md");
                assert!(readme.contains("./build.sh"), "{readme}");
                if lang != Lang::Rust {
                    let world = if batch {
                        "batch-text-plugin"
                    } else {
                        "text-plugin"
                    };
                    assert!(script.contains(&format!("world={world}\n")), "{script}");
                    assert_eq!(file(&files, "wit/kiln-plugin.wit"), langs::WIT);
                }
            }
        }
    }

    #[test]
    fn build_scripts_carry_the_pins_of_cargo_xtask() {
        use kiln_xtask::lang;
        let script = file(&render_lang(Lang::Go, false), "build.sh").to_owned();
        for (var, value) in [
            ("WASM_TOOLS", lang::WASM_TOOLS.to_owned()),
            ("WIT_BINDGEN", lang::WIT_BINDGEN.to_owned()),
            ("ADAPTER", lang::ADAPTER.to_owned()),
            ("COMPONENTIZE_PY", lang::COMPONENTIZE_PY.to_owned()),
            ("COMPONENTIZE_JS", lang::COMPONENTIZE_JS.to_owned()),
            ("GO", lang::GO.to_owned()),
            ("GO_DIR", lang::cache::go()),
            ("COMPONENTIZE_JS_DIR", lang::cache::componentize_js()),
            ("CRATES_DIR", lang::cache::crates()),
            ("WIZER", lang::WIZER.to_owned()),
            ("WIZER_DIR", lang::cache::wizer()),
        ] {
            assert!(
                script.contains(&format!("\n{var}={value}\n")),
                "{var}={value} missing from {script}"
            );
        }
        assert!(
            script.contains(
                "GO_BUILD_FLAGS=(-buildmode=c-shared '-ldflags=-s -w -checklinkname=0' -trimpath)"
            ),
            "{script}"
        );
        // The Go runtime's start-up is snapshotted as `cargo xtask` does.
        assert!(
            script.contains(
                "GO_WIZER_FLAGS=(--allow-wasi --init-func _initialize --inherit-env false --inherit-stdio false)"
            ),
            "{script}"
        );
        // The same cache as `cargo xtask plugins --all`.
        assert!(script.contains(
            "toolchains=${KILN_TOOLCHAINS:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/toolchains}"
        ));
    }

    #[test]
    fn build_scripts_are_valid_bash() {
        // `bash -n` parses without running; skipped where there is no bash.
        if std::process::Command::new("bash")
            .arg("-c")
            .arg("true")
            .status()
            .is_err()
        {
            return;
        }
        for lang in Lang::ALL {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("build.sh");
            std::fs::write(
                &path,
                file(&render_lang(lang, lang.supports_batch()), "build.sh"),
            )
            .unwrap();
            let out = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{lang}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn batch_switches_the_exports() {
        let py = file(&render_lang(Lang::Python, true), "app.py").to_owned();
        assert!(py.contains("Plugin, Batch = kiln.export("), "{py}");
        let py = file(&render_lang(Lang::Python, false), "app.py").to_owned();
        assert!(py.contains("Plugin, _ = kiln.export("), "{py}");
        let js = file(&render_lang(Lang::Js, true), "plugin.js").to_owned();
        assert!(
            js.ends_with("export const batch = exported.batch;\n"),
            "{js}"
        );
        let js = file(&render_lang(Lang::Js, false), "plugin.js").to_owned();
        assert!(!js.contains("batch ="), "{js}");
        let go = render_lang(Lang::Go, true);
        assert!(
            go.iter()
                .any(|(p, _)| p.starts_with("export_kiln_plugin_batch"))
        );
        let go = render_lang(Lang::Go, false);
        assert!(
            !go.iter()
                .any(|(p, _)| p.starts_with("export_kiln_plugin_batch"))
        );
    }

    #[test]
    fn creates_an_executable_build_script_and_refuses_batch_in_c() {
        let out = tempfile::tempdir().unwrap();
        let made = create(out.path(), "shout", Lang::Python, true, None).unwrap();
        let script = made.dir.join("build.sh");
        assert!(made.files.contains(&script));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&script).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111 & ((mode & 0o444) >> 2), "{mode:o}");
            assert_ne!(mode & 0o100, 0, "{mode:o}");
        }
        assert!(made.dir.join("wit/kiln-plugin.wit").is_file());
        let err = create(out.path(), "cbatch", Lang::C, true, None).unwrap_err();
        assert!(
            matches!(err, ScaffoldError::Unsupported { lang: Lang::C, .. }),
            "{err}"
        );
        assert!(!out.path().join("cbatch").exists());
    }
}
