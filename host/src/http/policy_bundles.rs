//! Policy Studio's routes: bundles (drafts), publish, snapshots, history,
//! rollback. The policy is shared by every tenant: admins read it, only
//! operator keys change it.
//!
//! * `GET /api/v1/policy/bundles`, `GET|PUT|DELETE /api/v1/policy/bundles/{id}`
//!   (ids may contain `/`, raw, as `%2F` or upstream's `~`),
//!   `POST /api/v1/policy/bundles/{id}/simulate` (upstream's per-bundle dry run)
//! * `POST /api/v1/policy/publish`, `POST /api/v1/policy/rollback`
//! * `GET /api/v1/policy/snapshots`, `GET /api/v1/policy/snapshots/{id}`

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty, StrictJson};
use super::policy::{DraftBundle, EvaluateBody};
use crate::app::App;
use crate::policy::Diagnostic;
use crate::policy::bundles::BundleError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Why a tenant-bound key may not change the policy.
pub(super) const POLICY_IS_SHARED: &str = "the policy is shared by every tenant; only an operator key may change it";

/// 400 with every diagnostic (bundle, line, column, message).
pub fn invalid_bundle(diags: Vec<Diagnostic>) -> ApiError {
    let first = diags
        .first()
        .map(|d| {
            if d.line > 0 {
                format!("{} line {} column {}: {}", d.bundle_id, d.line, d.column, d.message)
            } else {
                format!("{}: {}", d.bundle_id, d.message)
            }
        })
        .unwrap_or_default();
    ApiError::bad_request(format!("invalid policy content: {first}"))
        .code("POLICY_VALIDATION_FAILED")
        .with("diagnostics", serde_json::to_value(diags).unwrap_or_default())
}

pub fn bundle_error(e: BundleError) -> ApiError {
    match e {
        BundleError::NotFound => ApiError::not_found("bundle not found"),
        BundleError::SnapshotNotFound => ApiError::not_found("snapshot not found"),
        BundleError::InvalidId(m) => ApiError::bad_request(m).code("POLICY_VALIDATION_FAILED"),
        e @ BundleError::OwnedByPack { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string()).code("bundle_owned_by_pack")
        }
        BundleError::Invalid(diags) => invalid_bundle(diags),
        e @ BundleError::Busy => {
            let mut err = ApiError::new(StatusCode::CONFLICT, e.to_string()).code("POLICY_VERSION_CONFLICT");
            err.retry_after = Some(1);
            err
        }
        BundleError::Policy(p) => super::policy::policy_error(p),
    }
}

/// Path ids: `/` may come raw or as `%2F` (axum decodes both), `~` is
/// upstream's stand-in for `/`.
fn bundle_id(raw: &str) -> String {
    raw.trim_matches('/').replace('~', "/")
}

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let items = app.policy.list_bundles().await.map_err(bundle_error)?;
    let summaries: Vec<Value> = items
        .iter()
        .map(|b| {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v.as_object_mut().map(|m| m.remove("content"));
            v
        })
        .collect();
    Ok(Json(json!({
        "items": summaries,
        "active_snapshot": app.policy.active().id,
        "drafts": items.iter().filter(|b| b.draft.is_some()).count(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdQuery {
    #[serde(default)]
    bundle_id: Option<String>,
}

/// `GET /api/v1/policy/bundles/{id}`; also upstream's
/// `GET /api/v1/policy/bundles/snapshots[/{id}]`.
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    query: Result<Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    // Upstream's `bundles/snapshots[/{id}]` (`snapshots` is no bundle id).
    let trimmed = raw.trim_matches('/');
    if trimmed == "snapshots" {
        return history_json(&app, HistoryQuery::default()).await.map(Json);
    }
    if let Some(rest) = trimmed.strip_prefix("snapshots/") {
        return snapshot_json(&app, rest).await.map(Json);
    }
    let id = query.ok().and_then(|q| q.0.bundle_id).unwrap_or_else(|| bundle_id(trimmed));
    let view = app.policy.get_bundle(&id).await.map_err(bundle_error)?;
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    content: String,
    /// Not given: the bundle keeps its current state (new ones are enabled).
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    author: String,
    #[serde(default)]
    message: String,
}

/// Records name the authenticated caller; an `author` the body claims is
/// kept in the message, marked as such.
fn claimed(author: &str, caller: &Caller, message: String) -> String {
    let author = author.trim();
    if author.is_empty() || author == caller.actor() {
        message
    } else if message.is_empty() {
        format!("(author: {author})")
    } else {
        format!("{message} (author: {author})")
    }
}

/// `PUT /api/v1/policy/bundles/{id}`: validate and save a draft.
pub async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    StrictJson(body): StrictJson<PutBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator(POLICY_IS_SHARED)?;
    let id = bundle_id(&raw);
    // Who saved it is who authenticated; a claimed `author` goes in the message.
    let message = claimed(&body.author, &caller, body.message);
    let view = app
        .policy
        .save_draft(&id, &body.content, body.enabled, &caller.actor(), &message)
        .await
        .map_err(bundle_error)?;
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_operator(POLICY_IS_SHARED)?;
    app.policy.delete_bundle(&bundle_id(&raw), &caller.actor()).await.map_err(bundle_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSimulateBody {
    request: EvaluateBody,
    #[serde(default)]
    content: Option<String>,
}

/// `POST /api/v1/policy/bundles/{id}/simulate`: upstream's per-bundle dry
/// run (`content` overlaid as bundle `{id}`, or the stored draft of it).
pub async fn post(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    StrictJson(body): StrictJson<BundleSimulateBody>,
) -> Result<Response, ApiError> {
    let Some(id) = raw.trim_matches('/').strip_suffix("/simulate").map(bundle_id) else {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    };
    let content = match body.content {
        Some(c) => Some(c),
        // No content: the stored bundle (its draft if any); none is a 404.
        None => app.policy.get_bundle(&id).await.map_err(bundle_error)?.content,
    };
    let mut request = body.request;
    let mut inline = request.bundles.take().unwrap_or_default();
    inline.push(DraftBundle { id, content, enabled: true });
    request.bundles = Some(inline);
    let out = super::policy::simulate(State(app), caller, StrictJson(request)).await?;
    Ok(out.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    #[serde(default)]
    bundle_ids: Vec<String>,
    #[serde(default)]
    author: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    note: String,
}

pub async fn publish(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonOrEmpty(body): JsonOrEmpty<PublishBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator(POLICY_IS_SHARED)?;
    let message = claimed(&body.author, &caller, if body.message.is_empty() { body.note } else { body.message });
    let ids: Vec<String> = body.bundle_ids.iter().map(|i| bundle_id(i)).collect();
    for id in &ids {
        crate::policy::bundles::validate_id(id).map_err(bundle_error)?;
    }
    let out = app.policy.publish(&ids, &caller.actor(), &message).await.map_err(bundle_error)?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    snapshot_id: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    note: String,
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(body): StrictJson<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator(POLICY_IS_SHARED)?;
    if body.snapshot_id.trim().is_empty() {
        return Err(ApiError::bad_request("snapshot_id is required").with("field", "snapshot_id"));
    }
    let message = claimed(&body.author, &caller, if body.message.is_empty() { body.note } else { body.message });
    let out = app.policy.rollback(body.snapshot_id.trim(), &caller.actor(), &message).await.map_err(bundle_error)?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// A history cursor is a history position: 20 digits, `-`, 4 hex digits.
fn valid_history_cursor(cursor: &str) -> bool {
    match cursor.split_once('-') {
        Some((time, salt)) => {
            time.len() == 20
                && time.bytes().all(|b| b.is_ascii_digit())
                && salt.len() == 4
                && salt.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

async fn history_json(app: &App, query: HistoryQuery) -> Result<Value, ApiError> {
    let limit = match query.limit {
        Some(0) => return Err(ApiError::bad_request("limit must be between 1 and 500").code("invalid_query")),
        limit => limit.unwrap_or(100).min(500),
    };
    let cursor = query.cursor.as_deref().filter(|c| !c.is_empty());
    if let Some(c) = cursor.filter(|c| !valid_history_cursor(c)) {
        return Err(ApiError::bad_request(format!(
            "invalid cursor {c:?}: pass back a next_cursor this listing returned"
        ))
        .code("invalid_query"));
    }
    let (items, next) = app.policy.history_page(cursor, limit).await.map_err(bundle_error)?;
    let mut ids: Vec<String> = Vec::new();
    for h in &items {
        if !ids.contains(&h.snapshot_id) {
            ids.push(h.snapshot_id.clone());
        }
    }
    Ok(json!({"items": items, "active": app.policy.active().id, "snapshots": ids, "next_cursor": next}))
}

async fn snapshot_json(app: &App, id: &str) -> Result<Value, ApiError> {
    let record = app.policy.snapshot(id).await.map_err(bundle_error)?;
    Ok(serde_json::to_value(record).unwrap_or_default())
}

/// `GET /api/v1/policy/snapshots`: the history, newest first.
pub async fn snapshots(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let query = super::jobs::query(query)?;
    history_json(&app, query).await.map(Json)
}

/// `GET /api/v1/policy/snapshots/{id}`: one immutable snapshot.
pub async fn snapshot(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    snapshot_json(&app, &id).await.map(Json)
}
