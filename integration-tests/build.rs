//! Builds the plugins (as wasmtime's test-programs do) so that tests and
//! benchmarks find them by path: `KILN_PLUGIN_ARTIFACTS` points at the
//! directory of release `.wasm` files.

fn main() {
    let root = kiln_xtask::repo_root();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // Everything in the plugins workspace but its target directory.
    let workspace = kiln_xtask::plugins_workspace();
    if let Ok(entries) = std::fs::read_dir(&workspace) {
        for entry in entries.flatten() {
            if entry.file_name() != "target" {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }
    match kiln_xtask::build_rust_plugins() {
        Ok(dir) => println!("cargo:rustc-env=KILN_PLUGIN_ARTIFACTS={}", dir.display()),
        Err(e) => {
            println!("cargo:warning=cannot build the plugins: {e}");
            std::process::exit(1);
        }
    }
}
