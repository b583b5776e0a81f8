//! The echo ceiling: a bare lapin consumer with Kiln's discipline and no
//! work. For each delivery it publishes the body upper-cased to the
//! delivery's `reply_to` (same correlation id, persistent) on a
//! confirm-mode channel, waits for the broker's confirm, then acks the
//! delivery. Same broker, same prefetch: whatever Kiln loses against it is
//! Kiln's own cost.
//!
//! It runs as a process of its own, like `kiln worker`: the harness
//! re-executes itself with the hidden subcommand [`SUBCOMMAND`] ([`serve`]),
//! so the echo consumer's CPU per job is read from `/proc` exactly as the
//! worker's is, and the harness's publisher and reply consumer do not share
//! its runtime. That CPU per job is the floor for a lapin consumer with this
//! discipline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::task::JoinHandle;

use crate::amqp;
use crate::proc::{self, Group};

/// The hidden first argument that makes `broker-bench` the echo consumer.
pub(crate) const SUBCOMMAND: &str = "__echo-consumer";

/// The line [`serve`] prints when it stops: `<prefix> <n>`, the number of
/// replies not confirmed or deliveries not acked.
const FAILURES: &str = "echo-consumer failures:";

const TAG: &str = "kiln-bench-echo";

/// A running echo consumer.
pub(crate) struct Echo {
    conn: Connection,
    consume_ch: Channel,
    task: JoinHandle<Result<()>>,
    failures: Arc<AtomicU64>,
}

/// `broker-bench __echo-consumer <url> <prefetch> <queue>...`: one echo
/// consumer (connection and channels) per queue until SIGTERM or SIGINT,
/// then stops them and prints the failures line.
pub(crate) async fn serve(args: &[String]) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let [url, prefetch, queues @ ..] = args else {
        anyhow::bail!("usage: broker-bench {SUBCOMMAND} <url> <prefetch> <queue>...");
    };
    let prefetch: u16 = prefetch.parse().context("prefetch")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut echoes = Vec::new();
    for queue in queues {
        echoes.push(Echo::start(url, queue, prefetch).await?);
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let mut failures = 0;
    for echo in echoes {
        failures += echo.stop().await;
    }
    println!("{FAILURES} {failures}");
    Ok(())
}

/// The echo consumer as a child process (this binary, [`SUBCOMMAND`]).
pub(crate) struct EchoProcess {
    group: Group,
    log: std::path::PathBuf,
}

impl EchoProcess {
    /// Starts the echo process on `queues`, its output in `log`.
    pub(crate) fn spawn(
        url: &str,
        queues: &[&str],
        prefetch: u16,
        log: &std::path::Path,
    ) -> Result<EchoProcess> {
        let exe = std::env::current_exe().context("finding broker-bench itself")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(SUBCOMMAND)
            .arg(url)
            .arg(prefetch.to_string())
            .args(queues);
        Ok(EchoProcess {
            group: Group::spawn(cmd, "echo consumer", log)?,
            log: log.to_owned(),
        })
    }

    /// `Ok` while it runs (see [`Group::alive`]).
    pub(crate) fn alive(&mut self) -> std::result::Result<(), String> {
        self.group.alive()
    }

    /// Its CPU time so far (see [`Group::cpu_time`]).
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        self.group.cpu_time()
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s) and returns the failures
    /// it printed, or `Err` when it printed none.
    pub(crate) async fn stop(self) -> std::result::Result<u64, String> {
        self.group.stop(Duration::from_secs(10)).await;
        let tail = proc::tail(&self.log, 15);
        tail.lines()
            .find_map(|l| l.strip_prefix(FAILURES))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("the echo process did not report; end of its log:\n{tail}"))
    }
}

impl Echo {
    /// Starts consuming `queue` with `prefetch` unacknowledged deliveries.
    pub(crate) async fn start(url: &str, queue: &str, prefetch: u16) -> Result<Echo> {
        let conn = amqp::connect(url, "kiln-bench-echo").await?;
        let consume_ch = conn.create_channel().await?;
        consume_ch
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
        let publish_ch = conn.create_channel().await?;
        publish_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        let mut consumer = consume_ch
            .basic_consume(
                queue.into(),
                TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let failures = Arc::new(AtomicU64::new(0));
        let fails = failures.clone();
        // The one publishing task of the publish channel.
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery.context("echo delivery")?;
                let props = &delivery.properties;
                let Some(reply_to) = props.reply_to().clone() else {
                    fails.fetch_add(1, Ordering::Relaxed);
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    continue;
                };
                let mut reply_props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                if let Some(c) = props.correlation_id().clone() {
                    reply_props = reply_props.with_correlation_id(c);
                }
                let body = delivery.data.to_ascii_uppercase();
                let confirm = publish_ch
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &body,
                        reply_props,
                    )
                    .await
                    .context("publishing an echo reply")?;
                let fails = fails.clone();
                tokio::spawn(async move {
                    let acked = match confirm.await {
                        Ok(c) if c.is_ack() => delivery.acker.ack(BasicAckOptions::default()).await,
                        _ => {
                            fails.fetch_add(1, Ordering::Relaxed);
                            let requeue = BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            };
                            delivery.acker.nack(requeue).await
                        }
                    };
                    if acked.is_err() {
                        fails.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Ok(())
        });
        Ok(Echo {
            conn,
            consume_ch,
            task,
            failures,
        })
    }

    /// Cancels the consumer and closes the connection; returns how many
    /// replies were not confirmed or deliveries not acked.
    pub(crate) async fn stop(self) -> u64 {
        amqp::quietly(
            self.consume_ch
                .basic_cancel(TAG.into(), BasicCancelOptions::default()),
        )
        .await;
        amqp::quietly(self.conn.close(200, "OK".into())).await;
        self.task.abort();
        self.failures.load(Ordering::Relaxed)
    }
}
