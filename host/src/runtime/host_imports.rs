//! The `cordum:host` imports, implemented once for every plugin world.
//! Every function is scoped by the store's [`PluginContext`]: logs are tagged
//! with tenant and plugin, kv keys are prefixed with `kv:<tenant>:<pack>:`,
//! config is the effective config the host chose for the call, velocity
//! counts in the store's [`HostState::velocity`] namespace and mode.

use super::sandbox::HostState;
use crate::store::{Op, StoreError};
use cordum_bindings::host::cordum::host::{config, kv, log, velocity};

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 * 1024;
const MAX_LOG_BYTES: usize = 4096;

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let (tenant, plugin) = (&self.ctx.tenant, &self.ctx.plugin);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", tenant, plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", tenant, plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", tenant, plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", tenant, plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", tenant, plugin, "{message}"),
        }
    }
}

fn check_key(key: &str) -> Result<(), kv::KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(kv::KvError::InvalidKey(format!("keys must be 1..={MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}

fn store_err(e: StoreError) -> kv::KvError {
    kv::KvError::Unavailable(e.to_string())
}

impl HostState {
    fn kv_access(&self) -> Result<&super::sandbox::KvAccess, kv::KvError> {
        self.ctx.kv.as_ref().ok_or_else(|| kv::KvError::Unavailable("no key-value store for this plugin".into()))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        check_key(&key)?;
        let access = self.kv_access()?;
        let full = format!("{}{key}", access.prefix);
        let entry = access.runtime.block_on(access.store.get(&full)).map_err(store_err)?;
        Ok(entry.map(|e| e.value))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(kv::KvError::QuotaExceeded(format!("values are limited to {MAX_VALUE_BYTES} bytes")));
        }
        let access = self.kv_access()?;
        let op = Op::Put { key: format!("{}{key}", access.prefix), value, ttl: None };
        access.runtime.block_on(access.store.apply(vec![op])).map_err(store_err)?;
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        check_key(&key)?;
        let access = self.kv_access()?;
        let full = format!("{}{key}", access.prefix);
        let existed = access.runtime.block_on(access.store.get(&full)).map_err(store_err)?.is_some();
        access.runtime.block_on(access.store.apply(vec![Op::Delete { key: full }])).map_err(store_err)?;
        Ok(existed)
    }

    fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, kv::KvError> {
        let access = self.kv_access()?;
        let full = format!("{}{prefix}", access.prefix);
        let limit = (limit as usize).clamp(1, 1000);
        let items = access.runtime.block_on(access.store.scan(&full, None, limit)).map_err(store_err)?;
        Ok(items.into_iter().map(|(k, _)| k[access.prefix.len()..].to_string()).collect())
    }
}

impl config::Host for HostState {
    fn effective(&mut self) -> String {
        self.ctx.config.to_string()
    }

    fn get(&mut self, path: String) -> Option<String> {
        let mut node = self.ctx.config.as_ref();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            node = node.get(part)?;
        }
        Some(node.to_string())
    }
}

impl velocity::Host for HostState {
    /// The window count including this request, recorded unless the host
    /// runs the call as a dry run. A store without counters (a tenant
    /// component's install probe) answers 1, as for an empty window: a
    /// velocity rule never fires there.
    fn hit(&mut self, rule_id: String, key: String, window_seconds: u32) -> u32 {
        match &self.velocity {
            Some(v) => v.hit(&rule_id, &key, window_seconds),
            None => 1,
        }
    }
}

/// The policy world imports its own `types` interface (records only).
impl cordum_bindings::policy::cordum::policy::types::Host for HostState {}
