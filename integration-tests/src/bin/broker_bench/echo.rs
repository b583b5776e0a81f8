//! The echo ceiling: a bare lapin consumer with Kiln's discipline and no
//! work. For each delivery it publishes the body upper-cased to the
//! delivery's `reply_to` (same correlation id, persistent) on a
//! confirm-mode channel, waits for the broker's confirm, then acks the
//! delivery. Same broker, same prefetch: whatever Kiln loses against it is
//! Kiln's own cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

const TAG: &str = "kiln-bench-echo";

/// A running echo consumer.
pub(crate) struct Echo {
    conn: Connection,
    consume_ch: Channel,
    task: JoinHandle<Result<()>>,
    failures: Arc<AtomicU64>,
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
