//! Policy evaluation: the warm policy WebAssembly component (through
//! `PolicyService`, as the gateway calls it) against the same rules evaluated
//! natively by `cordum-policy-engine`, for policies of 10 and 200 rules.
//!
//! The request's topic matches only the last rule, so every rule is
//! considered before the decision (the worst case of first-match-wins).
//!
//! `cargo bench -p cordum --bench policy_eval` prints criterion's figures for
//! `policy/{wasm,native}/{10,200}`, then one summary line with the
//! wasm/native ratio per size from a plain timed loop
//! (`BENCH_RATIO_ITERS`, default 200000 per side and size).
//! Run without `--bench` (e.g. `cargo test --benches`), each benchmark runs
//! once and the ratio loop is short.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordum::policy::{DecisionKind, PolicyRequest, PolicyService};
use cordum::runtime::{Runtime, World};
use cordum::settings::RuntimeLimits;
use cordum::store::Store;
use cordum::store::embedded::EmbeddedStore;
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 2] = [10, 200];
const TENANT: &str = "default";
const CAPABILITY: &str = "bench.run";

/// A Cordum safety policy of `n` allow rules `r0..r<n-1>`, each for its own
/// topic `job.bench.t<i>` plus a capability and a label predicate, over a
/// fail-closed default.
fn policy_yaml(n: usize) -> String {
    let mut y = format!("version: bench-{n}\ndefault_decision: deny\nrules:\n");
    for i in 0..n {
        let _ = write!(
            y,
            "  - id: r{i}\n    match:\n      topics: [job.bench.t{i}]\n      capabilities: [{CAPABILITY}]\n      labels:\n        env: bench\n    decision: allow\n    reason: bench rule {i}\n"
        );
    }
    y
}

/// The topic that only the last rule matches.
fn last_topic(n: usize) -> String {
    format!("job.bench.t{}", n - 1)
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("env".to_string(), "bench".to_string()), ("team".to_string(), "perf".to_string())])
}

struct Case {
    n: usize,
    wasm: PolicyService,
    wasm_req: PolicyRequest,
    native: cordum_policy_engine::Policy,
    native_req: cordum_policy_engine::Request,
}

fn setup(rt: &Arc<Runtime>, store: &Arc<dyn Store>, tokio: &tokio::runtime::Runtime, n: usize) -> Case {
    let yaml = policy_yaml(n);
    let comp = rt.load(cordum::app::POLICY_RULES_WASM, World::Policy).expect("load policy component");
    let wasm = PolicyService::new(rt.clone(), comp, store.clone(), Some(("base".into(), yaml.clone())));
    tokio.block_on(wasm.reload()).expect("reload policy");
    let wasm_req = PolicyRequest {
        topic: last_topic(n),
        tenant: TENANT.into(),
        capability: CAPABILITY.into(),
        labels: labels(),
        ..Default::default()
    };
    let native = cordum_policy_engine::load(&[cordum_policy_engine::Bundle { id: "base".into(), content: yaml }])
        .expect("native load");
    let native_req = cordum_policy_engine::Request {
        topic: last_topic(n),
        tenant: TENANT.into(),
        capability: CAPABILITY.into(),
        labels: labels(),
        ..Default::default()
    };

    // The figures mean something only if both sides decide the same way, by
    // the last rule. This first call also loads the warm instance.
    let want = format!("r{}", n - 1);
    let d = wasm.evaluate(TENANT, &wasm_req).expect("wasm evaluate");
    assert_eq!(d.decision, DecisionKind::Allow, "wasm decision for {n} rules: {d:?}");
    assert_eq!(d.rule_id, want, "wasm deciding rule for {n} rules");
    let d = native.evaluate(&native_req);
    assert_eq!(d.kind, cordum_policy_engine::DecisionKind::Allow, "native decision for {n} rules: {d:?}");
    assert_eq!(d.rule_id, want, "native deciding rule for {n} rules");
    // A topic no rule matches falls to the default on both sides.
    let miss = PolicyRequest { topic: "job.bench.none".into(), ..wasm_req.clone() };
    assert_eq!(wasm.evaluate(TENANT, &miss).expect("wasm evaluate").decision, DecisionKind::Deny);

    Case { n, wasm, wasm_req, native, native_req }
}

/// Mean time per call over `iters` calls (after a short warm-up).
fn per_call(iters: u64, mut f: impl FnMut()) -> Duration {
    for _ in 0..(iters / 20).max(1) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    Duration::from_secs_f64(start.elapsed().as_secs_f64() / iters as f64)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new(&tmp.path().join("cache"), RuntimeLimits::default()).expect("runtime");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(tmp.path()).expect("store"));
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let cases: Vec<Case> = SIZES.iter().map(|&n| setup(&rt, &store, &tokio, n)).collect();

    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group("policy");
        for case in &cases {
            group.bench_with_input(BenchmarkId::new("wasm", case.n), case, |b, case| {
                b.iter(|| black_box(case.wasm.evaluate(TENANT, black_box(&case.wasm_req)).expect("evaluate")))
            });
            group.bench_with_input(BenchmarkId::new("native", case.n), case, |b, case| {
                b.iter(|| black_box(case.native.evaluate(black_box(&case.native_req))))
            });
        }
        group.finish();
    }
    c.final_summary();

    let iters: u64 = std::env::var("BENCH_RATIO_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 200_000 } else { 1_000 })
        .max(1);
    let mut summary = format!("policy summary ({iters} iterations per side):");
    for case in &cases {
        let wasm = per_call(iters, || {
            black_box(case.wasm.evaluate(TENANT, black_box(&case.wasm_req)).expect("evaluate"));
        });
        let native = per_call(iters, || {
            black_box(case.native.evaluate(black_box(&case.native_req)));
        });
        let ratio = wasm.as_secs_f64() / native.as_secs_f64().max(1e-12);
        let _ = write!(
            summary,
            " {} rules: wasm {:.2} us, native {:.2} us, wasm/native {:.1}x;",
            case.n,
            wasm.as_secs_f64() * 1e6,
            native.as_secs_f64() * 1e6,
            ratio
        );
    }
    println!("{}", summary.trim_end_matches(';'));
}
