//! What the workflow engine asks of jobs: submit a step's job under a
//! deterministic id (so a step never runs twice, even across restarts),
//! hold an approval gate, cancel a run's jobs, and a guard through which
//! approvals of jobs in a finished run are refused.

use super::model::{JobRecord, JobState, SafetyRecord, StateChange};
use super::repo::{JobRepo, RUN_LABEL, SOURCE_LABEL, workflow_run_of};
use super::submit::{JobError, JobService, SubmitExtras, SubmitJob, SubmitOutcome};
use crate::auth::AuthContext;
use crate::policy::{DecisionKind, PolicyDecision};
use crate::store::{BatchOutcome, Op};
use async_trait::async_trait;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Topic of workflow approval gates (upstream's).
pub const GATE_TOPIC: &str = "job.cordum.approval-gate";
/// Label marking an approval gate job.
pub const GATE_LABEL: &str = "gate_type";

/// Decides whether a workflow step's job may still be approved or rejected.
#[async_trait]
pub trait RunGuard: Send + Sync {
    /// `Err` (a conflict naming the run's state) when the job's run is over;
    /// otherwise the store conditions that hold while the run stays as it
    /// was read, to be applied with the decision so that a decision and a
    /// run's end never cross.
    async fn open_guard(&self, tenant: &str, run_id: &str) -> Result<Vec<Op>, JobError>;
}

/// Where a step's job comes from.
#[derive(Debug, Clone)]
pub struct StepJobRef {
    pub workflow_id: String,
    pub run_id: String,
    pub step_id: String,
}

impl StepJobRef {
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SOURCE_LABEL.to_string(), "workflow".to_string()),
            ("workflow_id".to_string(), self.workflow_id.clone()),
            (RUN_LABEL.to_string(), self.run_id.clone()),
            ("step_id".to_string(), self.step_id.clone()),
        ])
    }
}

/// Is this job a workflow approval gate?
pub fn is_gate(job: &JobRecord) -> bool {
    workflow_run_of(job).is_some() && job.labels.get(GATE_LABEL).map(String::as_str) == Some("workflow_approval")
}

impl JobService {
    /// Install the guard consulted before a step's job is approved or rejected.
    pub fn set_run_guard(&self, guard: Arc<dyn RunGuard>) {
        let _ = self.run_guard.set(guard);
    }

    /// Refuse decisions on jobs whose workflow run is over.
    pub(super) async fn run_open_guard(&self, job: &JobRecord) -> Result<Vec<Op>, JobError> {
        match (workflow_run_of(job), self.run_guard.get()) {
            (Some(run), Some(guard)) => guard.open_guard(&job.tenant, run).await,
            _ => Ok(Vec::new()),
        }
    }

    /// A job by id, whatever its tenant (the engine checks ownership).
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, JobError> {
        Ok(self.repo.get(id).await?.map(|(j, _)| j))
    }

    /// Submit a step's job under `job_id`, through schema and policy exactly
    /// like a client's job. If a job with that id exists already (a restart
    /// between recording the step and submitting), nothing is submitted and
    /// `Ok(None)` is returned.
    pub async fn submit_step(
        &self,
        caller: &AuthContext,
        tenant: &str,
        job_id: &str,
        origin: &StepJobRef,
        body: SubmitJob,
    ) -> Result<Option<SubmitOutcome>, JobError> {
        if self.repo.get(job_id).await?.is_some() {
            return Ok(None);
        }
        let extras = SubmitExtras { labels: origin.labels(), job_id: Some(job_id.to_string()), ..Default::default() };
        match self.submit_with(caller, tenant, body, None, extras).await {
            Err(JobError::Store(m)) if m == super::submit::ID_COLLISION => Ok(None),
            other => other.map(Some),
        }
    }

    /// Hold an approval gate: a job on [`GATE_TOPIC`] waiting for a human.
    /// Approving it succeeds it (nothing is dispatched); rejecting denies it.
    pub async fn hold_gate(
        &self,
        caller: &AuthContext,
        tenant: &str,
        job_id: &str,
        origin: &StepJobRef,
        context: serde_json::Value,
    ) -> Result<(), JobError> {
        let now = Utc::now();
        let reason = format!("workflow {} step {} requires approval", origin.workflow_id, origin.step_id);
        let mut labels = origin.labels();
        labels.insert(GATE_LABEL.into(), "workflow_approval".into());
        let decision = PolicyDecision {
            decision: DecisionKind::RequireApproval,
            rule_id: "workflow-approval-step".into(),
            reason: reason.clone(),
            policy_snapshot: self.policy.active().id.clone(),
            constraints: None,
            remediations: Vec::new(),
            approval_required: true,
        };
        let job = JobRecord {
            id: job_id.to_string(),
            tenant: tenant.to_string(),
            topic: GATE_TOPIC.into(),
            state: JobState::ApprovalRequired,
            trace_id: origin.run_id.clone(),
            created_at: now,
            updated_at: now,
            input: context,
            prompt: None,
            labels,
            priority: "interactive".into(),
            capability: String::new(),
            risk_tags: Vec::new(),
            requires: Vec::new(),
            pack_id: String::new(),
            actor_id: caller.principal_id.clone().unwrap_or_default(),
            actor_type: String::new(),
            principal_id: caller.principal_id.clone().unwrap_or_default(),
            submitted_by: caller.submitted_by(),
            idempotency_key: None,
            attempts: 0,
            history: vec![
                StateChange { state: JobState::Pending, at: now, note: None },
                StateChange { state: JobState::ApprovalRequired, at: now, note: Some(reason) },
            ],
            safety: Some(SafetyRecord { decision, checked_at: now }),
            result: None,
            error: None,
            output_safety: None,
            worker_id: None,
            max_retries: 0,
            approval: None,
            links: Default::default(),
            interrupted_at: None,
            timeout_ms: None,
        };
        // An existing gate (a restart in between) is kept as it is.
        match self.repo.store().apply(JobRepo::create_ops(&job)).await? {
            BatchOutcome::Applied(_) | BatchOutcome::Conflict { index: 0, .. } => Ok(()),
            BatchOutcome::Conflict { .. } => Err(JobError::Store("could not hold the approval gate".into())),
        }
    }

    /// Cancel a job of a run that ended (no-op when it already finished).
    pub async fn cancel_for_run(&self, job_id: &str, why: &str) -> Result<(), JobError> {
        let note = why.to_string();
        let result = self
            .repo
            .update(job_id, |j| !j.state.is_terminal() && j.transition(JobState::Cancelled, Some(note.clone())).is_ok())
            .await;
        match result {
            Ok((_, true)) => {
                self.dispatcher.interrupt(job_id);
                Ok(())
            }
            Ok(_) | Err(super::repo::RepoError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
