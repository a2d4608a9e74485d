//! `/api/v1/approvals`: held jobs, approve, reject, repair.

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty};
use super::jobs::{job_error, job_view, page_limit, query, render_outcome};
use crate::app::App;
use crate::jobs::approvals::ApprovalOutcome;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let page =
        app.jobs.approvals(&caller.tenant, q.cursor.as_deref(), page_limit(q.limit)?).await.map_err(job_error)?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|job| {
            let safety = job.safety.as_ref();
            json!({
                "job_id": job.id,
                "topic": job.topic,
                "state": job.state.as_str(),
                "created_at": job.created_at,
                "decision": safety.map(|s| s.decision.decision.as_str()),
                "rule_id": safety.map(|s| s.decision.rule_id.clone()),
                "reason": safety.map(|s| s.decision.reason.clone()),
                "policy_snapshot": safety.map(|s| s.decision.policy_snapshot.clone()),
                "job": job_view(job, true),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": page.next_cursor})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub note: String,
}

fn render(outcome: ApprovalOutcome) -> Json<Value> {
    Json(match outcome {
        ApprovalOutcome::Approved { job_id, trace_id } => {
            json!({"job_id": job_id, "trace_id": trace_id, "status": "approved"})
        }
        ApprovalOutcome::AlreadyApproved { job_id, trace_id, by, at } => json!({
            "job_id": job_id, "trace_id": trace_id, "status": "already_approved", "approved_by": by, "approved_at": at,
        }),
        ApprovalOutcome::Rejected { job_id } => json!({"job_id": job_id, "status": "rejected"}),
        ApprovalOutcome::AlreadyRejected { job_id, by, at } => {
            json!({"job_id": job_id, "status": "already_rejected", "rejected_by": by, "rejected_at": at})
        }
    })
}

pub async fn approve(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let outcome =
        app.jobs.approve(&caller.auth, &caller.tenant, &id, &body.reason, &body.note).await.map_err(job_error)?;
    Ok(render(outcome))
}

pub async fn reject(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let outcome =
        app.jobs.reject(&caller.auth, &caller.tenant, &id, &body.reason, &body.note).await.map_err(job_error)?;
    Ok(render(outcome))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairBody {
    /// The replacement input (the job's payload).
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub note: String,
}

pub async fn repair(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RepairBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let outcome =
        app.jobs.repair(&caller.auth, &caller.tenant, &id, body.input, &body.note).await.map_err(job_error)?;
    Ok(render_outcome(outcome))
}
