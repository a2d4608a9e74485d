//! The HTTP surface (axum): routers per route group, middleware and the one
//! error type. Handlers are thin: parse, authorize, call a service, render.
//!
//! Middleware, outermost first: request id (echoed or generated), security
//! headers, body-size precheck (413), authentication + tenant resolution for
//! protected `/api/*` routes. Unknown paths and wrong methods answer with the
//! error envelope too.

pub mod approvals;
pub mod config;
pub mod dlq;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod middleware;
pub mod packs;
pub mod policy;
pub mod policy_bundles;
pub mod pools;
pub mod schemas;
pub mod serve;
pub mod studio;
pub mod system;
pub mod workflows;

use crate::app::App;
use axum::Router;
use axum::routing::{get, post};
use error::ApiError;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/auth/config", get(system::auth_config))
        .route("/api/v1/status", get(system::status))
        .route("/api/v1/jobs", post(jobs::submit).get(jobs::list_jobs))
        .route("/api/v1/jobs/{id}", get(jobs::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/api/v1/jobs/{id}/remediate", post(jobs::remediate_job))
        .route("/api/v1/approvals", get(approvals::list))
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/api/v1/approvals/{id}/repair", post(approvals::repair))
        .route("/api/v1/dlq", get(dlq::list))
        .route("/api/v1/dlq/{id}", axum::routing::delete(dlq::delete))
        .route("/api/v1/dlq/{id}/retry", post(dlq::retry))
        .route("/api/v1/pools", get(pools::list_pools))
        .route("/api/v1/pools/{name}", get(pools::get_pool).put(pools::create_pool).patch(pools::update_pool))
        .route("/api/v1/pools/{name}/drain", post(pools::drain_pool))
        .route("/api/v1/workers", get(pools::list_workers))
        .route("/api/v1/workflows", post(workflows::create).get(workflows::list))
        .route("/api/v1/workflows/{id}", get(workflows::get).put(workflows::update).delete(workflows::delete))
        .route("/api/v1/workflows/{id}/runs", post(workflows::start_run).get(workflows::list_runs_of))
        .route("/api/v1/workflows/{id}/runs/{run_id}/cancel", post(workflows::cancel_run_of))
        .route("/api/v1/workflow-runs", get(workflows::list_runs))
        .route("/api/v1/workflow-runs/{id}", get(workflows::get_run))
        .route("/api/v1/workflow-runs/{id}/cancel", post(workflows::cancel_run))
        .route("/api/v1/workflow-runs/{id}/timeline", get(workflows::timeline))
        .route("/api/v1/workflow-runs/{id}/rerun", post(workflows::rerun))
        .route("/api/v1/packs", get(packs::list))
        .route(
            "/api/v1/packs/install",
            post(packs::install).layer(axum::extract::DefaultBodyLimit::max(packs::MAX_PACK_UPLOAD)),
        )
        .route("/api/v1/packs/{id}", get(packs::get))
        .route("/api/v1/packs/{id}/uninstall", post(packs::uninstall))
        .route("/api/v1/marketplace/packs", get(packs::marketplace))
        .route("/api/v1/marketplace/install", post(packs::marketplace_install))
        .route("/api/v1/schemas", get(schemas::list).post(schemas::register))
        .route("/api/v1/schemas/{*id}", get(schemas::get).put(schemas::put).delete(schemas::delete))
        .route(
            "/api/v1/policy/component",
            get(policy::get_component)
                .put(policy::put_component)
                .delete(policy::delete_component)
                .layer(axum::extract::DefaultBodyLimit::max(crate::policy::tenant::MAX_COMPONENT_BYTES)),
        )
        .route("/api/v1/config", get(config::get).put(config::set).post(config::set))
        .route("/api/v1/config/effective", get(config::effective))
        .route("/api/v1/policy/bundles", get(policy_bundles::list))
        .route(
            "/api/v1/policy/bundles/{*id}",
            get(policy_bundles::get).put(policy_bundles::put).delete(policy_bundles::delete).post(policy_bundles::post),
        )
        .route("/api/v1/policy/publish", post(policy_bundles::publish))
        .route("/api/v1/policy/rollback", post(policy_bundles::rollback))
        .route("/api/v1/policy/snapshots", get(policy_bundles::snapshots))
        .route("/api/v1/policy/snapshots/{*id}", get(policy_bundles::snapshot))
        .route("/api/v1/policy/simulate", post(policy::simulate))
        .route(
            "/api/v1/policy/components",
            get(policy::list_shared_components)
                .post(policy::register_shared_component)
                .layer(axum::extract::DefaultBodyLimit::max(crate::policy::tenant::MAX_COMPONENT_BYTES)),
        )
        .route("/api/v1/policy/evaluate", post(policy::evaluate))
        .route("/api/v1/policy/explain", post(policy::explain));
    Router::new()
        .route("/health", get(system::health))
        .route("/studio", get(studio::index))
        .route("/studio/", get(studio::index))
        .route("/studio/app.js", get(studio::app_js))
        .route("/studio/studio.css", get(studio::css))
        .merge(api)
        .fallback(|| async { ApiError::not_found("not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), middleware::authenticate))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            serve::REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), middleware::body_limit))
        .layer(axum::middleware::from_fn(middleware::envelope_errors))
        .layer(axum::middleware::from_fn(middleware::security_headers))
        .layer(axum::middleware::from_fn(middleware::request_id))
        .with_state(app)
}
