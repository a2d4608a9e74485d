//! Cordum's safety-policy rule language, in pure Rust.
//!
//! This crate owns the policy document format (strict decoding with
//! positioned [`Diagnostic`]s), the merge of bundles into one effective
//! [`Policy`] (rule-id replacement in place, `secops/invariants` ordering,
//! legacy tenant rules), and evaluation: first matching rule wins, with a
//! fail-closed default, plus [`Policy::explain`] traces. It has no I/O,
//! threads or clocks, so it runs natively in the gateway and inside the
//! `policy-rules` WebAssembly component alike. Output checks
//! ([`Policy::check_output`]: `output_rules` with content patterns, keywords
//! and the built-in secret/pii/injection scanners, plus redaction) run here
//! too. Velocity rules are evaluated here, but their counters belong to the
//! host: [`Policy::evaluate_with_counter`] and [`Policy::explain_with_counter`]
//! take a [`VelocityCounter`] (the `policy-rules` component's asks the host's
//! `cordum:host/velocity` import). Content scanning of inputs (`input_rules`)
//! belongs to the host and is not evaluated here; those rules are parsed,
//! validated and kept.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod compile;
mod doc;
mod eval;
mod glob;
mod output;

pub use compile::Policy;
pub use output::{Finding, MAX_FINDINGS, OutputDecision, OutputDecisionKind, OutputRequest, REDACTED};

/// The exact bundle id whose rules bracket every other bundle's.
pub const INVARIANTS_BUNDLE_ID: &str = "secops/invariants";

/// One policy bundle: a Cordum safety-policy document in YAML or JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub id: String,
    pub content: String,
}

impl Bundle {
    pub fn new(id: impl Into<String>, content: impl Into<String>) -> Self {
        Bundle { id: id.into(), content: content.into() }
    }
}

/// A problem in one bundle. `line` and `column` are 1-based; 0 when unknown
/// (document-level checks such as tier/selector carry no position).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub bundle_id: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.bundle_id, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.bundle_id, self.message)
        }
    }
}

/// The outcome of a policy check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    RequireApproval,
    Throttle,
    AllowWithConstraints,
}

impl DecisionKind {
    /// The decision named by a policy document, accepting upstream's aliases
    /// (`permit`, `block`, `require-approval`, `require_human`,
    /// `allow-with-constraints`). Surrounding blanks and ASCII case are
    /// ignored. `None` for anything else.
    pub fn parse_alias(s: &str) -> Option<Self> {
        let s = s.trim();
        let is = |name: &str| s.eq_ignore_ascii_case(name);
        if is("allow") || is("permit") {
            Some(DecisionKind::Allow)
        } else if is("deny") || is("block") {
            Some(DecisionKind::Deny)
        } else if is("require_approval") || is("require-approval") || is("require_human") {
            Some(DecisionKind::RequireApproval)
        } else if is("allow_with_constraints") || is("allow-with-constraints") {
            Some(DecisionKind::AllowWithConstraints)
        } else if is("throttle") {
            Some(DecisionKind::Throttle)
        } else {
            None
        }
    }

    /// The canonical snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::RequireApproval => "require_approval",
            DecisionKind::Throttle => "throttle",
            DecisionKind::AllowWithConstraints => "allow_with_constraints",
        }
    }

    /// Deny, require-approval and throttle: the kinds `secops/invariants`
    /// puts ahead of every other rule.
    pub fn is_deny_type(&self) -> bool {
        matches!(self, DecisionKind::Deny | DecisionKind::RequireApproval | DecisionKind::Throttle)
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is being asked for (upstream's `PolicyCheckRequest`, flattened).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    pub job_id: String,
    pub topic: String,
    pub tenant: String,
    pub principal_id: String,
    pub actor_id: String,
    pub actor_type: String,
    pub capability: String,
    pub risk_tags: Vec<String>,
    pub requires: Vec<String>,
    pub pack_id: String,
    pub labels: BTreeMap<String, String>,
}

/// A suggested way to resubmit a denied job (carried from the deciding rule).
/// Also the document format of `rules[].remediations[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remediation {
    #[serde(default, deserialize_with = "doc::null_default")]
    pub id: String,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub title: String,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub summary: String,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub replacement_topic: String,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub replacement_capability: String,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub add_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "doc::null_default")]
    pub remove_labels: Vec<String>,
}

/// The result of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub kind: DecisionKind,
    /// Id of the deciding rule; empty when the default decision applied or
    /// the request was rejected before any rule ran.
    pub rule_id: String,
    /// The deciding rule's reason (kept for every kind), or the default /
    /// rejection reason.
    pub reason: String,
    /// The deciding rule's constraints as a JSON object; only when non-empty.
    pub constraints: Option<serde_json::Value>,
    pub remediations: Vec<Remediation>,
    /// `kind == RequireApproval`.
    pub approval_required: bool,
}

/// One rule as considered by [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    pub rule_id: String,
    /// Index in the merged rule list.
    pub position: u32,
    pub matched: bool,
    /// This rule produced the decision.
    pub decisive: bool,
    /// Why it matched, why it was skipped, or the first predicate that failed.
    pub detail: String,
}

/// The result of [`Policy::explain`]: the decision plus every rule in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub decision: Decision,
    pub trace: Vec<TraceEntry>,
    /// No rule matched and the default decision applied.
    pub defaulted: bool,
}

/// Counts requests for velocity rules (upstream §1.4 step 9).
///
/// [`Policy::evaluate_with_counter`] calls [`VelocityCounter::hit`] for a
/// velocity rule whose predicates matched, with the rule id, the resolved key
/// and the rule's window. The counter answers how many requests the sliding
/// window of (`rule_id`, `key`) holds **including this one**; whether the
/// request is recorded (a real decision) or only counted (a dry run) is the
/// counter's business. The rule fires when that count exceeds
/// `max_requests`.
pub trait VelocityCounter {
    fn hit(&mut self, rule_id: &str, key: &str, window_seconds: u32) -> u64;
}

impl<F: FnMut(&str, &str, u32) -> u64> VelocityCounter for F {
    fn hit(&mut self, rule_id: &str, key: &str, window_seconds: u32) -> u64 {
        self(rule_id, key, window_seconds)
    }
}

/// Parse, validate and merge `bundles` in the given order.
///
/// Every bundle is checked; on any problem all diagnostics are returned.
pub fn load(bundles: &[Bundle]) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut parsed = Vec::with_capacity(bundles.len());
    for b in bundles {
        match doc::parse_bundle(&b.id, &b.content) {
            Ok(p) => parsed.push((b.id.as_str(), p)),
            Err(d) => diags.extend(d),
        }
    }
    if diags.is_empty() { Ok(compile::build(parsed)) } else { Err(diags) }
}

/// Validate `bundles` without building a policy; empty when all are valid.
pub fn check(bundles: &[Bundle]) -> Vec<Diagnostic> {
    bundles.iter().filter_map(|b| doc::parse_bundle(&b.id, &b.content).err()).flatten().collect()
}
