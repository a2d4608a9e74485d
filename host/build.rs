//! Builds the first-party WebAssembly components from source (the guest
//! workspace in `plugins/`, target wasm32-wasip2), bundles the first-party
//! packs and generates the default catalog with each bundle's sha256.
//! Outputs land in OUT_DIR and are embedded in the binary.

#[path = "src/packs/archive.rs"]
#[allow(dead_code)]
mod archive;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate file stem, copy into OUT_DIR as)
const COMPONENTS: &[&str] = &["policy_rules", "json_schema", "hello_pack", "hostile_pack", "deny_all_policy"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for watched in ["wit", "plugins", "packs", "tests/fixtures"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let wasm_target = root.join("target").join("wasm");
    // CORDUM_GUEST_PREBUILT=1 reuses the guest components built last time
    // (for host-only iterations while a guest is being edited).
    println!("cargo:rerun-if-env-changed=CORDUM_GUEST_PREBUILT");
    if std::env::var("CORDUM_GUEST_PREBUILT").as_deref() != Ok("1") {
        build_guests(&root, &wasm_target);
    }
    let release = wasm_target.join("wasm32-wasip2").join("release");
    for name in COMPONENTS {
        let from = release.join(format!("{name}.wasm"));
        std::fs::copy(&from, out.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }

    // Default catalog: packs/catalog.json lists the first-party packs; each
    // gets bundled with its compiled component and its digest filled in.
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("packs/catalog.json")).expect("read packs/catalog.json"))
            .expect("packs/catalog.json is JSON");
    let mut catalog = source.clone();
    let mut embedded = String::from(
        "/// Bundles of the default catalog, embedded at build time.\npub static BUNDLES: &[(&str, &[u8])] = &[\n",
    );
    for entry in catalog["packs"].as_array_mut().expect("catalog has packs[]") {
        let id = entry["id"].as_str().unwrap().to_string();
        let version = entry["version"].as_str().unwrap().to_string();
        let dir = root.join("packs").join(entry["path"].as_str().unwrap_or(&id));
        let crate_stem = id.replace('-', "_");
        let file = format!("{id}-{version}.tgz");
        let digest = bundle_pack(&dir, &release.join(format!("{crate_stem}.wasm")), &out.join(&file));
        entry["url"] = serde_json::Value::String(format!("embedded:{file}"));
        entry["sha256"] = serde_json::Value::String(digest);
        entry.as_object_mut().unwrap().remove("path");
        embedded.push_str(&format!("    ({file:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))),\n"));
    }
    embedded.push_str("];\n");
    std::fs::write(out.join("catalog.json"), serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    std::fs::write(out.join("embedded_packs.rs"), embedded).unwrap();

    // Test fixture packs (hostile-pack): a catalog with absolute paths, used by
    // the black-box tests through `--catalog`.
    let test_dir = out.join("test-packs");
    std::fs::create_dir_all(&test_dir).unwrap();
    let fixture = root.join("tests/fixtures/hostile-pack");
    let tgz = test_dir.join("hostile-pack-0.1.0.tgz");
    let digest = bundle_pack(&fixture, &release.join("hostile_pack.wasm"), &tgz);
    let test_catalog = serde_json::json!({
        "packs": [{"id": "hostile-pack", "version": "0.1.0", "title": "Hostile test pack",
                    "url": tgz.display().to_string(), "sha256": digest, "default": true}]
    });
    std::fs::write(test_dir.join("catalog.json"), serde_json::to_vec_pretty(&test_catalog).unwrap()).unwrap();
    // A tenant policy component for the tests (denies everything).
    std::fs::copy(release.join("deny_all_policy.wasm"), test_dir.join("deny-all-policy.wasm")).unwrap();
    println!("cargo:rustc-env=CORDUM_TEST_PACKS_DIR={}", test_dir.display());
    println!("cargo:rustc-env=CORDUM_GUEST_WASM_DIR={}", release.display());
}

/// A toolchain installed before `rust-toolchain.toml` named the target
/// lacks it (rustup adds listed targets only when it installs a toolchain),
/// so add it here rather than fail a fresh clone's first build.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    let Some(sysroot) = sysroot.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) else { return };
    if Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2").is_dir() {
        return;
    }
    println!("cargo:warning=adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    let added = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
    if !matches!(added, Ok(s) if s.success()) {
        println!("cargo:warning=could not add wasm32-wasip2; run `rustup target add wasm32-wasip2`");
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    ensure_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // Do not leak the outer build's settings into the guest build.
    for (key, _) in std::env::vars() {
        let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_MAKEFLAGS")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_HTTP_");
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "OUT_DIR"
                    | "NUM_JOBS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CLIPPY_ARGS"
                    | "CLIPPY_CONF_DIR"
            );
        if drop {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("run cargo for the wasm32-wasip2 guests");
    assert!(status.success(), "building the guest components failed (see the output above)");
}

/// Bundle a pack directory (pack.yaml, schemas/, workflows/, overlays/) with
/// its compiled component as `component.wasm`; returns the sha256 hex.
fn bundle_pack(dir: &Path, component: &Path, out: &Path) -> String {
    let mut files = Vec::new();
    files.push(("pack.yaml".to_string(), std::fs::read(dir.join("pack.yaml")).expect("pack.yaml")));
    for sub in ["schemas", "workflows", "overlays"] {
        collect(dir, &dir.join(sub), &mut files);
    }
    files.push(("component.wasm".to_string(), std::fs::read(component).expect("component wasm")));
    let bytes = archive::write_bundle(&files).expect("write bundle");
    std::fs::write(out, &bytes).unwrap();
    hex::encode(Sha256::digest(&bytes))
}

fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in read.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(base, &path, files);
        } else {
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
            files.push((rel, std::fs::read(&path).unwrap()));
        }
    }
}
