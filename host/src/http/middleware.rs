//! Request id, security headers, body-size precheck, authentication and
//! tenant resolution.

use super::error::ApiError;
use super::extract::{BodyLimit, Caller};
use crate::app::App;
use crate::auth::{AuthError, resolve_tenant};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use std::sync::Arc;

const REQUEST_ID: &str = "x-request-id";
/// Routes under /api that need no credential.
const PUBLIC: &[&str] = &["/api/v1/auth/config", "/api/v1/auth/login"];

fn usable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_string())
}

/// Echo `X-Request-Id` or generate 16 lowercase hex characters.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req.headers().get(REQUEST_ID).and_then(usable_request_id).unwrap_or_else(|| {
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        hex::encode(b)
    });
    let value = HeaderValue::from_str(&id).expect("request id is visible ASCII");
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry("content-security-policy")
        .or_insert(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    response
}

/// Refuse a declared oversized body before anything reads it, and tell the
/// JSON extractors the limit for bodies sent without a length.
pub async fn body_limit(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    // Pack bundles are larger than any JSON body.
    let limit = match req.uri().path() {
        "/api/v1/packs/install" => super::packs::MAX_PACK_UPLOAD,
        "/api/v1/policy/component" | "/api/v1/policy/components" => crate::policy::tenant::MAX_COMPONENT_BYTES,
        _ => app.max_body_bytes,
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return ApiError::too_large(limit).into_response();
    }
    req.extensions_mut().insert(BodyLimit(limit));
    next.run(req).await
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthorized => ApiError::unauthorized(),
        AuthError::TenantDenied => ApiError::forbidden("tenant access denied"),
        AuthError::InvalidTenant => ApiError::bad_request("invalid tenant id").code("invalid_tenant"),
        AuthError::AccessDenied => ApiError::forbidden("access denied"),
        AuthError::Unavailable => ApiError::unavailable("auth store unavailable"),
    }
}

/// The credential: `Authorization: Bearer` is authoritative when present,
/// otherwise `X-API-Key`.
fn presented_key(req: &Request) -> Option<String> {
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let raw = auth.to_str().ok()?.trim();
        let (scheme, token) = raw.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(|s| s.trim().trim_matches('"').to_string())
}

/// Authenticate protected `/api/*` requests and resolve their tenant.
pub async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/api/") || PUBLIC.contains(&path) {
        return next.run(req).await;
    }
    let Some(key) = presented_key(&req) else {
        return ApiError::unauthorized().into_response();
    };
    let auth = match app.auth.authenticate(&key).await {
        Ok(a) => a,
        Err(e) => return auth_error(e).into_response(),
    };
    let header = match req.headers().get("x-tenant-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.to_string()),
        Some(Err(_)) => return auth_error(AuthError::InvalidTenant).into_response(),
    };
    let tenant = match resolve_tenant(&auth, header.as_deref()) {
        Ok(t) => t,
        Err(e) => return auth_error(e).into_response(),
    };
    // Authenticated first, so the budget is the caller's own (per tenant
    // and key), never spent by someone failing to log in.
    if let Err(wait) = app.limiter.check(&format!("{tenant}\u{1f}{}", auth.key_id)) {
        let mut err = ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate limited").code("rate_limited");
        err.retry_after = Some(wait.as_secs().max(1));
        return err.into_response();
    }
    req.extensions_mut().insert(Caller { auth, tenant });
    next.run(req).await
}

/// Error responses produced below the handlers (axum's own rejections,
/// timeouts) are plain text; give them the JSON envelope too.
pub async fn envelope_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_ascii_lowercase()
    } else if status.is_server_error() {
        tracing::warn!(%status, detail = %text, "error below the handlers");
        status.canonical_reason().unwrap_or("internal error").to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
