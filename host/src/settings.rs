//! Process settings: command-line flags and their environment variables.
//! Every default is documented on its flag (`cordum serve --help`).

use crate::runtime::sandbox::SandboxLimits;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CORDUM_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// Directory for the embedded store, component cache and plugin sandboxes.
    #[arg(long, env = "CORDUM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Extra pack catalogs: JSON files, directories holding a `catalog.json`,
    /// or http(s) URLs. The `default` packs of local catalogs are installed on
    /// first start; all of them feed the marketplace.
    #[arg(long = "catalog", env = "CORDUM_CATALOGS", value_delimiter = ',')]
    pub catalogs: Vec<String>,
    /// The bus: `inprocess` (default) or a NATS URL (`nats://127.0.0.1:4222`),
    /// needed for external workers of packs without a component.
    #[arg(long, env = "CORDUM_BUS", default_value = "inprocess")]
    pub bus: String,
    /// Let remote catalogs and bundles resolve to loopback, private or
    /// link-local addresses (off by default: such URLs are refused).
    #[arg(long, env = "CORDUM_MARKETPLACE_ALLOW_PRIVATE", default_value_t = false)]
    pub marketplace_allow_private: bool,
    /// Pack signatures: `off` (not checked), `warn` (unsigned packs install
    /// with a warning; a bad signature is refused) or `enforce` (only packs
    /// signed by a trusted key install).
    #[arg(long, env = "CORDUM_PACK_SIGNATURES", default_value = "warn")]
    pub pack_signatures: String,
    /// Trusted pack signing keys: `kid=BASE64` pairs (Ed25519 public keys), comma separated.
    #[arg(long, env = "CORDUM_PACK_TRUSTED_KEYS", default_value = "")]
    pub pack_trusted_keys: String,
    /// Base safety policy (YAML), evaluated before pack policy fragments.
    #[arg(long = "policy", env = "SAFETY_POLICY_PATH")]
    pub policy_file: Option<PathBuf>,
    /// Tenant of keys and requests that name none.
    #[arg(long, env = "TENANT_ID", default_value = "default")]
    pub default_tenant: String,
    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "GATEWAY_MAX_JSON_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests per second allowed per (tenant, API key) on protected
    /// routes, after authentication; 0 turns the limit off.
    #[arg(long, env = "API_RATE_LIMIT_RPS", default_value_t = 500)]
    pub rate_limit_rps: u32,
    /// Requests a (tenant, API key) may send at once before the rate applies.
    #[arg(long, env = "API_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub rate_limit_burst: u32,
    /// Connections served at once (more wait in the accept queue).
    #[arg(long, env = "CORDUM_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// How long an idempotency key is remembered, in seconds (default 24 h).
    #[arg(long, env = "CORDUM_IDEMPOTENCY_TTL_SECONDS", default_value_t = 86_400)]
    pub idempotency_ttl_seconds: u64,
    /// How often unfinished workflow runs are swept (delays, retry timers,
    /// runs resumed after a restart), in milliseconds.
    #[arg(long, env = "CORDUM_WORKFLOW_SWEEP_MS", default_value_t = 500)]
    pub workflow_sweep_ms: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Sandbox limits. Defaults: policy and schema calls 64 MiB / 1 s, pack jobs
/// 64 MiB / 30 s unless the pack's manifest asks for less, hard ceiling per
/// plugin memory 512 MiB, epoch tick 5 ms.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Memory cap of a policy or schema plugin instance, bytes.
    #[arg(long, env = "CORDUM_PLUGIN_MEMORY_BYTES", default_value_t = 64 << 20)]
    pub plugin_memory_bytes: usize,
    /// CPU deadline of one policy or schema call, milliseconds.
    #[arg(long, env = "CORDUM_PLUGIN_TIMEOUT_MS", default_value_t = 1000)]
    pub plugin_timeout_ms: u64,
    /// Memory cap of a pack worker instance, bytes (a manifest may lower it).
    #[arg(long, env = "CORDUM_PACK_MEMORY_BYTES", default_value_t = 64 << 20)]
    pub pack_memory_bytes: usize,
    /// Deadline of one pack job, milliseconds (a manifest may lower it).
    #[arg(long, env = "CORDUM_PACK_TIMEOUT_MS", default_value_t = 30_000)]
    pub pack_timeout_ms: u64,
    /// Jobs one pack runs at once.
    #[arg(long, env = "CORDUM_PACK_CONCURRENCY", default_value_t = 16)]
    pub pack_concurrency: usize,
    /// Hard ceiling of any plugin memory, bytes.
    #[arg(long, env = "CORDUM_PLUGIN_MAX_MEMORY_BYTES", default_value_t = 512 << 20)]
    pub max_memory_bytes: usize,
    /// Instances the pooling allocator can hold at once.
    #[arg(long, env = "CORDUM_POOL_INSTANCES", default_value_t = 256)]
    pub pool_instances: u32,
    /// Epoch tick (granularity of CPU deadlines and cancellation), milliseconds.
    #[arg(long, env = "CORDUM_EPOCH_TICK_MS", default_value_t = 5)]
    pub epoch_tick_ms: u64,
    /// First retry delay, milliseconds; each retry doubles it (plus jitter, capped at 30 s).
    #[arg(long, env = "CORDUM_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
}

/// Resolved runtime limits.
#[derive(Debug, Clone)]
pub struct RuntimeLimits {
    pub epoch_tick: Duration,
    pub pool_instances: u32,
    pub max_memory_bytes: usize,
    pub plugin: SandboxLimits,
    pub pack: SandboxLimits,
    pub pack_concurrency: usize,
    pub retry_base: Duration,
}

impl LimitArgs {
    pub fn resolve(&self) -> RuntimeLimits {
        RuntimeLimits {
            epoch_tick: Duration::from_millis(self.epoch_tick_ms.max(1)),
            pool_instances: self.pool_instances.max(8),
            max_memory_bytes: self.max_memory_bytes,
            plugin: SandboxLimits {
                memory_bytes: self.plugin_memory_bytes,
                timeout: Duration::from_millis(self.plugin_timeout_ms),
            },
            pack: SandboxLimits {
                memory_bytes: self.pack_memory_bytes,
                timeout: Duration::from_millis(self.pack_timeout_ms),
            },
            pack_concurrency: self.pack_concurrency.max(1),
            retry_base: Duration::from_millis(self.retry_base_ms.max(1)),
        }
    }
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            epoch_tick: Duration::from_millis(5),
            pool_instances: 64,
            max_memory_bytes: 512 << 20,
            plugin: SandboxLimits { memory_bytes: 64 << 20, timeout: Duration::from_secs(1) },
            pack: SandboxLimits { memory_bytes: 64 << 20, timeout: Duration::from_secs(30) },
            pack_concurrency: 16,
            retry_base: Duration::from_millis(200),
        }
    }
}
