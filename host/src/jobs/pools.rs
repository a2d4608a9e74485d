//! Worker pools: how many jobs of which packs may run at once.
//!
//! Pack workers run in-process as WebAssembly components; every installed
//! pack with a component is served by exactly one pool. A pool caps the jobs
//! in flight (`max_concurrency`), optionally per tenant (`tenant_share`), may
//! cap each instance's memory (`max_memory_bytes`, else the pack's default)
//! and can be drained: a draining pool starts no new job (acquirers wait)
//! while the jobs already running finish; setting it `active` again lets the
//! waiters start.
//!
//! Pools are gateway-wide, not per tenant. Their configuration is durable
//! (`pool:<name>`, JSON) and changes apply live; the counters (in flight,
//! waiting, succeeded, failed, last error) live in memory and start from zero
//! after a restart.
//!
//! The dispatcher takes a [`PoolPermit`] per job from [`PoolManager::acquire`]
//! (waiting without polling until the pool lets the job start), reports the
//! outcome with [`PoolPermit::finish`] and the permit frees its slot on drop.

use crate::store::{BatchOutcome, Op, Store, StoreError, to_json};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

/// Store key prefix of pool configurations.
pub const KEY_PREFIX: &str = "pool:";
/// A worker whose last this-many completions all failed is `degraded`.
pub const DEGRADED_AFTER: usize = 5;
/// Smallest accepted `max_memory_bytes` (one WebAssembly page).
pub const MIN_MEMORY_BYTES: usize = 64 * 1024;
/// Error recorded for a permit dropped without [`PoolPermit::finish`].
const NO_RESULT: &str = "worker ended without reporting a result";

fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

/// Whether a pool may start new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolStatus {
    #[default]
    Active,
    Draining,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Active => "active",
            PoolStatus::Draining => "draining",
        }
    }
}

/// A pool's durable configuration (stored at `pool:<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: String,
    /// Ids of the packs this pool serves.
    pub packs: Vec<String>,
    /// Jobs in flight at most (>= 1).
    pub max_concurrency: u32,
    /// Memory cap per instance; `None` = the pack's default.
    #[serde(default)]
    pub max_memory_bytes: Option<usize>,
    /// Jobs in flight at most per tenant; `None` = no per-tenant cap.
    #[serde(default)]
    pub tenant_share: Option<u32>,
    #[serde(default)]
    pub status: PoolStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PoolConfig {
    /// An active pool with no memory cap and no tenant share, stamped now.
    pub fn new(name: impl Into<String>, packs: Vec<String>, max_concurrency: u32) -> Self {
        let now = Utc::now();
        Self {
            name: name.into(),
            packs,
            max_concurrency,
            max_memory_bytes: None,
            tenant_share: None,
            status: PoolStatus::Active,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A partial update; `None` leaves a field as it is. For the nullable
/// fields `Some(None)` clears the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolPatch {
    pub packs: Option<Vec<String>>,
    pub max_concurrency: Option<u32>,
    pub max_memory_bytes: Option<Option<usize>>,
    pub tenant_share: Option<Option<u32>>,
    pub status: Option<PoolStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool not found")]
    NotFound,
    #[error("pool already exists")]
    Exists,
    #[error("{0}")]
    Invalid(String),
    #[error("pool store error: {0}")]
    Store(String),
}

impl From<StoreError> for PoolError {
    fn from(e: StoreError) -> Self {
        PoolError::Store(e.to_string())
    }
}

/// A pool's configuration with its live counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    #[serde(flatten)]
    pub config: PoolConfig,
    pub in_flight: u32,
    pub in_flight_by_tenant: BTreeMap<String, u32>,
    /// Acquirers waiting for a slot (or for the pool to be active again).
    pub waiting: u32,
    pub succeeded: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Answer of a drain request; poll again until `drained`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    pub name: String,
    pub status: PoolStatus,
    pub in_flight: u32,
    /// Draining and nothing in flight any more.
    pub drained: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// A pack component run in-process.
    Wasm,
    /// A worker process attached over the bus (not produced yet).
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerHealth {
    Healthy,
    /// Its pool is draining.
    Draining,
    /// Its last [`DEGRADED_AFTER`] completions all failed.
    Degraded,
}

/// One worker: for in-process packs, one per served pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// `wasm:<pack_id>`.
    pub worker_id: String,
    pub pack_id: String,
    pub pool: String,
    pub kind: WorkerKind,
    pub health: WorkerHealth,
    pub in_flight: u32,
    pub succeeded: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Stats {
    succeeded: u64,
    failed: u64,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    /// Outcomes of the last [`DEGRADED_AFTER`] completions, oldest first.
    recent: VecDeque<bool>,
}

impl Stats {
    fn record(&mut self, ok: bool, error: Option<&str>) {
        if ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
            self.last_error = Some(error.unwrap_or("job failed").to_string());
            self.last_error_at = Some(Utc::now());
        }
        self.recent.push_back(ok);
        while self.recent.len() > DEGRADED_AFTER {
            self.recent.pop_front();
        }
    }

    fn degraded(&self) -> bool {
        self.recent.len() == DEGRADED_AFTER && self.recent.iter().all(|ok| !ok)
    }
}

#[derive(Debug, Default)]
struct WorkerStats {
    in_flight: u32,
    stats: Stats,
}

struct Pool {
    config: PoolConfig,
    in_flight: u32,
    by_tenant: HashMap<String, u32>,
    waiting: u32,
    stats: Stats,
    /// Woken (all waiters) whenever a slot frees or the config changes.
    notify: Arc<Notify>,
}

impl Pool {
    fn new(config: PoolConfig) -> Self {
        Self {
            config,
            in_flight: 0,
            by_tenant: HashMap::new(),
            waiting: 0,
            stats: Stats::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    fn can_start(&self, tenant: &str) -> bool {
        self.config.status == PoolStatus::Active
            && self.in_flight < self.config.max_concurrency
            && self.config.tenant_share.is_none_or(|share| self.by_tenant.get(tenant).copied().unwrap_or(0) < share)
    }

    fn view(&self) -> PoolView {
        PoolView {
            config: self.config.clone(),
            in_flight: self.in_flight,
            in_flight_by_tenant: self.by_tenant.iter().map(|(t, n)| (t.clone(), *n)).collect(),
            waiting: self.waiting,
            succeeded: self.stats.succeeded,
            failed: self.stats.failed,
            last_error: self.stats.last_error.clone(),
            last_error_at: self.stats.last_error_at,
        }
    }

    fn progress(&self) -> DrainProgress {
        DrainProgress {
            name: self.config.name.clone(),
            status: self.config.status,
            in_flight: self.in_flight,
            drained: self.config.status == PoolStatus::Draining && self.in_flight == 0,
        }
    }
}

#[derive(Default)]
struct State {
    pools: BTreeMap<String, Pool>,
    /// pack id → the pool serving it.
    by_pack: HashMap<String, String>,
    /// pack id → its worker's counters (kept when the pack changes pool).
    workers: HashMap<String, WorkerStats>,
}

impl State {
    fn reindex(&mut self) {
        self.by_pack.clear();
        for (name, pool) in &self.pools {
            for pack in &pool.config.packs {
                if let Some(first) = self.by_pack.get(pack) {
                    tracing::warn!(pack = %pack, pool = %name, serving = %first,
                        "pack listed by two pools; the first one serves it");
                    continue;
                }
                self.by_pack.insert(pack.clone(), name.clone());
            }
        }
    }

    /// The pool, other than `except`, that already serves one of `packs`.
    fn conflict(&self, packs: &[String], except: &str) -> Option<(String, String)> {
        packs.iter().find_map(|p| {
            self.by_pack.get(p).filter(|owner| owner.as_str() != except).map(|owner| (p.clone(), owner.clone()))
        })
    }
}

struct Inner {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Serializes configuration changes (check, store write, apply).
    admin: tokio::sync::Mutex<()>,
}

/// Pools of the gateway; share it through an `Arc`.
pub struct PoolManager {
    inner: Arc<Inner>,
}

/// `^[a-z0-9][a-z0-9._-]{0,63}$`
pub fn valid_pool_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

fn validate_packs(packs: &[String]) -> Result<(), PoolError> {
    if packs.is_empty() {
        return Err(PoolError::Invalid("packs must not be empty".into()));
    }
    for (i, pack) in packs.iter().enumerate() {
        if pack.trim().is_empty() || pack.trim() != pack {
            return Err(PoolError::Invalid(format!("invalid pack id {pack:?}")));
        }
        if packs[..i].contains(pack) {
            return Err(PoolError::Invalid(format!("pack {pack} is listed twice")));
        }
    }
    Ok(())
}

fn validate_limits(cfg: &PoolConfig) -> Result<(), PoolError> {
    if cfg.max_concurrency < 1 {
        return Err(PoolError::Invalid("max_concurrency must be at least 1".into()));
    }
    if cfg.tenant_share == Some(0) {
        return Err(PoolError::Invalid("tenant_share must be at least 1".into()));
    }
    if cfg.max_memory_bytes.is_some_and(|m| m < MIN_MEMORY_BYTES) {
        return Err(PoolError::Invalid(format!("max_memory_bytes must be at least {MIN_MEMORY_BYTES}")));
    }
    Ok(())
}

impl PoolManager {
    /// Read every stored pool.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self, PoolError> {
        let mut state = State::default();
        let mut after: Option<String> = None;
        loop {
            let page = store.scan(KEY_PREFIX, after.as_deref(), 256).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, entry) in page {
                let mut config: PoolConfig =
                    entry.json().map_err(|e| PoolError::Store(format!("stored pool {k}: {e}")))?;
                config.name = k[KEY_PREFIX.len()..].to_string();
                state.pools.insert(config.name.clone(), Pool::new(config));
            }
        }
        state.reindex();
        Ok(Self { inner: Arc::new(Inner { store, state: Mutex::new(state), admin: tokio::sync::Mutex::new(()) }) })
    }

    /// Make sure some pool serves `pack_id`: if none does, a pool named
    /// exactly the pack id is created for it (or, if that name is taken, the
    /// pack is added to that pool). The name is not checked against the
    /// admin naming rule. Returns whether anything changed.
    pub async fn ensure_default_pool(&self, pack_id: &str, default_concurrency: u32) -> Result<bool, PoolError> {
        let _admin = self.inner.admin.lock().await;
        let existing = {
            let state = self.inner.state.lock();
            if state.by_pack.contains_key(pack_id) {
                return Ok(false);
            }
            state.pools.get(pack_id).map(|p| p.config.clone())
        };
        match existing {
            Some(mut config) => {
                config.packs.push(pack_id.to_string());
                config.updated_at = Utc::now();
                self.write(Op::put_json(key(&config.name), &config)).await?;
                self.install(config);
            }
            None => {
                let mut config = PoolConfig::new(pack_id, vec![pack_id.to_string()], default_concurrency.max(1));
                // By default one tenant may hold at most half of a pool, so a
                // burst from one tenant cannot starve the others.
                config.tenant_share = Some((default_concurrency / 2).max(1));
                self.create_stored(config).await?;
            }
        }
        Ok(true)
    }

    /// The pool serving a pack.
    pub fn pool_for_pack(&self, pack_id: &str) -> Option<String> {
        self.inner.state.lock().by_pack.get(pack_id).cloned()
    }

    /// The memory cap of a pool's instances (`None`: the pack's default, or
    /// no such pool).
    pub fn effective_memory(&self, pool: &str) -> Option<usize> {
        self.inner.state.lock().pools.get(pool).and_then(|p| p.config.max_memory_bytes)
    }

    /// Wait until `pool` lets a job of `tenant` start: the pool is active,
    /// has a free slot and the tenant is under its share. Cancel-safe.
    ///
    /// When the pool serves exactly one pack the job is counted for that
    /// pack's worker; use [`PoolManager::acquire_for`] to name the pack. An
    /// unknown pool gives a detached permit that limits and counts nothing
    /// (logged).
    pub async fn acquire(&self, pool: &str, tenant: &str) -> PoolPermit {
        self.acquire_inner(pool, None, tenant).await
    }

    /// [`PoolManager::acquire`] counting the job for `pack_id`'s worker.
    pub async fn acquire_for(&self, pool: &str, pack_id: &str, tenant: &str) -> PoolPermit {
        self.acquire_inner(pool, Some(pack_id), tenant).await
    }

    async fn acquire_inner(&self, pool: &str, pack: Option<&str>, tenant: &str) -> PoolPermit {
        let mut waiting = WaitGuard { inner: self.inner.clone(), pool: pool.to_string(), armed: false };
        loop {
            let notify = match self.inner.state.lock().pools.get(pool) {
                Some(p) => p.notify.clone(),
                None => return self.detached(pool, tenant),
            };
            // Registered before the check: a wake-up after it is not lost.
            let notified = notify.notified();
            {
                let mut guard = self.inner.state.lock();
                let state = &mut *guard;
                let Some(p) = state.pools.get_mut(pool) else {
                    drop(guard);
                    return self.detached(pool, tenant);
                };
                if p.can_start(tenant) {
                    p.in_flight += 1;
                    *p.by_tenant.entry(tenant.to_string()).or_insert(0) += 1;
                    if waiting.armed {
                        p.waiting = p.waiting.saturating_sub(1);
                        waiting.armed = false;
                    }
                    let pack = pack.map(str::to_string).or_else(|| match &p.config.packs[..] {
                        [only] => Some(only.clone()),
                        _ => None,
                    });
                    if let Some(pack) = &pack {
                        state.workers.entry(pack.clone()).or_default().in_flight += 1;
                    }
                    return PoolPermit {
                        inner: Some(self.inner.clone()),
                        pool: pool.to_string(),
                        tenant: tenant.to_string(),
                        pack,
                        outcome: None,
                    };
                }
                if !waiting.armed {
                    p.waiting += 1;
                    waiting.armed = true;
                }
            }
            notified.await;
        }
    }

    fn detached(&self, pool: &str, tenant: &str) -> PoolPermit {
        tracing::warn!(pool = %pool, "acquire on an unknown pool; the job runs unlimited");
        PoolPermit { inner: None, pool: pool.to_string(), tenant: tenant.to_string(), pack: None, outcome: None }
    }

    /// Create a pool. Timestamps are set to now.
    pub async fn create(&self, mut config: PoolConfig) -> Result<PoolView, PoolError> {
        if !valid_pool_name(&config.name) {
            return Err(PoolError::Invalid("pool name must match ^[a-z0-9][a-z0-9._-]{0,63}$".into()));
        }
        validate_packs(&config.packs)?;
        validate_limits(&config)?;
        let now = Utc::now();
        config.created_at = now;
        config.updated_at = now;
        let _admin = self.inner.admin.lock().await;
        {
            let state = self.inner.state.lock();
            if state.pools.contains_key(&config.name) {
                return Err(PoolError::Exists);
            }
            if let Some((pack, owner)) = state.conflict(&config.packs, &config.name) {
                return Err(PoolError::Invalid(format!("pack {pack} is already served by pool {owner}")));
            }
        }
        let name = config.name.clone();
        self.create_stored(config).await?;
        self.get(&name)
    }

    async fn create_stored(&self, config: PoolConfig) -> Result<(), PoolError> {
        let op = Op::PutIfAbsent { key: key(&config.name), value: to_json(&config), ttl: None };
        self.write(op).await?;
        self.install(config);
        Ok(())
    }

    /// Apply a patch live (a higher `max_concurrency` or `active` lets
    /// waiters start at once).
    pub async fn update(&self, name: &str, patch: PoolPatch) -> Result<PoolView, PoolError> {
        let _admin = self.inner.admin.lock().await;
        let mut config = {
            let state = self.inner.state.lock();
            state.pools.get(name).ok_or(PoolError::NotFound)?.config.clone()
        };
        if let Some(packs) = patch.packs {
            validate_packs(&packs)?;
            if let Some((pack, owner)) = self.inner.state.lock().conflict(&packs, name) {
                return Err(PoolError::Invalid(format!("pack {pack} is already served by pool {owner}")));
            }
            config.packs = packs;
        }
        if let Some(n) = patch.max_concurrency {
            config.max_concurrency = n;
        }
        if let Some(m) = patch.max_memory_bytes {
            config.max_memory_bytes = m;
        }
        if let Some(s) = patch.tenant_share {
            config.tenant_share = s;
        }
        if let Some(s) = patch.status {
            config.status = s;
        }
        validate_limits(&config)?;
        config.updated_at = Utc::now();
        self.write(Op::put_json(key(name), &config)).await?;
        self.install(config);
        self.get(name)
    }

    /// Stop starting new jobs in the pool (idempotent); poll again to watch
    /// the jobs in flight finish.
    pub async fn drain(&self, name: &str) -> Result<DrainProgress, PoolError> {
        let active = {
            let state = self.inner.state.lock();
            let pool = state.pools.get(name).ok_or(PoolError::NotFound)?;
            pool.config.status == PoolStatus::Active
        };
        if active {
            let patch = PoolPatch { status: Some(PoolStatus::Draining), ..PoolPatch::default() };
            self.update(name, patch).await?;
        }
        let state = self.inner.state.lock();
        Ok(state.pools.get(name).ok_or(PoolError::NotFound)?.progress())
    }

    /// Every pool, by name.
    pub fn list(&self) -> Vec<PoolView> {
        self.inner.state.lock().pools.values().map(Pool::view).collect()
    }

    pub fn get(&self, name: &str) -> Result<PoolView, PoolError> {
        self.inner.state.lock().pools.get(name).map(Pool::view).ok_or(PoolError::NotFound)
    }

    /// One worker per served pack, by worker id.
    pub fn workers(&self) -> Vec<WorkerView> {
        let state = self.inner.state.lock();
        let mut out: Vec<WorkerView> = state
            .by_pack
            .iter()
            .filter_map(|(pack, pool_name)| {
                let pool = state.pools.get(pool_name)?;
                let empty = WorkerStats::default();
                let w = state.workers.get(pack).unwrap_or(&empty);
                let health = if pool.config.status == PoolStatus::Draining {
                    WorkerHealth::Draining
                } else if w.stats.degraded() {
                    WorkerHealth::Degraded
                } else {
                    WorkerHealth::Healthy
                };
                Some(WorkerView {
                    worker_id: format!("wasm:{pack}"),
                    pack_id: pack.clone(),
                    pool: pool_name.clone(),
                    kind: WorkerKind::Wasm,
                    health,
                    in_flight: w.in_flight,
                    succeeded: w.stats.succeeded,
                    failed: w.stats.failed,
                    last_error: w.stats.last_error.clone(),
                    last_error_at: w.stats.last_error_at,
                })
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }

    async fn write(&self, op: Op) -> Result<(), PoolError> {
        match self.inner.store.apply(vec![op]).await? {
            BatchOutcome::Applied(_) => Ok(()),
            BatchOutcome::Conflict { .. } => Err(PoolError::Exists),
        }
    }

    /// Put a (stored) configuration in effect and wake its waiters.
    fn install(&self, config: PoolConfig) {
        let notify = {
            let mut state = self.inner.state.lock();
            let name = config.name.clone();
            let notify = match state.pools.get_mut(&name) {
                Some(pool) => {
                    pool.config = config;
                    pool.notify.clone()
                }
                None => {
                    let pool = Pool::new(config);
                    let notify = pool.notify.clone();
                    state.pools.insert(name, pool);
                    notify
                }
            };
            state.reindex();
            notify
        };
        notify.notify_waiters();
    }
}

/// Counts an acquirer as waiting until it starts or gives up.
struct WaitGuard {
    inner: Arc<Inner>,
    pool: String,
    armed: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.armed
            && let Some(p) = self.inner.state.lock().pools.get_mut(&self.pool)
        {
            p.waiting = p.waiting.saturating_sub(1);
        }
    }
}

/// A running job's slot in its pool; frees it on drop. Report the outcome
/// with [`PoolPermit::finish`]; a permit dropped without it counts as failed.
pub struct PoolPermit {
    /// `None` for a detached permit (unknown pool).
    inner: Option<Arc<Inner>>,
    pool: String,
    tenant: String,
    pack: Option<String>,
    outcome: Option<(bool, Option<String>)>,
}

impl PoolPermit {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Record the job's outcome and free the slot.
    pub fn finish(mut self, ok: bool, error: Option<String>) {
        self.outcome = Some((ok, error));
    }
}

impl std::fmt::Debug for PoolPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolPermit")
            .field("pool", &self.pool)
            .field("tenant", &self.tenant)
            .field("pack", &self.pack)
            .field("detached", &self.inner.is_none())
            .finish()
    }
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (ok, error) = self.outcome.take().unwrap_or_else(|| (false, Some(NO_RESULT.to_string())));
        let notify = {
            let mut guard = inner.state.lock();
            let state = &mut *guard;
            if let Some(pack) = &self.pack
                && let Some(w) = state.workers.get_mut(pack)
            {
                w.in_flight = w.in_flight.saturating_sub(1);
                w.stats.record(ok, error.as_deref());
            }
            let Some(p) = state.pools.get_mut(&self.pool) else {
                return;
            };
            p.in_flight = p.in_flight.saturating_sub(1);
            if let Some(n) = p.by_tenant.get_mut(&self.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    p.by_tenant.remove(&self.tenant);
                }
            }
            p.stats.record(ok, error.as_deref());
            p.notify.clone()
        };
        notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn open(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(dir).unwrap())
    }

    async fn manager() -> (tempfile::TempDir, Arc<PoolManager>) {
        let dir = tempfile::tempdir().unwrap();
        let pools = PoolManager::load(open(dir.path())).await.unwrap();
        (dir, Arc::new(pools))
    }

    fn cfg(name: &str, packs: &[&str], max: u32) -> PoolConfig {
        PoolConfig::new(name, packs.iter().map(|p| p.to_string()).collect(), max)
    }

    /// Whether `fut` is still pending after a short while.
    async fn stays_pending<F: std::future::Future>(fut: F) -> bool {
        tokio::time::timeout(Duration::from_millis(80), fut).await.is_err()
    }

    async fn within<F: std::future::Future>(fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), fut).await.expect("completes in time")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_limit_holds_under_20_acquirers() {
        let (_dir, pools) = manager().await;
        pools.create(cfg("p", &["hello"], 3)).await.unwrap();
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (pools, running, peak) = (pools.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let permit = pools.acquire("p", &format!("t{}", i % 4)).await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert!(pools.get("p").unwrap().in_flight <= 3);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    permit.finish(i % 5 != 0, Some("boom".into()));
                })
            })
            .collect();
        for t in tasks {
            within(t).await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let view = pools.get("p").unwrap();
        assert_eq!((view.in_flight, view.waiting), (0, 0));
        assert!(view.in_flight_by_tenant.is_empty());
        assert_eq!((view.succeeded, view.failed), (16, 4));
        assert_eq!(view.last_error.as_deref(), Some("boom"));
        assert!(view.last_error_at.is_some());
        let workers = pools.workers();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].worker_id, "wasm:hello");
        assert_eq!((workers[0].succeeded, workers[0].failed), (16, 4));
    }

    #[tokio::test]
    async fn tenant_share_caps_one_tenant_not_the_others() {
        let (_dir, pools) = manager().await;
        let mut c = cfg("p", &["hello"], 10);
        c.tenant_share = Some(2);
        pools.create(c).await.unwrap();
        let a1 = pools.acquire("p", "a").await;
        let _a2 = pools.acquire("p", "a").await;
        assert!(stays_pending(pools.acquire("p", "a")).await);
        let b1 = within(pools.acquire("p", "b")).await;
        let view = pools.get("p").unwrap();
        assert_eq!(view.in_flight, 3);
        assert_eq!(view.in_flight_by_tenant["a"], 2);
        assert_eq!(view.in_flight_by_tenant["b"], 1);
        assert_eq!(view.waiting, 0, "a cancelled acquire stops counting");

        let waiter = {
            let pools = pools.clone();
            tokio::spawn(async move { pools.acquire("p", "a").await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(pools.get("p").unwrap().waiting, 1);
        drop(b1); // another tenant's slot does not help `a`
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        a1.finish(true, None);
        let a3 = within(waiter).await.unwrap();
        assert_eq!(pools.get("p").unwrap().in_flight_by_tenant["a"], 2);
        drop(a3);
    }

    #[tokio::test]
    async fn draining_blocks_new_jobs_until_active_again() {
        let (_dir, pools) = manager().await;
        pools.create(cfg("p", &["hello"], 4)).await.unwrap();
        let one = pools.acquire("p", "t").await;
        let two = pools.acquire("p", "t").await;

        let progress = pools.drain("p").await.unwrap();
        assert_eq!(progress.status, PoolStatus::Draining);
        assert_eq!((progress.in_flight, progress.drained), (2, false));
        assert_eq!(pools.workers()[0].health, WorkerHealth::Draining);

        let waiter = {
            let pools = pools.clone();
            tokio::spawn(async move { pools.acquire("p", "t").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());

        one.finish(true, None);
        let progress = pools.drain("p").await.unwrap();
        assert_eq!((progress.in_flight, progress.drained), (1, false));
        two.finish(false, Some("late failure".into()));
        let progress = pools.drain("p").await.unwrap();
        assert_eq!((progress.in_flight, progress.drained), (0, true));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "no job starts while draining");
        assert_eq!(pools.get("p").unwrap().waiting, 1);

        let patch = PoolPatch { status: Some(PoolStatus::Active), ..Default::default() };
        pools.update("p", patch).await.unwrap();
        let permit = within(waiter).await.unwrap();
        assert_eq!(pools.get("p").unwrap().in_flight, 1);
        drop(permit);
        let view = pools.get("p").unwrap();
        assert_eq!((view.succeeded, view.failed), (1, 2), "dropped = failed");
        assert_eq!(view.last_error.as_deref(), Some(NO_RESULT));
    }

    #[tokio::test]
    async fn raising_the_limit_wakes_waiters() {
        let (_dir, pools) = manager().await;
        pools.create(cfg("p", &["hello"], 1)).await.unwrap();
        let held = pools.acquire("p", "t").await;
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let pools = pools.clone();
                tokio::spawn(async move { pools.acquire("p", "t").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pools.get("p").unwrap().waiting, 2);
        let patch = PoolPatch { max_concurrency: Some(3), ..Default::default() };
        let view = pools.update("p", patch).await.unwrap();
        assert_eq!(view.config.max_concurrency, 3);
        let mut permits = Vec::new();
        for w in waiters {
            permits.push(within(w).await.unwrap());
        }
        let view = pools.get("p").unwrap();
        assert_eq!((view.in_flight, view.waiting), (3, 0));
        drop(held);
    }

    #[tokio::test]
    async fn admin_validation() {
        let (_dir, pools) = manager().await;
        pools.create(cfg("p", &["hello"], 1)).await.unwrap();
        assert_eq!(pools.create(cfg("p", &["other"], 1)).await, Err(PoolError::Exists));
        for bad in ["", "-x", "Upper", "a b", &"x".repeat(65)] {
            assert!(matches!(pools.create(cfg(bad, &["z"], 1)).await, Err(PoolError::Invalid(_))));
        }
        assert!(valid_pool_name(&"x".repeat(64)) && valid_pool_name("0a._-b"));
        for c in [
            cfg("q", &[], 1),
            cfg("q", &["a", "a"], 1),
            cfg("q", &["a"], 0),
            cfg("q", &["hello"], 1), // served by p already
        ] {
            assert!(matches!(pools.create(c).await, Err(PoolError::Invalid(_))));
        }
        pools.create(cfg("q", &["other"], 1)).await.unwrap();
        let steal = PoolPatch { packs: Some(vec!["other".into(), "hello".into()]), ..Default::default() };
        assert!(matches!(pools.update("q", steal).await, Err(PoolError::Invalid(_))));
        let zero = PoolPatch { tenant_share: Some(Some(0)), ..Default::default() };
        assert!(matches!(pools.update("q", zero).await, Err(PoolError::Invalid(_))));
        assert_eq!(pools.update("nope", PoolPatch::default()).await, Err(PoolError::NotFound));
        assert_eq!(pools.drain("nope").await, Err(PoolError::NotFound));
        assert_eq!(pools.get("nope"), Err(PoolError::NotFound));
        // Moving a pack: take it out of one pool, then into another.
        let keep = PoolPatch { packs: Some(vec!["other".into()]), ..Default::default() };
        pools.update("q", keep).await.unwrap();
        let shrink = PoolPatch { packs: Some(vec!["third".into()]), ..Default::default() };
        pools.update("p", shrink).await.unwrap();
        let grow = PoolPatch { packs: Some(vec!["other".into(), "hello".into()]), ..Default::default() };
        pools.update("q", grow).await.unwrap();
        assert_eq!(pools.pool_for_pack("hello").as_deref(), Some("q"));
        assert_eq!(pools.pool_for_pack("third").as_deref(), Some("p"));
        assert_eq!(pools.list().len(), 2);
    }

    #[tokio::test]
    async fn defaults_and_persistence_across_reload() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pools = PoolManager::load(open(dir.path())).await.unwrap();
            assert!(pools.ensure_default_pool("hello-pack", 4).await.unwrap());
            assert!(!pools.ensure_default_pool("hello-pack", 9).await.unwrap());
            assert_eq!(pools.pool_for_pack("hello-pack").as_deref(), Some("hello-pack"));
            let mut c = cfg("shared", &["a", "b"], 2);
            c.tenant_share = Some(1);
            c.max_memory_bytes = Some(8 << 20);
            pools.create(c).await.unwrap();
            pools.drain("shared").await.unwrap();
            let patch = PoolPatch { max_concurrency: Some(7), tenant_share: Some(None), ..Default::default() };
            pools.update("hello-pack", patch).await.unwrap();
        }
        let pools = PoolManager::load(open(dir.path())).await.unwrap();
        let hello = pools.get("hello-pack").unwrap();
        assert_eq!(hello.config.packs, vec!["hello-pack".to_string()]);
        assert_eq!(hello.config.max_concurrency, 7);
        assert_eq!(hello.config.status, PoolStatus::Active);
        let shared = pools.get("shared").unwrap();
        assert_eq!(shared.config.status, PoolStatus::Draining);
        assert_eq!(shared.config.tenant_share, Some(1));
        assert_eq!(pools.effective_memory("shared"), Some(8 << 20));
        assert_eq!(pools.effective_memory("hello-pack"), None);
        assert_eq!(pools.pool_for_pack("b").as_deref(), Some("shared"));
        assert!(!pools.ensure_default_pool("a", 4).await.unwrap());
        let ids: Vec<_> = pools.workers().into_iter().map(|w| w.worker_id).collect();
        assert_eq!(ids, ["wasm:a", "wasm:b", "wasm:hello-pack"]);

        // A pool named after the pack that no longer serves it gets it back.
        let patch = PoolPatch { packs: Some(vec!["c".into()]), ..Default::default() };
        pools.update("hello-pack", patch).await.unwrap();
        assert!(pools.ensure_default_pool("hello-pack", 4).await.unwrap());
        assert_eq!(pools.get("hello-pack").unwrap().config.packs, vec!["c".to_string(), "hello-pack".to_string()]);
    }

    #[tokio::test]
    async fn workers_degrade_after_five_failures_and_json_shapes() {
        let (_dir, pools) = manager().await;
        pools.create(cfg("p", &["x", "y"], 5)).await.unwrap();
        for i in 0..5 {
            let permit = pools.acquire_for("p", "x", "t").await;
            permit.finish(false, Some(format!("fail {i}")));
        }
        // No pack named: not counted for either worker of a two-pack pool.
        pools.acquire("p", "t").await.finish(true, None);
        let workers = pools.workers();
        assert_eq!(workers[0].health, WorkerHealth::Degraded);
        assert_eq!(workers[0].last_error.as_deref(), Some("fail 4"));
        assert_eq!(workers[1].health, WorkerHealth::Healthy);
        assert_eq!((workers[1].succeeded, workers[1].failed), (0, 0));
        pools.acquire_for("p", "x", "t").await.finish(true, None);
        assert_eq!(pools.workers()[0].health, WorkerHealth::Healthy);

        let w = serde_json::to_value(&pools.workers()[0]).unwrap();
        assert_eq!(w["kind"], "wasm");
        assert_eq!(w["health"], "healthy");
        assert_eq!(w["pool"], "p");
        let v = serde_json::to_value(pools.get("p").unwrap()).unwrap();
        assert_eq!(v["name"], "p");
        assert_eq!(v["status"], "active");
        assert_eq!(v["tenant_share"], serde_json::Value::Null);
        assert_eq!(v["succeeded"], 2);
        assert!(v["created_at"].is_string() && v["in_flight_by_tenant"].is_object());

        // Unknown pool: a detached permit, nothing counted.
        within(pools.acquire("ghost", "t")).await.finish(true, None);
        assert_eq!(pools.list().len(), 1);
    }
}
