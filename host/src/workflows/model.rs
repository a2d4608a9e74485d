//! Workflow definitions, runs, step runs and timeline events, as stored and
//! as the API shows them (upstream field names and status strings).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A workflow definition (`POST /api/v1/workflows` body; unknown fields are refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    #[serde(default)]
    pub id: String,
    /// The tenant owning it (defaults to the caller's).
    #[serde(default)]
    pub org_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version: String,
    /// Whole-run deadline in seconds (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u64>,
    #[serde(default)]
    pub created_by: String,
    /// JSON Schema the run input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// A registered schema the run input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default)]
    pub steps: BTreeMap<String, StepDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// `user`, or `pack:<id>` for workflows installed by a pack (set by the gateway).
    #[serde(default)]
    pub source: String,
}

/// Step kinds the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A job on a topic (also upstream's generic job types).
    Worker,
    /// A human gate.
    Approval,
    /// Evaluates an expression; its output (a boolean) steers later steps.
    Condition,
    /// Waits `delay_sec` or until `delay_until`.
    Delay,
}

impl StepKind {
    pub fn parse(raw: &str) -> Option<StepKind> {
        match raw {
            "" | "worker" | "llm" | "http" | "container" | "script" | "input" => Some(StepKind::Worker),
            "approval" => Some(StepKind::Approval),
            "condition" => Some(StepKind::Condition),
            "delay" => Some(StepKind::Delay),
            _ => None,
        }
    }
}

/// One step of a definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Optional; when given it must equal the step's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// On a condition step: the expression it evaluates. On any other step:
    /// the step runs only when this is true (else it is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Fan-out: an expression yielding a list; one job per item (`item` in templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Templated job input (`${input.x}`, `${steps.a.output.y}`, `${item}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<StepMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_until: Option<DateTime<Utc>>,
}

impl StepDef {
    pub fn step_kind(&self) -> StepKind {
        StepKind::parse(&self.kind).unwrap_or(StepKind::Worker)
    }
}

/// Job metadata a worker step passes on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risk_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Retries of a failed worker step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default = "one")]
    pub initial_backoff_sec: f64,
    #[serde(default = "sixty")]
    pub max_backoff_sec: f64,
    #[serde(default = "two")]
    pub multiplier: f64,
}

fn one() -> f64 {
    1.0
}
fn sixty() -> f64 {
    60.0
}
fn two() -> f64 {
    2.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Denied,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Denied | RunStatus::Cancelled | RunStatus::TimedOut
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Denied => "denied",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Denied,
    Cancelled,
    TimedOut,
    Skipped,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running | StepStatus::Waiting)
    }

    /// Finished without success (a dependent cannot run).
    pub fn is_failure(self) -> bool {
        matches!(self, StepStatus::Failed | StepStatus::Denied | StepStatus::Cancelled | StepStatus::TimedOut)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Denied => "denied",
            StepStatus::Cancelled => "cancelled",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// Why a step (or run) did not succeed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// One unit of work of a step: the step itself, or one item of a fan-out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slot {
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// The job was seen on the store (its `step_dispatched` event is written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dispatched: bool,
    /// The job was seen held for approval (its `step_waiting` event is written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Restarts seen to interrupt the job while it ran (each has its
    /// `step_interrupted` event: the job runs again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One fan-out item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildRun {
    pub index: usize,
    pub item: Value,
    #[serde(flatten)]
    pub slot: Slot,
}

/// A step's state within a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRun {
    pub step_id: String,
    #[serde(flatten)]
    pub slot: Slot,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRun>,
    /// For a delay step: when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Kept from this earlier run by a rerun (not run again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

/// Who started a run; its jobs are submitted in that caller's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunCaller {
    pub key_id: String,
    pub role: String,
    #[serde(default)]
    pub principal_id: Option<String>,
    #[serde(default)]
    pub allow_cross_tenant: bool,
}

/// A workflow run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowRun {
    pub id: String,
    pub workflow_id: String,
    pub org_id: String,
    #[serde(default)]
    pub team_id: Option<String>,
    pub input: Value,
    pub status: RunStatus,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<StepError>,
    pub steps: BTreeMap<String, StepRun>,
    pub triggered_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub rerun_of: Option<String>,
    #[serde(default)]
    pub rerun_step: Option<String>,
    /// Runs that reran this one.
    #[serde(default)]
    pub reruns: Vec<String>,
    /// The definition as it was when the run started.
    pub workflow: WorkflowDef,
    pub caller: RunCaller,
    /// Sequence number of the last timeline event written.
    pub timeline_seq: u64,
}

/// One entry of a run's append-only timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub seq: u64,
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    pub run_id: String,
    pub workflow_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}
