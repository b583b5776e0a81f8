//! `kiln worker`: the config the options override, the plugins loaded once,
//! then [`crate::worker::run`] until SIGTERM or SIGINT (a second one during
//! the drain exits non-zero).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use kiln_broker::TraceHeaders;

use super::BrokerArgs;
use crate::config::KilnConfig;

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    #[command(flatten)]
    pub(super) broker: BrokerArgs,
    /// Deliveries in flight per worker (basic.qos) [config: amqp.prefetch]
    #[arg(long, value_name = "N")]
    prefetch: Option<u16>,
    /// Jobs run at once [config: pipeline.concurrency; default: one per CPU]
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Address of the HTTP endpoints: /healthz, /readyz, /metrics and
    /// /plugins [config: http.listen]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// The connection name shown by the broker [config: amqp.connection_name]
    #[arg(long, value_name = "NAME")]
    connection_name: Option<String>,
}

impl WorkerArgs {
    fn apply(self, config: &mut KilnConfig) {
        self.broker.apply(config);
        if let Some(n) = self.prefetch {
            config.amqp.prefetch = n;
        }
        if let Some(n) = self.concurrency {
            config.pipeline.concurrency = n;
        }
        if let Some(addr) = self.http_listen {
            config.http.listen = addr;
        }
        if self.connection_name.is_some() {
            config.amqp.connection_name = self.connection_name;
        }
    }
}

pub(super) async fn worker(
    args: WorkerArgs,
    mut config: KilnConfig,
    trace: Arc<dyn TraceHeaders>,
) -> anyhow::Result<ExitCode> {
    args.apply(&mut config);
    config.validate()?;
    let (sandbox, registry, syncer) = crate::plugins::load_with_registry(&config).await?;
    for error in registry.errors() {
        tracing::error!(error = %error.report(), "plugin not loaded");
    }
    // Hot reload loads into the same sandbox: one engine, pool and ticker.
    crate::worker::run(&config, Arc::new(sandbox), registry, syncer, trace).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Command, tests::parse};
    use super::*;

    #[test]
    fn options_override_the_config() {
        let cli = parse(&[
            "worker",
            "--prefetch",
            "7",
            "--concurrency",
            "3",
            "--http-listen",
            "127.0.0.1:9999",
            "--connection-name",
            "w1",
            "--queue",
            "q",
        ])
        .unwrap();
        let Command::Worker(args) = cli.command else {
            panic!("{:?}", cli.command);
        };
        let mut config = KilnConfig::default();
        args.apply(&mut config);
        assert_eq!(config.amqp.prefetch, 7);
        assert_eq!(config.pipeline.concurrency, 3);
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(config.amqp.connection_name.as_deref(), Some("w1"));
        assert_eq!(config.amqp.queue, "q");
    }

    #[test]
    fn http_listen_names_every_endpoint() {
        let help = parse(&["worker", "--help"]).unwrap_err().to_string();
        let line = help
            .split("--http-listen")
            .nth(1)
            .and_then(|rest| rest.split("\n      --").next())
            .unwrap_or_default();
        for path in ["/healthz", "/readyz", "/metrics", "/plugins"] {
            assert!(line.contains(path), "{path} missing from: {line}");
        }
    }
}
