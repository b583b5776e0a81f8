//! A test's queues behind a guard: [`TestQueue`] names a jobs queue no
//! other test uses and, when dropped (a test that returns or one that
//! panics), deletes it and every queue derived from it, so a failed test
//! leaves nothing on the broker. A sharded one ([`TestQueue::sharded`])
//! also deletes its consistent-hash exchange and every shard's queues.

use std::fmt;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kiln_broker::{AmqpConfig, Topology};
use kiln_protocol::RetryPolicy;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection, ConnectionProperties};

use super::{URL, declare, unique};

/// Retry steps whose delay queues a guard deletes: more than any test's
/// `KILN__PIPELINE__MAX_ATTEMPTS` asks for (the default is 3 attempts, so
/// `.retry.1` and `.retry.2`).
const MAX_ATTEMPTS: u32 = 8;

/// How long a guard's clean-up may take before it gives up (a test that
/// stopped the broker must not hang in `Drop`).
const CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// A uniquely named jobs queue of one test: it derefs to the name (pass
/// `&q` wherever a queue name goes), and when dropped deletes the jobs
/// queue, `.results`, `.dead`, the `.retry.N` delay queues (the names
/// `kiln_broker::Topology` gives) and every queue added with
/// [`TestQueue::durable_reply_queue`] or [`TestQueue::also`].
///
/// Declare it before the worker that serves it: locals drop in reverse
/// order, so the worker is gone before its queues are deleted (a live
/// worker would re-declare them).
///
/// `Drop` deletes over a fresh connection, on a thread of its own with its
/// own small runtime, so it neither blocks nor needs the test's runtime
/// (it works from a current-thread tokio test, or while one unwinds).
#[derive(Debug)]
pub struct TestQueue {
    name: String,
    shards: u16,
    others: Mutex<Vec<String>>,
}

impl TestQueue {
    /// A jobs queue named after `name` that no other test (or run) uses.
    /// Nothing is declared: the worker (or `kiln enqueue`) does that.
    pub fn new(name: &str) -> Self {
        Self::sharded(name, 1)
    }

    /// A jobs queue of `shards` shards (`[amqp] shards`): the guard deletes
    /// the exchange named like it and, for every shard, `<name>.s<i>`, its
    /// `.dead` and `.retry.N` queues, and the shared `.results`.
    pub fn sharded(name: &str, shards: u16) -> Self {
        Self {
            name: unique(name),
            shards,
            others: Mutex::new(Vec::new()),
        }
    }

    /// The `KILN__AMQP__SHARDS` setting of its shard count, for the
    /// worker's and `kiln enqueue`'s environment.
    pub fn shards_env(&self) -> (&'static str, String) {
        ("KILN__AMQP__SHARDS", self.shards.to_string())
    }

    /// Shard `index`'s jobs queue.
    pub fn shard(&self, index: u16) -> String {
        kiln_broker::shard_queue(&self.name, index)
    }

    /// The jobs queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its `.results` queue (replies to jobs without `reply_to`).
    pub fn results(&self) -> String {
        self.topology().results
    }

    /// Its `.dead` queue.
    pub fn dead(&self) -> String {
        self.topology().dead
    }

    /// Deletes `queue` too when the guard goes; hands the name back.
    pub fn also(&self, queue: String) -> String {
        self.others
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queue.clone());
        queue
    }

    /// Declares a durable reply queue of the test's own (one that outlives
    /// connections, unlike [`crate::broker::Broker::reply_queue`]'s), to be
    /// deleted with the rest.
    pub async fn durable_reply_queue(&self) -> String {
        let name = self.also(unique("durable-replies"));
        let (conn, channel) = connect().await;
        declare(&channel, &name, QueueDeclareOptions::durable())
            .await
            .unwrap_or_else(|e| panic!("cannot declare {name}: {e}"));
        let _ = conn.close(200, ShortString::from("done")).await;
        name
    }

    /// The jobs queue (or every shard's) and every queue derived from it.
    fn derived(&self) -> Vec<String> {
        let topology = self.topology();
        let mut derived = vec![topology.results.clone()];
        for shard in topology.shards() {
            derived.extend([shard.jobs, shard.dead]);
            derived.extend(shard.retries.into_iter().map(|(name, _)| name));
        }
        derived
    }

    /// The exchange of a sharded jobs queue.
    fn exchanges(&self) -> Vec<String> {
        self.topology()
            .exchange()
            .map(str::to_owned)
            .into_iter()
            .collect()
    }

    /// Every queue the guard deletes: the jobs queue, those derived from
    /// it, and those added.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.derived();
        all.extend(
            self.others
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        all
    }

    /// Deletes the jobs queue and every queue derived from it now, as an
    /// operator might under a running worker (queues added with
    /// [`TestQueue::also`] stay); `Drop` deletes them again.
    pub async fn delete(&self) {
        delete(&self.derived(), &[]).await;
    }

    fn topology(&self) -> Topology {
        let config = AmqpConfig {
            queue: self.name.clone(),
            shards: self.shards,
            ..AmqpConfig::default()
        };
        let policy = RetryPolicy {
            max_attempts: MAX_ATTEMPTS,
            ..RetryPolicy::default()
        };
        Topology::new(&config, &policy)
    }
}

impl Deref for TestQueue {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for TestQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let names = self.all();
        let exchanges = self.exchanges();
        let cleaned = std::thread::spawn(move || -> std::io::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(async {
                    tokio::time::timeout(CLEAN_UP_TIMEOUT, delete(&names, &exchanges)).await
                })
                .map_err(std::io::Error::other)
        })
        .join();
        // Never panic here: the test may be unwinding already.
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("queues of {} not cleaned up: {error}", self.name),
            Err(_) => eprintln!("queues of {} not cleaned up: clean-up panicked", self.name),
        }
    }
}

/// A fresh connection and a channel on it.
async fn connect() -> (Connection, Channel) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL}: {e}"));
    let channel = conn
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("cannot open a channel: {e}"));
    (conn, channel)
}

/// Deletes the queues `names` and the `exchanges` over a fresh connection,
/// best effort: a failed delete closes its channel, so the next one gets a
/// new channel.
async fn delete(names: &[String], exchanges: &[String]) {
    let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await else {
        eprintln!("cannot connect to {URL} to delete {names:?}");
        return;
    };
    let mut channel = None;
    for name in names {
        if channel.is_none() {
            channel = conn.create_channel().await.ok();
        }
        let Some(ch) = &channel else {
            continue;
        };
        let deleted = ch
            .queue_delete(
                ShortString::from(name.clone()),
                QueueDeleteOptions::default(),
            )
            .await;
        if deleted.is_err() {
            channel = None;
        }
    }
    for name in exchanges {
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        let _ = ch
            .exchange_delete(
                ShortString::from(name.clone()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, ShortString::from("done")).await;
}

/// Deletes `queue` as an operator would (whatever it holds goes with it),
/// returning how many messages it held; panics when the broker refuses.
pub async fn delete_queue(queue: &str) -> u32 {
    let (conn, channel) = connect().await;
    let held = channel
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete {queue}: {e}"));
    let _ = conn.close(200, ShortString::from("done")).await;
    held
}

/// Whether `queue` exists (a passive declare, on a channel of its own: a
/// failed passive declare closes its channel).
pub async fn queue_exists(queue: &str) -> bool {
    let (conn, channel) = connect().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = declare(&channel, queue, passive).await.is_ok();
    let _ = conn.close(200, ShortString::from("done")).await;
    exists
}
