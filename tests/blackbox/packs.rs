//! Packs and the marketplace: install from catalogs and by upload,
//! uninstall, guards, policy simulations, the schema registry.

use super::harness::{Gateway, Options, TEST_PACKS, assert_envelope};
use super::{ACME_ADMIN, ADMIN, GLOBEX, WAIT, echo, keys_env};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// A `.tgz` of `files`.
pub fn tgz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Raw name bytes: hostile paths (`../x`) must reach the gateway as given.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn symlink_tgz(target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_link_name(target).unwrap();
    builder.append_data(&mut header, "pack.yaml", std::io::empty()).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// The hostile test pack's worker component (it echoes the input on `*.echo` topics).
fn echo_component() -> Vec<u8> {
    let bytes = std::fs::read(Path::new(TEST_PACKS).join("hostile-pack-0.1.0.tgz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("component.wasm") {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).unwrap();
            return out;
        }
    }
    panic!("no component in the hostile pack bundle");
}

/// A pack `id` with one echo topic, a schema, a workflow, config overlays and
/// a policy fragment (`rules` YAML), expecting `expect` for its topic.
fn pack_files(id: &str, version: &str, rules: &str, expect: &str) -> Vec<(&'static str, Vec<u8>)> {
    let manifest = format!(
        r#"apiVersion: cordum.io/v1alpha1
kind: Pack
metadata:
  id: {id}
  version: {version}
  title: Test pack
compatibility:
  protocolVersion: 1
topics:
  - name: job.{id}.echo
    capability: {id}.echo
    inputSchema: {id}/In
component:
  path: component.wasm
  world: cordum:pack/pack-worker@0.1.0
resources:
  schemas:
    - id: {id}/In
      path: schemas/In.json
  workflows:
    - id: {id}.flow
      path: workflows/flow.yaml
overlays:
  config:
    - name: pools
      scope: system
      key: pools
      strategy: json_merge_patch
      path: overlays/pools.yaml
  policy:
    - name: safety
      strategy: bundle_fragment
      path: overlays/policy.yaml
tests:
  policySimulations:
    - name: echo
      request:
        tenantId: default
        topic: job.{id}.echo
      expectDecision: {expect}
"#
    );
    let workflow = format!(
        "id: {id}.flow\nsteps:\n  one:\n    type: worker\n    topic: job.{id}.echo\n    input:\n      text: \"${{input.text}}\"\n"
    );
    vec![
        ("pack.yaml", manifest.into_bytes()),
        ("component.wasm", echo_component()),
        (
            "schemas/In.json",
            br#"{"type":"object","required":["text"],"properties":{"text":{"type":"string"}}}"#.to_vec(),
        ),
        ("workflows/flow.yaml", workflow.into_bytes()),
        (
            "overlays/pools.yaml",
            format!("topics:\n  job.{id}.echo: {id}\npools:\n  {id}:\n    requires: [local]\n").into_bytes(),
        ),
        ("overlays/policy.yaml", rules.as_bytes().to_vec()),
    ]
}

fn allow_rules(id: &str) -> String {
    format!(
        "rules:\n  - id: {id}-allow\n    match:\n      topics: [\"job.{id}.*\"]\n    decision: allow\n    reason: ok\n"
    )
}

fn upload(gw: &Gateway, key: &str, bundle: Vec<u8>) -> reqwest::blocking::Response {
    gw.client
        .post(gw.url("/api/v1/packs/install"))
        .header("X-API-Key", key)
        .header("Content-Type", "application/gzip")
        .body(bundle)
        .send()
        .unwrap()
}

fn write_catalog(dir: &Path, entries: &[(&str, &str, Vec<u8>)]) {
    let mut packs = Vec::new();
    for (id, version, bundle) in entries {
        let rel = format!("packs/{id}/{version}/pack.tgz");
        std::fs::create_dir_all(dir.join(format!("packs/{id}/{version}"))).unwrap();
        std::fs::write(dir.join(&rel), bundle).unwrap();
        packs.push(json!({"id": id, "version": version, "title": id, "url": rel,
                          "sha256": hex::encode(Sha256::digest(bundle))}));
    }
    std::fs::write(dir.join("catalog.json"), serde_json::to_vec(&json!({"packs": packs})).unwrap()).unwrap();
}

#[test]
fn marketplace_merges_catalogs_installs_and_the_pack_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tgz(&pack_files("shop", "0.1.0", &allow_rules("shop"), "ALLOW"));
    let v2 = tgz(&pack_files("shop", "0.2.0", &allow_rules("shop"), "ALLOW"));
    write_catalog(&tmp.path().join("a"), &[("shop", "0.1.0", v1)]);
    write_catalog(&tmp.path().join("b"), &[("shop", "0.2.0", v2)]);
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec![
            "--catalog".into(),
            tmp.path().join("a").display().to_string(),
            "--catalog".into(),
            tmp.path().join("b").display().to_string(),
        ],
        ..Default::default()
    });
    let market: Value = gw.get(ADMIN, None, "/api/v1/marketplace/packs").json().unwrap();
    let shop = market["items"].as_array().unwrap().iter().find(|i| i["id"] == "shop").cloned().expect("listed");
    assert_eq!(shop["version"], "0.2.0", "newest version wins: {market}");
    assert!(shop["installed_version"].is_null());
    let hello = market["items"].as_array().unwrap().iter().find(|i| i["id"] == "hello-pack").cloned().unwrap();
    assert_eq!(hello["installed_status"], "ACTIVE");

    let resp = gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "shop", "version": "0.1.0"}));
    assert_eq!(resp.status().as_u16(), 200);
    let record: Value = resp.json().unwrap();
    assert_eq!(record["version"], "0.1.0");
    assert_eq!(record["status"], "ACTIVE");
    // Installed again without upgrade: 409; with upgrade, the newest.
    let again = gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "shop"}));
    assert_eq!(assert_envelope(again, 409)["code"], "PACK_ALREADY_INSTALLED");
    let up: Value = gw
        .post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "shop", "upgrade": true}))
        .json()
        .unwrap();
    assert_eq!(up["version"], "0.2.0", "{up}");
    let market: Value = gw.get(ADMIN, None, "/api/v1/marketplace/packs").json().unwrap();
    let shop = market["items"].as_array().unwrap().iter().find(|i| i["id"] == "shop").cloned().unwrap();
    assert_eq!(shop["installed_version"], "0.2.0");
    assert_eq!(shop["installed_status"], "ACTIVE");

    // Its topic runs on its component, its schema applies, its workflow runs.
    let (status, body) = gw.submit(ACME_ADMIN, None, json!({"topic": "job.shop.echo", "input": {"text": "hi"}}));
    assert_eq!(status, 200, "{body}");
    let job = gw.wait_job(ACME_ADMIN, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["result"]["text"], "hi");
    assert_eq!(job["safety_rule_id"], "shop-allow");
    let bad = gw.post(ACME_ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.shop.echo", "input": {}}));
    assert_eq!(assert_envelope(bad, 400)["code"], "schema_validation_failed");
    let packs: Value = gw.get(ADMIN, None, "/api/v1/packs").json().unwrap();
    let listed = packs["items"].as_array().unwrap().iter().find(|p| p["id"] == "shop").cloned().unwrap();
    assert_eq!(listed["manifest"]["topics"][0]["name"], "job.shop.echo");
    assert!(listed["component"]["digest"].is_string());
    assert!(listed["workflows"]["shop.flow"].is_string());
    let wf = gw.get(ADMIN, None, "/api/v1/workflows/shop.flow");
    assert_eq!(wf.status().as_u16(), 200);
    // Errors: unknown pack, unknown catalog, unknown field, tenant-bound admin.
    assert_envelope(gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "nope"})), 404);
    assert_envelope(
        gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "shop", "catalog_id": "zzz"})),
        404,
    );
    let unknown = assert_envelope(gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack": "shop"})), 400);
    assert_eq!(unknown["field"], "pack");
    assert_envelope(gw.post(GLOBEX, None, "/api/v1/marketplace/install", &json!({"pack_id": "shop"})), 403);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/packs/nope"), 404);
}

#[test]
fn install_then_uninstall_leaves_everything_as_before() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let before_workflows: Value = gw.get(ADMIN, None, "/api/v1/workflows").json().unwrap();
    let before_schemas: Value = gw.get(ADMIN, None, "/api/v1/schemas").json().unwrap();
    // The hello-pack echo reports its pool config, read through cordum:host: a view of system config.
    let pool_of = |gw: &Gateway| {
        let (_, body) = gw.submit(ADMIN, None, echo("pool"));
        gw.wait_job(ADMIN, None, body["job_id"].as_str().unwrap(), WAIT)["result"]["pool"].clone()
    };
    let before_pool = pool_of(&gw);

    // The pack's overlay also touches hello-pack's pool (an existing key), and denies nothing.
    let mut files = pack_files("extra", "1.0.0", &allow_rules("extra"), "ALLOW");
    files.retain(|(p, _)| *p != "overlays/pools.yaml");
    files.push((
        "overlays/pools.yaml",
        b"topics:\n  job.extra.echo: extra\npools:\n  extra:\n    requires: [gpu]\n  hello-pack:\n    requires: [changed]\n"
            .to_vec(),
    ));
    let resp = upload(&gw, ADMIN, tgz(&files));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    assert_eq!(pool_of(&gw)["requires"][0], "changed");
    let schema = gw.get(ADMIN, None, "/api/v1/schemas/extra%2FIn");
    assert_eq!(schema.status().as_u16(), 200);
    let (status, _) = gw.submit(ADMIN, None, json!({"topic": "job.extra.echo", "input": {"text": "x"}}));
    assert_eq!(status, 200);

    let resp = gw.post(ADMIN, None, "/api/v1/packs/extra/uninstall", &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().unwrap()["status"], "DISABLED");
    assert_eq!(pool_of(&gw), before_pool, "config is back as it was");
    let after_workflows: Value = gw.get(ADMIN, None, "/api/v1/workflows").json().unwrap();
    assert_eq!(after_workflows, before_workflows);
    let after_schemas: Value = gw.get(ADMIN, None, "/api/v1/schemas").json().unwrap();
    assert_eq!(after_schemas, before_schemas);
    let gone = gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.extra.echo", "input": {"text": "x"}}));
    assert_eq!(assert_envelope(gone, 400)["code"], "unknown_topic");
    let explained: Value =
        gw.post(ADMIN, None, "/api/v1/policy/explain", &json!({"topic": "job.extra.echo"})).json().unwrap();
    assert!(!explained.to_string().contains("extra-allow"), "the pack's rules are gone: {explained}");
    // Uninstalling again: 404. The record stays listed as DISABLED.
    assert_envelope(gw.post(ADMIN, None, "/api/v1/packs/extra/uninstall", &json!({})), 404);
    let record: Value = gw.get(ADMIN, None, "/api/v1/packs/extra").json().unwrap();
    assert_eq!(record["status"], "DISABLED");
    // And it installs again.
    let resp = upload(&gw, ADMIN, tgz(&pack_files("extra", "1.0.1", &allow_rules("extra"), "ALLOW")));
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn a_pack_that_denies_a_topic_changes_the_next_evaluation_and_uninstall_reverts_it() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // Bundle ids merge in order: `aaa-deny/safety` comes before `hello-pack/safety`.
    let rules = "rules:\n  - id: no-hello\n    match:\n      topics: [\"job.hello-pack.echo\"]\n    decision: deny\n    reason: closed\n";
    let mut files = pack_files("aaa-deny", "0.1.0", rules, "DENY");
    // The simulation now checks the hello topic.
    let manifest = String::from_utf8(files[0].1.clone())
        .unwrap()
        .replace("topic: job.aaa-deny.echo\n      expectDecision", "topic: job.hello-pack.echo\n      expectDecision");
    files[0].1 = manifest.into_bytes();
    let resp = upload(&gw, ADMIN, tgz(&files));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let denied = gw.post(ADMIN, None, "/api/v1/jobs", &echo("no"));
    assert_eq!(assert_envelope(denied, 403)["rule_id"], "no-hello");
    gw.post(ADMIN, None, "/api/v1/packs/aaa-deny/uninstall", &json!({}));
    let (status, body) = gw.submit(ADMIN, None, echo("yes"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_failing_policy_simulation_rolls_the_install_back() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // The pack expects ALLOW for its topic, but its fragment denies it.
    let rules = "rules:\n  - id: oops\n    match:\n      topics: [\"job.sim.*\"]\n    decision: deny\n    reason: no\n";
    let resp = upload(&gw, ADMIN, tgz(&pack_files("sim", "0.1.0", rules, "ALLOW")));
    let env = assert_envelope(resp, 400);
    assert_eq!(env["step"], "policy_simulations", "{env}");
    assert!(env["error"].as_str().unwrap().contains("expected ALLOW"), "{env}");
    assert_envelope(gw.get(ADMIN, None, "/api/v1/packs/sim"), 404);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/schemas/sim%2FIn"), 404);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/workflows/sim.flow"), 404);
    let gone = gw.post(ADMIN, None, "/api/v1/jobs", &json!({"topic": "job.sim.echo", "input": {"text": "x"}}));
    assert_eq!(assert_envelope(gone, 400)["code"], "unknown_topic");
}

#[test]
fn tampered_and_hostile_bundles_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tgz(&pack_files("tamper", "0.1.0", &allow_rules("tamper"), "ALLOW"));
    write_catalog(tmp.path(), &[("tamper", "0.1.0", good.clone())]);
    // One byte changed in the bundle the catalog points at.
    let path = tmp.path().join("packs/tamper/0.1.0/pack.tgz");
    let mut bytes = good.clone();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec!["--catalog".into(), tmp.path().display().to_string()],
        ..Default::default()
    });
    let resp = gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "tamper"}));
    let env = assert_envelope(resp, 400);
    assert_eq!(env["step"], "digest", "{env}");
    assert_envelope(gw.get(ADMIN, None, "/api/v1/packs/tamper"), 404);

    // Path escapes and links in the archive.
    let outside = tmp.path().join("escape");
    for bundle in [
        tgz(&[("pack.yaml", b"x".to_vec()), ("../escape", b"pwned".to_vec())]),
        tgz(&[("/tmp/abs-escape", b"pwned".to_vec())]),
        symlink_tgz("/etc/passwd"),
    ] {
        let env = assert_envelope(upload(&gw, ADMIN, bundle), 400);
        assert_eq!(env["step"], "unpack", "{env}");
    }
    assert!(!outside.exists());
    assert!(!Path::new("/tmp/abs-escape").exists());
    // Not a bundle at all, empty, wrong media type, not an operator.
    assert_envelope(upload(&gw, ADMIN, b"not a tgz".to_vec()), 400);
    assert_envelope(upload(&gw, ADMIN, Vec::new()), 400);
    let json_body = gw.post(ADMIN, None, "/api/v1/packs/install", &json!({}));
    assert_envelope(json_body, 415);
    assert_envelope(upload(&gw, ACME_ADMIN, good.clone()), 403);
    // A form with two bundles, or an upgrade flag that is no boolean, is refused.
    let part = || reqwest::blocking::multipart::Part::bytes(good.clone()).file_name("pack.tgz");
    let two = reqwest::blocking::multipart::Form::new().part("bundle", part()).part("bundle", part());
    let resp =
        gw.client.post(gw.url("/api/v1/packs/install")).header("X-API-Key", ADMIN).multipart(two).send().unwrap();
    assert_eq!(assert_envelope(resp, 400)["field"], "bundle");
    let maybe = reqwest::blocking::multipart::Form::new().part("bundle", part()).text("upgrade", "maybe");
    let resp =
        gw.client.post(gw.url("/api/v1/packs/install")).header("X-API-Key", ADMIN).multipart(maybe).send().unwrap();
    assert_eq!(assert_envelope(resp, 400)["field"], "upgrade");
    // The good bundle still installs, by multipart upload too.
    let form = reqwest::blocking::multipart::Form::new()
        .part("bundle", reqwest::blocking::multipart::Part::bytes(good).file_name("pack.tgz"));
    let resp =
        gw.client.post(gw.url("/api/v1/packs/install")).header("X-API-Key", ADMIN).multipart(form).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
}

#[test]
fn remote_catalogs_on_private_addresses_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tgz(&pack_files("remote", "0.1.0", &allow_rules("remote"), "ALLOW"));
    write_catalog(tmp.path(), &[("remote", "0.1.0", bundle)]);
    let server = tiny_http_server(tmp.path().to_path_buf());
    let url = format!("http://127.0.0.1:{server}/catalog.json");
    let gw =
        Gateway::start(Options { env: keys_env(), args: vec!["--catalog".into(), url.clone()], ..Default::default() });
    let market: Value = gw.get(ADMIN, None, "/api/v1/marketplace/packs").json().unwrap();
    let catalog = market["catalogs"].as_array().unwrap().iter().find(|c| c["url"] == url.as_str()).cloned().unwrap();
    assert!(catalog["error"].as_str().unwrap().contains("not allowed"), "{catalog}");
    assert!(!market["items"].as_array().unwrap().iter().any(|i| i["id"] == "remote"));
    drop(gw);
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec!["--catalog".into(), url.clone(), "--marketplace-allow-private".into()],
        ..Default::default()
    });
    let resp = gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "remote"}));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
}

/// Serve files of `dir` over HTTP/1.0 on a free loopback port.
fn tiny_http_server(dir: std::path::PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            match std::fs::read(dir.join(&path)) {
                Ok(body) => {
                    let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(&body);
                }
                Err(_) => {
                    let _ = write!(stream, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        }
    });
    port
}

#[test]
fn schema_ids_with_a_slash_round_trip() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let schema = json!({"type": "object", "required": ["a"]});
    let resp = gw.post(ADMIN, None, "/api/v1/schemas", &json!({"id": "team/Thing", "schema": schema}));
    assert_eq!(resp.status().as_u16(), 201);
    let got: Value = gw.get(ADMIN, None, "/api/v1/schemas/team%2FThing").json().unwrap();
    assert_eq!(got["schema"], schema);
    let raw: Value = gw.get(ACME_ADMIN, None, "/api/v1/schemas/team/Thing").json().unwrap();
    assert_eq!(raw["id"], "team/Thing");
    let list: Value = gw.get(ADMIN, None, "/api/v1/schemas").json().unwrap();
    assert!(list["schemas"].as_array().unwrap().iter().any(|s| s == "team/Thing"));
    // A broken schema is refused with the reason; a pack's cannot be replaced; tenant admins cannot write.
    let broken = gw.post(ADMIN, None, "/api/v1/schemas", &json!({"id": "team/Bad", "schema": {"type": 12}}));
    let env = assert_envelope(broken, 400);
    assert!(env["reason"].is_string(), "{env}");
    let owned = gw.post(ADMIN, None, "/api/v1/schemas", &json!({"id": "hello-pack/EchoInput", "schema": {}}));
    assert_envelope(owned, 409);
    assert_envelope(gw.post(ACME_ADMIN, None, "/api/v1/schemas", &json!({"id": "x/y", "schema": {}})), 403);
    let bad_id = gw.post(ADMIN, None, "/api/v1/schemas", &json!({"id": "../x", "schema": {}}));
    assert_envelope(bad_id, 400);
    // Delete (twice: absent is fine), then it is gone.
    for _ in 0..2 {
        let del = gw.client.delete(gw.url("/api/v1/schemas/team%2FThing")).header("X-API-Key", ADMIN).send().unwrap();
        assert_eq!(del.status().as_u16(), 204);
    }
    assert_envelope(gw.get(ADMIN, None, "/api/v1/schemas/team%2FThing"), 404);
}

pub fn plugin_bundle(id: &str, world: &str, wasm: Vec<u8>) -> Vec<u8> {
    let manifest = format!(
        "apiVersion: cordum.io/v1alpha1\nkind: Plugin\nmetadata:\n  id: {id}\n  version: 1.0.0\ncomponent:\n  path: plugin.wasm\n  world: {world}\n"
    );
    tgz(&[("plugin.yaml", manifest.into_bytes()), ("plugin.wasm", wasm)])
}

#[test]
fn plugins_from_the_marketplace_install_per_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let deny_all = std::fs::read(Path::new(TEST_PACKS).join("deny-all-policy.wasm")).unwrap();
    let validator = std::fs::read(Path::new(env!("CORDUM_GUEST_WASM_DIR")).join("json_schema.wasm")).unwrap();
    let policy = plugin_bundle("strict", "cordum:policy/policy-plugin@0.1.0", deny_all.clone());
    let schema = plugin_bundle("alt-validator", "cordum:schema/schema-plugin@0.1.0", validator);
    let wrong = plugin_bundle("wrong-world", "cordum:schema/schema-plugin@0.1.0", deny_all);
    let mut packs = Vec::new();
    for (id, kind, bundle) in [
        ("strict", "policy-component", &policy),
        ("alt-validator", "schema-validator", &schema),
        ("wrong-world", "schema-validator", &wrong),
    ] {
        std::fs::write(tmp.path().join(format!("{id}.tgz")), bundle).unwrap();
        packs.push(json!({"id": id, "version": "1.0.0", "kind": kind, "url": format!("{id}.tgz"),
                          "sha256": hex::encode(Sha256::digest(bundle))}));
    }
    std::fs::write(tmp.path().join("catalog.json"), serde_json::to_vec(&json!({"packs": packs})).unwrap()).unwrap();
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec!["--catalog".into(), tmp.path().display().to_string()],
        ..Default::default()
    });
    // A tenant admin installs a policy engine for its own tenant.
    let resp = gw.post(ACME_ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "strict"}));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let denied = assert_envelope(gw.post(ACME_ADMIN, None, "/api/v1/jobs", &echo("acme")), 403);
    assert_eq!(denied["rule_id"], "tenant:tenant-deny-all");
    let (status, _) = gw.submit(GLOBEX, None, echo("globex"));
    assert_eq!(status, 200, "another tenant is not affected");
    let item = |key: &str, id: &str| -> Value {
        let market: Value = gw.get(key, None, "/api/v1/marketplace/packs").json().unwrap();
        market["items"].as_array().unwrap().iter().find(|i| i["id"] == id).cloned().unwrap()
    };
    assert_eq!(item(ACME_ADMIN, "strict")["installed_version"], "1.0.0");
    assert_eq!(item(ACME_ADMIN, "strict")["kind"], "policy-component");
    assert!(item(GLOBEX, "strict")["installed_version"].is_null());
    let component: Value = gw.get(ACME_ADMIN, None, "/api/v1/policy/component").json().unwrap();
    assert_eq!(component["plugin"], "strict@1.0.0");
    // A schema validator for globex: validation goes on through it.
    let resp = gw.post(GLOBEX, None, "/api/v1/marketplace/install", &json!({"pack_id": "alt-validator"}));
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    assert_eq!(item(GLOBEX, "alt-validator")["installed_version"], "1.0.0");
    let bad = gw.post(GLOBEX, None, "/api/v1/jobs", &json!({"topic": "job.hello-pack.echo", "input": {}}));
    assert_eq!(assert_envelope(bad, 400)["code"], "schema_validation_failed");
    // A plugin whose component does not implement its kind's world is refused.
    let resp = gw.post(GLOBEX, None, "/api/v1/marketplace/install", &json!({"pack_id": "wrong-world"}));
    let env = assert_envelope(resp, 400);
    assert!(env["error"].as_str().unwrap().contains("cordum:schema"), "{env}");
}
