//! Pack operations the API offers: list installed packs, install (upload or
//! marketplace, with upgrade), uninstall, and the marketplace listing with
//! each pack's install state. After an install the pack's worker starts
//! serving its topics (a pool is made for it); after an uninstall its topics
//! are gone. Knows nothing of HTTP.

use super::install::{InstallError, PackInstaller};
use super::market::{MarketError, Marketplace};
use super::plugins::Plugins;
use super::registry::{PACK_PREFIX, PackRecord, PackSource};
use crate::jobs::dispatch::Dispatcher;
use crate::jobs::pools::PoolManager;
use crate::store::Store;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    Install(#[from] InstallError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Marketplace(String),
    #[error("pack store unavailable: {0}")]
    Store(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("plugin install failed: {0}")]
    Plugin(String),
}

/// Who asks for a marketplace install.
pub struct Installer<'a> {
    pub tenant: &'a str,
    pub by: &'a str,
    /// An operator key (may change what every tenant shares: packs).
    pub operator: bool,
}

/// A marketplace item: the newest catalog version and the install state.
#[derive(Debug, Serialize)]
pub struct MarketItem {
    #[serde(flatten)]
    pub entry: super::catalog::CatalogEntry,
    pub catalog_id: String,
    pub installed_version: Option<String>,
    pub installed_status: Option<String>,
    pub installed_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct PackService {
    installer: PackInstaller,
    plugins: Plugins,
    marketplace: Marketplace,
    dispatcher: Arc<Dispatcher>,
    pools: Arc<PoolManager>,
    store: Arc<dyn Store>,
    pack_concurrency: u32,
}

impl PackService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        installer: PackInstaller,
        plugins: Plugins,
        marketplace: Marketplace,
        dispatcher: Arc<Dispatcher>,
        pools: Arc<PoolManager>,
        store: Arc<dyn Store>,
        pack_concurrency: u32,
    ) -> Self {
        Self { installer, plugins, marketplace, dispatcher, pools, store, pack_concurrency }
    }

    /// Every pack ever installed (uninstalled ones stay listed as `DISABLED`).
    pub async fn list(&self) -> Result<Vec<PackRecord>, PackError> {
        let items = self.store.scan(PACK_PREFIX, None, 100_000).await.map_err(|e| PackError::Store(e.to_string()))?;
        items.into_iter().map(|(_, e)| e.json().map_err(|e| PackError::Store(e.to_string()))).collect()
    }

    pub async fn get(&self, id: &str) -> Result<PackRecord, PackError> {
        match self.store.get(&format!("{PACK_PREFIX}{id}")).await.map_err(|e| PackError::Store(e.to_string()))? {
            Some(entry) => entry.json().map_err(|e| PackError::Store(e.to_string())),
            None => Err(PackError::NotFound(format!("pack {id} not found"))),
        }
    }

    /// Serve the installed pack's topics.
    async fn activate(&self, record: &PackRecord) -> Result<(), PackError> {
        if record.component.is_some() {
            self.pools
                .ensure_default_pool(&record.id, self.pack_concurrency)
                .await
                .map_err(|e| PackError::Store(e.to_string()))?;
            self.dispatcher.serve_pack(&record.id).await.map_err(PackError::Store)?;
        }
        Ok(())
    }

    /// Install an uploaded bundle.
    pub async fn install_upload(&self, bytes: &[u8], by: &str, upgrade: bool) -> Result<PackRecord, PackError> {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        let origin = PackSource { catalog: "upload".into(), url: String::new(), sha256: sha };
        let record = self.installer.install(bytes, None, origin, by, upgrade).await?;
        self.activate(&record).await?;
        Ok(record)
    }

    /// Install a pack (gateway-wide, operators only) or a plugin (for the
    /// caller's tenant) from the marketplace: the newest version unless named.
    pub async fn install_market(
        &self,
        who: Installer<'_>,
        catalog: Option<&str>,
        pack_id: &str,
        version: Option<&str>,
        upgrade: bool,
    ) -> Result<serde_json::Value, PackError> {
        let (catalog_id, entry, bytes) =
            self.marketplace.bundle(catalog, pack_id, version).await.map_err(|e| match e {
                MarketError::NotFound(m) => PackError::NotFound(m),
                MarketError::Fetch(m) => PackError::Marketplace(m),
            })?;
        if entry.kind != "pack" {
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if !actual.eq_ignore_ascii_case(entry.sha256.trim()) {
                return Err(PackError::Plugin(format!(
                    "bundle sha256 {actual} does not match the catalog's {}",
                    entry.sha256
                )));
            }
            let files = super::archive::read_bundle(&bytes, super::archive::UnpackLimits::default())
                .map_err(|e| PackError::Plugin(format!("unpack: {e}")))?;
            let verification = (self.installer.verify)(&files).map_err(PackError::Plugin)?;
            let installed =
                self.plugins.install(&entry.kind, who.tenant, &bytes, who.by).await.map_err(PackError::Plugin)?;
            let mut out = serde_json::to_value(installed).unwrap_or_default();
            out["verification"] = verification.unwrap_or_default();
            return Ok(out);
        }
        if !who.operator {
            return Err(PackError::Forbidden(
                "packs are shared by every tenant; only an operator key may install them".into(),
            ));
        }
        let origin = PackSource { catalog: catalog_id, url: entry.url.clone(), sha256: entry.sha256.clone() };
        let record = self.installer.install(&bytes, Some(&entry.sha256), origin, who.by, upgrade).await?;
        self.activate(&record).await?;
        Ok(serde_json::to_value(record).unwrap_or_default())
    }

    pub async fn uninstall(&self, id: &str, by: &str) -> Result<PackRecord, PackError> {
        self.get(id).await?;
        Ok(self.installer.uninstall(id, by).await?)
    }

    /// The marketplace: catalogs (with fetch errors) and the newest version
    /// of every pack, joined with what is installed.
    /// `tenant` sees its own plugins' install state.
    pub async fn marketplace(
        &self,
        tenant: &str,
    ) -> Result<(Vec<super::market::CatalogStatus>, Vec<MarketItem>), PackError> {
        let (statuses, loaded) = self.marketplace.load_all().await;
        let installed = self.list().await?;
        let policy_plugin = self
            .plugins
            .policy
            .tenant_policies()
            .and_then(|t| t.get(tenant))
            .and_then(|r| r.plugin.map(|p| (p, r.uploaded_at)));
        let schema_plugin = self.plugins.schema_validator(tenant).await;
        let mut items = Vec::new();
        for (catalog_id, entry) in Marketplace::merge(&loaded) {
            let (version, status, at) = match entry.kind.as_str() {
                "pack" => match installed.iter().find(|r| r.id == entry.id) {
                    Some(r) => (Some(r.version.clone()), Some(r.status.clone()), Some(r.installed_at)),
                    None => (None, None, None),
                },
                super::plugins::POLICY_KIND => match &policy_plugin {
                    Some((p, at)) if p.split('@').next() == Some(entry.id.as_str()) => {
                        (p.split('@').nth(1).map(str::to_string), Some("ACTIVE".to_string()), Some(*at))
                    }
                    _ => (None, None, None),
                },
                _ => match &schema_plugin {
                    Some(r) if r.plugin_id == entry.id => {
                        (Some(r.version.clone()), Some("ACTIVE".to_string()), Some(r.installed_at))
                    }
                    _ => (None, None, None),
                },
            };
            items.push(MarketItem {
                catalog_id,
                installed_version: version,
                installed_status: status,
                installed_at: at,
                entry,
            });
        }
        Ok((statuses, items))
    }
}
