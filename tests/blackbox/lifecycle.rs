//! Job lifecycle: cancel, retries and the DLQ, remediation, approvals,
//! listing.

use super::harness::{Gateway, Options, assert_envelope, parallel};
use super::{ACME, ACME_ADMIN, ADMIN, GLOBEX, WAIT, echo, keys_env};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn with_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = keys_env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str().expect("timestamp").parse().expect("RFC 3339")
}

fn history_at(job: &Value, state: &str) -> Vec<DateTime<Utc>> {
    job["history"].as_array().unwrap().iter().filter(|h| h["state"] == state).map(|h| ts(&h["at"])).collect()
}

#[test]
fn cancel_interrupts_a_looping_component_and_the_pool_goes_on() {
    let gw = Gateway::start(Options {
        env: with_env(&[("CORDUM_PACK_CONCURRENCY", "1")]),
        hostile_pack: true,
        ..Default::default()
    });
    let (_, body) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.loop", "input": {}}));
    let id = body["job_id"].as_str().unwrap().to_string();
    gw.wait_state(ADMIN, &id, "RUNNING", WAIT);
    // With one slot, this job queues behind the loop; cancelling it means it never runs.
    let (_, queued) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.echo", "input": {"q": 1}}));
    let queued = queued["job_id"].as_str().unwrap().to_string();
    let resp = gw.post(ADMIN, None, &format!("/api/v1/jobs/{queued}/cancel"), &json!({}));
    assert_eq!(resp.status().as_u16(), 200);

    let resp = gw.post(ADMIN, None, &format!("/api/v1/jobs/{id}/cancel"), &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["state"], "CANCELLED");
    // Idempotent.
    let again: Value = gw.post(ADMIN, None, &format!("/api/v1/jobs/{id}/cancel"), &json!({})).json().unwrap();
    assert_eq!(again["state"], "CANCELLED");
    // The component was stopped within 100 ms of the cancel (the loop's own
    // deadline is 1 s, so a missed cancel would show ~800 ms here).
    let deadline = Instant::now() + WAIT;
    let job = loop {
        let job: Value = gw.get(ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
        if !job["interrupted_at"].is_null() {
            break job;
        }
        assert!(Instant::now() < deadline, "never interrupted: {job}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let cancelled_at = history_at(&job, "CANCELLED")[0];
    let stopped = ts(&job["interrupted_at"]) - cancelled_at;
    assert!(stopped < chrono::Duration::milliseconds(100), "interrupted {stopped:?} after the cancel");
    assert_eq!(job["state"], "CANCELLED");
    // The pool serves the next job.
    let (_, next) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.echo", "input": {"n": 2}}));
    let next = gw.wait_job(ADMIN, None, next["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(next["state"], "SUCCEEDED");
    // The queued job never ran.
    let q: Value = gw.get(ADMIN, None, &format!("/api/v1/jobs/{queued}")).json().unwrap();
    assert_eq!(q["state"], "CANCELLED");
    assert_eq!(q["attempts"], 0);
    assert!(history_at(&q, "RUNNING").is_empty());
    // A finished job: 409 naming its state. Unknown or foreign: 404.
    let env = assert_envelope(
        gw.post(ADMIN, None, &format!("/api/v1/jobs/{}/cancel", next["id"].as_str().unwrap()), &json!({})),
        409,
    );
    assert_eq!(env["state"], "SUCCEEDED");
    assert_envelope(gw.post(ADMIN, None, "/api/v1/jobs/nope/cancel", &json!({})), 404);
    assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/jobs/{id}/cancel"), &json!({})), 404);
}

const RETRY_POLICY: &str = r#"
default_decision: deny
rules:
  - id: retry-failures
    match:
      topics: ["job.hostile-pack.fail"]
    decision: allow
    reason: "Flaky by design."
    constraints:
      budgets:
        max_retries: 3
"#;

#[test]
fn retries_back_off_then_the_dlq_takes_it_and_one_retry_wins() {
    let gw = Gateway::start(Options {
        env: with_env(&[("CORDUM_RETRY_BASE_MS", "40")]),
        hostile_pack: true,
        policy: Some(RETRY_POLICY.into()),
        ..Default::default()
    });
    let (status, body) = gw.submit(ACME_ADMIN, None, json!({"topic": "job.hostile-pack.fail", "input": {}}));
    assert_eq!(status, 200, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    let job = gw.wait_job(ACME_ADMIN, None, &id, WAIT);
    assert_eq!(job["state"], "FAILED", "{job}");
    assert_eq!(job["attempts"], 4, "first try + 3 retries: {job}");
    assert_eq!(job["max_retries"], 3);
    assert_eq!(job["error_code"], "job_failed_retryable");
    assert_eq!(job["safety_decision"], "ALLOW_WITH_CONSTRAINTS");
    // Growing delays between attempts.
    let runs = history_at(&job, "RUNNING");
    let retrying = history_at(&job, "RETRYING");
    assert_eq!((runs.len(), retrying.len()), (4, 3), "{job}");
    let gaps: Vec<i64> = (0..3).map(|i| (runs[i + 1] - retrying[i]).num_milliseconds()).collect();
    assert!(gaps[0] >= 40 && gaps[1] >= 80 && gaps[2] >= 160, "backoff gaps {gaps:?}");
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");

    // In the DLQ of its tenant only.
    let dlq: Value = gw.get(ACME_ADMIN, None, "/api/v1/dlq").json().unwrap();
    let items = dlq["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dlq}");
    assert_eq!(items[0]["job_id"], id.as_str());
    assert_eq!(items[0]["attempts"], 4);
    assert_eq!(items[0]["error_code"], "job_failed_retryable");
    assert!(items[0]["error_message"].as_str().unwrap().contains("always fails"));
    let other: Value = gw.get(GLOBEX, None, "/api/v1/dlq").json().unwrap();
    assert!(other["items"].as_array().unwrap().is_empty());
    assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/dlq/{id}/retry"), &json!({})), 404);

    // Five parallel retries: exactly one new job, every caller told its id.
    let answers: Vec<(u16, Value)> = parallel(5, |_| {
        let r = gw.post(ACME_ADMIN, None, &format!("/api/v1/dlq/{id}/retry"), &json!({}));
        (r.status().as_u16(), r.json::<Value>().unwrap())
    });
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(st, b)| {
            assert_eq!(*st, 200, "{b}");
            b["job_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let new_id = ids.into_iter().next().unwrap();
    assert!(new_id.starts_with(&format!("{id}-retry-")));
    let page: Value = gw.get(ACME_ADMIN, None, "/api/v1/jobs?topic=job.hostile-pack.fail&limit=50").json().unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "original + one retry: {page}");
    let original: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(original["links"]["retried_as"], new_id.as_str());
    let retried = gw.wait_job(ACME_ADMIN, None, &new_id, WAIT);
    assert_eq!(retried["links"]["retry_of"], id.as_str());
    assert_eq!(retried["labels"]["retry"], "true");
    // The retried job failed again and is in the DLQ; delete it.
    let resp =
        gw.client.delete(gw.url(&format!("/api/v1/dlq/{new_id}"))).header("X-API-Key", ACME_ADMIN).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let resp =
        gw.client.delete(gw.url(&format!("/api/v1/dlq/{new_id}"))).header("X-API-Key", ACME_ADMIN).send().unwrap();
    assert_envelope(resp, 404);
    // Non-admins cannot read the DLQ.
    assert_envelope(gw.get(ACME, None, "/api/v1/dlq"), 403);
}

const APPROVAL_POLICY: &str = r#"
default_decision: deny
rules:
  - id: review-echo
    match:
      topics: ["job.hostile-pack.echo"]
    decision: require_approval
    reason: "A human looks at every echo."
"#;

const DENY_ECHO_POLICY: &str = r#"
default_decision: deny
rules:
  - id: echo-now-forbidden
    match:
      topics: ["job.hostile-pack.echo"]
    decision: deny
    reason: "Echo was switched off."
"#;

#[test]
fn approvals_decide_once_under_races_and_recheck_the_policy() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(APPROVAL_POLICY.into()),
        ..Default::default()
    });
    // Submitted by alice (acme user); carol (acme admin) approves.
    let (status, held) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": 1}}));
    assert_eq!(status, 200);
    assert_eq!(held["status"], "approval_required");
    let id = held["job_id"].as_str().unwrap().to_string();
    let list: Value = gw.get(ACME_ADMIN, None, "/api/v1/approvals").json().unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["job_id"], id.as_str());
    assert_eq!(items[0]["rule_id"], "review-echo");
    assert_eq!(items[0]["reason"], "A human looks at every echo.");
    assert_eq!(items[0]["decision"], "REQUIRE_APPROVAL");
    // Other tenants see nothing and cannot act.
    let foreign: Value = gw.get(GLOBEX, None, "/api/v1/approvals").json().unwrap();
    assert!(foreign["items"].as_array().unwrap().is_empty());
    assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/approvals/{id}/approve"), &json!({})), 404);
    // Users cannot approve; the submitter cannot approve its own job.
    assert_envelope(gw.post(ACME, None, &format!("/api/v1/approvals/{id}/approve"), &json!({})), 403);
    let (_, own) = gw.submit(ACME_ADMIN, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": 2}}));
    let own_id = own["job_id"].as_str().unwrap().to_string();
    let env =
        assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{own_id}/approve"), &json!({})), 403);
    assert_eq!(env["code"], "self_approval_denied");
    assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({"bogus": 1})), 400);

    // 10 approves and 5 rejects at once: exactly one outcome.
    let answers: Vec<(bool, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..15)
            .map(|i| {
                let (gw, id) = (&gw, &id);
                s.spawn(move || {
                    let approve = i % 3 != 0;
                    let action = if approve { "approve" } else { "reject" };
                    let r = gw.post(
                        ACME_ADMIN,
                        None,
                        &format!("/api/v1/approvals/{id}/{action}"),
                        &json!({"reason": "race"}),
                    );
                    (approve, r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (_, st, body) in &answers {
        assert!(*st == 200 || *st == 409, "{st} {body}");
    }
    let approved_won = answers.iter().any(|(a, st, b)| *a && *st == 200 && b["status"] == "approved");
    let rejected_won = answers.iter().any(|(a, st, b)| !*a && *st == 200 && b["status"] == "rejected");
    assert!(approved_won ^ rejected_won, "exactly one decision: {answers:?}");
    let winners = answers
        .iter()
        .filter(|(_, st, b)| *st == 200 && (b["status"] == "approved" || b["status"] == "rejected"))
        .count();
    assert_eq!(winners, 1, "{answers:?}");
    for (approve, st, body) in &answers {
        if approved_won && *approve {
            assert_eq!(*st, 200, "every approve agrees: {body}");
        }
        if approved_won && !*approve {
            assert_eq!(*st, 409, "{body}");
        }
        if rejected_won && !*approve {
            assert_eq!(*st, 200, "{body}");
        }
        if rejected_won && *approve {
            assert_eq!(*st, 409, "{body}");
        }
    }
    let job = gw.wait_job(ACME_ADMIN, None, &id, WAIT);
    if approved_won {
        assert_eq!(job["state"], "SUCCEEDED", "{job}");
        assert_eq!(job["attempts"], 1, "ran exactly once");
        assert_eq!(job["approval"]["status"], "approved");
        let again: Value =
            gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({})).json().unwrap();
        assert_eq!(again["status"], "already_approved");
    } else {
        assert_eq!(job["state"], "DENIED");
        assert_eq!(job["attempts"], 0);
        assert_eq!(job["error_code"], "approval_rejected");
    }
    let list: Value = gw.get(ACME_ADMIN, None, "/api/v1/approvals").json().unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "only carol's own job is still held: {list}");

    // Deterministically: after a reject, approve conflicts and reject repeats its answer.
    let (_, r) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": "r"}}));
    let r = r["job_id"].as_str().unwrap().to_string();
    let first: Value =
        gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{r}/reject"), &json!({"reason": "no"})).json().unwrap();
    assert_eq!(first["status"], "rejected");
    let env = assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{r}/approve"), &json!({})), 409);
    assert_eq!(env["code"], "approval_already_resolved");
    let again: Value = gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{r}/reject"), &json!({})).json().unwrap();
    assert_eq!(again["status"], "already_rejected");

    // Repair: new input, re-evaluated as a new job (held again), linked both ways.
    let (_, held2) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": "bad"}}));
    let held2 = held2["job_id"].as_str().unwrap().to_string();
    let resp =
        gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{held2}/repair"), &json!({"input": {"v": "good"}}));
    assert_eq!(resp.status().as_u16(), 200);
    let repaired: Value = resp.json().unwrap();
    assert_eq!(repaired["status"], "approval_required");
    let new_id = repaired["job_id"].as_str().unwrap().to_string();
    let old: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{held2}")).json().unwrap();
    assert_eq!(old["state"], "CANCELLED");
    assert_eq!(old["links"]["repaired_as"], new_id.as_str());
    let new: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{new_id}")).json().unwrap();
    assert_eq!(new["input"]["v"], "good");
    assert_eq!(new["links"]["repair_of"], held2.as_str());
    assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{held2}/repair"), &json!({})), 409);
}

/// Regression: a repair racing an approve on one held job used to let both
/// succeed, so the job ran and its replacement was held to run again.
#[test]
fn approve_and_repair_racing_on_one_held_job_let_exactly_one_act() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(APPROVAL_POLICY.into()),
        ..Default::default()
    });
    for round in 0..8 {
        let (_, held) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": round}}));
        let id = held["job_id"].as_str().unwrap().to_string();
        let (approve, repair) = std::thread::scope(|s| {
            let approve = s.spawn(|| {
                let r = gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({}));
                (r.status().as_u16(), r.json::<Value>().unwrap())
            });
            let repair = s.spawn(|| {
                let body = json!({"input": {"v": "fixed"}});
                let r = gw.post(ADMIN, Some("acme"), &format!("/api/v1/approvals/{id}/repair"), &body);
                (r.status().as_u16(), r.json::<Value>().unwrap())
            });
            (approve.join().unwrap(), repair.join().unwrap())
        });
        let oks = [approve.0, repair.0].iter().filter(|s| **s == 200).count();
        assert_eq!(oks, 1, "round {round}: exactly one acts: approve {approve:?}, repair {repair:?}");
        let job = gw.wait_job(ACME_ADMIN, None, &id, WAIT);
        if approve.0 == 200 {
            assert_eq!(repair.0, 409, "{repair:?}");
            assert_eq!(job["state"], "SUCCEEDED", "{job}");
            assert!(job["links"]["repaired_as"].is_null(), "{job}");
        } else {
            assert_eq!(approve.0, 409, "{approve:?}");
            assert_eq!(job["state"], "CANCELLED", "{job}");
            assert_eq!(job["links"]["repaired_as"], repair.1["job_id"], "{job}");
            assert_eq!(job["attempts"], 0, "the original never ran");
        }
    }
    // Parallel repairs of one job: one replacement; the others are told so.
    let (_, held) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": "many"}}));
    let id = held["job_id"].as_str().unwrap().to_string();
    let answers: Vec<(u16, Value)> = parallel(4, |_| {
        let r = gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/repair"), &json!({}));
        (r.status().as_u16(), r.json::<Value>().unwrap())
    });
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["code"], "already_repaired", "{body}");
    }
    let repairs = gw.get(ACME_ADMIN, None, "/api/v1/jobs?limit=500").json::<Value>().unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["labels"]["repair_of"] == id.as_str())
        .count();
    assert_eq!(repairs, 1, "one replacement job");
}

#[test]
fn approval_rechecks_the_current_policy_before_dispatch() {
    let mut gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(APPROVAL_POLICY.into()),
        ..Default::default()
    });
    let (_, held) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"v": 1}}));
    let id = held["job_id"].as_str().unwrap().to_string();
    // The policy changes (here: a restart with another base policy).
    gw.restart_with_policy(keys_env(), DENY_ECHO_POLICY);
    let env = assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{id}/approve"), &json!({})), 409);
    assert_eq!(env["code"], "approval_policy_denied");
    assert!(env["error"].as_str().unwrap().contains("echo-now-forbidden"), "{env}");
    let job: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(job["state"], "DENIED");
    assert_eq!(job["attempts"], 0, "never dispatched");
    assert_eq!(job["approval"]["status"], "invalidated");
}

#[test]
fn remediation_resubmits_a_linked_job() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(super::DENY_POLICY.into()),
        ..Default::default()
    });
    let resp = gw.post(
        ADMIN,
        None,
        "/api/v1/jobs",
        &json!({"topic": "job.hostile-pack.echo", "input": {"message": "fix me"}}),
    );
    let denied = assert_envelope(resp, 403);
    let id = denied["job_id"].as_str().unwrap().to_string();
    assert_envelope(
        gw.post(ADMIN, None, &format!("/api/v1/jobs/{id}/remediate"), &json!({"remediation_id": "nope"})),
        400,
    );
    let resp = gw.post(ADMIN, None, &format!("/api/v1/jobs/{id}/remediate"), &json!({"remediation_id": "use-hello"}));
    assert_eq!(resp.status().as_u16(), 200);
    let new_id = resp.json::<Value>().unwrap()["job_id"].as_str().unwrap().to_string();
    let new = gw.wait_job(ADMIN, None, &new_id, WAIT);
    assert_eq!(new["topic"], "job.hello-pack.echo");
    assert_eq!(new["state"], "SUCCEEDED");
    assert_eq!(new["result"]["message"], "fix me");
    assert_eq!(new["links"]["remediation_of"], id.as_str());
    assert_eq!(new["labels"]["remediation_id"], "use-hello");
    // Remediating again, or several times at once, makes no second job.
    let again: Vec<Value> = parallel(4, |_| {
        let body = json!({"remediation_id": "use-hello"});
        let r = gw.post(ADMIN, None, &format!("/api/v1/jobs/{id}/remediate"), &body);
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().unwrap()
    });
    for answer in &again {
        assert_eq!(answer["job_id"], new_id.as_str(), "{answer}");
    }
    let old: Value = gw.get(ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(old["links"]["remediated_by"], json!([new_id]));
    let echoes: Value = gw.get(ADMIN, None, "/api/v1/jobs?topic=job.hello-pack.echo").json().unwrap();
    assert_eq!(echoes["items"].as_array().unwrap().len(), 1, "one remediated job: {echoes}");
    // A job the policy offered nothing for: 409.
    let env = assert_envelope(gw.post(ADMIN, None, &format!("/api/v1/jobs/{new_id}/remediate"), &json!({})), 409);
    assert_eq!(env["code"], "no_remediations");
    assert_envelope(gw.post(GLOBEX, None, &format!("/api/v1/jobs/{id}/remediate"), &json!({})), 404);
}

#[test]
fn job_listing_is_paginated_filtered_and_per_tenant() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, b) = gw.submit(ACME, None, echo(&format!("m{i}")));
        ids.push(b["job_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        gw.wait_job(ACME, None, id, WAIT);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/jobs?limit=2&cursor={c}"),
            None => "/api/v1/jobs?limit=2".to_string(),
        };
        let page: Value = gw.get(ACME, None, &path).json().unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let ok: Value = gw.get(ACME, None, "/api/v1/jobs?state=SUCCEEDED&topic=job.hello-pack.echo").json().unwrap();
    assert_eq!(ok["items"].as_array().unwrap().len(), 5);
    let none: Value = gw.get(ACME, None, "/api/v1/jobs?state=failed").json().unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
    let other: Value = gw.get(GLOBEX, None, "/api/v1/jobs").json().unwrap();
    assert!(other["items"].as_array().unwrap().is_empty());
    assert_envelope(gw.get(ACME, None, "/api/v1/jobs?state=BOGUS"), 400);
    assert_envelope(gw.get(ACME, None, "/api/v1/jobs?colour=red"), 400);
    // A cursor the listing never returned is refused, not read as "the end".
    for bad in ["garbage", "1:", ":", "00000000000000000000:"] {
        let env = assert_envelope(gw.get(ACME, None, &format!("/api/v1/jobs?cursor={bad}")), 400);
        assert!(env["error"].as_str().unwrap().contains("cursor"), "{bad}: {env}");
    }
}

#[test]
fn draining_a_pool_starts_nothing_new_and_finishes_in_flight_jobs() {
    let gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    let pools: Value = gw.get(ADMIN, None, "/api/v1/pools").json().unwrap();
    let names: Vec<&str> = pools["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"hello-pack") && names.contains(&"hostile-pack"), "{pools}");
    let workers: Value = gw.get(ADMIN, None, "/api/v1/workers").json().unwrap();
    let ids: Vec<&str> =
        workers["items"].as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"wasm:hello-pack"), "{workers}");
    assert_envelope(gw.get(ACME, None, "/api/v1/workers"), 403);

    let busy: Vec<String> = (0..2)
        .map(|_| {
            let (_, b) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.busy", "input": {"ms": 700}}));
            b["job_id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &busy {
        gw.wait_state(ADMIN, id, "RUNNING", WAIT);
    }
    // Pools are shared: a tenant's admin cannot drain or reshape them.
    let env = assert_envelope(gw.post(ACME_ADMIN, None, "/api/v1/pools/hostile-pack/drain", &json!({})), 403);
    assert_eq!(env["code"], "operator_required");
    let patch = gw.patch(ACME_ADMIN, "/api/v1/pools/hello-pack", &json!({"max_memory_bytes": 65536}));
    assert_eq!(assert_envelope(patch, 403)["code"], "operator_required");
    let put = gw.put(ACME_ADMIN, "/api/v1/pools/mine", &json!({"packs": ["hello-pack"]}));
    assert_eq!(assert_envelope(put, 403)["code"], "operator_required");
    let resp = gw.post(ADMIN, None, "/api/v1/pools/hostile-pack/drain", &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let progress: Value = resp.json().unwrap();
    assert_eq!(progress["status"], "draining");
    assert_eq!(progress["in_flight"], 2, "{progress}");
    assert_eq!(progress["drained"], false);
    // A job submitted now waits: nothing new starts on a draining pool.
    let (_, late) = gw.submit(ADMIN, None, json!({"topic": "job.hostile-pack.echo", "input": {"late": true}}));
    let late = late["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let p: Value = gw.post(ADMIN, None, "/api/v1/pools/hostile-pack/drain", &json!({})).json().unwrap();
        if p["drained"] == true {
            assert_eq!(p["in_flight"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {p}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in &busy {
        let job = gw.wait_job(ADMIN, None, id, WAIT);
        assert_eq!(job["state"], "SUCCEEDED", "in-flight jobs finish: {job}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let waiting: Value = gw.get(ADMIN, None, &format!("/api/v1/jobs/{late}")).json().unwrap();
    assert_eq!(waiting["state"], "SCHEDULED", "{waiting}");
    // Other pools keep working.
    let (_, hello) = gw.submit(ADMIN, None, echo("other pool"));
    assert_eq!(gw.wait_job(ADMIN, None, hello["job_id"].as_str().unwrap(), WAIT)["state"], "SUCCEEDED");
    // Back to active: the waiting job runs.
    let resp = gw
        .client
        .patch(gw.url("/api/v1/pools/hostile-pack"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"status": "active"}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(gw.wait_job(ADMIN, None, &late, WAIT)["state"], "SUCCEEDED");

    // Create, conflict, update live, unknown.
    let resp = gw
        .client
        .put(gw.url("/api/v1/pools/spare"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"packs": ["spare-pack"], "max_concurrency": 2}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let resp = gw
        .client
        .put(gw.url("/api/v1/pools/spare"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"packs": ["other"], "max_concurrency": 2}))
        .send()
        .unwrap();
    assert_eq!(assert_envelope(resp, 409)["code"], "POOL_NAME_CONFLICT");
    let resp = gw
        .client
        .patch(gw.url("/api/v1/pools/spare"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"max_concurrency": 5}))
        .send()
        .unwrap();
    assert_eq!(resp.json::<Value>().unwrap()["max_concurrency"], 5);
    let resp = gw
        .client
        .patch(gw.url("/api/v1/pools/nope"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"max_concurrency": 5}))
        .send()
        .unwrap();
    assert_envelope(resp, 404);
    let resp = gw
        .client
        .patch(gw.url("/api/v1/pools/spare"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"max_concurency": 5}))
        .send()
        .unwrap();
    assert_eq!(assert_envelope(resp, 400)["field"], "max_concurency");
}

const OUTPUT_POLICY: &str = r#"
default_decision: deny
rules:
  - id: allow-hostile
    match:
      topics: ["job.hostile-pack.*"]
    decision: allow
output_rules:
  - id: redact-emails
    match:
      topics: ["job.hello-pack.echo"]
      scanners: ["pii"]
    decision: redact
    reason: "E-mail addresses are redacted."
  - id: hold-secrets
    match:
      topics: ["job.hostile-pack.echo"]
      keywords: ["TOPSECRET"]
    decision: quarantine
    reason: "Looks secret."
  - id: block-forbidden
    match:
      topics: ["job.hostile-pack.echo"]
      keywords: ["FORBIDDEN"]
    decision: deny
    reason: "Never returned."
"#;

#[test]
fn output_rules_redact_quarantine_and_deny_results() {
    let gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(OUTPUT_POLICY.into()),
        ..Default::default()
    });
    // Redact: an e-mail address in hello-pack's result.
    let (_, body) = gw.submit(ACME, None, echo("write to jane.doe@example.com today"));
    let job = gw.wait_job(ACME, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["result"]["message"], "write to [REDACTED] today", "{job}");
    assert!(
        !job.to_string().contains("jane.doe@example.com") || job["input"]["message"].as_str().unwrap().contains("jane")
    );
    assert!(!job["result"].to_string().contains("jane.doe"), "stored result is redacted");
    assert_eq!(job["output_safety"]["decision"], "REDACT");
    assert_eq!(job["output_safety"]["rule_id"], "redact-emails");
    assert_eq!(job["output_safety"]["redacted"], true);
    assert!(!job["output_safety"]["findings"].as_array().unwrap().is_empty());
    assert_eq!(job["output_decision"], "REDACT");
    // Clean output: allowed, with the metadata saying so.
    let (_, body) = gw.submit(ACME, None, echo("nothing to hide"));
    let clean = gw.wait_job(ACME, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(clean["result"]["message"], "nothing to hide");
    assert_eq!(clean["output_safety"]["decision"], "ALLOW");

    // Quarantine: kept for admins, withheld from other readers, in the DLQ.
    let (_, body) =
        gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"note": "TOPSECRET plans"}}));
    let id = body["job_id"].as_str().unwrap().to_string();
    let held = gw.wait_job(ACME, None, &id, WAIT);
    assert_eq!(held["state"], "OUTPUT_QUARANTINED", "{held}");
    assert!(held["result"].is_null());
    assert_eq!(held["result_withheld"], true);
    assert_eq!(held["output_safety"]["rule_id"], "hold-secrets");
    let admin_view: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{id}")).json().unwrap();
    assert_eq!(admin_view["result"]["note"], "TOPSECRET plans");
    let dlq: Value = gw.get(ACME_ADMIN, None, "/api/v1/dlq").json().unwrap();
    assert!(
        dlq["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["job_id"] == id.as_str() && e["error_code"] == "output_quarantined"),
        "{dlq}"
    );

    // Deny: the result is dropped.
    let (_, body) = gw.submit(ACME, None, json!({"topic": "job.hostile-pack.echo", "input": {"note": "FORBIDDEN"}}));
    let denied = gw.wait_job(ACME, None, body["job_id"].as_str().unwrap(), WAIT);
    assert_eq!(denied["state"], "FAILED");
    assert_eq!(denied["error_code"], "output_denied");
    let admin_view: Value =
        gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{}", denied["id"].as_str().unwrap())).json().unwrap();
    assert!(admin_view["result"].is_null());
}
