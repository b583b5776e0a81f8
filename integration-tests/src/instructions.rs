//! The instruction-count gate: compares the counts of the last
//! `cargo bench --bench instructions` run with the committed baseline,
//! `integration-tests/benches/instructions-baseline.json`.
//!
//! The counts come from gungraun's own summaries (`--save-summary=json`
//! writes one `summary.json` per benchmark). A benchmark fails when it grew
//! more than the baseline's tolerance (10 %), or when it is in the baseline
//! or the measurement but not both. `benches/instructions_check.rs` is the
//! command line over this module (reading files, rewriting the baseline);
//! moving the baseline is a deliberate commit that says why
//! (docs/BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `integration-tests/benches/instructions-baseline.json`.
pub fn baseline_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join("instructions-baseline.json")
}

/// The committed counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// What the counts were measured on (machine, toolchain, valgrind).
    pub comment: String,
    /// Largest growth over a baseline count that still passes, in percent.
    pub tolerance_pct: f64,
    /// Instructions executed (callgrind's `Ir`) per benchmark, keyed
    /// `function/id`.
    pub instructions: BTreeMap<String, u64>,
}

/// One benchmark's line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `function/id`.
    pub name: String,
    /// The committed count, if the baseline has one.
    pub baseline: Option<u64>,
    /// The measured count, if there was a summary.
    pub measured: Option<u64>,
    /// What the comparison says.
    pub verdict: Verdict,
}

/// The outcome of one benchmark's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the tolerance (or smaller).
    Ok,
    /// Grew more than the tolerance.
    Regressed,
    /// In the baseline, not measured.
    Missing,
    /// Measured, not in the baseline.
    New,
}

impl Verdict {
    /// Whether this fails the check.
    pub fn fails(self) -> bool {
        self != Verdict::Ok
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::Missing => "MISSING (not measured)",
            Verdict::New => "NEW (not in the baseline)",
        }
    }
}

/// Growth of `measured` over `baseline`, in percent.
pub fn delta_pct(baseline: u64, measured: u64) -> f64 {
    (measured as f64 - baseline as f64) / baseline.max(1) as f64 * 100.0
}

/// Every benchmark of the baseline and of the measurement, by name.
pub fn compare(baseline: &Baseline, measured: &BTreeMap<String, u64>) -> Vec<Row> {
    let mut names: Vec<&String> = baseline
        .instructions
        .keys()
        .chain(measured.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let (base, now) = (
                baseline.instructions.get(name).copied(),
                measured.get(name).copied(),
            );
            let verdict = match (base, now) {
                (Some(b), Some(n)) if delta_pct(b, n) > baseline.tolerance_pct => {
                    Verdict::Regressed
                }
                (Some(_), Some(_)) => Verdict::Ok,
                (Some(_), None) => Verdict::Missing,
                (None, _) => Verdict::New,
            };
            Row {
                name: name.clone(),
                baseline: base,
                measured: now,
                verdict,
            }
        })
        .collect()
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table of every row: both counts, the delta and the verdict.
pub fn report(rows: &[Row], tolerance_pct: f64) -> String {
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), grouped);
    let mut out = format!(
        "{:<32} {:>12} {:>12} {:>9}  verdict (fails above +{tolerance_pct} %)\n",
        "benchmark", "baseline Ir", "measured Ir", "delta"
    );
    for row in rows {
        let delta = match (row.baseline, row.measured) {
            (Some(b), Some(n)) => format!("{:+.2} %", delta_pct(b, n)),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>12} {:>12} {:>9}  {}",
            row.name,
            count(row.baseline),
            count(row.measured),
            delta,
            row.verdict.as_str()
        );
    }
    out
}

/// The `function/id` of one gungraun summary and its callgrind `Ir` total,
/// or what is missing from it.
pub fn instructions_of(summary: &Value) -> Result<(String, u64), String> {
    let function = summary["function_name"]
        .as_str()
        .ok_or("no function_name")?;
    let name = match summary["id"].as_str() {
        Some(id) => format!("{function}/{id}"),
        None => function.to_owned(),
    };
    let callgrind = summary["profiles"]
        .as_array()
        .and_then(|profiles| profiles.iter().find(|p| p["tool"] == "Callgrind"))
        .ok_or_else(|| format!("{name}: no callgrind profile"))?;
    // `values` holds the `new` count, and the `old` one when gungraun
    // compared with an earlier run.
    let ir = &callgrind["data"]["total"]["metrics"]["Ir"];
    let new = ir["values"]["new"]
        .as_u64()
        .ok_or_else(|| format!("{name}: no Ir in the callgrind total: {ir}"))?;
    Ok((name, new))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn baseline(counts: &[(&str, u64)]) -> Baseline {
        Baseline {
            comment: String::new(),
            tolerance_pct: 10.0,
            instructions: counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    fn verdicts(base: &[(&str, u64)], now: &[(&str, u64)]) -> Vec<(String, Verdict)> {
        let now = now.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        compare(&baseline(base), &now)
            .into_iter()
            .map(|r| (r.name, r.verdict))
            .collect()
    }

    #[test]
    fn growth_up_to_the_tolerance_passes_and_beyond_it_fails() {
        let v = verdicts(
            &[("a", 1000), ("b", 1000), ("c", 1000)],
            &[("a", 1100), ("b", 1101), ("c", 500)],
        );
        assert_eq!(
            v,
            [
                ("a".to_owned(), Verdict::Ok),
                ("b".to_owned(), Verdict::Regressed),
                ("c".to_owned(), Verdict::Ok),
            ]
        );
    }

    #[test]
    fn a_benchmark_in_only_one_side_fails() {
        let v = verdicts(&[("gone", 10)], &[("added", 10)]);
        assert_eq!(
            v,
            [
                ("added".to_owned(), Verdict::New),
                ("gone".to_owned(), Verdict::Missing),
            ]
        );
        assert!(v.iter().all(|(_, verdict)| verdict.fails()));
    }

    #[test]
    fn the_report_shows_every_delta() {
        let now = [("a".to_owned(), 1_234_567), ("b".to_owned(), 90)].into();
        let rows = compare(&baseline(&[("a", 1_000_000), ("b", 100)]), &now);
        let text = report(&rows, 10.0);
        assert!(
            text.contains("1,000,000") && text.contains("1,234,567"),
            "{text}"
        );
        assert!(
            text.contains("+23.46 %") && text.contains("REGRESSED"),
            "{text}"
        );
        assert!(text.contains("-10.00 %"), "{text}");
    }

    #[test]
    fn reads_ir_from_new_only_and_compared_summaries() {
        let fresh = serde_json::json!({
            "function_name": "decode", "id": "uppercase_200b",
            "profiles": [{"tool": "Callgrind", "data": {"total": {"metrics": {
                "Ir": {"values": {"new": 4242}}}}}}]
        });
        assert_eq!(
            instructions_of(&fresh).unwrap(),
            ("decode/uppercase_200b".to_owned(), 4242)
        );
        let compared = serde_json::json!({
            "function_name": "decode",
            "profiles": [{"tool": "Callgrind", "data": {"total": {"metrics": {
                "Ir": {"values": {"new": 7, "old": 9}}}}}}]
        });
        assert_eq!(
            instructions_of(&compared).unwrap(),
            ("decode".to_owned(), 7)
        );
        let other_tool = serde_json::json!({
            "function_name": "decode", "profiles": [{"tool": "DHAT"}]
        });
        assert!(instructions_of(&other_tool).is_err());
    }

    #[test]
    fn the_committed_baseline_parses_and_covers_every_benchmark() {
        let text = std::fs::read_to_string(baseline_path()).unwrap();
        let baseline: Baseline = serde_json::from_str(&text).unwrap();
        assert!(!baseline.comment.is_empty());
        assert_eq!(baseline.tolerance_pct, 10.0);
        let names: Vec<&str> = baseline.instructions.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "decode/uppercase_200b",
                "encode_reply/uppercase_200b",
                "fresh_instance/uppercase_200b",
                "pipeline_handle/uppercase_200b",
            ]
        );
    }
}
