//! The marketplace: the configured catalogs (the built-in one, catalog
//! files, directories holding a `catalog.json`, and http(s) URLs) merged
//! into one listing where the newest version of each pack wins, and the
//! download of a chosen entry's bundle.
//!
//! Remote catalogs and bundles are fetched with guards: http(s) only, a
//! timeout, size caps (8 MiB for a catalog, 64 MiB for a bundle), no
//! redirects, and the host must resolve to public addresses only (loopback,
//! private, link-local and other special ranges are refused unless the
//! operator allows private networks); the connection is pinned to the
//! addresses that were checked.

use super::catalog::{Catalog, CatalogEntry, CatalogSource};
use serde::Serialize;
use std::cmp::Ordering;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAX_CATALOG_BYTES: usize = 8 << 20;
const MAX_BUNDLE_BYTES: usize = 64 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a configured catalog lives.
#[derive(Debug, Clone)]
pub enum CatalogLocation {
    Builtin,
    File(PathBuf),
    Url(String),
}

impl CatalogLocation {
    /// A `--catalog` value: a URL, a directory (its `catalog.json`) or a file.
    pub fn parse(raw: &str) -> CatalogLocation {
        if raw.starts_with("http://") || raw.starts_with("https://") {
            return CatalogLocation::Url(raw.to_string());
        }
        let path = PathBuf::from(raw.strip_prefix("file://").unwrap_or(raw));
        if path.is_dir() { CatalogLocation::File(path.join("catalog.json")) } else { CatalogLocation::File(path) }
    }

    pub fn display(&self) -> String {
        match self {
            CatalogLocation::Builtin => "builtin".into(),
            CatalogLocation::File(p) => p.display().to_string(),
            CatalogLocation::Url(u) => u.clone(),
        }
    }
}

/// One catalog as listed (with its fetch error, if any).
#[derive(Debug, Clone, Serialize)]
pub struct CatalogStatus {
    pub id: String,
    pub url: String,
    pub updated_at: Option<String>,
    pub error: Option<String>,
}

/// A loaded catalog.
pub enum Loaded {
    Local(CatalogSource),
    Remote { url: reqwest::Url, catalog: Catalog },
}

impl Loaded {
    pub fn catalog(&self) -> &Catalog {
        match self {
            Loaded::Local(source) => &source.catalog,
            Loaded::Remote { catalog, .. } => catalog,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("{0}")]
    Fetch(String),
    #[error("{0}")]
    NotFound(String),
}

pub struct Marketplace {
    catalogs: Vec<(String, CatalogLocation)>,
    allow_private: bool,
}

/// Is this an address a remote catalog may point at?
fn public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_ip(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Compare versions as dotted integers (an optional leading `v`); anything
/// else falls back to text order.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |v: &str| -> Option<Vec<u64>> {
        let v = v.trim().trim_start_matches('v');
        if v.contains(['-', '+']) {
            return None;
        }
        v.split('.').map(|p| p.parse::<u64>().ok()).collect()
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl Marketplace {
    /// `locations`: the `--catalog` values, after the built-in catalog.
    pub fn new(locations: &[String], allow_private: bool) -> Self {
        let mut catalogs = vec![("builtin".to_string(), CatalogLocation::Builtin)];
        for (i, raw) in locations.iter().enumerate() {
            catalogs.push((format!("catalog-{}", i + 1), CatalogLocation::parse(raw)));
        }
        Self { catalogs, allow_private }
    }

    pub fn catalog_ids(&self) -> Vec<String> {
        self.catalogs.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Fetch over http(s) with the guards described in the module doc.
    async fn fetch(&self, url: &reqwest::Url, cap: usize) -> Result<Vec<u8>, String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme {:?}", url.scheme()));
        }
        let host = url.host_str().ok_or("URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("URL has no port")?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        if !self.allow_private
            && let Some(bad) = addrs.iter().find(|a| !public_ip(a.ip()))
        {
            return Err(format!(
                "{host} resolves to {} (loopback, private or link-local addresses are not allowed)",
                bad.ip()
            ));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .resolve_to_addrs(&host, &addrs)
            .build()
            .map_err(|e| e.to_string())?;
        let mut response = client.get(url.clone()).send().await.map_err(|e| format!("fetch {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetch {url}: HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|len| len as usize > cap) {
            return Err(format!("{url} is larger than {cap} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("fetch {url}: {e}"))? {
            if body.len() + chunk.len() > cap {
                return Err(format!("{url} is larger than {cap} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn load(&self, location: &CatalogLocation) -> Result<Loaded, String> {
        match location {
            CatalogLocation::Builtin => Ok(Loaded::Local(CatalogSource::embedded())),
            CatalogLocation::File(path) => CatalogSource::from_file(path).map(Loaded::Local),
            CatalogLocation::Url(raw) => {
                let url = reqwest::Url::parse(raw).map_err(|e| format!("catalog URL {raw}: {e}"))?;
                let bytes = self.fetch(&url, MAX_CATALOG_BYTES).await?;
                let catalog: Catalog = serde_json::from_slice(&bytes).map_err(|e| format!("catalog {raw}: {e}"))?;
                Ok(Loaded::Remote { url, catalog })
            }
        }
    }

    /// Every catalog, loaded (a catalog that fails is reported, not fatal).
    pub async fn load_all(&self) -> (Vec<CatalogStatus>, Vec<(String, Loaded)>) {
        let mut statuses = Vec::new();
        let mut loaded = Vec::new();
        for (id, location) in &self.catalogs {
            match self.load(location).await {
                Ok(l) => {
                    statuses.push(CatalogStatus {
                        id: id.clone(),
                        url: location.display(),
                        updated_at: l.catalog().updated_at.clone(),
                        error: None,
                    });
                    loaded.push((id.clone(), l));
                }
                Err(e) => statuses.push(CatalogStatus {
                    id: id.clone(),
                    url: location.display(),
                    updated_at: None,
                    error: Some(e),
                }),
            }
        }
        (statuses, loaded)
    }

    /// The newest version of every pack across catalogs, by id.
    pub fn merge(loaded: &[(String, Loaded)]) -> Vec<(String, CatalogEntry)> {
        let mut best: std::collections::BTreeMap<String, (String, CatalogEntry)> = Default::default();
        for (catalog_id, l) in loaded {
            for entry in &l.catalog().packs {
                if entry.id.is_empty() || entry.version.is_empty() || entry.url.is_empty() || entry.sha256.is_empty() {
                    continue;
                }
                let newer = best
                    .get(&entry.id)
                    .is_none_or(|(_, current)| compare_versions(&entry.version, &current.version) == Ordering::Greater);
                if newer {
                    best.insert(entry.id.clone(), (catalog_id.clone(), entry.clone()));
                }
            }
        }
        best.into_values().collect()
    }

    /// Find an entry (in one catalog, or the newest across all) and fetch its bundle.
    pub async fn bundle(
        &self,
        catalog: Option<&str>,
        pack_id: &str,
        version: Option<&str>,
    ) -> Result<(String, CatalogEntry, Vec<u8>), MarketError> {
        let (_, loaded) = self.load_all().await;
        let candidates: Vec<(String, &Loaded)> =
            loaded.iter().filter(|(id, _)| catalog.is_none_or(|c| c == id)).map(|(id, l)| (id.clone(), l)).collect();
        if let Some(c) = catalog
            && candidates.is_empty()
        {
            return Err(MarketError::NotFound(format!("catalog {c} is not configured or could not be read")));
        }
        let mut chosen: Option<(String, &Loaded, &CatalogEntry)> = None;
        for (id, l) in &candidates {
            for entry in l.catalog().packs.iter().filter(|e| e.id == pack_id) {
                if version.is_some_and(|v| v != entry.version) {
                    continue;
                }
                let newer = chosen
                    .as_ref()
                    .is_none_or(|(_, _, c)| compare_versions(&entry.version, &c.version) == Ordering::Greater);
                if newer {
                    chosen = Some((id.clone(), *l, entry));
                }
            }
        }
        let Some((catalog_id, l, entry)) = chosen else {
            return Err(MarketError::NotFound(match version {
                Some(v) => format!("pack {pack_id} version {v} is not in the marketplace"),
                None => format!("pack {pack_id} is not in the marketplace"),
            }));
        };
        let bytes = match l {
            Loaded::Local(source) => source.fetch_bundle(entry).map_err(MarketError::Fetch)?,
            Loaded::Remote { url, .. } => {
                let target = url.join(&entry.url).map_err(|e| MarketError::Fetch(format!("bundle URL: {e}")))?;
                self.fetch(&target, MAX_BUNDLE_BYTES).await.map_err(MarketError::Fetch)?
            }
        };
        Ok((catalog_id, entry.clone(), bytes))
    }
}

/// The catalog a file path stands for (for first-start installs).
pub fn local_source(location: &CatalogLocation) -> Option<Result<CatalogSource, String>> {
    match location {
        CatalogLocation::Builtin => Some(Ok(CatalogSource::embedded())),
        CatalogLocation::File(p) => Some(CatalogSource::from_file(Path::new(p))),
        CatalogLocation::Url(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("v1.2", "1.2"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0-rc2"), Ordering::Less);
    }

    #[test]
    fn special_addresses_are_not_public() {
        for bad in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "fd00::1", "0.0.0.0"] {
            assert!(!public_ip(bad.parse().unwrap()), "{bad}");
        }
        assert!(public_ip("93.184.216.34".parse().unwrap()));
    }
}
