//! Regression tests for problems found by trying to break the gateway.

use super::harness::{Gateway, Options, assert_envelope};
use super::{ACME, ADMIN, WAIT, echo, keys_env};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn rotating_the_bootstrap_key_revokes_the_old_one() {
    let mut gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    assert_eq!(gw.get(ADMIN, None, "/api/v1/status").status().as_u16(), 200);
    let mut env = keys_env();
    env.retain(|(k, _)| k != "CORDUM_API_KEY");
    env.push(("CORDUM_API_KEY".into(), "rotated-admin-key-0123456789".into()));
    gw.restart(env);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/status"), 401);
    assert_eq!(gw.get("rotated-admin-key-0123456789", None, "/api/v1/status").status().as_u16(), 200);
}

#[test]
fn reading_missing_jobs_leaves_no_waiters_behind() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    for i in 0..50 {
        let resp = gw.get(ACME, None, &format!("/api/v1/jobs/missing-{i}?wait_ms=20"));
        assert_envelope(resp, 404);
    }
    let (_, body) = gw.submit(ADMIN, None, echo("done"));
    let id = body["job_id"].as_str().unwrap().to_string();
    gw.wait_job(ADMIN, None, &id, WAIT);
    // A finished job read with a wait, and another tenant's job: nothing kept.
    gw.get(ADMIN, None, &format!("/api/v1/jobs/{id}?wait_ms=20"));
    assert_envelope(gw.get(ACME, None, &format!("/api/v1/jobs/{id}?wait_ms=20")), 404);
    let status: Value = gw.get(ADMIN, None, "/api/v1/status").json().unwrap();
    assert_eq!(status["jobs"]["waiting_readers"], 0, "{status}");
    // Absurd ids are simply not found.
    assert_envelope(gw.get(ACME, None, &format!("/api/v1/jobs/{}", "x".repeat(4000))), 404);
}

#[test]
fn half_sent_requests_are_cut_off() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(45))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(40), "connection held for {:?}", started.elapsed());
    // Everyone else was served meanwhile.
    assert_eq!(gw.client.get(gw.url("/health")).send().unwrap().status().as_u16(), 200);
}

#[test]
fn credentials_speak_for_their_own_principal_and_topics_for_their_capability() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // alice's key cannot claim to be bob.
    for body in [
        json!({"topic": "job.hello-pack.echo", "input": {"message": "x"}, "actor_id": "bob"}),
        json!({"topic": "job.hello-pack.echo", "input": {"message": "x"}, "principal_id": "bob"}),
        json!({"topic": "job.hello-pack.echo", "input": {"message": "x"}, "meta": {"actor_id": "bob"}}),
    ] {
        let env = assert_envelope(gw.post(ACME, None, "/api/v1/jobs", &body), 403);
        assert_eq!(env["code"], "principal_mismatch", "{env}");
    }
    // Naming her own principal is fine.
    let (status, _) =
        gw.submit(ACME, None, json!({"topic": "job.hello-pack.echo", "input": {"message": "x"}, "actor_id": "alice"}));
    assert_eq!(status, 200);
    // A capability other than the topic's is refused.
    let env = assert_envelope(
        gw.post(
            ACME,
            None,
            "/api/v1/jobs",
            &json!({"topic": "job.hello-pack.echo", "input": {"message": "x"}, "capability": "totally-harmless"}),
        ),
        400,
    );
    assert!(env["error"].as_str().unwrap().contains("hello-pack.echo"), "{env}");
}

#[test]
fn odd_input_gets_precise_errors() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    // A non-ASCII tenant header is an error, not silently ignored.
    let resp = gw
        .client
        .get(gw.url("/api/v1/status"))
        .header("X-API-Key", ADMIN)
        .header("X-Tenant-ID", reqwest::header::HeaderValue::from_bytes("acmé".as_bytes()).unwrap())
        .send()
        .unwrap();
    assert_eq!(assert_envelope(resp, 400)["code"], "invalid_tenant");
    // Two different keys in repeated headers.
    let resp = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Idempotency-Key", "k")
        .header("Idempotency-Key", "zz")
        .json(&echo("a"))
        .send()
        .unwrap();
    assert_envelope(resp, 400);
    // The same key in body and meta with the same payload replays.
    let mut a = echo("same");
    a["idempotency_key"] = json!("same-key");
    let mut b = echo("same");
    b["meta"] = json!({"idempotency_key": "same-key"});
    let (s1, r1) = gw.submit(ADMIN, None, a);
    let (s2, r2) = gw.submit(ADMIN, None, b);
    assert_eq!((s1, s2), (200, 200), "{r1} {r2}");
    assert_eq!(r1["job_id"], r2["job_id"]);
    // Invalid UTF-8 in a query key.
    let resp = gw
        .client
        .post(gw.url("/api/v1/jobs?idempotency_key=%ff"))
        .header("X-API-Key", ADMIN)
        .json(&echo("b"))
        .send()
        .unwrap();
    assert_envelope(resp, 400);
    // Bad path encoding: still the envelope.
    assert_envelope(gw.get(ADMIN, None, "/api/v1/jobs/%ff%fe"), 400);
    // Arrays are not objects.
    let resp = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/json")
        .body(r#"["job.hello-pack.echo",{"message":"hi"}]"#)
        .send()
        .unwrap();
    assert_envelope(resp, 400);
    // curl -d without a content type still works.
    let resp = gw
        .client
        .post(gw.url("/api/v1/jobs"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(r#"{"topic":"job.hello-pack.echo","input":{"message":"form"}}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The data dir is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&gw.data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn rate_limits_apply_per_tenant_and_key_after_authentication() {
    let mut env = keys_env();
    env.push(("API_RATE_LIMIT_RPS".into(), "2".into()));
    env.push(("API_RATE_LIMIT_BURST".into(), "5".into()));
    let gw = Gateway::start(Options { env, ..Default::default() });
    // Failed logins do not spend acme's budget.
    for _ in 0..20 {
        assert_envelope(gw.get("wrong-key-0123456789", None, "/api/v1/status"), 401);
    }
    let statuses: Vec<u16> = (0..8).map(|_| gw.get(ACME, None, "/api/v1/jobs").status().as_u16()).collect();
    assert_eq!(&statuses[..5], &[200; 5], "the burst: {statuses:?}");
    let limited = gw.get(ACME, None, "/api/v1/jobs");
    assert!(limited.headers().get("retry-after").is_some());
    let env = assert_envelope(limited, 429);
    assert_eq!(env["code"], "rate_limited");
    // Another tenant's key, and /health, are not affected.
    assert_eq!(gw.get(super::GLOBEX, None, "/api/v1/jobs").status().as_u16(), 200);
    for _ in 0..20 {
        assert_eq!(gw.client.get(gw.url("/health")).send().unwrap().status().as_u16(), 200);
    }
    // The rate refills it.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(gw.get(ACME, None, "/api/v1/jobs").status().as_u16(), 200);
}
