//! `cordum pack`: the pack author's toolchain. `new` scaffolds a Rust
//! component pack; `build` compiles it for wasm32-wasip2 and writes the
//! bundle; `test` checks it locally with the gateway's own runtime and
//! components; `keygen`, `sign` and `verify` handle Ed25519 signatures;
//! `publish` adds the bundle to a catalog directory; `install` uploads it to
//! a running gateway.
//!
//! Every subcommand but `new` and `keygen` acts on the pack in the current
//! directory unless given a path (a pack directory, or a bundle `.tgz`).

mod build;
mod install;
mod keys;
mod new;
mod publish;
mod test;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cordum::packs::archive::{UnpackLimits, read_bundle};
use cordum::packs::manifest::Manifest;
use cordum::packs::signing::BundleFiles;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct PackArgs {
    #[command(subcommand)]
    command: PackCommand,
}

#[derive(Debug, Subcommand)]
enum PackCommand {
    /// Scaffold a Rust component pack in a new directory `<name>/`.
    New(new::NewArgs),
    /// Compile the component (wasm32-wasip2, release) and write the bundle `dist/<id>-<version>.tgz`.
    Build(build::BuildArgs),
    /// Check a pack without a server: manifest, schemas, workflows, policy
    /// fragments and simulations, the component, and the sample jobs of `tests.jobs`.
    Test(test::TestArgs),
    /// Create an Ed25519 signing key pair (the private key file is 0600).
    Keygen(keys::KeygenArgs),
    /// Sign a bundle: write `pack.yaml.sig.json` covering every file into it.
    Sign(keys::SignArgs),
    /// Verify a bundle's signature against trusted keys, as a gateway would.
    Verify(keys::VerifyArgs),
    /// Copy the bundle into a catalog directory and add or update its entry in `catalog.json`.
    Publish(publish::PublishArgs),
    /// Upload the bundle to a running gateway (`POST /api/v1/packs/install`).
    Install(install::InstallArgs),
}

pub async fn run(args: PackArgs) -> Result<()> {
    match args.command {
        PackCommand::New(a) => new::run(a),
        PackCommand::Build(a) => build::run(a).await,
        PackCommand::Test(a) => test::run(a).await,
        PackCommand::Keygen(a) => keys::keygen(a),
        PackCommand::Sign(a) => keys::sign(a),
        PackCommand::Verify(a) => keys::verify(a),
        PackCommand::Publish(a) => publish::run(a),
        PackCommand::Install(a) => install::run(a).await,
    }
}

/// What a subcommand's path argument names.
enum Target {
    /// A pack source directory (holds `pack.yaml`).
    Dir(PathBuf),
    /// A bundle file.
    Bundle(PathBuf),
}

fn target(path: Option<&Path>) -> Result<Target> {
    let path = path.unwrap_or(Path::new("."));
    let meta = std::fs::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    if meta.is_dir() {
        if !path.join("pack.yaml").is_file() {
            bail!("{} holds no pack.yaml (give a pack directory or a bundle .tgz)", path.display());
        }
        Ok(Target::Dir(path.to_path_buf()))
    } else {
        Ok(Target::Bundle(path.to_path_buf()))
    }
}

/// The manifest of a pack directory.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("pack.yaml");
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    Manifest::parse(&bytes).map_err(anyhow::Error::msg).with_context(|| format!("invalid {}", path.display()))
}

/// Where `build` writes a pack directory's bundle.
fn bundle_path(dir: &Path, manifest: &Manifest) -> PathBuf {
    dir.join("dist").join(format!("{}-{}.tgz", manifest.metadata.id, manifest.metadata.version))
}

/// The bundle file a path argument names: the file itself, or the bundle a
/// pack directory's last `build` wrote.
fn bundle_file(path: Option<&Path>) -> Result<PathBuf> {
    match target(path)? {
        Target::Bundle(file) => Ok(file),
        Target::Dir(dir) => {
            let file = bundle_path(&dir, &read_manifest(&dir)?);
            if !file.is_file() {
                bail!("no bundle at {}; run `cordum pack build` first", file.display());
            }
            Ok(file)
        }
    }
}

/// A bundle's bytes and files (with the gateway's unpacking guards).
fn read_bundle_file(file: &Path) -> Result<(Vec<u8>, BundleFiles)> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let files = read_bundle(&bytes, UnpackLimits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is not a usable pack bundle", file.display()))?;
    Ok((bytes, files))
}

/// The manifest inside a bundle.
fn bundle_manifest(files: &[(String, Vec<u8>)]) -> Result<Manifest> {
    let (_, bytes) =
        files.iter().find(|(p, _)| p == "pack.yaml" || p == "pack.yml").context("the bundle holds no pack.yaml")?;
    Manifest::parse(bytes).map_err(anyhow::Error::msg)
}

/// Write a file through a temporary sibling and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// A spinner on stderr (hidden when stderr is not a terminal).
fn spinner(message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
            .unwrap_or(ProgressStyle::default_spinner()),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
