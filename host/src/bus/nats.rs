//! NATS bus: the same trait over a NATS server, so workers in other
//! processes (external workers of packs without a component, other gateway
//! replicas) share subjects with this gateway. Queue groups map onto NATS
//! queue subscriptions; `request` is NATS request-reply, and "no
//! responders" means nobody serves the subject.

use super::{Bus, BusError, Message, Subscription};
use async_trait::async_trait;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

const CHANNEL_CAPACITY: usize = 4096;

pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("cordum-gateway")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS at {url}: {e}")))?;
        Ok(Self { client })
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

#[async_trait]
impl Bus for NatsBus {
    fn backend(&self) -> &'static str {
        "nats"
    }

    async fn health(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(BusError::Unavailable(format!("NATS connection {other:?}"))),
        }
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        self.client.publish(message.subject, message.payload.into()).await.map_err(unavailable)
    }

    async fn subscribe(&self, pattern: &str, queue_group: Option<&str>) -> Result<Subscription, BusError> {
        let mut sub = match queue_group {
            Some(group) => self.client.queue_subscribe(pattern.to_string(), group.to_string()).await,
            None => self.client.subscribe(pattern.to_string()).await,
        }
        .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let message = Message { subject: msg.subject.to_string(), payload: msg.payload.to_vec() };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(rx)
    }

    async fn request(&self, subject: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError> {
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), request).await {
            Ok(reply) => Ok(reply.payload.to_vec()),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoSubscriber(subject.to_string()),
                async_nats::RequestErrorKind::TimedOut => {
                    BusError::Timeout(format!("no reply on {subject} within {} ms", timeout.as_millis()))
                }
                _ => unavailable(e),
            }),
        }
    }
}
