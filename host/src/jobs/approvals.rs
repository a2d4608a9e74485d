//! Approvals of jobs the policy held: list, approve, reject, repair.
//!
//! Race-safe and idempotent: a decision is a compare-and-set on the job's
//! revision that only succeeds from APPROVAL_REQUIRED, so among parallel
//! calls exactly one decides and the job is dispatched at most once; a
//! repeated approve answers the recorded outcome. The key or principal that
//! submitted a job cannot approve it. Before dispatch the current policy is
//! checked again: if it now denies, the job is not dispatched.

use super::lifecycle::{JobPage, resubmission};
use super::model::{ApprovalRecord, JobFailure, JobLinks, JobRecord, JobState};
use super::repo::{JobRepo, RepoError, approval_prefix, workflow_run_of};
use super::steps::is_gate;
use super::submit::{JobError, JobService, SubmitExtras, SubmitOutcome};
use crate::auth::AuthContext;
use crate::policy::{DecisionKind, PolicyRequest};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// What an approve or reject did.
#[derive(Debug, Clone)]
pub enum ApprovalOutcome {
    Approved { job_id: String, trace_id: String },
    AlreadyApproved { job_id: String, trace_id: String, by: String, at: DateTime<Utc> },
    Rejected { job_id: String },
    AlreadyRejected { job_id: String, by: String, at: DateTime<Utc> },
}

fn key_part(submitted_by: &str) -> &str {
    submitted_by.split('|').next().unwrap_or("")
}

fn principal_part(submitted_by: &str) -> Option<&str> {
    submitted_by.split('|').find_map(|p| p.strip_prefix("principal:"))
}

/// Did `caller` submit `job` (same key, or same principal)?
fn is_submitter(caller: &AuthContext, job: &JobRecord) -> bool {
    let mine = caller.submitted_by();
    key_part(&mine) == key_part(&job.submitted_by)
        || matches!((principal_part(&mine), principal_part(&job.submitted_by)), (Some(a), Some(b)) if a == b)
}

pub(super) fn policy_request(job: &JobRecord) -> PolicyRequest {
    PolicyRequest {
        job_id: job.id.clone(),
        topic: job.topic.clone(),
        tenant: job.tenant.clone(),
        principal_id: job.principal_id.clone(),
        actor_id: job.actor_id.clone(),
        actor_type: job.actor_type.clone(),
        capability: job.capability.clone(),
        risk_tags: job.risk_tags.clone(),
        requires: job.requires.clone(),
        pack_id: job.pack_id.clone(),
        labels: job.labels.clone(),
    }
}

fn not_awaiting(job: &JobRecord) -> JobError {
    let resolved = job.approval.is_some() || job.state.is_terminal();
    JobError::Conflict {
        code: if resolved { "approval_already_resolved" } else { "approval_not_actionable" },
        message: if resolved {
            format!("approval already resolved (job is {})", job.state.as_str())
        } else {
            format!("job not awaiting approval (job is {})", job.state.as_str())
        },
        state: Some(job.state),
    }
}

/// What an approve answers once a decision is recorded: the approval again,
/// or a conflict if the job was rejected.
fn approve_answer(done: ApprovalOutcome, job: &JobRecord) -> Result<ApprovalOutcome, JobError> {
    match done {
        ApprovalOutcome::AlreadyApproved { .. } => Ok(done),
        _ => Err(not_awaiting(job)),
    }
}

impl JobService {
    /// Held jobs of the tenant.
    pub async fn approvals(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> Result<JobPage, JobError> {
        let prefix = approval_prefix(tenant);
        let after = cursor.map(|c| format!("{prefix}{c}"));
        let page = self.repo.store().scan(&prefix, after.as_deref(), limit + 1).await?;
        let more = page.len() > limit;
        let mut items = Vec::new();
        let mut last = None;
        for (key, _) in page.into_iter().take(limit) {
            let id = key[prefix.len()..].to_string();
            if let Some((job, _)) = self.repo.get(&id).await?
                && job.state == JobState::ApprovalRequired
                && job.tenant == tenant
            {
                items.push(job);
            }
            last = Some(id);
        }
        Ok(JobPage { items, next_cursor: if more { last } else { None } })
    }

    fn approval_record(
        &self,
        caller: &AuthContext,
        status: &str,
        reason: &str,
        note: &str,
        snapshot: &str,
    ) -> ApprovalRecord {
        ApprovalRecord {
            status: status.into(),
            by: caller.principal_id.clone().unwrap_or_else(|| caller.key_id.clone()),
            role: caller.role.as_str().into(),
            at: Utc::now(),
            reason: reason.chars().take(1024).collect(),
            note: note.chars().take(4096).collect(),
            policy_snapshot: snapshot.into(),
        }
    }

    pub async fn approve(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        reason: &str,
        note: &str,
    ) -> Result<ApprovalOutcome, JobError> {
        let job = self.get(tenant, id).await?;
        if let Some(done) = self.recorded(&job)? {
            return approve_answer(done, &job);
        }
        if job.state != JobState::ApprovalRequired {
            return Err(not_awaiting(&job));
        }
        if is_submitter(caller, &job) {
            return Err(JobError::Forbidden("self-approval not permitted"));
        }
        self.run_open_guard(&job).await?;
        if is_gate(&job) {
            return self.open_gate(caller, &job, reason, note).await;
        }
        // The policy may have changed since the job was held. A dry run:
        // the submit already counted this job against velocity rules.
        let current = self
            .policy
            .simulate(tenant, &policy_request(&job))
            .map_err(|e| JobError::PolicyUnavailable(e.to_string()))?;
        if matches!(current.decision, DecisionKind::Deny | DecisionKind::Throttle) {
            let record = self.approval_record(caller, "invalidated", reason, note, &current.policy_snapshot);
            let why = format!(
                "the current policy {} this job (rule {:?}: {})",
                if current.decision == DecisionKind::Deny { "denies" } else { "throttles" },
                current.rule_id,
                current.reason
            );
            let (_, changed) = self
                .decide(&job, |j| {
                    j.state == JobState::ApprovalRequired && {
                        j.approval = Some(record.clone());
                        j.error = Some(JobFailure { code: "approval_policy_denied".into(), message: why.clone() });
                        j.transition(JobState::Denied, Some(why.clone())).is_ok()
                    }
                })
                .await?;
            if !changed {
                return self.approve_after_race(id).await;
            }
            return Err(JobError::Conflict {
                code: "approval_policy_denied",
                message: why,
                state: Some(JobState::Denied),
            });
        }
        let record = self.approval_record(caller, "approved", reason, note, &current.policy_snapshot);
        let (job, changed) = self
            .decide(&job, |j| {
                j.state == JobState::ApprovalRequired && {
                    j.approval = Some(record.clone());
                    j.labels.insert("approval_granted".into(), "true".into());
                    j.transition(JobState::Scheduled, Some(format!("approved by {}", record.by))).is_ok()
                }
            })
            .await?;
        if !changed {
            return self.approve_after_race(id).await;
        }
        self.dispatcher.publish(&job).await;
        Ok(ApprovalOutcome::Approved { job_id: job.id, trace_id: job.trace_id })
    }

    pub async fn reject(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        reason: &str,
        note: &str,
    ) -> Result<ApprovalOutcome, JobError> {
        let job = self.get(tenant, id).await?;
        if let Some(done) = self.recorded(&job)? {
            return match done {
                ApprovalOutcome::AlreadyApproved { .. } => Err(not_awaiting(&job)),
                other => Ok(other),
            };
        }
        if job.state != JobState::ApprovalRequired {
            return Err(not_awaiting(&job));
        }
        let snapshot = self.policy.active().id.clone();
        let record = self.approval_record(caller, "rejected", reason, note, &snapshot);
        let message = if reason.trim().is_empty() { "rejected by approver".to_string() } else { reason.to_string() };
        let (job, changed) = self
            .decide(&job, |j| {
                j.state == JobState::ApprovalRequired && {
                    j.approval = Some(record.clone());
                    j.error = Some(JobFailure { code: "approval_rejected".into(), message: message.clone() });
                    j.transition(JobState::Denied, Some(format!("rejected by {}", record.by))).is_ok()
                }
            })
            .await?;
        if !changed {
            return match self.after_race(id).await? {
                ApprovalOutcome::AlreadyApproved { .. } => {
                    let (job, _) = self.repo.get(id).await?.ok_or(JobError::NotFound)?;
                    Err(not_awaiting(&job))
                }
                other => Ok(other),
            };
        }
        Ok(ApprovalOutcome::Rejected { job_id: job.id })
    }

    /// Approve a workflow approval gate: the gate job succeeds (there is
    /// nothing to dispatch) and the run goes on.
    async fn open_gate(
        &self,
        caller: &AuthContext,
        job: &JobRecord,
        reason: &str,
        note: &str,
    ) -> Result<ApprovalOutcome, JobError> {
        let id = job.id.as_str();
        let record = self.approval_record(caller, "approved", reason, note, &self.policy.active().id);
        let result = serde_json::json!({"approved": true, "by": record.by, "reason": record.reason});
        let (job, changed) = self
            .decide(job, |j| {
                j.state == JobState::ApprovalRequired && {
                    j.approval = Some(record.clone());
                    j.result = Some(result.clone());
                    j.transition(JobState::Succeeded, Some(format!("approved by {}", record.by))).is_ok()
                }
            })
            .await?;
        if !changed {
            return self.approve_after_race(id).await;
        }
        Ok(ApprovalOutcome::Approved { job_id: job.id, trace_id: job.trace_id })
    }

    /// Record a decision on a held job: a compare-and-set on the job, applied
    /// together with "its workflow run is still as read" so that a decision
    /// never lands after the run ended (a run that changed is read again,
    /// and one that ended refuses the decision).
    async fn decide<F>(&self, job: &JobRecord, mut change: F) -> Result<(JobRecord, bool), JobError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        for _ in 0..32 {
            let guard = self.run_open_guard(job).await?;
            match self.repo.update_with(&job.id, &mut change, |_| guard.clone()).await {
                Err(RepoError::GuardChanged(_)) => continue,
                other => return other.map_err(JobError::from),
            }
        }
        Err(RepoError::Contended(job.id.clone()).into())
    }

    /// The outcome an earlier decision recorded, if any.
    fn recorded(&self, job: &JobRecord) -> Result<Option<ApprovalOutcome>, JobError> {
        Ok(match job.approval.as_ref().map(|a| (a.status.as_str(), a)) {
            Some(("approved", a)) => Some(ApprovalOutcome::AlreadyApproved {
                job_id: job.id.clone(),
                trace_id: job.trace_id.clone(),
                by: a.by.clone(),
                at: a.at,
            }),
            Some(("rejected", a)) => {
                Some(ApprovalOutcome::AlreadyRejected { job_id: job.id.clone(), by: a.by.clone(), at: a.at })
            }
            Some(_) => return Err(not_awaiting(job)),
            None => None,
        })
    }

    /// An approve that lost to another decision: the same answer as a
    /// repeated approve (approved) or a conflict (anything else).
    async fn approve_after_race(&self, id: &str) -> Result<ApprovalOutcome, JobError> {
        let (job, _) = self.repo.get(id).await?.ok_or(JobError::NotFound)?;
        match self.recorded(&job)? {
            Some(done) => approve_answer(done, &job),
            None => Err(not_awaiting(&job)),
        }
    }

    /// Another call decided first: answer with what it decided.
    async fn after_race(&self, id: &str) -> Result<ApprovalOutcome, JobError> {
        let (job, _) = self.repo.get(id).await?.ok_or(JobError::NotFound)?;
        match self.recorded(&job)? {
            Some(done) => Ok(done),
            None => Err(not_awaiting(&job)),
        }
    }

    /// Replace the input of a held job (or of an approval job that ended
    /// denied or failed), re-validate and re-evaluate it as a new job linked
    /// both ways to the old one; the held original is closed as repaired.
    pub async fn repair(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        input: Option<serde_json::Value>,
        note: &str,
    ) -> Result<SubmitOutcome, JobError> {
        self.get(tenant, id).await?;
        let (job, revision) = self.repo.get(id).await?.ok_or(JobError::NotFound)?;
        not_repairable(&job)?;
        let mut body = resubmission(&job);
        if let Some(input) = input {
            body.input = Some(input);
        }
        // The replacement is created in one batch with the original's close
        // (a compare-and-set on it): an approve or reject that got there
        // first makes the repair fail, and the other way round.
        let new_id = uuid::Uuid::new_v4().to_string();
        let mut closed = job.clone();
        closed.links.repaired_as = Some(new_id.clone());
        if closed.state == JobState::ApprovalRequired {
            closed.approval = Some(self.approval_record(caller, "repaired", "", note, &self.policy.active().id));
            let _ = closed.transition(JobState::Cancelled, Some(format!("repaired as {new_id}")));
        }
        let extras = SubmitExtras {
            labels: BTreeMap::from([("repair_of".to_string(), job.id.clone())]),
            links: JobLinks { repair_of: Some(job.id.clone()), ..Default::default() },
            ops: JobRepo::replace_ops(&closed, revision),
            job_id: Some(new_id),
            resubmission: true,
        };
        match self.submit_with(caller, tenant, body, None, extras).await {
            Err(JobError::Raced) => {
                let (now, _) = self.repo.get(id).await?.ok_or(JobError::NotFound)?;
                Err(not_repairable(&now).err().unwrap_or(JobError::Conflict {
                    code: "approval_already_resolved",
                    message: format!("the job changed while it was being repaired (job is {})", now.state.as_str()),
                    state: Some(now.state),
                }))
            }
            Ok(outcome) => {
                if closed.state.is_terminal() {
                    self.repo.waiters().notify(id);
                }
                Ok(outcome)
            }
            Err(e) => Err(e),
        }
    }
}

/// Why a job cannot be repaired, if it cannot: a workflow's job (rerun the
/// run instead), one repaired already, or one that is neither held nor an
/// approval job that ended denied, failed or timed out.
fn not_repairable(job: &JobRecord) -> Result<(), JobError> {
    if workflow_run_of(job).is_some() {
        return Err(JobError::Conflict {
            code: "not_repairable",
            message: "this job belongs to a workflow run; rerun the run from its step instead".into(),
            state: Some(job.state),
        });
    }
    if job.links.repaired_as.is_some() {
        return Err(JobError::Conflict {
            code: "already_repaired",
            message: "this job was already repaired".into(),
            state: Some(job.state),
        });
    }
    let repairable = job.state == JobState::ApprovalRequired
        || (job.approval.is_some() && matches!(job.state, JobState::Denied | JobState::Failed | JobState::Timeout));
    if !repairable {
        return Err(JobError::Conflict {
            code: "not_repairable",
            message: format!("approval does not require repair (job is {})", job.state.as_str()),
            state: Some(job.state),
        });
    }
    Ok(())
}
