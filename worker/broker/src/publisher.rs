//! Confirmed publishing on one channel shared by many tasks.
//!
//! lapin's `basic_publish` assigns the confirm number and queues the frames
//! in two separate steps, so publishing concurrently on one channel can
//! mismatch confirms. A publish therefore holds the channel's lock for those
//! two steps only, and awaits the confirm after releasing it, so publishes
//! still pipeline. (A lock rather than a publishing task: no hop between
//! tasks per publish, which on two cores is a measurable share of a job.)

use std::sync::Arc;

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::Mutex;

use crate::BrokerError;

/// What the broker said about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored by the broker.
    Confirmed,
    /// Confirmed, but returned as unroutable (a `mandatory` publish to a
    /// queue that does not exist).
    Unroutable,
}

/// A confirm-mode channel that any number of tasks may publish on.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Arc<Mutex<Channel>>,
}

impl Publisher {
    /// Puts `channel` in confirm mode.
    pub async fn start(channel: Channel) -> Result<Self, BrokerError> {
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        Ok(Self {
            channel: Arc::new(Mutex::new(channel)),
        })
    }

    /// Publishes `body` to `routing_key` on the default exchange and waits
    /// for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Published, BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = {
            let channel = self.channel.lock().await;
            channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(routing_key),
                    options,
                    &body,
                    properties,
                )
                .await
                .map_err(BrokerError::Channel)?
        };
        match confirm.await.map_err(BrokerError::Channel)? {
            Confirmation::Ack(None) => Ok(Published::Confirmed),
            Confirmation::Ack(Some(_)) => Ok(Published::Unroutable),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            // A recovered channel without confirm mode.
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
        }
    }
}
