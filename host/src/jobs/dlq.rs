//! The dead-letter queue: jobs that failed for good (retries exhausted, or a
//! failure retrying cannot fix), one entry per job under
//! `dlq:<tenant>:<job_id>`, written atomically with the job's final state.

use super::model::JobRecord;
use super::repo::workflow_run_of;
use crate::store::{Op, to_json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub fn entry_key(tenant: &str, job_id: &str) -> String {
    format!("dlq:{tenant}:{job_id}")
}

pub fn tenant_prefix(tenant: &str) -> String {
    format!("dlq:{tenant}:")
}

/// Marker of a DLQ retry, so parallel retries make exactly one new job.
pub fn retry_marker_key(tenant: &str, job_id: &str) -> String {
    format!("dlqretry:{tenant}:{job_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqEntry {
    pub job_id: String,
    pub tenant: String,
    pub topic: String,
    pub pack_id: String,
    pub error_code: String,
    pub error_message: String,
    pub attempts: u32,
    pub last_state: String,
    pub failed_at: DateTime<Utc>,
}

impl DlqEntry {
    pub fn from_job(job: &JobRecord) -> DlqEntry {
        let (code, message) = job
            .error
            .as_ref()
            .map(|e| (e.code.clone(), e.message.clone()))
            .unwrap_or_else(|| ("unknown".into(), String::new()));
        DlqEntry {
            job_id: job.id.clone(),
            tenant: job.tenant.clone(),
            topic: job.topic.clone(),
            pack_id: job.pack_id.clone(),
            error_code: code,
            error_message: message,
            attempts: job.attempts,
            last_state: job.state.as_str().to_string(),
            failed_at: job.updated_at,
        }
    }

    pub fn put_op(&self) -> Op {
        Op::Put { key: entry_key(&self.tenant, &self.job_id), value: to_json(self), ttl: None }
    }
}

/// The ops that dead-letter a job that failed for good. A workflow step's
/// job is not dead-lettered: its run records the failure (and retries the
/// step as its definition says), and rerunning the run from that step is
/// how it is retried, never a job of its own outside the run.
pub fn dead_letter(job: &JobRecord) -> Vec<Op> {
    if workflow_run_of(job).is_some() { Vec::new() } else { vec![DlqEntry::from_job(job).put_op()] }
}

use super::lifecycle::{outcome_job_id, resubmission};
use super::model::JobLinks;
use super::submit::{JobError, JobService, SubmitExtras, SubmitOutcome};
use crate::auth::AuthContext;
use crate::store::BatchOutcome;
use rand::RngCore;
use std::collections::BTreeMap;

/// A page of DLQ entries.
pub struct DlqPage {
    pub items: Vec<DlqEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RetryMarker {
    job_id: String,
}

impl JobService {
    pub async fn dlq_list(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> Result<DlqPage, JobError> {
        let prefix = tenant_prefix(tenant);
        let after = cursor.map(|c| format!("{prefix}{c}"));
        let page = self.repo.store().scan(&prefix, after.as_deref(), limit + 1).await?;
        let more = page.len() > limit;
        let mut items = Vec::new();
        for (_, entry) in page.into_iter().take(limit) {
            items.push(entry.json::<DlqEntry>()?);
        }
        let next_cursor = if more { items.last().map(|e| e.job_id.clone()) } else { None };
        Ok(DlqPage { items, next_cursor })
    }

    /// Retry a dead-lettered job as a new job (policy and schema checked
    /// again). Parallel retries of one entry make exactly one new job; every
    /// caller gets its id.
    pub async fn dlq_retry(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
    ) -> Result<(SubmitOutcome, bool), JobError> {
        let marker = retry_marker_key(tenant, id);
        if let Some(done) = self.repo.store().get(&marker).await? {
            return self.replayed_retry(done.json::<RetryMarker>()?.job_id).await;
        }
        let key = entry_key(tenant, id);
        let Some(entry) = self.repo.store().get(&key).await? else {
            // A parallel retry may have won between the two reads: its
            // marker is written in the same batch that removed the entry.
            if let Some(done) = self.repo.store().get(&marker).await? {
                return self.replayed_retry(done.json::<RetryMarker>()?.job_id).await;
            }
            return Err(JobError::NotFoundWhat("dlq entry not found"));
        };
        let job = self.get(tenant, id).await?;
        if workflow_run_of(&job).is_some() {
            return Err(JobError::Conflict {
                code: "not_retryable",
                message: "this job belongs to a workflow run; rerun the run from its step instead".into(),
                state: Some(job.state),
            });
        }
        let mut suffix = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut suffix);
        let new_id = format!("{id}-retry-{}", hex::encode(suffix));
        let extras = SubmitExtras {
            labels: BTreeMap::from([
                ("retry".to_string(), "true".to_string()),
                ("retry_of".to_string(), id.to_string()),
            ]),
            links: JobLinks { retry_of: Some(id.to_string()), ..Default::default() },
            ops: vec![
                Op::DeleteIfRevision { key: key.clone(), expected: entry.revision },
                Op::PutIfAbsent {
                    key: marker.clone(),
                    value: to_json(&RetryMarker { job_id: new_id.clone() }),
                    ttl: None,
                },
            ],
            job_id: Some(new_id.clone()),
            resubmission: true,
        };
        let outcome = match self.submit_with(caller, tenant, resubmission(&job), None, extras).await {
            Err(JobError::Raced) => {
                let done = self.repo.store().get(&marker).await?.ok_or(JobError::Raced)?;
                return self.replayed_retry(done.json::<RetryMarker>()?.job_id).await;
            }
            other => other?,
        };
        let created = outcome_job_id(&outcome).to_string();
        self.repo
            .update(id, |j| {
                j.links.retried_as = Some(created.clone());
                true
            })
            .await?;
        Ok((outcome, true))
    }

    async fn replayed_retry(&self, job_id: String) -> Result<(SubmitOutcome, bool), JobError> {
        let (job, _) = self.repo.get(&job_id).await?.ok_or(JobError::NotFound)?;
        Ok((SubmitOutcome::Accepted { job_id: job.id, trace_id: job.trace_id }, false))
    }

    pub async fn dlq_delete(&self, tenant: &str, id: &str) -> Result<(), JobError> {
        let key = entry_key(tenant, id);
        let entry = self.repo.store().get(&key).await?.ok_or(JobError::NotFoundWhat("dlq entry not found"))?;
        match self.repo.store().apply(vec![Op::DeleteIfRevision { key, expected: entry.revision }]).await? {
            BatchOutcome::Applied(_) => Ok(()),
            BatchOutcome::Conflict { .. } => Err(JobError::NotFoundWhat("dlq entry not found")),
        }
    }
}
