//! A test's own AMQP client: confirmed publishing, reply queues, and
//! draining a queue, each message taken as a [`Received`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{URL, consume, declare, unique};

/// One received message.
pub struct Received {
    /// The body.
    pub body: Vec<u8>,
    /// Its `correlation_id` property.
    pub correlation_id: Option<String>,
    /// Its `content_type` property.
    pub content_type: Option<String>,
    headers: Option<FieldTable>,
}

impl Received {
    /// The body, parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The body's `job_id`.
    pub fn job_id(&self) -> String {
        self.json()["job_id"].as_str().unwrap().to_owned()
    }

    /// Header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            AMQPValue::LongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn received(d: &lapin::message::Delivery) -> Received {
    Received {
        body: d.data.clone(),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        content_type: d
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        headers: d.properties.headers().clone(),
    }
}

/// A test's own connection.
pub struct Broker {
    _conn: Connection,
    channel: Channel,
}

/// A reply queue of the test's, consumed as replies arrive.
pub struct Replies {
    /// The queue's name, for `reply_to`.
    pub name: String,
    consumer: tokio::sync::Mutex<lapin::Consumer>,
}

impl Broker {
    /// Connects to [`URL`], with publisher confirms on its channel.
    pub async fn connect() -> Self {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self._conn.close(200, ShortString::from("done")).await;
    }

    /// An exclusive, auto-delete reply queue: it goes with the connection.
    pub async fn reply_queue(&self) -> Replies {
        let name = unique("replies");
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        declare(&self.channel, &name, options).await.unwrap();
        let consumer = consume(&self.channel, &name).await.unwrap();
        Replies {
            name,
            consumer: tokio::sync::Mutex::new(consumer),
        }
    }

    /// Publishes a persistent `body` to `queue`, with `reply_to` and
    /// `correlation` when given, and waits for the confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: Vec<u8>,
        reply_to: Option<&str>,
        correlation: Option<&str>,
    ) {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(r) = reply_to {
            props = props.with_reply_to(ShortString::from(r.to_owned()));
        }
        if let Some(c) = correlation {
            props = props.with_correlation_id(ShortString::from(c.to_owned()));
        }
        self.publish_with(queue, body, props).await;
    }

    /// Publishes a job whose reply goes to `replies` under `correlation`.
    pub async fn ask(&self, queue: &str, body: Vec<u8>, replies: &Replies, correlation: &str) {
        self.publish(queue, body, Some(&replies.name), Some(correlation))
            .await;
    }

    /// Publishes with `props` as given (message id, headers, ...) and
    /// waits for the confirm.
    pub async fn publish_with(&self, queue: &str, body: Vec<u8>, props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.to_owned()),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Publishes many, with confirms awaited at the end.
    pub async fn publish_many(&self, queue: &str, jobs: &[(String, Vec<u8>)], reply_to: &str) {
        self.publish_many_via("", jobs, reply_to, |_| queue.to_owned())
            .await;
    }

    /// Publishes many to the consistent-hash `exchange` of a sharded jobs
    /// queue, each routed by its id (a job's default key), with confirms
    /// awaited at the end.
    pub async fn publish_many_sharded(
        &self,
        exchange: &str,
        jobs: &[(String, Vec<u8>)],
        reply_to: &str,
    ) {
        self.publish_many_via(exchange, jobs, reply_to, str::to_owned)
            .await;
    }

    async fn publish_many_via(
        &self,
        exchange: &str,
        jobs: &[(String, Vec<u8>)],
        reply_to: &str,
        routing_key: impl Fn(&str) -> String,
    ) {
        for (id, body) in jobs {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(reply_to.to_owned()))
                .with_correlation_id(ShortString::from(id.clone()));
            self.channel
                .basic_publish(
                    ShortString::from(exchange.to_owned()),
                    ShortString::from(routing_key(id)),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap();
        }
        self.channel.wait_for_confirms().await.unwrap();
    }

    /// Takes up to `n` messages from `queue` within `timeout`.
    pub async fn drain(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let mut consumer = consume(&self.channel, queue).await.unwrap();
        take_from(&mut consumer, n, timeout).await
    }
}

impl Replies {
    /// Takes up to `n` replies within `timeout`.
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Received> {
        take_from(&mut *self.consumer.lock().await, n, timeout).await
    }

    /// Takes replies until every id in `ids` not answered in `already` is.
    pub async fn take_until_ids(
        &self,
        ids: &HashSet<String>,
        already: &[Received],
        timeout: Duration,
    ) -> Vec<Received> {
        let mut missing: HashSet<String> = ids.clone();
        for r in already {
            missing.remove(&r.job_id());
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + timeout;
        while !missing.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            for r in self.take(missing.len().min(1_000), left).await {
                missing.remove(&r.job_id());
                got.push(r);
            }
        }
        got
    }

    /// Collects replies until every job in `ids` is answered (counting
    /// `already`), and asserts that none is missing.
    pub async fn assert_all_answered(
        &self,
        ids: &HashSet<String>,
        already: &[Received],
        timeout: Duration,
    ) {
        let rest = self.take_until_ids(ids, already, timeout).await;
        let answered: HashSet<String> = already
            .iter()
            .chain(rest.iter())
            .map(Received::job_id)
            .collect();
        let missing: Vec<_> = ids.difference(&answered).take(5).collect();
        assert!(
            missing.is_empty(),
            "{} of {} jobs unanswered, e.g. {missing:?}",
            ids.len() - answered.len().min(ids.len()),
            ids.len()
        );
        assert_eq!(&answered, ids, "replies for jobs that were never sent");
    }
}

/// Takes (and acks) up to `n` messages from `consumer` within `timeout`.
async fn take_from(consumer: &mut lapin::Consumer, n: usize, timeout: Duration) -> Vec<Received> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + timeout;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                got.push(received(&d));
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
            _ => break,
        }
    }
    got
}
