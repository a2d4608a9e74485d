//! `/health`, `/api/v1/status`, `/api/v1/auth/config`.

use super::extract::Caller;
use crate::app::App;
use crate::auth::Role;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;

/// Public liveness: store and bus health. Never rate limited.
pub async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    let store = app.store.health().await;
    let bus = app.bus.health().await;
    let body = json!({
        "status": if store.is_ok() && bus.is_ok() { "healthy" } else { "unhealthy" },
        "store": if store.is_ok() { "ok" } else { "error" },
        "bus": if bus.is_ok() { "connected" } else { "disconnected" },
    });
    let code = if store.is_ok() && bus.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

pub async fn status(State(app): State<Arc<App>>, caller: Caller) -> impl IntoResponse {
    let store = app.store.health().await;
    let bus = app.bus.health().await;
    let packs = app.registry.packs();
    let mut body = json!({
        "time": chrono::Utc::now(),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "build": {"version": env!("CARGO_PKG_VERSION")},
        "store": {"backend": app.store.backend(), "ok": store.is_ok()},
        "bus": {"backend": app.bus.backend(), "ok": bus.is_ok()},
        // Upstream's field names, describing our backends.
        "redis": {"ok": store.is_ok(), "status": if app.store.backend() == "redis" { if store.is_ok() {"ok"} else {"error"} } else { "unavailable" }},
        "nats": {"connected": app.bus.backend() == "nats" && bus.is_ok(), "status": if app.bus.backend() == "nats" { "connected" } else { "unavailable" }},
        "workers": {"count": packs.iter().filter(|p| p.component.is_some()).count()},
        "packs": {"installed": packs.len()},
        "policy": {"snapshot": app.policy.active().id},
        "tenant": caller.tenant,
    });
    if caller.auth.role == Role::Admin {
        body["jobs"] = json!({
            "running": app.dispatcher.running_count(),
            "waiting_readers": app.jobs.repo().waiters().len(),
        });
        body["runtime"] = json!({
            "epoch_tick_ms": app.runtime.limits.epoch_tick.as_millis() as u64,
            "plugin_memory_bytes": app.runtime.limits.plugin.memory_bytes,
            "plugin_timeout_ms": app.runtime.limits.plugin.timeout.as_millis() as u64,
            "pack_memory_bytes": app.runtime.limits.pack.memory_bytes,
            "pack_timeout_ms": app.runtime.limits.pack.timeout.as_millis() as u64,
        });
    }
    Json(body)
}

/// Public auth capability discovery (upstream shape).
pub async fn auth_config(State(app): State<Arc<App>>) -> impl IntoResponse {
    Json(json!({
        "password_enabled": app.auth.has_static_keys(),
        "user_auth_enabled": false,
        "saml_enabled": false,
        "saml_enterprise": true,
        "session_ttl": "24h",
        "require_rbac": false,
        "require_principal": false,
        "default_tenant": app.auth.default_tenant,
    }))
}
