//! Workflow operations the API offers: definitions (create, update, read,
//! list, delete), runs (start with idempotency, read, list, cancel,
//! rerun) and timelines. Knows nothing of HTTP.
//!
//! Tenancy: a tenant's definitions and runs are its own; another tenant's
//! answer exactly like missing ones. Workflows installed by packs are
//! visible to every tenant (read-only); their runs belong to the tenant
//! that started them.

use super::engine::{Engine, Log, finish, fresh_steps};
use super::model::{RunCaller, RunStatus, StepError, StepRun, StepStatus, WorkflowDef, WorkflowRun};
use super::repo::{WorkflowRepo, def_key, runs_of_prefix, runs_prefix};
use super::validate::{downstream, valid_workflow_id, validate};
use crate::auth::AuthContext;
use crate::schema::{SchemaError, SchemaService, Violation};
use crate::store::{BatchOutcome, Op, StoreError, to_json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Most definitions one listing returns.
const MAX_LISTED_DEFINITIONS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{0}")]
    Invalid(String),
    #[error("tenant access denied")]
    TenantDenied,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String, status: Option<String> },
    #[error("run input does not match the workflow's input schema")]
    InputViolations { violations: Vec<Violation> },
    #[error("idempotency key already used with a different request")]
    IdempotencyConflict,
    #[error("workflow store unavailable: {0}")]
    Store(String),
}

impl From<StoreError> for WorkflowError {
    fn from(e: StoreError) -> Self {
        WorkflowError::Store(e.to_string())
    }
}

impl From<super::engine::EngineError> for WorkflowError {
    fn from(e: super::engine::EngineError) -> Self {
        WorkflowError::Store(e.to_string())
    }
}

/// Why a run's input could not be checked: the workflow names a schema that
/// is gone or broken (a conflict to fix in the definition or the registry),
/// the input is no JSON document the validator accepts (bad input), or the
/// validator itself failed (unavailable, worth retrying).
fn input_schema_failure(workflow: &str, e: SchemaError) -> WorkflowError {
    match e {
        SchemaError::Unknown(schema) => WorkflowError::Conflict {
            code: "input_schema_missing",
            message: format!("workflow {workflow} checks its input against schema {schema}, which is not registered"),
            status: None,
        },
        SchemaError::InvalidSchema(m) => WorkflowError::Conflict {
            code: "input_schema_invalid",
            message: format!("workflow {workflow}'s input schema is invalid: {m}"),
            status: None,
        },
        SchemaError::InvalidDocument(m) => WorkflowError::Invalid(format!("run input: {m}")),
        other => WorkflowError::Store(format!("input schema check: {other}")),
    }
}

/// What starting a run answered (replayed for a repeated idempotency key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartOutcome {
    pub run_id: String,
    pub status: String,
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Serialize, Deserialize)]
struct RunIdempotency {
    request_hash: String,
    run_id: String,
}

/// A page of runs, newest first.
pub struct RunPage {
    pub items: Vec<WorkflowRun>,
    pub next_cursor: Option<String>,
}

pub struct WorkflowService {
    repo: WorkflowRepo,
    engine: Arc<Engine>,
    schemas: Arc<SchemaService>,
    idempotency_ttl: Duration,
}

fn caller_record(caller: &AuthContext) -> RunCaller {
    RunCaller {
        key_id: caller.key_id.clone(),
        role: caller.role.as_str().to_string(),
        principal_id: caller.principal_id.clone(),
        allow_cross_tenant: caller.allow_cross_tenant,
    }
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl WorkflowService {
    pub fn new(
        repo: WorkflowRepo,
        engine: Arc<Engine>,
        schemas: Arc<SchemaService>,
        idempotency_ttl: Duration,
    ) -> Self {
        Self { repo, engine, schemas, idempotency_ttl }
    }

    /// Create or replace a definition. `path_id` is the id of `PUT
    /// /workflows/{id}`. Returns the id and whether it was created.
    pub async fn put_definition(
        &self,
        caller: &AuthContext,
        tenant: &str,
        mut def: WorkflowDef,
        path_id: Option<&str>,
    ) -> Result<(String, bool), WorkflowError> {
        if let Some(id) = path_id {
            if !def.id.is_empty() && def.id != id {
                return Err(WorkflowError::Invalid(format!(
                    "id {:?} in the body differs from the path's {id:?}",
                    def.id
                )));
            }
            def.id = id.to_string();
        }
        if def.id.is_empty() {
            def.id = uuid::Uuid::new_v4().to_string();
        }
        match def.org_id.trim() {
            "" => def.org_id = tenant.to_string(),
            org if org != tenant => return Err(WorkflowError::TenantDenied),
            _ => {}
        }
        validate(&def).map_err(WorkflowError::Invalid)?;
        if let Some(schema) = &def.input_schema {
            self.schemas.check_schema(schema).map_err(|e| WorkflowError::Invalid(format!("input_schema: {e}")))?;
        }
        let schema_ids = def.input_schema_id.iter().map(|id| ("input_schema_id".to_string(), id)).chain(
            def.steps.iter().filter_map(|(sid, s)| s.input_schema_id.as_ref().map(|id| (format!("step {sid:?}"), id))),
        );
        for (whose, id) in schema_ids {
            if self.schemas.get(id).is_none() {
                return Err(WorkflowError::Invalid(format!("{whose}: unknown schema {id:?}")));
            }
        }
        for (sid, step) in &def.steps {
            if let Some(schema) = &step.input_schema {
                self.schemas
                    .check_schema(schema)
                    .map_err(|e| WorkflowError::Invalid(format!("step {sid:?}: input_schema: {e}")))?;
            }
        }
        if self.repo.pack_definition(&def.id).await?.is_some() {
            return Err(WorkflowError::Conflict {
                code: "workflow_owned_by_pack",
                message: format!("workflow {} is installed by a pack and cannot be replaced", def.id),
                status: None,
            });
        }
        let key = def_key(tenant, &def.id);
        let now = Utc::now();
        def.source = "user".into();
        def.updated_at = Some(now);
        if def.created_by.is_empty() {
            def.created_by = caller.principal_id.clone().unwrap_or_else(|| caller.key_id.clone());
        }
        for _ in 0..8 {
            let existing = self.repo.store().get(&key).await?;
            let (op, created) = match &existing {
                Some(entry) => {
                    let old: WorkflowDef = entry.json()?;
                    def.created_at = old.created_at.or(Some(now));
                    (
                        Op::PutIfRevision {
                            key: key.clone(),
                            value: to_json(&def),
                            expected: entry.revision,
                            ttl: None,
                        },
                        false,
                    )
                }
                None => {
                    def.created_at = Some(now);
                    (Op::PutIfAbsent { key: key.clone(), value: to_json(&def), ttl: None }, true)
                }
            };
            if self.repo.apply(vec![op]).await? {
                return Ok((def.id, created));
            }
        }
        Err(WorkflowError::Store("the workflow kept changing; retry".into()))
    }

    pub async fn definition(&self, tenant: &str, id: &str) -> Result<WorkflowDef, WorkflowError> {
        if !valid_workflow_id(id) {
            return Err(WorkflowError::NotFound("workflow not found"));
        }
        self.repo.definition(tenant, id).await?.ok_or(WorkflowError::NotFound("workflow not found"))
    }

    pub async fn definitions(&self, tenant: &str) -> Result<Vec<WorkflowDef>, WorkflowError> {
        Ok(self.repo.definitions(tenant, MAX_LISTED_DEFINITIONS).await?)
    }

    /// Delete a tenant's definition (its runs stay readable: each keeps the
    /// definition it started with).
    pub async fn delete_definition(&self, tenant: &str, id: &str) -> Result<(), WorkflowError> {
        let def = self.definition(tenant, id).await?;
        if def.source != "user" {
            return Err(WorkflowError::Conflict {
                code: "workflow_owned_by_pack",
                message: format!("workflow {id} is installed by a pack; uninstall the pack to remove it"),
                status: None,
            });
        }
        self.repo.apply(vec![Op::Delete { key: def_key(tenant, id) }]).await?;
        Ok(())
    }

    /// Start a run of workflow `id` with `input`.
    pub async fn start(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<StartOutcome, WorkflowError> {
        let def = self.definition(tenant, id).await?;
        if def.steps.is_empty() {
            return Err(WorkflowError::Invalid(format!("workflow {id} cannot run: {}", def.description)));
        }
        if !input.is_object() {
            return Err(WorkflowError::Invalid("run input must be a JSON object".into()));
        }
        let document = input.to_string();
        let mut violations = Vec::new();
        if let Some(schema) = &def.input_schema {
            violations.extend(
                self.schemas.validate_inline(tenant, schema, &document).map_err(|e| input_schema_failure(id, e))?,
            );
        }
        if let Some(schema_id) = &def.input_schema_id {
            violations
                .extend(self.schemas.validate(tenant, schema_id, &document).map_err(|e| input_schema_failure(id, e))?);
        }
        if !violations.is_empty() {
            return Err(WorkflowError::InputViolations { violations });
        }

        let request_hash = sha(&document);
        let idem_key = idempotency_key.as_ref().map(|k| format!("idem:{tenant}:wfrun:{id}:{}", sha(k)));
        if let Some(key) = &idem_key
            && let Some(entry) = self.repo.store().get(key).await?
        {
            return self.replay(entry.json()?, &request_hash).await;
        }

        let now = Utc::now();
        let run_id = uuid::Uuid::new_v4().to_string();
        let mut run = WorkflowRun {
            id: run_id.clone(),
            workflow_id: def.id.clone(),
            org_id: tenant.to_string(),
            team_id: def.team_id.clone(),
            input,
            status: RunStatus::Running,
            started_at: Some(now),
            completed_at: None,
            output: None,
            error: None,
            steps: fresh_steps(&def.steps),
            triggered_by: caller.principal_id.clone().unwrap_or_else(|| caller.key_id.clone()),
            created_at: now,
            updated_at: now,
            labels: Default::default(),
            idempotency_key,
            rerun_of: None,
            rerun_step: None,
            reruns: Vec::new(),
            workflow: def,
            caller: caller_record(caller),
            timeline_seq: 0,
        };
        let mut log = Log::new(&run, now);
        log.status("run_started", None, None, "running", None, Some(json!({"steps": run.steps.len()})));
        log.close(&mut run);
        let mut ops = WorkflowRepo::create_ops(&run, &log.events);
        let idem_index = ops.len();
        if let Some(key) = &idem_key {
            let record = RunIdempotency { request_hash: request_hash.clone(), run_id: run_id.clone() };
            ops.push(Op::PutIfAbsent { key: key.clone(), value: to_json(&record), ttl: Some(self.idempotency_ttl) });
        }
        match self.repo.store().apply(ops).await? {
            BatchOutcome::Applied(_) => {}
            BatchOutcome::Conflict { index, current: Some(entry) } if index == idem_index => {
                return self.replay(entry.json()?, &request_hash).await;
            }
            BatchOutcome::Conflict { .. } => return Err(WorkflowError::Store("run id collision".into())),
        }
        if let Err(e) = self.engine.advance(&run_id).await {
            tracing::warn!(run = %run_id, error = %e, "first pass of a new run failed; the sweep will retry");
        }
        let status = self.repo.run(&run_id).await?.map(|(r, _)| r.status).unwrap_or(RunStatus::Running);
        Ok(StartOutcome { run_id, status: status.as_str().into(), replayed: false })
    }

    async fn replay(&self, record: RunIdempotency, request_hash: &str) -> Result<StartOutcome, WorkflowError> {
        if record.request_hash != request_hash {
            return Err(WorkflowError::IdempotencyConflict);
        }
        let status = self.repo.run(&record.run_id).await?.map(|(r, _)| r.status).unwrap_or(RunStatus::Running);
        Ok(StartOutcome { run_id: record.run_id, status: status.as_str().into(), replayed: true })
    }

    /// A run of the tenant; another tenant's answers like a missing one.
    pub async fn run(&self, tenant: &str, id: &str) -> Result<WorkflowRun, WorkflowError> {
        self.run_with_revision(tenant, id).await.map(|(r, _)| r)
    }

    async fn run_with_revision(&self, tenant: &str, id: &str) -> Result<(WorkflowRun, u64), WorkflowError> {
        if id.is_empty() || id.len() > 64 {
            return Err(WorkflowError::NotFound("run not found"));
        }
        match self.repo.run(id).await? {
            Some((run, rev)) if run.org_id == tenant => Ok((run, rev)),
            _ => Err(WorkflowError::NotFound("run not found")),
        }
    }

    /// The tenant's runs (of one workflow when given), newest first.
    pub async fn runs(
        &self,
        tenant: &str,
        workflow: Option<&str>,
        status: Option<RunStatus>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RunPage, WorkflowError> {
        let prefix = match workflow {
            Some(wf) => runs_of_prefix(tenant, wf),
            None => runs_prefix(tenant),
        };
        let mut after = cursor.map(|c| format!("{prefix}{c}"));
        let mut items = Vec::new();
        let mut next_cursor = None;
        let mut scanned = 0;
        'pages: loop {
            let page = self.repo.store().scan(&prefix, after.as_deref(), 200).await?;
            if page.is_empty() {
                break;
            }
            for (key, entry) in &page {
                after = Some(key.clone());
                scanned += 1;
                let run_id = String::from_utf8_lossy(&entry.value).to_string();
                if let Some((run, _)) = self.repo.run(&run_id).await?
                    && run.org_id == tenant
                    && status.is_none_or(|s| s == run.status)
                {
                    items.push(run);
                }
                if items.len() == limit || scanned >= 10_000 {
                    next_cursor = Some(key[prefix.len()..].to_string());
                    break 'pages;
                }
            }
        }
        Ok(RunPage { items, next_cursor })
    }

    /// Cancel a run: open steps are cancelled, their jobs too (a held
    /// approval can no longer be approved). Cancelling a cancelled run
    /// answers the same again; another finished run is a conflict.
    pub async fn cancel(&self, caller: &AuthContext, tenant: &str, id: &str) -> Result<WorkflowRun, WorkflowError> {
        self.run(tenant, id).await?;
        let who = caller.principal_id.clone().unwrap_or_else(|| caller.key_id.clone());
        self.engine
            .locked(id, async {
                for _ in 0..16 {
                    let (mut run, revision) = self.run_with_revision(tenant, id).await?;
                    if run.status == RunStatus::Cancelled {
                        return Ok(run);
                    }
                    if run.status.is_terminal() {
                        return Err(WorkflowError::Conflict {
                            code: "run_not_cancellable",
                            message: format!("run already {}", run.status.as_str()),
                            status: Some(run.status.as_str().into()),
                        });
                    }
                    let now = Utc::now();
                    let mut log = Log::new(&run, now);
                    let err = StepError {
                        message: format!("run cancelled by {who}"),
                        code: Some("run_cancelled".into()),
                        ..Default::default()
                    };
                    let jobs = finish(&mut run, RunStatus::Cancelled, Some(err), &mut log, now);
                    log.close(&mut run);
                    run.updated_at = now;
                    if !self.repo.apply(WorkflowRepo::update_ops(&run, revision, &log.events)).await? {
                        continue;
                    }
                    for job in jobs {
                        if let Err(e) = self.engine_jobs_cancel(&job, id).await {
                            tracing::warn!(job = %job, error = %e, "could not cancel a job of a cancelled run");
                        }
                    }
                    return Ok(run);
                }
                Err(WorkflowError::Store("the run kept changing; retry".into()))
            })
            .await
    }

    async fn engine_jobs_cancel(&self, job: &str, run: &str) -> Result<(), crate::jobs::JobError> {
        self.engine.jobs().cancel_for_run(job, &format!("workflow run {run} cancelled")).await
    }

    /// Rerun a finished run as a new run linked both ways to it. With
    /// `from_step`, every step not downstream of it that succeeded keeps its
    /// output and is not run again; the step and its descendants run again.
    /// Without, the whole run starts over.
    pub async fn rerun(
        &self,
        caller: &AuthContext,
        tenant: &str,
        id: &str,
        from_step: Option<&str>,
        idempotency_key: Option<String>,
    ) -> Result<StartOutcome, WorkflowError> {
        let from_step = from_step.map(str::trim).filter(|s| !s.is_empty());
        // A repeated key replays the rerun it made (for the same step).
        let request_hash = sha(from_step.unwrap_or(""));
        let idem_key = idempotency_key.as_ref().map(|k| format!("idem:{tenant}:wfrerun:{id}:{}", sha(k)));
        let mut created = None;
        for _ in 0..8 {
            let (mut old, revision) = self.run_with_revision(tenant, id).await?;
            if let Some(key) = &idem_key
                && let Some(entry) = self.repo.store().get(key).await?
            {
                return self.replay(entry.json()?, &request_hash).await;
            }
            if !old.status.is_terminal() {
                return Err(WorkflowError::Conflict {
                    code: "run_not_rerunnable",
                    message: format!(
                        "run is still {}; cancel it or wait for it to finish before rerunning",
                        old.status.as_str()
                    ),
                    status: Some(old.status.as_str().into()),
                });
            }
            if let Some(step) = from_step
                && !old.workflow.steps.contains_key(step)
            {
                return Err(WorkflowError::Invalid(format!(
                    "unknown step {step:?} (the run's workflow has no such step)"
                )));
            }
            let now = Utc::now();
            let new_id = uuid::Uuid::new_v4().to_string();
            let mut steps = fresh_steps(&old.workflow.steps);
            let mut kept = Vec::new();
            if let Some(step) = from_step {
                let rerun = downstream(&old.workflow, step);
                for (sid, sr) in &old.steps {
                    if !rerun.contains(sid) && sr.slot.status == StepStatus::Succeeded {
                        let reused = StepRun {
                            reused_from: Some(sr.reused_from.clone().unwrap_or_else(|| old.id.clone())),
                            ..sr.clone()
                        };
                        kept.push((sid.clone(), reused.slot.job_id.clone(), reused.reused_from.clone()));
                        steps.insert(sid.clone(), reused);
                    }
                }
            }
            let mut run = WorkflowRun {
                id: new_id.clone(),
                workflow_id: old.workflow_id.clone(),
                org_id: tenant.to_string(),
                team_id: old.team_id.clone(),
                input: old.input.clone(),
                status: RunStatus::Running,
                started_at: Some(now),
                completed_at: None,
                output: None,
                error: None,
                steps,
                triggered_by: caller.principal_id.clone().unwrap_or_else(|| caller.key_id.clone()),
                created_at: now,
                updated_at: now,
                labels: old.labels.clone(),
                idempotency_key: None,
                rerun_of: Some(old.id.clone()),
                rerun_step: from_step.map(str::to_string),
                reruns: Vec::new(),
                workflow: old.workflow.clone(),
                caller: caller_record(caller),
                timeline_seq: 0,
            };
            let mut log = Log::new(&run, now);
            log.status(
                "run_started",
                None,
                None,
                "running",
                None,
                Some(json!({"rerun_of": old.id, "from_step": from_step})),
            );
            for (sid, job, from) in &kept {
                log.status(
                    "step_reused",
                    Some(sid),
                    job.as_deref(),
                    "succeeded",
                    Some("kept from the earlier run".into()),
                    Some(json!({"from_run": from})),
                );
            }
            log.close(&mut run);
            old.reruns.push(new_id.clone());
            old.updated_at = now;
            let mut ops = WorkflowRepo::create_ops(&run, &log.events);
            ops.extend(WorkflowRepo::update_ops(&old, revision, &[]));
            if let Some(key) = &idem_key {
                let record = RunIdempotency { request_hash: request_hash.clone(), run_id: new_id.clone() };
                ops.push(Op::PutIfAbsent {
                    key: key.clone(),
                    value: to_json(&record),
                    ttl: Some(self.idempotency_ttl),
                });
            }
            if self.repo.apply(ops).await? {
                created = Some(new_id);
                break;
            }
        }
        let Some(new_id) = created else {
            return Err(WorkflowError::Store("the run kept changing; retry".into()));
        };
        if let Err(e) = self.engine.advance(&new_id).await {
            tracing::warn!(run = %new_id, error = %e, "first pass of a rerun failed; the sweep will retry");
        }
        let status = self.repo.run(&new_id).await?.map(|(r, _)| r.status).unwrap_or(RunStatus::Running);
        Ok(StartOutcome { run_id: new_id, status: status.as_str().into(), replayed: false })
    }

    /// Timeline events after `after` (a sequence number), oldest first.
    pub async fn timeline(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<super::model::TimelineEvent>, WorkflowError> {
        self.run(tenant, id).await?;
        Ok(self.repo.timeline(id, after, limit).await?)
    }
}
