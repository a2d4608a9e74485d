//! Policy requests and decisions as the host's services see them, and their
//! conversion to and from the WIT types.

use cordum_bindings::policy::cordum::policy::types as wit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DecisionKind {
    Allow,
    Deny,
    RequireApproval,
    Throttle,
    AllowWithConstraints,
}

impl DecisionKind {
    /// Upstream's job-facing string (`ALLOW`, `DENY`, `REQUIRE_APPROVAL`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "ALLOW",
            DecisionKind::Deny => "DENY",
            DecisionKind::RequireApproval => "REQUIRE_APPROVAL",
            DecisionKind::Throttle => "THROTTLE",
            DecisionKind::AllowWithConstraints => "ALLOW_WITH_CONSTRAINTS",
        }
    }

    /// Upstream's protobuf enum name (`DECISION_TYPE_REQUIRE_HUMAN`, ...).
    pub fn proto_name(self) -> &'static str {
        match self {
            DecisionKind::Allow => "DECISION_TYPE_ALLOW",
            DecisionKind::Deny => "DECISION_TYPE_DENY",
            DecisionKind::RequireApproval => "DECISION_TYPE_REQUIRE_HUMAN",
            DecisionKind::Throttle => "DECISION_TYPE_THROTTLE",
            DecisionKind::AllowWithConstraints => "DECISION_TYPE_ALLOW_WITH_CONSTRAINTS",
        }
    }
}

/// What a policy is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyRequest {
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

impl PolicyRequest {
    pub fn to_wit(&self) -> wit::Request {
        wit::Request {
            job_id: self.job_id.clone(),
            topic: self.topic.clone(),
            tenant: self.tenant.clone(),
            principal_id: self.principal_id.clone(),
            actor_id: self.actor_id.clone(),
            actor_type: self.actor_type.clone(),
            capability: self.capability.clone(),
            risk_tags: self.risk_tags.clone(),
            requires: self.requires.clone(),
            pack_id: self.pack_id.clone(),
            labels: self.labels.iter().map(|(k, v)| wit::Label { key: k.clone(), value: v.clone() }).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Remediation {
    pub id: String,
    pub title: String,
    pub summary: String,
    pub replacement_topic: String,
    pub replacement_capability: String,
    pub add_labels: BTreeMap<String, String>,
    pub remove_labels: Vec<String>,
}

/// A decision with the snapshot it was made under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub decision: DecisionKind,
    pub rule_id: String,
    pub reason: String,
    pub policy_snapshot: String,
    pub constraints: Option<serde_json::Value>,
    pub remediations: Vec<Remediation>,
    pub approval_required: bool,
}

impl PolicyDecision {
    pub fn from_wit(d: wit::Decision, snapshot: &str) -> Self {
        PolicyDecision {
            decision: match d.kind {
                wit::DecisionKind::Allow => DecisionKind::Allow,
                wit::DecisionKind::Deny => DecisionKind::Deny,
                wit::DecisionKind::RequireApproval => DecisionKind::RequireApproval,
                wit::DecisionKind::Throttle => DecisionKind::Throttle,
                wit::DecisionKind::AllowWithConstraints => DecisionKind::AllowWithConstraints,
            },
            rule_id: d.rule_id,
            reason: d.reason,
            policy_snapshot: snapshot.to_string(),
            constraints: d
                .constraints_json
                .and_then(|c| serde_json::from_str(&c).ok())
                .filter(|v: &serde_json::Value| v.as_object().is_some_and(|o| !o.is_empty())),
            remediations: d
                .remediations
                .into_iter()
                .map(|r| Remediation {
                    id: r.id,
                    title: r.title,
                    summary: r.summary,
                    replacement_topic: r.replacement_topic,
                    replacement_capability: r.replacement_capability,
                    add_labels: r.add_labels.into_iter().map(|l| (l.key, l.value)).collect(),
                    remove_labels: r.remove_labels,
                })
                .collect(),
            approval_required: d.approval_required,
        }
    }
}

/// One rule as considered by an explain.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEntry {
    pub rule_id: String,
    pub position: u32,
    pub matched: bool,
    pub decisive: bool,
    pub detail: String,
}

impl From<wit::TraceEntry> for TraceEntry {
    fn from(t: wit::TraceEntry) -> Self {
        TraceEntry {
            rule_id: t.rule_id,
            position: t.position,
            matched: t.matched,
            decisive: t.decisive,
            detail: t.detail,
        }
    }
}
