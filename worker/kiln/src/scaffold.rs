//! `kiln new plugin`: scaffolds a Rust plugin crate written with the
//! `kiln-plugin` SDK (`plugins/rust/sdk/kiln-plugin`).
//!
//! The crate is a directory named after the plugin: `Cargo.toml` (a
//! `cdylib` with the size-tuned release profile, a workspace of its own),
//! the manifest stub `<name>.toml`, `src/lib.rs` implementing the SDK's
//! `Plugin` trait, a `README.md` and a `.gitignore`. It builds into a
//! component with one command, `cargo build --release --target
//! wasm32-wasip2`. The templates are the files of `templates/plugin/`.
//!
//! The SDK is not published on crates.io. Inside a Kiln checkout the crate
//! gets a relative path dependency on it; elsewhere, a git dependency on
//! Kiln's repository, with a comment on how to point it at a checkout.
//!
//! Only `std`: nothing here needs the async runtime or the config.

use std::fmt;
use std::path::{Component, Path, PathBuf};

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.tmpl");
const MANIFEST: &str = include_str!("../templates/plugin/manifest.toml.tmpl");
const LIB_RS: &str = include_str!("../templates/plugin/lib.rs.tmpl");
const README: &str = include_str!("../templates/plugin/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore.tmpl");

/// The SDK crate, relative to the root of a Kiln checkout.
pub const SDK_IN_REPO: &str = "plugins/rust/sdk/kiln-plugin";

/// Kiln's repository, as the root `Cargo.toml` declares it
/// (`workspace.package.repository`; a test keeps the two in step): the git
/// source of the SDK outside a checkout.
pub const REPOSITORY: &str = "https://example.invalid/kiln";

/// The one command that builds a scaffolded plugin.
pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

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
    /// Also export `batch` (the `batch-text-plugin` world).
    pub batch: bool,
    /// Where the SDK comes from.
    pub sdk: SdkSource,
}

/// A scaffolded crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaffolded {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The files written, in order.
    pub files: Vec<PathBuf>,
    /// Where its `Cargo.toml` gets the SDK from.
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

/// Renders the crate's files: (path relative to the crate's directory,
/// contents), in the order they are written.
pub fn render(template: &PluginTemplate) -> Vec<(PathBuf, String)> {
    let name = template.name.as_str();
    let type_name = type_name(name);
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
    };
    vec![
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

/// Creates the crate `parent/name`. The SDK comes from `sdk` if given (a
/// directory holding the `kiln-plugin` crate, written into `Cargo.toml` as
/// an absolute path), else from the Kiln checkout around `parent` if there
/// is one, else from git. Refuses to touch an existing directory.
pub fn create(
    parent: &Path,
    name: &str,
    batch: bool,
    sdk: Option<&Path>,
) -> Result<Scaffolded, ScaffoldError> {
    validate_name(name)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    let dir = absolute(&parent.join(name)).map_err(io(parent))?;
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let sdk = match sdk {
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
        batch,
        sdk: sdk.clone(),
    };
    let mut files = Vec::new();
    for (rel, text) in render(&template) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
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
        let made = create(&parent, "rot13", true, None).unwrap();
        assert_eq!(made.dir, absolute(&parent.join("rot13")).unwrap());
        assert_eq!(
            made.sdk,
            SdkSource::Path(PathBuf::from("../..").join(SDK_IN_REPO))
        );
        for rel in [
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

        let again = create(&parent, "rot13", false, None).unwrap_err();
        assert!(matches!(again, ScaffoldError::Exists(_)), "{again}");
        let bad = create(&parent, "Rot13", false, None).unwrap_err();
        assert!(matches!(bad, ScaffoldError::InvalidName { .. }), "{bad}");
        assert!(!parent.join("Rot13").exists());
    }

    #[test]
    fn explicit_sdk_paths_are_checked_and_made_absolute() {
        let root = checkout();
        let out = tempfile::tempdir().unwrap();
        let sdk = root.path().join(SDK_IN_REPO);
        let made = create(out.path(), "p", false, Some(&sdk)).unwrap();
        assert_eq!(made.sdk, SdkSource::Path(absolute(&sdk).unwrap()));

        let not_sdk = create(out.path(), "q", false, Some(out.path())).unwrap_err();
        assert!(matches!(not_sdk, ScaffoldError::NotTheSdk(_)), "{not_sdk}");

        let outside = create(out.path(), "r", false, None).unwrap();
        assert_eq!(outside.sdk, SdkSource::Git);
    }
}
