//! Job records through the whole pipeline: malformed records get typed
//! error replies and the right disposition; batch jobs get one reply.

use std::sync::Arc;

use kiln::config::KilnConfig;
use kiln::pipeline::Pipeline;
use kiln_integration_tests::{config, plugin_dir};
use kiln_protocol::{Disposition, Envelope, ErrorKind, Status};
use kiln_sandbox::{Limits, Sandbox};
use serde_json::Value;

async fn pipeline() -> (Sandbox, Pipeline) {
    let dir = plugin_dir(&["uppercase", "reverse", "wordcount", "hostile-spin"]);
    let sandbox = Sandbox::new(config(Limits {
        timeout_ms: 50,
        max_input_bytes: 1_000,
        ..Limits::default()
    }))
    .unwrap();
    let registry = Arc::new(sandbox.load_dir(dir.path()).await.unwrap());
    let mut kiln = KilnConfig::default();
    kiln.sandbox.limits.max_input_bytes = 1_000;
    kiln.pipeline.max_body_bytes = 10_000;
    (sandbox, Pipeline::from_config(&kiln, registry))
}

/// Handles `body` as attempt `attempt` and checks the outcome.
async fn check(
    p: &Pipeline,
    body: &[u8],
    attempt: u32,
    kind: Option<ErrorKind>,
    dispose: fn(&Disposition) -> bool,
) -> Value {
    let handled = p.handle(body, &Envelope::default(), attempt).await;
    assert_eq!(handled.error, kind, "{}", String::from_utf8_lossy(body));
    assert!(
        dispose(&handled.disposition),
        "{:?} for {}",
        handled.disposition,
        String::from_utf8_lossy(body)
    );
    let reply: Value = serde_json::from_slice(&handled.encoded).unwrap();
    assert!(!reply["job_id"].as_str().unwrap().is_empty());
    reply
}

fn reply_only(d: &Disposition) -> bool {
    matches!(d, Disposition::Reply)
}
fn dead_letter(d: &Disposition) -> bool {
    matches!(d, Disposition::ReplyAndDeadLetter)
}
fn retry(d: &Disposition) -> bool {
    matches!(
        d,
        Disposition::Retry {
            next_attempt: 2,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_are_answered_and_dead_lettered() {
    let (_s, p) = pipeline().await;
    let big = format!(
        r#"{{"plugin":"uppercase","input":"{}"}}"#,
        "x".repeat(2_000)
    );
    let huge = format!(
        r#"{{"plugin":"uppercase","input":"{}"}}"#,
        "x".repeat(20_000)
    );
    let cases: &[(&[u8], ErrorKind)] = &[
        (b"\xff\xfe not utf-8", ErrorKind::BadRequest),
        (b"not json", ErrorKind::BadRequest),
        (b"[1,2]", ErrorKind::BadRequest),
        (br#"{"input":"x"}"#, ErrorKind::BadRequest),
        (br#"{"plugin":"uppercase"}"#, ErrorKind::BadRequest),
        (
            br#"{"plugin":"uppercase","input":5}"#,
            ErrorKind::BadRequest,
        ),
        (
            br#"{"plugin":"uppercase","input":"x","inputs":["y"]}"#,
            ErrorKind::BadRequest,
        ),
        (
            br#"{"plugin":"uppercase","input":"x","version":"not semver"}"#,
            ErrorKind::BadRequest,
        ),
        (
            br#"{"plugin":"uppercase","input":"x","colour":"red"}"#,
            ErrorKind::BadRequest,
        ),
        (big.as_bytes(), ErrorKind::PayloadTooLarge),
        (huge.as_bytes(), ErrorKind::PayloadTooLarge),
        (
            br#"{"plugin":"nope","input":"x"}"#,
            ErrorKind::UnknownPlugin,
        ),
        (
            br#"{"plugin":"uppercase","input":"x","version":"^2"}"#,
            ErrorKind::VersionMismatch,
        ),
    ];
    for (body, kind) in cases {
        let reply = check(&p, body, 1, Some(*kind), dead_letter).await;
        assert_eq!(reply["status"], "error");
        assert_eq!(reply["error"]["kind"], kind.as_str());
        assert_eq!(reply["error"]["source"], "request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn job_id_defaults_deterministically() {
    let (_s, p) = pipeline().await;
    let body = br#"{"plugin":"uppercase","input":"x"}"#;
    let a = check(&p, body, 1, None, reply_only).await;
    let b = check(&p, body, 1, None, reply_only).await;
    assert_eq!(a["job_id"], b["job_id"]);
    let env = Envelope {
        message_id: Some("m-1"),
        correlation_id: None,
    };
    let handled = p.handle(body, &env, 1).await;
    assert_eq!(handled.job_id, "m-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_errors_are_final_and_timeouts_retry() {
    let (_s, p) = pipeline().await;
    let reply = check(
        &p,
        br#"{"job_id":"r","plugin":"reverse","input":""}"#,
        1,
        Some(ErrorKind::InvalidInput),
        reply_only,
    )
    .await;
    assert_eq!(reply["error"]["source"], "plugin");
    assert_eq!(reply["error"]["message"], "empty input");

    let spin = br#"{"job_id":"s","plugin":"hostile-spin","input":"x"}"#;
    let reply = check(&p, spin, 1, Some(ErrorKind::Timeout), retry).await;
    assert_eq!(reply["error"]["source"], "host");
    // The last attempt is answered and dead-lettered.
    check(&p, spin, 3, Some(ErrorKind::Timeout), dead_letter).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn success_reply_has_the_documented_shape() {
    let (_s, p) = pipeline().await;
    let reply = check(
        &p,
        br#"{"job_id":"j1","plugin":"uppercase","input":"abc"}"#,
        1,
        None,
        reply_only,
    )
    .await;
    assert_eq!(reply["job_id"], "j1");
    assert_eq!(reply["plugin"], "uppercase");
    assert_eq!(reply["plugin_version"], "1.0.0");
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["output"], "ABC");
    assert_eq!(reply["metadata"]["chars"], "3");
    assert!(reply["duration_us"].as_u64().is_some());
    assert!(reply["fuel_used"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_jobs_get_one_reply() {
    let (_s, p) = pipeline().await;
    let reply = check(
        &p,
        br#"{"job_id":"b","plugin":"wordcount","inputs":["a b","c"]}"#,
        1,
        None,
        reply_only,
    )
    .await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["results"][0]["output"], "2");
    assert_eq!(reply["results"][1]["output"], "1");

    let handled = p
        .handle(
            br#"{"job_id":"b2","plugin":"reverse","inputs":["ab","","cd"]}"#,
            &Envelope::default(),
            1,
        )
        .await;
    assert_eq!(handled.reply.status(), Status::Partial);
    let reply: Value = serde_json::from_slice(&handled.encoded).unwrap();
    assert_eq!(reply["status"], "partial");
    assert_eq!(reply["results"][0]["output"], "ba");
    assert_eq!(reply["results"][1]["status"], "error");
    assert_eq!(reply["results"][1]["error"]["kind"], "invalid-input");
    assert_eq!(reply["results"][2]["output"], "dc");
}
