//! Confirmed publishing from one task per channel.
//!
//! lapin's `basic_publish` assigns the confirm number and queues the frames
//! in two separate steps, so publishing concurrently on one channel can
//! mismatch confirms. Every publish on a channel therefore goes through
//! the one task that owns it; confirms are awaited concurrently, so
//! publishes still pipeline.

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, oneshot};

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

struct Request {
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    mandatory: bool,
    done: oneshot::Sender<Result<Published, BrokerError>>,
}

/// A handle to the publishing task of one confirm-mode channel.
#[derive(Debug, Clone)]
pub struct Publisher {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Puts `channel` in confirm mode and starts its publishing task.
    pub async fn start(channel: Channel) -> Result<Self, BrokerError> {
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        let (requests, mut rx) = mpsc::channel::<Request>(1024);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let options = BasicPublishOptions {
                    mandatory: req.mandatory,
                    ..BasicPublishOptions::default()
                };
                let sent = channel
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(req.routing_key),
                        options,
                        &req.body,
                        req.properties,
                    )
                    .await;
                match sent {
                    Ok(confirm) => {
                        // Await the confirm off this task so publishes pipeline.
                        tokio::spawn(async move {
                            let outcome = match confirm.await {
                                Ok(Confirmation::Ack(None)) => Ok(Published::Confirmed),
                                Ok(Confirmation::Ack(Some(_))) => Ok(Published::Unroutable),
                                Ok(Confirmation::Nack(_)) => Err(BrokerError::Nacked),
                                // A recovered channel without confirm mode.
                                Ok(Confirmation::NotRequested) => Err(BrokerError::NotConfirmed),
                                Err(e) => Err(BrokerError::Channel(e)),
                            };
                            let _ = req.done.send(outcome);
                        });
                    }
                    Err(e) => {
                        let _ = req.done.send(Err(BrokerError::Channel(e)));
                    }
                }
            }
        });
        Ok(Self { requests })
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
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request {
                routing_key: routing_key.to_owned(),
                body,
                properties,
                mandatory,
                done,
            })
            .await
            .map_err(|_| BrokerError::PublisherGone)?;
        rx.await.map_err(|_| BrokerError::PublisherGone)?
    }
}
