//! Loopback load generator: `POST /api/v1/jobs` for hello-pack's echo topic,
//! then `GET /api/v1/jobs/{id}?wait_ms=5000` until the job is terminal.
//!
//! Starts the real `cordum` binary on a free port with a fresh data dir, runs
//! `BENCH_CONCURRENCY` (default 32) clients for `BENCH_SECONDS` (default 10)
//! after a 2 s warm-up, and prints throughput and latency percentiles (whole
//! job: POST start to the terminal GET's end; and POST alone).
//!
//! `cargo bench -p cordum --bench jobs_load`. Run without `--bench` (e.g.
//! `cargo test --benches`) it does a short smoke run (4 clients, 1 s, no
//! warm-up) unless the variables say otherwise.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const API_KEY: &str = "bench-key-0123456789";
const TENANT: &str = "default";
const TOPIC: &str = "job.hello-pack.echo";
const WAIT_MS: u64 = 5000;
const TERMINAL: [&str; 6] = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT", "DENIED", "OUTPUT_QUARANTINED"];

/// Kills the gateway when dropped, also when the bench panics.
struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_gateway(data_dir: &std::path::Path) -> Gateway {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordum"))
        .arg("serve")
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CORDUM_API_KEYS")
        .env("CORDUM_API_KEY", API_KEY)
        // One key drives all the load: the per-key rate limit would be what is measured.
        .env("API_RATE_LIMIT_RPS", "0")
        .env("CORDUM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cordum");
    let stdout = child.stdout.take().expect("stdout");
    // Build the guard before waiting, so a timeout's panic kills the child.
    let mut gw = Gateway { child, base: String::new() };
    let (tx, rx) = mpsc::channel();
    // Keep draining stdout for the gateway's whole life.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("CORDUM_LISTENING=") {
                    gw.base = format!("http://{}", addr.trim());
                    return gw;
                }
            }
            Err(_) => panic!("gateway did not print CORDUM_LISTENING= within 120 s (status {:?})", gw.child.try_wait()),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

#[derive(Default)]
struct ClientStats {
    /// Whole-job latencies of the jobs that succeeded.
    job: Vec<Duration>,
    /// POST latencies of every accepted submission.
    post: Vec<Duration>,
    failures: u64,
    /// GETs issued for the measured jobs.
    gets: u64,
    /// When this client's last measured job finished.
    last_end: Option<Instant>,
    errors: Vec<String>,
}

impl ClientStats {
    fn fail(&mut self, measured: bool, what: String) {
        if measured {
            self.failures += 1;
            if self.errors.len() < 5 {
                self.errors.push(what);
            }
        }
    }
}

/// One client: submit, wait for the result, repeat until `end`. Jobs whose
/// POST starts before `measure_from` are warm-up and not recorded.
async fn client(
    http: reqwest::Client,
    base: Arc<str>,
    counter: Arc<AtomicU64>,
    measure_from: Instant,
    end: Instant,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let submit_url = format!("{base}/api/v1/jobs");
    while Instant::now() < end {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let measured = t0 >= measure_from;
        let resp = http
            .post(&submit_url)
            .header("X-API-Key", API_KEY)
            .header("X-Tenant-ID", TENANT)
            .json(&json!({"topic": TOPIC, "input": {"message": format!("bench {n}")}}))
            .send()
            .await;
        let body: Value = match resp {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => v,
                Err(e) => {
                    stats.fail(measured, format!("POST body: {e}"));
                    continue;
                }
            },
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                stats.fail(measured, format!("POST {status}: {text}"));
                continue;
            }
            Err(e) => {
                stats.fail(measured, format!("POST: {e}"));
                continue;
            }
        };
        let post_done = t0.elapsed();
        let Some(id) = body["job_id"].as_str().map(str::to_string) else {
            stats.fail(measured, format!("POST without job_id: {body}"));
            continue;
        };
        if measured {
            stats.post.push(post_done);
        }
        let job_url = format!("{base}/api/v1/jobs/{id}?wait_ms={WAIT_MS}");
        let outcome: Result<(), String> = loop {
            if measured {
                stats.gets += 1;
            }
            let resp = http.get(&job_url).header("X-API-Key", API_KEY).header("X-Tenant-ID", TENANT).send().await;
            let job: Value = match resp {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(v) => v,
                    Err(e) => break Err(format!("GET body: {e}")),
                },
                Ok(r) => break Err(format!("GET {}", r.status())),
                Err(e) => break Err(format!("GET: {e}")),
            };
            let state = job["state"].as_str().unwrap_or("");
            if state == "SUCCEEDED" {
                break Ok(());
            }
            if TERMINAL.contains(&state) {
                break Err(format!("job {id} ended {state}: {}", job["error"]));
            }
            // Not terminal: with long-polling this only happens after
            // WAIT_MS; without it, this keeps the poll loop from spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let total = t0.elapsed();
        match outcome {
            Ok(()) if measured => {
                stats.job.push(total);
                stats.last_end = Some(Instant::now());
            }
            Ok(()) => {}
            Err(e) => {
                stats.fail(measured, e);
                if measured {
                    stats.last_end = Some(Instant::now());
                }
            }
        }
    }
    stats
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn line(name: &str, sorted: &[Duration]) -> String {
    format!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        sorted.len(),
        ms(pct(sorted, 50.0)),
        ms(pct(sorted, 90.0)),
        ms(pct(sorted, 99.0)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let concurrency: usize = env_or("BENCH_CONCURRENCY", if bench_mode { 32 } else { 4 }).max(1);
    let seconds: f64 = env_or("BENCH_SECONDS", if bench_mode { 10.0 } else { 1.0 });
    let warmup = if bench_mode { Duration::from_secs(2) } else { Duration::ZERO };
    let duration = Duration::from_secs_f64(seconds.max(0.1));

    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let gw = start_gateway(&tmp.path().join("data"));
    println!("jobs_load: gateway at {} ready in {:.1} s", gw.base, started.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let (all, measure_from) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let base: Arc<str> = gw.base.as_str().into();
        let counter = Arc::new(AtomicU64::new(0));
        let measure_from = Instant::now() + warmup;
        let end = measure_from + duration;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(client(http.clone(), base.clone(), counter.clone(), measure_from, end)))
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for t in tasks {
            all.push(t.await.expect("client task"));
        }
        (all, measure_from)
    });
    let last = all.iter().filter_map(|s| s.last_end).max();
    let window = last.map(|l| l.saturating_duration_since(measure_from)).unwrap_or(duration);
    report(&all, concurrency, duration, window);
    drop(rt);
    drop(gw);
    let failures: u64 = all.iter().map(|s| s.failures).sum();
    if failures > 0 {
        for e in all.iter().flat_map(|s| &s.errors).take(5) {
            eprintln!("jobs_load: failure: {e}");
        }
    }
}

fn report(all: &[ClientStats], concurrency: usize, duration: Duration, window: Duration) {
    let mut job: Vec<Duration> = all.iter().flat_map(|s| s.job.iter().copied()).collect();
    let mut post: Vec<Duration> = all.iter().flat_map(|s| s.post.iter().copied()).collect();
    job.sort();
    post.sort();
    let failures: u64 = all.iter().map(|s| s.failures).sum();
    let gets: u64 = all.iter().map(|s| s.gets).sum();
    let finished = job.len() as u64 + failures;
    println!(
        "jobs_load: concurrency={concurrency} duration={:.1} s (last measured job ended {:.2} s after warm-up)",
        duration.as_secs_f64(),
        window.as_secs_f64()
    );
    println!(
        "jobs_load: completed={} failures={} jobs/s={:.1} GETs/job={:.2}",
        job.len(),
        failures,
        job.len() as f64 / window.as_secs_f64().max(1e-9),
        gets as f64 / finished.max(1) as f64
    );
    println!("jobs_load: {}", line("job latency (POST start to terminal GET end)", &job));
    println!("jobs_load: {}", line("POST latency", &post));
}
