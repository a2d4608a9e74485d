//! Listing, cancelling and remediating jobs.

use super::model::{JobLinks, JobRecord, JobState};
use super::repo::{index_prefix, job_key};
use super::submit::{JobError, JobService, SubmitExtras, SubmitJob, SubmitMeta, SubmitOutcome};
use crate::auth::AuthContext;
use crate::store::Op;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A page of jobs, newest first.
pub struct JobPage {
    pub items: Vec<JobRecord>,
    pub next_cursor: Option<String>,
}

/// Filters of a job listing.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub topic: Option<String>,
}

/// Rebuild a submit body from a stored job (for remediation, retry, repair).
pub(super) fn resubmission(job: &JobRecord) -> SubmitJob {
    let labels: BTreeMap<String, String> = job
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !k.starts_with("approval_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    SubmitJob {
        topic: Some(job.topic.clone()),
        input: Some(job.input.clone()),
        prompt: job.prompt.clone(),
        priority: Some(job.priority.clone()),
        principal_id: Some(job.principal_id.clone()).filter(|p| !p.is_empty()),
        actor_id: Some(job.actor_id.clone()).filter(|p| !p.is_empty()),
        actor_type: Some(job.actor_type.clone()).filter(|p| !p.is_empty()),
        capability: Some(job.capability.clone()).filter(|p| !p.is_empty()),
        risk_tags: job.risk_tags.clone(),
        requires: job.requires.clone(),
        labels,
        meta: Some(SubmitMeta::default()),
        ..Default::default()
    }
}

/// A job listing cursor is an index position: 20 digits, `:`, a job id.
fn valid_cursor(cursor: &str) -> bool {
    match cursor.split_once(':') {
        Some((time, id)) => time.len() == 20 && time.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty(),
        None => false,
    }
}

impl JobService {
    /// The tenant's jobs, newest first, `limit` per page. A page scans a
    /// bounded number of jobs (50 × `limit`), so a filtered page may hold
    /// fewer items than `limit`, even none, and still carry a `next_cursor`.
    pub async fn list(
        &self,
        tenant: &str,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobError> {
        if let Some(c) = cursor.filter(|c| !valid_cursor(c)) {
            return Err(JobError::Invalid(format!(
                "invalid cursor {c:?}: pass back a next_cursor this listing returned"
            )));
        }
        let prefix = index_prefix(tenant);
        let mut after = cursor.map(|c| format!("{prefix}{c}"));
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut next_cursor = None;
        'pages: loop {
            let page = self.repo.store().scan(&prefix, after.as_deref(), 256).await?;
            if page.is_empty() {
                break;
            }
            for (key, entry) in page {
                after = Some(key.clone());
                scanned += 1;
                let id = String::from_utf8_lossy(&entry.value).to_string();
                let Some((job, _)) = self.repo.get(&id).await? else { continue };
                let keep = filter.state.is_none_or(|s| job.state == s)
                    && filter.topic.as_deref().is_none_or(|t| job.topic == t);
                if keep {
                    items.push(job);
                }
                if items.len() >= limit || scanned >= limit.max(1) * 50 {
                    next_cursor = Some(key[prefix.len()..].to_string());
                    break 'pages;
                }
            }
        }
        // No cursor when the scan reached the end.
        if let Some(c) = &next_cursor {
            let more = self.repo.store().scan(&prefix, Some(&format!("{prefix}{c}")), 1).await?;
            if more.is_empty() {
                next_cursor = None;
            }
        }
        Ok(JobPage { items, next_cursor })
    }

    /// Cancel a job: a queued one never runs, a running one is interrupted.
    /// Cancelling a cancelled job answers the same again; any other finished
    /// job is a conflict naming its state.
    pub async fn cancel(&self, caller: &AuthContext, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
        self.get(tenant, id).await?;
        let note = format!("cancelled via api by {}", caller.key_id);
        let (job, changed) = self
            .repo
            .update(id, |j| !j.state.is_terminal() && j.transition(JobState::Cancelled, Some(note.clone())).is_ok())
            .await?;
        if changed {
            self.dispatcher.interrupt(id);
            return Ok(job);
        }
        match job.state {
            JobState::Cancelled => Ok(job),
            state => Err(JobError::Conflict {
                code: "job_already_terminal",
                message: format!("job already {}", state.as_str()),
                state: Some(state),
            }),
        }
    }

    /// Apply one of the remediations the policy offered with a denial and
    /// submit the result as a new job, linked both ways to the original.
    pub async fn remediate(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        remediation_id: Option<&str>,
    ) -> Result<(SubmitOutcome, String), JobError> {
        let job = self.get(tenant, id).await?;
        let offered = job.safety.as_ref().map(|s| s.decision.remediations.clone()).unwrap_or_default();
        if offered.is_empty() {
            return Err(JobError::Conflict {
                code: "no_remediations",
                message: "no remediations available".into(),
                state: Some(job.state),
            });
        }
        let chosen = match remediation_id.map(str::trim).filter(|r| !r.is_empty()) {
            Some(rid) => offered
                .iter()
                .find(|r| r.id == rid)
                .cloned()
                .ok_or_else(|| JobError::Invalid(format!("remediation {rid:?} was not offered for this job")))?,
            None if offered.len() == 1 => offered[0].clone(),
            None => return Err(JobError::Invalid("remediation_id required: several remediations were offered".into())),
        };
        let mut body = resubmission(&job);
        if !chosen.replacement_topic.is_empty() {
            body.topic = Some(chosen.replacement_topic.clone());
        }
        if !chosen.replacement_capability.is_empty() {
            body.capability = Some(chosen.replacement_capability.clone());
        } else if body.topic.as_deref() != Some(job.topic.as_str()) {
            body.capability = None; // the new topic's own capability applies
        }
        for (k, v) in &chosen.add_labels {
            body.labels.insert(k.clone(), v.clone());
        }
        for k in &chosen.remove_labels {
            body.labels.remove(k);
        }
        // One remediation of a job makes one new job: a repeated (or
        // parallel) call answers with the job the first one made.
        let marker = format!("remediated:{tenant}:{id}:{}", hex::encode(Sha256::digest(chosen.id.as_bytes())));
        if let Some(done) = self.repo.store().get(&marker).await? {
            return Ok((self.replayed(&String::from_utf8_lossy(&done.value)).await?, chosen.id));
        }
        let new_id = uuid::Uuid::new_v4().to_string();
        let extras = SubmitExtras {
            labels: BTreeMap::from([
                ("remediation_of".to_string(), job.id.clone()),
                ("remediation_id".to_string(), chosen.id.clone()),
            ]),
            links: JobLinks { remediation_of: Some(job.id.clone()), ..Default::default() },
            ops: vec![Op::PutIfAbsent { key: marker.clone(), value: new_id.as_bytes().to_vec(), ttl: None }],
            job_id: Some(new_id.clone()),
            resubmission: true,
        };
        let outcome = match self.submit_with(caller, tenant, body, None, extras).await {
            Err(JobError::Raced) => {
                let done = self.repo.store().get(&marker).await?.ok_or(JobError::Raced)?;
                return Ok((self.replayed(&String::from_utf8_lossy(&done.value)).await?, chosen.id));
            }
            other => other?,
        };
        self.repo
            .update(id, |j| {
                j.links.remediated_by.push(new_id.clone());
                true
            })
            .await?;
        Ok((outcome, chosen.id))
    }

    /// What submitting `job_id` answered, told again from the stored job.
    async fn replayed(&self, job_id: &str) -> Result<SubmitOutcome, JobError> {
        let (job, _) = self.repo.get(job_id).await?.ok_or(JobError::NotFound)?;
        let decision = job.safety.map(|s| s.decision);
        Ok(match (job.history.get(1).map(|h| h.state), decision) {
            (Some(JobState::Denied), Some(decision)) => {
                SubmitOutcome::Denied { job_id: job.id, trace_id: job.trace_id, decision }
            }
            (Some(JobState::ApprovalRequired), Some(decision)) => SubmitOutcome::ApprovalRequired {
                job_id: job.id,
                trace_id: job.trace_id,
                reason: decision.reason,
                rule_id: decision.rule_id,
            },
            _ => SubmitOutcome::Accepted { job_id: job.id, trace_id: job.trace_id },
        })
    }

    /// Does a stored job exist at all (any tenant)? For internal checks only.
    pub async fn exists(&self, id: &str) -> Result<bool, JobError> {
        Ok(self.repo.store().get(&job_key(id)).await?.is_some())
    }
}

pub fn outcome_job_id(outcome: &SubmitOutcome) -> &str {
    match outcome {
        SubmitOutcome::Accepted { job_id, .. }
        | SubmitOutcome::ApprovalRequired { job_id, .. }
        | SubmitOutcome::Denied { job_id, .. } => job_id,
    }
}
