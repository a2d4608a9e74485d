//! Black-box tests: each starts the real `cordum` binary on a free port with
//! a fresh data dir and speaks HTTP to it.

mod deadlines;
mod external;
mod hardening;
mod harness;
mod lifecycle;
mod pack_cli;
mod packs;
mod policy_authoring;
mod policy_components;
mod policy_hardening;
mod restart;
mod studio;
mod velocity;
mod workflows;

use harness::{Gateway, Options, assert_envelope};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub(crate) const ADMIN: &str = "admin-key-0123456789";
/// Tenant-bound keys: `acme` and `globex` are separate tenants.
pub(crate) const ACME: &str = "acme-key-0123456789";
pub(crate) const GLOBEX: &str = "globex-key-0123456789";
pub(crate) const VIEWER: &str = "viewer-key-0123456789";
/// A second admin in `acme` (approvals need someone other than the submitter).
pub(crate) const ACME_ADMIN: &str = "acme-admin-key-0123456789";

pub(crate) fn keys_env() -> Vec<(String, String)> {
    vec![
        ("CORDUM_API_KEY".into(), ADMIN.into()),
        (
            "CORDUM_API_KEYS".into(),
            format!(
                "acme:{ACME}:user:alice,globex:{GLOBEX}:admin:bob,default:{VIEWER}:viewer,acme:{ACME_ADMIN}:admin:carol"
            ),
        ),
    ]
}

fn gateway() -> Gateway {
    Gateway::start(Options { env: keys_env(), ..Default::default() })
}

pub(crate) fn echo(message: &str) -> Value {
    json!({"topic": "job.hello-pack.echo", "input": {"message": message}})
}

pub(crate) const WAIT: Duration = Duration::from_secs(60);

#[test]
fn published_example_runs_with_curl_through_wasm_components() {
    let gw = gateway();
    // The API reference's own example, sent with curl.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", &gw.url("/api/v1/jobs")])
        .args(["-H", &format!("X-API-Key: {ADMIN}"), "-H", "X-Tenant-ID: default"])
        .args(["-H", "Content-Type: application/json"])
        .args(["-d", r#"{"topic": "job.hello-pack.echo", "input": {"message": "hello from the gateway"}}"#])
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let submitted: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    let id = submitted["job_id"].as_str().expect("job_id").to_string();
    assert!(submitted["trace_id"].is_string());

    let job = gw.wait_job(ADMIN, Some("default"), &id, WAIT);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["result"]["message"], "hello from the gateway");
    assert_eq!(job["result"]["echo"], "hello from the gateway");
    // Read by the component through cordum:host/config from the pack's pools overlay.
    assert_eq!(job["result"]["pool"]["requires"][0], "local", "{job}");
    assert_eq!(job["safety_decision"], "ALLOW");
    assert_eq!(job["safety_rule_id"], "hello-pack-allow");
    assert_eq!(job["safety"]["rule_id"], "hello-pack-allow");
    assert!(job["safety_snapshot"].as_str().unwrap().starts_with("cfg:"));
    assert_eq!(job["input"]["message"], "hello from the gateway");
    let states: Vec<&str> = job["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]);
}

#[test]
fn schema_violations_are_listed_and_nothing_runs() {
    let gw = gateway();
    for bad in [json!({"author": "x"}), json!({"message": "hi", "extra": 1}), json!({"message": 5})] {
        let resp = gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.hello-pack.echo", "input": bad}));
        let body = assert_envelope(resp, 400);
        assert_eq!(body["code"], "schema_validation_failed", "{body}");
        let violations = body["violations"].as_array().expect("violations");
        assert!(!violations.is_empty());
        for v in violations {
            assert!(v["keyword"].is_string() && v["message"].is_string() && v["instance_path"].is_string(), "{v}");
        }
    }
    let missing = assert_envelope(
        gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.hello-pack.echo", "input": {}})),
        400,
    );
    assert_eq!(missing["violations"][0]["keyword"], "required", "{missing}");
    let extra = assert_envelope(
        gw.post(
            ADMIN,
            None,
            "/api/v1/jobs",
            &json!({"topic": "job.hello-pack.echo", "input": {"message": "a", "x": 1}}),
        ),
        400,
    );
    assert_eq!(extra["violations"][0]["keyword"], "additionalProperties", "{extra}");
    // The pack keeps a per-tenant counter of executions: the rejected jobs never ran.
    let (status, body) = gw.submit(ADMIN, None, echo("valid"));
    assert_eq!(status, 200, "{body}");
    let job = gw.wait_job(ADMIN, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "SUCCEEDED");
    assert_eq!(job["result"]["count"], 1, "only the valid job ran: {job}");
}

pub(crate) const DENY_POLICY: &str = r#"
version: "blackbox-1"
default_decision: deny
rules:
  - id: slow-down
    match:
      topics: ["job.hostile-pack.oom"]
    decision: throttle
    reason: "Too many memory-hungry jobs."
  - id: review-escapes
    match:
      topics: ["job.hostile-pack.escape"]
      risk_tags: ["fs"]
    decision: require_approval
    reason: "Filesystem jobs need a human."
  - id: no-hostile-echo
    match:
      topics: ["job.hostile-pack.echo"]
    decision: deny
    reason: "Hostile echo is not allowed here."
    remediations:
      - id: use-hello
        title: Use hello-pack
        replacement_topic: job.hello-pack.echo
"#;

#[test]
fn denied_topic_answers_403_with_job_id_and_stores_denied_job() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(DENY_POLICY.into()),
        ..Default::default()
    });
    let resp =
        gw.post(ADMIN, Some("default"), "/api/v1/jobs", &json!({"topic": "job.hostile-pack.echo", "input": {"a": 1}}));
    let body = assert_envelope(resp, 403);
    assert_eq!(body["code"], "policy_denied");
    assert_eq!(body["rule_id"], "no-hostile-echo");
    assert_eq!(body["decision"], "DENY");
    let id = body["job_id"].as_str().expect("job_id in the 403").to_string();
    let job: Value = gw.get(ADMIN, Some("default"), &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(job["state"], "DENIED");
    assert_eq!(job["safety_decision"], "DENY");
    assert_eq!(job["safety_rule_id"], "no-hostile-echo");
    assert_eq!(job["safety_reason"], "Hostile echo is not allowed here.");
    assert_eq!(job["safety_remediations"][0]["id"], "use-hello");
    assert!(job["safety_snapshot"].as_str().unwrap().starts_with("blackbox-1:"), "{job}");
    assert!(job["result"].is_null());
    // Throttle: 429 with Retry-After, nothing stored.
    let resp = gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.hostile-pack.oom", "input": {}}));
    assert_eq!(resp.headers()["retry-after"], "30");
    let body = assert_envelope(resp, 429);
    assert_eq!(body["rule_id"], "slow-down");
    // Approval: held, not run.
    let (status, held) =
        gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.escape", "input": {}, "risk_tags": ["fs"]}));
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["status"], "approval_required");
    assert_eq!(held["rule_id"], "review-escapes");
    let job: Value = gw.get(ADMIN, None, &format!("/api/v1/jobs/{}", held["job_id"].as_str().unwrap())).json().unwrap();
    assert_eq!(job["state"], "APPROVAL_REQUIRED");
    assert_eq!(job["approval_required"], true);
    assert_eq!(job["attempts"], 0);
    // Without the risk tag the escape rule does not match and the pack's allow rule does.
    let (status, _) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.escape", "input": {}}));
    assert_eq!(status, 200);
    // Pack rules still apply after the base policy.
    let (status, ok) = gw.submit(ADMIN, None, echo("still allowed"));
    assert_eq!(status, 200, "{ok}");
}

#[test]
fn idempotency_replays_conflicts_and_is_scoped_by_tenant() {
    let gw = gateway();
    let body = echo("once");
    let first = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ACME)
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let first: Value = first.json().unwrap();
    // Same key via another accepted carrier, same payload: same job.
    let again = gw
        .client
        .post(gw.url("/api/v1/jobs?idempotency_key=k-1"))
        .header("X-API-Key", ACME)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().unwrap();
    assert_eq!(first["job_id"], again["job_id"]);
    assert_eq!(first["trace_id"], again["trace_id"]);
    let mut with_body_key = body.clone();
    with_body_key["idempotency_key"] = json!("k-1");
    let (status, third) = gw.submit(ACME, None, with_body_key);
    assert_eq!(status, 200);
    assert_eq!(third["job_id"], first["job_id"]);
    // Same key, other payload: 409.
    let conflict = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ACME)
        .header("X-Idempotency-Key", "k-1")
        .json(&echo("other"))
        .send()
        .unwrap();
    let env = assert_envelope(conflict, 409);
    assert_eq!(env["code"], "IDEMPOTENCY_CONFLICT");
    // Same key in another tenant: a different job.
    let other = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", GLOBEX)
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(other.status().as_u16(), 200);
    let other: Value = other.json().unwrap();
    assert_ne!(other["job_id"], first["job_id"]);
    // One execution in acme: its counter is 1 after the replays, and the next job sees 2.
    let job = gw.wait_job(ACME, None, first["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["result"]["count"], 1);
    assert_eq!(job["attempts"], 1);
    let (_, next) = gw.submit(ACME, None, echo("next"));
    let next = gw.wait_job(ACME, None, next["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(next["result"]["count"], 2, "the replays did not run the job again");
    // Two different keys in one request: refused.
    let two = gw
        .client
        .post(gw.url("/api/v1/jobs?idempotency_key=a"))
        .header("X-API-Key", ACME)
        .header("Idempotency-Key", "b")
        .json(&body)
        .send()
        .unwrap();
    assert_envelope(two, 400);
}

#[test]
fn failed_submit_does_not_keep_its_idempotency_key() {
    let gw = gateway();
    let bad = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Idempotency-Key", "retry-me")
        .json(&json!({"topic": "job.hello-pack.echo", "input": {}}))
        .send()
        .unwrap();
    assert_envelope(bad, 400);
    let good = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Idempotency-Key", "retry-me")
        .json(&echo("fixed"))
        .send()
        .unwrap();
    assert_eq!(good.status().as_u16(), 200, "the key was not kept by the failed submit");
}

#[test]
fn tenants_cannot_see_each_other() {
    let gw = gateway();
    let (status, body) = gw.submit(ACME, None, echo("acme secret"));
    assert_eq!(status, 200, "{body}");
    let id = body["job_id"].as_str().unwrap();
    let job = gw.wait_job(ACME, None, id, WAIT);
    assert_eq!(job["tenant"], "acme");
    // Another tenant's key: exactly like a missing job.
    let foreign = assert_envelope(gw.get(GLOBEX, None, &format!("/api/v1/jobs/{id}")), 404);
    let missing = assert_envelope(gw.get(GLOBEX, None, "/api/v1/jobs/00000000-0000-0000-0000-000000000000"), 404);
    assert_eq!(foreign["error"], missing["error"]);
    assert_eq!(foreign["code"], missing["code"]);
    // A tenant-bound key used with another tenant's header: 403.
    let env = assert_envelope(gw.get(ACME, Some("globex"), &format!("/api/v1/jobs/{id}")), 403);
    assert_eq!(env["code"], "tenant_access_denied");
    // A body tenant other than the request's: 403.
    let mut body = echo("x");
    body["tenant_id"] = json!("globex");
    assert_envelope(gw.post(ACME, None, "/api/v1/jobs", &body), 403);
    // The cross-tenant admin key can act for acme explicitly.
    let ok = gw.get(ADMIN, Some("acme"), &format!("/api/v1/jobs/{id}"));
    assert_eq!(ok.status().as_u16(), 200);
    // The kv counter is per tenant: globex starts from 1.
    let (_, g) = gw.submit(GLOBEX, None, echo("globex"));
    let g = gw.wait_job(GLOBEX, None, g["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(g["result"]["count"], 1);
}

#[test]
fn hostile_components_fail_their_job_and_others_keep_working() {
    let gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    let hostile = |action: &str| -> String {
        let (status, body) =
            gw.submit(GLOBEX, None, json!({"topic": format!("job.hostile-pack.{action}"), "input": {}}));
        assert_eq!(status, 200, "{body}");
        body["job_id"].as_str().unwrap().to_string()
    };
    let started = Instant::now();
    let ids: Vec<(&str, String)> = ["loop", "oom", "escape", "trap"].iter().map(|a| (*a, hostile(a))).collect();
    // Meanwhile another tenant's jobs keep succeeding.
    let mut acme_jobs = Vec::new();
    for i in 0..20 {
        let (status, body) = gw.submit(ACME, None, echo(&format!("during {i}")));
        assert_eq!(status, 200, "{body}");
        acme_jobs.push(body["job_id"].as_str().unwrap().to_string());
    }
    for id in &acme_jobs {
        let job = gw.wait_job(ACME, None, id, WAIT);
        assert_eq!(job["state"], "SUCCEEDED", "{job}");
    }
    let mut outcomes = std::collections::HashMap::new();
    for (action, id) in &ids {
        let job = gw.wait_job(GLOBEX, None, id, WAIT);
        outcomes.insert(*action, job);
    }
    let lp = &outcomes["loop"];
    assert_eq!(lp["state"], "TIMEOUT", "{lp}");
    assert_eq!(lp["error_code"], "plugin_timeout");
    assert!(lp["error_message"].as_str().unwrap().contains("1000 ms"), "{lp}");
    // Stopped by its deadline: about 1 s after it started running (a loaded
    // machine may add a little, never another second or more).
    let at = |state: &str| -> chrono::DateTime<chrono::Utc> {
        let h = lp["history"].as_array().unwrap().iter().rev().find(|h| h["state"] == state).unwrap();
        h["at"].as_str().unwrap().parse().unwrap()
    };
    let ran = (at("TIMEOUT") - at("RUNNING")).num_milliseconds();
    assert!((950..2500).contains(&ran), "the loop ran {ran} ms");
    let oom = &outcomes["oom"];
    assert_eq!(oom["state"], "FAILED", "{oom}");
    assert_eq!(oom["error_code"], "plugin_memory_exceeded", "{oom}");
    let esc = &outcomes["escape"];
    assert_eq!(esc["state"], "FAILED", "{esc}");
    let msg = esc["error_message"].as_str().unwrap();
    assert!(msg.contains("filesystem access denied"), "{msg}");
    assert!(msg.contains("env vars visible: 0"), "{msg}");
    assert!(esc["result"].is_null());
    let trap = &outcomes["trap"];
    assert_eq!(trap["state"], "FAILED", "{trap}");
    assert_eq!(trap["error_code"], "plugin_trap");
    // The loop was stopped by its 1 s limit, not by the test's patience.
    assert!(started.elapsed() < Duration::from_secs(50));
    // The same pack still works after its instances trapped.
    let (_, body) = gw.submit(GLOBEX, None, json!({"topic": "job.hostile-pack.echo", "input": {"still": "alive"}}));
    let job = gw.wait_job(GLOBEX, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "SUCCEEDED");
    assert_eq!(job["result"]["still"], "alive");
}

#[test]
fn restart_keeps_jobs_and_the_generated_bootstrap_key() {
    let mut gw = Gateway::start(Options::default());
    let key = gw.generated_key.clone().expect("a key is generated and printed on first start");
    assert!(key.starts_with("ck_") && key.len() == 67);
    let (status, body) = gw.submit(&key, Some("default"), echo("before restart"));
    assert_eq!(status, 200, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    gw.wait_job(&key, None, &id, WAIT);
    // The key is stored only as a digest.
    let db = std::fs::read(gw.data_dir.join("cordum.redb")).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()), "raw key found in the store");
    gw.restart(vec![]);
    assert!(gw.generated_key.is_none(), "printed only once");
    let job: Value = gw.get(&key, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(job["state"], "SUCCEEDED");
    assert_eq!(job["result"]["message"], "before restart");
    // The installed pack survived too.
    let (status, body) = gw.submit(&key, None, echo("after restart"));
    assert_eq!(status, 200, "{body}");
    let job = gw.wait_job(&key, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["result"]["count"], 2);
}

#[test]
fn errors_use_the_envelope_everywhere() {
    let gw = gateway();
    // No credential, bad credential, bearer authoritative.
    let env = assert_envelope(gw.client.get(gw.url("/api/v1/status")).send().unwrap(), 401);
    assert_eq!(env, json!({"error": "unauthorized", "code": "unauthorized", "status": 401}));
    assert_envelope(gw.client.get(gw.url("/api/v1/status")).header("X-API-Key", "nope-nope-nope").send().unwrap(), 401);
    let bearer_bad = gw
        .client
        .get(gw.url("/api/v1/status"))
        .header("Authorization", "Bearer wrong")
        .header("X-API-Key", ADMIN)
        .send()
        .unwrap();
    assert_envelope(bearer_bad, 401);
    let bearer_ok =
        gw.client.get(gw.url("/api/v1/status")).header("Authorization", format!("Bearer {ADMIN}")).send().unwrap();
    assert_eq!(bearer_ok.status().as_u16(), 200);
    // Unknown path, unauthenticated /api path, wrong method.
    assert_envelope(gw.client.get(gw.url("/nope")).send().unwrap(), 404);
    assert_envelope(gw.client.get(gw.url("/api/v1/nope")).send().unwrap(), 401);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/nope"), 404);
    assert_envelope(gw.client.delete(gw.url("/api/v1/jobs")).header("X-API-Key", ADMIN).send().unwrap(), 405);
    // Malformed JSON, unknown field (named), missing topic, bad topic, unknown topic.
    let malformed = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/json")
        .body("{\"topic\":")
        .send()
        .unwrap();
    assert_eq!(assert_envelope(malformed, 400)["code"], "invalid_json");
    let unknown = assert_envelope(
        gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.hello-pack.echo", "inptu": {}})),
        400,
    );
    assert_eq!(unknown["field"], "inptu", "{unknown}");
    assert!(unknown["error"].as_str().unwrap().contains("inptu"));
    assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs", &json!({"input": {}})), 400);
    assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job..x"})), 400);
    let unknown_topic =
        assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.nobody.here"})), 400);
    assert_eq!(unknown_topic["code"], "unknown_topic");
    assert_eq!(unknown_topic["topic"], "job.nobody.here");
    assert!(unknown_topic["error"].as_str().unwrap().contains("job.nobody.here"));
    // Oversized bodies: declared and chunked.
    let big = format!("{{\"topic\":\"job.hello-pack.echo\",\"input\":{{\"message\":\"{}\"}}}}", "x".repeat(3 << 20));
    let resp = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(assert_envelope(resp, 413)["code"], "body_too_large");
    // (Bodies without a length are cut by the extractor; see the unit test in http/extract.rs.)
    // The gateway still serves after refusing them.
    assert_eq!(gw.client.get(gw.url("/health")).send().unwrap().status().as_u16(), 200);
    // Roles: a viewer cannot submit.
    assert_envelope(gw.post(VIEWER, None, "/api/v1/jobs", &echo("v")), 403);
    // Request ids are echoed or generated.
    let resp = gw.client.get(gw.url("/health")).header("X-Request-Id", "req-123").send().unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let resp = gw.client.get(gw.url("/health")).send().unwrap();
    assert_eq!(resp.headers()["x-request-id"].len(), 16);
}

#[test]
fn public_and_status_routes() {
    let gw = gateway();
    let health: Value = gw.client.get(gw.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "healthy");
    let cfg = gw.client.get(gw.url("/api/v1/auth/config")).send().unwrap();
    assert_eq!(cfg.status().as_u16(), 200);
    let cfg: Value = cfg.json().unwrap();
    assert_eq!(cfg["default_tenant"], "default");
    assert_eq!(cfg["password_enabled"], true);
    let status: Value = gw.get(ADMIN, None, "/api/v1/status").json().unwrap();
    assert_eq!(status["store"]["backend"], "embedded");
    assert_eq!(status["store"]["ok"], true);
    assert_eq!(status["bus"]["backend"], "in-process");
    assert_eq!(status["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    // Nothing secret in what status or config say.
    let text = format!("{status}{cfg}");
    for key in [ADMIN, ACME, GLOBEX] {
        assert!(!text.contains(key));
    }
}

#[test]
fn policy_evaluate_and_explain_use_the_policy_component() {
    let gw = gateway();
    let body = json!({"topic": "job.hello-pack.echo", "tenant": "default", "meta": {"capability": "hello-pack.echo"}});
    let resp = gw.post(ADMIN, None, "/api/v1/policy/evaluate", &body);
    assert_eq!(resp.status().as_u16(), 200);
    let d: Value = resp.json().unwrap();
    assert_eq!(d["decision"], "DECISION_TYPE_ALLOW", "{d}");
    assert_eq!(d["ruleId"], "hello-pack-allow");
    assert!(d["policySnapshot"].as_str().unwrap().starts_with("cfg:"));
    let denied: Value =
        gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({"topic": "job.other.thing"})).json().unwrap();
    assert_eq!(denied["decision"], "DECISION_TYPE_DENY");
    assert_eq!(denied["ruleId"], "");
    let explained: Value =
        gw.post(ADMIN, None, "/api/v1/policy/explain", &json!({"topic": "job.other.thing"})).json().unwrap();
    let trace = explained["trace"].as_array().unwrap();
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0]["rule_id"], "hello-pack-allow");
    assert_eq!(trace[0]["matched"], false);
    assert_eq!(explained["defaulted"], true);
    // Strict body, admin only, tenant checked.
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({"topic": "job.a.b", "bogus": 1})), 400);
    assert_envelope(gw.post(ACME, None, "/api/v1/policy/evaluate", &json!({"topic": "job.a.b"})), 403);
    let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("l{i}"), json!("v"))).collect();
    let env = assert_envelope(
        gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({"topic": "job.a.b", "labels": many})),
        400,
    );
    assert_eq!(env["field"], "labels");
    assert_envelope(
        gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({"topic": "job.a.b", "tenant": "acme"})),
        403,
    );
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({})), 400);
}

#[test]
fn jobs_in_flight_survive_a_kill() {
    let mut gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    // A slow job (the loop runs into its 1 s deadline) is in flight when the gateway dies.
    let (_, body) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.loop", "input": {}}));
    let id = body["job_id"].as_str().unwrap().to_string();
    gw.wait_state(ADMIN, &id, "RUNNING", WAIT);
    gw.restart(keys_env());
    let job = gw.wait_job(ADMIN, None, &id, WAIT);
    assert_eq!(job["state"], "TIMEOUT", "{job}");
    let notes: Vec<String> =
        job["history"].as_array().unwrap().iter().filter_map(|h| h["note"].as_str().map(str::to_string)).collect();
    assert!(notes.iter().any(|n| n.contains("restarted")), "{job}");
}

/// One key listed with two meanings (twice in CORDUM_API_KEYS, or as the
/// bootstrap key too) refuses to start instead of letting the last win.
#[test]
fn ambiguous_key_configuration_is_a_clear_start_error() {
    for (key, keys) in [
        (None, "tenq:ck_same_key_1:admin,tenr:ck_same_key_1:viewer"),
        (Some("ck_dup_bootstrap"), "tenx:ck_dup_bootstrap:viewer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(harness::BIN);
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("d"))
            .env("CORDUM_LOG", "error")
            .env("CORDUM_API_KEYS", keys)
            .env_remove("CORDUM_API_KEY");
        if let Some(k) = key {
            cmd.env("CORDUM_API_KEY", k);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{keys}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CORDUM_API_KEY"), "{keys}: {err}");
        assert!(!err.contains("ck_same_key_1") && !err.contains("ck_dup_bootstrap"), "no secret echoed: {err}");
    }
}
