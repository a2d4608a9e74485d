//! Policy authoring over the API (what Policy Studio drives): drafts,
//! publish, snapshots, history, rollback, simulate and explain with drafts;
//! and scoped config with its effective merge.

use super::harness::{Gateway, Options, assert_envelope};
use super::{ACME, ACME_ADMIN, ADMIN, GLOBEX, echo, keys_env};
use serde_json::{Value, json};

fn gateway() -> Gateway {
    Gateway::start(Options { env: keys_env(), ..Default::default() })
}

fn put(gw: &Gateway, key: &str, tenant: Option<&str>, path: &str, body: &Value) -> reqwest::blocking::Response {
    let mut req = gw.client.put(gw.url(path)).header("X-API-Key", key).json(body);
    if let Some(t) = tenant {
        req = req.header("X-Tenant-ID", t);
    }
    req.send().unwrap()
}

fn delete(gw: &Gateway, key: &str, path: &str) -> reqwest::blocking::Response {
    gw.client.delete(gw.url(path)).header("X-API-Key", key).send().unwrap()
}

fn json_of(resp: reqwest::blocking::Response) -> Value {
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

fn active_snapshot(gw: &Gateway) -> String {
    json_of(gw.get(ADMIN, None, "/api/v1/policy/bundles"))["active_snapshot"].as_str().unwrap().to_string()
}

const DENY_HELLO: &str = r#"
rules:
  - id: stop-hello
    match:
      topics: ["job.hello-pack.echo"]
    decision: deny
    reason: "Hello is closed today."
"#;

#[test]
fn publish_denies_at_once_and_rollback_restores() {
    let gw = gateway();
    let before = active_snapshot(&gw);
    // The first start recorded the pack's install in the history.
    let history = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"));
    assert_eq!(history["active"], before.as_str());
    assert!(history["items"].as_array().unwrap().iter().any(|h| h["action"] == "pack_install"), "{history}");

    // A draft changes nothing live.
    let saved =
        json_of(put(&gw, ADMIN, None, "/api/v1/policy/bundles/block/hello-gate", &json!({"content": DENY_HELLO})));
    assert_eq!(saved["published"], false);
    assert_eq!(saved["draft"], "edit");
    assert_eq!(active_snapshot(&gw), before);
    let (status, _) = gw.submit(ADMIN, None, echo("draft only"));
    assert_eq!(status, 200, "a draft is not live");
    // Tenant-bound admins read but cannot change the shared policy.
    assert_envelope(
        put(&gw, ACME_ADMIN, None, "/api/v1/policy/bundles/secops/x", &json!({"content": DENY_HELLO})),
        403,
    );
    assert_envelope(gw.post(ACME_ADMIN, None, "/api/v1/policy/publish", &json!({})), 403);
    assert_envelope(gw.get(ACME, None, "/api/v1/policy/bundles"), 403);

    // Publish: the very next job is denied by the new rule.
    let published = json_of(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({"message": "close hello"})));
    assert_eq!(published["changed"], true);
    assert_eq!(published["snapshot_before"], before.as_str());
    assert_eq!(published["published"], json!(["block/hello-gate"]));
    assert_eq!(published["changes"]["added"], json!(["block/hello-gate"]));
    let after = published["snapshot_id"].as_str().unwrap().to_string();
    assert_ne!(after, before);
    let denied = assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs", &echo("after publish")), 403);
    assert_eq!(denied["rule_id"], "stop-hello");
    let job: Value =
        gw.get(ADMIN, None, &format!("/api/v1/jobs/{}", denied["job_id"].as_str().unwrap())).json().unwrap();
    assert_eq!(job["safety_snapshot"], after.as_str(), "the job records the snapshot that decided it");

    // The snapshot is immutable and readable; the history says who and what.
    let snap = json_of(gw.get(ADMIN, None, &format!("/api/v1/policy/snapshots/{}", urlencode(&after))));
    let ids: Vec<&str> = snap["bundles"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["block/hello-gate", "hello-pack/safety"], "merge order: bundle ids");
    let history = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"));
    let newest = &history["items"][0];
    assert_eq!(newest["action"], "publish");
    assert_eq!(newest["message"], "close hello");
    assert_eq!(newest["snapshot_id"], after.as_str());
    assert_eq!(newest["previous"], before.as_str());
    assert!(newest["by"].is_string());
    // Nothing is pending any more.
    let bundle = json_of(gw.get(ADMIN, None, "/api/v1/policy/bundles/block%2Fhello-gate"));
    assert_eq!(bundle["published"], true);
    assert!(bundle["draft"].is_null());
    // A second publish with nothing pending changes nothing.
    let again = json_of(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({})));
    assert_eq!(again["changed"], false);

    // Roll back: the job runs again, with no restart.
    let rolled = json_of(gw.post(ADMIN, None, "/api/v1/policy/rollback", &json!({"snapshot_id": before})));
    assert_eq!(rolled["snapshot_id"], before.as_str());
    assert_eq!(rolled["changes"]["removed"], json!(["block/hello-gate"]));
    let (status, body) = gw.submit(ADMIN, None, echo("after rollback"));
    assert_eq!(status, 200, "{body}");
    let history = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"));
    assert_eq!(history["items"][0]["action"], "rollback");
    assert_eq!(history["items"][0]["rollback_to"], before.as_str());
    // The history pages with `limit` and `cursor`, newest first, nothing lost.
    let full = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"))["items"].as_array().unwrap().clone();
    assert!(full.len() >= 3);
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = json_of(gw.get(ADMIN, None, &format!("/api/v1/policy/snapshots?limit=1&cursor={cursor}")));
        paged.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, full);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/policy/snapshots?limt=1"), 400);
    for bad in ["cursor=garbage", "limit=0", "limit=abc"] {
        let env = assert_envelope(gw.get(ADMIN, None, &format!("/api/v1/policy/snapshots?{bad}")), 400);
        assert_eq!(env["code"], "invalid_query", "{bad}: {env}");
    }
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/rollback", &json!({"snapshot_id": "cfg:nope"})), 404);
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/rollback", &json!({"snapshot": "x"})), 400);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn malformed_bundles_are_refused_with_line_and_column() {
    let gw = gateway();
    let before = active_snapshot(&gw);
    let broken = "rules:\n  - id: ok\n    match:\n      topics: [\"job.a.b\"]\n    decision: allow\n  - id: bad\n    decision: [unclosed\n";
    let err = assert_envelope(
        put(&gw, ADMIN, None, "/api/v1/policy/bundles/secops/broken", &json!({"content": broken})),
        400,
    );
    assert_eq!(err["code"], "POLICY_VALIDATION_FAILED");
    let d = &err["diagnostics"][0];
    assert_eq!(d["bundle_id"], "secops/broken");
    let line = d["line"].as_u64().unwrap();
    assert!((6..=8).contains(&line), "line {line}: {err}");
    assert!(d["column"].as_u64().unwrap() > 0, "{err}");
    // A rule that breaks the schema (unknown decision) is placed too.
    let wrong = "rules:\n  - id: r1\n    match:\n      topics: [\"job.a.b\"]\n    decision: maybe\n";
    let err =
        assert_envelope(put(&gw, ADMIN, None, "/api/v1/policy/bundles/secops/wrong", &json!({"content": wrong})), 400);
    assert_eq!(err["diagnostics"][0]["line"], 5, "{err}");
    // Nothing was stored, nothing changed.
    let list = json_of(gw.get(ADMIN, None, "/api/v1/policy/bundles"));
    assert!(!list.to_string().contains("secops/broken") && !list.to_string().contains("secops/wrong"));
    assert_eq!(active_snapshot(&gw), before);
    // Bad ids, unknown fields, pack-owned bundles.
    assert_envelope(put(&gw, ADMIN, None, "/api/v1/policy/bundles/bad%20id", &json!({"content": DENY_HELLO})), 400);
    let unknown = assert_envelope(
        put(&gw, ADMIN, None, "/api/v1/policy/bundles/x", &json!({"content": DENY_HELLO, "x": 1})),
        400,
    );
    assert_eq!(unknown["field"], "x");
    let owned = assert_envelope(
        put(&gw, ADMIN, None, "/api/v1/policy/bundles/hello-pack/safety", &json!({"content": DENY_HELLO})),
        409,
    );
    assert_eq!(owned["code"], "bundle_owned_by_pack");
    assert_envelope(delete(&gw, ADMIN, "/api/v1/policy/bundles/hello-pack/safety"), 409);
    assert_envelope(delete(&gw, ADMIN, "/api/v1/policy/bundles/nope"), 404);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/policy/bundles/nope"), 404);
}

#[test]
fn simulate_and_explain_with_drafts_change_nothing() {
    let gw = gateway();
    let before = active_snapshot(&gw);
    let history_before = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"))["items"].as_array().unwrap().len();
    let req = json!({"topic": "job.hello-pack.echo", "bundles": [{"id": "block/gate", "content": DENY_HELLO}]});
    let sim = json_of(gw.post(ADMIN, None, "/api/v1/policy/simulate", &req));
    assert_eq!(sim["decision"], "DECISION_TYPE_DENY");
    assert_eq!(sim["ruleId"], "stop-hello");
    assert_ne!(sim["policySnapshot"], before.as_str(), "the draft's own id");
    assert_eq!(sim["activeSnapshot"], before.as_str());
    // Without drafts: the active policy.
    let plain = json_of(gw.post(ADMIN, None, "/api/v1/policy/simulate", &json!({"topic": "job.hello-pack.echo"})));
    assert_eq!(plain["decision"], "DECISION_TYPE_ALLOW");
    // Stored drafts on demand.
    json_of(put(&gw, ADMIN, None, "/api/v1/policy/bundles/block/gate", &json!({"content": DENY_HELLO})));
    let with_drafts = json_of(gw.post(
        ADMIN,
        None,
        "/api/v1/policy/explain",
        &json!({"topic": "job.hello-pack.echo", "use_drafts": true}),
    ));
    assert_eq!(with_drafts["ruleId"], "stop-hello");
    // Upstream's per-bundle dry run takes the stored draft.
    let per_bundle = json_of(gw.post(
        ADMIN,
        None,
        "/api/v1/policy/bundles/block/gate/simulate",
        &json!({"request": {"topic": "job.hello-pack.echo"}}),
    ));
    assert_eq!(per_bundle["ruleId"], "stop-hello");
    // A bundle that does not exist is named as such, not silently skipped.
    let req = json!({"request": {"topic": "job.hello-pack.echo"}});
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/bundles/nope/none/simulate", &req), 404);
    let publish_missing = json!({"bundle_ids": ["nope/none"]});
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/publish", &publish_missing), 404);
    // Nothing moved: same active snapshot, same history, the job still runs.
    assert_eq!(active_snapshot(&gw), before);
    let history_after = json_of(gw.get(ADMIN, None, "/api/v1/policy/snapshots"))["items"].as_array().unwrap().len();
    assert_eq!(history_before, history_after);
    let (status, _) = gw.submit(ADMIN, None, echo("still allowed"));
    assert_eq!(status, 200);
    // evaluate takes no drafts.
    assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/evaluate", &req), 400);
    // A draft can be dropped again.
    assert_eq!(delete(&gw, ADMIN, "/api/v1/policy/bundles/block/gate").status().as_u16(), 204);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/policy/bundles/block/gate"), 404);
}

#[test]
fn explain_traces_every_rule_of_a_twenty_rule_policy() {
    let gw = gateway();
    // 19 rules here plus hello-pack's own rule: a 20-rule policy.
    let mut yaml = String::from("rules:\n");
    for i in 0..19 {
        let topic = if i == 14 { "job.hello-pack.*".to_string() } else { format!("job.other-{i}.*") };
        yaml.push_str(&format!(
            "  - id: rule-{i:02}\n    match:\n      topics: [\"{topic}\"]\n    decision: require_approval\n    reason: \"r{i}\"\n"
        ));
    }
    json_of(put(&gw, ADMIN, None, "/api/v1/policy/bundles/aaa/twenty", &json!({"content": yaml})));
    json_of(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({})));
    let out = json_of(gw.post(ADMIN, None, "/api/v1/policy/explain", &json!({"topic": "job.hello-pack.echo"})));
    let trace = out["trace"].as_array().unwrap();
    assert_eq!(trace.len(), 20, "{out}");
    for (i, t) in trace.iter().enumerate() {
        assert_eq!(t["position"], i as u64);
    }
    let decisive: Vec<&Value> = trace.iter().filter(|t| t["decisive"] == true).collect();
    assert_eq!(decisive.len(), 1);
    assert_eq!(decisive[0]["rule_id"], "rule-14");
    assert_eq!(trace[14]["matched"], true);
    assert_eq!(trace[0]["matched"], false);
    assert!(trace[0]["detail"].as_str().unwrap().contains("topic"), "{}", trace[0]);
    // hello-pack's rule also matches, after the deciding one.
    assert_eq!(trace[19]["rule_id"], "hello-pack-allow");
    assert_eq!(trace[19]["matched"], true);
    assert_eq!(trace[19]["decisive"], false);
    assert_eq!(out["ruleId"], "rule-14");
}

#[test]
fn config_scopes_merge_and_stay_inside_their_tenant() {
    let gw = gateway();
    let set = |key: &str, tenant: Option<&str>, body: Value| -> u16 {
        put(&gw, key, tenant, "/api/v1/config", &body).status().as_u16()
    };
    // System (operator only), then acme's org, team, workflow and step.
    assert_eq!(set(ADMIN, None, json!({"limits": {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, "system_only": true})), 204);
    assert_eq!(
        set(ACME_ADMIN, None, json!({"scope": "system", "data": {"limits": {"a": 9}}})),
        403,
        "a tenant admin cannot write system config"
    );
    let scoped = [("org", "acme", "b"), ("team", "t1", "c"), ("workflow", "wf1", "d"), ("step", "s1", "e")];
    for (scope, id, leaf) in scoped {
        let body = json!({"scope": scope, "scope_id": id, "data": {"limits": {leaf: scope}, scope: true}});
        assert_eq!(set(ACME_ADMIN, None, body), 204, "{scope}");
    }
    let eff = json_of(gw.get(ACME_ADMIN, None, "/api/v1/config/effective?team_id=t1&workflow_id=wf1&step_id=s1"));
    assert_eq!(
        eff["data"]["limits"],
        json!({"a": 1, "b": "org", "c": "team", "d": "workflow", "e": "step"}),
        "each later scope wins its leaf: {eff}"
    );
    for flag in ["system_only", "org", "team", "workflow", "step"] {
        assert_eq!(eff["data"][flag], true, "{flag}: {eff}");
    }
    let version = eff["version"].as_str().unwrap();
    assert!(version.starts_with("system:") && version.contains("|org:1|team:1|workflow:1|step:1"), "{version}");
    assert_eq!(eff["hash"].as_str().unwrap().len(), 64);
    // Only the scopes asked for take part.
    let partial = json_of(gw.get(ACME_ADMIN, None, "/api/v1/config/effective?team_id=t1"));
    assert_eq!(partial["data"]["limits"]["d"], 1);
    assert!(partial["version"].as_str().unwrap().ends_with("workflow:0|step:0"));

    // globex sees none of acme's config.
    let globex_admin = GLOBEX; // globex's key is an admin
    assert_envelope(gw.get(globex_admin, None, "/api/v1/config?scope=org&scope_id=acme"), 403);
    assert_envelope(gw.get(globex_admin, None, "/api/v1/config?scope=team&scope_id=t1"), 404);
    let g = json_of(gw.get(globex_admin, None, "/api/v1/config/effective?team_id=t1&workflow_id=wf1&step_id=s1"));
    assert_eq!(g["data"]["limits"], json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}), "{g}");
    assert_envelope(gw.get(globex_admin, None, "/api/v1/config/effective?org_id=acme"), 403);
    // acme reads its own documents, flat or enveloped.
    let org = json_of(gw.get(ACME_ADMIN, None, "/api/v1/config?scope=org"));
    assert_eq!(org["limits"]["b"], "org");
    let env = json_of(gw.get(ACME_ADMIN, None, "/api/v1/config?scope=step&scope_id=s1&envelope=true"));
    assert_eq!(env["revision"], 1);
    assert_eq!(env["data"]["step"], true);
    // Writes replace top-level keys and keep the others; revisions guard.
    assert_eq!(set(ACME_ADMIN, None, json!({"scope": "org", "data": {"extra": 1}, "revision": 1})), 204);
    let org = json_of(gw.get(ACME_ADMIN, None, "/api/v1/config?scope=org"));
    assert_eq!(org["extra"], 1);
    assert_eq!(org["limits"]["b"], "org");
    let stale = assert_envelope(
        put(&gw, ACME_ADMIN, None, "/api/v1/config", &json!({"scope": "org", "data": {"x": 1}, "revision": 1})),
        409,
    );
    assert_eq!(stale["code"], "CONFIG_VERSION_CONFLICT");
    // Errors: bad scope, unknown field, missing document, users cannot read.
    assert_envelope(gw.get(ACME_ADMIN, None, "/api/v1/config?scope=galaxy"), 400);
    let unknown = assert_envelope(
        put(&gw, ACME_ADMIN, None, "/api/v1/config", &json!({"scope": "org", "data": {}, "dtaa": {}})),
        400,
    );
    assert_eq!(unknown["field"], "dtaa");
    assert_envelope(gw.get(ACME_ADMIN, None, "/api/v1/config?scope=workflow&scope_id=none"), 404);
    assert_envelope(gw.get(ACME, None, "/api/v1/config/effective"), 403);
    assert_envelope(put(&gw, ADMIN, None, "/api/v1/config", &json!({"bundles": {}})), 400);
    // The system document keeps pack overlays and the new keys.
    let system = json_of(gw.get(ADMIN, None, "/api/v1/config"));
    assert_eq!(system["system_only"], true);
    assert!(system["pools"].is_object(), "hello-pack's overlay is still there: {system}");
}

#[test]
fn pack_components_read_the_effective_config_of_their_tenant() {
    let gw = gateway();
    // hello-pack echoes `pools.hello-pack` from the effective config; acme
    // overrides it in its org scope, globex does not.
    let body = json!({"scope": "org", "data": {"pools": {"pools": {"hello-pack": {"requires": ["acme-only"]}}}}});
    assert_eq!(put(&gw, ADMIN, Some("acme"), "/api/v1/config", &body).status().as_u16(), 204);
    let (_, a) = gw.submit(ACME, None, echo("a"));
    let a = gw.wait_job(ACME, None, a["job_id"].as_str().unwrap(), super::WAIT);
    assert_eq!(a["result"]["pool"]["requires"][0], "acme-only", "{a}");
    let (_, g) = gw.submit(GLOBEX, None, echo("g"));
    let g = gw.wait_job(GLOBEX, None, g["job_id"].as_str().unwrap(), super::WAIT);
    assert_eq!(g["result"]["pool"]["requires"][0], "local", "{g}");
}

#[test]
fn a_component_bundle_puts_a_registered_policy_component_into_the_policy() {
    let gw = gateway();
    let wasm = std::fs::read(std::path::Path::new(super::harness::TEST_PACKS).join("deny-all-policy.wasm")).unwrap();
    let register = |key: &str, body: Vec<u8>| {
        gw.client
            .post(gw.url("/api/v1/policy/components?name=deny-all"))
            .header("X-API-Key", key)
            .header("Content-Type", "application/wasm")
            .body(body)
            .send()
            .unwrap()
    };
    // Operators only; the component must implement cordum:policy.
    assert_envelope(register(ACME_ADMIN, wasm.clone()), 403);
    assert_envelope(register(ADMIN, b"not wasm".to_vec()), 400);
    // A name goes into YAML the caller pastes back: plain names only.
    for bad in ["a%0A%20%20digest%3A%20deadbeef", "..%2F..%2Fx", &"n".repeat(200)] {
        let resp = gw
            .client
            .post(gw.url(&format!("/api/v1/policy/components?name={bad}")))
            .header("X-API-Key", ADMIN)
            .header("Content-Type", "application/wasm")
            .body(wasm.clone())
            .send()
            .unwrap();
        assert_eq!(assert_envelope(resp, 400)["field"], "name", "{bad}");
    }
    let record = json_of(register(ADMIN, wasm));
    let digest = record["digest"].as_str().unwrap().to_string();
    let content = record["bundle_content"].as_str().unwrap().to_string();
    assert!(content.contains(&digest));
    let listed = json_of(gw.get(ADMIN, None, "/api/v1/policy/components"));
    assert_eq!(listed["items"][0]["digest"], digest.as_str());

    // A bundle naming an unknown component is refused at the digest line.
    let unknown = "# engine\ncomponent:\n  digest: 0000000000000000000000000000000000000000000000000000000000000000\n";
    let err =
        assert_envelope(put(&gw, ADMIN, None, "/api/v1/policy/bundles/zz/engine", &json!({"content": unknown})), 400);
    assert_eq!(err["diagnostics"][0]["line"], 3, "{err}");

    // Drafted: nothing changes; explained with the draft: the component decides last.
    json_of(put(&gw, ADMIN, None, "/api/v1/policy/bundles/zz/engine", &json!({"content": content})));
    let (status, _) = gw.submit(ACME, None, echo("before"));
    assert_eq!(status, 200);
    let out = json_of(gw.post(
        ADMIN,
        None,
        "/api/v1/policy/explain",
        &json!({"topic": "job.hello-pack.echo", "use_drafts": true}),
    ));
    assert_eq!(out["decision"], "DECISION_TYPE_DENY", "{out}");
    assert_eq!(out["ruleId"], "deny-all:tenant-deny-all");
    let trace = out["trace"].as_array().unwrap();
    let last = trace.last().unwrap();
    assert_eq!(last["rule_id"], "deny-all");
    assert_eq!(last["decisive"], true);
    assert_eq!(trace.iter().filter(|t| t["decisive"] == true).count(), 1, "{out}");

    // Published: every tenant's requests go through it, each in its own sandbox.
    let published = json_of(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({"message": "engine"})));
    for key in [ACME, GLOBEX] {
        let denied = assert_envelope(gw.post(key, None, "/api/v1/jobs", &echo("after")), 403);
        assert_eq!(denied["rule_id"], "deny-all:tenant-deny-all", "{denied}");
    }
    let snap = json_of(gw.get(
        ADMIN,
        None,
        &format!("/api/v1/policy/snapshots/{}", urlencode(published["snapshot_id"].as_str().unwrap())),
    ));
    assert!(snap.to_string().contains(&digest));
    // Rolled back: the rules alone decide again.
    json_of(gw.post(ADMIN, None, "/api/v1/policy/rollback", &json!({"snapshot_id": published["snapshot_before"]})));
    let (status, body) = gw.submit(GLOBEX, None, echo("again"));
    assert_eq!(status, 200, "{body}");
}
