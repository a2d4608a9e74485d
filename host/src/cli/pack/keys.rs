//! `cordum pack keygen`, `sign` and `verify`: Ed25519 keys and bundle signatures.

use super::{bundle_file, bundle_manifest, read_bundle_file, sha256_hex, write_atomic};
use anyhow::{Context, Result, bail};
use clap::Args;
use cordum::packs::archive::write_bundle;
use cordum::packs::signing::{self, KeyFile};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key id the gateway will know the key by (default: derived from the public key).
    #[arg(long)]
    kid: Option<String>,
    /// Private key file to write (default: ~/.config/cordum/keys/<kid>.key);
    /// the public key goes next to it as `<file>.pub`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Pack directory (its dist/ bundle) or bundle file (default: the current directory).
    path: Option<PathBuf>,
    /// Private key file written by `cordum pack keygen`.
    #[arg(long, env = "CORDUM_PACK_SIGNING_KEY")]
    key: PathBuf,
    /// Write the signed bundle here instead of replacing the input.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Pack directory (its dist/ bundle) or bundle file (default: the current directory).
    path: Option<PathBuf>,
    /// Trusted keys, `kid=BASE64,...` (as the gateway's --pack-trusted-keys).
    #[arg(long, env = "CORDUM_PACK_TRUSTED_KEYS")]
    trusted_keys: String,
}

fn default_key_dir() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("cordum").join("keys")
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 128 && kid.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-:".contains(&c))
}

/// Create `path` with mode `mode`, refusing to replace it unless `force`.
fn create_file(path: &Path, mode: u32, force: bool, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if force && path.exists() {
        std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    }
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).with_context(|| {
            match path.exists() {
                true => format!("{} already exists (use --force to replace it)", path.display()),
                false => format!("create {}", path.display()),
            }
        })?;
    file.write_all(bytes).with_context(|| format!("write {}", path.display()))
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let key = signing::generate_key();
    let kid = match args.kid {
        Some(kid) => kid,
        None => format!("ed25519-{}", &sha256_hex(key.verifying_key().as_bytes())[..12]),
    };
    if !valid_kid(&kid) {
        bail!("key id {kid:?} must be 1-128 letters, digits and ._-:");
    }
    let out = args.out.unwrap_or_else(|| default_key_dir().join(format!("{kid}.key")));
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    if !args.force {
        for p in [&out, &pub_path] {
            if p.exists() {
                bail!("{} already exists (use --force to replace it)", p.display());
            }
        }
    }
    let file = KeyFile::new(&kid, &key);
    let mut json = serde_json::to_vec_pretty(&file)?;
    json.push(b'\n');
    create_file(&out, 0o600, args.force, &json)?;
    let entry = file.trusted_key_entry();
    create_file(&pub_path, 0o644, args.force, format!("{entry}\n").as_bytes())?;
    eprintln!(
        "Wrote the private key to {} (mode 0600; keep it secret) and the public key to {}",
        out.display(),
        pub_path.display()
    );
    eprintln!("Trust it on a gateway with --pack-trusted-keys (CORDUM_PACK_TRUSTED_KEYS):");
    println!("{entry}");
    Ok(())
}

fn load_key(path: &Path) -> Result<KeyFile> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("read key {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!("warning: {} is readable by others; chmod 600 it", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("read key {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a key file from `cordum pack keygen`", path.display()))
}

pub fn sign(args: SignArgs) -> Result<()> {
    let file = bundle_file(args.path.as_deref())?;
    let key_file = load_key(&args.key)?;
    let key =
        key_file.signing_key().map_err(anyhow::Error::msg).with_context(|| format!("key {}", args.key.display()))?;
    let (_, files) = read_bundle_file(&file)?;
    let manifest = bundle_manifest(&files).with_context(|| format!("{} has an invalid pack.yaml", file.display()))?;
    let (signed, envelope) = signing::sign_files(&files, &key, &key_file.kid).map_err(anyhow::Error::msg)?;
    let bytes = write_bundle(&signed).context("write the signed bundle")?;
    let out = args.out.unwrap_or(file);
    write_atomic(&out, &bytes)?;
    eprintln!(
        "Signed {}@{} with key {} ({} files covered) -> {}",
        manifest.metadata.id,
        manifest.metadata.version,
        key_file.kid,
        envelope.manifest.files.len(),
        out.display()
    );
    println!("sha256 {}", sha256_hex(&bytes));
    Ok(())
}

pub fn verify(args: VerifyArgs) -> Result<()> {
    let file = bundle_file(args.path.as_deref())?;
    let keys = signing::parse_trusted_keys(&args.trusted_keys).map_err(anyhow::Error::msg)?;
    let (_, files) = read_bundle_file(&file)?;
    match signing::verify(&files, &keys) {
        Ok(Some(v)) => {
            println!(
                "{}@{}: signed by {} at {}, {} files verified",
                v.pack_id, v.pack_version, v.key_id, v.signed_at, v.files
            );
            Ok(())
        }
        Ok(None) => Err(anyhow::anyhow!(signing::SignatureError::Unsigned(format!(
            "{} has no {}",
            file.display(),
            signing::SIGNATURE_FILE
        )))),
        Err(e) => Err(anyhow::anyhow!(e)).with_context(|| format!("{} does not verify", file.display())),
    }
}
