//! In-process bus: subscriptions are bounded channels; queue groups pick a
//! member round-robin, skipping members whose channel is closed.

use super::{Bus, BusError, Message, Subscription, subject_matches};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const CHANNEL_CAPACITY: usize = 4096;

struct Sub {
    pattern: String,
    tx: mpsc::Sender<Message>,
}

#[derive(Default)]
struct Group {
    members: Vec<Sub>,
    next: AtomicUsize,
}

#[derive(Default)]
pub struct InProcessBus {
    plain: Mutex<Vec<Sub>>,
    groups: Mutex<HashMap<(String, String), Group>>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    /// Nothing outside this process can answer: external workers need a
    /// network bus (`--bus nats://...`).
    async fn request(&self, subject: &str, _payload: Vec<u8>, _timeout: Duration) -> Result<Vec<u8>, BusError> {
        Err(BusError::NoSubscriber(subject.to_string()))
    }

    async fn health(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        // Fan-out subscribers: best effort, a full or closed one is skipped.
        {
            let mut plain = self.plain.lock();
            plain.retain(|s| !s.tx.is_closed());
            for sub in plain.iter().filter(|s| subject_matches(&s.pattern, &message.subject)) {
                let _ = sub.tx.try_send(message.clone());
            }
        }
        // Queue groups: exactly one member of each matching group.
        let mut targets = Vec::new();
        let mut had_group = false;
        {
            let mut groups = self.groups.lock();
            groups.retain(|_, g| {
                g.members.retain(|m| !m.tx.is_closed());
                !g.members.is_empty()
            });
            for ((pattern, _), group) in groups.iter() {
                if !subject_matches(pattern, &message.subject) {
                    continue;
                }
                had_group = true;
                let n = group.members.len();
                let start = group.next.fetch_add(1, Ordering::Relaxed);
                targets.push(group.members[start % n].tx.clone());
            }
        }
        for tx in targets {
            tx.send(message.clone()).await.map_err(|_| BusError::Unavailable("subscriber went away".into()))?;
        }
        if !had_group && message.subject.starts_with("job.") {
            return Err(BusError::NoSubscriber(message.subject));
        }
        Ok(())
    }

    async fn subscribe(&self, pattern: &str, queue_group: Option<&str>) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let sub = Sub { pattern: pattern.to_string(), tx };
        match queue_group {
            None => self.plain.lock().push(sub),
            Some(group) => {
                self.groups.lock().entry((pattern.to_string(), group.to_string())).or_default().members.push(sub)
            }
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_group_delivers_once_and_fanout_to_all() {
        let bus = InProcessBus::new();
        let mut a = bus.subscribe("job.x.>", Some("g")).await.unwrap();
        let mut b = bus.subscribe("job.x.>", Some("g")).await.unwrap();
        let mut watcher = bus.subscribe("job.>", None).await.unwrap();
        for _ in 0..4 {
            bus.publish(Message { subject: "job.x.y".into(), payload: vec![] }).await.unwrap();
        }
        let mut got = 0;
        while a.try_recv().is_ok() {
            got += 1;
        }
        while b.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 4);
        let mut seen = 0;
        while watcher.try_recv().is_ok() {
            seen += 1;
        }
        assert_eq!(seen, 4);
        assert!(matches!(
            bus.publish(Message { subject: "job.nobody.z".into(), payload: vec![] }).await,
            Err(BusError::NoSubscriber(_))
        ));
    }
}
