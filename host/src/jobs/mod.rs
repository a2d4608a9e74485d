//! Jobs: submission (validation, idempotency, schema, policy, persistence,
//! dispatch), reading, and the in-process dispatcher that runs jobs on pack
//! components.

pub mod approvals;
pub mod dispatch;
pub mod dlq;
pub mod lifecycle;
pub mod model;
pub mod pools;
pub mod repo;
pub mod steps;
pub mod submit;

pub use model::{JobRecord, JobState};
pub use submit::{JobError, JobService, SubmitJob, SubmitOutcome};
