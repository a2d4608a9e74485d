//! Packs without a component: their jobs go to external workers over NATS
//! (request-reply on the job's topic). The worker here is a plain NATS
//! client speaking the text protocol, as another process would.

use super::harness::{Gateway, Options};
use super::packs::tgz;
use super::{ADMIN, WAIT, keys_env};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const NATS: &str = "127.0.0.1:4222";

/// Serve `subject` in queue group `workers` until `stop` is set; each job
/// is answered with `reply(job)`.
fn external_worker(subject: &str, stop: Arc<AtomicBool>, reply: fn(&Value) -> Value) -> std::thread::JoinHandle<()> {
    let mut stream = TcpStream::connect(NATS).expect("NATS is running on 127.0.0.1:4222");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    write!(
        stream,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nSUB {subject} workers 1\r\nPING\r\n"
    )
    .unwrap();
    // Wait for the PONG: the subscription is in place.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_ok() && line.starts_with("PONG") {
            break;
        }
    }
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => continue,
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (reply_to, header_len, total) = match parts.as_slice() {
                ["PING"] => {
                    let _ = stream.write_all(b"PONG\r\n");
                    continue;
                }
                ["MSG", _, _, reply, len] => (reply.to_string(), 0, len.parse::<usize>().unwrap()),
                ["HMSG", _, _, reply, hlen, len] => {
                    (reply.to_string(), hlen.parse::<usize>().unwrap(), len.parse::<usize>().unwrap())
                }
                _ => continue,
            };
            let mut body = vec![0u8; total + 2];
            reader.get_mut().set_read_timeout(None).unwrap();
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let job: Value = serde_json::from_slice(&body[header_len..total]).unwrap();
            let answer = serde_json::to_vec(&reply(&job)).unwrap();
            write!(stream, "PUB {reply_to} {}\r\n", answer.len()).unwrap();
            stream.write_all(&answer).unwrap();
            stream.write_all(b"\r\n").unwrap();
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
    })
}

fn manifest(id: &str) -> Vec<u8> {
    format!(
        "apiVersion: cordum.io/v1alpha1\nkind: Pack\nmetadata:\n  id: {id}\n  version: 0.1.0\ncompatibility:\n  protocolVersion: 1\ntopics:\n  - name: job.{id}.work\n    capability: {id}.work\n  - name: job.{id}.flaky\n    capability: {id}.flaky\noverlays:\n  policy:\n    - name: safety\n      path: policy.yaml\n"
    )
    .into_bytes()
}

#[test]
fn a_pack_without_a_component_is_served_by_external_workers_over_nats() {
    let id = format!("ext-{}", &uuid_like()[..8]);
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec!["--bus".into(), format!("nats://{NATS}")],
        ..Default::default()
    });
    let rules = format!(
        "rules:\n  - id: {id}-allow\n    match:\n      topics: [\"job.{id}.*\"]\n    decision: allow\n    reason: ok\n"
    );
    let bundle = tgz(&[("pack.yaml", manifest(&id)), ("policy.yaml", rules.into_bytes())]);
    let resp = gw
        .client
        .post(gw.url("/api/v1/packs/install"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/gzip")
        .body(bundle)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let status: Value = gw.get(ADMIN, None, "/api/v1/status").json().unwrap();
    assert_eq!(status["bus"]["backend"], "nats");

    let stop = Arc::new(AtomicBool::new(false));
    let worker = external_worker(
        &format!("job.{id}.work"),
        stop.clone(),
        |job| json!({"status": "succeeded", "result": {"echo": job["input"], "attempt": job["attempt"], "by": "external"}}),
    );
    let (code, body) = gw.submit(ADMIN, None, json!({"topic": format!("job.{id}.work"), "input": {"n": 7}}));
    assert_eq!(code, 200, "{body}");
    let job = gw.wait_job(ADMIN, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["result"]["by"], "external");
    assert_eq!(job["result"]["echo"]["n"], 7);
    assert_eq!(job["result"]["attempt"], 1);
    assert_eq!(job["output_safety"]["decision"], "ALLOW");

    // A failing worker: the job fails with its message and lands in the DLQ.
    let failing = external_worker(
        &format!("job.{id}.flaky"),
        stop.clone(),
        |_| json!({"status": "failed", "error": {"code": "boom", "message": "worker says no"}}),
    );
    let (_, body) = gw.submit(ADMIN, None, json!({"topic": format!("job.{id}.flaky"), "input": {}}));
    let job = gw.wait_job(ADMIN, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(job["error_message"].as_str().unwrap().contains("worker says no"), "{job}");

    // Without a worker the job fails with no_worker (nobody answered).
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    failing.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = gw.submit(ADMIN, None, json!({"topic": format!("job.{id}.work"), "input": {}}));
    let job = gw.wait_job(ADMIN, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "FAILED", "{job}");
    assert_eq!(job["error_code"], "no_worker", "{job}");
    let dlq: Value = gw.get(ADMIN, None, "/api/v1/dlq").json().unwrap();
    assert!(dlq.to_string().contains("no_worker"), "{dlq}");
}

#[test]
fn an_unreachable_nats_url_is_a_clear_start_error() {
    let out = std::process::Command::new(super::harness::BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--bus", "nats://127.0.0.1:1"])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path().join("d"))
        .env("CORDUM_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    format!("{:016x}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() ^ (std::process::id() as u128))
}
