//! Merging decoded bundles into one effective, compiled [`Policy`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::doc::{ConstraintsDoc, McpDoc, Parsed, RuleDoc, Scope, Selector, TenantDoc, Tier};
use crate::eval::{Matcher, Mcp};
use crate::output::{self, OutputRule};
use crate::{DecisionKind, INVARIANTS_BUNDLE_ID, Remediation};

/// The merged, compiled policy. Build it with [`crate::load`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) version: String,
    pub(crate) default_tenant: String,
    pub(crate) default_decision: DecisionKind,
    /// Defaults of workflow- and job-tier bundles, in bundle order.
    pub(crate) scoped_defaults: Vec<ScopedDefault>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) input_rules: Vec<Value>,
    pub(crate) output_rules: Vec<Value>,
    /// `output_rules` compiled for [`Policy::check_output`] (enabled rules
    /// only, invalid patterns dropped).
    pub(crate) output_checks: Vec<OutputRule>,
    pub(crate) input_policy: InputPolicy,
    pub(crate) output_policy: OutputPolicy,
    pub(crate) tenants: BTreeMap<String, Tenant>,
    pub(crate) legacy: bool,
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ScopedDefault {
    pub tier: Tier,
    pub scope: Scope,
    pub kind: DecisionKind,
}

/// Which request section a rule belongs to (§1.4 step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// Ordinary dispatch rules.
    Input,
    /// Rules naming the topic `job.edge.action`.
    Edge,
    /// Rules with a non-empty `match.mcp` list.
    Mcp,
}

impl Section {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Section::Input => "input",
            Section::Edge => "edge-action",
            Section::Mcp => "mcp-tool",
        }
    }
}

/// A velocity limit: the rule fires only when the host's count for its
/// window exceeds `max_requests` (see [`crate::VelocityCounter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Velocity {
    pub max_requests: u64,
    pub window_seconds: u32,
    pub key: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: String,
    pub tier: Tier,
    pub scope: Scope,
    /// The decision as written (for invariant ordering).
    pub declared: DecisionKind,
    /// The decision produced (allow upgraded when constraints are set).
    pub kind: DecisionKind,
    pub reason: String,
    pub constraints: Option<Value>,
    pub remediations: Vec<Remediation>,
    pub velocity: Option<Velocity>,
    pub matcher: Matcher,
    pub section: Section,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct InputPolicy {
    pub enabled: bool,
    pub fail_mode: String,
    pub max_scan_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct OutputPolicy {
    /// Some bundle set `enabled: true`.
    pub enabled: bool,
    /// Some bundle set `enabled: false` (counts only when none set true).
    pub disabled: bool,
    pub fail_mode: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Tenant {
    pub allow_topics: Vec<String>,
    pub deny_topics: Vec<String>,
    pub allowed_repo_hosts: Vec<String>,
    pub denied_repo_hosts: Vec<String>,
    /// 0 when unset.
    pub max_concurrent_jobs: u64,
    pub mcp: McpLists,
    /// `mcp` compiled for the tenant overlay check.
    pub mcp_check: Mcp,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct McpLists {
    pub allow_servers: Vec<String>,
    pub deny_servers: Vec<String>,
    pub allow_tools: Vec<String>,
    pub deny_tools: Vec<String>,
    pub allow_resources: Vec<String>,
    pub deny_resources: Vec<String>,
    pub allow_actions: Vec<String>,
    pub deny_actions: Vec<String>,
}

impl McpLists {
    fn extend(&mut self, d: &McpDoc) {
        let add = |to: &mut Vec<String>, from: &Option<Vec<String>>| {
            to.extend(from.iter().flatten().cloned());
        };
        add(&mut self.allow_servers, &d.allow_servers);
        add(&mut self.deny_servers, &d.deny_servers);
        add(&mut self.allow_tools, &d.allow_tools);
        add(&mut self.deny_tools, &d.deny_tools);
        add(&mut self.allow_resources, &d.allow_resources);
        add(&mut self.deny_resources, &d.deny_resources);
        add(&mut self.allow_actions, &d.allow_actions);
        add(&mut self.deny_actions, &d.deny_actions);
    }

    pub(crate) fn to_mcp(&self) -> Mcp {
        Mcp::new([
            (&self.allow_servers, &self.deny_servers),
            (&self.allow_tools, &self.deny_tools),
            (&self.allow_resources, &self.deny_resources),
            (&self.allow_actions, &self.deny_actions),
        ])
    }
}

impl Policy {
    /// Number of rules in the merged list (including legacy tenant rules).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The global default decision (deny unless `allow`/`permit` was set).
    pub fn default_decision(&self) -> DecisionKind {
        self.default_decision
    }

    /// The merged `output_rules`, as JSON objects (nulls removed), for the
    /// host's post-execution checks.
    pub fn output_rules(&self) -> &[Value] {
        &self.output_rules
    }

    /// The merged `input_rules` (content scanning), as JSON objects.
    pub fn input_rules(&self) -> &[Value] {
        &self.input_rules
    }

    /// `version` of the first bundle that sets one; empty otherwise.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `default_tenant` of the first bundle that sets one; empty otherwise.
    pub fn default_tenant(&self) -> &str {
        &self.default_tenant
    }

    /// Ids of the rules in evaluation order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// Whether any rule carries a velocity limit (such rules need a
    /// [`crate::VelocityCounter`]; without one they are skipped).
    pub fn has_velocity_rules(&self) -> bool {
        self.rules.iter().any(|r| r.velocity.is_some())
    }

    /// The rules were generated from `tenants` (no bundle had `rules`).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Whether output checks are on: `output_policy.enabled: true` in any
    /// bundle; else off when a bundle says `enabled: false`; else on when
    /// output rules are present with no `fail_mode` (upstream's legacy
    /// behaviour).
    pub fn output_policy_enabled(&self) -> bool {
        if self.output_policy.enabled {
            true
        } else if self.output_policy.disabled {
            false
        } else {
            !self.output_rules.is_empty() && self.output_policy.fail_mode.is_empty()
        }
    }

    /// `input_policy.enabled` (OR over bundles).
    pub fn input_policy_enabled(&self) -> bool {
        self.input_policy.enabled
    }

    /// `input_policy.fail_mode` (`open`, `closed`, or empty when unset).
    pub fn input_fail_mode(&self) -> &str {
        &self.input_policy.fail_mode
    }

    /// `input_policy.max_scan_bytes`, when set.
    pub fn input_max_scan_bytes(&self) -> Option<i64> {
        self.input_policy.max_scan_bytes
    }

    /// `output_policy.fail_mode` (`open`, `closed`, or empty when unset).
    pub fn output_fail_mode(&self) -> &str {
        &self.output_policy.fail_mode
    }

    /// Non-fatal notes from the merge (a repeated rule id replaced an
    /// earlier rule), for the host to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// A list where a repeated non-empty id replaces the earlier entry in place.
struct Keyed<T> {
    items: Vec<T>,
    index: BTreeMap<String, usize>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed { items: Vec::new(), index: BTreeMap::new() }
    }
}

impl<T> Keyed<T> {
    /// Add `item`; true when it replaced an earlier one.
    fn add(&mut self, id: &str, item: T) -> bool {
        if !id.is_empty() {
            if let Some(&i) = self.index.get(id) {
                self.items[i] = item;
                return true;
            }
            self.index.insert(id.to_owned(), self.items.len());
        }
        self.items.push(item);
        false
    }
}

/// Accumulates fragments in order.
#[derive(Default)]
struct Acc {
    version: Option<String>,
    default_tenant: Option<String>,
    default_decision: Option<String>,
    scoped_defaults: Vec<ScopedDefault>,
    rules: Keyed<Rule>,
    input_rules: Keyed<Value>,
    output_rules: Keyed<Value>,
    input_policy: InputPolicy,
    output_policy: OutputPolicy,
    tenants: BTreeMap<String, Tenant>,
    warnings: Vec<String>,
}

fn first_set(slot: &mut Option<String>, value: Option<&String>) {
    if slot.is_none()
        && let Some(v) = value.map(|v| v.trim()).filter(|v| !v.is_empty())
    {
        *slot = Some(v.to_owned());
    }
}

fn raw_id(v: &Value) -> String {
    v.get("id").and_then(Value::as_str).map(|s| s.trim().to_owned()).unwrap_or_default()
}

impl Acc {
    fn add(&mut self, bundle_id: &str, p: Parsed) {
        let doc = p.doc;
        let doc_tier = Tier::from_field(doc.tier.as_ref()).unwrap_or(Tier::Global);
        let doc_sel = doc.selector.as_ref();

        first_set(&mut self.version, doc.version.as_ref());
        first_set(&mut self.default_tenant, doc.default_tenant.as_ref());
        if doc_tier == Tier::Global {
            first_set(&mut self.default_decision, doc.default_decision.as_ref());
        } else if let Some(d) = doc.default_decision.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            self.scoped_defaults.push(ScopedDefault {
                tier: doc_tier,
                scope: Scope::resolve(doc_sel, None),
                kind: default_kind(d),
            });
        }

        for r in doc.rules.into_iter().flatten() {
            let rule = compile_rule(r, doc_tier, doc_sel);
            let id = rule.id.clone();
            if self.rules.add(&id, rule) {
                self.warnings.push(format!(
                    "bundle {bundle_id:?}: rule id {id:?} repeats; it replaces the earlier rule in place"
                ));
            }
        }
        for v in p.input_rules {
            let id = raw_id(&v);
            if self.input_rules.add(&id, v) {
                self.warnings.push(format!(
                    "bundle {bundle_id:?}: input rule id {id:?} repeats; it replaces the earlier rule in place"
                ));
            }
        }
        for v in p.output_rules {
            let id = raw_id(&v);
            if self.output_rules.add(&id, v) {
                self.warnings.push(format!(
                    "bundle {bundle_id:?}: output rule id {id:?} repeats; it replaces the earlier rule in place"
                ));
            }
        }

        if let Some(ip) = doc.input_policy {
            self.input_policy.enabled |= ip.enabled.unwrap_or(false);
            if self.input_policy.fail_mode.is_empty()
                && let Some(f) = ip.fail_mode
            {
                self.input_policy.fail_mode = f.value;
            }
            if self.input_policy.max_scan_bytes.is_none() {
                self.input_policy.max_scan_bytes = ip.max_scan_bytes;
            }
        }
        if let Some(op) = doc.output_policy {
            self.output_policy.enabled |= op.enabled.unwrap_or(false);
            self.output_policy.disabled |= op.enabled == Some(false);
            if self.output_policy.fail_mode.is_empty()
                && let Some(f) = op.fail_mode
            {
                self.output_policy.fail_mode = f.value;
            }
        }
        for (name, t) in doc.tenants.into_iter().flatten() {
            merge_tenant(self.tenants.entry(name).or_default(), &t);
        }
    }
}

fn merge_tenant(into: &mut Tenant, t: &TenantDoc) {
    let add = |to: &mut Vec<String>, from: &Option<Vec<String>>| {
        to.extend(from.iter().flatten().cloned());
    };
    add(&mut into.allow_topics, &t.allow_topics);
    add(&mut into.deny_topics, &t.deny_topics);
    add(&mut into.allowed_repo_hosts, &t.allowed_repo_hosts);
    add(&mut into.denied_repo_hosts, &t.denied_repo_hosts);
    if let Some(n) = t.max_concurrent_jobs.filter(|&n| n > 0)
        && (into.max_concurrent_jobs == 0 || n < into.max_concurrent_jobs)
    {
        into.max_concurrent_jobs = n;
    }
    if let Some(m) = &t.mcp {
        into.mcp.extend(m);
    }
}

/// Runtime reading of a default decision: `allow`/`permit` allow, anything
/// else (empty, unknown, a typo) denies.
fn default_kind(s: &str) -> DecisionKind {
    match DecisionKind::parse_alias(s) {
        Some(DecisionKind::Allow) => DecisionKind::Allow,
        _ => DecisionKind::Deny,
    }
}

fn compile_rule(r: RuleDoc, doc_tier: Tier, doc_sel: Option<&Selector>) -> Rule {
    let tier = Tier::from_field(r.tier.as_ref()).unwrap_or(doc_tier);
    let scope = Scope::resolve(doc_sel, r.selector.as_ref());
    let declared = r.decision.as_ref().map(|d| d.kind()).unwrap_or(DecisionKind::Deny);
    let constraints = r.constraints.as_ref().and_then(constraints_value);
    let kind = if declared == DecisionKind::Allow && constraints.is_some() {
        DecisionKind::AllowWithConstraints
    } else {
        declared
    };
    let matcher = Matcher::compile(r.match_.unwrap_or_default());
    let section = matcher.section();
    Rule {
        id: r.id.map(|s| s.trim().to_owned()).unwrap_or_default(),
        tier,
        scope,
        declared,
        kind,
        reason: r.reason.unwrap_or_default(),
        constraints,
        remediations: r.remediations.unwrap_or_default(),
        velocity: r.velocity.map(|v| Velocity {
            max_requests: v.max_requests.0 as u64,
            window_seconds: v.window_seconds.0 as u32,
            key: v.key.0,
        }),
        matcher,
        section,
    }
}

/// The constraints as a JSON object with unset/zero values pruned; `None`
/// when nothing is left.
fn constraints_value(c: &ConstraintsDoc) -> Option<Value> {
    let mut v = serde_json::to_value(c).ok()?;
    if prune(&mut v) { None } else { Some(v) }
}

/// Remove empty members; true when `v` itself is empty.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !*b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => {
            items.retain(|i| !i.is_null());
            items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, child| !prune(child));
            map.is_empty()
        }
    }
}

/// Legacy mode: one rule per tenant topic pattern, deny patterns first,
/// tenants in sorted order.
fn legacy_rules(tenants: &BTreeMap<String, Tenant>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (name, t) in tenants {
        let mcp = t.mcp.to_mcp();
        let mut push = |kind: DecisionKind, n: usize, pat: &str| {
            let (id, reason) = if kind == DecisionKind::Deny {
                (format!("legacy:{name}:deny:{n}"), format!("topic \"{pat}\" denied by tenant policy"))
            } else {
                (format!("legacy:{name}:allow:{n}"), String::new())
            };
            let matcher = Matcher::legacy(name, pat, mcp.clone());
            let section = matcher.section();
            rules.push(Rule {
                id,
                tier: Tier::Global,
                scope: Scope::default(),
                declared: kind,
                kind,
                reason,
                constraints: None,
                remediations: Vec::new(),
                velocity: None,
                matcher,
                section,
            });
        };
        for (n, pat) in t.deny_topics.iter().enumerate() {
            push(DecisionKind::Deny, n, pat);
        }
        for (n, pat) in t.allow_topics.iter().enumerate() {
            push(DecisionKind::Allow, n, pat);
        }
    }
    rules
}

/// Merge decoded bundles (already in merge order) into a policy.
pub(crate) fn build(parsed: Vec<(&str, Parsed)>) -> Policy {
    let mut acc = Acc::default();
    let mut inv = Acc::default();
    for (id, p) in parsed {
        if id == INVARIANTS_BUNDLE_ID {
            inv.add(id, p);
        } else {
            acc.add(id, p);
        }
    }

    // Invariants: deny-type rules first, allow-type rules last; their input
    // and output rules first. They may switch output checks on and fill an
    // empty fail_mode, but their globals (version, defaults) do not count.
    let (inv_deny, inv_allow): (Vec<Rule>, Vec<Rule>) =
        inv.rules.items.into_iter().partition(|r| r.declared.is_deny_type());
    let mut rules = inv_deny;
    rules.extend(acc.rules.items);
    rules.extend(inv_allow);

    let mut input_rules = inv.input_rules.items;
    input_rules.extend(acc.input_rules.items);
    let mut output_rules = inv.output_rules.items;
    output_rules.extend(acc.output_rules.items);

    let mut output_policy = acc.output_policy;
    output_policy.enabled |= inv.output_policy.enabled;
    output_policy.disabled |= inv.output_policy.disabled;
    if output_policy.fail_mode.is_empty() {
        output_policy.fail_mode = inv.output_policy.fail_mode;
    }
    let mut input_policy = acc.input_policy;
    input_policy.enabled |= inv.input_policy.enabled;
    if input_policy.fail_mode.is_empty() {
        input_policy.fail_mode = inv.input_policy.fail_mode;
    }

    let mut tenants = acc.tenants;
    for (name, t) in inv.tenants {
        let into = tenants.entry(name).or_default();
        into.allow_topics.extend(t.allow_topics);
        into.deny_topics.extend(t.deny_topics);
        into.allowed_repo_hosts.extend(t.allowed_repo_hosts);
        into.denied_repo_hosts.extend(t.denied_repo_hosts);
        if t.max_concurrent_jobs > 0
            && (into.max_concurrent_jobs == 0 || t.max_concurrent_jobs < into.max_concurrent_jobs)
        {
            into.max_concurrent_jobs = t.max_concurrent_jobs;
        }
        let m = &mut into.mcp;
        m.allow_servers.extend(t.mcp.allow_servers);
        m.deny_servers.extend(t.mcp.deny_servers);
        m.allow_tools.extend(t.mcp.allow_tools);
        m.deny_tools.extend(t.mcp.deny_tools);
        m.allow_resources.extend(t.mcp.allow_resources);
        m.deny_resources.extend(t.mcp.deny_resources);
        m.allow_actions.extend(t.mcp.allow_actions);
        m.deny_actions.extend(t.mcp.deny_actions);
    }

    let legacy = rules.is_empty() && !tenants.is_empty();
    if legacy {
        rules = legacy_rules(&tenants);
    }

    let mut warnings = acc.warnings;
    warnings.extend(inv.warnings);
    let (output_checks, notes) = output::compile(&output_rules);
    warnings.extend(notes);
    for t in tenants.values_mut() {
        t.mcp_check = t.mcp.to_mcp();
    }

    Policy {
        version: acc.version.unwrap_or_default(),
        default_tenant: acc.default_tenant.unwrap_or_default(),
        default_decision: acc.default_decision.as_deref().map(default_kind).unwrap_or(DecisionKind::Deny),
        scoped_defaults: acc.scoped_defaults,
        rules,
        input_rules,
        output_rules,
        output_checks,
        input_policy,
        output_policy,
        tenants,
        legacy,
        warnings,
    }
}
