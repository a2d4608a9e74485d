//! `POST /api/v1/policy/evaluate` and `/explain`: upstream's request shape,
//! answered in upstream's protobuf-JSON shape; explain adds the trace.

use super::error::ApiError;
use super::extract::{Caller, StrictJson};
use crate::app::App;
use crate::auth::Role;
use crate::policy::{PolicyDecision, PolicyError, PolicyRequest};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default)]
    pub max_input_tokens: i64,
    #[serde(default)]
    pub max_output_tokens: i64,
    #[serde(default)]
    pub max_total_tokens: i64,
    #[serde(default)]
    pub deadline_ms: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateMeta {
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub actor_id: String,
    #[serde(default)]
    pub actor_type: String,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub capability: String,
    #[serde(default)]
    pub risk_tags: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub pack_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Upstream's PolicyCheckRequest as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateBody {
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub team_id: String,
    #[serde(default)]
    pub workflow_id: String,
    #[serde(default)]
    pub step_id: String,
    #[serde(default)]
    pub principal_id: String,
    #[serde(default)]
    pub priority: String,
    #[serde(default)]
    pub estimated_cost: f64,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub memory_id: String,
    #[serde(default)]
    pub effective_config: Option<Value>,
    #[serde(default)]
    pub meta: Option<EvaluateMeta>,
    #[serde(default)]
    pub action: Option<Value>,
    /// Simulate and explain only: draft bundles overlaid on the active
    /// policy for this one call (nothing is stored).
    #[serde(default)]
    pub bundles: Option<Vec<DraftBundle>>,
    /// Simulate and explain only: overlay the stored drafts too.
    #[serde(default)]
    pub use_drafts: bool,
}

/// A bundle given inline to simulate or explain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftBundle {
    pub id: String,
    /// `None` (or `enabled: false`): evaluate as if the bundle were removed.
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The overlay a dry run evaluates with: stored drafts first (when asked),
/// then the inline bundles. `None` when the active policy is meant as is.
async fn dry_run_overlay(
    app: &App,
    bundles: Option<Vec<DraftBundle>>,
    use_drafts: bool,
) -> Result<Option<Vec<(String, Option<String>)>>, ApiError> {
    if bundles.is_none() && !use_drafts {
        return Ok(None);
    }
    let mut overlay = Vec::new();
    if use_drafts {
        overlay = app.policy.draft_overlay().await.map_err(super::policy_bundles::bundle_error)?;
    }
    for b in bundles.unwrap_or_default() {
        crate::policy::bundles::validate_id(&b.id).map_err(super::policy_bundles::bundle_error)?;
        overlay.retain(|(id, _)| id != &b.id);
        overlay.push((b.id, if b.enabled { b.content } else { None }));
    }
    Ok(Some(overlay))
}

fn to_request(caller: &Caller, body: EvaluateBody) -> Result<PolicyRequest, ApiError> {
    if !caller.auth.has_role(&[Role::Admin]) {
        return Err(ApiError::forbidden("access denied"));
    }
    let meta = body.meta.unwrap_or_default();
    for named in [&body.tenant, &body.org_id, &meta.tenant_id] {
        if !named.trim().is_empty() && named.trim() != caller.tenant {
            return Err(ApiError::forbidden("tenant access denied"));
        }
    }
    if body.topic.trim().is_empty() {
        return Err(ApiError::bad_request("topic is required"));
    }
    let principal = if body.principal_id.is_empty() {
        caller.auth.principal_id.clone().unwrap_or_default()
    } else {
        body.principal_id
    };
    let mut labels = meta.labels;
    labels.extend(body.labels);
    labels.remove("_action.descriptor_json");
    if !body.workflow_id.is_empty() {
        labels.entry("workflow_id".into()).or_insert(body.workflow_id);
    }
    // The same bounds as a job's labels: a check answers for what a job could carry.
    if labels.len() > crate::jobs::submit::MAX_LABELS {
        return Err(ApiError::bad_request(format!("at most {} labels", crate::jobs::submit::MAX_LABELS))
            .code("invalid_request")
            .with("field", "labels"));
    }
    Ok(PolicyRequest {
        job_id: body.job_id,
        topic: body.topic.trim().to_string(),
        tenant: caller.tenant.clone(),
        actor_id: if meta.actor_id.is_empty() { principal.clone() } else { meta.actor_id },
        principal_id: principal,
        actor_type: meta.actor_type,
        capability: meta.capability,
        risk_tags: meta.risk_tags,
        requires: meta.requires,
        pack_id: meta.pack_id,
        labels,
    })
}

pub(super) fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::InvalidRequest(m) => ApiError::bad_request(m),
        PolicyError::InvalidBundle(diags) => super::policy_bundles::invalid_bundle(diags),
        other => {
            tracing::warn!(error = %other, "policy evaluation failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream service error")
        }
    }
}

/// Upstream's protobuf-JSON decision (lowerCamelCase, int64 as strings).
fn decision_json(d: &PolicyDecision, approval_ref: &str) -> Value {
    let constraints = d.constraints.as_ref().map(|c| {
        let b = c.get("budgets").cloned().unwrap_or(json!({}));
        let num = |k: &str| b.get(k).and_then(Value::as_i64).unwrap_or(0);
        json!({
            "budgets": {
                "maxRuntimeMs": num("max_runtime_ms").to_string(),
                "maxRetries": num("max_retries"),
                "maxArtifactBytes": num("max_artifact_bytes").to_string(),
                "maxConcurrentJobs": num("max_concurrent_jobs"),
            },
            "sandbox": c.get("sandbox").cloned().unwrap_or(json!({})),
            "toolchain": c.get("toolchain").cloned().unwrap_or(json!({})),
            "diff": c.get("diff").cloned().unwrap_or(json!({})),
            "redactionLevel": c.get("redaction_level").cloned().unwrap_or(json!("")),
        })
    });
    json!({
        "decision": d.decision.proto_name(),
        "reason": d.reason,
        "redactedContextPtr": "",
        "policySnapshot": d.policy_snapshot,
        "ruleId": d.rule_id,
        "constraints": constraints,
        "approvalRequired": d.approval_required,
        "approvalRef": if d.approval_required { approval_ref } else { "" },
        "remediations": d.remediations.iter().map(|r| json!({
            "id": r.id, "title": r.title, "summary": r.summary,
            "replacementTopic": r.replacement_topic, "replacementCapability": r.replacement_capability,
            "addLabels": r.add_labels, "removeLabels": r.remove_labels,
        })).collect::<Vec<_>>(),
    })
}

pub async fn evaluate(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(body): StrictJson<EvaluateBody>,
) -> Result<Json<Value>, ApiError> {
    if body.bundles.is_some() || body.use_drafts {
        return Err(ApiError::bad_request("draft bundles are taken by /api/v1/policy/simulate and /explain only")
            .code("invalid_json")
            .with("field", if body.use_drafts { "use_drafts" } else { "bundles" }));
    }
    let request = to_request(&caller, body)?;
    let decision = app.policy.evaluate(&caller.tenant, &request).map_err(policy_error)?;
    Ok(Json(decision_json(&decision, &request.job_id)))
}

/// `POST /api/v1/policy/simulate`: a dry run against the active policy, or
/// against drafts (`use_drafts`, inline `bundles`). Nothing is recorded.
pub async fn simulate(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(mut body): StrictJson<EvaluateBody>,
) -> Result<Json<Value>, ApiError> {
    let overlay = dry_run_overlay(&app, body.bundles.take(), body.use_drafts).await?;
    let request = to_request(&caller, body)?;
    let decision = match overlay {
        None => app.policy.simulate(&caller.tenant, &request),
        Some(overlay) => app.policy.evaluate_with(&overlay, &request),
    }
    .map_err(policy_error)?;
    let mut out = decision_json(&decision, &request.job_id);
    out["activeSnapshot"] = json!(app.policy.active().id);
    Ok(Json(out))
}

pub async fn explain(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(mut body): StrictJson<EvaluateBody>,
) -> Result<Json<Value>, ApiError> {
    let overlay = dry_run_overlay(&app, body.bundles.take(), body.use_drafts).await?;
    let request = to_request(&caller, body)?;
    let (decision, trace, defaulted) = match overlay {
        // The tenant's own warm instances (and its policy component) decide.
        None => app.policy.explain(&caller.tenant, &request),
        Some(overlay) => app.policy.explain_with(&overlay, &request),
    }
    .map_err(policy_error)?;
    let mut out = decision_json(&decision, &request.job_id);
    out["defaulted"] = json!(defaulted);
    out["activeSnapshot"] = json!(app.policy.active().id);
    out["trace"] = serde_json::to_value(trace).unwrap_or_default();
    Ok(Json(out))
}

fn tenant_policy_error(e: crate::policy::tenant::TenantPolicyError) -> ApiError {
    use crate::policy::tenant::TenantPolicyError as E;
    match e {
        E::Invalid(m) => ApiError::bad_request(m).code("invalid_policy_component"),
        E::NotFound => ApiError::not_found("no policy component is installed for this tenant"),
        E::Store(e) => ApiError::unavailable(e),
    }
}

fn tenant_policies(app: &App) -> Result<&std::sync::Arc<crate::policy::tenant::TenantPolicies>, ApiError> {
    app.policy.tenant_policies().ok_or_else(|| ApiError::unavailable("tenant policy components are not set up"))
}

/// `PUT /api/v1/policy/component`: the caller's tenant's own policy
/// component (the `.wasm` as the body). It must implement `cordum:policy`.
pub async fn put_component(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let by = caller.auth.principal_id.clone().unwrap_or_else(|| caller.auth.key_id.clone());
    let bundles = app.policy.active_bundles();
    let record = tenant_policies(&app)?
        .install(&caller.tenant, &body, &bundles, &by, None)
        .await
        .map_err(tenant_policy_error)?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

pub async fn get_component(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let record = tenant_policies(&app)?
        .get(&caller.tenant)
        .ok_or_else(|| tenant_policy_error(crate::policy::tenant::TenantPolicyError::NotFound))?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

pub async fn delete_component(State(app): State<Arc<App>>, caller: Caller) -> Result<axum::http::StatusCode, ApiError> {
    caller.require_admin()?;
    tenant_policies(&app)?.remove(&caller.tenant).await.map_err(tenant_policy_error)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedComponentQuery {
    #[serde(default)]
    name: String,
}

/// `POST /api/v1/policy/components?name=`: register a policy component (the
/// `.wasm` as the body) for component bundles. Operators only: it can take
/// part in every tenant's decisions once a published bundle names it.
pub async fn register_shared_component(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<axum::extract::Query<SharedComponentQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator(super::policy_bundles::POLICY_IS_SHARED)?;
    let query = super::jobs::query(query)?;
    let name = query.name.trim();
    let valid_name = name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if !valid_name {
        return Err(ApiError::bad_request(
            "name: at most 128 letters, digits and ._- (not starting with a dot)".to_string(),
        )
        .code("invalid_query")
        .with("field", "name"));
    }
    let bundles = app.policy.active_bundles();
    let record = tenant_policies(&app)?
        .register_shared(&body, name, &bundles, &caller.actor())
        .await
        .map_err(tenant_policy_error)?;
    let bundle = format!(
        "component:\n  digest: {}\n  name: {}\n",
        record.digest,
        if record.name.is_empty() { "component" } else { &record.name }
    );
    let mut out = serde_json::to_value(&record).unwrap_or_default();
    out["bundle_content"] = json!(bundle);
    Ok(Json(out))
}

/// `GET /api/v1/policy/components`: the registered shared components.
pub async fn list_shared_components(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!({"items": tenant_policies(&app)?.list_shared()})))
}
