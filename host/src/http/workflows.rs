//! `/api/v1/workflows` (definitions and their runs) and
//! `/api/v1/workflow-runs` (runs, cancel, timeline, rerun).

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty, StrictJson};
use super::jobs::{page_limit, query, request_idempotency_key};
use crate::app::App;
use crate::workflows::WorkflowError;
use crate::workflows::model::{RunStatus, StepKind, WorkflowDef, WorkflowRun};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub fn workflow_error(e: WorkflowError) -> ApiError {
    match e {
        WorkflowError::Invalid(m) => ApiError::bad_request(m).code("invalid_workflow"),
        WorkflowError::TenantDenied => ApiError::forbidden("tenant access denied"),
        WorkflowError::NotFound(what) => ApiError::not_found(what),
        WorkflowError::Conflict { code, message, status } => {
            let mut err = ApiError::new(StatusCode::CONFLICT, message).code(code);
            if let Some(status) = status {
                err = err.with("run_status", status);
            }
            err
        }
        WorkflowError::InputViolations { violations } => ApiError::bad_request("input schema validation failed")
            .code("input_schema_validation_failed")
            .with("violations", serde_json::to_value(violations).unwrap_or_default()),
        WorkflowError::IdempotencyConflict => {
            ApiError::new(StatusCode::CONFLICT, "idempotency key already used with a different request")
                .code("RUN_IDEMPOTENCY_CONFLICT")
        }
        WorkflowError::Store(detail) => ApiError::unavailable(detail),
    }
}

fn definition_view(def: &WorkflowDef) -> Value {
    serde_json::to_value(def).unwrap_or_default()
}

/// A run as the API shows it (upstream's run object plus links and timers).
pub fn run_view(run: &WorkflowRun) -> Value {
    let context: Map<String, Value> = run
        .steps
        .iter()
        .filter(|(_, s)| s.slot.output.is_some())
        .map(|(id, s)| (id.clone(), json!({"output": s.slot.output})))
        .collect();
    let now = Utc::now();
    let timers: Vec<Value> = run
        .steps
        .iter()
        .filter(|(id, s)| {
            run.workflow.steps.get(*id).map(|d| d.step_kind()) == Some(StepKind::Delay) && !s.slot.status.is_terminal()
        })
        .filter_map(|(id, s)| {
            s.fires_at.map(|at| {
                json!({"workflow_id": run.workflow_id, "run_id": run.id, "step_id": id, "fires_at": at,
                       "remaining_ms": (at - now).num_milliseconds().max(0)})
            })
        })
        .collect();
    json!({
        "id": run.id,
        "workflow_id": run.workflow_id,
        "org_id": run.org_id,
        "team_id": run.team_id,
        "input": run.input,
        "context": {"steps": context},
        "status": run.status.as_str(),
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "output": run.output,
        "error": run.error,
        "steps": run.steps,
        "triggered_by": run.triggered_by,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "labels": run.labels,
        "rerun_of": run.rerun_of,
        "rerun_step": run.rerun_step,
        "reruns": run.reruns,
        "timers": timers,
    })
}

pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(def): StrictJson<WorkflowDef>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (id, created) =
        app.workflows.put_definition(&caller.auth, &caller.tenant, def, None).await.map_err(workflow_error)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"id": id}))).into_response())
}

pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(def): StrictJson<WorkflowDef>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (id, created) =
        app.workflows.put_definition(&caller.auth, &caller.tenant, def, Some(&id)).await.map_err(workflow_error)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"id": id}))).into_response())
}

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let defs = app.workflows.definitions(&caller.tenant).await.map_err(workflow_error)?;
    Ok(Json(json!({"items": defs.iter().map(definition_view).collect::<Vec<_>>()})))
}

pub async fn get(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let def = app.workflows.definition(&caller.tenant, &id).await.map_err(workflow_error)?;
    Ok(Json(definition_view(&def)))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    app.workflows.delete_definition(&caller.tenant, &id).await.map_err(workflow_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn start_run(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    JsonOrEmpty(input): JsonOrEmpty<Map<String, Value>>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    for pair in raw_query.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or("");
        if !matches!(name, "idempotency_key" | "idempotency-key") {
            return Err(ApiError::bad_request(format!("unknown query parameter {name:?}")).code("invalid_query"));
        }
    }
    let key = request_idempotency_key(&headers, raw_query.as_deref(), Vec::new())?;
    let outcome = app
        .workflows
        .start(&caller.auth, &caller.tenant, &id, Value::Object(input), key)
        .await
        .map_err(workflow_error)?;
    let mut response =
        Json(json!({"run_id": outcome.run_id, "status": outcome.status, "replayed": outcome.replayed})).into_response();
    if let Ok(v) = HeaderValue::from_str(&outcome.run_id) {
        response.headers_mut().insert("x-trace-id", v);
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    #[serde(default)]
    pub workflow_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn run_page(app: &App, caller: &Caller, workflow: Option<&str>, q: RunsQuery) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(raw) => Some(
            serde_json::from_value::<RunStatus>(Value::String(raw.to_ascii_lowercase()))
                .map_err(|_| ApiError::bad_request(format!("unknown run status {raw:?}")).code("invalid_query"))?,
        ),
        None => None,
    };
    let workflow = workflow.or(q.workflow_id.as_deref().filter(|w| !w.is_empty()));
    let page = app
        .workflows
        .runs(&caller.tenant, workflow, status, q.cursor.as_deref(), page_limit(q.limit)?)
        .await
        .map_err(workflow_error)?;
    Ok(Json(json!({
        "items": page.items.iter().map(run_view).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

pub async fn list_runs(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    run_page(&app, &caller, None, query(q)?).await
}

pub async fn list_runs_of(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.workflows.definition(&caller.tenant, &id).await.map_err(workflow_error)?;
    run_page(&app, &caller, Some(&id), query(q)?).await
}

pub async fn get_run(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = app.workflows.run(&caller.tenant, &id).await.map_err(workflow_error)?;
    Ok(Json(run_view(&run)))
}

pub async fn cancel_run(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let run = app.workflows.cancel(&caller.auth, &caller.tenant, &id).await.map_err(workflow_error)?;
    Ok(Json(run_view(&run)))
}

/// Upstream's `POST /api/v1/workflows/{id}/runs/{run_id}/cancel` (204).
pub async fn cancel_run_of(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((workflow, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let run = app.workflows.run(&caller.tenant, &id).await.map_err(workflow_error)?;
    if run.workflow_id != workflow {
        return Err(ApiError::not_found("run not found"));
    }
    app.workflows.cancel(&caller.auth, &caller.tenant, &id).await.map_err(workflow_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Sequence number of the last event already read.
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub cursor: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The timeline, oldest first, as upstream's bare array; `X-Next-Cursor`
/// (the last sequence number returned) when more events follow.
pub async fn timeline(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = match q.limit.unwrap_or(200) {
        0 => return Err(ApiError::bad_request("limit must be between 1 and 500").code("invalid_query")),
        n => n.min(500),
    };
    let after = q.after.or(q.cursor).unwrap_or(0);
    let mut events = app.workflows.timeline(&caller.tenant, &id, after, limit + 1).await.map_err(workflow_error)?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next = more.then(|| events.last().map(|e| e.seq)).flatten();
    let mut response = Json(events).into_response();
    if let Some(seq) = next {
        response.headers_mut().insert("x-next-cursor", HeaderValue::from(seq));
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    #[serde(default)]
    pub from_step: Option<String>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

pub async fn rerun(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonOrEmpty(body): JsonOrEmpty<RerunBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    if body.dry_run == Some(true) {
        return Err(ApiError::bad_request("dry_run reruns are not supported")
            .code("invalid_request")
            .with("field", "dry_run"));
    }
    let key = request_idempotency_key(&headers, None, Vec::new())?;
    let outcome = app
        .workflows
        .rerun(&caller.auth, &caller.tenant, &id, body.from_step.as_deref(), key)
        .await
        .map_err(workflow_error)?;
    Ok(Json(json!({"run_id": outcome.run_id, "status": outcome.status, "rerun_of": id, "replayed": outcome.replayed})))
}
