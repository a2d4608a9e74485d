//! The WebAssembly runtime: one wasmtime engine for the process, components
//! compiled once and cached on disk, and sandboxes.
//!
//! * [`Runtime`] owns the engine (pooling allocator, epoch interruption), the
//!   epoch ticker thread, the on-disk artifact cache and one linker per world.
//! * [`sandbox`] builds a store per (tenant, component): its own memory cap,
//!   CPU deadline and a WASI context with no ambient authority.
//! * [`host_imports`] implements the `cordum:host` imports, scoped to the
//!   store's tenant and pack.
//! * [`velocity`] keeps the sliding windows of velocity (rate) rules behind
//!   `cordum:host/velocity`.
//! * [`warm`] keeps warm instances per (tenant, component) for the worlds that
//!   allow reuse (policy, schema); a trapped instance is never reused.

pub mod host_imports;
pub mod sandbox;
pub mod velocity;
pub mod warm;

use crate::settings::RuntimeLimits;
use cordum_bindings::{pack::PackWorkerPre, policy::PolicyPluginPre, schema::SchemaPluginPre};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use sandbox::{HostState, PluginContext, PluginError};

/// Which contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Policy,
    Schema,
    Pack,
}

impl World {
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Policy => "cordum:policy/policy-plugin@0.1.0",
            World::Schema => "cordum:schema/schema-plugin@0.1.0",
            World::Pack => "cordum:pack/pack-worker@0.1.0",
        }
    }
}

/// A loaded component, linked against one world and ready to instantiate.
#[derive(Clone)]
pub enum Prepared {
    Policy(PolicyPluginPre<HostState>),
    Schema(SchemaPluginPre<HostState>),
    Pack(PackWorkerPre<HostState>),
}

/// A component checked against its world, with its content digest.
#[derive(Clone)]
pub struct LoadedComponent {
    pub digest: String,
    pub prepared: Prepared,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("not a valid component: {0}")]
    InvalidComponent(String),
    #[error("component does not implement {world}: {detail}")]
    WrongWorld { world: &'static str, detail: String },
    #[error("component cache: {0}")]
    Cache(String),
    #[error("engine: {0}")]
    Engine(String),
}

pub struct Runtime {
    engine: Engine,
    cache_dir: PathBuf,
    pub limits: RuntimeLimits,
    policy_linker: Linker<HostState>,
    schema_linker: Linker<HostState>,
    pack_linker: Linker<HostState>,
}

fn engine_error(e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Engine(format!("{e:?}"))
}

impl Runtime {
    /// Build the engine and start the epoch ticker.
    pub fn new(cache_dir: &Path, limits: RuntimeLimits) -> Result<Arc<Self>, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.pool_instances)
            .total_core_instances(limits.pool_instances * 6)
            .total_memories(limits.pool_instances * 2)
            .total_tables(limits.pool_instances * 4)
            .total_stacks(limits.pool_instances)
            .max_memory_size(limits.max_memory_bytes)
            .max_core_instances_per_component(32)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            // Keeping slots resident avoids madvise TLB shootdowns across cores.
            .linear_memory_keep_resident(8 << 20)
            .table_keep_resident(1 << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_error)?;
        std::fs::create_dir_all(cache_dir).map_err(|e| RuntimeError::Cache(e.to_string()))?;

        let mut policy_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut policy_linker).map_err(engine_error)?;
        cordum_bindings::policy::PolicyPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut policy_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        let mut schema_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut schema_linker).map_err(engine_error)?;
        cordum_bindings::schema::SchemaPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut schema_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        let mut pack_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut pack_linker).map_err(engine_error)?;
        cordum_bindings::pack::PackWorker::add_to_linker::<HostState, HasSelf<HostState>>(&mut pack_linker, |s| s)
            .map_err(engine_error)?;

        let ticker = engine.clone();
        let tick = limits.epoch_tick;
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    ticker.increment_epoch();
                }
            })
            .map_err(engine_error)?;

        Ok(Arc::new(Self {
            engine,
            cache_dir: cache_dir.to_path_buf(),
            limits,
            policy_linker,
            schema_linker,
            pack_linker,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks for a wall-clock budget (at least one).
    pub fn ticks_for(&self, budget: Duration) -> u64 {
        let tick = self.limits.epoch_tick.as_micros().max(1);
        (budget.as_micros().div_ceil(tick)).max(1) as u64
    }

    /// Compile (or load from the cache) and link a component against `world`.
    /// Fails if the bytes are not a component or do not implement the world.
    pub fn load(&self, wasm: &[u8], world: World) -> Result<LoadedComponent, RuntimeError> {
        let digest = hex::encode(Sha256::digest(wasm));
        let component = self.compile_cached(wasm, &digest)?;
        let wrong = |e: wasmtime::Error| RuntimeError::WrongWorld { world: world.wit_name(), detail: format!("{e:#}") };
        let prepared = match world {
            World::Policy => {
                let pre = self.policy_linker.instantiate_pre(&component).map_err(wrong)?;
                Prepared::Policy(PolicyPluginPre::new(pre).map_err(wrong)?)
            }
            World::Schema => {
                let pre = self.schema_linker.instantiate_pre(&component).map_err(wrong)?;
                Prepared::Schema(SchemaPluginPre::new(pre).map_err(wrong)?)
            }
            World::Pack => {
                let pre = self.pack_linker.instantiate_pre(&component).map_err(wrong)?;
                Prepared::Pack(PackWorkerPre::new(pre).map_err(wrong)?)
            }
        };
        Ok(LoadedComponent { digest, prepared })
    }

    fn compile_cached(&self, wasm: &[u8], digest: &str) -> Result<Component, RuntimeError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(RuntimeError::InvalidComponent("missing the wasm magic header".into()));
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let path = self.cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        if path.exists() {
            // SAFETY: the cache directory holds only artifacts this process
            // produced with `precompile_component` from bytes whose digest is in
            // the file name; the engine checks version/flag compatibility.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached artifact")
                }
            }
        }
        let artifact =
            self.engine.precompile_component(wasm).map_err(|e| RuntimeError::InvalidComponent(format!("{e:#}")))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &artifact).map_err(|e| RuntimeError::Cache(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::Cache(e.to_string()))?;
        // SAFETY: written just above from `precompile_component` output.
        unsafe { Component::deserialize_file(&self.engine, &path) }.map_err(|e| RuntimeError::Cache(format!("{e:#}")))
    }
}
