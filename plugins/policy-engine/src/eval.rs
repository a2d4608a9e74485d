//! Rule matching and the evaluation pipeline (first match wins).
//!
//! The hot path (`Policy::evaluate`) works on borrowed request data: no
//! lower-casing copies, no formatting. Only the deciding rule's fields are
//! cloned into the [`Decision`]. `Policy::explain` runs the same checks and
//! formats a detail for every rule.

use std::fmt::Write as _;

use crate::compile::{Policy, Rule, Section, Tenant};
use crate::doc::{MatchDoc, Tier};
use crate::glob::Glob;
use crate::{Decision, DecisionKind, Explanation, Request, TraceEntry, VelocityCounter};

pub(crate) const REASON_MISSING_TOPIC: &str = "missing topic";
pub(crate) const REASON_UNSUPPORTED_TOPIC: &str = "unsupported topic";
const REASON_DEFAULT_DENY: &str = "no matching rule — default policy: deny";
const REASON_DEFAULT_ALLOW: &str = "no matching rule — default policy: allow";

/// The topic that selects edge-action rules.
const EDGE_ACTION_TOPIC: &str = "job.edge.action";

const MCP_FIELDS: [&str; 4] = ["server", "tool", "resource", "action"];

// ---------------------------------------------------------------------------
// String helpers
// ---------------------------------------------------------------------------

/// Case-insensitive equality without allocating (Unicode-aware fallback).
fn fold_eq(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        true
    } else if a.is_ascii() && b.is_ascii() {
        false
    } else {
        a.chars().flat_map(char::to_lowercase).eq(b.chars().flat_map(char::to_lowercase))
    }
}

fn contains_fold(list: &[String], v: &str) -> bool {
    list.iter().any(|x| fold_eq(x, v))
}

fn contains_exact(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == v)
}

fn trimmed_list(l: Option<Vec<String>>) -> Vec<String> {
    l.unwrap_or_default().into_iter().map(|s| s.trim().to_owned()).collect()
}

fn fmt_list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let mut out = String::from("[");
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(s.as_ref());
    }
    out.push(']');
    out
}

// ---------------------------------------------------------------------------
// Compiled predicates
// ---------------------------------------------------------------------------

/// MCP allow/deny lists per field: server, tool, resource, action.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mcp {
    fields: [(Vec<String>, Vec<String>); 4],
}

impl Mcp {
    pub(crate) fn new(lists: [(&Vec<String>, &Vec<String>); 4]) -> Mcp {
        let trim = |v: &Vec<String>| v.iter().map(|s| s.trim().to_owned()).collect::<Vec<_>>();
        Mcp { fields: lists.map(|(allow, deny)| (trim(allow), trim(deny))) }
    }

    fn is_empty(&self) -> bool {
        self.fields.iter().all(|(allow, deny)| allow.is_empty() && deny.is_empty())
    }

    /// `Err((field, denied))` for the first field the request fails.
    fn check(&self, values: &[&str; 4]) -> Result<(), (usize, bool)> {
        if values.iter().all(|v| v.is_empty()) {
            return Ok(());
        }
        for (i, (allow, deny)) in self.fields.iter().enumerate() {
            let v = values[i];
            if !v.is_empty() && contains_fold(deny, v) {
                return Err((i, true));
            }
            if !allow.is_empty() && (v.is_empty() || !contains_fold(allow, v)) {
                return Err((i, false));
            }
        }
        Ok(())
    }
}

fn mcp_failure(values: &[&str; 4], (field, denied): (usize, bool)) -> String {
    let verdict = if denied { "denied" } else { "not allowed" };
    format!("mcp {} \"{}\" {verdict}", MCP_FIELDS[field], values[field])
}

/// A rule's `match`, normalised. An empty list means "not present".
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    tenants: Vec<String>,
    topics: Vec<Glob>,
    capabilities: Vec<String>,
    risk_tags: Vec<String>,
    requires: Vec<String>,
    pack_ids: Vec<String>,
    actor_ids: Vec<String>,
    actor_types: Vec<String>,
    agent_risk_tiers: Vec<String>,
    agent_data_classifications: Vec<String>,
    secrets_present: Option<bool>,
    labels: Vec<(String, String)>,
    label_allowlist: Vec<(String, Vec<String>)>,
    label_threshold: Vec<(String, f64)>,
    mcp: Mcp,
    /// `predicate` or `delegation`: delegation tokens are not evaluated, so
    /// such a rule never matches.
    unsupported: Option<&'static str>,
}

/// The first predicate a request failed.
#[derive(Debug, Clone, Copy)]
enum Miss {
    Tenants,
    Topics,
    Capabilities,
    RiskTags,
    Requires(usize),
    PackIds,
    ActorIds,
    ActorTypes,
    AgentRiskTiers,
    AgentDataClassifications,
    SecretsPresent,
    Labels(usize),
    LabelAllowlist,
    LabelThreshold,
    Mcp(usize, bool),
    Unsupported(&'static str),
}

impl Matcher {
    pub(crate) fn compile(m: MatchDoc) -> Matcher {
        let unsupported = if m.delegation.is_some() {
            Some("delegation")
        } else if m.predicate.as_deref().is_some_and(|p| !p.trim().is_empty()) {
            Some("predicate")
        } else {
            None
        };
        let mcp = m.mcp.map(|d| {
            let l = |v: Option<Vec<String>>| v.unwrap_or_default();
            let (a_s, d_s) = (l(d.allow_servers), l(d.deny_servers));
            let (a_t, d_t) = (l(d.allow_tools), l(d.deny_tools));
            let (a_r, d_r) = (l(d.allow_resources), l(d.deny_resources));
            let (a_a, d_a) = (l(d.allow_actions), l(d.deny_actions));
            Mcp::new([(&a_s, &d_s), (&a_t, &d_t), (&a_r, &d_r), (&a_a, &d_a)])
        });
        Matcher {
            tenants: trimmed_list(m.tenants),
            topics: m.topics.unwrap_or_default().iter().map(|p| Glob::new(p)).collect(),
            capabilities: trimmed_list(m.capabilities),
            risk_tags: trimmed_list(m.risk_tags),
            requires: trimmed_list(m.requires),
            pack_ids: trimmed_list(m.pack_ids),
            actor_ids: trimmed_list(m.actor_ids),
            actor_types: trimmed_list(m.actor_types),
            agent_risk_tiers: trimmed_list(m.agent_risk_tiers),
            agent_data_classifications: trimmed_list(m.agent_data_classifications),
            secrets_present: m.secrets_present,
            labels: m.labels.unwrap_or_default().into_iter().collect(),
            label_allowlist: m
                .label_allowlist
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().map(|s| s.trim().to_owned()).collect()))
                .collect(),
            label_threshold: m.label_threshold.unwrap_or_default().into_iter().collect(),
            mcp: mcp.unwrap_or_default(),
            unsupported,
        }
    }

    /// `{tenants: [tenant], topics: [pattern], mcp: tenant.mcp}`.
    pub(crate) fn legacy(tenant: &str, pattern: &str, mcp: Mcp) -> Matcher {
        Matcher { tenants: vec![tenant.trim().to_owned()], topics: vec![Glob::new(pattern)], mcp, ..Matcher::default() }
    }

    pub(crate) fn section(&self) -> Section {
        if self.topics.iter().any(|g| g.as_str() == EDGE_ACTION_TOPIC) {
            Section::Edge
        } else if !self.mcp.is_empty() {
            Section::Mcp
        } else {
            Section::Input
        }
    }

    /// Every present predicate, in document order; the first failure.
    fn check(&self, cx: &Ctx<'_>) -> Result<(), Miss> {
        let r = cx.req;
        if !self.tenants.is_empty() && (cx.tenant.is_empty() || !contains_fold(&self.tenants, cx.tenant)) {
            return Err(Miss::Tenants);
        }
        if !self.topics.is_empty() && !self.topics.iter().any(|g| g.matches(cx.topic)) {
            return Err(Miss::Topics);
        }
        if !self.capabilities.is_empty() {
            let cap = r.capability.trim();
            if cap.is_empty() || !contains_fold(&self.capabilities, cap) {
                return Err(Miss::Capabilities);
            }
        }
        if !self.risk_tags.is_empty() && !r.risk_tags.iter().any(|t| contains_exact(&self.risk_tags, t.trim())) {
            return Err(Miss::RiskTags);
        }
        if let Some(i) = self.requires.iter().position(|need| !r.requires.iter().any(|have| have.trim() == need)) {
            return Err(Miss::Requires(i));
        }
        if !member(&self.pack_ids, &r.pack_id) {
            return Err(Miss::PackIds);
        }
        if !member(&self.actor_ids, &r.actor_id) {
            return Err(Miss::ActorIds);
        }
        if !member(&self.actor_types, &r.actor_type) {
            return Err(Miss::ActorTypes);
        }
        if !member(&self.agent_risk_tiers, cx.agent_risk_tier) {
            return Err(Miss::AgentRiskTiers);
        }
        if !self.agent_data_classifications.is_empty()
            && !cx
                .agent_data_classifications
                .split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && contains_exact(&self.agent_data_classifications, c))
        {
            return Err(Miss::AgentDataClassifications);
        }
        if let Some(want) = self.secrets_present
            && want != cx.secrets_present
        {
            return Err(Miss::SecretsPresent);
        }
        if let Some(i) = self.labels.iter().position(|(k, v)| r.labels.get(k) != Some(v)) {
            return Err(Miss::Labels(i));
        }
        if !self.label_allowlist.is_empty()
            && !self
                .label_allowlist
                .iter()
                .any(|(k, allowed)| r.labels.get(k).is_some_and(|v| !contains_fold(allowed, v.trim())))
        {
            return Err(Miss::LabelAllowlist);
        }
        if !self.label_threshold.is_empty()
            && !self.label_threshold.iter().any(|(k, limit)| {
                r.labels.get(k).and_then(|v| v.trim().parse::<f64>().ok()).is_some_and(|v| v > *limit)
            })
        {
            return Err(Miss::LabelThreshold);
        }
        if let Err((field, denied)) = self.mcp.check(&cx.mcp) {
            return Err(Miss::Mcp(field, denied));
        }
        if let Some(what) = self.unsupported {
            return Err(Miss::Unsupported(what));
        }
        Ok(())
    }

    /// A human-readable account of `miss`.
    fn describe(&self, miss: Miss, cx: &Ctx<'_>) -> String {
        let r = cx.req;
        let one_of = |name: &str, value: &str, list: &[String]| {
            if value.is_empty() {
                format!("{name}: request has none; rule wants one of {}", fmt_list(list))
            } else {
                format!("{name}: \"{value}\" is not one of {}", fmt_list(list))
            }
        };
        match miss {
            Miss::Tenants => one_of("tenants", cx.tenant, &self.tenants),
            Miss::Topics => {
                format!("topics: \"{}\" matches none of {}", cx.topic, fmt_list(self.topics.iter().map(Glob::as_str)))
            }
            Miss::Capabilities => one_of("capabilities", r.capability.trim(), &self.capabilities),
            Miss::RiskTags => format!(
                "risk_tags: request tags {} share none of {}",
                fmt_list(&r.risk_tags),
                fmt_list(&self.risk_tags)
            ),
            Miss::Requires(i) => {
                format!("requires: \"{}\" is missing from request requires {}", self.requires[i], fmt_list(&r.requires))
            }
            Miss::PackIds => one_of("pack_ids", r.pack_id.trim(), &self.pack_ids),
            Miss::ActorIds => one_of("actor_ids", r.actor_id.trim(), &self.actor_ids),
            Miss::ActorTypes => one_of("actor_types", r.actor_type.trim(), &self.actor_types),
            Miss::AgentRiskTiers => {
                one_of("agent_risk_tiers (label agent_risk_tier)", cx.agent_risk_tier, &self.agent_risk_tiers)
            }
            Miss::AgentDataClassifications => format!(
                "agent_data_classifications: label agent_data_classifications \"{}\" shares none of {}",
                cx.agent_data_classifications,
                fmt_list(&self.agent_data_classifications)
            ),
            Miss::SecretsPresent => {
                format!("secrets_present: request is {}, rule wants {}", cx.secrets_present, !cx.secrets_present)
            }
            Miss::Labels(i) => {
                let (k, want) = &self.labels[i];
                match r.labels.get(k) {
                    Some(got) => {
                        format!("labels: label \"{k}\" is \"{got}\", rule wants \"{want}\"")
                    }
                    None => format!("labels: label \"{k}\" is missing (rule wants \"{want}\")"),
                }
            }
            Miss::LabelAllowlist => {
                let mut s = String::from("label_allowlist: ");
                let present: Vec<&str> = self
                    .label_allowlist
                    .iter()
                    .filter(|(k, _)| r.labels.contains_key(k))
                    .map(|(k, _)| k.as_str())
                    .collect();
                if present.is_empty() {
                    s.push_str("none of the listed labels is present: ");
                    s.push_str(&fmt_list(self.label_allowlist.iter().map(|(k, _)| k)));
                } else {
                    s.push_str("every present label is within its allowlist: ");
                    s.push_str(&fmt_list(present));
                }
                s
            }
            Miss::LabelThreshold => {
                let mut s = String::from("label_threshold: no present label exceeds its threshold (");
                for (i, (k, limit)) in self.label_threshold.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    match r.labels.get(k) {
                        Some(v) => {
                            let _ = write!(s, "{k}=\"{v}\" vs {limit}");
                        }
                        None => {
                            let _ = write!(s, "{k} missing");
                        }
                    }
                }
                s.push(')');
                s
            }
            Miss::Mcp(field, denied) => mcp_failure(&cx.mcp, (field, denied)),
            Miss::Unsupported(what) => {
                format!("{what}: delegation predicates are not supported here; the rule never matches")
            }
        }
    }
}

/// Trimmed membership; an empty list is "not present", an empty value never
/// matches a present list.
fn member(list: &[String], v: &str) -> bool {
    if list.is_empty() {
        return true;
    }
    let v = v.trim();
    !v.is_empty() && contains_exact(list, v)
}

// ---------------------------------------------------------------------------
// Request context
// ---------------------------------------------------------------------------

/// Request facts derived once per evaluation, borrowed from the request.
pub(crate) struct Ctx<'a> {
    req: &'a Request,
    topic: &'a str,
    tenant: &'a str,
    workflow_id: &'a str,
    job_id: &'a str,
    session_id: &'a str,
    /// server, tool, resource, action.
    mcp: [&'a str; 4],
    section: Section,
    secrets_present: bool,
    agent_risk_tier: &'a str,
    agent_data_classifications: &'a str,
}

/// A value found under one of several label keys; lower rank wins.
#[derive(Clone, Copy)]
struct Ranked<'a>(u8, &'a str);

impl<'a> Ranked<'a> {
    const NONE: Ranked<'static> = Ranked(u8::MAX, "");
    fn offer(&mut self, rank: u8, v: &'a str) {
        let v = v.trim();
        if !v.is_empty() && rank < self.0 {
            *self = Ranked(rank, v);
        }
    }
}

impl<'a> Ctx<'a> {
    fn new(policy: &'a Policy, req: &'a Request) -> Ctx<'a> {
        let mut workflow = Ranked::NONE;
        let mut attachment = Ranked::NONE;
        let mut job_label = Ranked::NONE;
        let mut session = Ranked::NONE;
        let mut mcp = [Ranked::NONE; 4];
        let mut secrets_label: Option<&str> = None;
        let mut tier = Ranked::NONE;
        let mut classes = Ranked::NONE;
        for (k, v) in &req.labels {
            let v = v.as_str();
            match k.as_str() {
                "workflow_id" => workflow.offer(0, v),
                "workflow.id" => workflow.offer(1, v),
                "workflow" => workflow.offer(2, v),
                "workflow_run_id" => workflow.offer(3, v),
                "workflow.run_id" => workflow.offer(4, v),
                "policy.attachment_id" => attachment.offer(0, v),
                "job_id" => job_label.offer(0, v),
                "job.id" => job_label.offer(1, v),
                "edge.job_id" => job_label.offer(2, v),
                "session_id" => {
                    job_label.offer(3, v);
                    session.offer(0, v);
                }
                "edge.session_id" => {
                    job_label.offer(4, v);
                    session.offer(1, v);
                }
                "mcp.server" => mcp[0].offer(0, v),
                "mcp_server" => mcp[0].offer(1, v),
                "mcpServer" => mcp[0].offer(2, v),
                "mcp.tool" => mcp[1].offer(0, v),
                "mcp_tool" => mcp[1].offer(1, v),
                "mcpTool" => mcp[1].offer(2, v),
                "mcp.resource" => mcp[2].offer(0, v),
                "mcp_resource" => mcp[2].offer(1, v),
                "mcpResource" => mcp[2].offer(2, v),
                "mcp.action" => mcp[3].offer(0, v),
                "mcp_action" => mcp[3].offer(1, v),
                "mcpAction" => mcp[3].offer(2, v),
                "secrets_present" => secrets_label = Some(v.trim()),
                "agent_risk_tier" => tier.offer(0, v),
                "agent_data_classifications" => classes.offer(0, v),
                _ => {}
            }
        }
        let topic = req.topic.trim();
        let tenant = match req.tenant.trim() {
            "" => match policy.default_tenant.trim() {
                "" => "default",
                t => t,
            },
            t => t,
        };
        let job_id = if !attachment.1.is_empty() {
            attachment.1
        } else if !req.job_id.trim().is_empty() {
            req.job_id.trim()
        } else {
            job_label.1
        };
        let mcp = mcp.map(|r| r.1);
        let section = if topic == EDGE_ACTION_TOPIC {
            Section::Edge
        } else if mcp.iter().any(|v| !v.is_empty()) {
            Section::Mcp
        } else {
            Section::Input
        };
        let secrets_present = match secrets_label {
            Some(v) => fold_eq(v, "true") || v == "1" || fold_eq(v, "yes"),
            None => req.risk_tags.iter().any(|t| fold_eq(t.trim(), "secrets")),
        };
        Ctx {
            req,
            topic,
            tenant,
            workflow_id: workflow.1,
            job_id,
            session_id: session.1,
            mcp,
            section,
            secrets_present,
            agent_risk_tier: tier.1,
            agent_data_classifications: classes.1,
        }
    }

    /// Whether a workflow- or job-tier selector applies to this request.
    fn in_scope(&self, tier: Tier, scope: &crate::doc::Scope) -> bool {
        match tier {
            Tier::Global => true,
            Tier::Workflow => !self.workflow_id.is_empty() && scope.workflow_id == self.workflow_id,
            Tier::Job => {
                (!scope.job_id.is_empty() && scope.job_id == self.job_id)
                    || (!scope.session_id.is_empty() && scope.session_id == self.session_id)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// How one rule fared.
enum Outcome {
    /// Every predicate matched (and, for a velocity rule, the window count
    /// exceeded the limit).
    Matched(Option<Count>),
    OutOfScope,
    OtherSection,
    /// A velocity rule whose predicates matched but which was not counted:
    /// no counter, or an earlier rule already decided (explain only).
    VelocityUncounted,
    /// A velocity rule whose key expression resolved empty.
    VelocityNoKey,
    /// A velocity rule whose window count is within the limit.
    VelocityUnder(Count),
    Miss(Miss),
}

/// A velocity rule's window count for one request.
struct Count {
    count: u64,
    key: String,
}

/// The velocity key for a request: each part of `expr` resolved and joined
/// with `:` (a `:` or `\` inside a value is escaped with `\`). `None` when
/// any part resolves empty: the rule is then skipped.
fn velocity_key(expr: &str, cx: &Ctx<'_>) -> Option<String> {
    let r = cx.req;
    let mut key = String::new();
    for (i, part) in expr.split(':').enumerate() {
        let part = part.trim();
        let value = match part {
            "tenant" => cx.tenant,
            "topic" => cx.topic,
            "actor_id" => r.actor_id.trim(),
            "actor_type" => r.actor_type.trim(),
            "pack_id" => r.pack_id.trim(),
            "capability" => r.capability.trim(),
            _ => part.strip_prefix("labels.").and_then(|k| r.labels.get(k)).map_or("", |v| v.trim()),
        };
        if value.is_empty() {
            return None;
        }
        if i > 0 {
            key.push(':');
        }
        for c in value.chars() {
            if c == ':' || c == '\\' {
                key.push('\\');
            }
            key.push(c);
        }
    }
    Some(key)
}

impl Rule {
    /// How this rule fares for `cx`. A velocity rule is counted (through
    /// `counter`) only once its predicates matched, and only when no earlier
    /// rule decided (`decided`).
    fn consider(
        &self,
        cx: &Ctx<'_>,
        pos: usize,
        decided: bool,
        counter: Option<&mut (dyn VelocityCounter + '_)>,
    ) -> Outcome {
        if !cx.in_scope(self.tier, &self.scope) {
            return Outcome::OutOfScope;
        }
        if self.section != cx.section {
            return Outcome::OtherSection;
        }
        if let Err(m) = self.matcher.check(cx) {
            return Outcome::Miss(m);
        }
        let Some(v) = &self.velocity else {
            return Outcome::Matched(None);
        };
        let Some(counter) = counter.filter(|_| !decided) else {
            return Outcome::VelocityUncounted;
        };
        let Some(key) = velocity_key(&v.key, cx) else {
            return Outcome::VelocityNoKey;
        };
        let count = if self.id.is_empty() {
            counter.hit(&format!("#{pos}"), &key, v.window_seconds)
        } else {
            counter.hit(&self.id, &key, v.window_seconds)
        };
        if count > v.max_requests {
            Outcome::Matched(Some(Count { count, key }))
        } else {
            Outcome::VelocityUnder(Count { count, key })
        }
    }

    fn decision(&self) -> Decision {
        Decision {
            kind: self.kind,
            rule_id: self.id.clone(),
            reason: self.reason.clone(),
            constraints: self.constraints.clone(),
            remediations: self.remediations.clone(),
            approval_required: self.kind == DecisionKind::RequireApproval,
        }
    }

    fn scope_detail(&self, cx: &Ctx<'_>) -> String {
        match self.tier {
            Tier::Workflow => format!(
                "out of scope: workflow-tier rule for workflow \"{}\", request workflow \"{}\"",
                self.scope.workflow_id, cx.workflow_id
            ),
            _ => {
                let mut s = String::from("out of scope: job-tier rule for");
                if !self.scope.job_id.is_empty() {
                    let _ = write!(s, " job \"{}\"", self.scope.job_id);
                }
                if !self.scope.session_id.is_empty() {
                    let _ = write!(s, " session \"{}\"", self.scope.session_id);
                }
                let _ = write!(s, ", request job \"{}\"", cx.job_id);
                if !cx.session_id.is_empty() {
                    let _ = write!(s, " session \"{}\"", cx.session_id);
                }
                s
            }
        }
    }
}

fn plain_decision(kind: DecisionKind, reason: &str) -> Decision {
    Decision {
        kind,
        rule_id: String::new(),
        reason: reason.to_owned(),
        constraints: None,
        remediations: Vec::new(),
        approval_required: kind == DecisionKind::RequireApproval,
    }
}

/// The tenant's own MCP lists (§1.4 step 10), looked up by exact name, then
/// case-insensitively.
fn tenant_entry<'p>(policy: &'p Policy, tenant: &str) -> Option<&'p Tenant> {
    policy
        .tenants
        .get(tenant)
        .or_else(|| policy.tenants.iter().find(|(k, _)| fold_eq(k.trim(), tenant)).map(|(_, t)| t))
}

impl Policy {
    /// Decide `req`: the first matching rule wins, else the default.
    ///
    /// An empty topic denies with reason `missing topic`, a topic outside
    /// `job.` with `unsupported topic` (no rule id in either case). Without a
    /// counter, velocity rules are skipped; see
    /// [`Policy::evaluate_with_counter`].
    pub fn evaluate(&self, req: &Request) -> Decision {
        self.run(req, None, None).0
    }

    /// Like [`Policy::evaluate`], with velocity rules counted by `counter`: a
    /// velocity rule whose predicates match asks the counter for its window
    /// count (rule id, or `#<position>` for a rule without one; the resolved
    /// key; the window) and fires only when that count exceeds
    /// `max_requests`. Otherwise, or when its key resolves empty, evaluation
    /// goes on with the next rule. Rules after the deciding one are never
    /// counted.
    pub fn evaluate_with_counter(&self, req: &Request, counter: &mut dyn VelocityCounter) -> Decision {
        self.run(req, None, Some(counter)).0
    }

    /// Like [`Policy::evaluate`], plus how every rule fared, in order.
    pub fn explain(&self, req: &Request) -> Explanation {
        let mut trace = Vec::with_capacity(self.rules.len());
        let (decision, defaulted) = self.run(req, Some(&mut trace), None);
        Explanation { decision, trace, defaulted }
    }

    /// Like [`Policy::explain`], with velocity rules counted by `counter`
    /// exactly as [`Policy::evaluate_with_counter`] counts them (the same
    /// calls, in the same order); a velocity rule's detail gives its count
    /// and limit.
    pub fn explain_with_counter(&self, req: &Request, counter: &mut dyn VelocityCounter) -> Explanation {
        let mut trace = Vec::with_capacity(self.rules.len());
        let (decision, defaulted) = self.run(req, Some(&mut trace), Some(counter));
        Explanation { decision, trace, defaulted }
    }

    fn run(
        &self,
        req: &Request,
        mut trace: Option<&mut Vec<TraceEntry>>,
        mut counter: Option<&mut dyn VelocityCounter>,
    ) -> (Decision, bool) {
        let topic = req.topic.trim();
        if topic.is_empty() {
            return (plain_decision(DecisionKind::Deny, REASON_MISSING_TOPIC), false);
        }
        if !topic.starts_with("job.") {
            return (plain_decision(DecisionKind::Deny, REASON_UNSUPPORTED_TOPIC), false);
        }
        let cx = Ctx::new(self, req);

        let mut decided: Option<&Rule> = None;
        for (pos, rule) in self.rules.iter().enumerate() {
            let outcome = rule.consider(&cx, pos, decided.is_some(), counter.as_deref_mut());
            let matched = matches!(outcome, Outcome::Matched(_));
            let Some(t) = trace.as_deref_mut() else {
                if matched {
                    decided = Some(rule);
                    break;
                }
                continue;
            };
            let decisive = matched && decided.is_none();
            let earlier = || decided.map(|r| r.id.as_str()).unwrap_or_default();
            let detail = match outcome {
                Outcome::Matched(Some(c)) => {
                    let v = rule.velocity.as_ref().map_or((0, 0), |v| (v.max_requests, v.window_seconds));
                    format!(
                        "velocity {}/{} in {} s: fired (key \"{}\"); decision {}",
                        c.count,
                        v.0,
                        v.1,
                        c.key,
                        rule.kind.as_str()
                    )
                }
                Outcome::Matched(None) if decisive => {
                    format!("matched: decision {}", rule.kind.as_str())
                }
                Outcome::Matched(None) => {
                    format!("matched, but rule \"{}\" decided first", earlier())
                }
                Outcome::OutOfScope => rule.scope_detail(&cx),
                Outcome::OtherSection => {
                    format!("not applicable: {} rule, request is {}", rule.section.as_str(), cx.section.as_str())
                }
                Outcome::VelocityUncounted if decided.is_some() => {
                    format!("matched, but rule \"{}\" decided first (velocity not counted)", earlier())
                }
                Outcome::VelocityUncounted => "velocity rule skipped: no counter".to_owned(),
                Outcome::VelocityNoKey => format!(
                    "velocity key \"{}\" resolves empty for this request: rule skipped",
                    rule.velocity.as_ref().map_or("", |v| v.key.as_str())
                ),
                Outcome::VelocityUnder(c) => {
                    let v = rule.velocity.as_ref().map_or((0, 0), |v| (v.max_requests, v.window_seconds));
                    format!("velocity {}/{} in {} s: under the limit (key \"{}\")", c.count, v.0, v.1, c.key)
                }
                Outcome::Miss(m) => rule.matcher.describe(m, &cx),
            };
            if decisive {
                decided = Some(rule);
            }
            t.push(TraceEntry {
                rule_id: rule.id.clone(),
                position: u32::try_from(pos).unwrap_or(u32::MAX),
                matched,
                decisive,
                detail,
            });
        }

        let (mut decision, defaulted) = match decided {
            Some(rule) => (rule.decision(), false),
            None => {
                let kind = self.default_for(&cx);
                let reason = if kind == DecisionKind::Allow { REASON_DEFAULT_ALLOW } else { REASON_DEFAULT_DENY };
                (plain_decision(kind, reason), true)
            }
        };

        // Tenant MCP overlay: it can only tighten.
        if cx.section == Section::Mcp
            && decision.kind != DecisionKind::Deny
            && let Some(t) = tenant_entry(self, cx.tenant)
            && let Err(fail) = t.mcp_check.check(&cx.mcp)
        {
            decision = plain_decision(DecisionKind::Deny, &mcp_failure(&cx.mcp, fail));
            if let Some(t) = trace {
                for e in t.iter_mut().filter(|e| e.decisive) {
                    e.decisive = false;
                    e.detail.push_str(" (overridden by the tenant's mcp lists)");
                }
            }
            return (decision, false);
        }
        (decision, defaulted)
    }

    /// Job-tier default for this job, else workflow-tier, else global.
    fn default_for(&self, cx: &Ctx<'_>) -> DecisionKind {
        if !self.scoped_defaults.is_empty() {
            for tier in [Tier::Job, Tier::Workflow] {
                if let Some(d) = self.scoped_defaults.iter().find(|d| d.tier == tier && cx.in_scope(d.tier, &d.scope)) {
                    return d.kind;
                }
            }
        }
        self.default_decision
    }
}
