//! Submitting and reading jobs.
//!
//! Order of a submit: validate the body → idempotency lookup (scoped by
//! tenant + route; same payload replays the stored outcome, another payload is
//! a conflict) → topic lookup → input schema (schema component) → policy
//! (policy component, tenant's sandbox) → persist atomically together with
//! the idempotency record → dispatch. A submit that fails before it is
//! accepted (bad input, unknown topic, schema violations, throttle, policy
//! unavailable) stores nothing and keeps no idempotency key.

use super::dispatch::Dispatcher;
use super::model::{JobFailure, JobLinks, JobRecord, JobState, SafetyRecord, StateChange};
use super::repo::{JobRepo, RepoError};
use crate::auth::AuthContext;
use crate::packs::PackRegistry;
use crate::packs::manifest::valid_topic;
use crate::policy::{DecisionKind, PolicyDecision, PolicyError, PolicyRequest, PolicyService};
use crate::schema::{SchemaError, SchemaService, Violation};
use crate::store::{BatchOutcome, Op, StoreError, to_json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const MAX_LABELS: usize = 50;
/// Store error text of a submit whose job id exists already.
pub(super) const ID_COLLISION: &str = "job id collision";
const MAX_TAGS: usize = 50;
/// Longest job id (UUIDs and `<uuid>-retry-<hex>` fit easily).
const MAX_JOB_ID: usize = 128;

/// `meta` block of a submit (upstream JobMetadata).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitMeta {
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub actor_id: Option<String>,
    #[serde(default)]
    pub actor_type: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub capability: Option<String>,
    #[serde(default)]
    pub risk_tags: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub pack_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Body of `POST /api/v1/jobs`: the published example's fields plus every
/// upstream field. Unknown fields are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub context: Option<serde_json::Value>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub adapter_id: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub memory_id: Option<String>,
    #[serde(default)]
    pub context_mode: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub principal_id: Option<String>,
    #[serde(default)]
    pub actor_id: Option<String>,
    #[serde(default)]
    pub actor_type: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub pack_id: Option<String>,
    #[serde(default)]
    pub capability: Option<String>,
    #[serde(default)]
    pub risk_tags: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub meta: Option<SubmitMeta>,
    #[serde(default)]
    pub max_input_tokens: Option<i64>,
    #[serde(default)]
    pub allow_summarization: Option<bool>,
    #[serde(default)]
    pub allow_retrieval: Option<bool>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub max_total_tokens: Option<i64>,
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    #[serde(default)]
    pub delegation_token: Option<String>,
    #[serde(default)]
    pub delegation_audience_agent_id: Option<String>,
}

/// What a submit produced; stored with the idempotency key and replayed as is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubmitOutcome {
    Accepted { job_id: String, trace_id: String },
    ApprovalRequired { job_id: String, trace_id: String, reason: String, rule_id: String },
    Denied { job_id: String, trace_id: String, decision: PolicyDecision },
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error("tenant access denied")]
    TenantDenied,
    #[error("unknown topic {topic}")]
    UnknownTopic { topic: String, registered: Vec<String> },
    #[error("schema validation failed")]
    SchemaViolations { schema_id: String, violations: Vec<Violation> },
    #[error("idempotency key already used with a different request")]
    IdempotencyConflict,
    #[error("{reason}")]
    Throttled { reason: String, rule_id: String },
    #[error("policy check unavailable: {0}")]
    PolicyUnavailable(String),
    #[error("schema check unavailable: {0}")]
    SchemaUnavailable(String),
    #[error("job not found")]
    NotFound,
    #[error("job store unavailable: {0}")]
    Store(String),
    #[error("another request changed this at the same time")]
    Raced,
    #[error("{0} does not match the credential's principal")]
    PrincipalMismatch(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String, state: Option<JobState> },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFoundWhat(&'static str),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Store(e.to_string())
    }
}

impl From<RepoError> for JobError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound(_) => JobError::NotFound,
            other => JobError::Store(other.to_string()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    request_hash: String,
    outcome: SubmitOutcome,
}

/// Message put on the bus for a job to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct DispatchMessage {
    pub job_id: String,
    pub tenant: String,
}

pub struct JobService {
    pub(super) repo: JobRepo,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) policy: Arc<PolicyService>,
    pub(super) schemas: Arc<SchemaService>,
    pub(super) registry: Arc<PackRegistry>,
    pub(super) run_guard: std::sync::OnceLock<Arc<dyn super::steps::RunGuard>>,
    idempotency_ttl: Duration,
}

/// What an internal submit (remediation, DLQ retry, repair) adds to a job.
#[derive(Default)]
pub(super) struct SubmitExtras {
    /// Reserved labels set by the gateway itself.
    pub labels: BTreeMap<String, String>,
    pub links: JobLinks,
    /// Written atomically with the new job; a failed condition means another
    /// request raced this one ([`JobError::Raced`]).
    pub ops: Vec<Op>,
    /// Use this id instead of a fresh UUID.
    pub job_id: Option<String>,
    /// The body re-submits a stored job: keep its principal and actor even
    /// though the caller is someone else (an approver, an operator).
    pub resubmission: bool,
}

fn clean(s: &Option<String>) -> String {
    s.as_deref().map(str::trim).unwrap_or("").to_string()
}

fn merge_lists(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in a.iter().chain(b) {
        let item = item.trim();
        if !item.is_empty() && !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

impl JobService {
    pub fn new(
        repo: JobRepo,
        dispatcher: Arc<Dispatcher>,
        policy: Arc<PolicyService>,
        schemas: Arc<SchemaService>,
        registry: Arc<PackRegistry>,
        idempotency_ttl: Duration,
    ) -> Self {
        Self { repo, dispatcher, policy, schemas, registry, run_guard: Default::default(), idempotency_ttl }
    }

    pub fn repo(&self) -> &JobRepo {
        &self.repo
    }

    /// Submit a job for `tenant` (already resolved from the credential and
    /// `X-Tenant-ID`). `idempotency_key` is the one key the caller gave
    /// (header, query or body, reconciled by the caller).
    pub async fn submit(
        &self,
        caller: &AuthContext,
        tenant: &str,
        body: SubmitJob,
        idempotency_key: Option<String>,
    ) -> Result<SubmitOutcome, JobError> {
        self.submit_with(caller, tenant, body, idempotency_key, SubmitExtras::default()).await
    }

    pub(super) async fn submit_with(
        &self,
        caller: &AuthContext,
        tenant: &str,
        body: SubmitJob,
        idempotency_key: Option<String>,
        extras: SubmitExtras,
    ) -> Result<SubmitOutcome, JobError> {
        let meta = body.meta.clone().unwrap_or_default();
        // A body tenant must be the request's tenant; none means the caller's.
        for named in [&body.tenant_id, &body.org_id, &meta.tenant_id].into_iter().flatten() {
            let named = named.trim();
            if !named.is_empty() && named != tenant {
                return Err(JobError::TenantDenied);
            }
        }
        let topic = clean(&body.topic);
        if topic.is_empty() {
            return Err(JobError::Invalid("topic is required".into()));
        }
        if !valid_topic(&topic) {
            return Err(JobError::Invalid(format!("invalid topic format: {topic}")));
        }
        let payload = match (&body.input, &body.context) {
            (Some(a), Some(b)) if a != b => {
                return Err(JobError::Invalid("input and context both given with different values".into()));
            }
            (Some(v), _) | (None, Some(v)) => v.clone(),
            (None, None) => serde_json::Value::Null,
        };
        let priority = match clean(&body.priority).as_str() {
            "" | "interactive" => "interactive",
            "batch" => "batch",
            "critical" => "critical",
            other => {
                return Err(JobError::Invalid(format!(
                    "priority must be interactive, batch or critical, not {other:?}"
                )));
            }
        };
        let actor_type = match (clean(&body.actor_type), clean(&meta.actor_type)) {
            (a, _) if !a.is_empty() => a,
            (_, b) => b,
        };
        if !matches!(actor_type.as_str(), "" | "human" | "service") {
            return Err(JobError::Invalid("actor_type must be 'human' or 'service'".into()));
        }
        for (name, value) in [
            ("max_input_tokens", body.max_input_tokens),
            ("max_output_tokens", body.max_output_tokens),
            ("max_total_tokens", body.max_total_tokens),
        ] {
            if value.is_some_and(|v| v < 0) {
                return Err(JobError::Invalid(format!("{name} must be non-negative")));
            }
        }
        if body.deadline_ms.is_some_and(|v| v < 0) {
            return Err(JobError::Invalid("deadline_ms must be non-negative".into()));
        }
        if body.tags.len() > MAX_TAGS {
            return Err(JobError::Invalid(format!("at most {MAX_TAGS} tags")));
        }
        let mut labels = BTreeMap::new();
        for (k, v) in meta.labels.iter().chain(body.labels.iter()) {
            if k.starts_with("_governance.") || k.starts_with("_ma.") {
                return Err(JobError::Invalid(format!("label {k:?} is reserved")));
            }
            if k.starts_with('_') {
                continue;
            }
            if k.is_empty() || k.len() > 256 || v.len() > 4096 {
                return Err(JobError::Invalid(format!("label {k:?}: keys are 1..=256 bytes, values at most 4096")));
            }
            labels.insert(k.clone(), v.clone());
        }
        if labels.len() > MAX_LABELS {
            return Err(JobError::Invalid(format!("at most {MAX_LABELS} labels")));
        }

        // Idempotency: same key + same payload replays, another payload conflicts.
        let request_hash = {
            // The key itself is not part of the payload, wherever it was given.
            let mut normalized = body.clone();
            normalized.idempotency_key = None;
            if let Some(meta) = normalized.meta.as_mut() {
                meta.idempotency_key = None;
            }
            if normalized.meta.as_ref().is_some_and(|m| *m == SubmitMeta::default()) {
                normalized.meta = None;
            }
            let canonical = serde_json::to_value(&normalized).map_err(|e| JobError::Invalid(e.to_string()))?;
            hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
        };
        let raw_idempotency_key = idempotency_key.clone();
        let idem_key =
            idempotency_key.map(|k| format!("idem:{tenant}:jobs:{}", hex::encode(Sha256::digest(k.as_bytes()))));
        if let Some(key) = &idem_key
            && let Some(entry) = self.repo.store().get(key).await?
        {
            let record: IdempotencyRecord = entry.json()?;
            return if record.request_hash == request_hash {
                Ok(record.outcome)
            } else {
                Err(JobError::IdempotencyConflict)
            };
        }

        let entry = self
            .registry
            .topic(&topic)
            .ok_or_else(|| JobError::UnknownTopic { topic: topic.clone(), registered: self.registry.topic_names() })?;
        let claimed_pack = clean(&body.pack_id).or_else_nonempty(clean(&meta.pack_id));
        if !claimed_pack.is_empty() && claimed_pack != entry.pack_id {
            return Err(JobError::Invalid(format!(
                "topic {topic} belongs to pack {}, not {claimed_pack}",
                entry.pack_id
            )));
        }

        if let Some(schema_id) = &entry.input_schema {
            let document = payload.to_string();
            match self.schemas.validate(tenant, schema_id, &document) {
                Ok(v) if v.is_empty() => {}
                Ok(violations) => {
                    return Err(JobError::SchemaViolations { schema_id: schema_id.clone(), violations });
                }
                Err(SchemaError::InvalidDocument(m)) => {
                    return Err(JobError::Invalid(format!("input: {m}")));
                }
                Err(e) => return Err(JobError::SchemaUnavailable(e.to_string())),
            }
        }

        let job_id = extras.job_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let trace_id = uuid::Uuid::new_v4().to_string();
        // A credential bound to a principal speaks for that principal only
        // (cross-tenant operator keys may act for others).
        if let Some(bound) =
            caller.principal_id.as_deref().filter(|_| !caller.allow_cross_tenant && !extras.resubmission)
        {
            for (field, value) in
                [("principal_id", &body.principal_id), ("actor_id", &body.actor_id), ("meta.actor_id", &meta.actor_id)]
            {
                let value = clean(value);
                if !value.is_empty() && value != bound {
                    return Err(JobError::PrincipalMismatch(field));
                }
            }
        }
        let principal = clean(&body.principal_id).or_else_nonempty(caller.principal_id.clone().unwrap_or_default());
        let actor_id =
            clean(&body.actor_id).or_else_nonempty(clean(&meta.actor_id)).or_else_nonempty(principal.clone());
        for claimed in [clean(&body.capability), clean(&meta.capability)] {
            if !claimed.is_empty() && !entry.capability.is_empty() && !claimed.eq_ignore_ascii_case(&entry.capability) {
                return Err(JobError::Invalid(format!(
                    "capability {claimed:?} does not match topic {topic}'s capability {:?}",
                    entry.capability
                )));
            }
        }
        let capability = clean(&body.capability)
            .or_else_nonempty(clean(&meta.capability))
            .or_else_nonempty(entry.capability.clone());
        let risk_tags = merge_lists(&merge_lists(&body.risk_tags, &meta.risk_tags), &entry.risk_tags);
        let requires = merge_lists(&merge_lists(&body.requires, &meta.requires), &entry.requires);
        labels.insert("_source".into(), "api".into());
        labels.extend(extras.labels.clone());

        let request = PolicyRequest {
            job_id: job_id.clone(),
            topic: topic.clone(),
            tenant: tenant.to_string(),
            principal_id: principal.clone(),
            actor_id: actor_id.clone(),
            actor_type: actor_type.clone(),
            capability: capability.clone(),
            risk_tags: risk_tags.clone(),
            requires: requires.clone(),
            pack_id: entry.pack_id.clone(),
            labels: labels.clone(),
        };
        let decision = match self.policy.evaluate(tenant, &request) {
            Ok(d) => d,
            Err(PolicyError::InvalidRequest(m)) => return Err(JobError::Invalid(m)),
            Err(e) => return Err(JobError::PolicyUnavailable(e.to_string())),
        };
        if decision.decision == DecisionKind::Throttle {
            return Err(JobError::Throttled { reason: decision.reason, rule_id: decision.rule_id });
        }

        let now = Utc::now();
        let mut job = JobRecord {
            id: job_id.clone(),
            tenant: tenant.to_string(),
            topic: topic.clone(),
            state: JobState::Pending,
            trace_id: trace_id.clone(),
            created_at: now,
            updated_at: now,
            input: payload,
            prompt: body.prompt.clone(),
            labels,
            priority: priority.to_string(),
            capability,
            risk_tags,
            requires,
            pack_id: entry.pack_id.clone(),
            actor_id,
            actor_type,
            principal_id: principal,
            submitted_by: caller.submitted_by(),
            idempotency_key: raw_idempotency_key,
            attempts: 0,
            history: vec![StateChange { state: JobState::Pending, at: now, note: None }],
            safety: Some(SafetyRecord { decision: decision.clone(), checked_at: now }),
            result: None,
            error: None,
            output_safety: None,
            worker_id: None,
            max_retries: decision
                .constraints
                .as_ref()
                .and_then(|c| c.pointer("/budgets/max_retries"))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
                .min(20) as u32,
            approval: None,
            links: extras.links.clone(),
            interrupted_at: None,
            timeout_ms: body.deadline_ms.filter(|ms| *ms > 0).map(|ms| ms as u64),
        };
        let outcome = match decision.decision {
            DecisionKind::Deny => {
                job.transition(JobState::Denied, Some(decision.reason.clone())).expect("PENDING → DENIED");
                job.error = Some(JobFailure { code: "policy_denied".into(), message: decision.reason.clone() });
                SubmitOutcome::Denied { job_id: job_id.clone(), trace_id: trace_id.clone(), decision }
            }
            DecisionKind::RequireApproval => {
                job.transition(JobState::ApprovalRequired, Some(decision.reason.clone()))
                    .expect("PENDING → APPROVAL_REQUIRED");
                SubmitOutcome::ApprovalRequired {
                    job_id: job_id.clone(),
                    trace_id: trace_id.clone(),
                    reason: decision.reason,
                    rule_id: decision.rule_id,
                }
            }
            _ => {
                job.transition(JobState::Scheduled, None).expect("PENDING → SCHEDULED");
                SubmitOutcome::Accepted { job_id: job_id.clone(), trace_id: trace_id.clone() }
            }
        };

        let mut ops = JobRepo::create_ops(&job);
        let idem_index = ops.len();
        if let Some(key) = &idem_key {
            let record = IdempotencyRecord { request_hash: request_hash.clone(), outcome: outcome.clone() };
            ops.push(Op::PutIfAbsent { key: key.clone(), value: to_json(&record), ttl: Some(self.idempotency_ttl) });
        }
        let extra_index = ops.len();
        ops.extend(extras.ops);
        match self.repo.store().apply(ops).await? {
            BatchOutcome::Applied(_) => {}
            BatchOutcome::Conflict { index, .. } if index >= extra_index => return Err(JobError::Raced),
            BatchOutcome::Conflict { index, current: Some(entry) } if idem_key.is_some() && index == idem_index => {
                // Lost a race with the same key: answer as that request did.
                let record: IdempotencyRecord = entry.json()?;
                return if record.request_hash == request_hash {
                    Ok(record.outcome)
                } else {
                    Err(JobError::IdempotencyConflict)
                };
            }
            BatchOutcome::Conflict { .. } => {
                return Err(JobError::Store(ID_COLLISION.into()));
            }
        }

        if matches!(outcome, SubmitOutcome::Accepted { .. }) {
            self.dispatcher.publish(&job).await;
        }
        Ok(outcome)
    }

    /// A job of `tenant`; another tenant's job answers exactly like a missing one.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<JobRecord, JobError> {
        if id.is_empty() || id.len() > MAX_JOB_ID {
            return Err(JobError::NotFound);
        }
        match self.repo.get(id).await? {
            Some((job, _)) if job.tenant == tenant => Ok(job),
            _ => Err(JobError::NotFound),
        }
    }

    /// Like [`get`](Self::get), but waits up to `wait` for the job to reach
    /// a terminal state (long polling).
    pub async fn get_when_done(&self, tenant: &str, id: &str, wait: Duration) -> Result<JobRecord, JobError> {
        // Only a job the caller may see gets a waiter (a missing or foreign
        // id must not leave anything behind).
        let job = self.get(tenant, id).await?;
        if job.state.is_terminal() || wait.is_zero() {
            return Ok(job);
        }
        let done = self.repo.waiters().register(id);
        // Re-read after registering so a finish in between is not missed.
        let again = self.get(tenant, id).await;
        if matches!(&again, Ok(job) if !job.state.is_terminal()) {
            let _ = tokio::time::timeout(wait, done).await;
        } else {
            drop(done);
        }
        self.repo.waiters().prune(id);
        again?;
        self.get(tenant, id).await
    }
}

trait OrElseNonEmpty {
    fn or_else_nonempty(self, other: String) -> String;
}

impl OrElseNonEmpty for String {
    fn or_else_nonempty(self, other: String) -> String {
        if self.is_empty() { other } else { self }
    }
}
