//! Marketplace catalogs: the default catalog embedded at build time (the
//! first-party packs with their bundles) and catalog files given with
//! `--catalog`. A catalog entry points at a bundle by `url` (`embedded:<file>`,
//! an absolute path, or a path relative to the catalog file) and pins its
//! sha256.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_packs.rs"));
}

const EMBEDDED_CATALOG: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog.json"));
/// Largest bundle read from a catalog.
const MAX_BUNDLE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub packs: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub author: String,
    pub url: String,
    pub sha256: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub risk_tags: Vec<String>,
    /// Installed on first start with an empty data dir.
    #[serde(default)]
    pub default: bool,
    /// `pack` (default), or a plugin: `policy-component`, `schema-validator`.
    #[serde(default = "pack_kind")]
    pub kind: String,
}

fn pack_kind() -> String {
    "pack".into()
}

/// A catalog and where it came from.
#[derive(Debug, Clone)]
pub struct CatalogSource {
    pub name: String,
    pub catalog: Catalog,
    base_dir: Option<PathBuf>,
}

impl CatalogSource {
    /// The first-party catalog built into the binary.
    pub fn embedded() -> CatalogSource {
        CatalogSource {
            name: "builtin".into(),
            catalog: serde_json::from_str(EMBEDDED_CATALOG).expect("embedded catalog is valid JSON"),
            base_dir: None,
        }
    }

    /// A catalog file on disk.
    pub fn from_file(path: &Path) -> Result<CatalogSource, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("catalog {}: {e}", path.display()))?;
        let catalog: Catalog =
            serde_json::from_slice(&bytes).map_err(|e| format!("catalog {}: {e}", path.display()))?;
        Ok(CatalogSource { name: path.display().to_string(), catalog, base_dir: path.parent().map(Path::to_path_buf) })
    }

    /// The bundle bytes an entry points at (the digest is checked by the installer).
    pub fn fetch_bundle(&self, entry: &CatalogEntry) -> Result<Vec<u8>, String> {
        if let Some(name) = entry.url.strip_prefix("embedded:") {
            return embedded::BUNDLES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.to_vec())
                .ok_or_else(|| format!("no embedded bundle named {name}"));
        }
        if entry.url.starts_with("http://") || entry.url.starts_with("https://") {
            return Err(format!("remote catalogs are not supported yet ({})", entry.url));
        }
        let raw = entry.url.strip_prefix("file://").unwrap_or(&entry.url);
        let path = match (&self.base_dir, Path::new(raw).is_absolute()) {
            (Some(base), false) => base.join(raw),
            _ => PathBuf::from(raw),
        };
        let meta = std::fs::metadata(&path).map_err(|e| format!("bundle {}: {e}", path.display()))?;
        if meta.len() > MAX_BUNDLE_BYTES {
            return Err(format!("bundle {} is over {MAX_BUNDLE_BYTES} bytes", path.display()));
        }
        std::fs::read(&path).map_err(|e| format!("bundle {}: {e}", path.display()))
    }
}
