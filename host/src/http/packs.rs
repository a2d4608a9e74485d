//! `/api/v1/packs` (installed packs, install by upload, uninstall) and
//! `/api/v1/marketplace` (catalog listing, install from a catalog).

use super::error::ApiError;
use super::extract::{Caller, JsonOrEmpty, StrictJson};
use crate::app::App;
use crate::packs::service::{Installer, PackError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Largest pack bundle accepted by upload.
pub const MAX_PACK_UPLOAD: usize = 64 << 20;

pub fn pack_error(e: PackError) -> ApiError {
    match e {
        PackError::Install(e) => {
            let (status, code) = match e.step {
                "ownership" => (StatusCode::CONFLICT, "PACK_ALREADY_INSTALLED"),
                "lookup" => (StatusCode::NOT_FOUND, "PACK_NOT_FOUND"),
                "signature" => (StatusCode::BAD_REQUEST, "PACK_INVALID_SIGNATURE"),
                "store" => (StatusCode::CONFLICT, "PACK_INSTALL_CONFLICT"),
                "activate" | "load" => return ApiError::unavailable(e),
                _ => (StatusCode::BAD_REQUEST, "PACK_INSTALL_INVALID"),
            };
            let mut err = ApiError::new(status, e.to_string()).code(code).with("step", e.step);
            // Signature refusals also carry upstream's reason (`pack.tampered`, …).
            if e.step == "signature"
                && let Some(reason) = e.message.split(':').next().filter(|r| r.starts_with("pack."))
            {
                err = err.with("signature_code", reason);
            }
            err
        }
        PackError::NotFound(m) => ApiError::not_found(m).code("PACK_NOT_FOUND"),
        PackError::Marketplace(m) => ApiError::bad_request(m).code("PACK_MARKETPLACE_INVALID"),
        PackError::Store(detail) => ApiError::unavailable(detail),
        PackError::Forbidden(m) => ApiError::forbidden(m).code("operator_required"),
        PackError::Plugin(m) => ApiError::bad_request(m).code("PLUGIN_INSTALL_INVALID"),
    }
}

fn who(caller: &Caller) -> String {
    caller.auth.principal_id.clone().unwrap_or_else(|| caller.auth.key_id.clone())
}

/// Packs are installed for the whole gateway: only operator keys (admins
/// not bound to one tenant) change them.
fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    caller.require_operator("packs are shared by every tenant; only an operator key may change them")
}

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let items = app.packs.list().await.map_err(pack_error)?;
    Ok(Json(json!({"items": items})))
}

pub async fn get(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let record = app.packs.get(&id).await.map_err(pack_error)?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

/// A form flag: true/false spelled as usual; anything else is refused
/// rather than read as false.
fn flag(field: &str, raw: &str) -> Result<bool, ApiError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "n" | "off" => Ok(false),
        other => Err(ApiError::bad_request(format!("{field} must be true or false, not {other:?}"))
            .code("PACK_INSTALL_INVALID")
            .with("field", field)),
    }
}

/// `POST /api/v1/packs/install`: a multipart form with the file field
/// `bundle` (and optional `upgrade`), or the `.tgz` itself as the body
/// (`application/gzip` or `application/octet-stream`, `?upgrade=true`).
pub async fn install(State(app): State<Arc<App>>, caller: Caller, req: Request) -> Result<Json<Value>, ApiError> {
    require_operator(&caller)?;
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let mut query_upgrade = false;
    for pair in req.uri().query().unwrap_or("").split('&') {
        if let Some(value) = pair.strip_prefix("upgrade=") {
            query_upgrade = flag("upgrade", value)?;
        }
    }
    let invalid = |m: &str| ApiError::bad_request(m.to_string()).code("PACK_INSTALL_INVALID");
    let (bundle, upgrade) = if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &()).await.map_err(|_| invalid("invalid multipart form"))?;
        let mut bundle = None;
        let mut upgrade = query_upgrade;
        // The first refusal is answered once the whole form is read: a
        // client still sending must not see its connection cut.
        let mut refused: Option<ApiError> = None;
        while let Some(field) = form.next_field().await.map_err(|e| invalid(&format!("invalid multipart form: {e}")))? {
            let name = field.name().unwrap_or("").to_string();
            if refused.is_some() {
                let _ = field.bytes().await;
                continue;
            }
            let outcome = match name.as_str() {
                "bundle" if bundle.is_some() => {
                    let _ = field.bytes().await;
                    Err(invalid("one bundle per install: the form holds two").with("field", "bundle"))
                }
                "bundle" => match field.bytes().await {
                    Ok(bytes) => {
                        bundle = Some(bytes);
                        Ok(())
                    }
                    Err(e) => return Err(invalid(&format!("bundle: {e}"))),
                },
                "upgrade" => flag("upgrade", &field.text().await.unwrap_or_default()).map(|f| upgrade = f),
                "force" | "inactive" => match flag(&name, &field.text().await.unwrap_or_default()) {
                    Ok(true) => Err(invalid(&format!("{name} is not supported")).with("field", name.as_str())),
                    other => other.map(|_| ()),
                },
                other => {
                    let _ = field.bytes().await;
                    Err(invalid(&format!("unknown form field {other:?}")).with("field", other))
                }
            };
            if let Err(e) = outcome {
                refused = Some(e);
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        (bundle.ok_or_else(|| invalid("bundle file required"))?, upgrade)
    } else if matches!(
        content_type.split(';').next().unwrap_or("").trim(),
        "application/gzip" | "application/x-gzip" | "application/octet-stream"
    ) {
        let bytes = Bytes::from_request(req, &()).await.map_err(|_| ApiError::too_large(MAX_PACK_UPLOAD))?;
        (bytes, query_upgrade)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the bundle as multipart/form-data (field `bundle`) or application/gzip",
        )
        .code("unsupported_media_type"));
    };
    if bundle.is_empty() {
        return Err(invalid("bundle is empty"));
    }
    let record = app.packs.install_upload(&bundle, &who(&caller), upgrade).await.map_err(pack_error)?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninstallBody {
    #[serde(default)]
    pub purge: Option<bool>,
}

pub async fn uninstall(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonOrEmpty(_body): JsonOrEmpty<UninstallBody>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&caller)?;
    let record = app.packs.uninstall(&id, &who(&caller)).await.map_err(pack_error)?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

pub async fn marketplace(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let (catalogs, items) = app.packs.marketplace(&caller.tenant).await.map_err(pack_error)?;
    Ok(Json(json!({"catalogs": catalogs, "items": items, "fetched_at": chrono::Utc::now()})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketInstall {
    #[serde(default)]
    pub catalog_id: Option<String>,
    pub pack_id: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub upgrade: bool,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub inactive: bool,
}

pub async fn marketplace_install(
    State(app): State<Arc<App>>,
    caller: Caller,
    StrictJson(body): StrictJson<MarketInstall>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    for (name, set) in [("force", body.force), ("inactive", body.inactive)] {
        if set {
            return Err(ApiError::bad_request(format!("{name} is not supported"))
                .code("PACK_INSTALL_INVALID")
                .with("field", name));
        }
    }
    if body.pack_id.trim().is_empty() {
        return Err(ApiError::bad_request("pack_id is required").code("PACK_INSTALL_INVALID").with("field", "pack_id"));
    }
    let by = who(&caller);
    let installer = Installer { tenant: &caller.tenant, by: &by, operator: caller.auth.allow_cross_tenant };
    let installed = app
        .packs
        .install_market(
            installer,
            body.catalog_id.as_deref().filter(|c| !c.is_empty()),
            body.pack_id.trim(),
            body.version.as_deref().filter(|v| !v.is_empty()),
            body.upgrade,
        )
        .await
        .map_err(pack_error)?;
    Ok(Json(installed))
}
