//! Output safety: a finished job's result checked against the active
//! policy's `output_rules`, in the tenant's warm policy instance (the same
//! path `evaluate` takes).

use super::{PolicyError, PolicyService};
use cordum_bindings::policy::cordum::policy::types as wit;
use serde::{Deserialize, Serialize};

/// What is checked: the job's routing facts and its result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputCheck {
    pub topic: String,
    pub tenant: String,
    pub capability: String,
    pub risk_tags: Vec<String>,
    /// The result as JSON text (anything else is scanned as plain text).
    pub output: String,
    /// The worker's error code or message; empty when the job succeeded.
    pub error: String,
}

impl OutputCheck {
    pub fn to_wit(&self) -> wit::OutputRequest {
        wit::OutputRequest {
            topic: self.topic.clone(),
            tenant: self.tenant.clone(),
            capability: self.capability.clone(),
            risk_tags: self.risk_tags.clone(),
            output: self.output.clone(),
            error: self.error.clone(),
        }
    }
}

/// `ALLOW`, `REDACT`, `QUARANTINE` or `DENY` (deny is kept distinct from
/// quarantine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutputDecisionKind {
    Allow,
    Redact,
    Quarantine,
    Deny,
}

impl OutputDecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputDecisionKind::Allow => "ALLOW",
            OutputDecisionKind::Redact => "REDACT",
            OutputDecisionKind::Quarantine => "QUARANTINE",
            OutputDecisionKind::Deny => "DENY",
        }
    }
}

/// One finding of the deciding rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFinding {
    /// `secret`, `pii`, `injection`, `pattern`, `keyword` or `size`.
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
    /// The rule's pattern or keyword, or the scanner's pattern name.
    pub matched: String,
    /// Byte offset and length in the checked output text.
    pub offset: u32,
    pub length: u32,
}

/// An output decision with the snapshot it was made under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputVerdict {
    pub decision: OutputDecisionKind,
    pub rule_id: String,
    pub reason: String,
    pub policy_snapshot: String,
    pub findings: Vec<OutputFinding>,
    /// For `REDACT`: the output with matches replaced by `[REDACTED]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_output: Option<serde_json::Value>,
}

impl OutputVerdict {
    pub fn from_wit(d: wit::OutputDecision, snapshot: &str) -> Self {
        OutputVerdict {
            decision: match d.kind {
                wit::OutputDecisionKind::Allow => OutputDecisionKind::Allow,
                wit::OutputDecisionKind::Redact => OutputDecisionKind::Redact,
                wit::OutputDecisionKind::Quarantine => OutputDecisionKind::Quarantine,
                wit::OutputDecisionKind::Deny => OutputDecisionKind::Deny,
            },
            rule_id: d.rule_id,
            reason: d.reason,
            policy_snapshot: snapshot.to_string(),
            findings: d
                .findings
                .into_iter()
                .map(|f| OutputFinding {
                    kind: f.kind,
                    detail: f.detail,
                    matched: f.matched,
                    offset: f.offset,
                    length: f.length,
                })
                .collect(),
            // The component returns JSON text; anything else is kept as a string.
            redacted_output: d
                .redacted_output
                .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
        }
    }
}

impl PolicyService {
    /// Check a finished job's output for `tenant` under the active snapshot.
    pub fn check_output(&self, tenant: &str, req: &OutputCheck) -> Result<OutputVerdict, PolicyError> {
        let request = req.to_wit();
        let (decision, snapshot) = self.with_instance(tenant, |i| {
            i.bindings.cordum_policy_evaluator().call_check_output(&mut i.store, &request)
        })?;
        Ok(OutputVerdict::from_wit(decision, &snapshot.id))
    }
}
