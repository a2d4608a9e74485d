//! One sandbox = one wasmtime `Store` for one (tenant, component).
//!
//! What a plugin gets: its own linear memory under a byte cap enforced by
//! [`MemoryGuard`], an epoch deadline that interrupts it when its wall-clock
//! budget runs out, and a WASI context with no environment, no arguments, no
//! stdio, no network, and at most one preopened directory: the per-tenant,
//! per-pack directory under the data dir. Everything else it can reach is the
//! `cordum:host` imports, scoped by [`PluginContext`] (and, for policy
//! components, the velocity counters in [`HostState::velocity`]).

use super::Runtime;
use super::velocity::{VelocityAccess, VelocityMode};
use crate::store::Store as StateStore;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Who a store runs for, and what it may reach through host imports.
#[derive(Clone)]
pub struct PluginContext {
    pub tenant: String,
    /// Pack id, or `policy` / `schema` for the first-party plugins.
    pub plugin: String,
    /// Key-value access (pack workers only).
    pub kv: Option<KvAccess>,
    /// Effective config offered through `cordum:host/config`.
    pub config: Arc<serde_json::Value>,
}

/// The store handle and key prefix behind `cordum:host/kv`.
#[derive(Clone)]
pub struct KvAccess {
    pub store: Arc<dyn StateStore>,
    /// `kv:<tenant>:<pack>:`; the plugin never sees or chooses it.
    pub prefix: String,
    pub runtime: tokio::runtime::Handle,
}

/// Caps a store's memory; remembers that it refused a growth so the error can
/// say "memory limit exceeded" instead of a generic trap.
pub struct MemoryGuard {
    pub max_bytes: usize,
    pub refused: bool,
}

impl ResourceLimiter for MemoryGuard {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            wasmtime::bail!("memory limit of {} bytes exceeded (wanted {desired})", self.max_bytes);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

/// Why the host stopped a running call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Timeout,
    Cancelled,
}

/// Lets another thread stop a running call (checked every epoch tick).
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// State of one store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub guard: MemoryGuard,
    pub ctx: PluginContext,
    /// Set by the epoch callback when it stops the call.
    pub stopped: Option<StopReason>,
    /// Velocity counters behind `cordum:host/velocity`, and whether the
    /// current call records: set by the policy service on its stores (and
    /// tenant components') before each call. `None` for every other store:
    /// the import then answers 1 (an empty window), so no rule fires.
    pub velocity: Option<VelocityAccess>,
}

impl HostState {
    /// Whether the next calls record velocity hits (no-op without counters).
    pub fn set_velocity_mode(&mut self, mode: VelocityMode) {
        if let Some(v) = &mut self.velocity {
            v.mode = mode;
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Why a plugin call failed. Always about that one call: the gateway and
/// other tenants carry on, and the instance is discarded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    #[error("plugin exceeded its time limit of {0} ms and was interrupted")]
    Timeout(u64),
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryExceeded(usize),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
    #[error("plugin sandbox unavailable: {0}")]
    Sandbox(String),
    #[error("job cancelled; the plugin was interrupted")]
    Cancelled,
}

impl PluginError {
    /// Stable short code for envelopes and job errors.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Timeout(_) => "plugin_timeout",
            PluginError::MemoryExceeded(_) => "plugin_memory_exceeded",
            PluginError::Trap(_) => "plugin_trap",
            PluginError::Instantiate(_) => "plugin_instantiate_failed",
            PluginError::Sandbox(_) => "plugin_sandbox_unavailable",
            PluginError::Cancelled => "cancelled",
        }
    }
}

/// Budgets of one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    pub memory_bytes: usize,
    pub timeout: Duration,
}

impl Runtime {
    /// A fresh store for `ctx`, optionally with `preopen` mounted at `/data`.
    pub fn new_store(
        &self,
        ctx: PluginContext,
        limits: SandboxLimits,
        preopen: Option<&Path>,
    ) -> Result<Store<HostState>, PluginError> {
        let mut wasi = WasiCtxBuilder::new();
        if let Some(dir) = preopen {
            wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite)
                .map_err(|e| PluginError::Sandbox(format!("cannot open the plugin directory: {e}")))?;
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            guard: MemoryGuard { max_bytes: limits.memory_bytes.min(self.limits.max_memory_bytes), refused: false },
            ctx,
            stopped: None,
            velocity: None,
        };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|s| &mut s.guard);
        store.set_epoch_deadline(self.ticks_for(limits.timeout));
        Ok(store)
    }

    /// A store for a first-party plugin (policy, schema) of `tenant`: the
    /// plugin limits, no key-value store, no filesystem.
    pub fn plugin_store(&self, tenant: &str, plugin: &str) -> Result<Store<HostState>, PluginError> {
        let ctx = PluginContext {
            tenant: tenant.to_string(),
            plugin: plugin.to_string(),
            kv: None,
            config: Arc::new(serde_json::json!({})),
        };
        self.new_store(ctx, self.limits.plugin, None)
    }

    /// Turn a wasmtime error from a call on `store` into a [`PluginError`].
    pub fn classify(&self, store: &Store<HostState>, limits: SandboxLimits, err: wasmtime::Error) -> PluginError {
        match store.data().stopped {
            Some(StopReason::Cancelled) => return PluginError::Cancelled,
            Some(StopReason::Timeout) => return PluginError::Timeout(limits.timeout.as_millis() as u64),
            None => {}
        }
        if store.data().guard.refused {
            return PluginError::MemoryExceeded(store.data().guard.max_bytes);
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout(limits.timeout.as_millis() as u64),
            Some(trap) => PluginError::Trap(trap.to_string()),
            None => PluginError::Trap(format!("{}", err.root_cause())),
        }
    }

    /// Check `cancel` and the wall-clock deadline on every epoch tick, so a
    /// job can be stopped from outside within one tick.
    pub fn watch(&self, store: &mut Store<HostState>, limits: SandboxLimits, cancel: Arc<CancelFlag>) {
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if cancel.is_cancelled() {
                ctx.data_mut().stopped = Some(StopReason::Cancelled);
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= deadline {
                ctx.data_mut().stopped = Some(StopReason::Timeout);
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Continue(1))
        });
    }

    /// Re-arm a reused store's deadline before a call.
    pub fn arm(&self, store: &mut Store<HostState>, limits: SandboxLimits) {
        store.set_epoch_deadline(self.ticks_for(limits.timeout));
    }
}
