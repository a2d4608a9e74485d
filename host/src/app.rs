//! Wiring: builds every service from the settings, in order, and runs the
//! first-start installation of the default catalog's packs.

use crate::auth::AuthService;
use crate::auth::keys::Bootstrap;
use crate::bus::Bus;
use crate::bus::inprocess::InProcessBus;
use crate::bus::nats::NatsBus;
use crate::config::ConfigService;
use crate::jobs::JobService;
use crate::jobs::dispatch::Dispatcher;
use crate::jobs::pools::PoolManager;
use crate::jobs::repo::JobRepo;
use crate::packs::PackRegistry;
use crate::packs::catalog::CatalogSource;
use crate::packs::install::PackInstaller;
use crate::packs::market::{CatalogLocation, Marketplace, local_source};
use crate::packs::plugins::Plugins;
use crate::packs::runner::PackRunner;
use crate::packs::service::PackService;
use crate::policy::PolicyService;
use crate::policy::tenant::TenantPolicies;
use crate::runtime::{Runtime, World};
use crate::schema::SchemaService;
use crate::settings::ServeArgs;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Op, Store};
use crate::workflows::WorkflowService;
use crate::workflows::engine::Engine;
use crate::workflows::repo::WorkflowRepo;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first-party components, built from `plugins/` by build.rs.
pub const POLICY_RULES_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy_rules.wasm"));
pub const JSON_SCHEMA_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/json_schema.wasm"));

const INITIALIZED: &str = "sys:initialized";

pub struct App {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub runtime: Arc<Runtime>,
    pub auth: AuthService,
    pub policy: Arc<PolicyService>,
    pub config: ConfigService,
    pub schemas: Arc<SchemaService>,
    pub registry: Arc<PackRegistry>,
    pub packs: PackService,
    pub jobs: Arc<JobService>,
    pub workflows: WorkflowService,
    pub dispatcher: Arc<Dispatcher>,
    pub pools: Arc<PoolManager>,
    pub started: Instant,
    pub max_body_bytes: usize,
    pub limiter: crate::auth::rate_limit::RateLimiter,
}

/// What the operator must see once.
pub struct StartReport {
    pub generated_key: Option<String>,
    pub installed: Vec<String>,
    pub recovered: usize,
}

impl App {
    pub async fn start(args: &ServeArgs) -> anyhow::Result<(Arc<App>, StartReport)> {
        let data = &args.data_dir;
        std::fs::create_dir_all(data)?;
        // Job inputs, results and key digests live here: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
        }
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(data)?);
        let bus: Arc<dyn Bus> = match args.bus.trim() {
            "" | "inprocess" | "in-process" => Arc::new(InProcessBus::new()),
            url if url.starts_with("nats://") || url.starts_with("tls://") => {
                Arc::new(NatsBus::connect(url).await.map_err(anyhow::Error::msg)?)
            }
            other => anyhow::bail!("--bus must be inprocess or a nats:// URL, not {other:?}"),
        };
        let limits = args.limits.resolve();
        let runtime = Runtime::new(&data.join("cache"), limits.clone())?;

        let env_key = std::env::var("CORDUM_API_KEY").ok();
        let env_keys = std::env::var("CORDUM_API_KEYS").ok();
        let (auth, bootstrap) =
            AuthService::start(store.clone(), env_key.as_deref(), env_keys.as_deref(), &args.default_tenant)
                .await
                .map_err(anyhow::Error::msg)?;

        let base = match &args.policy_file {
            Some(path) => Some((format!("base:{}", path.display()), std::fs::read_to_string(path)?)),
            None => None,
        };
        let policy_component = runtime.load(POLICY_RULES_WASM, World::Policy)?;
        let policy = Arc::new(PolicyService::new(runtime.clone(), policy_component, store.clone(), base));
        let tenant_policies = Arc::new(TenantPolicies::new(runtime.clone(), store.clone(), data.clone()));
        tenant_policies.load_stored().await?;
        policy.set_tenant_policies(tenant_policies);
        let schema_component = runtime.load(JSON_SCHEMA_WASM, World::Schema)?;
        let schemas = Arc::new(SchemaService::new(runtime.clone(), schema_component));
        let registry = Arc::new(PackRegistry::new());
        let installer = PackInstaller {
            store: store.clone(),
            runtime: runtime.clone(),
            schemas: schemas.clone(),
            policy: policy.clone(),
            registry: registry.clone(),
            data_dir: data.clone(),
            default_limits: limits.pack,
            verify: pack_verifier(args)?,
        };
        installer.load_installed().await?;
        policy.reload().await?;

        // First start: install the default packs of every catalog.
        let mut installed = Vec::new();
        if store.get(INITIALIZED).await?.is_none() {
            let mut sources = vec![CatalogSource::embedded()];
            for raw in &args.catalogs {
                if let Some(source) = local_source(&CatalogLocation::parse(raw)) {
                    sources.push(source.map_err(anyhow::Error::msg)?);
                }
            }
            for source in &sources {
                for entry in source.catalog.packs.iter().filter(|e| e.default && e.kind == "pack") {
                    if registry.pack(&entry.id).is_some() {
                        continue;
                    }
                    let record = installer.install_from_catalog(source, entry, "system:first-start").await?;
                    installed.push(format!("{}@{}", record.id, record.version));
                }
            }
            let marker = serde_json::json!({"at": chrono::Utc::now(), "installed": installed});
            store.apply(vec![Op::put_json(INITIALIZED, &marker)]).await?;
        }

        // The policy history starts with whatever is active now (a changed
        // base policy file shows up here too).
        if let Err(e) = policy.record_active("startup", "system", "").await {
            tracing::warn!(error = %e, "could not record the active policy in the history");
        }

        let pools = Arc::new(PoolManager::load(store.clone()).await?);
        for pack in registry.packs().iter().filter(|p| p.component.is_some()) {
            pools.ensure_default_pool(&pack.record.id, limits.pack_concurrency as u32).await?;
        }
        let repo = JobRepo::new(store.clone());
        let runner = Arc::new(PackRunner::new(runtime.clone(), store.clone(), data.join("sandboxes")));
        let dispatcher = Dispatcher::new(
            repo.clone(),
            bus.clone(),
            registry.clone(),
            runner,
            pools.clone(),
            policy.clone(),
            limits.retry_base,
        );
        dispatcher.start_all().await.map_err(anyhow::Error::msg)?;
        let jobs = Arc::new(JobService::new(
            repo,
            dispatcher.clone(),
            policy.clone(),
            schemas.clone(),
            registry.clone(),
            Duration::from_secs(args.idempotency_ttl_seconds),
        ));
        // The engine listens to step jobs before any of them can move again.
        let engine = Engine::new(
            WorkflowRepo::new(store.clone()),
            jobs.clone(),
            schemas.clone(),
            Duration::from_millis(args.workflow_sweep_ms.max(50)),
        );
        engine.start();
        let workflows = WorkflowService::new(
            WorkflowRepo::new(store.clone()),
            engine,
            schemas.clone(),
            Duration::from_secs(args.idempotency_ttl_seconds),
        );
        let recovered = dispatcher.recover().await.map_err(anyhow::Error::msg)?;
        let plugins = Plugins {
            runtime: runtime.clone(),
            store: store.clone(),
            policy: policy.clone(),
            schemas: schemas.clone(),
            data_dir: data.clone(),
        };
        plugins.load_stored().await.map_err(anyhow::Error::msg)?;
        let packs = PackService::new(
            installer,
            plugins,
            Marketplace::new(&args.catalogs, args.marketplace_allow_private),
            dispatcher.clone(),
            pools.clone(),
            store.clone(),
            limits.pack_concurrency as u32,
        );

        let config = ConfigService::new(store.clone());
        let app = Arc::new(App {
            store,
            bus,
            runtime,
            auth,
            config,
            policy,
            schemas,
            registry,
            packs,
            jobs,
            workflows,
            dispatcher,
            pools,
            started: Instant::now(),
            max_body_bytes: args.max_body_bytes,
            limiter: crate::auth::rate_limit::RateLimiter::new(args.rate_limit_rps, args.rate_limit_burst),
        });
        let generated_key = match bootstrap {
            Bootstrap::Generated(k) => Some(k),
            _ => None,
        };
        Ok((app, StartReport { generated_key, installed, recovered }))
    }
}

/// The signature check installs apply (mode and trusted keys from the
/// settings). The bundles built into the binary are trusted like the binary,
/// so a gateway under `enforce` still installs its default packs.
fn pack_verifier(args: &ServeArgs) -> anyhow::Result<crate::packs::install::Verifier> {
    use crate::packs::archive::{UnpackLimits, read_bundle};
    let mut policy = crate::packs::signing::SignaturePolicy::new(&args.pack_signatures, &args.pack_trusted_keys)
        .map_err(anyhow::Error::msg)?;
    let builtin = CatalogSource::embedded();
    for entry in &builtin.catalog.packs {
        if let Some(files) =
            builtin.fetch_bundle(entry).ok().and_then(|b| read_bundle(&b, UnpackLimits::default()).ok())
        {
            policy.trust_builtin(&files);
        }
    }
    Ok(Box::new(move |files| match policy.check(files) {
        Ok(record) => {
            if record["signed"] == false
                && let Some(warning) = record["warnings"].get(0).and_then(|w| w.as_str())
            {
                tracing::warn!("{warning}");
            }
            Ok(Some(record))
        }
        Err(e) => Err(e.to_string()),
    }))
}
