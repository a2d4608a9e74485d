//! The pack author's toolchain end to end, with the real binary: a pack
//! scaffolded by `cordum pack new`, built, tested, signed, published to a
//! catalog directory and installed into a gateway under `enforce`, runs a
//! job; unsigned, tampered and foreign-signed bundles are refused with their
//! codes and leave nothing behind.

use crate::harness::{BIN, Gateway, Options, assert_envelope};
use crate::{ADMIN, WAIT, keys_env};
use cordum::packs::archive::{UnpackLimits, read_bundle, write_bundle};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Run `cordum <args>` in `dir` (with the guest target dir host/build.rs
/// uses, so wit-bindgen and serde are already compiled there).
fn cordum(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    cmd.env("CARGO_TARGET_DIR", repo_root().join("target").join("wasm"));
    for var in ["CORDUM_URL", "CORDUM_API_KEY", "CORDUM_TENANT", "CORDUM_PACK_SIGNING_KEY", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cordum")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cordum(dir, args, env);
    assert!(out.status.success(), "cordum {args:?} failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

fn upload(gw: &Gateway, bundle: Vec<u8>) -> reqwest::blocking::Response {
    gw.client
        .post(gw.url("/api/v1/packs/install"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/gzip")
        .body(bundle)
        .send()
        .unwrap()
}

fn components(gw: &Gateway) -> usize {
    std::fs::read_dir(gw.data_dir.join("components")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_scaffolded_pack_is_built_signed_published_installed_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();

    // new: the scaffold.
    ok(work, &["pack", "new", "greeter"], &[]);
    let pack = work.join("greeter");
    for file in ["Cargo.toml", "src/lib.rs", "pack.yaml", "schemas/GreetInput.json", "overlays/policy.fragment.yaml"] {
        assert!(pack.join(file).is_file(), "{file} scaffolded");
    }
    assert!(pack.join("wit/pack/pack.wit").is_file() && pack.join("wit/host/host.wit").is_file());
    let again = cordum(work, &["pack", "new", "greeter"], &[]);
    assert!(!again.status.success() && text(&again).contains("already exists"), "{}", text(&again));
    let bad = cordum(work, &["pack", "new", "Bad_Name"], &[]);
    assert!(!bad.status.success());
    // The dependency versions the guest workspace was built with (reuses its compiled crates).
    std::fs::copy(repo_root().join("plugins/Cargo.lock"), pack.join("Cargo.lock")).unwrap();

    // build: the component and a deterministic bundle.
    let built = ok(&pack, &["pack", "build"], &[]);
    let bundle_path = pack.join("dist/greeter-0.1.0.tgz");
    let unsigned = std::fs::read(&bundle_path).unwrap();
    assert_eq!(built.trim(), format!("sha256 {}", sha256(&unsigned)));
    let files = read_bundle(&unsigned, UnpackLimits::default()).unwrap();
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["component.wasm", "overlays/policy.fragment.yaml", "pack.yaml", "schemas/GreetInput.json"]);
    assert!(files[0].1.starts_with(b"\0asm"), "a wasm component");
    std::fs::write(work.join("unsigned.tgz"), &unsigned).unwrap();

    // test: manifest, schema, fragments, simulations, component and sample jobs, no server.
    let tested = ok(&pack, &["pack", "test"], &[("XDG_CACHE_HOME", work.join("cache").to_str().unwrap())]);
    for line in [
        "ok    manifest greeter@0.1.0",
        "ok    schema greeter/GreetInput",
        "ok    policy fragments greeter/safety",
        "ok    policy simulation allow_greet",
        "ok    component component.wasm",
        "ok    job greets_by_name",
        "ok    job a_missing_name_is_rejected_by_the_schema",
    ] {
        assert!(tested.contains(line), "{line:?} in\n{tested}");
    }
    // A failing expectation fails the command.
    let yaml = std::fs::read_to_string(pack.join("pack.yaml")).unwrap();
    let broken = work.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let mut broken_files = files.clone();
    broken_files.iter_mut().find(|(p, _)| p == "pack.yaml").unwrap().1 =
        yaml.replace("greeting: \"Hello, Ada!\"", "greeting: \"Bye\"").into_bytes();
    std::fs::write(broken.join("broken.tgz"), write_bundle(&broken_files).unwrap()).unwrap();
    let failed = cordum(&broken, &["pack", "test", "broken.tgz"], &[]);
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(text(&failed).contains("FAIL  job greets_by_name"), "{}", text(&failed));

    // keygen: a private key only its owner reads, and the kid=BASE64 line.
    let keys = work.join("keys");
    let trusted = ok(work, &["pack", "keygen", "--kid", "blackbox-dev", "--out", "keys/dev.key"], &[]);
    let trusted = trusted.trim().to_string();
    assert!(trusted.starts_with("blackbox-dev=") && trusted.len() > 50, "{trusted}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("dev.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_to_string(keys.join("dev.key.pub")).unwrap().trim(), trusted);
    let twice = cordum(work, &["pack", "keygen", "--kid", "blackbox-dev", "--out", "keys/dev.key"], &[]);
    assert!(!twice.status.success(), "an existing key is not replaced");
    ok(work, &["pack", "keygen", "--kid", "stranger", "--out", "keys/stranger.key"], &[]);

    // sign: the envelope goes into the bundle; verify checks it like a gateway.
    let key = keys.join("dev.key");
    ok(&pack, &["pack", "sign", "--key", key.to_str().unwrap()], &[]);
    let signed = std::fs::read(&bundle_path).unwrap();
    let signed_files = read_bundle(&signed, UnpackLimits::default()).unwrap();
    let envelope: Value = serde_json::from_slice(
        &signed_files.iter().find(|(p, _)| p == "pack.yaml.sig.json").expect("envelope in the bundle").1,
    )
    .unwrap();
    assert_eq!(envelope["kind"], "PackSignature");
    assert_eq!(envelope["signature"]["key_id"], "blackbox-dev");
    let covered: Vec<&str> =
        envelope["manifest"]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(covered, names, "every file, the component included");
    let verified = ok(&pack, &["pack", "verify", "--trusted-keys", &trusted], &[]);
    assert!(verified.contains("signed by blackbox-dev"), "{verified}");
    let unknown = cordum(&pack, &["pack", "verify", "--trusted-keys", ""], &[]);
    assert!(!unknown.status.success() && text(&unknown).contains("pack.unknown_kid"), "{}", text(&unknown));
    ok(work, &["pack", "sign", "unsigned.tgz", "--key", "keys/stranger.key", "--out", "stranger.tgz"], &[]);

    // publish: into a catalog directory.
    let catalog = work.join("catalog");
    let published = ok(&pack, &["pack", "publish", "--catalog", catalog.to_str().unwrap()], &[]);
    assert_eq!(published.trim(), format!("sha256 {}", sha256(&signed)));
    let listed: Value = serde_json::from_slice(&std::fs::read(catalog.join("catalog.json")).unwrap()).unwrap();
    let entry = &listed["packs"][0];
    assert_eq!((entry["id"].as_str(), entry["version"].as_str()), (Some("greeter"), Some("0.1.0")));
    assert_eq!(entry["sha256"], sha256(&signed));
    assert_eq!(entry["capabilities"], json!(["greeter.greet"]));
    assert_eq!(std::fs::read(catalog.join(entry["url"].as_str().unwrap())).unwrap(), signed);
    // The same version with another bundle needs --force.
    let republish = cordum(work, &["pack", "publish", "unsigned.tgz", "--catalog", "catalog"], &[]);
    assert!(!republish.status.success() && text(&republish).contains("--force"), "{}", text(&republish));

    // A gateway that only installs packs signed by the trusted key.
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec![
            "--catalog".into(),
            catalog.display().to_string(),
            "--pack-signatures".into(),
            "enforce".into(),
            "--pack-trusted-keys".into(),
            trusted.clone(),
        ],
        ..Default::default()
    });
    let market: Value = gw.get(ADMIN, None, "/api/v1/marketplace/packs").json().unwrap();
    let item = market["items"].as_array().unwrap().iter().find(|i| i["id"] == "greeter").cloned().expect("listed");
    assert!(item["installed_version"].is_null(), "{item}");
    let before_components = components(&gw);
    let cli_env = [("CORDUM_URL", gw.base.as_str()), ("CORDUM_API_KEY", ADMIN)];

    // Unsigned, under enforce: refused by the CLI's upload with the code.
    let refused = cordum(work, &["pack", "install", "unsigned.tgz"], &cli_env);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("pack.unsigned") && text(&refused).contains("PACK_INVALID_SIGNATURE"),
        "{}",
        text(&refused)
    );
    // Tampered: one byte of the signed component changed.
    let mut tampered = signed_files.clone();
    tampered.iter_mut().find(|(p, _)| p == "component.wasm").unwrap().1[100] ^= 0x01;
    let body = assert_envelope(upload(&gw, write_bundle(&tampered).unwrap()), 400);
    assert_eq!(body["code"], "PACK_INVALID_SIGNATURE", "{body}");
    assert_eq!(body["signature_code"], "pack.tampered", "{body}");
    assert_eq!(body["step"], "signature");
    // One byte of the bundle file itself changed: refused too.
    let mut flipped = signed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    assert_envelope(upload(&gw, flipped), 400);
    // Signed by a key the gateway does not trust.
    let body = assert_envelope(upload(&gw, std::fs::read(work.join("stranger.tgz")).unwrap()), 400);
    assert_eq!(body["signature_code"], "pack.unknown_kid", "{body}");
    // Nothing of them remains: no record, topic, schema, policy rule or component file.
    let packs: Value = gw.get(ADMIN, None, "/api/v1/packs").json().unwrap();
    assert!(!packs["items"].as_array().unwrap().iter().any(|p| p["id"] == "greeter"), "{packs}");
    let job = json!({"topic": "job.greeter.greet", "input": {"name": "Ada"}});
    assert_eq!(assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs", &job), 400)["code"], "unknown_topic");
    assert_envelope(gw.get(ADMIN, None, "/api/v1/schemas/greeter%2FGreetInput"), 404);
    let decision: Value =
        gw.post(ADMIN, None, "/api/v1/policy/evaluate", &json!({"topic": "job.greeter.greet"})).json().unwrap();
    assert_eq!(decision["decision"], "DECISION_TYPE_DENY", "{decision}");
    assert_eq!(components(&gw), before_components);

    // The signed bundle installs through the CLI's POST and runs a job.
    let installed = cordum(&pack, &["pack", "install"], &cli_env);
    assert!(installed.status.success(), "{}", text(&installed));
    assert!(text(&installed).contains("signed by blackbox-dev"), "{}", text(&installed));
    let (status, submitted) = gw.submit(ADMIN, None, job.clone());
    assert_eq!(status, 200, "{submitted}");
    let done = gw.wait_job(ADMIN, None, submitted["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["result"]["greeting"], "Hello, Ada!");
    assert_eq!(done["safety_rule_id"], "greeter-allow-greet");
    let record: Value = gw.get(ADMIN, None, "/api/v1/packs/greeter").json().unwrap();
    assert_eq!(record["verification"]["signed"], true, "{record}");
    assert_eq!(record["verification"]["key_id"], "blackbox-dev");
    let market: Value = gw.get(ADMIN, None, "/api/v1/marketplace/packs").json().unwrap();
    let item = market["items"].as_array().unwrap().iter().find(|i| i["id"] == "greeter").cloned().unwrap();
    assert_eq!(item["installed_version"], "0.1.0", "{item}");
    assert_eq!(item["installed_status"], "ACTIVE");
    assert_eq!(item["sha256"], sha256(&signed));

    // Uninstalled, it installs again from the catalog it was published to.
    let resp = gw.post(ADMIN, None, "/api/v1/packs/greeter/uninstall", &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let resp = gw.post(ADMIN, None, "/api/v1/marketplace/install", &json!({"pack_id": "greeter"}));
    assert_eq!(resp.status().as_u16(), 200);
    let record: Value = resp.json().unwrap();
    assert_eq!(record["verification"]["key_id"], "blackbox-dev", "{record}");
    let (status, submitted) = gw.submit(ADMIN, None, job);
    assert_eq!(status, 200, "{submitted}");
    let done = gw.wait_job(ADMIN, None, submitted["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(done["result"]["greeting"], "Hello, Ada!", "{done}");
}
