#![recursion_limit = "256"]
//! Cordum-compatible control-plane gateway hosting WebAssembly plugins.
//!
//! One folder per concern: `http` (routes, middleware, the error envelope),
//! `auth` (keys, roles, tenants), `jobs` (submission, state machine,
//! dispatch), `policy` (snapshots and the policy component bridge), `schema`
//! (schema registry and the schema component bridge), `packs` (manifests,
//! bundles, catalogs, install, the pack runner), `runtime` (wasmtime engine,
//! sandboxes, host imports), `store` (durable state), `bus` (dispatch and
//! events), `workflows` (definitions, runs, the engine, timelines). `app` wires them; `settings` holds the flags.

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod http;
pub mod jobs;
pub mod json_merge;
pub mod packs;
pub mod policy;
pub mod runtime;
pub mod schema;
pub mod settings;
pub mod store;
pub mod workflows;
