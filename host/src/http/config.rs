//! `/api/v1/config` (scoped documents) and `/api/v1/config/effective`.
//!
//! Shapes follow upstream: GET answers the flat `data` object (or the whole
//! document with `envelope=true`), PUT/POST take the wrapped
//! `{"scope","scope_id","data","meta"}` form or a flat object meaning
//! `system/default`, and answer 204. Admins only; `system` is shared by
//! every tenant, so only operator keys write it. Scopes below `system`
//! belong to the caller's tenant (see `crate::config`).

use super::error::ApiError;
use super::extract::{Caller, StrictJson};
use crate::app::App;
use crate::config::{ConfigError, ConfigWrite, DocRef, EffectiveQuery, Scope};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::NotFound => ApiError::not_found("config not found").code("CONFIG_NOT_FOUND"),
        ConfigError::Invalid(m) => ApiError::bad_request(m).code("CONFIG_REQUEST_INVALID"),
        ConfigError::Conflict { current } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string()).code("CONFIG_VERSION_CONFLICT").with("revision", current)
        }
        e @ ConfigError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).code("CONFIG_TOO_LARGE")
        }
        ConfigError::Store(e) => ApiError::unavailable(e),
    }
}

fn parse_scope(raw: &str) -> Result<Scope, ApiError> {
    Scope::parse(raw).ok_or_else(|| ApiError::bad_request("invalid scope").code("CONFIG_REQUEST_INVALID"))
}

/// The org id must be the request's tenant (empty means it).
fn check_org(caller: &Caller, org_id: &str) -> Result<(), ApiError> {
    if !org_id.trim().is_empty() && org_id.trim() != caller.tenant {
        return Err(ApiError::forbidden("tenant access denied").code("CONFIG_KEY_FORBIDDEN"));
    }
    Ok(())
}

fn target(caller: &Caller, scope: Scope, scope_id: &str) -> Result<DocRef, ApiError> {
    if scope == Scope::Org {
        check_org(caller, scope_id)?;
    }
    Ok(DocRef::tenant_scoped(scope, &caller.tenant, scope_id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    scope_id: String,
    #[serde(default)]
    envelope: Option<String>,
}

pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()).code("CONFIG_REQUEST_INVALID"))?;
    let scope = parse_scope(&query.scope)?;
    caller.require_admin()?;
    let target = target(&caller, scope, &query.scope_id)?;
    let envelope = matches!(query.envelope.as_deref(), Some("true" | "1" | "yes"));
    let doc = app.config.get(&target).await.map_err(config_error)?;
    let doc = match doc {
        Some(doc) => doc,
        None if scope == Scope::System && target.scope_id == "default" => {
            return Ok(Json(if envelope {
                json!({"scope": "system", "scope_id": "default", "data": {}, "revision": 0})
            } else {
                json!({})
            }));
        }
        None => return Err(config_error(ConfigError::NotFound)),
    };
    Ok(Json(if envelope { serde_json::to_value(doc).unwrap_or_default() } else { doc.data }))
}

/// Keys the wrapped form may carry.
const WRAPPED_KEYS: &[&str] = &["scope", "scope_id", "data", "meta", "revision"];

pub async fn set(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(body): StrictJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    // A body naming `scope` (any value) is the wrapped form; anything else
    // is data for system/default.
    let wrapped = body.contains_key("scope");
    let write = if wrapped {
        if let Some(unknown) = body.keys().find(|k| !WRAPPED_KEYS.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!("invalid json: unknown field `{unknown}`"))
                .code("invalid_json")
                .with("field", unknown.clone()));
        }
        let scope = match &body["scope"] {
            Value::Null => Scope::System,
            Value::String(s) => parse_scope(s)?,
            _ => {
                return Err(ApiError::bad_request("scope must be a string")
                    .code("invalid_json")
                    .with("field", "scope"));
            }
        };
        let scope_id = match body.get("scope_id") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::bad_request("scope_id must be a string").with("field", "scope_id")),
        };
        let data = match body.get("data") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(ApiError::bad_request("data must be a JSON object").with("field", "data")),
        };
        let meta = match body.get("meta") {
            Some(Value::Object(m)) => Some(m.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(ApiError::bad_request("meta must be a JSON object").with("field", "meta")),
        };
        let expected_revision =
            match body.get("revision") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    ApiError::bad_request("revision must be a whole number").with("field", "revision")
                })?),
            };
        ConfigWrite { target: target(&caller, scope, &scope_id)?, data, meta, expected_revision, by: caller.actor() }
    } else {
        ConfigWrite {
            target: DocRef::system("default"),
            data: body,
            meta: None,
            expected_revision: None,
            by: caller.actor(),
        }
    };
    if write.target.scope == Scope::System {
        caller.require_operator("system config is shared by every tenant; only an operator key may change it")?;
    }
    app.config.set(write).await.map_err(config_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectiveParams {
    #[serde(default)]
    org_id: String,
    #[serde(default)]
    team_id: String,
    #[serde(default)]
    workflow_id: String,
    #[serde(default)]
    step_id: String,
}

pub async fn effective(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<Query<EffectiveParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()).code("CONFIG_REQUEST_INVALID"))?;
    caller.require_admin()?;
    check_org(&caller, &q.org_id)?;
    let effective = app
        .config
        .effective(&EffectiveQuery {
            tenant: caller.tenant.clone(),
            team_id: q.team_id,
            workflow_id: q.workflow_id,
            step_id: q.step_id,
        })
        .await
        .map_err(config_error)?;
    Ok(Json(serde_json::to_value(effective).unwrap_or_default()))
}
