//! Worker pools and workers, admin only:
//!
//! * `GET /api/v1/pools` → `{"items": [pool…]}`
//! * `GET /api/v1/pools/{name}` → pool, or 404 `POOL_NOT_FOUND`
//! * `PUT /api/v1/pools/{name}` (create, not upsert) → 201 pool, or 409
//!   `POOL_NAME_CONFLICT`
//! * `PATCH /api/v1/pools/{name}` → 200 pool (changes apply live)
//! * `POST /api/v1/pools/{name}/drain` (empty body allowed) → 200 drain
//!   progress; poll it again until `drained`
//! * `GET /api/v1/workers` → `{"items": [worker…]}` (installed packs only)
//!
//! Pools are gateway-wide, not per tenant: every admin sees and changes the
//! same pools. Only the per-tenant in-flight counts are tenant data, so
//! `in_flight_by_tenant` shows the caller's own tenant unless the caller's
//! key is cross-tenant.

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty, StrictJson};
use crate::app::App;
use crate::jobs::pools::{PoolConfig, PoolError, PoolManager, PoolPatch, PoolStatus, PoolView, WorkerView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;

/// The list shape of both list routes.
#[derive(Debug, Serialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// Body of `PUT /api/v1/pools/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub packs: Vec<String>,
    pub max_concurrency: u32,
    #[serde(default)]
    pub max_memory_bytes: Option<usize>,
    #[serde(default)]
    pub tenant_share: Option<u32>,
}

/// Body of `PATCH /api/v1/pools/{name}`: absent fields stay as they are;
/// `null` clears `max_memory_bytes` / `tenant_share`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePool {
    #[serde(default)]
    pub packs: Option<Vec<String>>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub max_memory_bytes: Option<Option<usize>>,
    #[serde(default, deserialize_with = "present")]
    pub tenant_share: Option<Option<u32>>,
    #[serde(default)]
    pub status: Option<PoolStatus>,
}

/// Body of `POST /api/v1/pools/{name}/drain`: nothing (or `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainPool {}

/// A field that is present (even as `null`) becomes `Some(..)`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::NotFound => ApiError::not_found("pool not found").code("POOL_NOT_FOUND"),
        PoolError::Exists => ApiError::new(StatusCode::CONFLICT, "pool already exists").code("POOL_NAME_CONFLICT"),
        PoolError::Invalid(m) => ApiError::bad_request(m).code("POOL_INVALID_CONFIG"),
        PoolError::Store(detail) => ApiError::unavailable(detail),
    }
}

/// The pool as this caller may see it.
fn render(mut view: PoolView, caller: &Caller) -> PoolView {
    if !caller.auth.allow_cross_tenant {
        view.in_flight_by_tenant.retain(|t, _| *t == caller.tenant);
    }
    view
}

fn pools(app: &App) -> &PoolManager {
    &app.pools
}

/// Pools are shared by every tenant: only an operator key changes them.
const POOLS_SHARED: &str = "pools are shared by every tenant; only an operator key may change them";

pub async fn list_pools(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Items<PoolView>>, ApiError> {
    caller.require_admin()?;
    let items = pools(&app).list().into_iter().map(|v| render(v, &caller)).collect();
    Ok(Json(Items { items }))
}

pub async fn get_pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    caller.require_admin()?;
    let view = pools(&app).get(&name).map_err(pool_error)?;
    Ok(Json(render(view, &caller)))
}

pub async fn create_pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<StrictJson<CreatePool>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require_operator(POOLS_SHARED)?;
    let StrictJson(body) = body?;
    let mut config = PoolConfig::new(name, body.packs, body.max_concurrency);
    config.max_memory_bytes = body.max_memory_bytes;
    config.tenant_share = body.tenant_share;
    let view = pools(&app).create(config).await.map_err(pool_error)?;
    Ok((StatusCode::CREATED, Json(render(view, &caller))).into_response())
}

pub async fn update_pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<StrictJson<UpdatePool>, ApiError>,
) -> Result<Json<PoolView>, ApiError> {
    caller.require_operator(POOLS_SHARED)?;
    let StrictJson(body) = body?;
    let patch = PoolPatch {
        packs: body.packs,
        max_concurrency: body.max_concurrency,
        max_memory_bytes: body.max_memory_bytes,
        tenant_share: body.tenant_share,
        status: body.status,
    };
    let view = pools(&app).update(&name, patch).await.map_err(pool_error)?;
    Ok(Json(render(view, &caller)))
}

pub async fn drain_pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<JsonOrEmpty<DrainPool>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require_operator(POOLS_SHARED)?;
    let JsonOrEmpty(DrainPool {}) = body?;
    let progress = pools(&app).drain(&name).await.map_err(pool_error)?;
    Ok(Json(progress).into_response())
}

/// Workers of the installed packs that have a component (a pool may list
/// packs that are not installed yet; they have no worker).
pub async fn list_workers(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Items<WorkerView>>, ApiError> {
    caller.require_admin()?;
    let items = pools(&app)
        .workers()
        .into_iter()
        .filter(|w| app.registry.pack(&w.pack_id).is_some_and(|p| p.component.is_some()))
        .collect();
    Ok(Json(Items { items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthContext, Role};

    fn caller(role: Role, tenant: &str, cross: bool) -> Caller {
        Caller {
            auth: AuthContext {
                tenant: tenant.into(),
                role,
                principal_id: None,
                key_id: "static:test".into(),
                allow_cross_tenant: cross,
            },
            tenant: tenant.into(),
        }
    }

    #[test]
    fn bodies_are_strict_and_nulls_clear() {
        let patch: UpdatePool = serde_json::from_str(r#"{"tenant_share":null,"status":"draining"}"#).unwrap();
        assert_eq!(patch.tenant_share, Some(None));
        assert_eq!(patch.max_memory_bytes, None);
        assert_eq!(patch.status, Some(PoolStatus::Draining));
        assert!(serde_json::from_str::<UpdatePool>(r#"{"status":"inactive"}"#).is_err());
        assert!(serde_json::from_str::<UpdatePool>(r#"{"name":"x"}"#).is_err());
        assert!(serde_json::from_str::<CreatePool>(r#"{"packs":["a"]}"#).is_err());
        assert!(serde_json::from_str::<CreatePool>(r#"{"packs":["a"],"max_concurrency":2,"x":1}"#).is_err());
        assert!(serde_json::from_str::<DrainPool>(r#"{"timeout_seconds":5}"#).is_err());
        assert!(serde_json::from_str::<DrainPool>("{}").is_ok());
    }

    #[test]
    fn errors_and_tenant_filtering() {
        let e = pool_error(PoolError::Exists);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.message, "pool already exists");
        assert_eq!(e.code.as_deref(), Some("POOL_NAME_CONFLICT"));
        let e = pool_error(PoolError::NotFound);
        assert_eq!((e.status, e.code.as_deref()), (StatusCode::NOT_FOUND, Some("POOL_NOT_FOUND")));
        assert!(caller(Role::Viewer, "t", false).require_admin().is_err());
        assert!(caller(Role::User, "t", true).require_admin().is_err());
        assert!(caller(Role::Admin, "t", false).require_admin().is_ok());

        let mut view = PoolView {
            config: PoolConfig::new("p", vec!["a".into()], 2),
            in_flight: 2,
            in_flight_by_tenant: [("t".to_string(), 1), ("u".to_string(), 1)].into(),
            waiting: 0,
            succeeded: 0,
            failed: 0,
            last_error: None,
            last_error_at: None,
        };
        let own = render(view.clone(), &caller(Role::Admin, "t", false));
        assert_eq!(own.in_flight_by_tenant.len(), 1);
        assert_eq!(own.in_flight, 2);
        view = render(view, &caller(Role::Admin, "t", true));
        assert_eq!(view.in_flight_by_tenant.len(), 2);
    }
}
