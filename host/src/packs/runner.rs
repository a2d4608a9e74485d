//! Runs one job on a pack's component: a fresh sandbox per job (own store,
//! the pack's memory cap and deadline, the per-tenant per-pack directory as
//! its only filesystem, kv scoped to tenant + pack).

use super::InstalledPack;
use crate::runtime::sandbox::{CancelFlag, KvAccess, SandboxLimits};
use crate::runtime::{PluginContext, PluginError, Prepared, Runtime};
use crate::store::Store;
use cordum_bindings::pack::exports::cordum::pack::worker as wit;
use std::path::PathBuf;
use std::sync::Arc;

/// A job as handed to a worker.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub job_id: String,
    pub topic: String,
    pub tenant: String,
    pub input: String,
    pub labels: Vec<(String, String)>,
    pub attempt: u32,
    /// Wall-clock budget of this run (pack limit, config and constraints applied).
    pub timeout: std::time::Duration,
    /// Memory cap of this run's instance (the pool's, else the pack's).
    pub memory_bytes: usize,
}

/// The worker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOutcome {
    Output(String),
    InvalidInput(String),
    Failed(String),
    Retryable(String),
    /// The sandbox stopped the component (timeout, memory, trap).
    Aborted(PluginError),
}

pub struct PackRunner {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    sandboxes: PathBuf,
}

impl PackRunner {
    pub fn new(runtime: Arc<Runtime>, store: Arc<dyn Store>, sandboxes: PathBuf) -> Self {
        Self { runtime, store, sandboxes }
    }

    /// The tenant's directory for a pack, created on first use beneath the
    /// sandboxes root. Tenant and pack ids are validated plain names, and
    /// the directory is created through a capability handle on the root, so
    /// no id can point it elsewhere.
    fn sandbox_dir(&self, tenant: &str, pack: &str) -> Result<PathBuf, PluginError> {
        let plain = |s: &str| {
            !s.is_empty() && !s.starts_with('.') && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        };
        if !plain(tenant) || !plain(pack) {
            return Err(PluginError::Sandbox("tenant or pack id is not a plain name".into()));
        }
        std::fs::create_dir_all(&self.sandboxes).map_err(|e| PluginError::Sandbox(e.to_string()))?;
        let root = cap_std::fs::Dir::open_ambient_dir(&self.sandboxes, cap_std::ambient_authority())
            .map_err(|e| PluginError::Sandbox(e.to_string()))?;
        root.create_dir_all(format!("{tenant}/{pack}")).map_err(|e| PluginError::Sandbox(e.to_string()))?;
        Ok(self.sandboxes.join(tenant).join(pack))
    }

    /// Run `item` to completion on `pack`'s component, offering `config` (the
    /// effective configuration) through `cordum:host/config`. Blocking: call
    /// it from a blocking thread (the kv imports wait on the store).
    pub fn run(
        &self,
        pack: &InstalledPack,
        item: &WorkItem,
        config: Arc<serde_json::Value>,
        cancel: Arc<CancelFlag>,
        rt: tokio::runtime::Handle,
    ) -> WorkOutcome {
        let Some(component) = &pack.component else {
            return WorkOutcome::Failed(format!("pack {} has no component", pack.record.id));
        };
        let Prepared::Pack(pre) = &component.prepared else {
            return WorkOutcome::Failed("component is not a pack worker".into());
        };
        let dir = match self.sandbox_dir(&item.tenant, &pack.record.id) {
            Ok(d) => d,
            Err(e) => return WorkOutcome::Aborted(e),
        };
        let ctx = PluginContext {
            tenant: item.tenant.clone(),
            plugin: pack.record.id.clone(),
            kv: Some(KvAccess {
                store: self.store.clone(),
                prefix: format!("kv:{}:{}:", item.tenant, pack.record.id),
                runtime: rt,
            }),
            config,
        };
        let limits = SandboxLimits { memory_bytes: item.memory_bytes, timeout: item.timeout.min(pack.limits.timeout) };
        let mut store = match self.runtime.new_store(ctx, limits, Some(&dir)) {
            Ok(s) => s,
            Err(e) => return WorkOutcome::Aborted(e),
        };
        self.runtime.watch(&mut store, limits, cancel);
        let bindings = match pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return WorkOutcome::Aborted(self.runtime.classify(&store, limits, e)),
        };
        let job = wit::Job {
            job_id: item.job_id.clone(),
            topic: item.topic.clone(),
            tenant: item.tenant.clone(),
            input: item.input.clone(),
            labels: item.labels.iter().map(|(k, v)| wit::Label { key: k.clone(), value: v.clone() }).collect(),
            attempt: item.attempt,
        };
        match bindings.cordum_pack_worker().call_handle(&mut store, &job) {
            Ok(Ok(output)) => WorkOutcome::Output(output),
            Ok(Err(wit::JobError::InvalidInput(m))) => WorkOutcome::InvalidInput(m),
            Ok(Err(wit::JobError::Failed(m))) => WorkOutcome::Failed(m),
            Ok(Err(wit::JobError::Retryable(m))) => WorkOutcome::Retryable(m),
            Err(e) => WorkOutcome::Aborted(self.runtime.classify(&store, limits, e)),
        }
    }
}
