//! Platform events (`slough.v1.events.<topic>`): typed publishing and subscribing, so
//! no service handles raw NATS messages for them.

use std::marker::PhantomData;

use async_nats::Subscriber;
use futures::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use slough_protocol::Event;

use crate::{Bus, BusError, client::decode};

/// The events of one topic, as they arrive.
pub struct EventStream<T> {
    subscriber: Subscriber,
    subject: String,
    types: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> EventStream<T> {
    /// The next event; an undecodable one is an error (the stream goes on); `None` once
    /// the connection is closed.
    pub async fn next(&mut self) -> Option<Result<T, BusError>> {
        let message = self.subscriber.next().await?;
        Some(decode(&self.subject, &message.payload))
    }
}

impl Bus {
    /// Publishes `event` to every subscriber of its topic.
    pub async fn emit<T: Serialize>(&self, topic: &Event<T>, event: &T) -> Result<(), BusError> {
        self.publish(&topic.subject(), event).await
    }

    /// Subscribes to a topic; the server knows the subscription when this returns.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        topic: &Event<T>,
    ) -> Result<EventStream<T>, BusError> {
        let subject = topic.subject();
        let subscriber = self
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(BusError::nats)?;
        self.round_trip().await?;
        Ok(EventStream {
            subscriber,
            subject,
            types: PhantomData,
        })
    }
}
