//! Confirmed publishing on one channel shared by many tasks.
//!
//! lapin's `basic_publish` assigns the confirm number and queues the frames
//! in two separate steps, so publishing concurrently on one channel can
//! mismatch confirms. Both steps happen in the first poll of lapin's
//! `basic_publish` future (its first suspension point is the wait for the
//! frames to be written), so a publish holds the channel's lock for that one
//! poll only: it never waits for a lock across an `.await`, and it awaits
//! the write and the confirm after releasing it, so publishes pipeline.
//! (A lock rather than a publishing task: no hop between tasks per publish,
//! which on two cores is a measurable share of a job.)
//!
//! A message the broker returns as unroutable (a `mandatory` publish to a
//! queue that does not exist) comes back before its confirm, and lapin hands
//! it to the next confirm it completes, which with publishes in flight and
//! the broker's `multiple` confirms may be another publish's. So a publish
//! reports the returned message its confirm carried, whoever published it,
//! and callers count returns rather than attribute them (tested in
//! `integration-tests/tests/broker`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};

use crate::BrokerError;

/// A message the broker returned as unroutable: not necessarily the one of
/// the publish that reports it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// Where it was sent.
    pub routing_key: String,
    /// Its `message_id` (a reply's is its job id).
    pub message_id: Option<String>,
    /// Its body.
    pub body: Vec<u8>,
    /// The broker's reason, e.g. `NO_ROUTE`.
    pub reply_text: String,
}

/// A confirm-mode channel that any number of tasks may publish on.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    /// Held for the first poll of each publish (see the module docs).
    numbering: Arc<Mutex<()>>,
}

impl Publisher {
    /// Puts `channel` in confirm mode.
    pub async fn start(channel: Channel) -> Result<Self, BrokerError> {
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        Ok(Self {
            channel,
            numbering: Arc::default(),
        })
    }

    /// Publishes `body` to `routing_key` on the default exchange and waits
    /// for the broker's confirm; `Some` if the confirm carried a returned
    /// message (this one's or another's). `body` is borrowed: lapin copies
    /// it into its frames, so a caller that keeps it need not copy it first.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: impl AsRef<[u8]> + Send,
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Option<Returned>, BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let mut publish = std::pin::pin!(self.channel.basic_publish(
            ShortString::from(""),
            ShortString::from(routing_key),
            options,
            body.as_ref(),
            properties,
        ));
        // The first poll numbers the publish and queues its frames: under the
        // lock, so that no other thread's publish interleaves between the two.
        let first = std::future::poll_fn(|cx| {
            let _numbering = self
                .numbering
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Poll::Ready(publish.as_mut().poll(cx))
        })
        .await;
        let confirm = match first {
            Poll::Ready(sent) => sent,
            Poll::Pending => publish.await,
        }
        .map_err(BrokerError::Channel)?;
        match confirm.await.map_err(BrokerError::Channel)? {
            Confirmation::Ack(returned) => Ok(returned.map(|r| Returned {
                routing_key: r.delivery.routing_key.to_string(),
                message_id: r
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string),
                body: r.delivery.data,
                reply_text: r.reply_text.to_string(),
            })),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            // A recovered channel without confirm mode.
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
        }
    }
}
