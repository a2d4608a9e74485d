//! The `cordum:policy` component: Cordum's safety-policy rules engine.
//!
//! Owns only the WIT boundary: it converts between the `cordum:policy`
//! types and [`cordum_policy_engine`]'s, and keeps the active policy in
//! instance state. `load` replaces that policy only when every bundle is
//! valid; `evaluate`, `explain` and `check-output` answer `no-policy` until a
//! load has succeeded. All policy semantics live in the engine crate; the
//! counts of velocity rules come from the host (`cordum:host/velocity`), which
//! decides per call whether a hit is recorded or only counted.

use std::cell::RefCell;
use std::collections::BTreeMap;

use cordum_policy_engine as engine;

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/policy"],
    world: "cordum:policy/policy-plugin",
    generate_all,
});

use cordum::host::log::{Level, log};
use cordum::host::velocity;
use cordum::policy::types::{
    Bundle, Decision, DecisionKind, Diagnostic, Explanation, Finding, Label, OutputDecision, OutputDecisionKind,
    OutputRequest, PolicyError, PolicyInfo, Remediation, Request, TraceEntry,
};
use exports::cordum::policy::evaluator::Guest;

thread_local! {
    /// The active policy of this instance.
    static POLICY: RefCell<Option<engine::Policy>> = const { RefCell::new(None) };
}

struct Plugin;

impl Guest for Plugin {
    fn load(bundles: Vec<Bundle>) -> Result<PolicyInfo, PolicyError> {
        let bundles = to_engine_bundles(bundles);
        match engine::load(&bundles) {
            Ok(policy) => {
                for w in policy.warnings() {
                    log(Level::Warn, w);
                }
                let info = PolicyInfo {
                    rule_count: u32::try_from(policy.rule_count()).unwrap_or(u32::MAX),
                    default_decision: kind_to_wit(policy.default_decision()),
                };
                POLICY.with(|p| *p.borrow_mut() = Some(policy));
                Ok(info)
            }
            Err(diags) => Err(PolicyError::InvalidBundle(diags.into_iter().map(diag_to_wit).collect())),
        }
    }

    fn check(bundles: Vec<Bundle>) -> Vec<Diagnostic> {
        engine::check(&to_engine_bundles(bundles)).into_iter().map(diag_to_wit).collect()
    }

    fn evaluate(request: Request) -> Result<Decision, PolicyError> {
        with_policy(request, |policy, req| decision_to_wit(policy.evaluate_with_counter(req, &mut host_counter)))
    }

    fn explain(request: Request) -> Result<Explanation, PolicyError> {
        with_policy(request, |policy, req| {
            let e = policy.explain_with_counter(req, &mut host_counter);
            Explanation {
                decision: decision_to_wit(e.decision),
                trace: e.trace.into_iter().map(trace_to_wit).collect(),
                defaulted: e.defaulted,
            }
        })
    }

    fn check_output(request: OutputRequest) -> Result<OutputDecision, PolicyError> {
        POLICY.with(|p| {
            let guard = p.borrow();
            let policy = guard.as_ref().ok_or(PolicyError::NoPolicy)?;
            let req = engine::OutputRequest {
                topic: request.topic,
                tenant: request.tenant,
                capability: request.capability,
                risk_tags: request.risk_tags,
                output: request.output,
                error: request.error,
            };
            Ok(output_decision_to_wit(policy.check_output(&req)))
        })
    }
}

export!(Plugin);

/// The window count of a velocity rule, from the host.
fn host_counter(rule_id: &str, key: &str, window_seconds: u32) -> u64 {
    u64::from(velocity::hit(rule_id, key, window_seconds))
}

/// Run `f` against the active policy: `no-policy` before any load, and
/// `invalid-request` for a request without a topic.
fn with_policy<T>(request: Request, f: impl FnOnce(&engine::Policy, &engine::Request) -> T) -> Result<T, PolicyError> {
    POLICY.with(|p| {
        let guard = p.borrow();
        let policy = guard.as_ref().ok_or(PolicyError::NoPolicy)?;
        if request.topic.trim().is_empty() {
            return Err(PolicyError::InvalidRequest("missing topic".to_owned()));
        }
        Ok(f(policy, &request_to_engine(request)))
    })
}

fn to_engine_bundles(bundles: Vec<Bundle>) -> Vec<engine::Bundle> {
    bundles.into_iter().map(|b| engine::Bundle { id: b.id, content: b.content }).collect()
}

/// Labels become a map; a repeated key keeps its last value.
fn labels_to_map(labels: Vec<Label>) -> BTreeMap<String, String> {
    labels.into_iter().map(|l| (l.key, l.value)).collect()
}

fn labels_from_map(labels: BTreeMap<String, String>) -> Vec<Label> {
    labels.into_iter().map(|(key, value)| Label { key, value }).collect()
}

fn request_to_engine(r: Request) -> engine::Request {
    engine::Request {
        job_id: r.job_id,
        topic: r.topic,
        tenant: r.tenant,
        principal_id: r.principal_id,
        actor_id: r.actor_id,
        actor_type: r.actor_type,
        capability: r.capability,
        risk_tags: r.risk_tags,
        requires: r.requires,
        pack_id: r.pack_id,
        labels: labels_to_map(r.labels),
    }
}

fn kind_to_wit(k: engine::DecisionKind) -> DecisionKind {
    match k {
        engine::DecisionKind::Allow => DecisionKind::Allow,
        engine::DecisionKind::Deny => DecisionKind::Deny,
        engine::DecisionKind::RequireApproval => DecisionKind::RequireApproval,
        engine::DecisionKind::Throttle => DecisionKind::Throttle,
        engine::DecisionKind::AllowWithConstraints => DecisionKind::AllowWithConstraints,
    }
}

fn decision_to_wit(d: engine::Decision) -> Decision {
    Decision {
        kind: kind_to_wit(d.kind),
        rule_id: d.rule_id,
        reason: d.reason,
        constraints_json: d.constraints.map(|c| c.to_string()),
        remediations: d.remediations.into_iter().map(remediation_to_wit).collect(),
        approval_required: d.approval_required,
    }
}

fn remediation_to_wit(r: engine::Remediation) -> Remediation {
    Remediation {
        id: r.id,
        title: r.title,
        summary: r.summary,
        replacement_topic: r.replacement_topic,
        replacement_capability: r.replacement_capability,
        add_labels: labels_from_map(r.add_labels),
        remove_labels: r.remove_labels,
    }
}

fn trace_to_wit(t: engine::TraceEntry) -> TraceEntry {
    TraceEntry { rule_id: t.rule_id, position: t.position, matched: t.matched, decisive: t.decisive, detail: t.detail }
}

fn diag_to_wit(d: engine::Diagnostic) -> Diagnostic {
    Diagnostic { bundle_id: d.bundle_id, line: d.line, column: d.column, message: d.message }
}

fn output_decision_to_wit(d: engine::OutputDecision) -> OutputDecision {
    OutputDecision {
        kind: match d.kind {
            engine::OutputDecisionKind::Allow => OutputDecisionKind::Allow,
            engine::OutputDecisionKind::Redact => OutputDecisionKind::Redact,
            engine::OutputDecisionKind::Quarantine => OutputDecisionKind::Quarantine,
            engine::OutputDecisionKind::Deny => OutputDecisionKind::Deny,
        },
        rule_id: d.rule_id,
        reason: d.reason,
        findings: d
            .findings
            .into_iter()
            .map(|f| Finding { kind: f.kind, detail: f.detail, matched: f.matched, offset: f.offset, length: f.length })
            .collect(),
        redacted_output: d.redacted_output,
    }
}
