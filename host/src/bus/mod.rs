//! Dispatch and events behind one trait.
//!
//! Subjects follow NATS conventions (`job.hello-pack.echo`, `sys.job.result`,
//! `*` for one token, `>` for the rest). A subscription with a queue group
//! shares the messages of its subject with the group's other members (one
//! receives each message), which is how pack workers take jobs; a plain
//! subscription gets every message (events). The in-process implementation
//! is the default; `nats` connects to a NATS server so workers in other
//! processes can take jobs.

pub mod inprocess;
pub mod nats;

use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::mpsc;

/// A message on the bus.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("no subscriber for subject {0}")]
    NoSubscriber(String),
    #[error("{0}")]
    Timeout(String),
}

/// Receiving side of a subscription; dropping it unsubscribes.
pub type Subscription = mpsc::Receiver<Message>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn backend(&self) -> &'static str;
    async fn health(&self) -> Result<(), BusError>;
    /// Publish a message. Work subjects (with queue subscribers) fail with
    /// `NoSubscriber` when nobody can take the message.
    async fn publish(&self, message: Message) -> Result<(), BusError>;
    /// Subscribe to `pattern`; with `queue_group`, messages are shared.
    async fn subscribe(&self, pattern: &str, queue_group: Option<&str>) -> Result<Subscription, BusError>;
    /// Send `payload` to one subscriber of `subject` and wait for its reply
    /// (how jobs reach external workers). `NoSubscriber` when nobody serves
    /// the subject, `Timeout` when nobody answered in time.
    async fn request(&self, subject: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError>;
}

/// Does a subject match a NATS-style pattern?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => continue,
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards() {
        assert!(subject_matches("job.>", "job.hello-pack.echo"));
        assert!(subject_matches("job.*.echo", "job.hello-pack.echo"));
        assert!(!subject_matches("job.*", "job.hello-pack.echo"));
        assert!(subject_matches("sys.job.result", "sys.job.result"));
        assert!(!subject_matches("job.>", "job"));
    }
}
