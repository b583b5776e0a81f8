//! Capabilities a plugin reaches for without a grant: what the guest gets
//! (a typed `access-denied` for sockets and name lookups, nothing to find
//! for files and the environment), what the host records (the run's
//! `denials`, one `kiln::audit` line each within a budget) and what the
//! worker counts (`kiln_capability_denials_total`).

use std::sync::Arc;

use kiln::metrics::{Exposition, JobMetrics};
use kiln_integration_tests::{audited, ctx, load, plugin_dir, sandbox};
use kiln_protocol::Envelope;
use kiln_sandbox::{Capability, Denial, Limits, MAX_AUDITED, Plugin, SingleRun};
use serde_json::Value;

/// What one run of `hostile-snoop` gave: the run, the snoop's report, and
/// the `kiln::audit` events logged meanwhile (JSON, captured on this thread:
/// the tests use a current-thread runtime).
async fn snoop(
    plugin: &Plugin,
    job_id: &str,
    config: &[(&str, &str)],
) -> (SingleRun, Value, Vec<Value>) {
    let (run, audit) = audited(plugin.process(&ctx(job_id, config), "x")).await;
    let output = run.result.as_ref().map(|o| o.output.as_str());
    let report = serde_json::from_str(output.unwrap()).unwrap();
    (run, report, audit)
}

// What Rust std inside the guest makes of `access-denied`: wasi-libc turns
// it into EACCES (WASI errno 2) for the socket calls and for getaddrinfo
// alike. Before Kiln answered these calls itself, wasmtime-wasi's silent
// refusal of the name lookup was a `permanent-resolver-failure`
// ("failed to lookup address information: Non-recoverable error").
const ACCESS_DENIED: &str = "error: Permission denied (os error 2)";

#[tokio::test(flavor = "current_thread")]
async fn snooping_gets_typed_denials_that_the_host_audits() {
    let sandbox = sandbox(Limits::default());
    let plugin = load(&sandbox, "hostile-snoop").await;
    let (run, report, lines) = snoop(&plugin, "snoop-1", &[]).await;

    // Files and the environment fail inside the guest: nothing to find.
    assert!(
        report["file"].as_str().unwrap().starts_with("error:"),
        "{report}"
    );
    assert_eq!(
        report["home"], "error: environment variable not found",
        "{report}"
    );
    assert_eq!(report["env_count"], 0, "{report}");
    // Sockets and name lookups reach the host, which answers access-denied.
    assert_eq!(report["tcp"], ACCESS_DENIED, "{report}");
    assert_eq!(report["udp"], ACCESS_DENIED, "{report}");
    assert_eq!(report["dns"], ACCESS_DENIED, "{report}");

    // The run reports exactly what the host saw: one socket of each kind,
    // one lookup. The file and environment attempts are not among them.
    let denials = &run.denials;
    assert_eq!(
        denials.counts().collect::<Vec<_>>(),
        [
            (Capability::Tcp, 1),
            (Capability::Udp, 1),
            (Capability::Dns, 1)
        ],
        "{denials:?}"
    );
    assert_eq!(
        denials.audited(),
        [
            Denial::new(Capability::Tcp, "ipv4"),
            Denial::new(Capability::Udp, "ipv4"),
            Denial::new(Capability::Dns, "localhost"),
        ]
    );

    // One audit line each, with the fields an auditor filters on.
    let fields: Vec<_> = lines.iter().map(|l| &l["fields"]).collect();
    assert_eq!(fields.len(), 3, "{lines:?}");
    for (f, (capability, detail)) in
        fields
            .iter()
            .zip([("tcp", "ipv4"), ("udp", "ipv4"), ("dns", "localhost")])
    {
        assert_eq!(f["message"], "capability denied", "{f}");
        assert_eq!(f["plugin"], "hostile-snoop", "{f}");
        assert_eq!(f["plugin_version"], "1.0.0", "{f}");
        assert_eq!(f["job_id"], "snoop-1", "{f}");
        assert_eq!(f["capability"], capability, "{f}");
        assert_eq!(f["detail"], detail, "{f}");
    }
    assert!(lines.iter().all(|l| l["level"] == "WARN"), "{lines:?}");

    // Nothing carries over into the next job.
    let (again, _, lines) = snoop(&plugin, "snoop-2", &[]).await;
    assert_eq!(again.denials.total(), 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_looping_on_denials_is_counted_but_not_logged_without_bound() {
    let sandbox = sandbox(Limits::default());
    let plugin = load(&sandbox, "hostile-snoop").await;
    let (run, report, lines) = snoop(&plugin, "loop", &[("dns_lookups", "5000")]).await;
    assert_eq!(report["dns"], ACCESS_DENIED, "{report}");

    let denials = &run.denials;
    assert_eq!(denials.count(Capability::Dns), 5_000);
    assert_eq!(denials.total(), 5_002);
    assert_eq!(denials.audited().len(), MAX_AUDITED);

    // The budget's lines, then one summary with the totals.
    assert_eq!(lines.len(), MAX_AUDITED + 1, "{lines:?}");
    let summary = &lines[MAX_AUDITED]["fields"];
    assert_eq!(
        summary["unaudited"],
        5_002 - MAX_AUDITED as u64,
        "{summary}"
    );
    assert_eq!(summary["dns"], 5_000, "{summary}");
    assert_eq!(summary["tcp"], 1, "{summary}");
    assert_eq!(summary["job_id"], "loop", "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_counts_denials_per_plugin_and_capability() {
    let dir = plugin_dir(&["hostile-snoop", "uppercase"]);
    let sandbox = sandbox(Limits::default());
    let registry = Arc::new(sandbox.load_dir(dir.path()).await.unwrap());
    let metrics = JobMetrics::new(&registry);
    let pipeline =
        kiln::pipeline::Pipeline::from_config(&kiln::config::KilnConfig::default(), registry)
            .with_metrics(metrics.clone());
    let exposition = Exposition::new(&metrics, pipeline.shared_registry().clone());

    for body in [
        r#"{"job_id":"a","plugin":"hostile-snoop","input":"x"}"#,
        r#"{"job_id":"b","plugin":"hostile-snoop","input":"x","config":{"dns_lookups":"3"}}"#,
        r#"{"job_id":"c","plugin":"uppercase","input":"x"}"#,
    ] {
        let handled = pipeline
            .handle(body.as_bytes(), &Envelope::default(), 1)
            .await;
        // The plugin decides what a denial means; the snoop reports it.
        assert_eq!(handled.error, None, "{body}");
    }

    let text = exposition.render();
    // Series come out in no particular order.
    let mut series: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("kiln_capability_denials_total"))
        .collect();
    series.sort_unstable();
    assert_eq!(
        series,
        [
            "kiln_capability_denials_total{plugin=\"hostile-snoop\",capability=\"dns\"} 4",
            "kiln_capability_denials_total{plugin=\"hostile-snoop\",capability=\"http\"} 0",
            "kiln_capability_denials_total{plugin=\"hostile-snoop\",capability=\"tcp\"} 2",
            "kiln_capability_denials_total{plugin=\"hostile-snoop\",capability=\"udp\"} 2",
            // Every loaded plugin's series exist from the start, at 0.
            "kiln_capability_denials_total{plugin=\"uppercase\",capability=\"dns\"} 0",
            "kiln_capability_denials_total{plugin=\"uppercase\",capability=\"http\"} 0",
            "kiln_capability_denials_total{plugin=\"uppercase\",capability=\"tcp\"} 0",
            "kiln_capability_denials_total{plugin=\"uppercase\",capability=\"udp\"} 0",
        ],
        "{text}"
    );
}
