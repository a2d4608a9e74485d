//! Regressions found by trying to break policy authoring and config:
//! concurrent publishes, policies too big to load, pack-owned ids, reserved
//! ids, spoofed authors, lost `enabled` flags, deep or huge config
//! documents, concurrent config writers, wrapped config bodies.

use super::harness::{Gateway, Options, assert_envelope};
use super::{ADMIN, echo, keys_env};
use serde_json::{Value, json};

fn put(gw: &Gateway, path: &str, body: &Value) -> reqwest::blocking::Response {
    gw.client.put(gw.url(path)).header("X-API-Key", ADMIN).json(body).send().unwrap()
}

fn ok(resp: reqwest::blocking::Response) -> Value {
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert!(status == 200 || status == 204, "{status}: {body}");
    body
}

fn rules(prefix: &str, n: usize) -> String {
    let mut y = String::from("rules:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - id: {prefix}{i}\n    match:\n      topics: [\"job.{prefix}{i}.*\"]\n      labels: {{k{i}: v{i}}}\n    decision: deny\n    reason: \"reason number {i} with some text\"\n"
        ));
    }
    y
}

#[test]
fn concurrent_publishes_leave_a_linear_history_of_real_snapshots() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    for i in 0..6 {
        ok(put(&gw, &format!("/api/v1/policy/bundles/c/b{i}"), &json!({"content": rules(&format!("c{i}x"), 1)})));
    }
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({"bundle_ids": [format!("c/b{i}")]}))
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let history: Value = gw.get(ADMIN, None, "/api/v1/policy/snapshots").json().unwrap();
    let items = history["items"].as_array().unwrap();
    let publishes: Vec<&Value> = items.iter().filter(|h| h["action"] == "publish").collect();
    assert_eq!(publishes.len(), 6, "{history}");
    // Newest first: each entry's previous is the next older entry's snapshot.
    for pair in items.windows(2) {
        assert_eq!(pair[0]["previous"], pair[1]["snapshot_id"], "a linear chain: {history}");
    }
    for h in items {
        let id = h["snapshot_id"].as_str().unwrap();
        let snap = gw.get(ADMIN, None, &format!("/api/v1/policy/snapshots/{}", id.replace('|', "%7C")));
        assert_eq!(snap.status().as_u16(), 200, "every snapshot in the history has its record: {id}");
    }
    assert_eq!(history["active"], items[0]["snapshot_id"]);
    let newest: Value = gw
        .get(ADMIN, None, &format!("/api/v1/policy/snapshots/{}", items[0]["snapshot_id"].as_str().unwrap()))
        .json()
        .unwrap();
    assert_eq!(newest["bundles"].as_array().unwrap().len(), 7, "all six and hello-pack's: {newest}");
}

#[test]
fn a_policy_too_big_for_the_plugin_limits_is_refused_before_it_is_live() {
    let gw = Gateway::start(Options {
        env: {
            let mut env = keys_env();
            env.push(("CORDUM_PLUGIN_MEMORY_BYTES".into(), (16 << 20).to_string()));
            env
        },
        ..Default::default()
    });
    let before: Value = gw.get(ADMIN, None, "/api/v1/policy/bundles").json().unwrap();
    // Alone too big: refused at save.
    let err = assert_envelope(put(&gw, "/api/v1/policy/bundles/big/one", &json!({"content": rules("a", 4000)})), 400);
    assert_eq!(err["code"], "POLICY_VALIDATION_FAILED");
    assert!(err["error"].as_str().unwrap().contains("limits"), "{err}");
    // The same as an inline draft of a dry run: a validation error, not 502.
    let inline = json!({"topic": "job.hello-pack.echo", "bundles": [{"id": "big/one", "content": rules("a", 4000)}]});
    for route in ["/api/v1/policy/simulate", "/api/v1/policy/explain"] {
        let err = assert_envelope(gw.post(ADMIN, None, route, &inline), 400);
        assert_eq!(err["code"], "POLICY_VALIDATION_FAILED", "{route}: {err}");
    }
    // Each half fits, both together do not: refused at publish.
    ok(put(&gw, "/api/v1/policy/bundles/big/half1", &json!({"content": rules("b", 3000)})));
    ok(put(&gw, "/api/v1/policy/bundles/big/half2", &json!({"content": rules("c", 3000)})));
    let err = assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({})), 400);
    assert!(err["error"].as_str().unwrap().contains("limits"), "{err}");
    let after: Value = gw.get(ADMIN, None, "/api/v1/policy/bundles").json().unwrap();
    assert_eq!(before["active_snapshot"], after["active_snapshot"], "nothing went live");
    let (status, body) = gw.submit(ADMIN, None, echo("still served"));
    assert_eq!(status, 200, "{body}");
    // One half alone publishes fine.
    ok(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({"bundle_ids": ["big/half1"]})));
}

#[test]
fn authoring_guards_pack_ids_reserved_ids_authors_and_enabled_flags() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // A draft under an id a pack takes later cannot be published over it.
    ok(gw.post(ADMIN, None, "/api/v1/packs/hello-pack/uninstall", &json!({})));
    ok(put(&gw, "/api/v1/policy/bundles/hello-pack/safety", &json!({"content": rules("h", 1)})));
    ok(gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "hello-pack"})));
    let err = assert_envelope(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({})), 409);
    assert_eq!(err["code"], "bundle_owned_by_pack");
    let (status, _) = gw.submit(ADMIN, None, echo("the pack's rule still decides"));
    assert_eq!(status, 200);

    // `snapshots` is reserved; ids that merely start with it are fine.
    assert_envelope(put(&gw, "/api/v1/policy/bundles/snapshots/x", &json!({"content": rules("s", 1)})), 400);
    ok(put(&gw, "/api/v1/policy/bundles/snapshots2", &json!({"content": rules("s", 1)})));
    let got = ok(gw.get(ADMIN, None, "/api/v1/policy/bundles/snapshots2"));
    assert_eq!(got["id"], "snapshots2");

    // The history names who authenticated, not who the body claims.
    ok(put(&gw, "/api/v1/policy/bundles/team/off", &json!({"content": rules("o", 1), "enabled": false})));
    let out =
        ok(gw.post(ADMIN, None, "/api/v1/policy/publish", &json!({"bundle_ids": ["team/off"], "author": "mallory"})));
    let _ = out;
    let history: Value = gw.get(ADMIN, None, "/api/v1/policy/snapshots").json().unwrap();
    let text = history.to_string();
    assert!(!text.contains("\"by\":\"mallory\""), "{history}");
    // Saving again without `enabled` keeps the bundle disabled.
    let saved = ok(put(&gw, "/api/v1/policy/bundles/team/off", &json!({"content": rules("o", 2)})));
    assert_eq!(saved["enabled"], false, "{saved}");
}

#[test]
fn config_refuses_deep_or_huge_documents_and_merges_concurrent_writers() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // 127 levels deep in a flat body: refused before anything is written.
    let mut deep = json!(1);
    for _ in 0..126 {
        deep = json!({"k": deep});
    }
    let err = assert_envelope(put(&gw, "/api/v1/config", &json!({"deepflat": deep})), 400);
    assert!(err["error"].as_str().unwrap().contains("levels"), "{err}");
    let system = ok(gw.get(ADMIN, None, "/api/v1/config"));
    assert!(system.get("deepflat").is_none());
    // Documents have a size cap (each write fits the body limit; together not).
    let big = "x".repeat(700 * 1024);
    ok(put(&gw, "/api/v1/config", &json!({"scope": "team", "scope_id": "big", "data": {"a": big}})));
    let err = assert_envelope(
        put(&gw, "/api/v1/config", &json!({"scope": "team", "scope_id": "big", "data": {"b": big}})),
        413,
    );
    assert_eq!(err["code"], "CONFIG_TOO_LARGE");
    // Parallel writers of different keys all land.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    put(
                        gw,
                        "/api/v1/config",
                        &json!({"scope": "team", "scope_id": "race", "data": {format!("k{i}"): i}}),
                    )
                    .status()
                    .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let race = ok(gw.get(ADMIN, None, "/api/v1/config?scope=team&scope_id=race&envelope=true"));
    assert_eq!(race["data"].as_object().unwrap().len(), 8, "{race}");
    assert_eq!(race["revision"], 8);
    // A wrapped body with a null or empty scope is a system write of `data`;
    // a scope that is no string is refused.
    ok(put(&gw, "/api/v1/config", &json!({"scope": null, "data": {"from_null": true}})));
    ok(put(&gw, "/api/v1/config", &json!({"scope": "", "data": {"from_empty": true}})));
    let system = ok(gw.get(ADMIN, None, "/api/v1/config"));
    assert_eq!(system["from_null"], true);
    assert_eq!(system["from_empty"], true);
    assert!(system.get("scope").is_none() && system.get("data").is_none(), "{system}");
    let err = assert_envelope(put(&gw, "/api/v1/config", &json!({"scope": 5, "data": {}})), 400);
    assert_eq!(err["field"], "scope");
}
