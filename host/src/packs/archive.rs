//! Pack bundle archives (`.tgz`): a deterministic writer and a guarded reader.
//!
//! This file is also compiled into `host/build.rs` (which bundles the
//! first-party packs), so it depends on nothing but std, `tar` and `flate2`.

use std::io::Read;

/// Limits applied when unpacking an untrusted bundle.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { max_files: 2048, max_file_bytes: 32 << 20, max_total_bytes: 256 << 20 }
    }
}

/// Write `files` (path, bytes) as a gzip'd tar with fixed metadata and sorted
/// entries, so the same files always give the same bytes (and digest).
pub fn write_bundle(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, data) in sorted {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_slice())?;
    }
    builder.into_inner()?.finish()
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    Malformed(String),
    UnsafePath(String),
    UnsupportedEntry(String),
    TooLarge(String),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Malformed(m) => write!(f, "malformed bundle: {m}"),
            ArchiveError::UnsafePath(p) => write!(f, "bundle entry escapes the pack root: {p}"),
            ArchiveError::UnsupportedEntry(p) => {
                write!(f, "bundle entry is not a regular file or directory: {p}")
            }
            ArchiveError::TooLarge(m) => write!(f, "bundle too large: {m}"),
        }
    }
}

/// Normalise an entry path; refuse absolute paths and `..`.
fn clean_path(raw: &str) -> Result<String, ArchiveError> {
    if raw.starts_with('/') || raw.starts_with('\\') || raw.contains('\\') || raw.contains(':') {
        return Err(ArchiveError::UnsafePath(raw.to_string()));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ArchiveError::UnsafePath(raw.to_string())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Unpack a `.tgz` into (path, bytes), refusing links, special files, paths
/// outside the root and anything over `limits`. When every entry sits in one
/// top-level directory that holds `pack.yaml`, that directory is stripped.
pub fn read_bundle(bytes: &[u8], limits: UnpackLimits) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(gz);
    let mut files = Vec::new();
    let mut total: u64 = 0;
    let entries = archive.entries().map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let path = clean_path(&raw_path)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            _ => return Err(ArchiveError::UnsupportedEntry(raw_path)),
        }
        if path.is_empty() {
            return Err(ArchiveError::UnsafePath(raw_path));
        }
        if files.len() >= limits.max_files {
            return Err(ArchiveError::TooLarge(format!("more than {} files", limits.max_files)));
        }
        let size = entry.header().size().map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        if size > limits.max_file_bytes {
            return Err(ArchiveError::TooLarge(format!("{path} is over {} bytes", limits.max_file_bytes)));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        if data.len() as u64 > limits.max_file_bytes {
            return Err(ArchiveError::TooLarge(format!("{path} is over {} bytes", limits.max_file_bytes)));
        }
        total += data.len() as u64;
        if total > limits.max_total_bytes {
            return Err(ArchiveError::TooLarge(format!("unpacked size over {} bytes", limits.max_total_bytes)));
        }
        files.push((path, data));
    }
    strip_single_root(&mut files);
    Ok(files)
}

fn strip_single_root(files: &mut [(String, Vec<u8>)]) {
    if files.iter().any(|(p, _)| p == "pack.yaml" || p == "pack.yml") {
        return;
    }
    let Some(first) = files.first().and_then(|(p, _)| p.split('/').next().map(str::to_string)) else {
        return;
    };
    let prefix = format!("{first}/");
    if files.iter().all(|(p, _)| p.starts_with(&prefix))
        && files.iter().any(|(p, _)| p == &format!("{prefix}pack.yaml") || p == &format!("{prefix}pack.yml"))
    {
        for (p, _) in files.iter_mut() {
            *p = p[prefix.len()..].to_string();
        }
    }
}
