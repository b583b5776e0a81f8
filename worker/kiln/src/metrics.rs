//! The Prometheus metrics of `kiln worker`, served on `/metrics` in the
//! OpenMetrics text format (`prometheus-client`).
//!
//! Two kinds of source: [`JobMetrics`], the per-job instruments the
//! pipeline updates (a few atomic adds and a histogram observation per
//! job) and the reloader updates, and values read only at scrape time by a
//! collector: the plugin registry serving now, and whatever the worker
//! wiring adds with [`Exposition::with_collector`] (the broker's counters,
//! [`broker::BrokerCounters`], which this module does not know). Label
//! values are bounded: a plugin label is the name of a
//! plugin loaded at some point in the process's life (hot reload adds
//! names; only the operator's plugin files do) or `unknown`, an outcome
//! label is `ok` or an error kind of the outcome table, a capability label
//! is one of [`kiln_sandbox::Capability::ALL`], and a reload result is `loaded`,
//! `removed` or `failed`.

pub mod broker;
pub mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use kiln_protocol::ErrorKind;
use kiln_sandbox::{Denials, HttpRequest, Registry as Plugins};

use crate::plugins::SharedRegistry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Exposition::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The plugin label of a job whose plugin is not loaded (or unreadable).
pub const UNKNOWN_PLUGIN: &str = "unknown";

/// Labels of `kiln_jobs_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    plugin: Arc<str>,
    version: Arc<str>,
    outcome: &'static str,
}

/// Labels of the per-plugin histograms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginLabels {
    plugin: Arc<str>,
    version: Arc<str>,
}

/// Labels of `kiln_job_queue_wait_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    plugin: Arc<str>,
}

/// Labels of `kiln_capability_denials_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    plugin: Arc<str>,
    capability: &'static str,
}

/// Labels of `kiln_plugin_http_requests_total`: `grant` is the manifest
/// entry the request matched (bounded by the manifests), never the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    plugin: Arc<str>,
    grant: Arc<str>,
    status_class: &'static str,
}

/// Labels of `kiln_plugin_http_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpDurationLabels {
    plugin: Arc<str>,
    grant: Arc<str>,
}

/// Labels of `kiln_instance_reuses_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReuseLabels {
    plugin: Arc<str>,
}

/// Labels of `kiln_plugin_reloads_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The `result` label values of `kiln_plugin_reloads_total`.
const RELOAD_RESULTS: [&str; 3] = ["loaded", "removed", "failed"];

/// Labels of `kiln_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    arch: &'static str,
    os: &'static str,
}

type HistogramFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0, 30.0,
    ])
}

fn instantiation_histogram() -> Histogram {
    Histogram::new([
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.1,
    ])
}

/// Queue waits, from the AMQP `timestamp`: whole seconds, so nothing finer
/// than half a second; up to a day.
fn queue_wait_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0, 7_200.0,
        21_600.0, 86_400.0,
    ])
}

fn fuel_histogram() -> Histogram {
    // 1e3 to 1e10 units of fuel, one bucket per decade.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e3, 10.0, 8,
    ))
}

/// Interned label values, by the string they intern.
type Interned = Arc<ArcSwap<HashMap<String, Arc<str>>>>;

/// The per-job instruments, and the reloader's. Cheap to clone (every
/// instrument is shared).
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// Interned plugin names: a lookup by `&str`, no allocation per job.
    /// Hot reload adds the names of new plugins ([`JobMetrics::learn`]).
    names: Interned,
    /// Interned versions of the loaded plugins (a canary and its stable
    /// version are told apart by this label).
    versions: Interned,
    unknown: Arc<str>,
    no_version: Arc<str>,
    jobs: Family<JobLabels, Counter>,
    duration: HistogramFamily,
    fuel: HistogramFamily,
    instantiation: HistogramFamily,
    queue_wait: Family<QueueLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    denials: Family<DenialLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    http_duration: Family<HttpDurationLabels, Histogram, fn() -> Histogram>,
    reuses: Family<ReuseLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
}

impl JobMetrics {
    /// Instruments for the plugins in `plugins` (any other name is counted
    /// as [`UNKNOWN_PLUGIN`]).
    pub fn new(plugins: &Plugins) -> Self {
        let this = Self {
            names: Interned::default(),
            versions: Interned::default(),
            unknown: Arc::from(UNKNOWN_PLUGIN),
            no_version: Arc::from(""),
            jobs: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            fuel: Family::new_with_constructor(fuel_histogram),
            instantiation: Family::new_with_constructor(instantiation_histogram),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            in_flight: Gauge::default(),
            denials: Family::default(),
            http: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
            reuses: Family::default(),
            reloads: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        };
        this.learn(plugins);
        for p in plugins.plugins() {
            this.cache_counter(p.cache_state().is_hit()).inc();
        }
        this
    }

    /// Interns the names and versions of the plugins in `plugins` (those
    /// already known stay: a label never disappears while it may have
    /// series). Called by the reloader before it swaps a registry in.
    pub fn learn(&self, plugins: &Plugins) {
        fn add(interned: &Interned, values: impl Iterator<Item = String>) {
            let known = interned.load();
            let new: Vec<String> = values.filter(|v| !known.contains_key(v)).collect();
            if new.is_empty() {
                return;
            }
            let mut map = HashMap::clone(&known);
            for value in new {
                map.insert(value.clone(), Arc::from(value));
            }
            // One writer (the reloader): no update is lost.
            interned.store(Arc::new(map));
        }
        add(&self.names, plugins.plugins().map(|p| p.name().to_owned()));
        add(
            &self.versions,
            plugins.plugins().map(|p| p.version().to_string()),
        );
        self.zero(plugins);
    }

    /// Creates every counter series of the plugins in `plugins` (and the
    /// reload results) at 0, so that `increase()` sees their first event.
    /// Existing series keep their values.
    fn zero(&self, plugins: &Plugins) {
        for result in RELOAD_RESULTS {
            drop(self.reloads.get_or_create(&ReloadLabels { result }));
        }
        for p in plugins.plugins() {
            let plugin = self.label(p.name());
            let version = self.version_label(Some(&p.version().to_string()));
            for outcome in std::iter::once("ok").chain(ErrorKind::ALL.map(ErrorKind::as_str)) {
                drop(self.jobs.get_or_create(&JobLabels {
                    plugin: plugin.clone(),
                    version: version.clone(),
                    outcome,
                }));
            }
            if p.reuse_jobs() > 1 {
                drop(self.reuses.get_or_create(&ReuseLabels {
                    plugin: plugin.clone(),
                }));
            }
            for capability in kiln_sandbox::Capability::ALL {
                drop(self.denials.get_or_create(&DenialLabels {
                    plugin: plugin.clone(),
                    capability: capability.as_str(),
                }));
            }
        }
    }

    fn cache_counter(&self, hit: bool) -> &Counter {
        if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        }
    }

    /// Counts a plugin file (re)loaded by hot reload, and whether the
    /// component cache had it.
    pub fn plugin_loaded(&self, cache_hit: bool) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "loaded" })
            .inc();
        self.cache_counter(cache_hit).inc();
    }

    /// Counts a plugin file removed (its plugin drains).
    pub fn plugin_removed(&self) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "removed" })
            .inc();
    }

    /// Counts a changed plugin file that failed to load (the previous
    /// version, if any, keeps serving).
    pub fn reload_failed(&self) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "failed" })
            .inc();
    }

    /// The label for a plugin name taken from a job: itself if loaded,
    /// [`UNKNOWN_PLUGIN`] otherwise.
    fn label(&self, name: &str) -> Arc<str> {
        self.names.load().get(name).unwrap_or(&self.unknown).clone()
    }

    /// The version label: a loaded plugin's version, or empty.
    fn version_label(&self, version: Option<&str>) -> Arc<str> {
        let versions = self.versions.load();
        version
            .and_then(|v| versions.get(v))
            .unwrap_or(&self.no_version)
            .clone()
    }

    /// Counts one handled attempt of a job for `plugin` (as the job named
    /// it), the version that served it (if one did), and its outcome
    /// (`None` for success).
    pub fn job_handled(&self, plugin: &str, version: Option<&str>, error: Option<ErrorKind>) {
        let labels = JobLabels {
            plugin: self.label(plugin),
            version: self.version_label(version),
            outcome: error.map_or("ok", ErrorKind::as_str),
        };
        self.jobs.get_or_create(&labels).inc();
    }

    /// Records what running a job in a loaded plugin cost.
    pub fn job_ran(
        &self,
        plugin: &str,
        version: &str,
        duration: Duration,
        fuel: u64,
        instantiation: Duration,
    ) {
        let labels = PluginLabels {
            plugin: self.label(plugin),
            version: self.version_label(Some(version)),
        };
        self.duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        // Precision loss above 2^53 fuel is irrelevant for a histogram.
        #[allow(clippy::cast_precision_loss)]
        self.fuel.get_or_create(&labels).observe(fuel as f64);
        if !instantiation.is_zero() {
            self.instantiation
                .get_or_create(&labels)
                .observe(instantiation.as_secs_f64());
        }
    }

    /// Records how long a job for `plugin` (as its reply names it) waited in
    /// the queue before a job slot took it.
    pub fn queue_waited(&self, plugin: &str, wait: Duration) {
        self.queue_wait
            .get_or_create(&QueueLabels {
                plugin: self.label(plugin),
            })
            .observe(wait.as_secs_f64());
    }

    /// Counts the capabilities a run of a loaded plugin was refused (the
    /// ones the host sees: [`kiln_sandbox::Capability`]).
    pub fn capabilities_denied(&self, plugin: &str, denials: &Denials) {
        if denials.is_empty() {
            return;
        }
        let plugin = self.label(plugin);
        for (capability, n) in denials.counts() {
            self.denials
                .get_or_create(&DenialLabels {
                    plugin: plugin.clone(),
                    capability: capability.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Counts the outgoing requests a run of a loaded plugin made, by the
    /// grant each matched and its status class, and observes their
    /// durations.
    pub fn http_requests(&self, plugin: &str, requests: &[HttpRequest]) {
        if requests.is_empty() {
            return;
        }
        let plugin = self.label(plugin);
        for r in requests {
            self.http
                .get_or_create(&HttpLabels {
                    plugin: plugin.clone(),
                    grant: r.grant.clone(),
                    status_class: r.status_class(),
                })
                .inc();
            self.http_duration
                .get_or_create(&HttpDurationLabels {
                    plugin: plugin.clone(),
                    grant: r.grant.clone(),
                })
                .observe(r.duration.as_secs_f64());
        }
    }

    /// Counts a job of a loaded plugin that ran in a warm instance (one
    /// that had served an earlier job).
    pub fn instance_reused(&self, plugin: &str) {
        self.reuses
            .get_or_create(&ReuseLabels {
                plugin: self.label(plugin),
            })
            .inc();
    }

    /// Marks a job as running until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

/// Keeps `kiln_jobs_in_flight` raised while alive.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What is read at scrape time: the plugins serving now.
#[derive(Debug)]
struct PluginsNow(SharedRegistry);

/// Encodes one unlabelled metric read at scrape time, for the collectors.
fn constant(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: usize,
) -> std::fmt::Result {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    constant(encoder, name, help, ConstGauge::new(value))
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    constant(encoder, name, help, ConstCounter::new(value))
}

impl Collector for PluginsNow {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let plugins = self.0.load();
        gauge(
            &mut encoder,
            "kiln_plugins_loaded",
            "Plugins loaded and serving jobs.",
            plugins.len(),
        )?;
        gauge(
            &mut encoder,
            "kiln_plugin_load_errors",
            "Plugin files in the plugins directory that failed to load and serve nothing new (a previous version may still serve).",
            plugins.errors().len(),
        )?;
        Ok(())
    }
}

/// The `/metrics` registry.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// A registry over `jobs` and the registry serving now, `plugins`.
    pub fn new(jobs: &JobMetrics, plugins: SharedRegistry) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "kiln_jobs",
            "Job attempts handled, by plugin (`unknown` when not loaded) and outcome (`ok` or the error kind)",
            jobs.jobs.clone(),
        );
        registry.register_with_unit(
            "kiln_job_duration",
            "Wall-clock time of a job in its plugin, instantiation included",
            Unit::Seconds,
            jobs.duration.clone(),
        );
        registry.register(
            "kiln_job_fuel_consumed",
            "Fuel a job consumed (wasmtime fuel units, roughly one per instruction)",
            jobs.fuel.clone(),
        );
        registry.register_with_unit(
            "kiln_plugin_instantiation",
            "Time to create a job's store and instantiate its plugin",
            Unit::Seconds,
            jobs.instantiation.clone(),
        );
        registry.register_with_unit(
            "kiln_job_queue_wait",
            "Time a job waited between its publish (the AMQP `timestamp` its producer set, in whole seconds) and a job slot taking it, by plugin; first attempts only",
            Unit::Seconds,
            jobs.queue_wait.clone(),
        );
        registry.register(
            "kiln_capability_denials",
            "Capabilities plugins reached for at run time without a grant and were refused by the host (`tcp`, `udp`, `dns`, `http`), by plugin. File and environment attempts fail inside the guest and are not counted",
            jobs.denials.clone(),
        );
        registry.register(
            "kiln_plugin_http_requests",
            "Outgoing HTTP requests an outbound grant allowed, by plugin, the manifest grant they matched, and status class (`2xx`..., or `error` when no response came)",
            jobs.http.clone(),
        );
        registry.register_with_unit(
            "kiln_plugin_http_request_duration",
            "Time from an allowed outgoing HTTP request to its response head (or failure), by plugin and grant",
            Unit::Seconds,
            jobs.http_duration.clone(),
);
        registry.register(
            "kiln_instance_reuses",
            "Jobs that ran in a warm instance, one that had served an earlier job (plugins with `[instances] reuse_jobs` above 1), by plugin",
            jobs.reuses.clone(),
        );
        registry.register(
            "kiln_jobs_in_flight",
            "Jobs running in the pipeline now",
            jobs.in_flight.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                arch: std::env::consts::ARCH,
                os: std::env::consts::OS,
            })
            .set(1);
        registry.register(
            "kiln_build_info",
            "Always 1; the labels describe the build",
            build,
        );
        registry.register(
            "kiln_plugin_cache_hits",
            "Plugins loaded from the component cache (baked or writable tier) without compiling, at start and by hot reload",
            jobs.cache_hits.clone(),
        );
        registry.register(
            "kiln_plugin_cache_misses",
            "Plugins that had to be compiled at load, at start and by hot reload",
            jobs.cache_misses.clone(),
        );
        registry.register(
            "kiln_plugin_reloads",
            "Plugin files handled by hot reload, by result: `loaded` (swapped in), `removed` (drains), `failed` (the previous version keeps serving)",
            jobs.reloads.clone(),
        );
        registry.register_collector(Box::new(PluginsNow(plugins)));
        registry.register_collector(Box::new(process::ProcessMetrics));
        Self { registry }
    }

    /// Adds values read at scrape time by `collector` (the broker worker's
    /// [`broker::BrokerCounters`]).
    #[must_use]
    pub fn with_collector(mut self, collector: impl Collector) -> Self {
        self.registry.register_collector(Box::new(collector));
        self
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(plugins: Plugins) -> SharedRegistry {
        Arc::new(ArcSwap::from_pointee(plugins))
    }

    /// The sample lines of `text` (no comments), as `name{labels} value`.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        samples(text)
            .into_iter()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A collector of one counter, as the worker wiring adds.
    #[derive(Debug)]
    struct Extra(u64);

    impl Collector for Extra {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            counter(&mut encoder, "kiln_test_extra", "A test counter.", self.0)
        }
    }

    #[test]
    fn renders_names_types_and_values() {
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        // What the worker wiring adds (the broker's counters: see
        // `broker.rs`) is rendered with the rest.
        let exposition = Exposition::new(&jobs, plugins).with_collector(Extra(7));
        jobs.plugin_loaded(true);
        jobs.plugin_loaded(false);
        jobs.plugin_loaded(false);
        jobs.reload_failed();

        jobs.job_handled("nope", None, None);
        jobs.job_handled("nope", Some("1.0.0"), Some(ErrorKind::UnknownPlugin));
        jobs.job_handled("", None, Some(ErrorKind::UnknownPlugin));
        jobs.job_ran(
            "nope",
            "1.0.0",
            Duration::from_millis(3),
            12_345,
            Duration::from_micros(40),
        );
        jobs.queue_waited("nope", Duration::from_millis(1_500));
        jobs.queue_waited("", Duration::from_secs(40));
        let guard = jobs.in_flight();
        let text = exposition.render();
        drop(guard);

        for (series, want) in [
            (
                "kiln_jobs_total{plugin=\"unknown\",version=\"\",outcome=\"ok\"}",
                1.0,
            ),
            (
                "kiln_jobs_total{plugin=\"unknown\",version=\"\",outcome=\"unknown-plugin\"}",
                2.0,
            ),
            (
                "kiln_job_duration_seconds_count{plugin=\"unknown\",version=\"\"}",
                1.0,
            ),
            (
                "kiln_job_duration_seconds_sum{plugin=\"unknown\",version=\"\"}",
                0.003,
            ),
            (
                "kiln_job_duration_seconds_bucket{le=\"0.005\",plugin=\"unknown\",version=\"\"}",
                1.0,
            ),
            (
                "kiln_job_duration_seconds_bucket{le=\"0.0025\",plugin=\"unknown\",version=\"\"}",
                0.0,
            ),
            (
                "kiln_job_fuel_consumed_sum{plugin=\"unknown\",version=\"\"}",
                12_345.0,
            ),
            (
                "kiln_plugin_instantiation_seconds_count{plugin=\"unknown\",version=\"\"}",
                1.0,
            ),
            ("kiln_job_queue_wait_seconds_count{plugin=\"unknown\"}", 2.0),
            ("kiln_job_queue_wait_seconds_sum{plugin=\"unknown\"}", 41.5),
            (
                "kiln_job_queue_wait_seconds_bucket{le=\"2.0\",plugin=\"unknown\"}",
                1.0,
            ),
            (
                "kiln_job_queue_wait_seconds_bucket{le=\"1.0\",plugin=\"unknown\"}",
                0.0,
            ),
            ("kiln_jobs_in_flight", 1.0),
            ("kiln_test_extra_total", 7.0),
            ("kiln_plugins_loaded", 0.0),
            ("kiln_plugin_load_errors", 0.0),
            ("kiln_plugin_cache_hits_total", 1.0),
            ("kiln_plugin_cache_misses_total", 2.0),
            ("kiln_plugin_reloads_total{result=\"loaded\"}", 3.0),
            ("kiln_plugin_reloads_total{result=\"failed\"}", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        for (family, kind) in [
            ("kiln_jobs", "counter"),
            ("kiln_job_duration_seconds", "histogram"),
            ("kiln_job_fuel_consumed", "histogram"),
            ("kiln_plugin_instantiation_seconds", "histogram"),
            ("kiln_job_queue_wait_seconds", "histogram"),
            ("kiln_jobs_in_flight", "gauge"),
            ("kiln_test_extra", "counter"),
            ("kiln_plugins_loaded", "gauge"),
            ("kiln_plugin_cache_hits", "counter"),
            ("kiln_plugin_cache_misses", "counter"),
            ("kiln_plugin_reloads", "counter"),
            ("kiln_plugin_load_errors", "gauge"),
            ("kiln_build_info", "gauge"),
        ] {
            let line = format!("# TYPE {family} {kind}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!(
            "kiln_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with("# EOF\n"));
        // The in-flight guard lowers the gauge again.
        assert_eq!(
            value(&exposition.render(), "kiln_jobs_in_flight"),
            Some(0.0)
        );
    }

    #[test]
    fn capability_denials_count_per_plugin_and_capability() {
        use kiln_sandbox::{Capability, Denial};
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        let exposition = Exposition::new(&jobs, plugins);
        let mut denials = Denials::default();
        // More than the audit keeps: every one is counted.
        for _ in 0..100 {
            denials.record(Denial::new(Capability::Dns, "localhost"));
        }
        denials.record(Denial::new(Capability::Tcp, "ipv4"));
        jobs.capabilities_denied("snoop", &denials);
        jobs.capabilities_denied("snoop", &denials);
        // A run without denials creates no series.
        jobs.capabilities_denied("quiet", &Denials::default());
        let text = exposition.render();
        let mut series: Vec<_> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("kiln_capability_denials_total"))
            .collect();
        series.sort_unstable();
        // Not a loaded plugin here, so `unknown`: the labels stay bounded.
        assert_eq!(
            series,
            [
                "kiln_capability_denials_total{plugin=\"unknown\",capability=\"dns\"} 200",
                "kiln_capability_denials_total{plugin=\"unknown\",capability=\"tcp\"} 2",
            ],
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "# TYPE kiln_capability_denials counter"),
            "{text}"
        );
    }

    #[test]
    fn instance_reuses_count_per_plugin() {
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        let exposition = Exposition::new(&jobs, plugins);
        for _ in 0..3 {
            jobs.instance_reused("warm");
        }
        let text = exposition.render();
        assert_eq!(
            value(&text, "kiln_instance_reuses_total{plugin=\"unknown\"}"),
            Some(3.0),
            "{text}"
        );
    }

    /// prometheus-client ends the HELP text of a registered metric with a
    /// period of its own (not a collector's): each line ends in one. The
    /// broker's collector is checked in `metrics/broker.rs`.
    #[test]
    fn help_lines_do_not_end_in_two_periods() {
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        let text = Exposition::new(&jobs, plugins).render();
        let help: Vec<_> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        assert!(help.len() >= 7, "{text}");
        for line in help {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
    }

    /// The reload results exist at 0 before any reload.
    #[test]
    fn reload_results_start_at_zero() {
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        let text = Exposition::new(&jobs, plugins).render();
        for result in RELOAD_RESULTS {
            let series = format!("kiln_plugin_reloads_total{{result=\"{result}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
    }

    #[test]
    fn unknown_plugin_names_share_one_series() {
        let plugins = shared(Plugins::default());
        let jobs = JobMetrics::new(&plugins.load());
        let exposition = Exposition::new(&jobs, plugins);
        for i in 0..1_000 {
            jobs.job_handled(
                &format!("random-{i}"),
                Some("9.9.9"),
                Some(ErrorKind::UnknownPlugin),
            );
        }
        let text = exposition.render();
        let series: Vec<_> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("kiln_jobs_total"))
            .collect();
        assert_eq!(
            series,
            ["kiln_jobs_total{plugin=\"unknown\",version=\"\",outcome=\"unknown-plugin\"} 1000"]
        );
        // Without the broker's collector, its counters are simply absent.
        assert!(!text.contains("kiln_retries"));
    }
}
