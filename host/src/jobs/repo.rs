//! Job persistence: the record under `job:<id>`, a per-tenant listing index
//! (`jobidx:<tenant>:<reverse time>:<id>`, newest first) and the set of jobs
//! still in flight (`jobactive:<id>`) that is re-dispatched after a restart.
//! Updates are compare-and-set on the record's revision.

use super::model::{JobRecord, JobState};
use crate::store::{BatchOutcome, Entry, Op, Store, StoreError, to_json};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

pub const JOB_PREFIX: &str = "job:";
pub const ACTIVE_PREFIX: &str = "jobactive:";

pub fn job_key(id: &str) -> String {
    format!("{JOB_PREFIX}{id}")
}

fn index_key(job: &JobRecord) -> String {
    let micros = job.created_at.timestamp_micros().max(0) as u64;
    format!("jobidx:{}:{:020}:{}", job.tenant, u64::MAX - micros, job.id)
}

fn active_key(id: &str) -> String {
    format!("{ACTIVE_PREFIX}{id}")
}

/// Index of jobs held for approval, per tenant.
pub fn approval_key(tenant: &str, id: &str) -> String {
    format!("approval:{tenant}:{id}")
}

pub fn approval_prefix(tenant: &str) -> String {
    format!("approval:{tenant}:")
}

pub fn index_prefix(tenant: &str) -> String {
    format!("jobidx:{tenant}:")
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {0} kept changing; gave up updating it")]
    Contended(String),
    /// A condition among the caller's extra ops failed (a record the
    /// update depends on changed); nothing was written.
    #[error("a record job {0}'s update depends on changed")]
    GuardChanged(String),
}

/// Callers waiting for jobs to finish (long-polling reads).
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Waiters {
    /// A receiver that fires when `id` reaches a terminal state.
    pub fn register(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.map.lock().entry(id.to_string()).or_default().push(tx);
        rx
    }

    /// Jobs someone is waiting on (for status).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    /// Drop waiters that gave up.
    pub fn prune(&self, id: &str) {
        let mut map = self.map.lock();
        if let Some(list) = map.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(id);
            }
        }
    }

    pub(super) fn notify(&self, id: &str) {
        if let Some(list) = self.map.lock().remove(id) {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }
}

/// Label marking a job as a workflow step's (`_` labels cannot be set by clients).
pub const SOURCE_LABEL: &str = "_source";
/// Label naming the workflow run of a step's job.
pub const RUN_LABEL: &str = "run_id";

/// The workflow run a job belongs to, if it is a step's job.
pub fn workflow_run_of(job: &JobRecord) -> Option<&str> {
    (job.labels.get(SOURCE_LABEL).map(String::as_str) == Some("workflow"))
        .then(|| job.labels.get(RUN_LABEL).map(String::as_str))
        .flatten()
}

#[derive(Clone)]
pub struct JobRepo {
    store: Arc<dyn Store>,
    waiters: Arc<Waiters>,
    /// Told the run id whenever a workflow step's job changes.
    run_listener: Arc<OnceLock<mpsc::UnboundedSender<String>>>,
}

impl JobRepo {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, waiters: Arc::new(Waiters::default()), run_listener: Arc::new(OnceLock::new()) }
    }

    /// Register the (one) listener for changes of workflow step jobs.
    pub fn listen_for_runs(&self, tx: mpsc::UnboundedSender<String>) {
        let _ = self.run_listener.set(tx);
    }

    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The ops that create a new job (record, index, in-flight marker).
    pub fn create_ops(job: &JobRecord) -> Vec<Op> {
        let mut ops = vec![
            Op::PutIfAbsent { key: job_key(&job.id), value: to_json(job), ttl: None },
            Op::Put { key: index_key(job), value: job.id.as_bytes().to_vec(), ttl: None },
        ];
        if job.state == JobState::ApprovalRequired {
            ops.push(Op::Put { key: approval_key(&job.tenant, &job.id), value: job.id.as_bytes().to_vec(), ttl: None });
        } else if !job.state.is_terminal() {
            ops.push(Op::Put { key: active_key(&job.id), value: job.tenant.as_bytes().to_vec(), ttl: None });
        }
        ops
    }

    /// The ops that replace a job stored at `revision` with `job` (record,
    /// in-flight marker, approvals listing), for a batch of the caller's.
    pub fn replace_ops(job: &JobRecord, revision: u64) -> Vec<Op> {
        let id = job.id.as_str();
        let mut ops = vec![Op::PutIfRevision { key: job_key(id), value: to_json(job), expected: revision, ttl: None }];
        if job.state.is_terminal() {
            ops.push(Op::Delete { key: active_key(id) });
        } else if job.state != JobState::ApprovalRequired {
            ops.push(Op::Put { key: active_key(id), value: job.tenant.as_bytes().to_vec(), ttl: None });
        }
        if job.state != JobState::ApprovalRequired {
            ops.push(Op::Delete { key: approval_key(&job.tenant, id) });
        }
        ops
    }

    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, u64)>, RepoError> {
        match self.store.get(&job_key(id)).await? {
            Some(Entry { value, revision }) => {
                let job: JobRecord = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Some((job, revision)))
            }
            None => Ok(None),
        }
    }

    /// Read-modify-write with compare-and-set. `change` returns false to
    /// leave the job as it is. Returns the job as stored afterwards.
    pub async fn update<F>(&self, id: &str, change: F) -> Result<(JobRecord, bool), RepoError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        self.update_with(id, change, |_| Vec::new()).await
    }

    /// [`update`](Self::update) plus `extra` ops (index entries, DLQ records,
    /// guards on other records) written atomically with the new record. A
    /// change of the job itself is retried; a failed condition among the
    /// extra ops is [`RepoError::GuardChanged`].
    pub async fn update_with<F, G>(&self, id: &str, mut change: F, extra: G) -> Result<(JobRecord, bool), RepoError>
    where
        F: FnMut(&mut JobRecord) -> bool,
        G: Fn(&JobRecord) -> Vec<Op>,
    {
        for _ in 0..32 {
            let (mut job, revision) = self.get(id).await?.ok_or_else(|| RepoError::NotFound(id.to_string()))?;
            if !change(&mut job) {
                return Ok((job, false));
            }
            let mut ops = Self::replace_ops(&job, revision);
            let extra_start = ops.len();
            ops.extend(extra(&job));
            match self.store.apply(ops).await? {
                BatchOutcome::Applied(_) => {
                    if job.state.is_terminal() {
                        self.waiters.notify(id);
                    }
                    if let (Some(run), Some(tx)) = (workflow_run_of(&job), self.run_listener.get()) {
                        let _ = tx.send(run.to_string());
                    }
                    return Ok((job, true));
                }
                BatchOutcome::Conflict { index, .. } if index >= extra_start => {
                    return Err(RepoError::GuardChanged(id.to_string()));
                }
                BatchOutcome::Conflict { .. } => continue,
            }
        }
        Err(RepoError::Contended(id.to_string()))
    }

    /// Jobs still in flight (for recovery after a restart).
    pub async fn in_flight(&self) -> Result<Vec<String>, RepoError> {
        let items = self.store.scan(ACTIVE_PREFIX, None, 1_000_000).await?;
        Ok(items.into_iter().map(|(k, _)| k[ACTIVE_PREFIX.len()..].to_string()).collect())
    }

    /// A convenience for states: is the stored job in `state`?
    pub async fn state_of(&self, id: &str) -> Result<Option<JobState>, RepoError> {
        Ok(self.get(id).await?.map(|(j, _)| j.state))
    }
}
