//! Workflows: definitions (steps keyed by id, `depends_on` forming a DAG),
//! runs executed by the gateway itself, and each run's append-only
//! timeline. Worker steps become jobs that go through schema and policy
//! exactly like submitted jobs; approval steps are held jobs a human
//! approves through the approvals API.
//!
//! * `model`: definitions, runs, steps, events;
//! * `validate`: definition checks (ids, step kinds, DAG);
//! * `expr`: CEL expressions and `${...}` templates;
//! * `repo`: storage keys and atomic writes;
//! * `engine`: drives runs (passes, timers, restart recovery);
//! * `service`: the operations the API offers.

pub mod engine;
pub mod expr;
pub mod model;
pub mod repo;
pub mod service;
pub mod validate;

pub use service::{StartOutcome, WorkflowError, WorkflowService};
