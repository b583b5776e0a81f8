//! The embedded runner in process: retries wait out their backoff off the
//! workers, then the job is answered once and dead-lettered.

use std::sync::Arc;

use kiln::config::KilnConfig;
use kiln::embedded::{self, Io, NoProgress};
use kiln_integration_tests::{config, plugin_dir};
use kiln_sandbox::{Limits, Sandbox};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letter_and_every_job_answered_once() {
    let dir = plugin_dir(&["uppercase", "hostile-spin"]);
    let sandbox = Sandbox::new(config(Limits {
        timeout_ms: 20,
        ..Limits::default()
    }))
    .unwrap();
    let registry = Arc::new(sandbox.load_dir(dir.path()).await.unwrap());
    let mut kiln = KilnConfig::default();
    kiln.pipeline.max_attempts = 3;
    kiln.pipeline.initial_backoff_ms = 10;
    let pipeline = Arc::new(kiln::pipeline::Pipeline::from_config(&kiln, registry));

    let mut jobs = String::new();
    for i in 0..200 {
        jobs.push_str(&format!(
            "{{\"job_id\":\"u{i}\",\"plugin\":\"uppercase\",\"input\":\"x\"}}\n"
        ));
        if i % 50 == 0 {
            jobs.push_str(&format!(
                "{{\"job_id\":\"s{i}\",\"plugin\":\"hostile-spin\",\"input\":\"x\"}}\n"
            ));
        }
    }
    let (mut replies, mut dead) = (Vec::new(), Vec::new());
    let io = Io {
        jobs: tokio::io::BufReader::new(jobs.as_bytes()),
        replies: &mut replies,
        dead: &mut dead,
    };
    let summary = embedded::run(pipeline, io, 2, NoProgress).await.unwrap();

    assert_eq!(summary.jobs, 204);
    assert_eq!(summary.outcomes.get("ok"), Some(&200));
    assert_eq!(summary.outcomes.get("timeout"), Some(&4));
    // Each spinner: attempts 1 and 2 retried, attempt 3 answered.
    assert_eq!(summary.retries, 8);
    assert_eq!(summary.dead_lettered, 4);

    let replies: Vec<Value> = replies
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let mut ids: Vec<_> = replies
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 204, "every job answered exactly once");
    let dead: Vec<Value> = dead
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter()
            .all(|d| d["attempts"] == 3 && d["error"]["kind"] == "timeout")
    );
}
