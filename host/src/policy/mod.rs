//! Policy: the active rule set and the bridge to policy components.
//!
//! The active policy is a snapshot: the base policy file (if configured)
//! followed by every enabled bundle in the store (pack fragments and, later,
//! user bundles) in bundle-id order. Its id is derived from the content, as
//! upstream does (`<version>:<sha>|cfg:<sha>`). Decisions are made by the
//! policy component (first-party: the rules engine) inside the calling
//! tenant's sandbox: each tenant has its own warm instances, loaded with the
//! snapshot they evaluate; an instance that traps is discarded.
//!
//! Velocity rules count through `cordum:host/velocity` in one set of windows
//! owned by the service: [`PolicyService::evaluate`] records the request,
//! every other call (simulate, explain, drafts, pack-install simulations) is
//! a dry run that only counts.

pub mod bundles;
pub mod component_ref;
pub mod model;
pub mod output;
pub mod tenant;

use crate::runtime::sandbox::SandboxLimits;
use crate::runtime::velocity::{VelocityCounters, VelocityMode};
use crate::runtime::warm::WarmPool;
use crate::runtime::{HostState, LoadedComponent, PluginError, Prepared, Runtime};
use crate::store::{Store, StoreError};
use cordum_bindings::policy::PolicyPlugin;
use cordum_bindings::policy::cordum::policy::types as wit;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub use model::{DecisionKind, PolicyDecision, PolicyRequest, Remediation, TraceEntry};
pub use output::{OutputCheck, OutputDecisionKind, OutputFinding, OutputVerdict};

/// Store key prefix of policy bundles.
pub const BUNDLE_PREFIX: &str = "policy:bundle:";

/// A stored bundle (a pack's policy fragment or a user's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBundle {
    pub id: String,
    pub content: String,
    /// `pack` or `user`.
    pub source: String,
    pub enabled: bool,
    pub sha256: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// An immutable rule set as evaluated.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    pub id: String,
    pub bundles: Vec<(String, String)>,
    /// The component bundles among `bundles`, in merge order (parsed once).
    components: Vec<(String, component_ref::ComponentRef)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("policy bundle invalid: {}", format_diagnostics(.0))]
    InvalidBundle(Vec<Diagnostic>),
    #[error("no policy loaded")]
    NoPolicy,
    #[error("invalid policy request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub bundle_id: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

fn format_diagnostics(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| format!("{} line {} column {}: {}", d.bundle_id, d.line, d.column, d.message))
        .collect::<Vec<_>>()
        .join("; ")
}

struct WarmPolicy {
    store: wasmtime::Store<HostState>,
    bindings: PolicyPlugin,
    loaded: String,
}

pub struct PolicyService {
    runtime: Arc<Runtime>,
    component: LoadedComponent,
    store: Arc<dyn Store>,
    base: Option<(String, String)>,
    active: RwLock<Arc<PolicySnapshot>>,
    warm: WarmPool<WarmPolicy>,
    limits: SandboxLimits,
    /// Tenants' own policy components, run after the rules (tighten only).
    tenants: std::sync::OnceLock<Arc<tenant::TenantPolicies>>,
    /// Serialises publish and rollback within this process (the head
    /// compare-and-set guards against other replicas).
    publishing: tokio::sync::Mutex<()>,
    /// Windows of velocity rules (in memory, per process).
    velocity: Arc<VelocityCounters>,
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Snapshot id as upstream computes it: `<version>:<sha>` for the base file,
/// `cfg:<sha over id\0content...>` for bundles, joined by `|`.
fn snapshot_id(base: Option<&(String, String)>, bundles: &[(String, String)]) -> String {
    let mut parts = Vec::new();
    if let Some((_, content)) = base {
        let version = serde_yaml::from_str::<serde_yaml::Value>(content)
            .ok()
            .and_then(|v| v.get("version").and_then(|v| v.as_str().map(str::to_string)))
            .filter(|v| !v.is_empty());
        let sha = sha_hex(content.as_bytes());
        parts.push(match version {
            Some(v) => format!("{v}:{sha}"),
            None => sha,
        });
    }
    if !bundles.is_empty() {
        let mut h = Sha256::new();
        for (id, content) in bundles {
            h.update(id.as_bytes());
            h.update([0u8]);
            h.update(content.as_bytes());
        }
        parts.push(format!("cfg:{}", hex::encode(h.finalize())));
    }
    if parts.is_empty() { "empty".to_string() } else { parts.join("|") }
}

impl PolicyService {
    pub fn new(
        runtime: Arc<Runtime>,
        component: LoadedComponent,
        store: Arc<dyn Store>,
        base: Option<(String, String)>,
    ) -> Self {
        let limits = runtime.limits.plugin;
        let empty = Arc::new(PolicySnapshot {
            id: snapshot_id(base.as_ref(), &[]),
            bundles: Vec::new(),
            components: Vec::new(),
        });
        Self {
            runtime,
            component,
            store,
            base,
            active: RwLock::new(empty),
            warm: WarmPool::new(8),
            limits,
            tenants: std::sync::OnceLock::new(),
            publishing: tokio::sync::Mutex::new(()),
            velocity: VelocityCounters::new(),
        }
    }

    pub fn active(&self) -> Arc<PolicySnapshot> {
        self.active.read().clone()
    }

    /// Rebuild the active snapshot from the store and swap it in atomically.
    /// The new rules are validated first; on error the old snapshot stays.
    pub async fn reload(&self) -> Result<Arc<PolicySnapshot>, PolicyError> {
        let mut bundles: Vec<(String, String)> = self
            .stored_bundles()
            .await?
            .into_iter()
            .filter(|(_, b)| b.enabled)
            .map(|(_, b)| (b.id, b.content))
            .collect();
        bundles.sort_by(|a, b| a.0.cmp(&b.0));
        let snapshot = self.snapshot_from(bundles);
        let diags = self.check(&self.with_base(snapshot.bundles.clone()))?;
        if !diags.is_empty() {
            return Err(PolicyError::InvalidBundle(diags));
        }
        let snapshot = Arc::new(snapshot);
        *self.active.write() = snapshot.clone();
        Ok(snapshot)
    }

    /// Every live bundle (enabled or not) with its store revision, by id.
    pub async fn stored_bundles(&self) -> Result<Vec<(u64, StoredBundle)>, PolicyError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(BUNDLE_PREFIX, after.as_deref(), 256).await?;
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
            for (_, entry) in page {
                out.push((entry.revision, entry.json::<StoredBundle>()?));
            }
        }
        Ok(out)
    }

    /// The id a snapshot of these bundles (merge order, base excluded) gets.
    pub fn snapshot_id_of(&self, bundles: &[(String, String)]) -> String {
        snapshot_id(self.base.as_ref(), bundles)
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn snapshot_from(&self, bundles: Vec<(String, String)>) -> PolicySnapshot {
        let components =
            bundles.iter().filter_map(|(id, c)| Some((id.clone(), component_ref::parse(id, c)?.ok()?))).collect();
        PolicySnapshot { id: snapshot_id(self.base.as_ref(), &bundles), bundles, components }
    }

    /// Validate bundles (in merge order) with the policy component.
    /// Component bundles are checked here (well formed, naming a registered
    /// component); rule bundles by the policy component.
    pub fn check(&self, bundles: &[(String, String)]) -> Result<Vec<Diagnostic>, PolicyError> {
        let mut diags = Vec::new();
        let mut wit_bundles = Vec::new();
        for (id, content) in bundles {
            match component_ref::parse(id, content) {
                None => wit_bundles.push(wit::Bundle { id: id.clone(), content: content.clone() }),
                Some(Ok(r)) => {
                    if self.tenants.get().and_then(|t| t.shared(&r.digest)).is_none() {
                        let line = content.lines().position(|l| l.contains("digest")).map(|i| i as u32 + 1);
                        diags.push(Diagnostic {
                            bundle_id: id.clone(),
                            line: line.unwrap_or(0),
                            column: line.map(|_| 1).unwrap_or(0),
                            message: format!(
                                "policy component {} is not registered (POST /api/v1/policy/components)",
                                r.digest
                            ),
                        });
                    }
                }
                Some(Err((message, line, column))) => {
                    diags.push(Diagnostic { bundle_id: id.clone(), line, column, message })
                }
            }
        }
        let mut instance = self.instantiate("system")?;
        let out = instance.bindings.cordum_policy_evaluator().call_check(&mut instance.store, &wit_bundles);
        match out {
            Ok(found) => {
                diags.extend(found.into_iter().map(Diagnostic::from));
                Ok(diags)
            }
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    /// Let the snapshot's component bundles tighten the rules' decision, in
    /// merge order, each in `tenant`'s sandbox.
    fn apply_components(
        &self,
        tenant: &str,
        snapshot: &PolicySnapshot,
        request: &PolicyRequest,
        mut decision: PolicyDecision,
        mode: VelocityMode,
        mut trace: Option<&mut Vec<TraceEntry>>,
    ) -> PolicyDecision {
        let Some(tenants) = self.tenants.get() else { return decision };
        let has_own = tenants.has(tenant);
        if snapshot.components.is_empty() && !has_own {
            return decision;
        }
        let rules = snapshot.bundles_with_base(self.base.as_ref());
        for r in snapshot.components() {
            let before = (decision.decision, decision.rule_id.clone());
            decision = tenants.tighten_shared(
                tenant,
                &r.digest,
                &r.name,
                (&snapshot.id, &rules),
                request,
                decision,
                (&self.velocity, mode),
            );
            let what = format!("policy component {}", &r.digest[..12]);
            note_component(trace.as_deref_mut(), &r.name, &what, before, &decision);
            if decision.decision == DecisionKind::Deny {
                break;
            }
        }
        // The tenant's own component comes last and may only tighten.
        if has_own && decision.decision != DecisionKind::Deny {
            let before = (decision.decision, decision.rule_id.clone());
            decision = tenants.tighten(tenant, (&snapshot.id, &rules), request, decision, (&self.velocity, mode));
            note_component(trace, "tenant", "the tenant's policy component", before, &decision);
        }
        decision
    }

    /// Would `extra` (a bundle id and content) keep the policy valid?
    pub fn check_with(&self, extra: &[(String, String)]) -> Result<Vec<Diagnostic>, PolicyError> {
        let mut bundles = self.active().bundles.clone();
        for (id, content) in extra {
            bundles.retain(|(b, _)| b != id);
            bundles.push((id.clone(), content.clone()));
        }
        bundles.sort_by(|a, b| a.0.cmp(&b.0));
        self.check_loadable(&self.with_base(bundles))
    }

    /// [`Self::check`], then a trial load of the rule bundles in a fresh
    /// instance under the policy plugin's limits: a policy that parses but
    /// cannot be loaded (too big for the memory cap, too slow for the
    /// deadline) is refused here instead of failing every evaluation later.
    pub fn check_loadable(&self, bundles: &[(String, String)]) -> Result<Vec<Diagnostic>, PolicyError> {
        let diags = match self.check(bundles) {
            Ok(diags) => diags,
            // Even parsing it ran out of memory or time.
            Err(PolicyError::Plugin(e)) => return Ok(vec![not_loadable(e.to_string())]),
            Err(e) => return Err(e),
        };
        if !diags.is_empty() {
            return Ok(diags);
        }
        let wit_bundles: Vec<wit::Bundle> = bundles
            .iter()
            .filter(|(id, c)| component_ref::parse(id, c).is_none())
            .map(|(id, content)| wit::Bundle { id: id.clone(), content: content.clone() })
            .collect();
        let mut instance = self.instantiate("system")?;
        self.runtime.arm(&mut instance.store, self.limits);
        match instance.bindings.cordum_policy_evaluator().call_load(&mut instance.store, &wit_bundles) {
            Ok(Ok(_)) => Ok(Vec::new()),
            Ok(Err(e)) => match PolicyError::from(e) {
                PolicyError::InvalidBundle(d) => Ok(d),
                other => Ok(vec![not_loadable(other.to_string())]),
            },
            Err(e) => Ok(vec![not_loadable(self.runtime.classify(&instance.store, self.limits, e).to_string())]),
        }
    }

    /// A fresh instance loaded with the active policy plus `extra` bundles
    /// (replacing bundles with the same ids; `None` content removes one).
    /// Nothing is stored; the active snapshot and warm instances are
    /// untouched. Returns the instance and the draft snapshot's id.
    fn draft_instance(&self, extra: &[(String, Option<String>)]) -> Result<(WarmPolicy, PolicySnapshot), PolicyError> {
        let mut bundles = self.active().bundles.clone();
        for (id, content) in extra {
            bundles.retain(|(b, _)| b != id);
            if let Some(content) = content {
                bundles.push((id.clone(), content.clone()));
            }
        }
        bundles.sort_by(|a, b| a.0.cmp(&b.0));
        let draft = self.snapshot_from(bundles);
        let wit_bundles: Vec<wit::Bundle> = draft
            .bundles_with_base(self.base.as_ref())
            .into_iter()
            .map(|(id, content)| wit::Bundle { id, content })
            .collect();
        let mut instance = self.instantiate("system")?;
        self.runtime.arm(&mut instance.store, self.limits);
        // A draft too big or too slow to load is the draft's fault: say so
        // as a validation error, as saving it would.
        match instance.bindings.cordum_policy_evaluator().call_load(&mut instance.store, &wit_bundles) {
            Ok(Ok(_)) => Ok((instance, draft)),
            Ok(Err(e)) => match PolicyError::from(e) {
                PolicyError::InvalidBundle(d) => Err(PolicyError::InvalidBundle(d)),
                other => Err(PolicyError::InvalidBundle(vec![not_loadable(other.to_string())])),
            },
            Err(e) => Err(PolicyError::InvalidBundle(vec![not_loadable(
                self.runtime.classify(&instance.store, self.limits, e).to_string(),
            )])),
        }
    }

    /// Decide `request` as if `extra` bundles were applied (see
    /// [`Self::draft_instance`]): a dry run, nothing recorded.
    pub fn evaluate_with(
        &self,
        extra: &[(String, Option<String>)],
        request: &PolicyRequest,
    ) -> Result<PolicyDecision, PolicyError> {
        let (mut instance, draft) = self.draft_instance(extra)?;
        match instance.bindings.cordum_policy_evaluator().call_evaluate(&mut instance.store, &request.to_wit()) {
            Ok(Ok(decision)) => {
                let decision = PolicyDecision::from_wit(decision, &draft.id);
                Ok(self.apply_components(&request.tenant, &draft, request, decision, VelocityMode::DryRun, None))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    /// Explain `request` as if `extra` bundles were applied: a dry run.
    pub fn explain_with(
        &self,
        extra: &[(String, Option<String>)],
        request: &PolicyRequest,
    ) -> Result<(PolicyDecision, Vec<TraceEntry>, bool), PolicyError> {
        let (mut instance, draft) = self.draft_instance(extra)?;
        match instance.bindings.cordum_policy_evaluator().call_explain(&mut instance.store, &request.to_wit()) {
            Ok(Ok(explanation)) => {
                let mut trace: Vec<TraceEntry> = explanation.trace.into_iter().map(TraceEntry::from).collect();
                let decision = PolicyDecision::from_wit(explanation.decision, &draft.id);
                let decision = self.apply_components(
                    &request.tenant,
                    &draft,
                    request,
                    decision,
                    VelocityMode::DryRun,
                    Some(&mut trace),
                );
                Ok((decision, trace, explanation.defaulted))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    fn instantiate(&self, tenant: &str) -> Result<WarmPolicy, PluginError> {
        let Prepared::Policy(pre) = &self.component.prepared else {
            return Err(PluginError::Instantiate("not a policy component".into()));
        };
        let mut store = self.runtime.plugin_store(tenant, "policy")?;
        // Dry run unless `with_instance` is told otherwise for one call.
        store.data_mut().velocity = Some(self.velocity.access("", VelocityMode::DryRun));
        let bindings = pre.instantiate(&mut store).map_err(|e| self.runtime.classify(&store, self.limits, e))?;
        Ok(WarmPolicy { store, bindings, loaded: String::new() })
    }

    /// Run `f` on a warm instance of `tenant` loaded with the active
    /// snapshot; velocity hits during `f` are recorded per `mode`.
    fn with_instance<T>(
        &self,
        tenant: &str,
        mode: VelocityMode,
        f: impl FnOnce(&mut WarmPolicy) -> wasmtime::Result<Result<T, wit::PolicyError>>,
    ) -> Result<(T, Arc<PolicySnapshot>), PolicyError> {
        let snapshot = self.active();
        let mut instance = match self.warm.take(tenant) {
            Some(i) => i,
            None => self.instantiate(tenant)?,
        };
        self.runtime.arm(&mut instance.store, self.limits);
        if instance.loaded != snapshot.id {
            let bundles: Vec<wit::Bundle> = snapshot
                .bundles_with_base(self.base.as_ref())
                .into_iter()
                .map(|(id, content)| wit::Bundle { id, content })
                .collect();
            match instance.bindings.cordum_policy_evaluator().call_load(&mut instance.store, &bundles) {
                Ok(Ok(_)) => instance.loaded = snapshot.id.clone(),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(self.runtime.classify(&instance.store, self.limits, e).into());
                }
            }
        }
        instance.store.data_mut().set_velocity_mode(mode);
        let out = f(&mut instance);
        instance.store.data_mut().set_velocity_mode(VelocityMode::DryRun);
        match out {
            Ok(Ok(value)) => {
                self.warm.give_back(tenant, instance);
                Ok((value, snapshot))
            }
            Ok(Err(e)) => {
                self.warm.give_back(tenant, instance);
                Err(e.into())
            }
            // A trap poisons the instance: drop it, the next call builds a new one.
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    /// Decide a request for `tenant` under the active snapshot: the real
    /// decision, so the request is recorded in the windows of the velocity
    /// rules it reaches.
    pub fn evaluate(&self, tenant: &str, request: &PolicyRequest) -> Result<PolicyDecision, PolicyError> {
        self.decide(tenant, request, VelocityMode::Record)
    }

    /// Like [`Self::evaluate`] as a dry run: velocity rules see the count
    /// this request would make, and nothing is recorded.
    pub fn simulate(&self, tenant: &str, request: &PolicyRequest) -> Result<PolicyDecision, PolicyError> {
        self.decide(tenant, request, VelocityMode::DryRun)
    }

    fn decide(&self, tenant: &str, request: &PolicyRequest, mode: VelocityMode) -> Result<PolicyDecision, PolicyError> {
        let req = request.to_wit();
        let (decision, snapshot) = self
            .with_instance(tenant, mode, |i| i.bindings.cordum_policy_evaluator().call_evaluate(&mut i.store, &req))?;
        let decision = PolicyDecision::from_wit(decision, &snapshot.id);
        Ok(self.apply_components(tenant, &snapshot, request, decision, mode, None))
    }

    /// Install the per-tenant components consulted after the rules.
    pub fn set_tenant_policies(&self, tenants: Arc<tenant::TenantPolicies>) {
        let _ = self.tenants.set(tenants);
    }

    pub fn tenant_policies(&self) -> Option<&Arc<tenant::TenantPolicies>> {
        self.tenants.get()
    }

    /// The active snapshot's bundles in merge order (base first).
    pub fn active_bundles(&self) -> Vec<(String, String)> {
        self.active().bundles_with_base(self.base.as_ref())
    }

    /// Decide and return the trace of every rule considered: a dry run,
    /// nothing is recorded.
    pub fn explain(
        &self,
        tenant: &str,
        request: &PolicyRequest,
    ) -> Result<(PolicyDecision, Vec<TraceEntry>, bool), PolicyError> {
        let req = request.to_wit();
        let (explanation, snapshot) = self.with_instance(tenant, VelocityMode::DryRun, |i| {
            i.bindings.cordum_policy_evaluator().call_explain(&mut i.store, &req)
        })?;
        let mut trace: Vec<TraceEntry> = explanation.trace.into_iter().map(TraceEntry::from).collect();
        let decision = PolicyDecision::from_wit(explanation.decision, &snapshot.id);
        let decision =
            self.apply_components(tenant, &snapshot, request, decision, VelocityMode::DryRun, Some(&mut trace));
        Ok((decision, trace, explanation.defaulted))
    }
}

/// The diagnostic of a policy that parses but does not fit the policy
/// plugin's memory or time: the policy as a whole, not one bundle.
fn not_loadable(why: String) -> Diagnostic {
    Diagnostic {
        bundle_id: "*".into(),
        line: 0,
        column: 0,
        message: format!("the policy does not load within the policy plugin's limits: {why}"),
    }
}

/// Add a component's step to an explain trace: decisive (and every earlier
/// entry no longer so) when it changed the decision.
fn note_component(
    trace: Option<&mut Vec<TraceEntry>>,
    rule_id: &str,
    what: &str,
    before: (DecisionKind, String),
    after: &PolicyDecision,
) {
    let Some(trace) = trace else { return };
    let changed = (after.decision, after.rule_id.clone()) != before;
    if changed {
        trace.iter_mut().for_each(|e| e.decisive = false);
    }
    trace.push(TraceEntry {
        rule_id: rule_id.to_string(),
        position: trace.len() as u32,
        matched: changed,
        decisive: changed,
        detail: if changed {
            format!("{what}: tightened to {} (rule {})", after.decision.as_str(), after.rule_id)
        } else {
            format!("{what}: no stricter decision")
        },
    });
}

impl PolicySnapshot {
    /// The rule bundles in merge order, the base policy first (what the
    /// rules engine loads; component bundles are left out).
    pub fn bundles_with_base(&self, base: Option<&(String, String)>) -> Vec<(String, String)> {
        base.cloned()
            .into_iter()
            .chain(self.bundles.iter().filter(|(id, _)| !self.components.iter().any(|(c, _)| c == id)).cloned())
            .collect()
    }

    /// The component bundles, in merge order.
    pub fn components(&self) -> impl Iterator<Item = &component_ref::ComponentRef> {
        self.components.iter().map(|(_, r)| r)
    }
}

impl From<wit::Diagnostic> for Diagnostic {
    fn from(d: wit::Diagnostic) -> Self {
        Diagnostic { bundle_id: d.bundle_id, line: d.line, column: d.column, message: d.message }
    }
}

impl From<wit::PolicyError> for PolicyError {
    fn from(e: wit::PolicyError) -> Self {
        match e {
            wit::PolicyError::InvalidBundle(d) => {
                PolicyError::InvalidBundle(d.into_iter().map(Diagnostic::from).collect())
            }
            wit::PolicyError::NoPolicy => PolicyError::NoPolicy,
            wit::PolicyError::InvalidRequest(m) => PolicyError::InvalidRequest(m),
        }
    }
}
