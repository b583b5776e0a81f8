//! Discovery and rejection: components that do not fit the world are
//! refused at load with an error naming the plugin and what is wrong, and
//! the other plugins still load.

use kiln_integration_tests::{artifact, plugin_dir, sandbox};
use kiln_sandbox::{Limits, LoadError, ResolveError};

async fn load_error(crate_name: &str) -> LoadError {
    let sandbox = sandbox(Limits::default());
    sandbox.load_file(&artifact(crate_name)).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_components_are_rejected_with_clear_errors() {
    for (name, needle) in [
        ("invalid-wrong-types", "process"),
        ("invalid-unknown-import", "secret-vault"),
        ("invalid-no-plugin-export", "kiln:plugin/plugin@0.1.0"),
    ] {
        let error = load_error(name).await;
        let text = error.to_string();
        assert!(matches!(error, LoadError::World { .. }), "{name}: {text}");
        assert!(
            text.contains(&name.replace('-', "_")),
            "{name}: error does not name the file: {text}"
        );
        assert!(
            text.contains(needle),
            "{name}: error does not say what is wrong: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_built_against_another_contract_version_names_both() {
    let error = load_error("invalid-future-wit").await;
    let text = error.to_string();
    assert!(matches!(error, LoadError::Contract { .. }), "{text}");
    assert!(
        text.contains("invalid_future_wit"),
        "names the file: {text}"
    );
    assert!(
        text.contains("kiln:plugin@0.2.0"),
        "names its version: {text}"
    );
    assert!(text.contains("kiln:plugin@0.1.0"), "names ours: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_a_component_is_a_compile_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.wasm");
    std::fs::write(&path, b"\0asm garbage").unwrap();
    let error = sandbox(Limits::default())
        .load_file(&path)
        .await
        .unwrap_err();
    assert!(matches!(error, LoadError::Compile { .. }), "{error}");
    assert!(error.to_string().contains("garbage.wasm"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_loads_what_it_can() {
    let dir = plugin_dir(&[
        "uppercase",
        "wordcount",
        "invalid-wrong-types",
        "invalid-unknown-import",
    ]);
    std::fs::write(dir.path().join("notes.txt"), "not a plugin").unwrap();
    let registry = sandbox(Limits::default())
        .load_dir(dir.path())
        .await
        .unwrap();
    let names: Vec<_> = registry.plugins().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["uppercase", "wordcount"]);
    assert_eq!(registry.errors().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_by_name_and_version() {
    let dir = plugin_dir(&["uppercase"]);
    let registry = sandbox(Limits::default())
        .load_dir(dir.path())
        .await
        .unwrap();
    let req = |s: &str| semver::VersionReq::parse(s).unwrap();
    assert_eq!(
        registry.resolve("uppercase", None).unwrap().name(),
        "uppercase"
    );
    assert!(registry.resolve("uppercase", Some(&req("^1"))).is_ok());
    match registry.resolve("uppercase", Some(&req("^2"))) {
        Err(ResolveError::VersionMismatch { available, .. }) => assert_eq!(available, ["1.0.0"]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        registry.resolve("nope", None),
        Err(ResolveError::Unknown { .. })
    ));
}
