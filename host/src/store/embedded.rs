//! Embedded store: one redb file under the data dir, crash-safe (copy-on-write
//! B-trees, every commit fsynced), no server needed.
//!
//! Reads run on the caller's task against a read transaction (MVCC, never
//! blocked by writers). Writes go through a single writer thread that does
//! group commit: it drains every batch waiting in its queue, applies them in
//! order inside one write transaction (each batch all-or-nothing against its
//! own conditions) and commits once, so many concurrent requests share one
//! fsync while each caller still gets an answer only once its data is durable.

use super::{BatchOutcome, Entry, Op, Store, StoreError, StoreResult};
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const STREAMS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("streams");
/// Most batches folded into one commit.
const MAX_GROUP: usize = 1024;
const HEADER: usize = 16;

enum WriteRequest {
    Apply(Vec<Op>, oneshot::Sender<StoreResult<BatchOutcome>>),
    Append(String, Vec<u8>, oneshot::Sender<StoreResult<u64>>),
}

/// The embedded backend.
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Let the writer finish what is queued and release the file.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn encode(revision: u64, ttl: Option<Duration>, payload: &[u8]) -> Vec<u8> {
    let expires = ttl.map(|t| now_ms() + t.as_millis() as i64).unwrap_or(0);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decode a stored value; expired entries read as absent.
fn decode(raw: &[u8], now: i64) -> StoreResult<Option<Entry>> {
    if raw.len() < HEADER {
        return Err(StoreError::Corrupt("entry shorter than its header".into()));
    }
    let revision = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let expires = i64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    if expires != 0 && expires <= now {
        return Ok(None);
    }
    Ok(Some(Entry { value: raw[HEADER..].to_vec(), revision }))
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Open (or create) `<dir>/cordum.redb`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = Database::create(dir.join("cordum.redb")).map_err(unavailable)?;
        {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.open_table(KV).map_err(unavailable)?;
            txn.open_table(STREAMS).map_err(unavailable)?;
            txn.commit().map_err(unavailable)?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_db, rx))
            .map_err(unavailable)?;
        Ok(Self { db, writer: Some(tx), thread: Some(thread) })
    }

    fn send(&self, req: WriteRequest) -> StoreResult<()> {
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store closed".into()))?
            .send(req)
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))
    }
}

fn writer_loop(db: Arc<Database>, rx: mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        commit_group(&db, group);
    }
}

enum Pending {
    Apply(oneshot::Sender<StoreResult<BatchOutcome>>, BatchOutcome),
    Append(oneshot::Sender<StoreResult<u64>>, u64),
}

fn commit_group(db: &Database, group: Vec<WriteRequest>) {
    let mut answers: Vec<Pending> = Vec::with_capacity(group.len());
    let mut failed_senders = Vec::new();
    let result: Result<(), StoreError> = (|| {
        let txn = db.begin_write().map_err(unavailable)?;
        {
            let mut kv = txn.open_table(KV).map_err(unavailable)?;
            let mut streams = txn.open_table(STREAMS).map_err(unavailable)?;
            let now = now_ms();
            for req in group {
                match req {
                    WriteRequest::Apply(ops, reply) => {
                        let outcome = apply_batch(&mut kv, &ops, now);
                        match outcome {
                            Ok(o) => answers.push(Pending::Apply(reply, o)),
                            Err(e) => {
                                // A storage error mid-group: abandon the whole transaction.
                                failed_senders.push(reply);
                                return Err(e);
                            }
                        }
                    }
                    WriteRequest::Append(stream, value, reply) => {
                        let last = streams
                            .range((stream.as_str(), 0)..=(stream.as_str(), u64::MAX))
                            .map_err(unavailable)?
                            .next_back()
                            .transpose()
                            .map_err(unavailable)?
                            .map(|(k, _)| k.value().1)
                            .unwrap_or(0);
                        let seq = last + 1;
                        streams.insert((stream.as_str(), seq), value.as_slice()).map_err(unavailable)?;
                        answers.push(Pending::Append(reply, seq));
                    }
                }
            }
        }
        txn.commit().map_err(unavailable)
    })();
    match result {
        Ok(()) => {
            for a in answers {
                match a {
                    Pending::Apply(tx, o) => {
                        let _ = tx.send(Ok(o));
                    }
                    Pending::Append(tx, seq) => {
                        let _ = tx.send(Ok(seq));
                    }
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for a in answers {
                match a {
                    Pending::Apply(tx, _) => {
                        let _ = tx.send(Err(StoreError::Unavailable(msg.clone())));
                    }
                    Pending::Append(tx, _) => {
                        let _ = tx.send(Err(StoreError::Unavailable(msg.clone())));
                    }
                }
            }
            for tx in failed_senders {
                let _ = tx.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

fn apply_batch(kv: &mut redb::Table<&str, &[u8]>, ops: &[Op], now: i64) -> StoreResult<BatchOutcome> {
    // Check every condition first so a batch is all-or-nothing.
    let mut current = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let existing = match kv.get(op.key()).map_err(unavailable)? {
            Some(raw) => decode(raw.value(), now)?,
            None => None,
        };
        let rev = existing.as_ref().map(|e| e.revision).unwrap_or(0);
        let ok = match op {
            Op::PutIfAbsent { .. } => existing.is_none(),
            Op::PutIfRevision { expected, .. }
            | Op::DeleteIfRevision { expected, .. }
            | Op::RequireRevision { expected, .. } => rev == *expected,
            Op::Put { .. } | Op::Delete { .. } => true,
        };
        if !ok {
            return Ok(BatchOutcome::Conflict { index, current: existing });
        }
        current.push(rev);
    }
    let mut revisions = Vec::with_capacity(ops.len());
    for (op, rev) in ops.iter().zip(current) {
        match op {
            Op::Put { key, value, ttl }
            | Op::PutIfAbsent { key, value, ttl }
            | Op::PutIfRevision { key, value, ttl, .. } => {
                let new_rev = rev + 1;
                kv.insert(key.as_str(), encode(new_rev, *ttl, value).as_slice()).map_err(unavailable)?;
                revisions.push(new_rev);
            }
            Op::Delete { key } | Op::DeleteIfRevision { key, .. } => {
                kv.remove(key.as_str()).map_err(unavailable)?;
                revisions.push(0);
            }
            Op::RequireRevision { .. } => revisions.push(rev),
        }
    }
    Ok(BatchOutcome::Applied(revisions))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn health(&self) -> StoreResult<()> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        txn.open_table(KV).map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(KV).map_err(unavailable)?;
        match table.get(key).map_err(unavailable)? {
            Some(raw) => decode(raw.value(), now_ms()),
            None => Ok(None),
        }
    }

    async fn scan(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> StoreResult<Vec<(String, Entry)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(KV).map_err(unavailable)?;
        let start = start_after.unwrap_or(prefix);
        let now = now_ms();
        let mut out = Vec::new();
        for item in table.range(start..).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if Some(key) == start_after {
                continue;
            }
            if let Some(entry) = decode(v.value(), now)? {
                out.push((key.to_string(), entry));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<BatchOutcome> {
        let (tx, rx) = oneshot::channel();
        self.send(WriteRequest::Apply(ops, tx))?;
        rx.await.map_err(|_| StoreError::Unavailable("store writer dropped the request".into()))?
    }

    async fn append(&self, stream: &str, value: Vec<u8>) -> StoreResult<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(WriteRequest::Append(stream.to_string(), value, tx))?;
        rx.await.map_err(|_| StoreError::Unavailable("store writer dropped the request".into()))?
    }

    async fn read_stream(&self, stream: &str, from: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(STREAMS).map_err(unavailable)?;
        let mut out = Vec::new();
        for item in table.range((stream, from.max(1))..=(stream, u64::MAX)).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            out.push((k.value().1, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_is_all_or_nothing_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let out = store
                .apply(vec![
                    Op::PutIfAbsent { key: "a".into(), value: b"1".to_vec(), ttl: None },
                    Op::Put { key: "b".into(), value: b"2".to_vec(), ttl: None },
                ])
                .await
                .unwrap();
            assert_eq!(out, BatchOutcome::Applied(vec![1, 1]));
            // Second create-if-absent conflicts and the Put beside it is not applied.
            let out = store
                .apply(vec![
                    Op::Put { key: "c".into(), value: b"3".to_vec(), ttl: None },
                    Op::PutIfAbsent { key: "a".into(), value: b"x".to_vec(), ttl: None },
                ])
                .await
                .unwrap();
            assert!(matches!(out, BatchOutcome::Conflict { index: 1, .. }));
            assert!(store.get("c").await.unwrap().is_none());
            // Compare-and-set.
            let out = store
                .apply(vec![Op::PutIfRevision { key: "b".into(), value: b"22".to_vec(), expected: 1, ttl: None }])
                .await
                .unwrap();
            assert_eq!(out, BatchOutcome::Applied(vec![2]));
            assert_eq!(store.append("s", b"x".to_vec()).await.unwrap(), 1);
            assert_eq!(store.append("s", b"y".to_vec()).await.unwrap(), 2);
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap().value, b"22");
        assert_eq!(store.read_stream("s", 1, 10).await.unwrap().len(), 2);
        assert_eq!(store.scan("", None, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_required_revision_guards_a_batch_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.apply(vec![Op::Put { key: "run".into(), value: b"open".to_vec(), ttl: None }]).await.unwrap();
        let guarded = |expected| {
            vec![
                Op::RequireRevision { key: "run".into(), expected },
                Op::Put { key: "job".into(), value: b"approved".to_vec(), ttl: None },
            ]
        };
        // The guarded key changed: nothing is written.
        store.apply(vec![Op::Put { key: "run".into(), value: b"cancelled".to_vec(), ttl: None }]).await.unwrap();
        assert!(matches!(store.apply(guarded(1)).await.unwrap(), BatchOutcome::Conflict { index: 0, .. }));
        assert!(store.get("job").await.unwrap().is_none());
        // Unchanged: the batch applies and the guarded key keeps its revision.
        assert_eq!(store.apply(guarded(2)).await.unwrap(), BatchOutcome::Applied(vec![2, 1]));
        assert_eq!(store.get("run").await.unwrap().unwrap().revision, 2);
    }

    #[tokio::test]
    async fn expired_entries_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .apply(vec![Op::Put { key: "t".into(), value: b"v".to_vec(), ttl: Some(Duration::from_millis(1)) }])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.get("t").await.unwrap().is_none());
        let out =
            store.apply(vec![Op::PutIfAbsent { key: "t".into(), value: b"w".to_vec(), ttl: None }]).await.unwrap();
        assert!(matches!(out, BatchOutcome::Applied(_)));
    }
}
