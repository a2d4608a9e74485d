//! Velocity (rate) rules: real decisions (job submits, `policy/evaluate`)
//! record the request in the rule's window; simulate and explain only count.

use crate::harness::{Gateway, Options, assert_envelope};
use crate::{ADMIN, echo, keys_env};
use serde_json::{Value, json};

/// A throttle on hello-pack's echo after three requests a minute per tenant,
/// ahead of the pack's own allow rule.
const VELOCITY_POLICY: &str = r#"
version: "velocity-1"
default_decision: deny
rules:
  - id: echo-burst
    match:
      topics: ["job.hello-pack.echo"]
    decision: throttle
    reason: "Too many echo jobs this minute."
    velocity: {max_requests: 3, window_seconds: 60, key: tenant}
"#;

fn policy_call(gw: &Gateway, tenant: &str, route: &str) -> Value {
    let resp = gw.post(ADMIN, Some(tenant), route, &json!({"topic": "job.hello-pack.echo"}));
    assert_eq!(resp.status().as_u16(), 200, "{route}");
    resp.json().unwrap()
}

fn submit(gw: &Gateway, tenant: &str) -> (u16, Value) {
    gw.submit(ADMIN, Some(tenant), echo("x"))
}

#[test]
fn velocity_rules_count_real_decisions_and_dry_runs_record_nothing() {
    let gw = Gateway::start(Options { env: keys_env(), policy: Some(VELOCITY_POLICY.into()), ..Default::default() });
    for _ in 0..2 {
        let (status, body) = submit(&gw, "default");
        assert_eq!(status, 200, "{body}");
    }
    // Dry runs: the count would be 3, which is not over 3, and stays so.
    for _ in 0..5 {
        let sim = policy_call(&gw, "default", "/api/v1/policy/simulate");
        assert_eq!(sim["decision"], "DECISION_TYPE_ALLOW", "{sim}");
        assert_eq!(sim["ruleId"], "hello-pack-allow", "{sim}");
        let exp = policy_call(&gw, "default", "/api/v1/policy/explain");
        assert_eq!(exp["decision"], "DECISION_TYPE_ALLOW", "{exp}");
        let first = &exp["trace"][0];
        assert_eq!(first["rule_id"], "echo-burst", "{exp}");
        assert_eq!(first["matched"], false, "{exp}");
        let detail = first["detail"].as_str().unwrap();
        assert!(detail.starts_with("velocity 3/3 in 60 s: under the limit"), "{detail}");
    }
    // The third real submit is still within the limit; the fourth is over it.
    let (status, body) = submit(&gw, "default");
    assert_eq!(status, 200, "{body}");
    let resp = gw.post(ADMIN, Some("default"), "/api/v1/jobs", &echo("x"));
    assert!(resp.headers().contains_key("retry-after"));
    let throttled = assert_envelope(resp, 429);
    assert_eq!(throttled["rule_id"], "echo-burst", "{throttled}");
    // Now the dry runs see the window over its limit (4 recorded, 5 with this one).
    let sim = policy_call(&gw, "default", "/api/v1/policy/simulate");
    assert_eq!(sim["decision"], "DECISION_TYPE_THROTTLE", "{sim}");
    assert_eq!(sim["ruleId"], "echo-burst");
    assert_eq!(sim["reason"], "Too many echo jobs this minute.");
    let exp = policy_call(&gw, "default", "/api/v1/policy/explain");
    assert_eq!(exp["decision"], "DECISION_TYPE_THROTTLE", "{exp}");
    let first = &exp["trace"][0];
    assert_eq!((first["matched"].as_bool(), first["decisive"].as_bool()), (Some(true), Some(true)), "{exp}");
    assert!(first["detail"].as_str().unwrap().starts_with("velocity 5/3 in 60 s: fired"), "{exp}");

    // Keyed by tenant: acme's window is its own.
    for _ in 0..3 {
        let (status, body) = submit(&gw, "acme");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(assert_envelope(gw.post(ADMIN, Some("acme"), "/api/v1/jobs", &echo("x")), 429)["rule_id"], "echo-burst");
    // `policy/evaluate` is a real decision too: it records.
    let evaluate = |n: usize| {
        let d = policy_call(&gw, "globex", "/api/v1/policy/evaluate");
        (n, d["decision"].as_str().unwrap().to_string(), d["ruleId"].as_str().unwrap().to_string())
    };
    for n in 0..3 {
        assert_eq!(evaluate(n), (n, "DECISION_TYPE_ALLOW".into(), "hello-pack-allow".into()));
    }
    assert_eq!(evaluate(3), (3, "DECISION_TYPE_THROTTLE".into(), "echo-burst".into()));
    let (status, body) = submit(&gw, "globex");
    assert_eq!(status, 429, "{body}");
    // Other tenants are untouched, and the accepted jobs ran.
    let (status, body) = gw.submit(ADMIN, Some("initech"), echo("x"));
    assert_eq!(status, 200, "{body}");
    let job = gw.wait_job(ADMIN, Some("initech"), body["job_id"].as_str().unwrap(), crate::WAIT);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["safety_rule_id"], "hello-pack-allow");
}
