//! The in-process dispatcher: each installed pack with a component takes its
//! topics' jobs from the bus (queue group `pack:<id>`), at most
//! `pack_concurrency` at a time, and runs each on a blocking thread in a fresh
//! sandbox. Results are stored on the job; jobs found in flight after a
//! restart are dispatched again.

use super::model::{JobFailure, JobState};
use super::repo::JobRepo;
use super::submit::{DispatchMessage, JobService};
use crate::bus::{Bus, Message};
use crate::packs::PackRegistry;
use crate::packs::install::SYSTEM_CONFIG_KEY;
use crate::packs::runner::{PackRunner, WorkItem, WorkOutcome};
use crate::runtime::PluginError;
use crate::store::to_json;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Largest output a component may return.
const MAX_OUTPUT_BYTES: usize = 1 << 20;

pub struct Dispatcher {
    repo: JobRepo,
    bus: Arc<dyn Bus>,
    registry: Arc<PackRegistry>,
    runner: Arc<PackRunner>,
    concurrency: usize,
    subscribed: Mutex<HashSet<String>>,
}

impl Dispatcher {
    pub fn new(
        repo: JobRepo,
        bus: Arc<dyn Bus>,
        registry: Arc<PackRegistry>,
        runner: Arc<PackRunner>,
        concurrency: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            repo,
            bus,
            registry,
            runner,
            concurrency,
            subscribed: Mutex::new(HashSet::new()),
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
            .subscribe(
                &format!("job.{pack_id}.>"),
                Some(&format!("pack:{pack_id}")),
            )
            .await
            .map_err(|e| e.to_string())?;
        let this = self.clone();
        let limit = Arc::new(Semaphore::new(self.concurrency));
        tokio::spawn(async move {
            while let Some(message) = sub.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.handle(message).await;
                    drop(permit);
                });
            }
        });
        Ok(())
    }

    async fn handle(&self, message: Message) {
        let Ok(dispatch) = serde_json::from_slice::<DispatchMessage>(&message.payload) else {
            tracing::warn!(subject = %message.subject, "dropping an undecodable dispatch message");
            return;
        };
        let id = dispatch.job_id;
        let claimed = self
            .repo
            .update(&id, |j| {
                j.state == JobState::Scheduled && j.transition(JobState::Running, None).is_ok()
            })
            .await;
        let job = match claimed {
            Ok((job, true)) => job,
            Ok((_, false)) => return, // cancelled or already taken
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot claim job");
                return;
            }
        };
        let Some(pack) = self.registry.pack(&job.pack_id) else {
            self.finish(
                &id,
                JobState::Failed,
                None,
                Some((
                    "pack_missing",
                    format!("pack {} is not installed", job.pack_id),
                )),
            )
            .await;
            return;
        };
        let item = WorkItem {
            job_id: job.id.clone(),
            topic: job.topic.clone(),
            tenant: job.tenant.clone(),
            input: job.input.to_string(),
            labels: job
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            attempt: job.attempts,
        };
        let config = Arc::new(self.effective_config().await);
        let runner = self.runner.clone();
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || runner.run(&pack, &item, config, handle))
            .await
            .unwrap_or_else(|e| {
                WorkOutcome::Aborted(PluginError::Sandbox(format!("worker thread failed: {e}")))
            });
        match outcome {
            WorkOutcome::Output(text) if text.len() > MAX_OUTPUT_BYTES => {
                self.finish(
                    &id,
                    JobState::Failed,
                    None,
                    Some((
                        "output_too_large",
                        format!("output is over {MAX_OUTPUT_BYTES} bytes"),
                    )),
                )
                .await
            }
            WorkOutcome::Output(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => {
                    self.finish(&id, JobState::Succeeded, Some(value), None)
                        .await
                }
                Err(e) => {
                    self.finish(
                        &id,
                        JobState::Failed,
                        None,
                        Some((
                            "invalid_output",
                            format!("component output is not JSON: {e}"),
                        )),
                    )
                    .await
                }
            },
            WorkOutcome::InvalidInput(m) => {
                self.finish(&id, JobState::Failed, None, Some(("invalid_input", m)))
                    .await
            }
            WorkOutcome::Failed(m) => {
                self.finish(&id, JobState::Failed, None, Some(("job_failed", m)))
                    .await
            }
            WorkOutcome::Retryable(m) => {
                self.finish(
                    &id,
                    JobState::Failed,
                    None,
                    Some(("job_failed_retryable", m)),
                )
                .await
            }
            WorkOutcome::Aborted(e @ PluginError::Timeout(_)) => {
                self.finish(
                    &id,
                    JobState::Timeout,
                    None,
                    Some((e.code(), e.to_string())),
                )
                .await
            }
            WorkOutcome::Aborted(e) => {
                self.finish(&id, JobState::Failed, None, Some((e.code(), e.to_string())))
                    .await
            }
        }
    }

    /// The system configuration document's data (pack overlays included).
    async fn effective_config(&self) -> serde_json::Value {
        match self.repo.store().get(SYSTEM_CONFIG_KEY).await {
            Ok(Some(entry)) => entry
                .json::<serde_json::Value>()
                .ok()
                .and_then(|doc| doc.get("data").cloned())
                .unwrap_or_else(|| serde_json::json!({})),
            _ => serde_json::json!({}),
        }
    }

    async fn finish(
        &self,
        id: &str,
        state: JobState,
        result: Option<serde_json::Value>,
        failure: Option<(&str, String)>,
    ) {
        let failure = failure.map(|(code, message)| JobFailure {
            code: code.to_string(),
            message,
        });
        let stored = self
            .repo
            .update(id, |j| {
                if j.state != JobState::Running {
                    return false;
                }
                j.result = result.clone();
                j.error = failure.clone();
                j.transition(state, failure.as_ref().map(|f| f.message.clone()))
                    .is_ok()
            })
            .await;
        match stored {
            Ok((job, true)) => {
                let event = serde_json::json!({
                    "job_id": job.id, "tenant": job.tenant, "topic": job.topic, "state": job.state,
                    "error_code": job.error.as_ref().map(|e| e.code.clone()),
                });
                let _ = self
                    .bus
                    .publish(Message {
                        subject: "sys.job.result".into(),
                        payload: to_json(&event),
                    })
                    .await;
            }
            Ok((_, false)) => {}
            Err(e) => tracing::error!(job = %id, error = %e, "cannot store job result"),
        }
    }

    /// After a restart: jobs that were scheduled or running go out again
    /// (a running one is put back to scheduled first; its attempt counts).
    pub async fn recover(&self, jobs: &JobService) -> Result<usize, String> {
        let mut count = 0;
        for id in self.repo.in_flight().await.map_err(|e| e.to_string())? {
            let updated = self
                .repo
                .update(&id, |j| match j.state {
                    JobState::Running => {
                        j.transition(JobState::Retrying, Some("gateway restarted".into()))
                            .is_ok()
                            && j.transition(JobState::Scheduled, None).is_ok()
                    }
                    _ => false,
                })
                .await;
            match updated {
                Ok((job, _)) if job.state == JobState::Scheduled => {
                    jobs.dispatch(&job).await;
                    count += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot recover job"),
            }
        }
        Ok(count)
    }
}
