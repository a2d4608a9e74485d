//! `POST /api/v1/jobs`, `GET /api/v1/jobs/{id}`.

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty, StrictJson};
use crate::app::App;
use crate::auth::Role;
use crate::jobs::lifecycle::JobFilter;
use crate::jobs::{JobError, JobRecord, JobState, SubmitJob, SubmitOutcome};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const MAX_IDEMPOTENCY_KEY: usize = 256;

pub fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Invalid(m) => ApiError::bad_request(m).code("invalid_request"),
        JobError::TenantDenied => ApiError::forbidden("tenant access denied"),
        JobError::UnknownTopic { topic, registered } => {
            let truncated = registered.len() > 20;
            ApiError::bad_request(format!("unknown topic {topic}"))
                .code("unknown_topic")
                .with("topic", topic)
                .with("registered_topics", registered.into_iter().take(20).collect::<Vec<_>>())
                .with("truncated", truncated)
        }
        JobError::SchemaViolations { schema_id, violations } => {
            ApiError::bad_request(format!("input does not match schema {schema_id}"))
                .code("schema_validation_failed")
                .with("schema_id", schema_id)
                .with("violations", serde_json::to_value(violations).unwrap_or_default())
        }
        JobError::IdempotencyConflict => {
            ApiError::new(StatusCode::CONFLICT, "idempotency key already used with a different request")
                .code("IDEMPOTENCY_CONFLICT")
        }
        JobError::Throttled { reason, rule_id } => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                if reason.is_empty() { "policy throttled".into() } else { reason },
            )
            .code("policy_throttled")
            .with("rule_id", rule_id);
            e.retry_after = Some(30);
            e
        }
        JobError::PolicyUnavailable(detail) => {
            tracing::warn!(%detail, "policy check failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "policy check unavailable").code("policy_unavailable")
        }
        JobError::SchemaUnavailable(detail) => {
            tracing::warn!(%detail, "schema check failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "schema check unavailable").code("schema_unavailable")
        }
        JobError::NotFound => ApiError::not_found("job not found"),
        JobError::NotFoundWhat(what) => ApiError::not_found(what),
        JobError::PrincipalMismatch(field) => {
            ApiError::forbidden(format!("{field} does not match the credential's principal"))
                .code("principal_mismatch")
                .with("field", field)
        }
        JobError::Raced => ApiError::new(StatusCode::CONFLICT, "another request changed this at the same time; retry")
            .code("conflict_retryable")
            .with("retryable", true),
        JobError::Conflict { code, message, state } => {
            let mut e = ApiError::new(StatusCode::CONFLICT, message).code(code);
            if let Some(state) = state {
                e = e.with("state", state.as_str());
            }
            e
        }
        JobError::Forbidden(message) => {
            let code = if message.contains("self-approval") { "self_approval_denied" } else { "access_denied" };
            ApiError::forbidden(message).code(code)
        }
        JobError::Store(detail) => ApiError::unavailable(detail),
    }
}

/// The one idempotency key of a job submit, from any of the accepted places.
fn idempotency_key(headers: &HeaderMap, query: Option<&str>, body: &SubmitJob) -> Result<Option<String>, ApiError> {
    let in_body = body.idempotency_key.iter().chain(body.meta.as_ref().and_then(|m| m.idempotency_key.as_ref()));
    request_idempotency_key(headers, query, in_body.cloned().collect())
}

/// The one idempotency key of a request: headers `Idempotency-Key` /
/// `X-Idempotency-Key`, query `idempotency_key` / `idempotency-key`, or keys
/// the body carries. Different keys in one request are refused.
pub fn request_idempotency_key(
    headers: &HeaderMap,
    query: Option<&str>,
    in_body: Vec<String>,
) -> Result<Option<String>, ApiError> {
    let invalid = |m: &str| ApiError::bad_request(m.to_string()).code("invalid_request");
    let mut keys: Vec<String> = Vec::new();
    for name in ["idempotency-key", "x-idempotency-key"] {
        for v in headers.get_all(name) {
            keys.push(v.to_str().map_err(|_| invalid("idempotency key must be visible ASCII"))?.to_string());
        }
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "idempotency_key" || k == "idempotency-key" {
                keys.push(percent_decode(v).ok_or_else(|| invalid("idempotency key in the query is not valid UTF-8"))?);
            }
        }
    }
    keys.extend(in_body);
    let mut keys: Vec<String> = keys.into_iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
    if keys.iter().any(|k| k.chars().any(char::is_control)) {
        return Err(invalid("idempotency key must not contain control characters"));
    }
    keys.sort();
    keys.dedup();
    match keys.len() {
        0 => Ok(None),
        1 if keys[0].len() <= MAX_IDEMPOTENCY_KEY => Ok(keys.pop()),
        1 => Err(invalid(&format!("idempotency key longer than {MAX_IDEMPOTENCY_KEY} bytes"))),
        _ => Err(invalid("different idempotency keys given in one request")),
    }
}

/// Decode `%XX` escapes and `+`; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub async fn submit(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    StrictJson(body): StrictJson<SubmitJob>,
) -> Result<Response, ApiError> {
    if !caller.auth.has_role(&[Role::Admin, Role::User]) {
        return Err(ApiError::forbidden("access denied"));
    }
    let key = idempotency_key(&headers, query.as_deref(), &body)?;
    let outcome = app.jobs.submit(&caller.auth, &caller.tenant, body, key).await.map_err(job_error)?;
    Ok(render_outcome(outcome))
}

pub fn render_outcome(outcome: SubmitOutcome) -> Response {
    let (status, trace, body) = match outcome {
        SubmitOutcome::Accepted { job_id, trace_id } => {
            (StatusCode::OK, trace_id.clone(), json!({"job_id": job_id, "trace_id": trace_id}))
        }
        SubmitOutcome::ApprovalRequired { job_id, trace_id, reason, rule_id } => (
            StatusCode::OK,
            trace_id.clone(),
            json!({"job_id": job_id, "trace_id": trace_id, "status": "approval_required", "reason": reason, "rule_id": rule_id}),
        ),
        SubmitOutcome::Denied { job_id, trace_id, decision } => {
            let message =
                if decision.reason.is_empty() { "policy denied".to_string() } else { decision.reason.clone() };
            (
                StatusCode::FORBIDDEN,
                trace_id.clone(),
                json!({
                    "error": message, "code": "policy_denied", "status": 403,
                    "job_id": job_id, "trace_id": trace_id,
                    "decision": decision.decision.as_str(), "rule_id": decision.rule_id,
                    "reason": decision.reason, "policy_snapshot": decision.policy_snapshot,
                }),
            )
        }
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&trace) {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

/// Query of `GET /api/v1/jobs/{id}`: `wait_ms` long-polls until the job is
/// terminal (at most 30 s).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetJobQuery {
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

pub async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<GetJobQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())).code("invalid_query"))?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(30_000));
    let job = app.jobs.get_when_done(&caller.tenant, &id, wait).await.map_err(job_error)?;
    Ok(Json(job_view(&job, caller.auth.role == Role::Admin)))
}

/// The job as upstream's GET returns it, plus our `input`, `history`,
/// `safety` and `error` objects.
pub fn job_view(job: &JobRecord, reveal_quarantined: bool) -> Value {
    let safety = job.safety.as_ref();
    let mut view = json!({
        "id": job.id,
        "state": job.state.as_str(),
        "trace_id": job.trace_id,
        "topic": job.topic,
        "tenant": job.tenant,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "input": job.input,
        "context": job.input,
        "context_ptr": format!("ctx:{}", job.id),
        "result": job.result,
        "result_ptr": job.result.as_ref().map(|_| format!("res:{}", job.id)),
        "prompt": job.prompt,
        "labels": job.labels,
        "priority": job.priority,
        "capability": job.capability,
        "risk_tags": job.risk_tags,
        "requires": job.requires,
        "pack_id": job.pack_id,
        "actor_id": job.actor_id,
        "actor_type": job.actor_type,
        "principal_id": job.principal_id,
        "idempotency_key": job.idempotency_key,
        "attempts": job.attempts,
        "worker_id": job.worker_id,
        "safety_decision": safety.map(|s| s.decision.decision.as_str()).unwrap_or(""),
        "safety_reason": safety.map(|s| s.decision.reason.clone()).unwrap_or_default(),
        "safety_rule_id": safety.map(|s| s.decision.rule_id.clone()).unwrap_or_default(),
        "safety_snapshot": safety.map(|s| s.decision.policy_snapshot.clone()).unwrap_or_default(),
        "safety_constraints": safety.and_then(|s| s.decision.constraints.clone()),
        "safety_remediations": safety.map(|s| serde_json::to_value(&s.decision.remediations).unwrap_or_default()),
        "approval_required": safety.is_some_and(|s| s.decision.approval_required),
        "approval_ref": if safety.is_some_and(|s| s.decision.approval_required) { job.id.clone() } else { String::new() },
        "safety": safety.map(|s| json!({
            "decision": s.decision.decision.as_str(),
            "rule_id": s.decision.rule_id,
            "reason": s.decision.reason,
            "policy_snapshot": s.decision.policy_snapshot,
            "constraints": s.decision.constraints,
            "remediations": s.decision.remediations,
            "checked_at": s.checked_at,
        })),
        "output_safety": job.output_safety,
        "history": job.history,
        "error": job.error,
        "max_retries": job.max_retries,
        "approval": job.approval,
        "links": job.links,
        "interrupted_at": job.interrupted_at,
    });
    if let Some(err) = &job.error {
        view["error_code"] = json!(err.code);
        view["error_message"] = json!(err.message);
    }
    if let Some(safety) = &job.output_safety {
        view["output_decision"] = safety["decision"].clone();
    }
    // A quarantined result is kept for admins and withheld from everyone else.
    if job.state == JobState::OutputQuarantined && !reveal_quarantined {
        view["result"] = Value::Null;
        view["result_ptr"] = Value::Null;
        view["result_withheld"] = json!(true);
    }
    view
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
}

pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())).code("invalid_query"))
}

pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(50) {
        0 => Err(ApiError::bad_request("limit must be between 1 and 500").code("invalid_query")),
        n => Ok(n.min(500)),
    }
}

pub async fn list_jobs(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let state = match q.state.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(raw) => Some(
            serde_json::from_value::<JobState>(Value::String(raw.to_ascii_uppercase()))
                .map_err(|_| ApiError::bad_request(format!("unknown job state {raw:?}")).code("invalid_query"))?,
        ),
        None => None,
    };
    let filter = JobFilter { state, topic: q.topic.filter(|t| !t.is_empty()) };
    let page =
        app.jobs.list(&caller.tenant, &filter, q.cursor.as_deref(), page_limit(q.limit)?).await.map_err(job_error)?;
    Ok(Json(json!({
        "items": page.items.iter().map(|j| job_view(j, caller.auth.role == Role::Admin)).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

pub async fn cancel_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let job = app.jobs.cancel(&caller.auth, &caller.tenant, &id).await.map_err(job_error)?;
    Ok(Json(json!({"id": job.id, "state": job.state.as_str()})))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediateBody {
    #[serde(default)]
    pub remediation_id: Option<String>,
}

pub async fn remediate_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RemediateBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (outcome, _) = app
        .jobs
        .remediate(&caller.auth, &caller.tenant, &id, body.remediation_id.as_deref())
        .await
        .map_err(job_error)?;
    Ok(render_outcome(outcome))
}
