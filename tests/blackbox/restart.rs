//! A SIGKILL with jobs in every in-flight state loses none of them: held
//! jobs stay held (and can still be approved), queued jobs run, running
//! jobs are re-run, jobs waiting for a retry get it.

use super::harness::{Gateway, Options};
use super::{ACME, ACME_ADMIN, GLOBEX, WAIT, keys_env};
use serde_json::{Value, json};

const POLICY: &str = r#"
version: "restart-1"
default_decision: deny
rules:
  - id: flaky-once
    match:
      topics: ["job.hostile-pack.fail"]
    decision: allow
    constraints:
      budgets:
        max_retries: 1
  - id: hold-escape
    match:
      topics: ["job.hostile-pack.escape"]
    decision: require_approval
    reason: "A human looks first."
"#;

fn env() -> Vec<(String, String)> {
    let mut env = keys_env();
    env.push(("CORDUM_PACK_CONCURRENCY".into(), "2".into()));
    env.push(("CORDUM_RETRY_BASE_MS".into(), "2500".into()));
    env
}

fn state(gw: &Gateway, key: &str, id: &str) -> Value {
    gw.get(key, None, &format!("/api/v1/jobs/{id}")).json().unwrap()
}

fn submit(gw: &Gateway, key: &str, topic: &str) -> String {
    let (status, body) = gw.submit(key, None, json!({"topic": topic, "input": {}}));
    assert_eq!(status, 200, "{body}");
    body["job_id"].as_str().unwrap().to_string()
}

#[test]
fn a_kill_with_jobs_in_every_state_loses_none() {
    let mut gw =
        Gateway::start(Options { env: env(), hostile_pack: true, policy: Some(POLICY.into()), ..Default::default() });
    // Waiting for its retry (2.5 s away).
    let retrying = submit(&gw, ACME, "job.hostile-pack.fail");
    gw.wait_state(ACME, &retrying, "RETRYING", WAIT);
    // Running: both slots of the pack's pool (acme may hold one of two).
    let loop_a = submit(&gw, ACME, "job.hostile-pack.loop");
    let loop_g = submit(&gw, GLOBEX, "job.hostile-pack.loop");
    gw.wait_state(ACME, &loop_a, "RUNNING", WAIT);
    gw.wait_state(GLOBEX, &loop_g, "RUNNING", WAIT);
    // Queued behind them.
    let queued = submit(&gw, ACME, "job.hostile-pack.echo");
    let q = state(&gw, ACME, &queued);
    assert!(matches!(q["state"].as_str(), Some("PENDING" | "SCHEDULED")), "queued at the kill: {q}");
    // Held for approval.
    let held = submit(&gw, ACME, "job.hostile-pack.escape");
    assert_eq!(state(&gw, ACME, &held)["state"], "APPROVAL_REQUIRED");

    gw.restart(env());

    assert_eq!(state(&gw, ACME, &held)["state"], "APPROVAL_REQUIRED", "still held after the restart");
    let echo = gw.wait_job(ACME, None, &queued, WAIT);
    assert_eq!(echo["state"], "SUCCEEDED", "{echo}");
    assert_eq!(echo["attempts"], 1, "{echo}");
    for (key, id) in [(ACME, &loop_a), (GLOBEX, &loop_g)] {
        let job = gw.wait_job(key, None, id, WAIT);
        assert_eq!(job["state"], "TIMEOUT", "{job}");
        let notes = job["history"].to_string();
        assert!(notes.contains("restarted"), "{job}");
    }
    let failed = gw.wait_job(ACME, None, &retrying, WAIT);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert_eq!(failed["attempts"], 2, "the retry it was waiting for ran: {failed}");
    let dlq: Value = gw.get(ACME_ADMIN, None, "/api/v1/dlq").json().unwrap();
    assert!(dlq.to_string().contains(&retrying), "{dlq}");
    // The held job can still be decided, and runs once.
    let resp = gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{held}/approve"), &json!({}));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let escaped = gw.wait_job(ACME, None, &held, WAIT);
    assert_eq!(escaped["attempts"], 1, "{escaped}");
}
