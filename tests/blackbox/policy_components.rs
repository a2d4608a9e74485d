//! Per-tenant policy components: uploaded by a tenant's admin, checked
//! against the `cordum:policy` world, run after the rules for that tenant
//! only, able only to tighten.

use super::harness::{Gateway, Options, TEST_PACKS, assert_envelope};
use super::{ACME, ACME_ADMIN, GLOBEX, WAIT, echo, keys_env};
use serde_json::Value;
use std::path::Path;

fn put_component(gw: &Gateway, key: &str, wasm: Vec<u8>) -> reqwest::blocking::Response {
    gw.client
        .put(gw.url("/api/v1/policy/component"))
        .header("X-API-Key", key)
        .header("Content-Type", "application/wasm")
        .body(wasm)
        .send()
        .unwrap()
}

#[test]
fn a_tenants_policy_component_tightens_only_that_tenant() {
    let mut gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let deny_all = std::fs::read(Path::new(TEST_PACKS).join("deny-all-policy.wasm")).unwrap();
    let resp = put_component(&gw, ACME_ADMIN, deny_all.clone());
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let record: Value = gw.get(ACME_ADMIN, None, "/api/v1/policy/component").json().unwrap();
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["digest"].as_str().unwrap().len(), 64);

    // acme: the rules allow hello-pack, the tenant's component denies.
    let denied = assert_envelope(gw.post(ACME, None, "/api/v1/jobs", &echo("acme")), 403);
    assert_eq!(denied["rule_id"], "tenant:tenant-deny-all", "{denied}");
    // Explain and simulate (Policy Studio's "try a request") say what a job
    // would meet, the tenant's component included.
    let request = serde_json::json!({"topic": "job.hello-pack.echo"});
    let explained: Value = gw.post(ACME_ADMIN, None, "/api/v1/policy/explain", &request).json().unwrap();
    assert_eq!(explained["ruleId"], "tenant:tenant-deny-all", "{explained}");
    let last = explained["trace"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["rule_id"], "tenant", "{explained}");
    assert_eq!(last["decisive"], true, "{explained}");
    let simulated: Value = gw.post(ACME_ADMIN, None, "/api/v1/policy/simulate", &request).json().unwrap();
    assert_eq!(simulated["ruleId"], "tenant:tenant-deny-all", "{simulated}");
    let theirs: Value = gw.post(GLOBEX, None, "/api/v1/policy/explain", &request).json().unwrap();
    assert_eq!(theirs["decision"], "DECISION_TYPE_ALLOW", "{theirs}");
    // globex: untouched, and it cannot see acme's component.
    let (status, body) = gw.submit(GLOBEX, None, echo("globex"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.wait_job(GLOBEX, None, body["job_id"].as_str().unwrap(), WAIT)["state"], "SUCCEEDED");
    assert_envelope(gw.get(GLOBEX, None, "/api/v1/policy/component"), 404);

    // Not a policy component (a pack worker), not WebAssembly, not an admin.
    let pack_worker = std::fs::read(Path::new(env!("CORDUM_GUEST_WASM_DIR")).join("hello_pack.wasm")).unwrap();
    let env = assert_envelope(put_component(&gw, GLOBEX, pack_worker), 400);
    assert!(env["error"].as_str().unwrap().contains("cordum:policy"), "{env}");
    assert_envelope(put_component(&gw, GLOBEX, b"\0asm garbage".to_vec()), 400);
    assert_envelope(put_component(&gw, GLOBEX, Vec::new()), 400);
    assert_envelope(put_component(&gw, ACME, deny_all), 403);
    // globex still has none, and still runs.
    assert_envelope(gw.get(GLOBEX, None, "/api/v1/policy/component"), 404);

    // It survives a restart; removing it lifts the denial.
    gw.restart(keys_env());
    assert_envelope(gw.post(ACME, None, "/api/v1/jobs", &echo("after restart")), 403);
    let del = gw.client.delete(gw.url("/api/v1/policy/component")).header("X-API-Key", ACME_ADMIN).send().unwrap();
    assert_eq!(del.status().as_u16(), 204);
    let (status, body) = gw.submit(ACME, None, echo("allowed again"));
    assert_eq!(status, 200, "{body}");
}
