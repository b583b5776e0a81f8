//! Every example plugin through the contract.

use kiln_integration_tests::{ctx, load, sandbox};
use kiln_sandbox::{JobFailure, Limits, Output, PluginErrorKind};

fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Runs `input` through `plugin` with `config` and compares the result.
async fn check(
    plugin: &str,
    input: &str,
    config: &[(&str, &str)],
    expected: Result<Output, JobFailure>,
) {
    let sandbox = sandbox(Limits::default());
    let plugin = load(&sandbox, plugin).await;
    let run = plugin.process(&ctx("t", config), input).await;
    assert_eq!(run.result, expected, "{} on {input:?}", plugin.name());
    assert!(run.fuel_used > 0);
}

fn ok(output: &str, metadata: &[(&str, &str)]) -> Result<Output, JobFailure> {
    Ok(Output {
        output: output.to_owned(),
        metadata: meta(metadata),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn uppercase() {
    check(
        "uppercase",
        "hello, wörld",
        &[],
        ok("HELLO, WÖRLD", &[("chars", "12")]),
    )
    .await;
    check("uppercase", "", &[], ok("", &[("chars", "0")])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reverse() {
    check("reverse", "abc→d", &[], ok("d→cba", &[("chars", "5")])).await;
    check(
        "reverse",
        "",
        &[],
        Err(JobFailure::Plugin {
            kind: PluginErrorKind::InvalidInput,
            message: "empty input".into(),
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wordcount() {
    check(
        "wordcount",
        "one two\nthree",
        &[],
        ok("3", &[("words", "3"), ("lines", "2"), ("chars", "13")]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn markdown_renders_and_reads_config() {
    let sandbox = sandbox(Limits::default());
    let md = load(&sandbox, "markdown").await;
    let run = md
        .process(&ctx("t", &[]), "# Title\n\nSome [link](https://x.test).")
        .await;
    let out = run.result.unwrap();
    assert!(out.output.contains("<h1>Title</h1>"), "{}", out.output);
    assert!(
        out.output.contains(r#"<a href="https://x.test">link</a>"#),
        "{}",
        out.output
    );
    assert!(
        out.metadata.contains(&("headings".into(), "1".into())),
        "{:?}",
        out.metadata
    );
    assert!(
        out.metadata.contains(&("links".into(), "1".into())),
        "{:?}",
        out.metadata
    );

    // get-config: the job's config reaches the plugin.
    let smart = md
        .process(&ctx("t", &[("smart_punctuation", "true")]), "\"quoted\"")
        .await;
    assert!(smart.result.unwrap().output.contains('“'));
    let bad = md.process(&ctx("t", &[("flavor", "asciidoc")]), "x").await;
    assert!(
        matches!(
            bad.result,
            Err(JobFailure::Plugin {
                kind: PluginErrorKind::UnsupportedFormat,
                ..
            })
        ),
        "{:?}",
        bad.result
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_config_is_served_after_job_config() {
    let mut config = kiln_integration_tests::config(Limits::default());
    config.plugin_config.insert(
        "markdown".into(),
        [("smart_punctuation".to_owned(), "true".to_owned())].into(),
    );
    let sandbox = kiln_sandbox::Sandbox::new(config).unwrap();
    let md = load(&sandbox, "markdown").await;
    // From the plugin's config.
    let run = md.process(&ctx("t", &[]), "\"q\"").await;
    assert!(run.result.unwrap().output.contains('“'));
    // The job's config wins.
    let run = md
        .process(&ctx("t", &[("smart_punctuation", "false")]), "\"q\"")
        .await;
    assert!(!run.result.unwrap().output.contains('“'));
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_exports() {
    let sandbox = sandbox(Limits::default());
    for (name, batch) in [
        ("uppercase", false),
        ("reverse", false),
        ("wordcount", true),
        ("markdown", false),
    ] {
        let p = load(&sandbox, name).await;
        assert_eq!(p.name(), name);
        assert_eq!(p.version(), &semver::Version::new(1, 0, 0));
        assert_eq!(p.has_batch(), batch, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_through_the_batch_export() {
    let sandbox = sandbox(Limits::default());
    let wc = load(&sandbox, "wordcount").await;
    let inputs = vec!["a b".to_owned(), String::new(), "x y z".to_owned()];
    let run = wc.process_batch(&ctx("t", &[]), &inputs).await;
    let outputs: Vec<_> = run
        .result
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().output)
        .collect();
    assert_eq!(outputs, ["2", "0", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_without_the_export_runs_each_input_alone() {
    let sandbox = sandbox(Limits::default());
    let rev = load(&sandbox, "reverse").await;
    let inputs = vec!["ab".to_owned(), String::new(), "xyz".to_owned()];
    let run = rev.process_batch(&ctx("t", &[]), &inputs).await;
    let results = run.result.unwrap();
    assert_eq!(results[0].as_ref().unwrap().output, "ba");
    assert!(matches!(
        results[1],
        Err(JobFailure::Plugin {
            kind: PluginErrorKind::InvalidInput,
            ..
        })
    ));
    assert_eq!(results[2].as_ref().unwrap().output, "zyx");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_state_leaks_between_jobs() {
    // Each job gets a fresh instance: the same input gives the same fuel.
    let sandbox = sandbox(Limits::default());
    let up = load(&sandbox, "uppercase").await;
    let first = up.process(&ctx("a", &[]), "same").await;
    let second = up.process(&ctx("b", &[]), "same").await;
    assert_eq!(first.fuel_used, second.fuel_used);
}
