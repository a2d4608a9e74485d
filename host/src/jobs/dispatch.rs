//! The in-process dispatcher: each installed pack with a component takes its
//! topics' jobs from the bus (queue group `pack:<id>`), at most
//! `pack_concurrency` at a time, and runs each on a blocking thread in a fresh
//! sandbox with the job's deadline (pack limit, `timeouts.topics` config and
//! the policy's `budgets.max_runtime_ms`, the smallest wins).
//!
//! Outcomes: success stores the result; a retryable failure (the component
//! said so, it trapped or it ran out of time) is retried with exponential
//! backoff and jitter while `max_retries` allows; a failure for good lands
//! in the DLQ atomically with the job's final state. A running job can be
//! cancelled: the sandbox checks its cancel flag every epoch tick. Jobs found
//! in flight after a restart are dispatched again. Packs without a component
//! are served by external workers over the bus (request-reply on the topic).

use super::dlq::dead_letter;
use super::model::{JobFailure, JobRecord, JobState, RESTART_NOTE};
use super::pools::{PoolManager, PoolPermit};
use super::repo::JobRepo;
use super::submit::DispatchMessage;
use crate::bus::{Bus, BusError, Message};
use crate::packs::PackRegistry;
use crate::packs::runner::{PackRunner, WorkItem, WorkOutcome};
use crate::policy::{OutputCheck, OutputDecisionKind, OutputVerdict, PolicyService};
use crate::runtime::PluginError;
use crate::runtime::sandbox::CancelFlag;
use crate::store::to_json;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Largest output a component may return.
const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Restarts a running job survives beyond its own retries.
const MAX_RESTART_RECOVERIES: u32 = 2;
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a run ended, as the job records it.
enum Settle {
    Succeeded(serde_json::Value),
    /// Failed for good.
    Failed(JobState, &'static str, String),
    /// Failed, may succeed if retried.
    Transient(JobState, &'static str, String),
    /// The job was cancelled while it ran; its state is already CANCELLED.
    Cancelled,
}

pub struct Dispatcher {
    repo: JobRepo,
    bus: Arc<dyn Bus>,
    registry: Arc<PackRegistry>,
    runner: Arc<PackRunner>,
    pools: Arc<PoolManager>,
    policy: Arc<PolicyService>,
    retry_base: Duration,
    subscribed: Mutex<HashSet<String>>,
    running: Mutex<HashMap<String, Arc<CancelFlag>>>,
}

impl Dispatcher {
    pub fn new(
        repo: JobRepo,
        bus: Arc<dyn Bus>,
        registry: Arc<PackRegistry>,
        runner: Arc<PackRunner>,
        pools: Arc<PoolManager>,
        policy: Arc<PolicyService>,
        retry_base: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            repo,
            bus,
            registry,
            runner,
            pools,
            policy,
            retry_base,
            subscribed: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Start serving every installed pack that has a component.
    pub async fn start_all(self: &Arc<Self>) -> Result<(), String> {
        for pack in self.registry.packs() {
            if pack.component.is_some() {
                self.serve_pack(&pack.record.id).await?;
            }
        }
        Ok(())
    }

    /// Subscribe a pack's worker loop (idempotent).
    pub async fn serve_pack(self: &Arc<Self>, pack_id: &str) -> Result<(), String> {
        if !self.subscribed.lock().insert(pack_id.to_string()) {
            return Ok(());
        }
        let mut sub = self
            .bus
            .subscribe(&format!("job.{pack_id}.>"), Some(&format!("pack:{pack_id}")))
            .await
            .map_err(|e| e.to_string())?;
        let this = self.clone();
        let pack = pack_id.to_string();
        tokio::spawn(async move {
            while let Some(message) = sub.recv().await {
                let this = this.clone();
                let pack = pack.clone();
                tokio::spawn(async move { this.handle(&pack, message).await });
            }
        });
        Ok(())
    }

    /// Is this job's pack served by external workers (no component of its own)?
    fn is_external(&self, job: &JobRecord) -> bool {
        self.registry
            .topic(&job.topic)
            .and_then(|t| self.registry.pack(&t.pack_id))
            .is_some_and(|p| p.component.is_none())
    }

    /// Put a scheduled job on the bus; with nobody to run it, it fails.
    /// Jobs of packs without a component go to external workers.
    pub async fn publish(self: &Arc<Self>, job: &JobRecord) {
        if self.is_external(job) {
            let this = self.clone();
            let job = job.clone();
            tokio::spawn(this.run_external(job));
            return;
        }
        let message = Message {
            subject: job.topic.clone(),
            payload: to_json(&DispatchMessage { job_id: job.id.clone(), tenant: job.tenant.clone() }),
        };
        if let Err(e) = self.bus.publish(message).await {
            let (code, text) = match &e {
                BusError::NoSubscriber(_) => ("no_worker", format!("no worker serves topic {}", job.topic)),
                BusError::Unavailable(m) | BusError::Timeout(m) => ("dispatch_failed", m.clone()),
            };
            let failure = JobFailure { code: code.into(), message: text.clone() };
            let _ = self
                .repo
                .update_with(
                    &job.id,
                    |j| {
                        if j.state.is_terminal() {
                            return false;
                        }
                        j.error = Some(failure.clone());
                        j.transition(JobState::Failed, Some(text.clone())).is_ok()
                    },
                    dead_letter,
                )
                .await;
        }
    }

    /// Run a job on an external worker: a request on the job's topic over
    /// the bus (one member of the topic's queue group answers), bounded by
    /// the job's deadline. The reply is `{"status": "succeeded", "result": ...}`,
    /// `{"status": "failed" | "retryable", "error": {"code", "message"}}`.
    /// No worker, a timeout or a retryable failure is retried like any job.
    fn run_external(self: Arc<Self>, job: JobRecord) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { self.external_job(job).await })
    }

    async fn external_job(self: &Arc<Self>, job: JobRecord) {
        let claimed = self
            .repo
            .update(&job.id, |j| j.state == JobState::Scheduled && j.transition(JobState::Running, None).is_ok())
            .await;
        let job = match claimed {
            Ok((job, true)) => job,
            _ => return,
        };
        let config = self.effective_config(&job).await;
        let timeout = job_timeout(&job, EXTERNAL_TIMEOUT, &config);
        let request = serde_json::json!({
            "job_id": job.id,
            "tenant": job.tenant,
            "topic": job.topic,
            "trace_id": job.trace_id,
            "input": job.input,
            "labels": job.labels,
            "attempt": job.attempts,
            "deadline_ms": timeout.as_millis() as u64,
        });
        let settle = match self.bus.request(&job.topic, to_json(&request), timeout).await {
            Ok(reply) => external_outcome(&reply),
            Err(BusError::NoSubscriber(_)) => Settle::Transient(
                JobState::Failed,
                "no_worker",
                format!("no external worker serves topic {}", job.topic),
            ),
            Err(BusError::Timeout(m)) => Settle::Transient(JobState::Timeout, "worker_timeout", m),
            Err(BusError::Unavailable(m)) => Settle::Transient(JobState::Failed, "dispatch_failed", m),
        };
        self.settle(&job, settle).await;
    }

    /// Interrupt the component running `job_id`, if any.
    pub fn interrupt(&self, job_id: &str) -> bool {
        match self.running.lock().get(job_id) {
            Some(flag) => {
                flag.cancel();
                true
            }
            None => false,
        }
    }

    /// Jobs running right now (for views and tests).
    pub fn running_count(&self) -> usize {
        self.running.lock().len()
    }

    async fn handle(self: &Arc<Self>, pack_id: &str, message: Message) {
        let Ok(dispatch) = serde_json::from_slice::<DispatchMessage>(&message.payload) else {
            tracing::warn!(subject = %message.subject, "dropping an undecodable dispatch message");
            return;
        };
        let id = dispatch.job_id;
        // Wait for a slot of the pack's pool (its limit, the tenant's share,
        // not draining); the job stays SCHEDULED meanwhile.
        let pool = self.pools.pool_for_pack(pack_id).unwrap_or_else(|| pack_id.to_string());
        let permit = self.pools.acquire_for(&pool, pack_id, &dispatch.tenant).await;
        let flag = Arc::new(CancelFlag::default());
        // Register the flag before claiming so a cancel racing the claim still lands.
        self.running.lock().insert(id.clone(), flag.clone());
        let claimed = self
            .repo
            .update(&id, |j| j.state == JobState::Scheduled && j.transition(JobState::Running, None).is_ok())
            .await;
        let job = match claimed {
            Ok((job, true)) => job,
            Ok((_, false)) => {
                self.running.lock().remove(&id);
                return; // cancelled or already taken
            }
            Err(e) => {
                self.running.lock().remove(&id);
                tracing::error!(job = %id, error = %e, "cannot claim job");
                return;
            }
        };
        let settle = self.run(&job, flag, &pool).await;
        self.running.lock().remove(&id);
        finish_permit(permit, &settle);
        self.settle(&job, settle).await;
    }

    async fn run(&self, job: &JobRecord, cancel: Arc<CancelFlag>, pool: &str) -> Settle {
        let Some(pack) = self.registry.pack(&job.pack_id) else {
            return Settle::Failed(JobState::Failed, "pack_missing", format!("pack {} is not installed", job.pack_id));
        };
        let config = self.effective_config(job).await;
        let item = WorkItem {
            job_id: job.id.clone(),
            topic: job.topic.clone(),
            tenant: job.tenant.clone(),
            input: job.input.to_string(),
            labels: job.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            attempt: job.attempts,
            timeout: job_timeout(job, pack.limits.timeout, &config),
            memory_bytes: self.pools.effective_memory(pool).unwrap_or(pack.limits.memory_bytes),
        };
        let config = Arc::new(config);
        let runner = self.runner.clone();
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || runner.run(&pack, &item, config, cancel, handle))
            .await
            .unwrap_or_else(|e| WorkOutcome::Aborted(PluginError::Sandbox(format!("worker thread failed: {e}"))));
        match outcome {
            WorkOutcome::Output(text) if text.len() > MAX_OUTPUT_BYTES => {
                Settle::Failed(JobState::Failed, "output_too_large", format!("output is over {MAX_OUTPUT_BYTES} bytes"))
            }
            WorkOutcome::Output(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => Settle::Succeeded(value),
                Err(e) => {
                    Settle::Failed(JobState::Failed, "invalid_output", format!("component output is not JSON: {e}"))
                }
            },
            WorkOutcome::InvalidInput(m) => Settle::Failed(JobState::Failed, "invalid_input", m),
            WorkOutcome::Failed(m) => Settle::Failed(JobState::Failed, "job_failed", m),
            WorkOutcome::Retryable(m) => Settle::Transient(JobState::Failed, "job_failed_retryable", m),
            WorkOutcome::Aborted(PluginError::Cancelled) => Settle::Cancelled,
            WorkOutcome::Aborted(e @ PluginError::Timeout(_)) => {
                Settle::Transient(JobState::Timeout, e.code(), e.to_string())
            }
            WorkOutcome::Aborted(e @ PluginError::Trap(_)) => {
                Settle::Transient(JobState::Failed, e.code(), e.to_string())
            }
            WorkOutcome::Aborted(e) => Settle::Failed(JobState::Failed, e.code(), e.to_string()),
        }
    }

    /// Record how a run ended: success, retry later, or failure for good (DLQ).
    async fn settle(self: &Arc<Self>, job: &JobRecord, settle: Settle) {
        let id = job.id.clone();
        let (state, code, message, retry) = match settle {
            Settle::Cancelled => {
                let at = chrono::Utc::now();
                let _ = self
                    .repo
                    .update(&id, |j| {
                        j.interrupted_at = Some(at);
                        true
                    })
                    .await;
                return;
            }
            Settle::Succeeded(value) => {
                let stored = self.store_output(job, value).await;
                self.announce(stored).await;
                return;
            }
            Settle::Failed(state, code, message) => (state, code, message, false),
            Settle::Transient(state, code, message) => (state, code, message, true),
        };
        let failure = JobFailure { code: code.to_string(), message: message.clone() };
        if retry && job.attempts <= job.max_retries {
            let delay = backoff(self.retry_base, job.attempts);
            let note = format!(
                "attempt {} failed ({code}); retry {} of {} in {} ms",
                job.attempts,
                job.attempts,
                job.max_retries,
                delay.as_millis()
            );
            let stored = self
                .repo
                .update(&id, |j| {
                    j.state == JobState::Running && {
                        j.error = Some(failure.clone());
                        j.transition(JobState::Retrying, Some(note.clone())).is_ok()
                    }
                })
                .await;
            if matches!(stored, Ok((_, true))) {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    this.resume(&id).await;
                });
            }
            return;
        }
        let stored = self
            .repo
            .update_with(
                &id,
                |j| {
                    j.state == JobState::Running && {
                        j.error = Some(failure.clone());
                        j.transition(state, Some(message.clone())).is_ok()
                    }
                },
                dead_letter,
            )
            .await;
        self.announce(stored).await;
    }

    /// Apply the policy's output rules to a result, then store it:
    /// allow keeps it, redact stores the redacted form, quarantine keeps it
    /// for admins only (OUTPUT_QUARANTINED, DLQ), deny drops it (FAILED,
    /// DLQ). If the check itself fails the result is quarantined.
    async fn store_output(
        &self,
        job: &JobRecord,
        value: serde_json::Value,
    ) -> Result<(JobRecord, bool), super::repo::RepoError> {
        let check = OutputCheck {
            topic: job.topic.clone(),
            tenant: job.tenant.clone(),
            capability: job.capability.clone(),
            risk_tags: job.risk_tags.clone(),
            output: value.to_string(),
            error: String::new(),
        };
        let verdict = self.policy.check_output(&job.tenant, &check).unwrap_or_else(|e| {
            tracing::warn!(job = %job.id, error = %e, "output check failed; quarantining the result");
            OutputVerdict {
                decision: OutputDecisionKind::Quarantine,
                rule_id: String::new(),
                reason: "output check unavailable".into(),
                policy_snapshot: self.policy.active().id.clone(),
                findings: Vec::new(),
                redacted_output: None,
            }
        });
        let (state, result, failure) = match verdict.decision {
            OutputDecisionKind::Allow => (JobState::Succeeded, Some(value), None),
            OutputDecisionKind::Redact => {
                (JobState::Succeeded, Some(verdict.redacted_output.clone().unwrap_or(serde_json::Value::Null)), None)
            }
            OutputDecisionKind::Quarantine => (
                JobState::OutputQuarantined,
                Some(value),
                Some(JobFailure { code: "output_quarantined".into(), message: verdict.reason.clone() }),
            ),
            OutputDecisionKind::Deny => (
                JobState::Failed,
                None,
                Some(JobFailure { code: "output_denied".into(), message: verdict.reason.clone() }),
            ),
        };
        let metadata = serde_json::json!({
            "decision": verdict.decision.as_str(),
            "rule_id": verdict.rule_id,
            "reason": verdict.reason,
            "policy_snapshot": verdict.policy_snapshot,
            "findings": verdict.findings,
            "redacted": verdict.decision == OutputDecisionKind::Redact,
            "checked_at": chrono::Utc::now(),
            "phase": "sync",
        });
        self.repo
            .update_with(
                &job.id,
                |j| {
                    j.state == JobState::Running && {
                        j.result = result.clone();
                        j.error = failure.clone();
                        j.output_safety = Some(metadata.clone());
                        j.transition(state, failure.as_ref().map(|f| f.message.clone())).is_ok()
                    }
                },
                |j| if failure.is_some() { dead_letter(j) } else { Vec::new() },
            )
            .await
    }

    /// A retrying job whose delay is over goes back on the bus.
    async fn resume(self: &Arc<Self>, id: &str) {
        let updated = self
            .repo
            .update(id, |j| j.state == JobState::Retrying && j.transition(JobState::Scheduled, None).is_ok())
            .await;
        if let Ok((job, true)) = updated {
            self.publish(&job).await;
        }
    }

    async fn announce(&self, stored: Result<(JobRecord, bool), super::repo::RepoError>) {
        match stored {
            Ok((job, true)) => {
                let event = serde_json::json!({
                    "job_id": job.id, "tenant": job.tenant, "topic": job.topic, "state": job.state,
                    "error_code": job.error.as_ref().map(|e| e.code.clone()),
                });
                let _ = self.bus.publish(Message { subject: "sys.job.result".into(), payload: to_json(&event) }).await;
            }
            Ok((_, false)) => {}
            Err(e) => tracing::error!(error = %e, "cannot store job result"),
        }
    }

    /// The effective config for a job: system (pack overlays included) →
    /// its tenant's org → team, workflow and step named by its labels.
    async fn effective_config(&self, job: &JobRecord) -> serde_json::Value {
        crate::config::ConfigService::new(self.repo.store().clone()).for_job(&job.tenant, &job.labels).await
    }

    /// After a restart: jobs that were scheduled, running or waiting for a
    /// retry go out again (a running one counts its interrupted attempt).
    pub async fn recover(self: &Arc<Self>) -> Result<usize, String> {
        let mut count = 0;
        for id in self.repo.in_flight().await.map_err(|e| e.to_string())? {
            let updated = self
                .repo
                .update_with(
                    &id,
                    |j| match j.state {
                        // A job that keeps being interrupted by restarts (one that
                        // crashes the host, say) stops being retried.
                        JobState::Running if j.attempts > j.max_retries + MAX_RESTART_RECOVERIES => {
                            j.error = Some(JobFailure {
                                code: "interrupted".into(),
                                message: format!("interrupted by {} gateway restarts", j.attempts),
                            });
                            j.transition(JobState::Failed, Some("gateway restarted too often during this job".into()))
                                .is_ok()
                        }
                        JobState::Running => {
                            j.transition(JobState::Retrying, Some(RESTART_NOTE.into())).is_ok()
                                && j.transition(JobState::Scheduled, None).is_ok()
                        }
                        JobState::Retrying => j.transition(JobState::Scheduled, Some(RESTART_NOTE.into())).is_ok(),
                        _ => false,
                    },
                    |j| if j.state == JobState::Failed { dead_letter(j) } else { Vec::new() },
                )
                .await;
            match updated {
                Ok((job, _)) if job.state == JobState::Scheduled => {
                    self.publish(&job).await;
                    count += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot recover job"),
            }
        }
        Ok(count)
    }
}

/// How long an external worker may take unless config or policy says less.
const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Read an external worker's reply.
fn external_outcome(reply: &[u8]) -> Settle {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(reply) else {
        return Settle::Failed(JobState::Failed, "invalid_output", "the worker's reply is not JSON".into());
    };
    if reply.len() > MAX_OUTPUT_BYTES {
        return Settle::Failed(
            JobState::Failed,
            "output_too_large",
            format!("output is over {MAX_OUTPUT_BYTES} bytes"),
        );
    }
    let error = || {
        let e = &value["error"];
        match (e["code"].as_str(), e["message"].as_str().or(e.as_str())) {
            (Some(code), Some(m)) => format!("{code}: {m}"),
            (None, Some(m)) => m.to_string(),
            _ => "the worker reported a failure".to_string(),
        }
    };
    match value["status"].as_str() {
        Some("succeeded") => Settle::Succeeded(value.get("result").cloned().unwrap_or(serde_json::Value::Null)),
        Some("retryable") => Settle::Transient(JobState::Failed, "job_failed_retryable", error()),
        Some("failed") => Settle::Failed(JobState::Failed, "job_failed", error()),
        _ => Settle::Failed(
            JobState::Failed,
            "invalid_output",
            "the worker's reply has no status (succeeded, failed or retryable)".into(),
        ),
    }
}

/// Report a run's outcome to its pool (health and totals of the worker).
fn finish_permit(permit: PoolPermit, settle: &Settle) {
    match settle {
        Settle::Succeeded(_) => permit.finish(true, None),
        Settle::Failed(_, code, message) | Settle::Transient(_, code, message) => {
            permit.finish(false, Some(format!("{code}: {message}")))
        }
        Settle::Cancelled => permit.finish(false, Some("cancelled".into())),
    }
}

/// Exponential backoff with jitter: base·2^(attempt-1), capped, plus up to half again.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let jitter = rand::thread_rng().gen_range(0..=exp.as_millis() as u64 / 2);
    exp + Duration::from_millis(jitter)
}

/// The job's wall-clock budget: the pack's limit, lowered by
/// `timeouts.topics.<topic>` (seconds) and by the policy's
/// `budgets.max_runtime_ms` and by the job's own `timeout_ms`.
fn job_timeout(job: &JobRecord, pack_limit: Duration, config: &serde_json::Value) -> Duration {
    let mut timeout = pack_limit;
    // `timeouts.topics.<topic>`: seconds, or upstream's `{timeout_seconds: N, ...}`.
    let topic_timeout = config.pointer("/timeouts/topics").and_then(|t| t.get(&job.topic));
    let secs = topic_timeout.and_then(|v| v.as_f64().or_else(|| v.get("timeout_seconds").and_then(|s| s.as_f64())));
    if let Some(secs) = secs
        && secs > 0.0
    {
        timeout = timeout.min(Duration::from_secs_f64(secs));
    }
    let constraint = job
        .safety
        .as_ref()
        .and_then(|s| s.decision.constraints.as_ref())
        .and_then(|c| c.pointer("/budgets/max_runtime_ms"))
        .and_then(|v| v.as_u64())
        .filter(|ms| *ms > 0);
    for ms in [constraint, job.timeout_ms].into_iter().flatten() {
        timeout = timeout.min(Duration::from_millis(ms));
    }
    timeout
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..5u32 {
            let d = backoff(base, attempt);
            let exp = base * (1 << (attempt - 1));
            assert!(d >= exp && d <= exp + exp / 2, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, 40) <= Duration::from_secs(45));
    }
}
