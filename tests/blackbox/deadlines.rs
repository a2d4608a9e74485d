//! Deadlines from the policy's constraints and from topic timeouts in the
//! (tenant's effective) config; a held job re-checked against a policy
//! published after it was held; the lifecycle routes' 404s and 400s.

use super::harness::{Gateway, Options, assert_envelope};
use super::{ACME, ACME_ADMIN, ADMIN, GLOBEX, WAIT, echo, keys_env};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const BUDGET_POLICY: &str = r#"
version: "deadlines-1"
default_decision: deny
rules:
  - id: tight-loop-budget
    match:
      topics: ["job.hostile-pack.loop"]
      labels: {budget: tight}
    decision: allow_with_constraints
    constraints:
      budgets:
        max_runtime_ms: 200
  - id: held-for-review
    match:
      topics: ["job.hostile-pack.echo"]
    decision: require_approval
    reason: "Echo needs a human."
"#;

fn running_to_end_ms(job: &Value) -> i64 {
    let at = |state: &str| -> DateTime<Utc> {
        let h = job["history"].as_array().unwrap().iter().rev().find(|h| h["state"] == state).unwrap();
        h["at"].as_str().unwrap().parse().unwrap()
    };
    (at("TIMEOUT") - at("RUNNING")).num_milliseconds()
}

#[test]
fn deadlines_come_from_constraints_and_the_tenants_topic_timeouts() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(BUDGET_POLICY.into()),
        ..Default::default()
    });
    // The rule's budget (200 ms) is tighter than the pack's 1000 ms.
    let (status, body) =
        gw.submit(ACME, None, json!({"topic": "job.hostile-pack.loop", "input": {}, "labels": {"budget": "tight"}}));
    assert_eq!(status, 200, "{body}");
    let tight = gw.wait_job(ACME, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(tight["state"], "TIMEOUT", "{tight}");
    assert!(tight["error_message"].as_str().unwrap().contains("200 ms"), "{tight}");
    let ms = running_to_end_ms(&tight);
    assert!((150..900).contains(&ms), "stopped after {ms} ms");

    // globex's org config shortens the topic to 0.3 s (upstream's object
    // form); acme keeps the pack's 1000 ms.
    let put = gw
        .client
        .put(gw.url("/api/v1/config"))
        .header("X-API-Key", GLOBEX)
        .json(&json!({"scope": "org", "data": {"timeouts": {"topics": {"job.hostile-pack.loop": {"timeout_seconds": 0.3}}}}}))
        .send()
        .unwrap();
    assert_eq!(put.status().as_u16(), 204);
    let (_, g) = gw.submit(GLOBEX, None, json!({"topic": "job.hostile-pack.loop", "input": {}}));
    let (_, a) = gw.submit(ACME_ADMIN, None, json!({"topic": "job.hostile-pack.loop", "input": {}}));
    let g = gw.wait_job(GLOBEX, None, g["job_id"].as_str().unwrap(), WAIT);
    let a = gw.wait_job(ACME_ADMIN, None, a["job_id"].as_str().unwrap(), WAIT);
    assert!(g["error_message"].as_str().unwrap().contains("300 ms"), "{g}");
    assert!(a["error_message"].as_str().unwrap().contains("1000 ms"), "{a}");
    assert!(running_to_end_ms(&g) < running_to_end_ms(&a), "{g} {a}");
}

#[test]
fn a_held_job_is_rechecked_against_a_policy_published_after_it_was_held() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let review = "rules:\n  - id: review-echo\n    match:\n      topics: [\"job.hello-pack.echo\"]\n    decision: require_approval\n    reason: \"Look first.\"\n";
    let put = |content: &str| {
        let resp = gw
            .client
            .put(gw.url("/api/v1/policy/bundles/block/echo"))
            .header("X-API-Key", ADMIN)
            .json(&json!({"content": content}))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let published = gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({}));
        assert_eq!(published.status().as_u16(), 200);
    };
    put(review);
    let (status, held) = gw.submit(ACME, None, echo("held"));
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["status"], "approval_required");
    let id = held["job_id"].as_str().unwrap().to_string();
    let held_under: Value = gw.get(ACME, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    // A newer snapshot denies the topic: approving must not dispatch.
    put(&review.replace("require_approval", "deny").replace("review-echo", "echo-closed"));
    let env = assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({})), 409);
    assert_eq!(env["code"], "approval_policy_denied");
    assert!(env["error"].as_str().unwrap().contains("echo-closed"), "{env}");
    let job: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(job["state"], "DENIED");
    assert_eq!(job["attempts"], 0, "never dispatched");
    let active: Value = gw.get(ADMIN, None, "/api/v1/policy/bundles").json().unwrap();
    assert_eq!(job["approval"]["policy_snapshot"], active["active_snapshot"], "re-decided under the new snapshot");
    assert_ne!(job["approval"]["policy_snapshot"], held_under["safety_snapshot"]);
}

#[test]
fn lifecycle_routes_answer_404_for_unknown_or_foreign_ids_and_400_naming_bad_fields() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(BUDGET_POLICY.into()),
        ..Default::default()
    });
    let unknown = "00000000-0000-0000-0000-000000000000";
    let posts = [
        format!("/api/v1/jobs/{unknown}/cancel"),
        format!("/api/v1/jobs/{unknown}/remediate"),
        format!("/api/v1/approvals/{unknown}/approve"),
        format!("/api/v1/approvals/{unknown}/reject"),
        format!("/api/v1/dlq/{unknown}/retry"),
        "/api/v1/pools/no-such-pool/drain".to_string(),
    ];
    for path in &posts {
        assert_envelope(gw.post(ADMIN, None, path, &json!({})), 404);
    }
    assert_envelope(gw.post(ADMIN, None, &format!("/api/v1/approvals/{unknown}/repair"), &json!({"input": {}})), 404);
    let del = gw.client.delete(gw.url(&format!("/api/v1/dlq/{unknown}"))).header("X-API-Key", ADMIN).send().unwrap();
    assert_envelope(del, 404);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/pools/no-such-pool"), 404);
    assert_envelope(gw.get(ADMIN, None, &format!("/api/v1/jobs/{unknown}")), 404);

    // A held job of acme is missing for globex on every route.
    let (_, held) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": 1}}));
    let id = held["job_id"].as_str().unwrap().to_string();
    for path in ["cancel", "remediate"] {
        let env = assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/jobs/{id}/{path}"), &json!({})), 404);
        assert_eq!(env["code"], "job_not_found", "{path}: {env}");
    }
    for path in ["approve", "reject"] {
        assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/approvals/{id}/{path}"), &json!({})), 404);
    }
    assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/approvals/{id}/repair"), &json!({"input": {}})), 404);
    let list: Value = gw.get(GLOBEX, None, "/api/v1/approvals").json().unwrap();
    assert!(!list.to_string().contains(&id), "{list}");

    // Bad bodies: 400 naming the field; nothing decided.
    let bad = assert_envelope(
        gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({"reasn": "typo"})),
        400,
    );
    assert_eq!(bad["field"], "reasn");
    let bad = assert_envelope(
        gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/reject"), &json!({"reason": 5})),
        400,
    );
    assert!(bad["error"].as_str().unwrap().contains("invalid type"), "{bad}");
    let bad = assert_envelope(
        gw.post(ACME_ADMIN, None, &format!("/api/v1/jobs/{id}/remediate"), &json!({"remediation": "x"})),
        400,
    );
    assert_eq!(bad["field"], "remediation");
    let job: Value = gw.get(ACME, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(job["state"], "APPROVAL_REQUIRED", "{job}");
}
