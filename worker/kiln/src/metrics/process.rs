//! The standard `process_*` metrics of the Prometheus client libraries,
//! read from `/proc` at scrape time (Linux; elsewhere they are absent):
//! CPU time, resident and virtual memory, open and maximum file
//! descriptors, start time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux architecture Kiln builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics, read from `/proc/self` at scrape time.
#[derive(Debug, Default)]
pub struct ProcessMetrics;

/// What one scrape read.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
}

/// The fields of `/proc/self/stat` after the command name, 0-based from
/// the state (field 3 of proc(5)).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

fn parse(stat: &str, boot_time: f64, status: &str) -> Option<Sample> {
    let fields = stat_fields(stat)?;
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let kb = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let value: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(value * 1024.0)
    };
    Some(Sample {
        cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
        start_time_seconds: boot_time + field(22)? / TICKS_PER_SECOND,
        resident_bytes: kb("VmRSS:").unwrap_or(0.0),
        virtual_bytes: field(23)?,
        open_fds: 0.0,
        max_fds: None,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let mut sample = parse(&stat, boot, &status)?;
    // Precision loss above 2^53 descriptors is impossible in practice.
    #[allow(clippy::cast_precision_loss)]
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        sample.open_fds = dir.count() as f64;
    }
    sample.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(max_fds);
    Some(sample)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    super::constant(encoder, name, help, ConstGauge::new(value))
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(sample) = read() else {
            return Ok(());
        };
        super::constant(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            ConstCounter::new(sample.cpu_seconds),
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            sample.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            sample.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            sample.open_fds,
        )?;
        if let Some(max) = sample.max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "42 (kiln (w) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 2048 18446744073709551615";
        let status = "Name:\tkiln\nVmRSS:\t   2048 kB\n";
        let sample = parse(stat, 1_700_000_000.0, status).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.start_time_seconds, 1_700_000_010.0);
        assert_eq!(sample.resident_bytes, 2_097_152.0);
        assert_eq!(sample.virtual_bytes, 123_456_789.0);
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            max_fds(
                "Limit Soft Hard Units\nMax open files            1024                 524288               files\n"
            ),
            Some(1024.0)
        );
    }

    #[test]
    fn renders_the_process_metrics_of_this_process() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessMetrics));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (family, kind) in [
            ("process_cpu_seconds", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_open_fds", "gauge"),
        ] {
            let line = format!("# TYPE {family} {kind}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_start_time_seconds") > 1.6e9, "{text}");
    }
}
