//! `/api/v1/schemas`: the JSON Schema registry.
//!
//! Schemas are global (one registry shared by every tenant, like topics):
//! any authenticated caller reads them; only operator keys (admins not bound
//! to one tenant) register or delete them, so one tenant cannot change a
//! schema another tenant's jobs are checked against. Pack schemas belong to
//! their pack and change only with it. Ids may contain `/`
//! (`hello-pack/EchoInput`), raw or percent-encoded in the path.

use super::error::ApiError;
use super::extract::{Caller, StrictJson};
use crate::app::App;
use crate::schema::SchemaError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

fn schema_error(e: SchemaError) -> ApiError {
    match e {
        SchemaError::InvalidSchema(m) => {
            ApiError::bad_request(format!("invalid schema: {m}")).code("CONFIG_SCHEMA_VIOLATION").with("reason", m)
        }
        e @ SchemaError::InvalidId(_) => ApiError::bad_request(e.to_string()).code("CONFIG_SCHEMA_VIOLATION"),
        e @ SchemaError::Owned { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string()).code("schema_owned_by_pack")
        }
        SchemaError::Unknown(_) => ApiError::not_found("schema not found").code("CONFIG_SCHEMA_NOT_FOUND"),
        other => ApiError::unavailable(other),
    }
}

fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    caller.require_operator("schemas are shared by every tenant; only an operator key may change them")
}

pub async fn list(State(app): State<Arc<App>>, _caller: Caller) -> Json<Value> {
    let docs = app.schemas.list();
    let items: Vec<Value> =
        docs.iter().map(|d| json!({"id": d.id, "sha256": d.sha256, "pack_id": d.pack_id})).collect();
    Json(json!({"schemas": docs.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), "items": items}))
}

pub async fn get(
    State(app): State<Arc<App>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = app.schemas.get(&id).ok_or_else(|| schema_error(SchemaError::Unknown(id.clone())))?;
    Ok(Json(json!({"id": doc.id, "schema": doc.schema, "sha256": doc.sha256, "pack_id": doc.pack_id})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[serde(default)]
    pub id: Option<String>,
    pub schema: Value,
}

async fn register_as(app: &App, id: &str, schema: Value) -> Result<Response, ApiError> {
    let created = app.schemas.register_stored(app.store.as_ref(), id, schema).await.map_err(schema_error)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"id": id}))).into_response())
}

/// `POST /api/v1/schemas` with `{"id", "schema"}` (upstream's shape).
pub async fn register(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(body): StrictJson<RegisterBody>,
) -> Result<Response, ApiError> {
    require_operator(&caller)?;
    let id = body.id.unwrap_or_default();
    if id.trim().is_empty() {
        return Err(ApiError::bad_request("schema id required").code("CONFIG_SCHEMA_VIOLATION").with("field", "id"));
    }
    register_as(&app, id.trim(), body.schema).await
}

/// `PUT /api/v1/schemas/{id}` with `{"schema"}`.
pub async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<RegisterBody>,
) -> Result<Response, ApiError> {
    require_operator(&caller)?;
    if body.id.as_deref().is_some_and(|given| given != id) {
        return Err(ApiError::bad_request("id in the body differs from the path").with("field", "id"));
    }
    register_as(&app, &id, body.schema).await
}

pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&caller)?;
    app.schemas.delete_stored(app.store.as_ref(), &id).await.map_err(schema_error)?;
    Ok(StatusCode::NO_CONTENT)
}
