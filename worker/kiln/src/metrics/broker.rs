//! The broker worker's counters on `/metrics`: [`BrokerCounters`] reads
//! `kiln-broker`'s [`WorkerStats`] at scrape time. It knows the broker and
//! nothing of the sandbox; the worker wiring registers it with
//! [`Exposition::with_collector`](super::Exposition::with_collector).
//!
//! `kiln_retries_total` and `kiln_dead_lettered_total` start at 0 for every
//! plugin label [`JobMetrics`] knows (each plugin loaded at some point,
//! and [`UNKNOWN_PLUGIN`]) and every kind the outcome table can retry or
//! dead-letter ([`retry_kinds`], [`dead_letter_kinds`]), so `increase()`
//! sees their first event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use kiln_broker::WorkerStats;
use kiln_protocol::{Action, ErrorKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::{Interned, JobMetrics, UNKNOWN_PLUGIN};

/// The broker's counters, read at scrape time.
#[derive(Debug)]
pub struct BrokerCounters {
    stats: Arc<WorkerStats>,
    /// The plugin labels of `jobs`, which hot reload extends.
    plugins: Interned,
}

impl BrokerCounters {
    /// A collector over the counters of one broker worker, with a zero
    /// series for each plugin `jobs` counts.
    pub fn new(stats: Arc<WorkerStats>, jobs: &JobMetrics) -> Self {
        Self {
            stats,
            plugins: jobs.names.clone(),
        }
    }

    /// `counts` with a zero for every plugin label and every one of `kinds`
    /// it lacks.
    fn with_zeros(
        &self,
        mut counts: BTreeMap<(String, &'static str), u64>,
        kinds: &[&'static str],
    ) -> BTreeMap<(String, &'static str), u64> {
        let plugins = self.plugins.load();
        let labels = plugins
            .keys()
            .map(String::as_str)
            .chain(std::iter::once(UNKNOWN_PLUGIN));
        for plugin in labels {
            for kind in kinds {
                counts.entry((plugin.to_owned(), *kind)).or_insert(0);
            }
        }
        counts
    }
}

/// The kinds a job is retried for: the outcome table's retryable ones
/// (`timeout`, `internal`).
fn retry_kinds() -> Vec<&'static str> {
    kinds(|action| action == Action::Retry)
}

/// The kinds a job is dead-lettered for: the retryable ones (once their
/// attempts run out) and those the table dead-letters at once (the request
/// kinds: `bad-request`, `payload-too-large`, `unknown-plugin`,
/// `version-mismatch`).
fn dead_letter_kinds() -> Vec<&'static str> {
    kinds(|action| matches!(action, Action::Retry | Action::ReplyAndDeadLetter))
}

fn kinds(action: impl Fn(Action) -> bool) -> Vec<&'static str> {
    ErrorKind::ALL
        .into_iter()
        .filter(|k| action(k.action()))
        .map(ErrorKind::as_str)
        .collect()
}

/// A counter family labelled by `plugin` and `kind`, one sample per pair.
fn by_plugin_kind(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    counts: &BTreeMap<(String, &'static str), u64>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for ((plugin, kind), n) in counts {
        let labels = [("plugin", plugin.as_str()), ("kind", *kind)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for BrokerCounters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = &self.stats;
        by_plugin_kind(
            &mut encoder,
            "kiln_retries",
            "Retries scheduled through the delay queues, by plugin (`unknown` when not loaded) and error kind.",
            &self.with_zeros(stats.retries_by_plugin_kind(), &retry_kinds()),
        )?;
        by_plugin_kind(
            &mut encoder,
            "kiln_dead_lettered",
            "Jobs published to the dead-letter queue, by plugin (`unknown` when not loaded) and error kind.",
            &self.with_zeros(stats.dead_letters_by_plugin_kind(), &dead_letter_kinds()),
        )?;
        for (name, help, value) in [
            (
                "kiln_amqp_reconnects",
                "Broker sessions re-established after a lost connection, channel or consumer.",
                &stats.reconnects,
            ),
            (
                "kiln_jobs_acked",
                "Deliveries acked after everything their outcome published was confirmed.",
                &stats.acked,
            ),
            (
                "kiln_replies_unroutable",
                "Replies returned by the broker as unroutable (the reply queue was gone) and dropped.",
                &stats.unroutable_replies,
            ),
        ] {
            super::counter(&mut encoder, name, help, value.load(Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The exposition of `counters` alone.
    fn render(counters: BrokerCounters) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(counters));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// Counters whose job metrics know the plugins `names` (as loading
    /// them would make them).
    fn counters(stats: Arc<WorkerStats>, names: &[&str]) -> BrokerCounters {
        let jobs = JobMetrics::new(&Default::default());
        let known: HashMap<String, Arc<str>> = names
            .iter()
            .map(|n| ((*n).to_owned(), Arc::from(*n)))
            .collect();
        jobs.names.store(Arc::new(known));
        BrokerCounters::new(stats, &jobs)
    }

    /// Before any event, each plugin label has a retry series per
    /// retryable kind and a dead-letter series per kind that dead-letters,
    /// at 0; a counted event keeps its value; nothing else appears.
    #[test]
    fn retries_and_dead_letters_start_at_zero_for_every_plugin() {
        let stats = Arc::new(WorkerStats::default());
        let text = render(counters(stats.clone(), &["upper", "spin"]));
        let series = |family: &str| -> Vec<String> {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{family}_total{{")))
                .map(str::to_owned)
                .collect();
            lines.sort_unstable();
            lines
        };
        let zeros = |kinds: &[&str]| -> Vec<String> {
            let mut lines: Vec<String> = ["spin", "unknown", "upper"]
                .iter()
                .flat_map(|p| {
                    kinds
                        .iter()
                        .map(move |k| format!("{{plugin=\"{p}\",kind=\"{k}\"}} 0"))
                })
                .collect();
            lines.sort_unstable();
            lines
        };
        let prefixed = |family: &str, lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| format!("{family}_total{l}"))
                .collect()
        };
        assert_eq!(
            series("kiln_retries"),
            prefixed("kiln_retries", zeros(&["internal", "timeout"])),
            "{text}"
        );
        assert_eq!(
            series("kiln_dead_lettered"),
            prefixed(
                "kiln_dead_lettered",
                zeros(&[
                    "bad-request",
                    "internal",
                    "payload-too-large",
                    "timeout",
                    "unknown-plugin",
                    "version-mismatch",
                ])
            ),
            "{text}"
        );
        // Counted events keep their values next to the zeros.
        stats.count_retry("upper", "timeout");
        stats.count_dead_letter("unknown", "bad-request");
        let text = render(counters(stats, &["upper", "spin"]));
        for (line, want) in [
            (
                "kiln_retries_total{plugin=\"upper\",kind=\"timeout\"} ",
                "1",
            ),
            (
                "kiln_retries_total{plugin=\"upper\",kind=\"internal\"} ",
                "0",
            ),
            ("kiln_retries_total{plugin=\"spin\",kind=\"timeout\"} ", "0"),
            (
                "kiln_dead_lettered_total{plugin=\"unknown\",kind=\"bad-request\"} ",
                "1",
            ),
        ] {
            let got: Vec<_> = text.lines().filter(|l| l.starts_with(line)).collect();
            assert_eq!(got, [format!("{line}{want}")], "{text}");
        }
    }

    #[test]
    fn renders_the_broker_counters_as_counters() {
        let stats = Arc::new(WorkerStats::default());
        stats.count_retry("upper", "timeout");
        stats.count_retry("upper", "timeout");
        stats.count_retry("unknown", "trap");
        stats.count_dead_letter("upper", "timeout");
        stats.reconnects.fetch_add(3, Relaxed);
        stats.acked.fetch_add(4, Relaxed);
        stats.unroutable_replies.fetch_add(5, Relaxed);
        let text = render(counters(stats, &[]));
        for (series, want) in [
            (
                "kiln_retries_total{plugin=\"upper\",kind=\"timeout\"} 2",
                "kiln_retries",
            ),
            (
                "kiln_retries_total{plugin=\"unknown\",kind=\"trap\"} 1",
                "kiln_retries",
            ),
            (
                "kiln_dead_lettered_total{plugin=\"upper\",kind=\"timeout\"} 1",
                "kiln_dead_lettered",
            ),
            ("kiln_amqp_reconnects_total 3", "kiln_amqp_reconnects"),
            ("kiln_jobs_acked_total 4", "kiln_jobs_acked"),
            ("kiln_replies_unroutable_total 5", "kiln_replies_unroutable"),
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
            let line = format!("# TYPE {want} counter");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // A collector's HELP text is printed as given: it ends in one period.
        let help: Vec<_> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        assert_eq!(help.len(), 5, "{text}");
        for line in help {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
    }
}
