//! Durable state behind one trait.
//!
//! The store owns nothing about jobs, keys or packs: it offers the primitives
//! every durable service needs, shaped so that an embedded file database and a
//! shared Redis implement them alike:
//!
//! * `get`/`scan` of versioned entries (each write bumps a revision),
//! * an atomic batch of writes whose conditions (create-if-absent,
//!   compare-and-set on revision, "this other key is unchanged") are checked
//!   together: all apply or none do,
//! * a TTL per entry (expired entries read as absent),
//! * ordered append-only streams (`append`/`read_stream`).
//!
//! Services layer typed records (JSON) and key naming on top.

pub mod embedded;

use async_trait::async_trait;
use std::time::Duration;

/// One stored value with its revision (1 on first write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub revision: u64,
}

impl Entry {
    /// Decode the value as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.value).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// A condition-guarded write. A batch of these is applied atomically.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write unconditionally.
    Put { key: String, value: Vec<u8>, ttl: Option<Duration> },
    /// Write only if the key is absent (or expired).
    PutIfAbsent { key: String, value: Vec<u8>, ttl: Option<Duration> },
    /// Write only if the current revision equals `expected` (0 = absent).
    PutIfRevision { key: String, value: Vec<u8>, expected: u64, ttl: Option<Duration> },
    /// Remove the key (absent is fine).
    Delete { key: String },
    /// Remove the key only if its revision equals `expected`.
    DeleteIfRevision { key: String, expected: u64 },
    /// Write nothing; fail the batch unless the key's revision equals
    /// `expected` (0 = absent). Makes a batch depend on a record it reads.
    RequireRevision { key: String, expected: u64 },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. }
            | Op::PutIfAbsent { key, .. }
            | Op::PutIfRevision { key, .. }
            | Op::Delete { key }
            | Op::DeleteIfRevision { key, .. }
            | Op::RequireRevision { key, .. } => key,
        }
    }

    /// JSON-encode a value for `Put`.
    pub fn put_json<T: serde::Serialize>(key: impl Into<String>, value: &T) -> Op {
        Op::Put { key: key.into(), value: to_json(value), ttl: None }
    }
}

/// Serialize to JSON bytes; our record types always serialize.
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("record serializes to JSON")
}

/// Result of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every op applied; the new revision of each written key, in op order (0 for deletes).
    Applied(Vec<u64>),
    /// A condition failed; nothing was written. `index` is the failing op and
    /// `current` what the key held at that moment.
    Conflict { index: usize, current: Option<Entry> },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Durable state shared by every service.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Name of the backend (`embedded`, `redis`).
    fn backend(&self) -> &'static str;
    /// Liveness check.
    async fn health(&self) -> StoreResult<()>;
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>>;
    /// Entries whose key starts with `prefix`, in key order, strictly after
    /// `start_after` when given, at most `limit`.
    async fn scan(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> StoreResult<Vec<(String, Entry)>>;
    /// Apply a batch atomically (see [`BatchOutcome`]).
    async fn apply(&self, ops: Vec<Op>) -> StoreResult<BatchOutcome>;
    /// Append to an ordered stream; returns the new element's sequence (1-based).
    async fn append(&self, stream: &str, value: Vec<u8>) -> StoreResult<u64>;
    /// Read a stream from sequence `from` (inclusive), at most `limit` items.
    async fn read_stream(&self, stream: &str, from: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>>;
}
