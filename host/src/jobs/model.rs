//! The job record, its states and the allowed transitions (upstream's state
//! machine), with a timestamped history of every change.

use crate::policy::PolicyDecision;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    ApprovalRequired,
    Scheduled,
    Dispatched,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Timeout,
    Denied,
    OutputQuarantined,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::ApprovalRequired => "APPROVAL_REQUIRED",
            JobState::Scheduled => "SCHEDULED",
            JobState::Dispatched => "DISPATCHED",
            JobState::Running => "RUNNING",
            JobState::Retrying => "RETRYING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::Timeout => "TIMEOUT",
            JobState::Denied => "DENIED",
            JobState::OutputQuarantined => "OUTPUT_QUARANTINED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Timeout
                | JobState::Denied
                | JobState::OutputQuarantined
        )
    }

    /// Upstream's transition table.
    pub fn can_move_to(self, to: JobState) -> bool {
        use JobState::*;
        match self {
            Pending => matches!(
                to,
                ApprovalRequired
                    | Scheduled
                    | Dispatched
                    | Running
                    | Denied
                    | Failed
                    | Timeout
                    | Succeeded
                    | Cancelled
                    | Retrying
            ),
            ApprovalRequired => {
                matches!(
                    to,
                    Pending | Scheduled | Dispatched | Running | Denied | Failed | Timeout | Succeeded | Cancelled
                )
            }
            Scheduled => matches!(
                to,
                Scheduled
                    | Dispatched
                    | Running
                    | Denied
                    | Failed
                    | Timeout
                    | Succeeded
                    | Cancelled
                    | OutputQuarantined
                    | Retrying
            ),
            Dispatched => {
                matches!(
                    to,
                    Scheduled | Running | Succeeded | Failed | Cancelled | Timeout | OutputQuarantined | Retrying
                )
            }
            Running => matches!(to, Running | Succeeded | Failed | Cancelled | Timeout | OutputQuarantined | Retrying),
            Retrying => {
                matches!(to, Scheduled | Dispatched | Running | Retrying | Succeeded | Failed | Cancelled | Timeout)
            }
            Succeeded => matches!(to, OutputQuarantined),
            Failed | Cancelled | Timeout | Denied | OutputQuarantined => false,
        }
    }
}

/// The note of the RUNNING → RETRYING change a restart makes for a job it
/// interrupted (the job runs again).
pub const RESTART_NOTE: &str = "gateway restarted";

impl JobRecord {
    /// How many times a restart interrupted this job while it ran.
    pub fn restarts(&self) -> usize {
        self.history.iter().filter(|h| h.state == JobState::Retrying && h.note.as_deref() == Some(RESTART_NOTE)).count()
    }
}

/// One entry of a job's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChange {
    pub state: JobState,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The safety decision recorded on a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetyRecord {
    #[serde(flatten)]
    pub decision: PolicyDecision,
    pub checked_at: DateTime<Utc>,
}

/// Why a job did not succeed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFailure {
    pub code: String,
    pub message: String,
}

/// A stored job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub topic: String,
    pub state: JobState,
    pub trace_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The job's payload (`input`, or upstream's `context`).
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub priority: String,
    pub capability: String,
    pub risk_tags: Vec<String>,
    pub requires: Vec<String>,
    pub pack_id: String,
    pub actor_id: String,
    pub actor_type: String,
    pub principal_id: String,
    pub submitted_by: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub attempts: u32,
    pub history: Vec<StateChange>,
    #[serde(default)]
    pub safety: Option<SafetyRecord>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<JobFailure>,
    #[serde(default)]
    pub output_safety: Option<serde_json::Value>,
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Retries allowed after the first attempt (from the policy's constraints).
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default)]
    pub approval: Option<ApprovalRecord>,
    #[serde(default)]
    pub links: JobLinks,
    /// When a cancelled job's running component was actually stopped.
    #[serde(default)]
    pub interrupted_at: Option<DateTime<Utc>>,
    /// The submitter's own runtime budget (`deadline_ms`, a workflow step's
    /// `timeout_sec`); the smallest of this and the configured limits wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// How a held job was resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// `approved`, `rejected`, `invalidated` or `repaired`.
    pub status: String,
    pub by: String,
    pub role: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub note: String,
    /// Snapshot the approval was checked against.
    pub policy_snapshot: String,
}

/// Jobs derived from this one and the one it derives from, both ways.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobLinks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_of: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediated_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_as: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("job cannot move from {} to {}", .from.as_str(), .to.as_str())]
pub struct TransitionError {
    pub from: JobState,
    pub to: JobState,
}

impl JobRecord {
    /// Move to `to`, recording the change; refuses transitions the state
    /// machine does not allow.
    pub fn transition(&mut self, to: JobState, note: Option<String>) -> Result<(), TransitionError> {
        if !self.state.can_move_to(to) {
            return Err(TransitionError { from: self.state, to });
        }
        let now = Utc::now();
        if to == JobState::Running {
            self.attempts += 1;
        }
        self.state = to;
        self.updated_at = now;
        self.history.push(StateChange { state: to, at: now, note });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;

    #[test]
    fn terminal_states_are_final() {
        for s in [Failed, Cancelled, Timeout, Denied, OutputQuarantined] {
            for t in [Pending, Scheduled, Running, Succeeded] {
                assert!(!s.can_move_to(t));
            }
        }
        assert!(Succeeded.can_move_to(OutputQuarantined));
        assert!(Scheduled.can_move_to(Running));
        assert!(!Running.can_move_to(Scheduled));
    }
}
