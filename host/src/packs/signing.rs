//! Pack signatures: Ed25519 over a manifest of the bundle's file digests.
//!
//! The envelope is `pack.yaml.sig.json` (upstream's `PackSignature`, also
//! accepted as YAML in `pack.yaml.sig`). Its `manifest` lists every file of
//! the bundle except the envelope itself, the component `.wasm` included
//! (kind `component`; upstream covers only the manifest, schemas, workflows
//! and overlays), each with its sha256 and size. The signed bytes are
//! `"cordum.pack.v1\n"` followed by the compact JSON of that manifest
//! (fields in upstream's order, files sorted by path).
//!
//! This module builds the manifest, signs it, verifies a bundle against a
//! set of trusted keys, and applies the gateway's mode (`off`, `warn`,
//! `enforce`). Outcomes are upstream's codes: `pack.unsigned`,
//! `pack.malformed`, `pack.unknown_kid`, `pack.tampered`,
//! `pack.bad_signature`.

use super::manifest::Manifest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Where the envelope lives in a bundle.
pub const SIGNATURE_FILE: &str = "pack.yaml.sig.json";
/// Upstream's YAML spelling of the same envelope (read, never written).
pub const SIGNATURE_FILE_YAML: &str = "pack.yaml.sig";
pub const DOMAIN: &str = "cordum.pack.v1";
pub const ALGORITHM: &str = "ed25519";
pub const API_VERSION: &str = "cordum.io/v1alpha1";
pub const KIND: &str = "PackSignature";
pub const MANIFEST_VERSION: u32 = 1;

/// A bundle's files as unpacked: (path, bytes).
pub type BundleFiles = Vec<(String, Vec<u8>)>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: EnvelopeMetadata,
    pub signature: SignatureBlock,
    pub manifest: SignedManifest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeMetadata {
    pub pack_id: String,
    pub pack_version: String,
    pub signed_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureBlock {
    pub key_id: String,
    pub algorithm: String,
    /// Base64 (standard alphabet, padded) of the 64-byte signature.
    pub value: String,
    pub domain: String,
}

/// What is signed. Field order is the wire order of the signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    pub version: u32,
    pub pack_id: String,
    pub pack_version: String,
    pub signed_at: String,
    pub algorithm: String,
    pub files: Vec<FileDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// `manifest`, `schema`, `workflow`, `overlay`, `component` or `file`.
    pub kind: String,
}

/// Why a bundle's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("pack.unsigned: {0}")]
    Unsigned(String),
    #[error("pack.malformed: {0}")]
    Malformed(String),
    #[error("pack.unknown_kid: {0}")]
    UnknownKid(String),
    #[error("pack.tampered: {0}")]
    Tampered(String),
    #[error("pack.bad_signature: {0}")]
    BadSignature(String),
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Unsigned(_) => "pack.unsigned",
            SignatureError::Malformed(_) => "pack.malformed",
            SignatureError::UnknownKid(_) => "pack.unknown_kid",
            SignatureError::Tampered(_) => "pack.tampered",
            SignatureError::BadSignature(_) => "pack.bad_signature",
        }
    }
}

fn is_envelope(path: &str) -> bool {
    path == SIGNATURE_FILE || path == SIGNATURE_FILE_YAML
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Decode base64 in any of the usual alphabets (standard or URL-safe, padded or not).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(text).ok())
}

pub fn encode_base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// The kind of a bundle file, from what the pack manifest says of it.
fn kind_of(path: &str, manifest: Option<&Manifest>) -> &'static str {
    if path == "pack.yaml" || path == "pack.yml" {
        return "manifest";
    }
    let same = |p: &str| p.trim_start_matches("./") == path;
    if let Some(m) = manifest {
        if m.component.as_ref().is_some_and(|c| same(&c.path)) {
            return "component";
        }
        if m.resources.schemas.iter().any(|r| same(&r.path)) {
            return "schema";
        }
        if m.resources.workflows.iter().any(|r| same(&r.path)) {
            return "workflow";
        }
        if m.overlays.config.iter().any(|o| same(&o.path)) || m.overlays.policy.iter().any(|o| same(&o.path)) {
            return "overlay";
        }
    }
    match path.split('/').next() {
        Some("schemas") => "schema",
        Some("workflows") => "workflow",
        Some("overlays") => "overlay",
        _ if path.ends_with(".wasm") => "component",
        _ => "file",
    }
}

fn pack_manifest(files: &[(String, Vec<u8>)]) -> Option<Manifest> {
    files
        .iter()
        .find(|(p, _)| p == "pack.yaml" || p == "pack.yml")
        .and_then(|(_, bytes)| serde_yaml::from_slice::<Manifest>(bytes).ok())
}

/// The signed manifest of `files`: every file but the envelope, sorted by path.
pub fn build_manifest(files: &[(String, Vec<u8>)], signed_at: &str) -> Result<SignedManifest, String> {
    let manifest = pack_manifest(files).ok_or("the bundle has no readable pack.yaml")?;
    if manifest.metadata.id.is_empty() || manifest.metadata.version.is_empty() {
        return Err("pack.yaml has no metadata.id or metadata.version".into());
    }
    let mut seen = BTreeSet::new();
    let mut digests = Vec::new();
    for (path, data) in files.iter().filter(|(p, _)| !is_envelope(p)) {
        if path.starts_with('/') || path.split('/').any(|s| s == ".." || s.is_empty()) || path.contains('\\') {
            return Err(format!("{path:?} is not a plain relative path"));
        }
        if !seen.insert(path.clone()) {
            return Err(format!("{path} appears twice"));
        }
        digests.push(FileDigest {
            path: path.clone(),
            sha256: sha_hex(data),
            size_bytes: data.len() as u64,
            kind: kind_of(path, Some(&manifest)).to_string(),
        });
    }
    digests.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SignedManifest {
        version: MANIFEST_VERSION,
        pack_id: manifest.metadata.id.clone(),
        pack_version: manifest.metadata.version.clone(),
        signed_at: signed_at.to_string(),
        algorithm: ALGORITHM.into(),
        files: digests,
    })
}

/// `"cordum.pack.v1\n"` + the compact JSON of the manifest.
pub fn signed_bytes(manifest: &SignedManifest) -> Vec<u8> {
    let mut out = format!("{DOMAIN}\n").into_bytes();
    out.extend(serde_json::to_vec(manifest).expect("a signed manifest serializes"));
    out
}

/// Sign `files` with `key` as `kid`; the envelope is returned, not added.
pub fn sign(files: &[(String, Vec<u8>)], key: &SigningKey, kid: &str) -> Result<Envelope, String> {
    if kid.trim().is_empty() || kid.contains(['=', ',']) {
        return Err(format!("key id {kid:?} must be non-empty and hold no '=' or ','"));
    }
    let signed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = build_manifest(files, &signed_at)?;
    let signature = key.sign(&signed_bytes(&manifest));
    Ok(Envelope {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: EnvelopeMetadata {
            pack_id: manifest.pack_id.clone(),
            pack_version: manifest.pack_version.clone(),
            signed_at,
        },
        signature: SignatureBlock {
            key_id: kid.to_string(),
            algorithm: ALGORITHM.into(),
            value: encode_base64(&signature.to_bytes()),
            domain: DOMAIN.into(),
        },
        manifest,
    })
}

/// `files` with any old envelope replaced by a fresh signature.
pub fn sign_files(files: &[(String, Vec<u8>)], key: &SigningKey, kid: &str) -> Result<(BundleFiles, Envelope), String> {
    let mut out: BundleFiles = files.iter().filter(|(p, _)| !is_envelope(p)).cloned().collect();
    let envelope = sign(&out, key, kid)?;
    let mut json = serde_json::to_vec_pretty(&envelope).expect("an envelope serializes");
    json.push(b'\n');
    out.push((SIGNATURE_FILE.to_string(), json));
    Ok((out, envelope))
}

/// The envelope of `files`, if it has one.
pub fn read_envelope(files: &[(String, Vec<u8>)]) -> Result<Option<Envelope>, SignatureError> {
    let found: Vec<&(String, Vec<u8>)> = files.iter().filter(|(p, _)| is_envelope(p)).collect();
    match found.as_slice() {
        [] => Ok(None),
        [(path, bytes)] => {
            let parsed = if path == SIGNATURE_FILE {
                serde_json::from_slice::<Envelope>(bytes).map_err(|e| e.to_string())
            } else {
                serde_yaml::from_slice::<Envelope>(bytes).map_err(|e| e.to_string())
            };
            parsed.map(Some).map_err(|e| SignatureError::Malformed(format!("{path}: {e}")))
        }
        _ => Err(SignatureError::Malformed(format!("both {SIGNATURE_FILE} and {SIGNATURE_FILE_YAML} are present"))),
    }
}

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub pack_id: String,
    pub pack_version: String,
    pub signed_at: String,
    pub files: usize,
}

/// Check `files` against their envelope: a trusted key, a good signature
/// over the manifest, and every file exactly as listed (none missing, none
/// extra). `Ok(None)`: the bundle is unsigned.
pub fn verify(
    files: &[(String, Vec<u8>)],
    keys: &BTreeMap<String, VerifyingKey>,
) -> Result<Option<Verified>, SignatureError> {
    let Some(envelope) = read_envelope(files)? else {
        return Ok(None);
    };
    let malformed = |m: String| Err(SignatureError::Malformed(m));
    if envelope.api_version != API_VERSION || envelope.kind != KIND {
        return malformed(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, got {:?} {:?}",
            envelope.api_version, envelope.kind
        ));
    }
    let m = &envelope.manifest;
    if m.version != MANIFEST_VERSION {
        return malformed(format!("unsupported signature manifest version {}", m.version));
    }
    if envelope.metadata.pack_id != m.pack_id || envelope.metadata.pack_version != m.pack_version {
        return malformed("metadata and the signed manifest name different packs".into());
    }
    let sig = &envelope.signature;
    if sig.algorithm != ALGORITHM || m.algorithm != ALGORITHM {
        return Err(SignatureError::BadSignature(format!("unsupported algorithm {:?}", sig.algorithm)));
    }
    if sig.domain != DOMAIN {
        return Err(SignatureError::BadSignature(format!("wrong signature domain {:?}", sig.domain)));
    }
    let Some(raw) = decode_base64(&sig.value) else {
        return malformed("the signature value is not base64".into());
    };
    let Ok(signature) = Signature::from_slice(&raw) else {
        return Err(SignatureError::BadSignature(format!("a signature has 64 bytes, not {}", raw.len())));
    };
    let Some(key) = keys.get(&sig.key_id) else {
        return Err(SignatureError::UnknownKid(format!("key {:?} is not trusted by this gateway", sig.key_id)));
    };
    key.verify_strict(&signed_bytes(m), &signature).map_err(|_| {
        SignatureError::BadSignature(format!("the signature does not verify with key {:?}", sig.key_id))
    })?;

    // The signature holds: now the files must be exactly the listed ones.
    let mut listed = BTreeMap::new();
    for f in &m.files {
        if is_envelope(&f.path) || listed.insert(f.path.as_str(), f).is_some() {
            return malformed(format!("the signed manifest lists {} twice or lists the envelope", f.path));
        }
    }
    let mut present = HashSet::new();
    for (path, data) in files.iter().filter(|(p, _)| !is_envelope(p)) {
        let Some(entry) = listed.get(path.as_str()) else {
            return Err(SignatureError::Tampered(format!("{path} is not covered by the signature")));
        };
        if entry.size_bytes != data.len() as u64 || !entry.sha256.eq_ignore_ascii_case(&sha_hex(data)) {
            return Err(SignatureError::Tampered(format!("{path} differs from the signed digest")));
        }
        present.insert(path.as_str());
    }
    if let Some(missing) = listed.keys().find(|p| !present.contains(*p)) {
        return Err(SignatureError::Tampered(format!("{missing} is signed but missing from the bundle")));
    }
    // The signed pack must be the one pack.yaml declares (pack.yaml is covered).
    if let Some(manifest) = pack_manifest(files)
        && (manifest.metadata.id != m.pack_id || manifest.metadata.version != m.pack_version)
    {
        return Err(SignatureError::Tampered(format!(
            "signed as {}@{} but pack.yaml declares {}@{}",
            m.pack_id, m.pack_version, manifest.metadata.id, manifest.metadata.version
        )));
    }
    Ok(Some(Verified {
        key_id: sig.key_id.clone(),
        pack_id: m.pack_id.clone(),
        pack_version: m.pack_version.clone(),
        signed_at: m.signed_at.clone(),
        files: m.files.len(),
    }))
}

/// Parse `kid=BASE64,...` (Ed25519 public keys).
pub fn parse_trusted_keys(raw: &str) -> Result<BTreeMap<String, VerifyingKey>, String> {
    let mut keys = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kid, b64) = pair.split_once('=').ok_or_else(|| format!("trusted key {pair:?} is not kid=BASE64"))?;
        let kid = kid.trim();
        if kid.is_empty() {
            return Err(format!("trusted key {pair:?} has no key id"));
        }
        let key = parse_public_key(b64).map_err(|e| format!("trusted key {kid:?}: {e}"))?;
        if keys.insert(kid.to_string(), key).is_some() {
            return Err(format!("trusted key id {kid:?} is given twice"));
        }
    }
    Ok(keys)
}

/// An Ed25519 public key from base64 (32 bytes).
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = decode_base64(b64).ok_or("not base64")?;
    let bytes: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| format!("an Ed25519 public key has 32 bytes, not {}", bytes.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// How the gateway treats signatures (`--pack-signatures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not checked at all.
    Off,
    /// Unsigned bundles install with a warning; signed ones must verify.
    Warn,
    /// Only bundles signed by a trusted key install.
    Enforce,
}

impl Mode {
    pub fn parse(raw: &str) -> Result<Mode, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Mode::Off),
            "warn" | "" => Ok(Mode::Warn),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!("--pack-signatures must be off, warn or enforce, not {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// Digest of a bundle's file set (paths and contents), to recognise the
/// bundles built into the binary.
pub fn fileset_digest(files: &[(String, Vec<u8>)]) -> String {
    let mut sorted: Vec<(&str, String)> = files.iter().map(|(p, d)| (p.as_str(), sha_hex(d))).collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (path, digest) in sorted {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(digest.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The gateway's signature policy: mode, trusted keys, and the bundles built
/// into the binary (trusted like the binary itself, so `enforce` can start).
#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    pub mode: Mode,
    pub keys: BTreeMap<String, VerifyingKey>,
    pub builtin: HashSet<String>,
}

impl SignaturePolicy {
    pub fn new(mode: &str, trusted_keys: &str) -> Result<Self, String> {
        Ok(Self { mode: Mode::parse(mode)?, keys: parse_trusted_keys(trusted_keys)?, builtin: HashSet::new() })
    }

    /// Trust the bundle with exactly these files as built in.
    pub fn trust_builtin(&mut self, files: &[(String, Vec<u8>)]) {
        self.builtin.insert(fileset_digest(files));
    }

    /// Check an unpacked bundle; `Ok` is what the pack record keeps
    /// (`signed`, `key_id`, `warnings`, …).
    pub fn check(&self, files: &[(String, Vec<u8>)]) -> Result<serde_json::Value, SignatureError> {
        let base = |signed: bool, warnings: Vec<String>| {
            serde_json::json!({
                "signed": signed,
                "mode": self.mode.as_str(),
                "signature_algorithm": ALGORITHM,
                "pack_signature_version": MANIFEST_VERSION,
                "warnings": warnings,
            })
        };
        if self.mode == Mode::Off {
            return Ok(base(false, vec!["pack signatures are not checked (--pack-signatures off)".into()]));
        }
        if self.builtin.contains(&fileset_digest(files)) {
            let mut out = base(false, vec![]);
            out["builtin"] = serde_json::json!(true);
            return Ok(out);
        }
        match verify(files, &self.keys)? {
            Some(v) => {
                let mut out = base(true, vec![]);
                out["key_id"] = serde_json::json!(v.key_id);
                out["kid"] = serde_json::json!(v.key_id);
                out["publisher_id"] = serde_json::json!(v.key_id);
                out["signed_at"] = serde_json::json!(v.signed_at);
                out["verified_at"] = serde_json::json!(chrono::Utc::now());
                out["files"] = serde_json::json!(v.files);
                Ok(out)
            }
            None if self.mode == Mode::Enforce => Err(SignatureError::Unsigned(format!(
                "the bundle has no {SIGNATURE_FILE} and this gateway only installs signed packs"
            ))),
            None => Ok(base(false, vec!["pack accepted unsigned: signatures are not enforced on this gateway".into()])),
        }
    }
}

/// A new random signing key.
pub fn generate_key() -> SigningKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// A private key file as `cordum pack keygen` writes it (JSON, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub kid: String,
    pub algorithm: String,
    /// Base64 of the 32-byte Ed25519 seed.
    pub private_key: String,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
}

impl KeyFile {
    pub fn new(kid: &str, key: &SigningKey) -> Self {
        KeyFile {
            kid: kid.to_string(),
            algorithm: ALGORITHM.into(),
            private_key: encode_base64(key.as_bytes()),
            public_key: encode_base64(key.verifying_key().as_bytes()),
        }
    }

    pub fn signing_key(&self) -> Result<SigningKey, String> {
        if self.algorithm != ALGORITHM {
            return Err(format!("unsupported key algorithm {:?}", self.algorithm));
        }
        let bytes = decode_base64(&self.private_key).ok_or("private_key is not base64")?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| "private_key must hold 32 bytes".to_string())?;
        let key = SigningKey::from_bytes(&seed);
        if encode_base64(key.verifying_key().as_bytes()) != self.public_key.trim() {
            return Err("public_key does not belong to private_key".into());
        }
        Ok(key)
    }

    /// `kid=BASE64`, as `--pack-trusted-keys` takes it.
    pub fn trusted_key_entry(&self) -> String {
        format!("{}={}", self.kid, self.public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK_YAML: &str = "apiVersion: cordum.io/v1alpha1\nkind: Pack\nmetadata: {id: demo, version: 0.1.0}\ncompatibility: {protocolVersion: 1}\ntopics: [{name: job.demo.run}]\ncomponent: {path: component.wasm, world: 'cordum:pack/pack-worker@0.1.0'}\nresources:\n  schemas: [{id: demo/In, path: schemas/In.json}]\noverlays:\n  policy: [{name: safety, path: overlays/policy.yaml}]\n";

    fn bundle() -> Vec<(String, Vec<u8>)> {
        vec![
            ("pack.yaml".into(), PACK_YAML.as_bytes().to_vec()),
            ("schemas/In.json".into(), br#"{"type":"object"}"#.to_vec()),
            ("overlays/policy.yaml".into(), b"rules: []\n".to_vec()),
            ("component.wasm".into(), b"\0asm\x0d\0\x01\0".to_vec()),
        ]
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn keys(kid: &str, k: &SigningKey) -> BTreeMap<String, VerifyingKey> {
        BTreeMap::from([(kid.to_string(), k.verifying_key())])
    }

    fn signed() -> Vec<(String, Vec<u8>)> {
        sign_files(&bundle(), &key(7), "dev").unwrap().0
    }

    fn code(files: &[(String, Vec<u8>)], trusted: &BTreeMap<String, VerifyingKey>) -> &'static str {
        verify(files, trusted).map(|_| "ok").unwrap_or_else(|e| e.code())
    }

    #[test]
    fn signs_every_file_and_verifies() {
        let (files, envelope) = sign_files(&bundle(), &key(7), "dev").unwrap();
        let kinds: Vec<(&str, &str)> =
            envelope.manifest.files.iter().map(|f| (f.path.as_str(), f.kind.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("component.wasm", "component"),
                ("overlays/policy.yaml", "overlay"),
                ("pack.yaml", "manifest"),
                ("schemas/In.json", "schema")
            ]
        );
        let v = verify(&files, &keys("dev", &key(7))).unwrap().unwrap();
        assert_eq!((v.key_id.as_str(), v.pack_id.as_str(), v.files), ("dev", "demo", 4));
        // The signed bytes are the domain line and the compact manifest, fields in order.
        let bytes = String::from_utf8(signed_bytes(&envelope.manifest)).unwrap();
        assert!(bytes.starts_with("cordum.pack.v1\n{\"version\":1,\"pack_id\":\"demo\",\"pack_version\":\"0.1.0\","));
        assert!(!bytes.ends_with('\n'));
        // Re-signing replaces the envelope rather than covering it.
        let (again, _) = sign_files(&files, &key(7), "dev").unwrap();
        assert_eq!(again.iter().filter(|(p, _)| p == SIGNATURE_FILE).count(), 1);
        assert_eq!(code(&again, &keys("dev", &key(7))), "ok");
    }

    #[test]
    fn tampering_is_detected() {
        let trusted = keys("dev", &key(7));
        // One byte of the component changed.
        let mut files = signed();
        files.iter_mut().find(|(p, _)| p == "component.wasm").unwrap().1[0] ^= 1;
        assert_eq!(code(&files, &trusted), "pack.tampered");
        // An extra file.
        let mut files = signed();
        files.push(("overlays/extra.yaml".into(), b"x".to_vec()));
        assert_eq!(code(&files, &trusted), "pack.tampered");
        // A missing file.
        let mut files = signed();
        files.retain(|(p, _)| p != "schemas/In.json");
        assert_eq!(code(&files, &trusted), "pack.tampered");
        // The manifest edited to match the tampered file: the signature breaks.
        let mut files = signed();
        files.iter_mut().find(|(p, _)| p == "component.wasm").unwrap().1[0] ^= 1;
        let wasm = files.iter().find(|(p, _)| p == "component.wasm").unwrap().1.clone();
        let env = files.iter_mut().find(|(p, _)| p == SIGNATURE_FILE).unwrap();
        let mut envelope: Envelope = serde_json::from_slice(&env.1).unwrap();
        envelope.manifest.files.iter_mut().find(|f| f.path == "component.wasm").unwrap().sha256 = sha_hex(&wasm);
        env.1 = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(code(&files, &trusted), "pack.bad_signature");
    }

    #[test]
    fn wrong_key_and_unknown_kid_are_refused() {
        let files = signed();
        // Same kid, another key.
        assert_eq!(code(&files, &keys("dev", &key(8))), "pack.bad_signature");
        // A kid the gateway does not know.
        assert_eq!(code(&files, &keys("prod", &key(7))), "pack.unknown_kid");
        assert_eq!(code(&files, &BTreeMap::new()), "pack.unknown_kid");
    }

    #[test]
    fn malformed_envelopes_and_wrong_domain() {
        let trusted = keys("dev", &key(7));
        let mut files = bundle();
        files.push((SIGNATURE_FILE.into(), b"{not json".to_vec()));
        assert_eq!(code(&files, &trusted), "pack.malformed");
        let edit = |f: &dyn Fn(&mut Envelope)| {
            let mut files = signed();
            let env = files.iter_mut().find(|(p, _)| p == SIGNATURE_FILE).unwrap();
            let mut envelope: Envelope = serde_json::from_slice(&env.1).unwrap();
            f(&mut envelope);
            env.1 = serde_json::to_vec(&envelope).unwrap();
            files
        };
        assert_eq!(code(&edit(&|e| e.kind = "Other".into()), &trusted), "pack.malformed");
        assert_eq!(code(&edit(&|e| e.signature.value = "%%%".into()), &trusted), "pack.malformed");
        assert_eq!(code(&edit(&|e| e.signature.domain = "other".into()), &trusted), "pack.bad_signature");
        assert_eq!(code(&edit(&|e| e.signature.algorithm = "rsa".into()), &trusted), "pack.bad_signature");
        assert_eq!(code(&edit(&|e| e.signature.value = encode_base64(&[0; 10])), &trusted), "pack.bad_signature");
    }

    #[test]
    fn modes_and_builtin_bundles() {
        let dev = key(7);
        let trusted = format!("dev={}", encode_base64(dev.verifying_key().as_bytes()));
        let enforce = SignaturePolicy::new("enforce", &trusted).unwrap();
        let err = enforce.check(&bundle()).unwrap_err();
        assert_eq!(err.code(), "pack.unsigned");
        let ok = enforce.check(&signed()).unwrap();
        assert_eq!((ok["signed"].clone(), ok["key_id"].clone()), (serde_json::json!(true), serde_json::json!("dev")));
        let warn = SignaturePolicy::new("warn", &trusted).unwrap();
        let unsigned = warn.check(&bundle()).unwrap();
        assert_eq!(unsigned["signed"], false);
        assert_eq!(unsigned["warnings"].as_array().unwrap().len(), 1);
        // A bad signature is refused under warn too.
        let mut tampered = signed();
        tampered[0].1.push(b'\n');
        assert_eq!(warn.check(&tampered).unwrap_err().code(), "pack.tampered");
        // Bundles built into the binary are trusted as the binary is.
        let mut builtin = SignaturePolicy::new("enforce", "").unwrap();
        builtin.trust_builtin(&bundle());
        assert_eq!(builtin.check(&bundle()).unwrap()["builtin"], true);
        let mut changed = bundle();
        changed[1].1.push(b' ');
        assert_eq!(builtin.check(&changed).unwrap_err().code(), "pack.unsigned");
        // Off checks nothing.
        assert!(SignaturePolicy::new("off", "").unwrap().check(&tampered).is_ok());
        assert!(SignaturePolicy::new("strict", "").is_err());
    }

    #[test]
    fn trusted_keys_and_key_files() {
        let k = key(3);
        let pub_b64 = encode_base64(k.verifying_key().as_bytes());
        let parsed = parse_trusted_keys(&format!(" a={pub_b64} , b={pub_b64}")).unwrap();
        assert_eq!(parsed.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(parse_trusted_keys("").unwrap().is_empty());
        assert!(parse_trusted_keys("nokey").is_err());
        assert!(parse_trusted_keys("a=AAAA").is_err());
        assert!(parse_trusted_keys(&format!("a={pub_b64},a={pub_b64}")).is_err());
        let file = KeyFile::new("dev", &k);
        assert_eq!(file.signing_key().unwrap().as_bytes(), k.as_bytes());
        assert_eq!(file.trusted_key_entry(), format!("dev={pub_b64}"));
        let mut wrong = file.clone();
        wrong.public_key = encode_base64(key(4).verifying_key().as_bytes());
        assert!(wrong.signing_key().is_err());
        assert_ne!(generate_key().as_bytes(), generate_key().as_bytes());
    }
}
