//! Behaviour of the policy engine through its public API.

use std::collections::BTreeMap;

use cordum_policy_engine::{Bundle, Decision, DecisionKind, Diagnostic, Policy, Request, check, load};
use serde_json::json;

const SAFETY_YAML: &str = include_str!("data/safety.yaml");

fn policy(yaml: &str) -> Policy {
    load(&[Bundle::new("test", yaml)]).unwrap_or_else(|d| panic!("load failed: {d:?}"))
}

fn policies(bundles: &[(&str, &str)]) -> Policy {
    let bundles: Vec<Bundle> = bundles.iter().map(|(id, c)| Bundle::new(*id, *c)).collect();
    load(&bundles).unwrap_or_else(|d| panic!("load failed: {d:?}"))
}

fn req(topic: &str) -> Request {
    Request { topic: topic.to_owned(), ..Request::default() }
}

fn with_labels(mut r: Request, labels: &[(&str, &str)]) -> Request {
    r.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r
}

fn diags(yaml: &str) -> Vec<Diagnostic> {
    check(&[Bundle::new("b", yaml)])
}

/// One rule `id: hit`, decision allow, with the given match body, after a
/// default deny: `matches(body, req)` tells whether the rule matched.
fn matches(match_body: &str, r: &Request) -> bool {
    let yaml = format!(
        "default_decision: deny\nrules:\n  - id: hit\n    match:\n{}\n    decision: allow\n",
        match_body.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
    );
    let d = policy(&yaml).evaluate(r);
    d.rule_id == "hit"
}

// ---------------------------------------------------------------------------
// The reference document
// ---------------------------------------------------------------------------

#[test]
fn example_safety_yaml_loads() {
    assert_eq!(check(&[Bundle::new("safety", SAFETY_YAML)]), vec![]);
    let p = policy(SAFETY_YAML);
    assert_eq!(p.rule_count(), 14);
    assert_eq!(p.default_decision(), DecisionKind::Deny);
    assert_eq!(p.default_tenant(), "default");
    assert_eq!(p.output_rules().len(), 5);
    assert_eq!(p.input_rules().len(), 8);
    assert!(p.output_policy_enabled());
    assert_eq!(p.input_fail_mode(), "closed");
    assert!(!p.is_legacy());
    assert_eq!(p.output_rules()[0]["id"], "output-secret-leak");
    assert_eq!(p.output_rules()[3]["match"]["output_size_gt"], 10485760);
    assert_eq!(p.input_rules()[3]["match"]["scope"]["aliases"]["gift card"], "gift_card");
    assert_eq!(
        p.rule_ids().collect::<Vec<_>>()[..3],
        ["default-topic-allow", "fraud-review-required", "risk-assessment-approval"]
    );
}

#[test]
fn example_safety_yaml_decisions() {
    let p = policy(SAFETY_YAML);

    let d = p.evaluate(&req("job.default"));
    assert_eq!(d.kind, DecisionKind::Allow);
    assert_eq!(d.rule_id, "default-topic-allow");
    assert_eq!(d.reason, "Default topic for gate probes and integration tests.");
    assert!(!d.approval_required);
    assert_eq!(d.constraints, None);

    let d = p.evaluate(&req("job.fraud-detection.process"));
    assert_eq!(d.kind, DecisionKind::RequireApproval);
    assert!(d.approval_required);
    assert_eq!(d.rule_id, "fraud-review-required");

    let wf = with_labels(req("job.bank-validators.process"), &[("_source", "workflow")]);
    assert_eq!(p.evaluate(&wf).rule_id, "validators-internal-allow");
    let d = p.evaluate(&req("job.bank-validators.process"));
    assert_eq!(d.kind, DecisionKind::Deny);
    assert_eq!(d.rule_id, "");
    assert_eq!(d.reason, "no matching rule — default policy: deny");

    let pack = with_labels(req("job.b2b.hr-setup"), &[("_source", "pack")]);
    assert_eq!(p.evaluate(&pack).rule_id, "b2b-pack-allow");
    let direct = p.evaluate(&req("job.b2b.hr-setup"));
    assert_eq!(direct.rule_id, "b2b-api-review");
    assert_eq!(direct.kind, DecisionKind::RequireApproval);

    let d = p.evaluate(&req("sys.shutdown"));
    assert_eq!((d.kind, d.reason.as_str()), (DecisionKind::Deny, "unsupported topic"));
}

// ---------------------------------------------------------------------------
// Request validation and defaults
// ---------------------------------------------------------------------------

#[test]
fn missing_and_unsupported_topics_deny() {
    let p = policy("default_decision: allow\n");
    for topic in ["", "   "] {
        let d = p.evaluate(&req(topic));
        assert_eq!(d.kind, DecisionKind::Deny);
        assert_eq!(d.reason, "missing topic");
        assert_eq!(d.rule_id, "");
    }
    for topic in ["sys.x", "jobs.x", "job", "JOB.x"] {
        let d = p.evaluate(&req(topic));
        assert_eq!(d.kind, DecisionKind::Deny, "{topic}");
        assert_eq!(d.reason, "unsupported topic");
        assert_eq!(d.rule_id, "");
    }
    let e = p.explain(&req("sys.x"));
    assert!(e.trace.is_empty());
    assert!(!e.defaulted);
    assert_eq!(p.evaluate(&req("job.x")).kind, DecisionKind::Allow);
}

#[test]
fn default_decision_is_fail_closed() {
    let cases = [
        ("", DecisionKind::Deny),
        ("default_decision: deny\n", DecisionKind::Deny),
        ("default_decision: allow\n", DecisionKind::Allow),
        ("default_decision: permit\n", DecisionKind::Allow),
        ("default_decision: alow\n", DecisionKind::Deny),
        ("default_decision: \"\"\n", DecisionKind::Deny),
        ("default_decision: allow_with_constraints\n", DecisionKind::Deny),
        ("default_decision: require_approval\n", DecisionKind::Deny),
    ];
    for (doc, want) in cases {
        let p = policy(doc);
        assert_eq!(p.default_decision(), want, "{doc:?}");
        let e = p.explain(&req("job.anything"));
        assert!(e.defaulted);
        assert_eq!(e.decision.kind, want);
        assert_eq!(e.decision.rule_id, "");
        let reason = match want {
            DecisionKind::Allow => "no matching rule — default policy: allow",
            _ => "no matching rule — default policy: deny",
        };
        assert_eq!(e.decision.reason, reason);
    }
}

#[test]
fn empty_and_blank_bundles_are_empty_fragments() {
    for content in ["", "   \n\t\n", "# only a comment\n", "~", "null"] {
        assert_eq!(check(&[Bundle::new("e", content)]), vec![], "{content:?}");
        let p = policy(content);
        assert_eq!(p.rule_count(), 0);
        assert_eq!(p.default_decision(), DecisionKind::Deny);
    }
    let p = load(&[]).unwrap();
    assert_eq!(p.evaluate(&req("job.x")).kind, DecisionKind::Deny);
}

#[test]
fn json_bundles_load() {
    let p = policy(
        r#"{"default_decision": "deny", "rules": [{"id": "j", "match": {"topics": ["job.j.*"]}, "decision": "permit"}]}"#,
    );
    assert_eq!(p.evaluate(&req("job.j.run")).kind, DecisionKind::Allow);
    // A YAML flow mapping that is not JSON still loads.
    let p = policy("{rules: [{id: f, decision: block}]}");
    assert_eq!(p.evaluate(&req("job.x")).rule_id, "f");
    // JSON data errors carry a position.
    let d = diags("{\n  \"rules\": [\n    {\"id\": \"x\", \"bogus\": 1}\n  ]\n}");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 3);
    assert!(d[0].message.contains("unknown field `bogus`"), "{:?}", d[0]);
}

// ---------------------------------------------------------------------------
// Decisions, aliases, constraints, remediations
// ---------------------------------------------------------------------------

#[test]
fn decision_aliases() {
    let cases = [
        ("allow", DecisionKind::Allow),
        ("permit", DecisionKind::Allow),
        ("deny", DecisionKind::Deny),
        ("block", DecisionKind::Deny),
        ("require_approval", DecisionKind::RequireApproval),
        ("require-approval", DecisionKind::RequireApproval),
        ("require_human", DecisionKind::RequireApproval),
        ("allow_with_constraints", DecisionKind::AllowWithConstraints),
        ("allow-with-constraints", DecisionKind::AllowWithConstraints),
        ("throttle", DecisionKind::Throttle),
    ];
    for (alias, want) in cases {
        assert_eq!(DecisionKind::parse_alias(alias), Some(want), "{alias}");
        let p = policy(&format!("rules:\n  - id: r\n    decision: {alias}\n    reason: why\n"));
        let d = p.evaluate(&req("job.x"));
        assert_eq!(d.kind, want, "{alias}");
        assert_eq!(d.reason, "why", "reason kept for {alias}");
        assert_eq!(d.approval_required, want == DecisionKind::RequireApproval);
    }
    assert_eq!(DecisionKind::parse_alias(" Permit "), Some(DecisionKind::Allow));
    assert_eq!(DecisionKind::parse_alias("alow"), None);
    assert_eq!(DecisionKind::parse_alias(""), None);
    assert_eq!(DecisionKind::parse_alias("quarantine"), None);
    // A rule without a decision denies.
    let d = policy("rules:\n  - id: r\n").evaluate(&req("job.x"));
    assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Deny, "r"));
}

#[test]
fn decision_kind_names_and_serde() {
    let all = [
        (DecisionKind::Allow, "allow"),
        (DecisionKind::Deny, "deny"),
        (DecisionKind::RequireApproval, "require_approval"),
        (DecisionKind::Throttle, "throttle"),
        (DecisionKind::AllowWithConstraints, "allow_with_constraints"),
    ];
    for (k, s) in all {
        assert_eq!(k.as_str(), s);
        assert_eq!(DecisionKind::parse_alias(s), Some(k));
        assert_eq!(serde_json::to_value(k).unwrap(), json!(s));
        assert_eq!(serde_json::from_value::<DecisionKind>(json!(s)).unwrap(), k);
    }
}

#[test]
fn allow_with_constraints_upgrade() {
    let p = policy(
        r#"
rules:
  - id: constrained
    match: {topics: [job.c]}
    decision: allow
    reason: sandboxed
    constraints:
      budgets: {max_runtime_ms: 1000, max_retries: 0}
      sandbox: {isolated: true, network_allowlist: [api.example.com], fs_read_only: []}
      redaction_level: strict
      max_output_bytes: 1024
      allowed_destinations: [x]
      redact_patterns: ["\\d+"]
  - id: empty-constraints
    match: {topics: [job.e]}
    decision: allow
    constraints: {budgets: {max_retries: 0}, sandbox: {isolated: false}}
  - id: denied-with-constraints
    match: {topics: [job.d]}
    decision: deny
    constraints: {diff: {max_files: 3}}
"#,
    );
    let d = p.evaluate(&req("job.c"));
    assert_eq!(d.kind, DecisionKind::AllowWithConstraints);
    assert_eq!(d.reason, "sandboxed");
    assert_eq!(
        d.constraints,
        Some(json!({
            "budgets": {"max_runtime_ms": 1000},
            "sandbox": {"isolated": true, "network_allowlist": ["api.example.com"]},
            "redaction_level": "strict"
        }))
    );
    let d = p.evaluate(&req("job.e"));
    assert_eq!(d.kind, DecisionKind::Allow);
    assert_eq!(d.constraints, None);
    let d = p.evaluate(&req("job.d"));
    assert_eq!(d.kind, DecisionKind::Deny);
    assert_eq!(d.constraints, Some(json!({"diff": {"max_files": 3}})));
}

#[test]
fn remediations_are_carried() {
    let p = policy(
        r#"
rules:
  - id: r
    match: {topics: [job.prod.*]}
    decision: deny
    reason: use staging
    remediations:
      - id: staging
        title: Run on staging
        summary: same job, staging topic
        replacement_topic: job.staging.deploy
        replacement_capability: deploy.staging
        add_labels: {env: staging}
        remove_labels: [prod]
      - id: minimal
"#,
    );
    let d = p.evaluate(&req("job.prod.deploy"));
    assert_eq!(d.remediations.len(), 2);
    let r = &d.remediations[0];
    assert_eq!(r.id, "staging");
    assert_eq!(r.title, "Run on staging");
    assert_eq!(r.summary, "same job, staging topic");
    assert_eq!(r.replacement_topic, "job.staging.deploy");
    assert_eq!(r.replacement_capability, "deploy.staging");
    assert_eq!(r.add_labels.get("env").map(String::as_str), Some("staging"));
    assert_eq!(r.remove_labels, vec!["prod".to_owned()]);
    assert_eq!(d.remediations[1].id, "minimal");
    assert_eq!(d.remediations[1].title, "");
    assert!(p.evaluate(&req("job.dev.deploy")).remediations.is_empty());
}

#[test]
fn first_matching_rule_wins() {
    let p = policy(
        r#"
default_decision: allow
rules:
  - id: a
    match: {topics: [job.a.*]}
    decision: deny
  - id: b
    match: {topics: [job.*]}
    decision: require_approval
  - id: c
    match: {topics: [job.a.x]}
    decision: allow
"#,
    );
    assert_eq!(p.evaluate(&req("job.a.x")).rule_id, "a");
    assert_eq!(p.evaluate(&req("job.b")).rule_id, "b");
}

// ---------------------------------------------------------------------------
// Predicates
// ---------------------------------------------------------------------------

#[test]
fn predicate_tenants() {
    let mut r = req("job.x");
    r.tenant = "  ACME ".into();
    assert!(matches("tenants: [acme]", &r));
    assert!(matches("tenants: [' Acme ', other]", &r));
    assert!(!matches("tenants: [acme-eu]", &r));
    assert!(!matches("tenants: ['']", &r));
    // An empty request tenant resolves to default_tenant, else "default".
    let blank = req("job.x");
    assert!(matches("tenants: [default]", &blank));
    assert!(!matches("tenants: [acme]", &blank));
    let p = policy("default_tenant: acme\nrules:\n  - id: hit\n    match: {tenants: [ACME]}\n    decision: allow\n");
    assert_eq!(p.evaluate(&blank).rule_id, "hit");
    // An empty list is no predicate.
    assert!(matches("tenants: []", &r));
}

#[test]
fn predicate_topics() {
    let r = req("job.a.b.c");
    assert!(matches("topics: ['job.*']", &r));
    assert!(matches("topics: ['  job.a.*  ']", &r));
    assert!(matches("topics: [job.x, 'job.?.b.c']", &r));
    assert!(matches("topics: ['job.[a-c].b.c']", &r));
    assert!(!matches("topics: ['job.[^a-c].b.c']", &r));
    assert!(matches("topics: ['job.[!x].b.c']", &r));
    assert!(!matches("topics: [job.a]", &r));
    assert!(!matches("topics: ['job.[a']", &r), "malformed never matches");
    assert!(!matches("topics: ['']", &r), "empty pattern never matches");
    assert!(!matches("topics: ['   ']", &r));
    assert!(!matches("topics: ['JOB.*']", &r), "case-sensitive");
    assert!(!matches("topics: ['job.*']", &req("job.a/b")), "* stops at /");
    // The request topic is trimmed.
    assert!(matches("topics: [job.a]", &req("  job.a ")));
}

#[test]
fn predicate_capabilities() {
    let mut r = req("job.x");
    r.capability = "Repo.Write".into();
    assert!(matches("capabilities: [repo.write]", &r));
    assert!(matches("capabilities: [other, REPO.WRITE]", &r));
    assert!(!matches("capabilities: [repo.read]", &r));
    r.capability = String::new();
    assert!(!matches("capabilities: [repo.read]", &r));
    assert!(!matches("capabilities: ['']", &r));
}

#[test]
fn predicate_risk_tags_any_overlap() {
    let mut r = req("job.x");
    r.risk_tags = vec!["pii".into(), "network".into()];
    assert!(matches("risk_tags: [network]", &r));
    assert!(matches("risk_tags: [finance, pii]", &r));
    assert!(!matches("risk_tags: [finance]", &r));
    r.risk_tags.clear();
    assert!(!matches("risk_tags: [finance]", &r));
}

#[test]
fn predicate_requires_all() {
    let mut r = req("job.x");
    r.requires = vec!["git".into(), "docker".into()];
    assert!(matches("requires: [git]", &r));
    assert!(matches("requires: [docker, git]", &r));
    assert!(!matches("requires: [git, kubectl]", &r));
    r.requires.clear();
    assert!(!matches("requires: [git]", &r));
}

#[test]
fn predicate_memberships() {
    let mut r = req("job.x");
    r.pack_id = "hello-pack".into();
    r.actor_id = "svc-1".into();
    r.actor_type = "service".into();
    assert!(matches("pack_ids: [hello-pack]", &r));
    assert!(!matches("pack_ids: [other-pack]", &r));
    assert!(matches("actor_ids: [svc-0, svc-1]", &r));
    assert!(!matches("actor_ids: [svc-2]", &r));
    assert!(matches("actor_types: [service]", &r));
    assert!(!matches("actor_types: [human]", &r));
    assert!(!matches("pack_ids: [hello-pack]", &req("job.x")), "empty input");
    // All present predicates must hold.
    assert!(matches("pack_ids: [hello-pack]\nactor_types: [service]", &r));
    assert!(!matches("pack_ids: [hello-pack]\nactor_types: [human]", &r));
}

#[test]
fn predicate_agent_risk_tiers_from_label() {
    let r = with_labels(req("job.x"), &[("agent_risk_tier", "high")]);
    assert!(matches("agent_risk_tiers: [high, critical]", &r));
    assert!(!matches("agent_risk_tiers: [low]", &r));
    assert!(!matches("agent_risk_tiers: [high]", &req("job.x")));
}

#[test]
fn predicate_agent_data_classifications_from_label() {
    let r = with_labels(req("job.x"), &[("agent_data_classifications", "public, pii")]);
    assert!(matches("agent_data_classifications: [pii]", &r));
    assert!(!matches("agent_data_classifications: [phi]", &r));
    assert!(!matches("agent_data_classifications: [pii]", &req("job.x")));
}

#[test]
fn predicate_secrets_present() {
    let plain = req("job.x");
    assert!(matches("secrets_present: false", &plain));
    assert!(!matches("secrets_present: true", &plain));
    for v in ["true", "TRUE", "1", "yes", "Yes"] {
        let r = with_labels(req("job.x"), &[("secrets_present", v)]);
        assert!(matches("secrets_present: true", &r), "{v}");
    }
    let mut tagged = req("job.x");
    tagged.risk_tags = vec!["secrets".into()];
    assert!(matches("secrets_present: true", &tagged));
    // The label, when present, wins over the tags.
    let mut r = with_labels(req("job.x"), &[("secrets_present", "no")]);
    r.risk_tags = vec!["secrets".into()];
    assert!(matches("secrets_present: false", &r));
}

#[test]
fn predicate_labels_exact() {
    let r = with_labels(req("job.x"), &[("env", "prod"), ("team", "core")]);
    assert!(matches("labels: {env: prod}", &r));
    assert!(matches("labels: {env: prod, team: core}", &r));
    assert!(!matches("labels: {env: Prod}", &r), "case-sensitive");
    assert!(!matches("labels: {env: prod, region: eu}", &r), "missing label");
    assert!(!matches("labels: {Env: prod}", &r));
}

#[test]
fn predicate_label_allowlist_is_inverse() {
    let r = with_labels(req("job.x"), &[("region", "us-east"), ("env", "prod")]);
    // Value outside its list: match.
    assert!(matches("label_allowlist: {region: [eu-west, eu-central]}", &r));
    // Inside (case-insensitive): no match.
    assert!(!matches("label_allowlist: {region: [US-EAST, eu-west]}", &r));
    // Missing labels are skipped.
    assert!(!matches("label_allowlist: {zone: [a]}", &r));
    // Some present label outside its list is enough.
    assert!(matches("label_allowlist: {region: [us-east], env: [dev]}", &r));
}

#[test]
fn predicate_label_threshold() {
    let r = with_labels(req("job.x"), &[("amount", "250.5"), ("note", "n/a")]);
    assert!(matches("label_threshold: {amount: 100}", &r));
    assert!(matches("label_threshold: {amount: 250.4}", &r));
    assert!(!matches("label_threshold: {amount: 250.5}", &r), "strictly greater");
    assert!(!matches("label_threshold: {amount: 1000}", &r));
    assert!(!matches("label_threshold: {note: 1}", &r), "non-numbers skipped");
    assert!(!matches("label_threshold: {missing: 1}", &r));
    assert!(matches("label_threshold: {note: 1, amount: 1}", &r));
}

#[test]
fn predicate_mcp_and_sections() {
    let p = policy(
        r#"
default_decision: allow
rules:
  - id: mcp-deny
    match:
      mcp: {deny_tools: [Shell], allow_servers: [github, jira]}
    decision: deny
  - id: generic
    match: {topics: ["job.*"]}
    decision: require_approval
"#,
    );
    let mcp =
        |server: &str, tool: &str| with_labels(req("job.mcp.call"), &[("mcp.server", server), ("mcp_tool", tool)]);
    // MCP request: only mcp rules apply; deny list (case-insensitive) fails it.
    let d = p.evaluate(&mcp("github", "shell"));
    assert_eq!(d.rule_id, "", "mcp predicate failed, generic rule not applicable");
    assert_eq!(d.kind, DecisionKind::Allow);
    let d = p.evaluate(&mcp("github", "search"));
    assert_eq!(d.rule_id, "mcp-deny");
    let d = p.evaluate(&mcp("gitlab", "search"));
    assert_eq!(d.rule_id, "", "server not in allow list");
    // Non-MCP request: the mcp rule is not applicable.
    assert_eq!(p.evaluate(&req("job.x")).rule_id, "generic");

    let e = p.explain(&mcp("github", "shell"));
    assert_eq!(e.trace[0].detail, "mcp tool \"shell\" denied");
    assert!(e.trace[1].detail.starts_with("not applicable"), "{}", e.trace[1].detail);
}

#[test]
fn tenant_mcp_overlay_denies() {
    let p = policy(
        r#"
default_decision: allow
tenants:
  acme:
    mcp: {deny_servers: [evil], allow_actions: [read]}
rules:
  - id: any-mcp
    match:
      mcp: {deny_servers: [blocked]}
    decision: allow
"#,
    );
    let mut r = with_labels(req("job.x"), &[("mcp.server", "evil"), ("mcp.action", "read")]);
    r.tenant = "acme".into();
    let d = p.evaluate(&r);
    assert_eq!(d.kind, DecisionKind::Deny);
    assert_eq!(d.reason, "mcp server \"evil\" denied");
    let mut r = with_labels(req("job.x"), &[("mcp.server", "good"), ("mcp.action", "WRITE")]);
    r.tenant = "acme".into();
    assert_eq!(p.evaluate(&r).reason, "mcp action \"WRITE\" not allowed");
    let mut r = with_labels(req("job.x"), &[("mcp.server", "good"), ("mcp.action", "Read")]);
    r.tenant = "acme".into();
    assert_eq!(p.evaluate(&r).rule_id, "any-mcp");
    // Another tenant is unaffected.
    let mut r = with_labels(req("job.x"), &[("mcp.server", "evil")]);
    r.tenant = "globex".into();
    assert_eq!(p.evaluate(&r).kind, DecisionKind::Allow);
}

#[test]
fn delegation_predicates_never_match() {
    let r = req("job.x");
    assert!(!matches("delegation: {max_depth: 1}", &r));
    assert!(!matches("predicate: \"depth < 2\"", &r));
}

#[test]
fn empty_match_matches_everything() {
    assert!(matches("{}", &req("job.anything")));
    let p = policy("rules:\n  - id: all\n    decision: throttle\n");
    assert_eq!(p.evaluate(&req("job.z")).kind, DecisionKind::Throttle);
}

// ---------------------------------------------------------------------------
// Velocity, tiers and scopes
// ---------------------------------------------------------------------------

#[test]
fn velocity_rules_are_skipped_but_validated() {
    let p = policy(
        r#"
default_decision: allow
rules:
  - id: burst
    match: {topics: ["job.*"]}
    decision: throttle
    velocity: {max_requests: 5, window_seconds: 60, key: "tenant:labels.user"}
  - id: after
    match: {topics: ["job.*"]}
    decision: require_approval
"#,
    );
    assert!(p.has_velocity_rules());
    assert_eq!(p.evaluate(&req("job.x")).rule_id, "after");
    let e = p.explain(&req("job.x"));
    assert_eq!(e.trace[0].detail, "velocity rule skipped: no counter");
    assert!(!e.trace[0].matched);
    assert!(e.trace[1].decisive);

    let bad = |v: &str| diags(&format!("rules:\n  - id: v\n    velocity: {{{v}}}\n"));
    assert_eq!(bad("max_requests: 1, window_seconds: 1, key: tenant"), vec![]);
    assert_eq!(bad("max_requests: 1, window_seconds: 86400, key: topic"), vec![]);
    for v in [
        "max_requests: 0, window_seconds: 60, key: tenant",
        "max_requests: -1, window_seconds: 60, key: tenant",
        "max_requests: 1, window_seconds: 0, key: tenant",
        "max_requests: 1, window_seconds: 86401, key: tenant",
        "max_requests: 1, window_seconds: 60, key: ''",
        "max_requests: 1, window_seconds: 60, key: bogus",
        "max_requests: 1, window_seconds: 60",
        "max_requests: 1, key: tenant",
        "max_requests: 1, window_seconds: 60, key: tenant, extra: 1",
    ] {
        let d = bad(v);
        assert_eq!(d.len(), 1, "{v}: {d:?}");
        assert_eq!(d[0].line, 3, "{v}: {d:?}");
    }
}

#[test]
fn tier_and_selector_validation() {
    let bad = [
        ("tier: workflow\n", "selector is required for workflow tier"),
        ("tier: job\nselector: {workflow_id: w}\n", "selector is required for job tier"),
        ("rules:\n  - id: r\n    tier: workflow\n", "rules[0] (id \"r\"): selector is required for workflow tier"),
        ("input_rules:\n  - id: i\n    tier: job\n", "input_rules[0] (id \"i\"): selector is required for job tier"),
    ];
    for (doc, msg) in bad {
        let d = diags(doc);
        assert_eq!(d.len(), 1, "{doc}: {d:?}");
        assert_eq!(d[0].message, msg);
        assert_eq!((d[0].line, d[0].column), (0, 0));
    }
    let good = [
        "tier: global\n",
        "tier: workflow\nselector: {workflow_id: w}\n",
        "tier: job\nselector: {session_id: s}\n",
        "tier: workflow\nselector: {workflow_id: w}\nrules:\n  - id: r\n    tier: job\n    selector: {job_id: j}\n",
        "rules:\n  - id: r\n    tier: job\n    selector: {job_id: j}\n",
    ];
    for doc in good {
        assert_eq!(diags(doc), vec![], "{doc}");
    }
    let d = diags("rules:\n  - id: r\n    tier: team\n");
    assert_eq!((d[0].line, d[0].column), (3, 11));
    assert!(d[0].message.contains("tier \"team\" must be one of: global, workflow, job"));
}

#[test]
fn scoped_rules_apply_only_to_their_selector() {
    let p = policies(&[
        (
            "wf",
            "tier: workflow\nselector: {workflow_id: wf-1}\ndefault_decision: allow\nrules:\n  - id: wf-rule\n    match: {topics: [job.a]}\n    decision: require_approval\n",
        ),
        ("job", "rules:\n  - id: job-rule\n    tier: job\n    selector: {job_id: j-1}\n    decision: throttle\n"),
        ("global", "rules:\n  - id: global-rule\n    match: {topics: [job.a]}\n    decision: deny\n"),
    ]);
    assert_eq!(p.default_decision(), DecisionKind::Deny, "scoped default is not global");
    assert_eq!(p.evaluate(&req("job.a")).rule_id, "global-rule");
    let wf = with_labels(req("job.a"), &[("workflow_id", "wf-1")]);
    assert_eq!(p.evaluate(&wf).rule_id, "wf-rule");
    let other_wf = with_labels(req("job.a"), &[("workflow_id", "wf-2")]);
    assert_eq!(p.evaluate(&other_wf).rule_id, "global-rule");
    let mut job = req("job.b");
    job.job_id = "j-1".into();
    assert_eq!(p.evaluate(&job).rule_id, "job-rule");
    // Scoped default: workflow wf-1 allows what nothing matched.
    let wf_b = with_labels(req("job.b"), &[("workflow_id", "wf-1")]);
    let d = p.evaluate(&wf_b);
    assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Allow, ""));
    assert_eq!(p.evaluate(&req("job.b")).kind, DecisionKind::Deny);

    let e = p.explain(&req("job.b"));
    assert!(e.trace[0].detail.starts_with("out of scope: workflow-tier"), "{}", e.trace[0].detail);
    assert!(e.trace[1].detail.starts_with("out of scope: job-tier"), "{}", e.trace[1].detail);
}

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

#[test]
fn unknown_key_diagnostic_has_position() {
    let yaml = "default_decision: deny\nrules:\n  - id: a\n    match:\n      topics: [job.a]\n      topicz: [job.b]\n    decision: allow\n";
    let d = diags(yaml);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].bundle_id, "b");
    assert_eq!((d[0].line, d[0].column), (6, 7));
    assert!(d[0].message.contains("unknown field `topicz`"), "{}", d[0].message);
    assert!(!d[0].message.contains("at line"), "{}", d[0].message);

    let d = diags("version: v1\nbogus: 1\n");
    assert_eq!((d[0].line, d[0].column), (2, 1));
    let d = diags("tenants:\n  acme:\n    allow_topics: [job.*]\n    max_jobs: 3\n");
    assert_eq!(d[0].line, 4);
    let d = diags("output_rules:\n  - id: o\n    decision: quarantine\n    action: x\n");
    assert_eq!(d[0].line, 4);
    let d = diags("rules:\n  - id: o\n    constraints:\n      budgets: {max_runtime: 5}\n");
    assert_eq!(d[0].line, 4);
}

#[test]
fn bad_decision_diagnostic_has_position() {
    let yaml = "rules:\n  - id: ok\n    decision: allow\n  - id: typo\n    decision: alow\n";
    let d = diags(yaml);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].line, d[0].column), (5, 15));
    assert!(d[0].message.contains("decision \"alow\" must be one of"), "{}", d[0].message);
    assert!(d[0].message.starts_with("rules[1].decision"), "{}", d[0].message);
    assert!(load(&[Bundle::new("b", yaml)]).is_err());

    let d = diags("output_rules:\n  - id: o\n    decision: block\n");
    assert_eq!(d[0].line, 3);
    let d = diags("input_rules:\n  - id: i\n    decision: allow\n");
    assert_eq!(d[0].line, 3);
    let d = diags("output_policy:\n  fail_mode: sideways\n");
    assert_eq!(d[0].line, 2);
}

#[test]
fn type_and_syntax_errors() {
    let d = diags("rules:\n  - id: a\n    match:\n      topics: job.a\n");
    assert_eq!(d[0].line, 4);
    let d = diags("rules: [\n");
    assert_eq!(d.len(), 1);
    assert!(d[0].line >= 1);
    let d = diags("- just\n- a list\n");
    assert_eq!(d.len(), 1);
    let d = diags("rules:\n  - id: a\n    match:\n      labels: {n: [1]}\n");
    assert_eq!(d[0].line, 4);
}

#[test]
fn diagnostics_cover_every_bad_bundle() {
    let bundles = [
        Bundle::new("one", "rules:\n  - id: a\n    decision: nope\n"),
        Bundle::new("two", "rules: []\n"),
        Bundle::new("three", "\nwat: 1\n"),
    ];
    let d = check(&bundles);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].bundle_id, "one");
    assert_eq!(d[0].line, 3);
    assert_eq!(d[1].bundle_id, "three");
    assert_eq!(d[1].line, 2);
    assert_eq!(load(&bundles).unwrap_err(), d);
}

// ---------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------

#[test]
fn merge_globals_come_from_the_first_setter() {
    let p = policies(&[
        ("a", "rules: []\n"),
        ("b", "version: v2\ndefault_decision: allow\n"),
        ("c", "version: v3\ndefault_tenant: acme\ndefault_decision: deny\n"),
    ]);
    assert_eq!(p.version(), "v2");
    assert_eq!(p.default_tenant(), "acme");
    assert_eq!(p.default_decision(), DecisionKind::Allow);
}

#[test]
fn merge_appends_and_replaces_in_place() {
    let p = policies(&[
        (
            "base",
            "rules:\n  - id: one\n    decision: allow\n  - id: two\n    match: {topics: [job.t]}\n    decision: allow\n    reason: base\n  - id: three\n    decision: allow\n",
        ),
        (
            "pack",
            "rules:\n  - id: four\n    decision: allow\n  - id: two\n    match: {topics: [job.t]}\n    decision: deny\n    reason: pack\n",
        ),
    ]);
    assert_eq!(p.rule_ids().collect::<Vec<_>>(), ["one", "two", "three", "four"]);
    assert_eq!(p.rule_count(), 4);
    assert_eq!(p.warnings().len(), 1);
    let e = p.explain(&req("job.t"));
    assert_eq!(e.trace[1].rule_id, "two");
    // "one" (empty match) decides first; the replaced "two" is the pack's.
    assert_eq!(e.decision.rule_id, "one");

    let p = policies(&[
        ("base", "rules:\n  - id: two\n    match: {topics: [job.t]}\n    decision: allow\n"),
        ("pack", "rules:\n  - id: two\n    match: {topics: [job.t]}\n    decision: deny\n    reason: pack\n"),
    ]);
    let d = p.evaluate(&req("job.t"));
    assert_eq!((d.kind, d.reason.as_str()), (DecisionKind::Deny, "pack"));

    // Rules without ids are never merged.
    let p = policies(&[("a", "rules:\n  - decision: allow\n"), ("b", "rules:\n  - decision: deny\n")]);
    assert_eq!(p.rule_count(), 2);
}

#[test]
fn merge_output_and_input_rules() {
    let p = policies(&[
        (
            "a",
            "output_rules:\n  - id: o1\n    decision: redact\n  - id: o2\n    decision: deny\ninput_rules:\n  - id: i1\n    decision: deny\n",
        ),
        (
            "b",
            "output_rules:\n  - id: o1\n    decision: quarantine\n  - id: o3\n    decision: allow\ninput_rules:\n  - id: i2\n    decision: require_human\n",
        ),
        (
            "secops/invariants",
            "output_rules:\n  - id: inv-o\n    decision: quarantine\noutput_policy: {enabled: true, fail_mode: closed}\n",
        ),
    ]);
    let ids: Vec<&str> = p.output_rules().iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["inv-o", "o1", "o2", "o3"]);
    assert_eq!(p.output_rules()[1]["decision"], "quarantine");
    let ids: Vec<&str> = p.input_rules().iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["i1", "i2"]);
    assert!(p.output_policy_enabled());
    assert_eq!(p.output_fail_mode(), "closed");
}

#[test]
fn invariants_bracket_all_other_rules() {
    let inv = r#"
rules:
  - id: inv-allow
    match: {topics: [job.shared]}
    decision: allow
  - id: inv-deny
    match: {topics: [job.danger.*]}
    decision: deny
  - id: inv-approve
    match: {topics: [job.money.*]}
    decision: require_approval
  - id: inv-throttle
    match: {topics: [job.burst]}
    decision: throttle
  - id: inv-awc
    match: {topics: [job.awc]}
    decision: allow_with_constraints
"#;
    let pack = r#"
rules:
  - id: pack-allow-danger
    match: {topics: [job.danger.*]}
    decision: allow
  - id: pack-deny-shared
    match: {topics: [job.shared]}
    decision: deny
"#;
    // The invariants bundle may come anywhere in the list.
    for order in [
        vec![("secops/invariants", inv), ("pack/safety", pack)],
        vec![("pack/safety", pack), ("secops/invariants", inv)],
    ] {
        let p = policies(&order);
        assert_eq!(
            p.rule_ids().collect::<Vec<_>>(),
            [
                "inv-deny",
                "inv-approve",
                "inv-throttle",
                "pack-allow-danger",
                "pack-deny-shared",
                "inv-allow",
                "inv-awc"
            ]
        );
        // Invariant deny beats a pack allow.
        assert_eq!(p.evaluate(&req("job.danger.rm")).rule_id, "inv-deny");
        // A pack deny beats an invariant allow.
        assert_eq!(p.evaluate(&req("job.shared")).rule_id, "pack-deny-shared");
    }
    // Only the exact id is special.
    let p = policies(&[("secops/invariants-x", inv), ("pack", pack)]);
    assert_eq!(p.rule_ids().next(), Some("inv-allow"));
    // Invariant globals do not count.
    let p = policies(&[("secops/invariants", "default_decision: allow\n"), ("b", "")]);
    assert_eq!(p.default_decision(), DecisionKind::Deny);
}

#[test]
fn legacy_tenant_rules() {
    let p = policies(&[
        (
            "base",
            r#"
default_decision: deny
tenants:
  zeta:
    allow_topics: [job.z.*]
  acme:
    allow_topics: ["job.*"]
    deny_topics: [job.secret.*, job.admin]
"#,
        ),
        ("more", "tenants:\n  acme:\n    deny_topics: [job.extra]\n"),
    ]);
    assert!(p.is_legacy());
    assert_eq!(
        p.rule_ids().collect::<Vec<_>>(),
        [
            "legacy:acme:deny:0",
            "legacy:acme:deny:1",
            "legacy:acme:deny:2",
            "legacy:acme:allow:0",
            "legacy:zeta:allow:0"
        ]
    );
    let mut r = req("job.secret.read");
    r.tenant = "ACME".into();
    let d = p.evaluate(&r);
    assert_eq!(d.kind, DecisionKind::Deny);
    assert_eq!(d.rule_id, "legacy:acme:deny:0");
    assert_eq!(d.reason, "topic \"job.secret.*\" denied by tenant policy");
    r.topic = "job.extra".into();
    assert_eq!(p.evaluate(&r).rule_id, "legacy:acme:deny:2");
    r.topic = "job.build".into();
    let d = p.evaluate(&r);
    assert_eq!((d.kind, d.rule_id.as_str(), d.reason.as_str()), (DecisionKind::Allow, "legacy:acme:allow:0", ""));
    r.tenant = "zeta".into();
    assert_eq!(p.evaluate(&r).kind, DecisionKind::Deny, "zeta only allows job.z.*");
    // Any rule turns legacy mode off.
    let p = policies(&[
        ("base", "tenants:\n  acme:\n    allow_topics: [job.*]\n"),
        ("rules", "rules:\n  - id: only\n    match: {topics: [job.none]}\n    decision: allow\n"),
    ]);
    assert!(!p.is_legacy());
    assert_eq!(p.rule_count(), 1);
}

#[test]
fn example_default_tenant_legacy_rules() {
    // The example's tenants alone (rules stripped) give the legacy rules.
    let tenants_only = SAFETY_YAML.split("\ndefault_tenant: default\n").nth(1).expect("tenants section");
    let p = policy(&format!("default_tenant: default\n{tenants_only}"));
    assert_eq!(p.rule_ids().collect::<Vec<_>>(), ["legacy:default:deny:0", "legacy:default:allow:0"]);
    assert_eq!(p.evaluate(&req("job.anything")).kind, DecisionKind::Allow);
}

// ---------------------------------------------------------------------------
// Explain
// ---------------------------------------------------------------------------

#[test]
fn explain_twenty_rules_deciding_last() {
    let mut yaml = String::from("default_decision: deny\nrules:\n");
    for i in 0..19 {
        yaml.push_str(&format!("  - id: r{i}\n    match:\n      topics: [job.a{i}.*]\n    decision: allow\n"));
    }
    yaml.push_str("  - id: r19\n    match:\n      topics: [job.x]\n    decision: deny\n    reason: last\n");
    let p = policy(&yaml);
    assert_eq!(p.rule_count(), 20);
    let e = p.explain(&req("job.x"));
    assert_eq!(e.trace.len(), 20);
    assert!(!e.defaulted);
    for (i, t) in e.trace.iter().enumerate() {
        assert_eq!(t.position as usize, i);
        assert_eq!(t.rule_id, format!("r{i}"));
        assert_eq!(t.matched, i == 19);
        assert_eq!(t.decisive, i == 19);
    }
    assert_eq!(e.trace[0].detail, "topics: \"job.x\" matches none of [job.a0.*]");
    assert_eq!(e.trace[19].detail, "matched: decision deny");
    assert_eq!(e.decision, p.evaluate(&req("job.x")));
    assert_eq!(e.decision.reason, "last");
}

#[test]
fn explain_names_the_first_failed_predicate() {
    let p = policy(
        r#"
default_decision: allow
rules:
  - id: tenants
    match: {tenants: [acme], topics: [job.nope]}
  - id: caps
    match: {topics: ["job.*"], capabilities: [admin]}
  - id: labels
    match: {topics: ["job.*"], labels: {env: prod}}
  - id: requires
    match: {requires: [git, docker]}
  - id: first
    match: {topics: ["job.*"]}
    decision: throttle
  - id: shadowed
    decision: deny
"#,
    );
    let mut r = with_labels(req("job.x"), &[("env", "dev")]);
    r.tenant = "globex".into();
    r.capability = "read".into();
    r.requires = vec!["git".into()];
    let e = p.explain(&r);
    let details: Vec<&str> = e.trace.iter().map(|t| t.detail.as_str()).collect();
    assert_eq!(details[0], "tenants: \"globex\" is not one of [acme]");
    assert_eq!(details[1], "capabilities: \"read\" is not one of [admin]");
    assert_eq!(details[2], "labels: label \"env\" is \"dev\", rule wants \"prod\"");
    assert_eq!(details[3], "requires: \"docker\" is missing from request requires [git]");
    assert_eq!(details[4], "matched: decision throttle");
    assert_eq!(details[5], "matched, but rule \"first\" decided first");
    assert!(e.trace[5].matched && !e.trace[5].decisive);
    assert_eq!(e.trace.iter().filter(|t| t.decisive).count(), 1);
    assert_eq!(e.decision.kind, DecisionKind::Throttle);
}

#[test]
fn explain_defaulted_has_no_decisive_entry() {
    let p = policy("default_decision: allow\nrules:\n  - id: a\n    match: {topics: [job.a]}\n");
    let e = p.explain(&req("job.b"));
    assert!(e.defaulted);
    assert_eq!(e.trace.len(), 1);
    assert!(!e.trace[0].matched && !e.trace[0].decisive);
    assert_eq!(e.decision.kind, DecisionKind::Allow);
    assert_eq!(e.decision.reason, "no matching rule — default policy: allow");
}

#[test]
fn evaluate_and_explain_agree_on_the_example() {
    let p = policy(SAFETY_YAML);
    let topics = [
        "job.default",
        "job.compliance-agents.process",
        "job.cordclaw.file-write",
        "job.b2b.it-inventory",
        "job.unknown",
        "job.visa-governance.pii-check",
    ];
    for t in topics {
        for labels in [&[][..], &[("_source", "workflow")][..]] {
            let r = with_labels(req(t), labels);
            let e = p.explain(&r);
            assert_eq!(e.trace.len(), 14);
            assert_eq!(e.decision, p.evaluate(&r), "{t}");
            assert_eq!(e.defaulted, e.decision.rule_id.is_empty());
        }
    }
}

#[test]
fn request_serde_defaults() {
    let r: Request = serde_json::from_value(json!({"topic": "job.x", "labels": {"a": "b"}})).unwrap();
    assert_eq!(r.topic, "job.x");
    assert_eq!(r.labels, BTreeMap::from([("a".to_owned(), "b".to_owned())]));
    assert!(r.risk_tags.is_empty());
    let d: Decision = policy("").evaluate(&r);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["kind"], "deny");
    assert_eq!(v["approval_required"], false);
}

#[test]
fn base_policy_plus_pack_fragment() {
    // The shape of packs/hello-pack/overlays/policy.fragment.yaml.
    let pack = "rules:\n  - id: hello-pack-allow\n    match:\n      topics:\n        - job.hello-pack.echo\n    decision: allow\n    reason: \"Allow the hello-pack echo demo.\"\n";
    let p = policies(&[("base", SAFETY_YAML), ("hello-pack/safety", pack)]);
    assert_eq!(p.rule_count(), 15);
    let d = p.evaluate(&req("job.hello-pack.echo"));
    assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Allow, "hello-pack-allow"));
    assert_eq!(p.evaluate(&req("job.hello-pack.other")).kind, DecisionKind::Deny);
    // A secops invariant denying the pack topic wins over the pack allow.
    let inv = "rules:\n  - id: freeze\n    match: {topics: [\"job.hello-pack.*\"]}\n    decision: deny\n    reason: change freeze\n";
    let p = policies(&[("base", SAFETY_YAML), ("hello-pack/safety", pack), ("secops/invariants", inv)]);
    let d = p.evaluate(&req("job.hello-pack.echo"));
    assert_eq!((d.rule_id.as_str(), d.reason.as_str()), ("freeze", "change freeze"));
    assert_eq!(p.explain(&req("job.hello-pack.echo")).trace[0].position, 0);
}
