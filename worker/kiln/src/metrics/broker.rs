//! The broker worker's counters on `/metrics`: [`BrokerCounters`] reads
//! `kiln-broker`'s [`WorkerStats`] at scrape time. It knows the broker and
//! nothing of the sandbox; the worker wiring registers it with
//! [`Exposition::with_collector`](super::Exposition::with_collector).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use kiln_broker::WorkerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// The broker's counters, read at scrape time.
#[derive(Debug)]
pub struct BrokerCounters(Arc<WorkerStats>);

impl BrokerCounters {
    /// A collector over the counters of one broker worker.
    pub fn new(stats: Arc<WorkerStats>) -> Self {
        Self(stats)
    }
}

/// A counter family labelled by `plugin` and `kind`, one sample per pair.
fn by_plugin_kind(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    counts: &std::collections::BTreeMap<(String, &'static str), u64>,
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
        let stats = &self.0;
        by_plugin_kind(
            &mut encoder,
            "kiln_retries",
            "Retries scheduled through the delay queues, by plugin (`unknown` when not loaded) and error kind.",
            &stats.retries_by_plugin_kind(),
        )?;
        by_plugin_kind(
            &mut encoder,
            "kiln_dead_lettered",
            "Jobs published to the dead-letter queue, by plugin (`unknown` when not loaded) and error kind.",
            &stats.dead_letters_by_plugin_kind(),
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
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(BrokerCounters::new(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
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
