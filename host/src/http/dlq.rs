//! `/api/v1/dlq`: dead-lettered jobs of the caller's tenant, retry, delete.

use super::approvals::PageQuery;
use super::error::ApiError;
use super::extract::Caller;
use super::jobs::{job_error, page_limit, query, render_outcome};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let q = query(q)?;
    let page = app.jobs.dlq_list(&caller.tenant, q.cursor.as_deref(), page_limit(q.limit)?).await.map_err(job_error)?;
    Ok(Json(json!({"items": page.items, "next_cursor": page.next_cursor})))
}

pub async fn retry(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (outcome, _) = app.jobs.dlq_retry(&caller.auth, &caller.tenant, &id).await.map_err(job_error)?;
    Ok(render_outcome(outcome))
}

pub async fn delete(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    caller.require_admin()?;
    app.jobs.dlq_delete(&caller.tenant, &id).await.map_err(job_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
