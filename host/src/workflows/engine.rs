//! The workflow engine: drives runs forward.
//!
//! A pass over a run (under that run's lock) reads the jobs of its running
//! steps, settles the steps whose jobs finished (with retries and backoff),
//! schedules every step whose dependencies are done (conditions and delays
//! inline, worker steps and approval gates as jobs), works out the run's
//! status, and stores the new run together with the timeline events that
//! describe the change, in one compare-and-set batch. Only then are the
//! jobs it decided on submitted, each under a deterministic id
//! (`<run>:<step>@<attempt>`, `<run>:<step>~<item>@<attempt>` in a
//! fan-out): a crash in between is repaired by the next pass, which finds
//! the step recorded but its job missing and submits it, and a job that
//! exists already is never submitted twice.
//!
//! Passes are triggered by changes of step jobs (the job store tells the
//! engine), by the API, and by a periodic sweep over unfinished runs that
//! fires delays and retry timers and resumes runs after a restart.

use super::expr;
use super::model::{
    ChildRun, RetrySpec, RunStatus, Slot, StepDef, StepError, StepKind, StepRun, StepStatus, TimelineEvent, WorkflowRun,
};
use super::repo::WorkflowRepo;
use super::validate::sinks;
use crate::auth::{AuthContext, Role};
use crate::jobs::steps::{RunGuard, StepJobRef};
use crate::jobs::{JobError, JobRecord, JobService, JobState, SubmitJob};
use crate::schema::{SchemaService, Violation};
use crate::store::{Op, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Most items a fan-out may have.
pub const MAX_FANOUT: usize = 1000;
/// Fan-out items running at once unless the step says otherwise.
const DEFAULT_PARALLEL: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} kept changing; gave up")]
    Contended(String),
}

/// Timeline events of one pass, numbered after the run's last one.
pub(super) struct Log {
    run_id: String,
    workflow_id: String,
    seq: u64,
    now: DateTime<Utc>,
    pub events: Vec<TimelineEvent>,
}

impl Log {
    pub fn new(run: &WorkflowRun, now: DateTime<Utc>) -> Self {
        Log {
            run_id: run.id.clone(),
            workflow_id: run.workflow_id.clone(),
            seq: run.timeline_seq,
            now,
            events: Vec::new(),
        }
    }

    pub fn push(
        &mut self,
        kind: &str,
        step: Option<&str>,
        job: Option<&str>,
        message: Option<String>,
        data: Option<Value>,
    ) {
        self.seq += 1;
        self.events.push(TimelineEvent {
            seq: self.seq,
            time: self.now,
            kind: kind.to_string(),
            run_id: self.run_id.clone(),
            workflow_id: self.workflow_id.clone(),
            step_id: step.map(str::to_string),
            job_id: job.map(str::to_string),
            status: None,
            message,
            data,
        });
    }

    /// Like `push`, with the status the event reports.
    pub fn status(
        &mut self,
        kind: &str,
        step: Option<&str>,
        job: Option<&str>,
        status: &str,
        message: Option<String>,
        data: Option<Value>,
    ) {
        self.push(kind, step, job, message, data);
        if let Some(last) = self.events.last_mut() {
            last.status = Some(status.to_string());
        }
    }

    /// Put the numbering back on the run.
    pub fn close(&self, run: &mut WorkflowRun) {
        run.timeline_seq = self.seq;
    }
}

/// The variables expressions and templates see.
fn scope(run: &WorkflowRun, item: Option<(usize, &Value)>) -> Value {
    let steps: serde_json::Map<String, Value> = run
        .steps
        .iter()
        .map(|(id, s)| (id.clone(), json!({"output": s.slot.output, "status": s.slot.status.as_str()})))
        .collect();
    let mut scope = json!({"input": run.input, "steps": steps});
    if let Some((index, item)) = item {
        scope["item"] = item.clone();
        scope["index"] = json!(index);
    }
    scope
}

fn violations_text(violations: &[Violation]) -> String {
    violations
        .iter()
        .take(10)
        .map(|v| format!("{}: {}", if v.instance_path.is_empty() { "/" } else { &v.instance_path }, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn failure(message: impl Into<String>, code: &str) -> StepError {
    StepError { message: message.into(), code: Some(code.to_string()), ..Default::default() }
}

/// A dispatch error that no retry would fix (the step fails with it);
/// `None` for trouble that may pass (the next pass tries again).
fn permanent(e: &JobError) -> Option<StepError> {
    let (code, message) = match e {
        JobError::Invalid(m) => ("invalid_request", m.clone()),
        JobError::TenantDenied => ("tenant_denied", e.to_string()),
        JobError::UnknownTopic { topic, .. } => ("unknown_topic", format!("unknown topic {topic}")),
        JobError::SchemaViolations { schema_id, violations } => (
            "schema_validation_failed",
            format!("input does not match schema {schema_id}: {}", violations_text(violations)),
        ),
        JobError::PrincipalMismatch(_) | JobError::Forbidden(_) => ("forbidden", e.to_string()),
        JobError::IdempotencyConflict | JobError::Conflict { .. } => ("conflict", e.to_string()),
        JobError::Throttled { .. }
        | JobError::PolicyUnavailable(_)
        | JobError::SchemaUnavailable(_)
        | JobError::Store(_)
        | JobError::Raced
        | JobError::NotFound
        | JobError::NotFoundWhat(_) => return None,
    };
    Some(failure(message, code))
}

fn backoff(retry: &RetrySpec, attempt: u32) -> Duration {
    let secs = retry.initial_backoff_sec * retry.multiplier.powi(attempt.saturating_sub(1).min(30) as i32);
    Duration::from_secs_f64(secs.min(retry.max_backoff_sec).clamp(0.0, 86_400.0))
}

/// What one pass needs besides the run.
struct PassInput<'a> {
    jobs: &'a HashMap<String, JobRecord>,
    failures: &'a HashMap<String, StepError>,
    schemas: &'a SchemaService,
    now: DateTime<Utc>,
}

/// Settle a slot from its job (or from a dispatch failure).
fn observe_slot(slot: &mut Slot, label: &str, retry: Option<&RetrySpec>, input: &PassInput, log: &mut Log) {
    if !matches!(slot.status, StepStatus::Running | StepStatus::Waiting) {
        return;
    }
    let Some(job_id) = slot.job_id.clone() else { return };
    let now = input.now;
    if let Some(err) = input.failures.get(&job_id) {
        slot.status = StepStatus::Failed;
        slot.error = Some(StepError { job_id: Some(job_id.clone()), step_id: None, ..err.clone() });
        slot.completed_at = Some(now);
        log.status(
            "step_failed",
            Some(label),
            Some(&job_id),
            "failed",
            Some(err.message.clone()),
            err.code.clone().map(|c| json!({"code": c})),
        );
        return;
    }
    let Some(job) = input.jobs.get(&job_id) else { return };
    if !slot.dispatched {
        slot.dispatched = true;
        log.push("step_dispatched", Some(label), Some(&job_id), None, Some(json!({"topic": job.topic})));
    }
    // A restart interrupted the job while it ran: it runs again (at least
    // once), and the timeline says so.
    while (slot.restarts as usize) < job.restarts() {
        slot.restarts += 1;
        log.push(
            "step_interrupted",
            Some(label),
            Some(&job_id),
            Some("the gateway restarted while this step's job ran; the job runs again".into()),
            Some(json!({"restarts": slot.restarts})),
        );
    }
    let safety = job.safety.as_ref().map(|s| &s.decision);
    if job.state == JobState::ApprovalRequired {
        if !slot.held {
            slot.held = true;
            slot.status = StepStatus::Waiting;
            let reason = safety.map(|d| d.reason.clone()).unwrap_or_default();
            let rule = safety.map(|d| d.rule_id.clone()).unwrap_or_default();
            log.status(
                "step_waiting",
                Some(label),
                Some(&job_id),
                "waiting",
                Some(format!("approval requested: {reason}")),
                Some(json!({"rule_id": rule})),
            );
        }
        return;
    }
    if slot.held {
        slot.held = false;
        match job.approval.as_ref() {
            Some(a) if a.status == "approved" => {
                log.push("step_approved", Some(label), Some(&job_id), Some(format!("approved by {}", a.by)), None)
            }
            Some(a) => log.push(
                "step_rejected",
                Some(label),
                Some(&job_id),
                Some(if a.reason.is_empty() { format!("{} by {}", a.status, a.by) } else { a.reason.clone() }),
                Some(json!({"by": a.by, "decision": a.status})),
            ),
            None => {}
        }
    }
    let error_of = |code: &str| StepError {
        message: job.error.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| format!("job {}", job.state.as_str())),
        code: Some(job.error.as_ref().map(|e| e.code.clone()).unwrap_or_else(|| code.to_string())),
        rule_id: safety.map(|d| d.rule_id.clone()).filter(|r| !r.is_empty()),
        step_id: None,
        job_id: Some(job_id.clone()),
    };
    match job.state {
        JobState::Succeeded => {
            slot.status = StepStatus::Succeeded;
            slot.output = job.result.clone();
            slot.completed_at = Some(now);
            log.status("step_succeeded", Some(label), Some(&job_id), "succeeded", None, None);
        }
        JobState::Failed | JobState::Timeout | JobState::OutputQuarantined => {
            let mut err = error_of("job_failed");
            if job.state == JobState::OutputQuarantined {
                err.message = "the job's output was quarantined by the output policy".into();
                err.code = Some("output_quarantined".into());
            }
            let retry = retry.filter(|r| slot.attempts <= r.max_retries && job.state != JobState::OutputQuarantined);
            if let Some(retry) = retry {
                let at = now + chrono::Duration::from_std(backoff(retry, slot.attempts)).unwrap_or_default();
                slot.status = StepStatus::Pending;
                slot.next_attempt_at = Some(at);
                log.status(
                    "step_retrying",
                    Some(label),
                    Some(&job_id),
                    "pending",
                    Some(err.message.clone()),
                    Some(json!({"attempt": slot.attempts, "next_attempt_at": at})),
                );
                slot.error = Some(err);
            } else {
                let (status, kind) = if job.state == JobState::Timeout {
                    (StepStatus::TimedOut, "step_timed_out")
                } else {
                    (StepStatus::Failed, "step_failed")
                };
                slot.status = status;
                slot.completed_at = Some(now);
                log.status(
                    kind,
                    Some(label),
                    Some(&job_id),
                    status.as_str(),
                    Some(err.message.clone()),
                    Some(json!({"code": err.code})),
                );
                slot.error = Some(err);
            }
        }
        JobState::Denied => {
            let err = error_of("policy_denied");
            slot.status = StepStatus::Denied;
            slot.completed_at = Some(now);
            log.status(
                "step_denied",
                Some(label),
                Some(&job_id),
                "denied",
                Some(err.message.clone()),
                Some(json!({"rule_id": err.rule_id, "code": err.code})),
            );
            slot.error = Some(err);
        }
        JobState::Cancelled => {
            slot.status = StepStatus::Cancelled;
            slot.completed_at = Some(now);
            slot.error = Some(error_of("cancelled"));
            log.status(
                "step_cancelled",
                Some(label),
                Some(&job_id),
                "cancelled",
                Some("the step's job was cancelled".into()),
                None,
            );
        }
        _ => slot.status = StepStatus::Running,
    }
}

/// Start the next attempt of a worker or approval slot with `input`.
///
/// The slot runs until its job is seen: an approval gate (or a worker job
/// the policy holds) only turns `waiting` once its job is on the store and
/// held, so a run that reads `waiting` always has an approval to act on.
fn start_attempt(slot: &mut Slot, job_id: String, label: &str, input: Value, now: DateTime<Utc>, log: &mut Log) {
    slot.attempts += 1;
    slot.status = StepStatus::Running;
    slot.started_at.get_or_insert(now);
    slot.next_attempt_at = None;
    slot.dispatched = false;
    slot.held = false;
    slot.input = Some(input);
    log.status(
        "step_scheduled",
        Some(label),
        Some(&job_id),
        slot.status.as_str(),
        None,
        Some(json!({"attempt": slot.attempts})),
    );
    slot.job_id = Some(job_id);
}

fn job_id_for(run: &str, step: &str, child: Option<usize>, attempt: u32) -> String {
    match child {
        Some(i) => format!("{run}:{step}~{i}@{attempt}"),
        None => format!("{run}:{step}@{attempt}"),
    }
}

/// Render and check a worker step's input.
fn step_input(
    def: &StepDef,
    run: &WorkflowRun,
    item: Option<(usize, &Value)>,
    input: &PassInput,
) -> Result<Value, StepError> {
    let rendered = match &def.input {
        Some(template) => expr::render(template, &scope(run, item)).map_err(|e| failure(e, "template_error"))?,
        None => match item {
            Some((_, item)) => json!({"item": item, "input": run.input}),
            None => run.input.clone(),
        },
    };
    let document = rendered.to_string();
    let violations = match (&def.input_schema_id, &def.input_schema) {
        (Some(id), _) => input.schemas.validate(&run.org_id, id, &document),
        (None, Some(schema)) => input.schemas.validate_inline(&run.org_id, schema, &document),
        (None, None) => Ok(Vec::new()),
    };
    match violations {
        Ok(v) if v.is_empty() => Ok(rendered),
        Ok(v) => Err(failure(
            format!("step input does not match its schema: {}", violations_text(&v)),
            "input_schema_violation",
        )),
        Err(e) => Err(failure(format!("step input could not be checked: {e}"), "input_schema_error")),
    }
}

fn fail_slot(slot: &mut Slot, label: &str, err: StepError, now: DateTime<Utc>, log: &mut Log) {
    slot.status = StepStatus::Failed;
    slot.completed_at = Some(now);
    log.status(
        "step_failed",
        Some(label),
        slot.job_id.as_deref(),
        "failed",
        Some(err.message.clone()),
        Some(json!({"code": err.code})),
    );
    slot.error = Some(err);
}

/// One pass over a run; returns the jobs to cancel (of a run that ended).
fn pass(run: &mut WorkflowRun, input: &PassInput, log: &mut Log) -> Vec<String> {
    let def = run.workflow.clone();
    let now = input.now;
    // 1. Settle what finished.
    for (id, step) in &def.steps {
        let Some(sr) = run.steps.get_mut(id) else { continue };
        match step.step_kind() {
            StepKind::Worker | StepKind::Approval => {
                if sr.children.is_empty() {
                    observe_slot(&mut sr.slot, id, step.retry.as_ref(), input, log);
                } else {
                    for child in &mut sr.children {
                        let label = format!("{id}~{}", child.index);
                        observe_slot(&mut child.slot, &label, step.retry.as_ref(), input, log);
                    }
                }
            }
            StepKind::Delay => {
                if sr.slot.status == StepStatus::Running && sr.fires_at.is_none_or(|t| t <= now) {
                    sr.slot.status = StepStatus::Succeeded;
                    sr.slot.completed_at = Some(now);
                    log.status("step_delay_completed", Some(id), None, "succeeded", None, None);
                }
            }
            StepKind::Condition => {}
        }
    }
    // 2. Schedule what is ready, until nothing changes (inline steps finish at once).
    loop {
        let mut progressed = false;
        for (id, step) in &def.steps {
            progressed |= schedule_step(run, id, step, input, log);
        }
        if !progressed {
            break;
        }
    }
    // 3. The run's status.
    settle_run(run, log, now)
}

/// Advance one step if it can move; `true` when it changed.
fn schedule_step(run: &mut WorkflowRun, id: &str, step: &StepDef, input: &PassInput, log: &mut Log) -> bool {
    let now = input.now;
    let kind = step.step_kind();
    let Some(current) = run.steps.get(id) else { return false };
    let status = current.slot.status;

    // A fan-out in progress: start items, aggregate.
    if status == StepStatus::Running && !current.children.is_empty() {
        return advance_fanout(run, id, step, input, log);
    }
    if status != StepStatus::Pending {
        return false;
    }
    // A retry waiting for its time.
    if current.slot.attempts > 0 {
        if current.slot.next_attempt_at.is_some_and(|t| t > now) {
            return false;
        }
        let sr = run.steps.get_mut(id).expect("step exists");
        let again = sr.slot.input.clone().unwrap_or(Value::Null);
        let job_id = job_id_for(&run.id, id, None, sr.slot.attempts + 1);
        start_attempt(&mut sr.slot, job_id, id, again, now, log);
        return true;
    }
    // Dependencies: all finished, none failed.
    let deps: Vec<StepStatus> =
        step.depends_on.iter().map(|d| run.steps.get(d).map(|s| s.slot.status).unwrap_or_default()).collect();
    if deps.iter().any(|s| !s.is_terminal() || s.is_failure()) {
        return false;
    }
    if !deps.is_empty() && deps.iter().all(|s| *s == StepStatus::Skipped) {
        let sr = run.steps.get_mut(id).expect("step exists");
        sr.slot.status = StepStatus::Skipped;
        sr.slot.completed_at = Some(now);
        sr.skip_reason = Some("every step it depends on was skipped".into());
        log.status("step_skipped", Some(id), None, "skipped", sr.skip_reason.clone(), None);
        return true;
    }
    let vars = scope(run, None);
    // A guard on a non-condition step.
    if kind != StepKind::Condition
        && let Some(cond) = &step.condition
    {
        match expr::eval_bool(cond, &vars) {
            Ok(true) => {}
            Ok(false) => {
                let sr = run.steps.get_mut(id).expect("step exists");
                sr.slot.status = StepStatus::Skipped;
                sr.slot.completed_at = Some(now);
                sr.skip_reason = Some(format!("condition {cond:?} is false"));
                log.status("step_skipped", Some(id), None, "skipped", sr.skip_reason.clone(), None);
                return true;
            }
            Err(e) => {
                let sr = run.steps.get_mut(id).expect("step exists");
                fail_slot(&mut sr.slot, id, failure(e, "condition_error"), now, log);
                return true;
            }
        }
    }
    match kind {
        StepKind::Condition => {
            let cond = step.condition.as_deref().unwrap_or("");
            let result = expr::eval_bool(cond, &vars);
            let sr = run.steps.get_mut(id).expect("step exists");
            sr.slot.started_at = Some(now);
            match result {
                Ok(value) => {
                    sr.slot.status = StepStatus::Succeeded;
                    sr.slot.output = Some(Value::Bool(value));
                    sr.slot.completed_at = Some(now);
                    log.status(
                        "step_condition_evaluated",
                        Some(id),
                        None,
                        "succeeded",
                        None,
                        Some(json!({"value": value})),
                    );
                }
                Err(e) => fail_slot(&mut sr.slot, id, failure(e, "condition_error"), now, log),
            }
        }
        StepKind::Delay => {
            let fires = match (step.delay_sec, step.delay_until) {
                (Some(secs), _) => now + chrono::Duration::seconds(secs as i64),
                (None, Some(at)) => at,
                (None, None) => now,
            };
            let sr = run.steps.get_mut(id).expect("step exists");
            sr.slot.status = StepStatus::Running;
            sr.slot.started_at = Some(now);
            sr.fires_at = Some(fires);
            let ms = (fires - now).num_milliseconds().max(0);
            log.status(
                "step_delay_started",
                Some(id),
                None,
                "running",
                None,
                Some(json!({"delay_ms": ms, "fires_at": fires})),
            );
        }
        StepKind::Approval => {
            let decision = match &step.input {
                Some(t) => expr::render(t, &vars),
                None => Ok(Value::Null),
            };
            let context = decision.map(|decision| {
                json!({
                    "kind": "workflow_approval_context",
                    "version": 1,
                    "workflow": {
                        "workflow_id": run.workflow_id,
                        "workflow_name": def_name(run),
                        "run_id": run.id,
                        "step_id": id,
                        "step_name": step.name,
                        "requested_at": now,
                        "tenant_id": run.org_id,
                    },
                    "decision": decision,
                })
            });
            let job_id = job_id_for(&run.id, id, None, 1);
            let sr = run.steps.get_mut(id).expect("step exists");
            match context {
                Ok(ctx) => start_attempt(&mut sr.slot, job_id, id, ctx, now, log),
                Err(e) => fail_slot(&mut sr.slot, id, failure(e, "template_error"), now, log),
            }
        }
        StepKind::Worker => match &step.for_each {
            Some(list) => {
                let items = match expr::eval(list, &vars) {
                    Ok(Value::Array(items)) if items.len() <= MAX_FANOUT => Ok(items),
                    Ok(Value::Array(items)) => Err(format!("for_each yields {} items (max {MAX_FANOUT})", items.len())),
                    Ok(Value::Null) => Ok(Vec::new()),
                    Ok(other) => Err(format!("for_each {list:?} is not a list (got {other})")),
                    Err(e) => Err(e),
                };
                let sr = run.steps.get_mut(id).expect("step exists");
                match items {
                    Ok(items) if items.is_empty() => {
                        sr.slot.status = StepStatus::Succeeded;
                        sr.slot.started_at = Some(now);
                        sr.slot.completed_at = Some(now);
                        sr.slot.output = Some(json!([]));
                        log.status(
                            "step_succeeded",
                            Some(id),
                            None,
                            "succeeded",
                            Some("nothing to fan out over".into()),
                            None,
                        );
                    }
                    Ok(items) => {
                        sr.slot.status = StepStatus::Running;
                        sr.slot.started_at = Some(now);
                        sr.children = items
                            .into_iter()
                            .enumerate()
                            .map(|(index, item)| ChildRun { index, item, slot: Slot::default() })
                            .collect();
                        log.status(
                            "step_fanout_started",
                            Some(id),
                            None,
                            "running",
                            None,
                            Some(json!({"items": sr.children.len()})),
                        );
                        advance_fanout(run, id, step, input, log);
                    }
                    Err(e) => fail_slot(&mut sr.slot, id, failure(e, "for_each_error"), now, log),
                }
            }
            None => {
                let rendered = step_input(step, run, None, input);
                let job_id = job_id_for(&run.id, id, None, 1);
                let sr = run.steps.get_mut(id).expect("step exists");
                match rendered {
                    Ok(value) => start_attempt(&mut sr.slot, job_id, id, value, now, log),
                    Err(e) => fail_slot(&mut sr.slot, id, e, now, log),
                }
            }
        },
    }
    true
}

fn def_name(run: &WorkflowRun) -> &str {
    &run.workflow.name
}

/// Start fan-out items up to the step's parallelism and finish the step
/// when every item is done (output: the items' outputs, in order).
fn advance_fanout(run: &mut WorkflowRun, id: &str, step: &StepDef, input: &PassInput, log: &mut Log) -> bool {
    let now = input.now;
    let mut changed = false;
    let limit = step.max_parallel.map(|p| p as usize).unwrap_or(DEFAULT_PARALLEL).max(1);
    // Fail fast: a failed item fails the step and cancels the others.
    let failed = run.steps[id].children.iter().find(|c| c.slot.status.is_failure()).map(|c| (c.index, c.slot.clone()));
    if let Some((index, slot)) = failed {
        let sr = run.steps.get_mut(id).expect("step exists");
        for child in sr.children.iter_mut().filter(|c| !c.slot.status.is_terminal()) {
            child.slot.status = StepStatus::Cancelled;
            child.slot.completed_at = Some(now);
        }
        let mut err = slot.error.clone().unwrap_or_else(|| failure("a fan-out item failed", "item_failed"));
        err.message = format!("item {index} failed: {}", err.message);
        sr.slot.status = slot.status;
        sr.slot.completed_at = Some(now);
        log.status(
            "step_failed",
            Some(id),
            None,
            slot.status.as_str(),
            Some(err.message.clone()),
            Some(json!({"item": index})),
        );
        sr.slot.error = Some(err);
        return true;
    }
    let running = run.steps[id]
        .children
        .iter()
        .filter(|c| matches!(c.slot.status, StepStatus::Running | StepStatus::Waiting))
        .count();
    let mut free = limit.saturating_sub(running);
    let ready: Vec<usize> = run.steps[id]
        .children
        .iter()
        .filter(|c| c.slot.status == StepStatus::Pending && c.slot.next_attempt_at.is_none_or(|t| t <= now))
        .map(|c| c.index)
        .collect();
    for index in ready {
        if free == 0 {
            break;
        }
        let child = run.steps[id].children[index].clone();
        let value = if child.slot.attempts > 0 {
            Ok(child.slot.input.clone().unwrap_or(Value::Null))
        } else {
            step_input(step, run, Some((index, &child.item)), input)
        };
        let job_id = job_id_for(&run.id, id, Some(index), child.slot.attempts + 1);
        let label = format!("{id}~{index}");
        let slot = &mut run.steps.get_mut(id).expect("step exists").children[index].slot;
        match value {
            Ok(value) => start_attempt(slot, job_id, &label, value, now, log),
            Err(e) => fail_slot(slot, &label, e, now, log),
        }
        free -= 1;
        changed = true;
    }
    let sr = run.steps.get_mut(id).expect("step exists");
    if sr.children.iter().all(|c| c.slot.status == StepStatus::Succeeded) {
        sr.slot.status = StepStatus::Succeeded;
        sr.slot.completed_at = Some(now);
        sr.slot.output =
            Some(Value::Array(sr.children.iter().map(|c| c.slot.output.clone().unwrap_or(Value::Null)).collect()));
        log.status("step_succeeded", Some(id), None, "succeeded", None, Some(json!({"items": sr.children.len()})));
        return true;
    }
    changed
}

/// Every job of the run still in flight.
fn open_jobs(run: &WorkflowRun) -> Vec<String> {
    let mut out = Vec::new();
    for sr in run.steps.values() {
        for slot in std::iter::once(&sr.slot).chain(sr.children.iter().map(|c| &c.slot)) {
            if matches!(slot.status, StepStatus::Running | StepStatus::Waiting)
                && let Some(job) = &slot.job_id
            {
                out.push(job.clone());
            }
        }
    }
    out
}

/// End a run: open steps are cancelled (pending ones skipped), their jobs
/// returned for cancelling.
pub(super) fn finish(
    run: &mut WorkflowRun,
    status: RunStatus,
    error: Option<StepError>,
    log: &mut Log,
    now: DateTime<Utc>,
) -> Vec<String> {
    let jobs = open_jobs(run);
    let why = format!("run {}", status.as_str());
    for (id, sr) in run.steps.iter_mut() {
        match sr.slot.status {
            StepStatus::Running | StepStatus::Waiting => {
                sr.slot.status = StepStatus::Cancelled;
                sr.slot.completed_at = Some(now);
                for child in sr.children.iter_mut().filter(|c| !c.slot.status.is_terminal()) {
                    child.slot.status = StepStatus::Cancelled;
                    child.slot.completed_at = Some(now);
                }
                log.status("step_cancelled", Some(id), sr.slot.job_id.as_deref(), "cancelled", Some(why.clone()), None);
            }
            StepStatus::Pending => {
                sr.slot.status = StepStatus::Skipped;
                sr.skip_reason = Some(why.clone());
                log.status("step_skipped", Some(id), None, "skipped", Some(why.clone()), None);
            }
            _ => {}
        }
    }
    run.status = status;
    run.completed_at = Some(now);
    let message = error.as_ref().map(|e| e.message.clone());
    let data =
        error.as_ref().map(|e| json!({"step_id": e.step_id, "rule_id": e.rule_id, "code": e.code, "job_id": e.job_id}));
    run.error = error;
    log.status("run_finished", None, None, status.as_str(), message, data);
    jobs
}

/// Work out the run's status after a pass; ends it when it is over.
fn settle_run(run: &mut WorkflowRun, log: &mut Log, now: DateTime<Utc>) -> Vec<String> {
    if let (Some(limit), Some(started)) = (run.workflow.timeout_sec.filter(|t| *t > 0), run.started_at)
        && now > started + chrono::Duration::seconds(limit as i64)
    {
        let err = failure(format!("the run exceeded its timeout of {limit} s"), "run_timed_out");
        return finish(run, RunStatus::TimedOut, Some(err), log, now);
    }
    let failed = run
        .steps
        .iter()
        .filter(|(_, s)| s.slot.status.is_failure())
        .min_by_key(|(_, s)| s.slot.completed_at)
        .map(|(id, s)| (id.clone(), s.slot.clone()));
    if let Some((id, slot)) = failed {
        let mut err =
            slot.error.clone().unwrap_or_else(|| failure(format!("step {id} {}", slot.status.as_str()), "step_failed"));
        let what = match slot.status {
            StepStatus::Denied => match &err.rule_id {
                Some(rule) => format!("step {id} was denied by rule {rule}: {}", err.message),
                None => format!("step {id} was denied: {}", err.message),
            },
            StepStatus::TimedOut => format!("step {id} timed out: {}", err.message),
            StepStatus::Cancelled => format!("step {id} was cancelled"),
            _ => format!("step {id} failed: {}", err.message),
        };
        err.message = what;
        err.step_id = Some(id);
        if err.code.is_none() {
            err.code = Some(format!("step_{}", slot.status.as_str()));
        }
        return finish(run, RunStatus::Failed, Some(err), log, now);
    }
    if run.steps.values().all(|s| s.slot.status.is_terminal()) {
        let ends = sinks(&run.workflow);
        let output = match ends.as_slice() {
            [one] => run.steps.get(one).and_then(|s| s.slot.output.clone()),
            _ => Some(Value::Object(
                ends.iter()
                    .filter_map(|id| {
                        run.steps.get(id).map(|s| (id.clone(), s.slot.output.clone().unwrap_or(Value::Null)))
                    })
                    .collect(),
            )),
        };
        run.output = output;
        return finish(run, RunStatus::Succeeded, None, log, now);
    }
    run.status = if run.steps.values().any(|s| {
        s.slot.status == StepStatus::Waiting || s.children.iter().any(|c| c.slot.status == StepStatus::Waiting)
    }) {
        RunStatus::Waiting
    } else {
        RunStatus::Running
    };
    Vec::new()
}

/// A job a pass decided on that does not exist yet.
struct PendingJob {
    job_id: String,
    step_id: String,
    kind: StepKind,
    input: Value,
}

fn missing_jobs(
    run: &WorkflowRun,
    jobs: &HashMap<String, JobRecord>,
    failures: &HashMap<String, StepError>,
) -> Vec<PendingJob> {
    let mut out = Vec::new();
    for (id, sr) in &run.steps {
        let kind = run.workflow.steps.get(id).map(StepDef::step_kind).unwrap_or(StepKind::Worker);
        for slot in std::iter::once(&sr.slot).chain(sr.children.iter().map(|c| &c.slot)) {
            if !matches!(slot.status, StepStatus::Running | StepStatus::Waiting) {
                continue;
            }
            if let Some(job_id) = &slot.job_id
                && !jobs.contains_key(job_id)
                && !failures.contains_key(job_id)
            {
                out.push(PendingJob {
                    job_id: job_id.clone(),
                    step_id: id.clone(),
                    kind,
                    input: slot.input.clone().unwrap_or(Value::Null),
                });
            }
        }
    }
    out
}

/// The submit body of a worker step's job.
fn step_job(def: &StepDef, input: Value) -> SubmitJob {
    let meta = def.meta.clone().unwrap_or_default();
    SubmitJob {
        topic: def.topic.clone(),
        input: Some(input),
        deadline_ms: def.timeout_sec.filter(|t| *t > 0).map(|t| (t * 1000) as i64),
        actor_id: meta.actor_id,
        actor_type: meta.actor_type,
        pack_id: meta.pack_id,
        capability: meta.capability,
        risk_tags: meta.risk_tags,
        requires: meta.requires,
        labels: meta.labels,
        ..Default::default()
    }
}

pub fn run_caller(run: &WorkflowRun) -> AuthContext {
    AuthContext {
        tenant: run.org_id.clone(),
        role: Role::parse(&run.caller.role).unwrap_or(Role::User),
        principal_id: run.caller.principal_id.clone(),
        key_id: run.caller.key_id.clone(),
        allow_cross_tenant: run.caller.allow_cross_tenant,
    }
}

pub struct Engine {
    repo: WorkflowRepo,
    jobs: Arc<JobService>,
    schemas: Arc<SchemaService>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    queued: Mutex<HashSet<String>>,
    sweep_every: Duration,
}

impl Engine {
    pub fn new(
        repo: WorkflowRepo,
        jobs: Arc<JobService>,
        schemas: Arc<SchemaService>,
        sweep_every: Duration,
    ) -> Arc<Self> {
        Arc::new(Engine {
            repo,
            jobs,
            schemas,
            locks: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashSet::new()),
            sweep_every,
        })
    }

    /// Listen for step jobs changing and sweep unfinished runs periodically
    /// (the first sweep resumes runs left in flight by a restart).
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.jobs.repo().listen_for_runs(tx);
        self.jobs.set_run_guard(self.clone());
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(run) = rx.recv().await {
                this.kick(run);
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.repo.active().await {
                    Ok(runs) => runs.into_iter().for_each(|r| this.kick(r)),
                    Err(e) => tracing::warn!(error = %e, "workflow sweep could not list runs"),
                }
                tokio::time::sleep(this.sweep_every).await;
            }
        });
    }

    /// Schedule a pass over `run` (coalesced while one is queued).
    pub fn kick(self: &Arc<Self>, run: String) {
        if !self.queued.lock().insert(run.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.queued.lock().remove(&run);
            if let Err(e) = this.advance(&run).await {
                tracing::warn!(run = %run, error = %e, "workflow pass failed");
            }
        });
    }

    pub fn jobs(&self) -> &Arc<JobService> {
        &self.jobs
    }

    fn lock_for(&self, run: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(run.to_string()).or_default().clone()
    }

    /// Run `f` holding the run's lock.
    pub async fn locked<T, F: std::future::Future<Output = T>>(&self, run: &str, f: F) -> T {
        let lock = self.lock_for(run);
        let _guard = lock.lock().await;
        f.await
    }

    async fn observe(&self, run: &WorkflowRun) -> Result<HashMap<String, JobRecord>, EngineError> {
        let mut out = HashMap::new();
        for sr in run.steps.values() {
            for slot in std::iter::once(&sr.slot).chain(sr.children.iter().map(|c| &c.slot)) {
                if matches!(slot.status, StepStatus::Running | StepStatus::Waiting)
                    && let Some(id) = &slot.job_id
                {
                    match self.jobs.job(id).await {
                        Ok(Some(job)) if job.tenant == run.org_id => {
                            out.insert(id.clone(), job);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(StoreError::Unavailable(e.to_string()).into()),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Drive a run as far as it goes now.
    pub async fn advance(&self, run_id: &str) -> Result<(), EngineError> {
        let lock = self.lock_for(run_id);
        let _guard = lock.lock().await;
        let result = self.advance_locked(run_id).await;
        if matches!(self.repo.run(run_id).await, Ok(Some((run, _))) if run.status.is_terminal()) {
            self.locks.lock().remove(run_id);
        }
        result
    }

    async fn advance_locked(&self, run_id: &str) -> Result<(), EngineError> {
        let mut failures: HashMap<String, StepError> = HashMap::new();
        for _ in 0..64 {
            let Some((mut run, revision)) = self.repo.run(run_id).await? else { return Ok(()) };
            if run.status.is_terminal() {
                self.repo.clear_active(run_id).await?;
                return Ok(());
            }
            let jobs = self.observe(&run).await?;
            let now = Utc::now();
            let before = serde_json::to_vec(&run).unwrap_or_default();
            let mut log = Log::new(&run, now);
            let input = PassInput { jobs: &jobs, failures: &failures, schemas: &self.schemas, now };
            let cancels = pass(&mut run, &input, &mut log);
            log.close(&mut run);
            if serde_json::to_vec(&run).unwrap_or_default() != before {
                run.updated_at = now;
                if !self.repo.apply(WorkflowRepo::update_ops(&run, revision, &log.events)).await? {
                    continue;
                }
            }
            for job in cancels {
                if let Err(e) = self.jobs.cancel_for_run(&job, &format!("workflow run {run_id} ended")).await {
                    tracing::warn!(job = %job, error = %e, "could not cancel a job of a finished run");
                }
            }
            let missing = missing_jobs(&run, &jobs, &failures);
            if missing.is_empty() {
                return Ok(());
            }
            let caller = run_caller(&run);
            let mut progressed = false;
            for pending in missing {
                let origin = StepJobRef {
                    workflow_id: run.workflow_id.clone(),
                    run_id: run.id.clone(),
                    step_id: pending.step_id.clone(),
                };
                let result = match pending.kind {
                    StepKind::Approval => {
                        self.jobs.hold_gate(&caller, &run.org_id, &pending.job_id, &origin, pending.input).await
                    }
                    _ => {
                        let def = &run.workflow.steps[&pending.step_id];
                        self.jobs
                            .submit_step(&caller, &run.org_id, &pending.job_id, &origin, step_job(def, pending.input))
                            .await
                            .map(|_| ())
                    }
                };
                match result {
                    Ok(()) => progressed = true,
                    Err(e) => match permanent(&e) {
                        Some(err) => {
                            failures.insert(pending.job_id.clone(), err);
                            progressed = true;
                        }
                        None => tracing::warn!(job = %pending.job_id, error = %e, "step job not submitted; will retry"),
                    },
                }
            }
            if !progressed {
                return Ok(());
            }
        }
        Err(EngineError::Contended(run_id.to_string()))
    }
}

#[async_trait]
impl RunGuard for Engine {
    async fn open_guard(&self, tenant: &str, run_id: &str) -> Result<Vec<Op>, JobError> {
        match self.repo.run(run_id).await {
            Ok(Some((run, _))) if run.org_id == tenant && run.status.is_terminal() => Err(JobError::Conflict {
                code: "workflow_run_finished",
                message: format!(
                    "workflow run {run_id} is {}; its approvals can no longer be decided",
                    run.status.as_str()
                ),
                state: None,
            }),
            Ok(Some((run, revision))) if run.org_id == tenant => {
                Ok(vec![Op::RequireRevision { key: super::repo::run_key(run_id), expected: revision }])
            }
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(JobError::Store(e.to_string())),
        }
    }
}

/// New step states for a run about to start: everything pending, or, for a
/// rerun, the kept steps as they were.
pub fn fresh_steps(run_steps: &BTreeMap<String, StepDef>) -> BTreeMap<String, StepRun> {
    run_steps.keys().map(|id| (id.clone(), StepRun { step_id: id.clone(), ..Default::default() })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Log {
        Log { run_id: "r".into(), workflow_id: "w".into(), seq: 0, now: Utc::now(), events: Vec::new() }
    }

    /// Regression: an approval slot used to read `waiting` (and so its run)
    /// before its gate job existed, so a client that saw the run waiting
    /// could find no approval to act on.
    #[test]
    fn a_scheduled_slot_is_running_until_its_job_is_seen_held() {
        let mut slot = Slot::default();
        let mut log = log();
        start_attempt(&mut slot, "r:gate@1".into(), "gate", json!({}), Utc::now(), &mut log);
        assert_eq!(slot.status, StepStatus::Running);
        assert_eq!(slot.job_id.as_deref(), Some("r:gate@1"));
        assert!(!slot.held);
        assert_eq!(log.events.len(), 1);
        assert_eq!(log.events[0].kind, "step_scheduled");
    }
}
