//! Starts the real `cordum` binary on a free port with a fresh data dir and
//! talks HTTP to it, as a client would.

use reqwest::blocking::{Client, Response};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cordum");
pub const TEST_PACKS: &str = env!("CORDUM_TEST_PACKS_DIR");

/// How to start a gateway.
#[derive(Clone, Default)]
pub struct Options {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Install the hostile test pack from the fixtures catalog.
    pub hostile_pack: bool,
    /// Base policy YAML.
    pub policy: Option<String>,
}

pub struct Gateway {
    pub base: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Child,
    pub generated_key: Option<String>,
    pub client: Client,
    options: Options,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Gateway {
    pub fn start(options: Options) -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut gw = Self::spawn(&data_dir, options);
        gw._tmp = Some(tmp);
        gw
    }

    fn spawn(data_dir: &Path, options: Options) -> Gateway {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--addr").arg(format!("127.0.0.1:{port}")).arg("--data-dir").arg(data_dir);
        if options.hostile_pack {
            cmd.arg("--catalog").arg(Path::new(TEST_PACKS).join("catalog.json"));
        }
        if let Some(policy) = &options.policy {
            std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
            let path = data_dir.parent().unwrap().join("base-policy.yaml");
            std::fs::write(&path, policy).unwrap();
            cmd.arg("--policy").arg(path);
        }
        cmd.args(&options.args);
        cmd.env_remove("CORDUM_API_KEY").env_remove("CORDUM_API_KEYS").env("CORDUM_LOG", "warn");
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start cordum");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut generated_key = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("CORDUM_BOOTSTRAP_API_KEY=") => {
                    generated_key = Some(line["CORDUM_BOOTSTRAP_API_KEY=".len()..].to_string());
                }
                Ok(line) if line.starts_with("CORDUM_LISTENING=") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("gateway did not start (status {:?})", child.try_wait());
                }
            }
        }
        Gateway {
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            child,
            generated_key,
            client: Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            options,
        }
    }

    /// Stop hard (SIGKILL) and start again on the same data dir; `env`
    /// replaces the environment given at first start.
    pub fn restart(&mut self, env: Vec<(String, String)>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut options = self.options.clone();
        options.env = env;
        options.hostile_pack = false;
        let fresh = Self::spawn(&self.data_dir, options);
        let old = std::mem::replace(self, fresh);
        self._tmp = old.keep_tmp();
    }

    /// Like [`restart`](Self::restart) with another base policy file.
    pub fn restart_with_policy(&mut self, env: Vec<(String, String)>, policy: &str) {
        self.options.policy = Some(policy.to_string());
        self.restart(env);
    }

    fn keep_tmp(mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn post(&self, key: &str, tenant: Option<&str>, path: &str, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).header("X-API-Key", key).json(body);
        if let Some(t) = tenant {
            req = req.header("X-Tenant-ID", t);
        }
        req.send().unwrap()
    }

    /// PUT `body` as `key` (the key's own tenant).
    pub fn put(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client.put(self.url(path)).header("X-API-Key", key).json(body).send().unwrap()
    }

    /// PATCH `body` as `key` (the key's own tenant).
    pub fn patch(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client.patch(self.url(path)).header("X-API-Key", key).json(body).send().unwrap()
    }

    pub fn get(&self, key: &str, tenant: Option<&str>, path: &str) -> Response {
        let mut req = self.client.get(self.url(path)).header("X-API-Key", key);
        if let Some(t) = tenant {
            req = req.header("X-Tenant-ID", t);
        }
        req.send().unwrap()
    }

    /// Submit a job and return (status, body).
    pub fn submit(&self, key: &str, tenant: Option<&str>, body: Value) -> (u16, Value) {
        let resp = self.post(key, tenant, "/api/v1/jobs", &body);
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// Poll a job until it is in `state` (or panic after `limit`).
    pub fn wait_state(&self, key: &str, id: &str, state: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let job: Value = self.get(key, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never reached {state}: {job}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Poll a job until it is terminal (or panic after `limit`).
    pub fn wait_job(&self, key: &str, tenant: Option<&str>, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let resp = self.get(key, tenant, &format!("/api/v1/jobs/{id}?wait_ms=2000"));
            assert_eq!(resp.status().as_u16(), 200, "GET job {id}");
            let job: Value = resp.json().unwrap();
            let state = job["state"].as_str().unwrap_or("").to_string();
            if matches!(
                state.as_str(),
                "SUCCEEDED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "DENIED" | "OUTPUT_QUARANTINED"
            ) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} still {state} after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `call(i)` for `i` in `0..n` on `n` threads at once; the answers in order.
pub fn parallel<T: Send>(n: usize, call: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let call = &call;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || call(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Assert the error envelope and return it.
pub fn assert_envelope(resp: Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: Value = resp.json().expect("JSON error body");
    assert_eq!(body["status"], status, "envelope status in {body}");
    assert!(body["error"].is_string(), "envelope error in {body}");
    assert!(body["code"].is_string(), "envelope code in {body}");
    body
}
