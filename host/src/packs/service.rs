//! Pack operations the API offers: list installed packs, install (upload or
//! marketplace, with upgrade), uninstall, and the marketplace listing with
//! each pack's install state. After an install the pack's worker starts
//! serving its topics (a pool is made for it); after an uninstall its topics
//! are gone. Knows nothing of HTTP.

use super::install::{InstallError, PackInstaller};
use super::market::{MarketError, Marketplace};
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
    marketplace: Marketplace,
    dispatcher: Arc<Dispatcher>,
    pools: Arc<PoolManager>,
    store: Arc<dyn Store>,
    pack_concurrency: u32,
}

impl PackService {
    pub fn new(
        installer: PackInstaller,
        marketplace: Marketplace,
        dispatcher: Arc<Dispatcher>,
        pools: Arc<PoolManager>,
        store: Arc<dyn Store>,
        pack_concurrency: u32,
    ) -> Self {
        Self { installer, marketplace, dispatcher, pools, store, pack_concurrency }
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

    /// Install a pack from the marketplace (newest version unless named).
    pub async fn install_market(
        &self,
        catalog: Option<&str>,
        pack_id: &str,
        version: Option<&str>,
        by: &str,
        upgrade: bool,
    ) -> Result<PackRecord, PackError> {
        let (catalog_id, entry, bytes) =
            self.marketplace.bundle(catalog, pack_id, version).await.map_err(|e| match e {
                MarketError::NotFound(m) => PackError::NotFound(m),
                MarketError::Fetch(m) => PackError::Marketplace(m),
            })?;
        let origin = PackSource { catalog: catalog_id, url: entry.url.clone(), sha256: entry.sha256.clone() };
        let record = self.installer.install(&bytes, Some(&entry.sha256), origin, by, upgrade).await?;
        self.activate(&record).await?;
        Ok(record)
    }

    pub async fn uninstall(&self, id: &str, by: &str) -> Result<PackRecord, PackError> {
        self.get(id).await?;
        Ok(self.installer.uninstall(id, by).await?)
    }

    /// The marketplace: catalogs (with fetch errors) and the newest version
    /// of every pack, joined with what is installed.
    pub async fn marketplace(&self) -> Result<(Vec<super::market::CatalogStatus>, Vec<MarketItem>), PackError> {
        let (statuses, loaded) = self.marketplace.load_all().await;
        let installed = self.list().await?;
        let items = Marketplace::merge(&loaded)
            .into_iter()
            .map(|(catalog_id, entry)| {
                let record = installed.iter().find(|r| r.id == entry.id);
                MarketItem {
                    catalog_id,
                    installed_version: record.map(|r| r.version.clone()),
                    installed_status: record.map(|r| r.status.clone()),
                    installed_at: record.map(|r| r.installed_at),
                    entry,
                }
            })
            .collect();
        Ok((statuses, items))
    }
}
