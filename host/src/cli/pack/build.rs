//! `cordum pack build`: compile the pack's component for wasm32-wasip2
//! (`cargo build --release`) and write the deterministic bundle
//! `dist/<id>-<version>.tgz`: `pack.yaml`, everything under `schemas/`,
//! `workflows/` and `overlays/`, and the component at `component.path`.

use super::{Target, bundle_path, read_manifest, sha256_hex, spinner, target, write_atomic};
use anyhow::{Context, Result, bail};
use clap::Args;
use cordum::packs::archive::{UnpackLimits, read_bundle, write_bundle};
use cordum::packs::manifest::Manifest;
use cordum::packs::signing::BundleFiles;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Pack directory (default: the current directory).
    path: Option<PathBuf>,
    /// Where to write the bundle (default: dist/<id>-<version>.tgz in the pack).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: BuildArgs) -> Result<()> {
    let Target::Dir(dir) = target(args.path.as_deref())? else {
        bail!("`cordum pack build` takes a pack directory, not a bundle");
    };
    let dir2 = dir.clone();
    let (manifest, files) = tokio::task::spawn_blocking(move || assemble(&dir2)).await??;
    let bytes = write_bundle(&files).context("write the bundle")?;
    // The gateway's own unpacking guards, so a bundle that builds also unpacks.
    read_bundle(&bytes, UnpackLimits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the bundle would be refused by a gateway")?;
    let out = args.out.unwrap_or_else(|| bundle_path(&dir, &manifest));
    write_atomic(&out, &bytes)?;
    eprintln!(
        "Built {}@{}: {} files, {} bytes -> {}",
        manifest.metadata.id,
        manifest.metadata.version,
        files.len(),
        bytes.len(),
        out.display()
    );
    println!("sha256 {}", sha256_hex(&bytes));
    Ok(())
}

/// Compile (when the pack has a component built from a Cargo crate) and
/// collect the bundle's files.
pub fn assemble(dir: &Path) -> Result<(Manifest, BundleFiles)> {
    let manifest = read_manifest(dir)?;
    let component = match &manifest.component {
        Some(spec) if dir.join("Cargo.toml").is_file() => {
            let wasm = compile(dir)?;
            Some((spec.path.clone(), std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))?))
        }
        Some(spec) => {
            // A component built elsewhere, kept in the pack directory.
            let path = dir.join(&spec.path);
            let bytes = std::fs::read(&path).with_context(|| {
                format!("component.path {} does not exist and the pack has no Cargo.toml to build it", spec.path)
            })?;
            Some((spec.path.clone(), bytes))
        }
        None => None,
    };
    let files = collect(dir, &manifest, component)?;
    Ok((manifest, files))
}

/// `cargo build --release --target wasm32-wasip2` in `dir`, with a spinner;
/// returns the component (the crate's cdylib `.wasm`).
fn compile(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_path = dir.join("Cargo.toml").canonicalize().context("locate Cargo.toml")?;
    let bar = spinner(format!("cargo build --release --target wasm32-wasip2 ({})", dir.display()));
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {cargo} (is Rust installed?)"))?;
    // Cargo's status lines and diagnostics: shown on the spinner, kept for errors.
    let stderr = child.stderr.take().expect("piped stderr");
    let status_bar = bar.clone();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let trimmed = line.trim();
            if let Some(what) = ["Compiling", "Downloaded", "Updating", "Locking"]
                .iter()
                .find(|w| trimmed.starts_with(**w))
                .map(|_| trimmed.to_string())
            {
                status_bar.set_message(what);
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut stdout = String::new();
    child.stdout.take().expect("piped stdout").read_to_string(&mut stdout).context("read cargo's output")?;
    let status = child.wait().context("wait for cargo")?;
    let log = log.join().unwrap_or_default();
    bar.finish_and_clear();
    if !status.success() {
        eprint!("{log}");
        let hint = if log.contains("wasm32-wasip2") && log.contains("target may not be installed") {
            " (install the target: rustup target add wasm32-wasip2)"
        } else {
            ""
        };
        bail!("cargo build failed in {}{hint}", dir.display());
    }
    let wasm = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest_path.as_path()))
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f.as_str().map(PathBuf::from)).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    let wasm = wasm.with_context(|| {
        format!("cargo built no .wasm in {}: the crate needs [lib] crate-type = [\"cdylib\"]", dir.display())
    })?;
    eprintln!("Compiled {}", wasm.display());
    Ok(wasm)
}

/// The bundle's files: pack.yaml, the `schemas/`, `workflows/` and
/// `overlays/` trees, and the component. Every file the manifest names must
/// be among them; links are refused.
fn collect(dir: &Path, manifest: &Manifest, component: Option<(String, Vec<u8>)>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = vec![("pack.yaml".to_string(), std::fs::read(dir.join("pack.yaml"))?)];
    for sub in ["schemas", "workflows", "overlays"] {
        walk(dir, &dir.join(sub), &mut files)?;
    }
    if let Some((path, bytes)) = component {
        let path = path.trim_start_matches("./").to_string();
        files.retain(|(p, _)| *p != path);
        files.push((path, bytes));
    }
    let named = manifest
        .resources
        .schemas
        .iter()
        .chain(manifest.resources.workflows.iter())
        .map(|r| r.path.as_str())
        .chain(manifest.overlays.config.iter().map(|o| o.path.as_str()))
        .chain(manifest.overlays.policy.iter().map(|o| o.path.as_str()));
    for path in named {
        let clean = path.trim_start_matches("./");
        if !files.iter().any(|(p, _)| p == clean) {
            bail!("pack.yaml names {path}, which is not in the pack's schemas/, workflows/ or overlays/");
        }
    }
    Ok(files)
}

fn walk(base: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut entries: Vec<_> = read.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        let rel = path.strip_prefix(base).expect("under the pack").to_string_lossy().replace('\\', "/");
        if kind.is_symlink() {
            bail!("{rel} is a symbolic link; bundles hold regular files only");
        } else if kind.is_dir() {
            walk(base, &path, files)?;
        } else if kind.is_file() {
            files.push((rel, std::fs::read(&path).with_context(|| format!("read {}", path.display()))?));
        }
    }
    Ok(())
}
