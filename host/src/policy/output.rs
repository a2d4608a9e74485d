//! Output safety: a finished job's result checked against the active
//! policy's `output_rules`, in the tenant's warm policy instance (the same
//! path `evaluate` takes).

use super::{PolicyError, PolicyService};
use crate::runtime::velocity::VelocityMode;
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
        // Output rules have no velocity: nothing to record.
        let (decision, snapshot) = self.with_instance(tenant, VelocityMode::DryRun, |i| {
            i.bindings.cordum_policy_evaluator().call_check_output(&mut i.store, &request)
        })?;
        Ok(OutputVerdict::from_wit(decision, &snapshot.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, World};
    use crate::settings::RuntimeLimits;
    use crate::store::Store;
    use crate::store::embedded::EmbeddedStore;
    use std::sync::Arc;
    use std::time::Instant;

    /// The reference policy: output rules for secrets, PII, injection, size.
    const SAFETY: &str = include_str!("../../../plugins/policy-engine/tests/data/safety.yaml");

    fn service(tmp: &std::path::Path, base: &str) -> PolicyService {
        std::fs::create_dir_all(tmp).expect("data dir");
        let rt = Runtime::new(&tmp.join("cache"), RuntimeLimits::default()).expect("runtime");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(tmp).expect("store"));
        let comp = rt.load(crate::app::POLICY_RULES_WASM, World::Policy).expect("load policy component");
        let svc = PolicyService::new(rt, comp, store, Some(("base".into(), base.to_owned())));
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        tokio.block_on(svc.reload()).expect("reload policy");
        svc
    }

    fn check(topic: &str, output: &str) -> OutputCheck {
        OutputCheck { topic: topic.into(), tenant: "default".into(), output: output.into(), ..Default::default() }
    }

    #[test]
    fn check_output_runs_in_the_policy_component() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let svc = service(tmp.path(), SAFETY);

        let v = svc.check_output("default", &check("job.x", r#"{"log": "key AKIAIOSFODNN7EXAMPLE"}"#)).unwrap();
        assert_eq!(v.decision, OutputDecisionKind::Quarantine);
        assert_eq!(v.rule_id, "output-secret-leak");
        assert_eq!(v.policy_snapshot, svc.active().id);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["decision"], "QUARANTINE");
        assert_eq!(json["findings"][0]["type"], "secret");
        assert_eq!(json["findings"][0]["matched"], "aws_access_key_id");
        assert!(json.get("redacted_output").is_none());
        let back: OutputVerdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);

        let v = svc.check_output("default", &check("job.x", r#"{"ok": true}"#)).unwrap();
        assert_eq!((v.decision, v.rule_id.as_str()), (OutputDecisionKind::Allow, ""));

        let mut failed = check("job.x", r#"{"trace": "password=hunter2hunter2"}"#);
        failed.error = "EXIT_1".into();
        // The secret rule comes first and matches regardless of the error.
        assert_eq!(svc.check_output("default", &failed).unwrap().rule_id, "output-secret-leak");

        let svc = service(
            &tmp.path().join("redact"),
            "output_rules:\n  - id: mask\n    match: {scanners: [pii]}\n    decision: redact\n  - id: stop\n    match: {keywords: [forbidden]}\n    decision: deny\n",
        );
        let v = svc.check_output("default", &check("job.x", r#"{"user": {"mail": "x@y.io"}}"#)).unwrap();
        assert_eq!(v.decision, OutputDecisionKind::Redact);
        assert_eq!(v.redacted_output, Some(serde_json::json!({"user": {"mail": "[REDACTED]"}})));
        let v = svc.check_output("default", &check("job.x", r#"["Forbidden fruit"]"#)).unwrap();
        assert_eq!((v.decision, v.rule_id.as_str()), (OutputDecisionKind::Deny, "stop"));
        assert_eq!(serde_json::to_value(v.decision).unwrap(), "DENY");
    }

    /// Large outputs under the default sandbox limits (1 s, 64 MiB): run with
    /// `cargo test -p cordum --lib policy::output -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing probe; wall-clock deadline, run by hand"]
    fn large_outputs_fit_the_default_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let svc = service(tmp.path(), SAFETY);
        let one = serde_json::to_string(&"lorem ipsum dolor sit amet, 12345 ".repeat(300_000)).unwrap();
        let many: Vec<String> = (0..400_000).map(|i| format!("line {i}\nnext")).collect();
        let many = serde_json::to_string(&many).unwrap();
        let mut hit: Vec<String> = (0..400_000).map(|i| format!("line {i}\nnext")).collect();
        hit.push("mail me: a@b.io".into());
        let hit = serde_json::to_string(&hit).unwrap();
        let text = "plain text é ü with an ssn 123-45-6789 and more ".repeat(150_000);
        for (name, topic, output) in [
            ("10 MB string", "job.x", &one),
            ("400k escaped strings", "job.x", &many),
            ("400k strings + PII hit", "job.mkt-authority.x", &hit),
            ("7 MB plain text + PII", "job.mkt-authority.x", &text),
        ] {
            let start = Instant::now();
            let v = svc.check_output("default", &check(topic, output)).unwrap_or_else(|e| panic!("{name}: {e}"));
            println!(
                "{name}: {} bytes in {:?}: {:?} {} ({} findings)",
                output.len(),
                start.elapsed(),
                v.decision,
                v.rule_id,
                v.findings.len()
            );
        }
    }
}
