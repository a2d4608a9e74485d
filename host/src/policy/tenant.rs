//! Per-tenant policy components.
//!
//! A tenant's admin may upload a WebAssembly component implementing
//! `cordum:policy`. It is linked against the world (a component of another
//! world is refused) and probed with a sample request before it is
//! activated. It runs in that tenant's sandbox, after the rules engine, and
//! can only tighten the decision (allow → allow with constraints → require
//! approval → throttle → deny): a looser answer is ignored. If it traps or
//! times out, the tenant's request is denied (fail closed); other tenants
//! never run it and cannot see it. If it imports `cordum:host/velocity`, its
//! windows live in a namespace of its own (`tenant:<tenant>`), recorded when
//! the rules' evaluation records.
//!
//! Stored: the record under `tenantpolicy:<tenant>`, the `.wasm` under the
//! data dir's `components/` by digest.
//!
//! **Shared components** are registered by an operator
//! (`policycomponent:<digest>`) and take part in the global policy through
//! a component bundle (see `policy::component_ref`): every tenant's request
//! then also runs through that component, each tenant in its own sandbox
//! and instances, with the same tighten-only, fail-closed rule.

use super::model::{DecisionKind, PolicyDecision, PolicyRequest};
use crate::runtime::sandbox::SandboxLimits;
use crate::runtime::velocity::{VelocityAccess, VelocityCounters, VelocityMode};
use crate::runtime::warm::WarmPool;
use crate::runtime::{HostState, LoadedComponent, PluginError, Prepared, Runtime, World};
use crate::store::{Op, Store, StoreError};
use chrono::{DateTime, Utc};
use cordum_bindings::policy::PolicyPlugin;
use cordum_bindings::policy::cordum::policy::types as wit;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const RECORD_PREFIX: &str = "tenantpolicy:";
const SHARED_PREFIX: &str = "policycomponent:";
/// Largest component accepted.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// What is stored about a tenant's component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantComponentRecord {
    pub tenant: String,
    pub digest: String,
    pub size_bytes: usize,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
    /// Relative to the data dir.
    pub file: String,
    /// The marketplace plugin it came from (`id@version`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// A component registered for use by component bundles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedComponentRecord {
    pub digest: String,
    #[serde(default)]
    pub name: String,
    pub size_bytes: usize,
    pub uploaded_by: String,
    pub uploaded_at: DateTime<Utc>,
    /// Relative to the data dir.
    pub file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantPolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no policy component is installed for this tenant")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Active {
    record: TenantComponentRecord,
    component: Arc<LoadedComponent>,
}

struct Warm {
    store: wasmtime::Store<HostState>,
    bindings: PolicyPlugin,
    /// Component digest and policy snapshot this instance was loaded with.
    loaded: String,
}

pub struct TenantPolicies {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    active: RwLock<HashMap<String, Arc<Active>>>,
    shared: RwLock<HashMap<String, (SharedComponentRecord, Arc<LoadedComponent>)>>,
    warm: WarmPool<Warm>,
    limits: SandboxLimits,
}

fn rank(kind: DecisionKind) -> u8 {
    match kind {
        DecisionKind::Allow => 0,
        DecisionKind::AllowWithConstraints => 1,
        DecisionKind::RequireApproval => 2,
        DecisionKind::Throttle => 3,
        DecisionKind::Deny => 4,
    }
}

impl TenantPolicies {
    pub fn new(runtime: Arc<Runtime>, store: Arc<dyn Store>, data_dir: PathBuf) -> Self {
        let limits = runtime.limits.plugin;
        Self {
            runtime,
            store,
            data_dir,
            active: RwLock::new(HashMap::new()),
            shared: RwLock::new(HashMap::new()),
            warm: WarmPool::new(4),
            limits,
        }
    }

    /// Load the components stored by earlier runs.
    pub async fn load_stored(&self) -> Result<usize, TenantPolicyError> {
        let mut count = 0;
        for (_, entry) in self.store.scan(RECORD_PREFIX, None, 100_000).await? {
            let record: TenantComponentRecord = entry.json()?;
            let bytes = std::fs::read(self.data_dir.join(&record.file))
                .map_err(|e| TenantPolicyError::Invalid(format!("component of tenant {}: {e}", record.tenant)))?;
            let component =
                self.runtime.load(&bytes, World::Policy).map_err(|e| TenantPolicyError::Invalid(e.to_string()))?;
            self.active
                .write()
                .insert(record.tenant.clone(), Arc::new(Active { record, component: Arc::new(component) }));
            count += 1;
        }
        for (_, entry) in self.store.scan(SHARED_PREFIX, None, 100_000).await? {
            let record: SharedComponentRecord = entry.json()?;
            let bytes = std::fs::read(self.data_dir.join(&record.file))
                .map_err(|e| TenantPolicyError::Invalid(format!("shared component {}: {e}", record.digest)))?;
            let component =
                self.runtime.load(&bytes, World::Policy).map_err(|e| TenantPolicyError::Invalid(e.to_string()))?;
            self.shared.write().insert(record.digest.clone(), (record, Arc::new(component)));
            count += 1;
        }
        Ok(count)
    }

    /// A registered shared component.
    pub fn shared(&self, digest: &str) -> Option<SharedComponentRecord> {
        self.shared.read().get(digest).map(|(r, _)| r.clone())
    }

    pub fn list_shared(&self) -> Vec<SharedComponentRecord> {
        let mut out: Vec<_> = self.shared.read().values().map(|(r, _)| r.clone()).collect();
        out.sort_by_key(|r| r.uploaded_at);
        out
    }

    /// Does `tenant` run a component of its own?
    pub fn has(&self, tenant: &str) -> bool {
        self.active.read().contains_key(tenant)
    }

    pub fn get(&self, tenant: &str) -> Option<TenantComponentRecord> {
        self.active.read().get(tenant).map(|a| a.record.clone())
    }

    fn instantiate(&self, tenant: &str, component: &LoadedComponent) -> Result<Warm, PluginError> {
        let Prepared::Policy(pre) = &component.prepared else {
            return Err(PluginError::Instantiate("not a policy component".into()));
        };
        let mut store = self.runtime.plugin_store(tenant, "policy-tenant")?;
        let bindings = pre.instantiate(&mut store).map_err(|e| self.runtime.classify(&store, self.limits, e))?;
        Ok(Warm { store, bindings, loaded: String::new() })
    }

    /// Run `request` through `component` in `tenant`'s sandbox, counting
    /// velocity with `velocity` (none: the import answers 1).
    fn decide(
        &self,
        tenant: &str,
        component: &LoadedComponent,
        snapshot: (&str, &[(String, String)]),
        request: &PolicyRequest,
        reuse: bool,
        velocity: Option<VelocityAccess>,
    ) -> Result<wit::Decision, String> {
        let (snapshot_id, bundles) = snapshot;
        let wanted = format!("{}|{snapshot_id}", component.digest);
        let warm_key = format!("{tenant}|{}", component.digest);
        let mut instance = match self.warm.take(&warm_key).filter(|w| reuse && w.loaded == wanted) {
            Some(w) => w,
            None => {
                let mut w = self.instantiate(tenant, component).map_err(|e| e.to_string())?;
                w.loaded = wanted;
                self.runtime.arm(&mut w.store, self.limits);
                let wit_bundles: Vec<wit::Bundle> = bundles
                    .iter()
                    .map(|(id, content)| wit::Bundle { id: id.clone(), content: content.clone() })
                    .collect();
                match w.bindings.cordum_policy_evaluator().call_load(&mut w.store, &wit_bundles) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("the component refused the policy: {e:?}")),
                    Err(e) => return Err(self.runtime.classify(&w.store, self.limits, e).to_string()),
                }
                w
            }
        };
        self.runtime.arm(&mut instance.store, self.limits);
        instance.store.data_mut().velocity = velocity;
        let out = instance.bindings.cordum_policy_evaluator().call_evaluate(&mut instance.store, &request.to_wit());
        instance.store.data_mut().velocity = None;
        match out {
            Ok(Ok(decision)) => {
                if reuse {
                    self.warm.give_back(&warm_key, instance);
                }
                Ok(decision)
            }
            Ok(Err(e)) => Err(format!("the component failed: {e:?}")),
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).to_string()),
        }
    }

    /// Check an uploaded component against the world, probe it, then store
    /// and activate it for `tenant` (replacing an earlier one).
    pub async fn install(
        &self,
        tenant: &str,
        wasm: &[u8],
        bundles: &[(String, String)],
        by: &str,
        plugin: Option<String>,
    ) -> Result<TenantComponentRecord, TenantPolicyError> {
        let (component, file) = self.check_and_keep(tenant, wasm, bundles)?;
        let record = TenantComponentRecord {
            tenant: tenant.into(),
            digest: component.digest.clone(),
            size_bytes: wasm.len(),
            uploaded_by: by.into(),
            uploaded_at: Utc::now(),
            file,
            plugin,
        };
        self.store.apply(vec![Op::put_json(format!("{RECORD_PREFIX}{tenant}"), &record)]).await?;
        self.active
            .write()
            .insert(tenant.into(), Arc::new(Active { record: record.clone(), component: Arc::new(component) }));
        Ok(record)
    }

    /// Link `wasm` against `cordum:policy`, probe it in `tenant`'s sandbox
    /// with `bundles`, and keep its bytes under `components/<digest>.wasm`.
    fn check_and_keep(
        &self,
        tenant: &str,
        wasm: &[u8],
        bundles: &[(String, String)],
    ) -> Result<(LoadedComponent, String), TenantPolicyError> {
        if wasm.is_empty() || wasm.len() > MAX_COMPONENT_BYTES {
            return Err(TenantPolicyError::Invalid(format!(
                "a policy component is 1 to {MAX_COMPONENT_BYTES} bytes of WebAssembly"
            )));
        }
        let component = self
            .runtime
            .load(wasm, World::Policy)
            .map_err(|e| TenantPolicyError::Invalid(format!("not a cordum:policy component: {e}")))?;
        let probe = PolicyRequest {
            job_id: "probe".into(),
            topic: "job.probe.check".into(),
            tenant: tenant.into(),
            ..Default::default()
        };
        self.decide(tenant, &component, ("probe", bundles), &probe, false, None)
            .map_err(|e| TenantPolicyError::Invalid(format!("the component failed its probe: {e}")))?;
        let file = format!("components/{}.wasm", component.digest);
        let path = self.data_dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| TenantPolicyError::Invalid(e.to_string()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, wasm)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| TenantPolicyError::Invalid(e.to_string()))?;
        Ok((component, file))
    }

    /// Register a component for component bundles (operators only; the
    /// route checks). Idempotent by digest.
    pub async fn register_shared(
        &self,
        wasm: &[u8],
        name: &str,
        bundles: &[(String, String)],
        by: &str,
    ) -> Result<SharedComponentRecord, TenantPolicyError> {
        let (component, file) = self.check_and_keep("system", wasm, bundles)?;
        let record = SharedComponentRecord {
            digest: component.digest.clone(),
            name: name.to_string(),
            size_bytes: wasm.len(),
            uploaded_by: by.into(),
            uploaded_at: Utc::now(),
            file,
        };
        self.store.apply(vec![Op::put_json(format!("{SHARED_PREFIX}{}", record.digest), &record)]).await?;
        self.shared.write().insert(record.digest.clone(), (record.clone(), Arc::new(component)));
        Ok(record)
    }

    pub async fn remove(&self, tenant: &str) -> Result<(), TenantPolicyError> {
        if self.active.read().get(tenant).is_none() {
            return Err(TenantPolicyError::NotFound);
        }
        self.store.apply(vec![Op::Delete { key: format!("{RECORD_PREFIX}{tenant}") }]).await?;
        self.active.write().remove(tenant);
        Ok(())
    }

    /// Let the tenant's component tighten `base` (no component: `base`).
    /// Its velocity hits go to `velocity`'s counters, in the tenant's own
    /// namespace, recorded or not per the mode of the rules' call.
    pub fn tighten(
        &self,
        tenant: &str,
        snapshot: (&str, &[(String, String)]),
        request: &PolicyRequest,
        base: PolicyDecision,
        velocity: (&Arc<VelocityCounters>, VelocityMode),
    ) -> PolicyDecision {
        let Some(active) = self.active.read().get(tenant).cloned() else { return base };
        let counters = velocity.0.access(format!("tenant:{tenant}"), velocity.1);
        self.tighten_by(
            tenant,
            &active.component,
            "tenant",
            "the tenant's policy component",
            snapshot,
            request,
            base,
            counters,
        )
    }

    /// Let the shared component `digest` (named by a component bundle)
    /// tighten `base` in `tenant`'s sandbox. A component that is not
    /// registered (any more) denies: fail closed.
    #[allow(clippy::too_many_arguments)]
    pub fn tighten_shared(
        &self,
        tenant: &str,
        digest: &str,
        label: &str,
        snapshot: (&str, &[(String, String)]),
        request: &PolicyRequest,
        base: PolicyDecision,
        velocity: (&Arc<VelocityCounters>, VelocityMode),
    ) -> PolicyDecision {
        let Some((_, component)) = self.shared.read().get(digest).cloned() else {
            return PolicyDecision {
                decision: DecisionKind::Deny,
                rule_id: format!("{label}:component-missing"),
                reason: format!("policy component {digest} is not registered on this gateway"),
                constraints: None,
                remediations: Vec::new(),
                approval_required: false,
                policy_snapshot: base.policy_snapshot,
            };
        };
        let counters = velocity.0.access(format!("component:{digest}"), velocity.1);
        let what = format!("policy component {label}");
        self.tighten_by(tenant, &component, label, &what, snapshot, request, base, counters)
    }

    /// Run `component` for `tenant` and keep the stricter of its decision
    /// and `base`; its rule id shows as `<prefix>:<rule>`. Fails closed.
    #[allow(clippy::too_many_arguments)]
    fn tighten_by(
        &self,
        tenant: &str,
        component: &LoadedComponent,
        prefix: &str,
        what: &str,
        snapshot: (&str, &[(String, String)]),
        request: &PolicyRequest,
        base: PolicyDecision,
        counters: VelocityAccess,
    ) -> PolicyDecision {
        match self.decide(tenant, component, snapshot, request, true, Some(counters)) {
            Ok(decision) => {
                let theirs = PolicyDecision::from_wit(decision, &base.policy_snapshot);
                if rank(theirs.decision) > rank(base.decision) {
                    PolicyDecision {
                        rule_id: format!("{prefix}:{}", theirs.rule_id),
                        approval_required: theirs.decision == DecisionKind::RequireApproval,
                        ..theirs
                    }
                } else {
                    base
                }
            }
            Err(e) => {
                tracing::warn!(%tenant, component = %prefix, error = %e, "policy component failed; denying");
                PolicyDecision {
                    decision: DecisionKind::Deny,
                    rule_id: format!("{prefix}:component-error"),
                    reason: format!("{what} failed: {e}"),
                    constraints: None,
                    remediations: Vec::new(),
                    approval_required: false,
                    policy_snapshot: base.policy_snapshot,
                }
            }
        }
    }
}
