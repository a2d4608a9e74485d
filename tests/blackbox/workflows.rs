//! Workflows: definitions, runs executed by the gateway, timelines, cancel,
//! rerun, restart recovery and tenant isolation.

use super::harness::{Gateway, Options, assert_envelope, parallel};
use super::{ACME_ADMIN, ADMIN, DENY_POLICY, GLOBEX, WAIT, keys_env};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn create(gw: &Gateway, key: &str, def: &Value) -> String {
    let resp = gw.post(key, None, "/api/v1/workflows", def);
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap();
    assert!(status == 201 || status == 200, "create workflow: {status} {body}");
    body["id"].as_str().unwrap().to_string()
}

fn start(gw: &Gateway, key: &str, workflow: &str, input: &Value) -> String {
    let resp = gw.post(key, None, &format!("/api/v1/workflows/{workflow}/runs"), input);
    assert_eq!(resp.status().as_u16(), 200, "start run");
    let body: Value = resp.json().unwrap();
    body["run_id"].as_str().unwrap().to_string()
}

fn run(gw: &Gateway, key: &str, id: &str) -> Value {
    let resp = gw.get(key, None, &format!("/api/v1/workflow-runs/{id}"));
    assert_eq!(resp.status().as_u16(), 200, "GET run {id}");
    resp.json().unwrap()
}

/// Poll a run until `done` says so (or panic after the test wait).
fn wait_run(gw: &Gateway, key: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = run(gw, key, id);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run never {what}: {r}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn wait_status(gw: &Gateway, key: &str, id: &str, status: &str) -> Value {
    wait_run(gw, key, id, status, |r| r["status"] == status)
}

fn timeline(gw: &Gateway, key: &str, id: &str) -> Vec<Value> {
    let resp = gw.get(key, None, &format!("/api/v1/workflow-runs/{id}/timeline?limit=500"));
    assert_eq!(resp.status().as_u16(), 200);
    resp.json::<Vec<Value>>().unwrap()
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

fn count(events: &[Value], kind: &str, step: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind && e["step_id"] == step).count()
}

fn jobs_on(gw: &Gateway, key: &str, topic: &str) -> Vec<Value> {
    let page: Value = gw.get(key, None, &format!("/api/v1/jobs?topic={topic}&limit=500")).json().unwrap();
    page["items"].as_array().unwrap().clone()
}

#[test]
fn five_steps_with_fanout_condition_and_gate_run_after_approval() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let def = json!({
        "id": "review-and-echo",
        "name": "Review and echo",
        "input_schema": {"type": "object", "required": ["message", "items"],
                         "properties": {"message": {"type": "string"}, "items": {"type": "array"}}},
        "steps": {
            "greet": {"type": "worker", "topic": "job.hello-pack.echo", "input": {"message": "${input.message}"}},
            "fan": {"type": "worker", "topic": "job.hello-pack.echo", "depends_on": ["greet"],
                    "for_each": "input.items", "max_parallel": 2, "input": {"message": "item ${item}"}},
            "check": {"type": "condition", "depends_on": ["fan"], "condition": "size(steps.fan.output) == 3"},
            "gate": {"type": "approval", "depends_on": ["check"], "condition": "steps.check.output",
                     "input": {"summary": "${steps.greet.output.message}"}},
            "final": {"type": "worker", "topic": "job.hello-pack.echo", "depends_on": ["gate"],
                      "input": {"message": "done: ${input.message} (${steps.fan.output.0.message})"}}
        }
    });
    assert_eq!(create(&gw, ACME_ADMIN, &def), "review-and-echo");
    let run_id = start(&gw, ACME_ADMIN, "review-and-echo", &json!({"message": "hi", "items": ["a", "b", "c"]}));
    let waiting = wait_status(&gw, ACME_ADMIN, &run_id, "waiting");
    assert_eq!(waiting["steps"]["greet"]["status"], "succeeded");
    assert_eq!(waiting["steps"]["fan"]["status"], "succeeded");
    assert_eq!(waiting["steps"]["fan"]["output"].as_array().unwrap().len(), 3);
    assert_eq!(waiting["steps"]["check"]["output"], true);
    assert_eq!(waiting["steps"]["gate"]["status"], "waiting");
    assert!(waiting["steps"]["final"]["job_id"].is_null(), "nothing after the gate ran: {waiting}");

    // What the timeline says while waiting stays exactly as it was.
    let while_waiting = timeline(&gw, ACME_ADMIN, &run_id);
    // The gate is an approval like any other, listed with its reason.
    let approvals: Value = gw.get(ACME_ADMIN, None, "/api/v1/approvals").json().unwrap();
    let gate_job = waiting["steps"]["gate"]["job_id"].as_str().unwrap().to_string();
    let listed = approvals["items"].as_array().unwrap().iter().find(|a| a["job_id"] == gate_job.as_str()).cloned();
    let listed = listed.expect("the gate is listed among approvals");
    assert_eq!(listed["rule_id"], "workflow-approval-step");
    assert_eq!(listed["job"]["input"]["decision"]["summary"], "hi", "{listed}");
    // The one who started the run cannot approve it.
    let own = gw.post(ACME_ADMIN, None, &format!("/api/v1/approvals/{gate_job}/approve"), &json!({}));
    assert_envelope(own, 403);
    let ok = gw.post(ADMIN, Some("acme"), &format!("/api/v1/approvals/{gate_job}/approve"), &json!({"reason": "ok"}));
    assert_eq!(ok.status().as_u16(), 200);

    let done = wait_status(&gw, ACME_ADMIN, &run_id, "succeeded");
    assert_eq!(done["output"]["message"], "done: hi (item a)", "{done}");
    assert_eq!(done["steps"]["final"]["status"], "succeeded");
    assert_eq!(done["context"]["steps"]["greet"]["output"]["message"], "hi");
    let fan_items = done["steps"]["fan"]["children"].as_array().unwrap();
    assert_eq!(fan_items.len(), 3);
    for item in fan_items {
        assert_eq!(item["attempts"], 1);
        assert_eq!(item["status"], "succeeded");
    }

    let events = timeline(&gw, ACME_ADMIN, &run_id);
    assert!(events.len() > while_waiting.len());
    assert_eq!(&events[..while_waiting.len()], &while_waiting[..], "the timeline is append-only");
    let kinds = types(&events);
    assert_eq!(kinds.first().map(String::as_str), Some("run_started"));
    assert_eq!(kinds.last().map(String::as_str), Some("run_finished"));
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "sequence numbers are dense and ordered");
        assert_eq!(e["run_id"], run_id.as_str());
        assert!(e["time"].is_string());
    }
    let times: Vec<&str> = events.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    assert_eq!(times, sorted, "times never go back");
    // Every step's story is there, in order.
    let pos = |kind: &str, step: &str| {
        events.iter().position(|e| e["type"] == kind && e["step_id"] == step).unwrap_or_else(|| panic!("{kind} {step}"))
    };
    assert!(pos("step_scheduled", "greet") < pos("step_dispatched", "greet"));
    assert!(pos("step_dispatched", "greet") < pos("step_succeeded", "greet"));
    assert!(pos("step_succeeded", "greet") < pos("step_fanout_started", "fan"));
    for i in 0..3 {
        let item = format!("fan~{i}");
        assert_eq!(count(&events, "step_scheduled", &item), 1);
        assert_eq!(count(&events, "step_succeeded", &item), 1);
    }
    assert!(pos("step_succeeded", "fan") < pos("step_condition_evaluated", "check"));
    assert!(pos("step_condition_evaluated", "check") < pos("step_waiting", "gate"));
    assert!(pos("step_waiting", "gate") < pos("step_approved", "gate"));
    assert!(pos("step_approved", "gate") < pos("step_scheduled", "final"));
    assert!(pos("step_succeeded", "final") < kinds.len() - 1);
    // Paginated: two at a time, resumed from the cursor, adds up to the same list.
    let mut paged = Vec::new();
    let mut after = 0u64;
    loop {
        let resp = gw.get(ACME_ADMIN, None, &format!("/api/v1/workflow-runs/{run_id}/timeline?limit=2&after={after}"));
        let next = resp.headers().get("x-next-cursor").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        let page: Vec<Value> = resp.json().unwrap();
        paged.extend(page);
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(paged, events);
    // Each worker step's job carries the workflow's labels.
    let job: Value = gw
        .get(ACME_ADMIN, None, &format!("/api/v1/jobs/{}", done["steps"]["greet"]["job_id"].as_str().unwrap()))
        .json()
        .unwrap();
    assert_eq!(job["labels"]["workflow_id"], "review-and-echo");
    assert_eq!(job["labels"]["run_id"], run_id.as_str());
    assert_eq!(job["labels"]["step_id"], "greet");
    assert_eq!(job["safety_rule_id"], "hello-pack-allow");
}

const ALLOW_ALL_HOSTILE: &str = r#"
version: "blackbox-2"
default_decision: deny
rules:
  - id: allow-hostile-echo
    match:
      topics: ["job.hostile-pack.echo"]
    decision: allow
    reason: "Now allowed."
"#;

#[test]
fn denied_step_fails_the_run_and_a_rerun_reuses_earlier_outputs() {
    let mut gw = Gateway::start(Options {
        env: keys_env(),
        hostile_pack: true,
        policy: Some(DENY_POLICY.into()),
        ..Default::default()
    });
    let def = json!({
        "id": "three",
        "steps": {
            "first": {"topic": "job.hello-pack.echo", "input": {"message": "${input.message}"}},
            "second": {"topic": "job.hostile-pack.echo", "depends_on": ["first", "aside"],
                       "input": {"from_first": "${steps.first.output.message}"}},
            "third": {"topic": "job.hello-pack.echo", "depends_on": ["second"],
                      "input": {"message": "third saw ${steps.second.output.from_first}"}},
            "aside": {"topic": "job.hello-pack.echo", "input": {"message": "unrelated"}}
        }
    });
    create(&gw, GLOBEX, &def);
    let run_id = start(&gw, GLOBEX, "three", &json!({"message": "m1"}));
    let failed = wait_run(&gw, GLOBEX, &run_id, "finished", |r| r["status"] != "running" && r["status"] != "waiting");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["step_id"], "second");
    assert_eq!(failed["error"]["rule_id"], "no-hostile-echo");
    assert_eq!(failed["steps"]["second"]["status"], "denied");
    assert_eq!(failed["steps"]["third"]["status"], "skipped");
    let events = timeline(&gw, GLOBEX, &run_id);
    let denied = events.iter().find(|e| e["type"] == "step_denied").expect("step_denied event");
    assert_eq!(denied["step_id"], "second");
    assert_eq!(denied["data"]["rule_id"], "no-hostile-echo");
    let finished = events.last().unwrap();
    assert_eq!(finished["type"], "run_finished");
    assert_eq!(finished["data"]["rule_id"], "no-hostile-echo");
    assert!(finished["message"].as_str().unwrap().contains("no-hostile-echo"));
    let first_job = failed["steps"]["first"]["job_id"].as_str().unwrap().to_string();
    let aside_job = failed["steps"]["aside"]["job_id"].as_str().unwrap().to_string();

    // Change the policy (restart with another base policy), then rerun from the denied step.
    gw.restart_with_policy(keys_env(), ALLOW_ALL_HOSTILE);
    let resp = gw.post(GLOBEX, None, &format!("/api/v1/workflow-runs/{run_id}/rerun"), &json!({"from_step": "second"}));
    assert_eq!(resp.status().as_u16(), 200);
    let rerun: Value = resp.json().unwrap();
    let new_id = rerun["run_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, run_id);
    let done = wait_status(&gw, GLOBEX, &new_id, "succeeded");
    assert_eq!(done["rerun_of"], run_id.as_str());
    assert_eq!(done["rerun_step"], "second");
    assert_eq!(done["output"]["message"], "third saw m1", "{done}");
    // Steps outside the rerun kept their outputs and jobs: they did not run again.
    assert_eq!(done["steps"]["first"]["job_id"], first_job.as_str());
    assert_eq!(done["steps"]["first"]["reused_from"], run_id.as_str());
    assert_eq!(done["steps"]["aside"]["job_id"], aside_job.as_str());
    let hello_jobs = jobs_on(&gw, GLOBEX, "job.hello-pack.echo");
    assert_eq!(hello_jobs.len(), 3, "first and aside once, third once: {hello_jobs:?}");
    let events = timeline(&gw, GLOBEX, &new_id);
    assert_eq!(count(&events, "step_reused", "first"), 1);
    assert_eq!(count(&events, "step_scheduled", "first"), 0);
    // Linked both ways.
    let old = run(&gw, GLOBEX, &run_id);
    assert_eq!(old["reruns"], json!([new_id]));
    // A rerun of the whole run (no step named) runs every step again.
    let resp = gw.post(GLOBEX, None, &format!("/api/v1/workflow-runs/{new_id}/rerun"), &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let whole_id = resp.json::<Value>().unwrap()["run_id"].as_str().unwrap().to_string();
    let whole = wait_status(&gw, GLOBEX, &whole_id, "succeeded");
    assert_eq!(whole["rerun_of"], new_id.as_str());
    let events = timeline(&gw, GLOBEX, &whole_id);
    assert_eq!(events.iter().filter(|e| e["type"] == "step_reused").count(), 0, "nothing reused");
    assert_eq!(count(&events, "step_scheduled", "first"), 1);
    assert_ne!(whole["steps"]["first"]["job_id"], first_job.as_str());
    assert_eq!(jobs_on(&gw, GLOBEX, "job.hello-pack.echo").len(), 6, "first, aside and third once more");
    // Bad reruns: unknown step (400), unknown run (404), unknown field (400).
    let bad = gw.post(GLOBEX, None, &format!("/api/v1/workflow-runs/{run_id}/rerun"), &json!({"from_step": "nope"}));
    assert!(assert_envelope(bad, 400)["error"].as_str().unwrap().contains("nope"));
    assert_envelope(
        gw.post(GLOBEX, None, "/api/v1/workflow-runs/00000000-0000-0000-0000-000000000000/rerun", &json!({})),
        404,
    );
    let bad = assert_envelope(
        gw.post(GLOBEX, None, &format!("/api/v1/workflow-runs/{run_id}/rerun"), &json!({"step": "x"})),
        400,
    );
    assert_eq!(bad["field"], "step");

    // With an Idempotency-Key, parallel reruns make one run and all answer it.
    let rerun_keyed = |step: &str| {
        let r = gw
            .client
            .post(gw.url(&format!("/api/v1/workflow-runs/{whole_id}/rerun")))
            .header("X-API-Key", GLOBEX)
            .header("Idempotency-Key", "rerun-once")
            .json(&json!({"from_step": step}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let answers: Vec<(u16, Value)> = parallel(4, |_| rerun_keyed("third"));
    let first = answers[0].1["run_id"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["run_id"], first, "one rerun: {answers:?}");
    }
    wait_status(&gw, GLOBEX, first.as_str().unwrap(), "succeeded");
    assert_eq!(run(&gw, GLOBEX, &whole_id)["reruns"], json!([first]));
    // The same key for another step is a conflict.
    assert_eq!(rerun_keyed("first").0, 409);
}

#[test]
fn cancelling_a_run_waiting_for_approval_refuses_the_approval() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let def = json!({
        "id": "gated",
        "steps": {
            "gate": {"type": "approval"},
            "after": {"topic": "job.hello-pack.echo", "depends_on": ["gate"], "input": {"message": "must not run"}}
        }
    });
    create(&gw, ACME_ADMIN, &def);
    let run_id = start(&gw, ACME_ADMIN, "gated", &json!({}));
    let waiting = wait_status(&gw, ACME_ADMIN, &run_id, "waiting");
    let gate_job = waiting["steps"]["gate"]["job_id"].as_str().unwrap().to_string();
    // A run in progress cannot be rerun.
    let busy =
        assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/workflow-runs/{run_id}/rerun"), &json!({})), 409);
    assert_eq!(busy["code"], "run_not_rerunnable");

    let resp = gw.post(ACME_ADMIN, None, &format!("/api/v1/workflow-runs/{run_id}/cancel"), &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let cancelled: Value = resp.json().unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    // Idempotent; the upstream path answers 204.
    let again: Value =
        gw.post(ACME_ADMIN, None, &format!("/api/v1/workflow-runs/{run_id}/cancel"), &json!({})).json().unwrap();
    assert_eq!(again["status"], "cancelled");
    let upstream = gw.post(ACME_ADMIN, None, &format!("/api/v1/workflows/gated/runs/{run_id}/cancel"), &json!({}));
    assert_eq!(upstream.status().as_u16(), 204);

    let approve = gw.post(ADMIN, Some("acme"), &format!("/api/v1/approvals/{gate_job}/approve"), &json!({}));
    assert_envelope(approve, 409);
    let reject = gw.post(ADMIN, Some("acme"), &format!("/api/v1/approvals/{gate_job}/reject"), &json!({}));
    assert_envelope(reject, 409);
    std::thread::sleep(Duration::from_millis(1200));
    let after = run(&gw, ACME_ADMIN, &run_id);
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["steps"]["after"]["status"], "skipped");
    assert!(after["steps"]["after"]["job_id"].is_null());
    assert!(jobs_on(&gw, ACME_ADMIN, "job.hello-pack.echo").is_empty(), "nothing else ran");
    let gate: Value = gw.get(ACME_ADMIN, None, &format!("/api/v1/jobs/{gate_job}")).json().unwrap();
    assert_eq!(gate["state"], "CANCELLED");
    let events = timeline(&gw, ACME_ADMIN, &run_id);
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    assert_eq!(events.last().unwrap()["status"], "cancelled");
    // A finished run that is not cancelled cannot be cancelled.
    let def = json!({"id": "quick", "steps": {"only": {"topic": "job.hello-pack.echo", "input": {"message": "q"}}}});
    create(&gw, ACME_ADMIN, &def);
    let quick = start(&gw, ACME_ADMIN, "quick", &json!({}));
    wait_status(&gw, ACME_ADMIN, &quick, "succeeded");
    let env =
        assert_envelope(gw.post(ACME_ADMIN, None, &format!("/api/v1/workflow-runs/{quick}/cancel"), &json!({})), 409);
    assert_eq!(env["code"], "run_not_cancellable");
}

#[test]
fn a_killed_gateway_finishes_the_run_and_no_step_runs_twice() {
    let mut gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    let def = json!({
        "id": "survivor",
        "steps": {
            "a": {"topic": "job.hello-pack.echo", "input": {"message": "${input.message}"}},
            "wait": {"type": "delay", "delay_sec": 2, "depends_on": ["a"]},
            "b": {"topic": "job.hostile-pack.busy", "depends_on": ["wait"], "input": {"ms": 200}},
            "c": {"topic": "job.hello-pack.echo", "depends_on": ["b"], "input": {"message": "after ${input.message}"}}
        }
    });
    create(&gw, GLOBEX, &def);
    let run_id = start(&gw, GLOBEX, "survivor", &json!({"message": "x"}));
    let mid = wait_run(&gw, GLOBEX, &run_id, "in its delay", |r| r["steps"]["wait"]["status"] == "running");
    assert_eq!(mid["timers"][0]["step_id"], "wait", "{mid}");
    gw.restart(keys_env());
    let done = wait_status(&gw, GLOBEX, &run_id, "succeeded");
    for step in ["a", "b", "c"] {
        assert_eq!(done["steps"][step]["attempts"], 1, "{step}: {done}");
        assert!(done["steps"][step]["job_id"].as_str().unwrap().ends_with("@1"));
    }
    // The echo counter of the tenant: a was the first echo, c the second: nothing ran twice.
    assert_eq!(done["output"]["count"], 2, "{done}");
    assert_eq!(jobs_on(&gw, GLOBEX, "job.hostile-pack.busy").len(), 1);
    let events = timeline(&gw, GLOBEX, &run_id);
    for step in ["a", "b", "c"] {
        assert_eq!(count(&events, "step_scheduled", step), 1, "{step}");
        assert_eq!(count(&events, "step_succeeded", step), 1, "{step}");
    }
    assert_eq!(count(&events, "step_delay_completed", "wait"), 1);
}

/// A step whose job was RUNNING when the gateway died runs again after the
/// restart (at least once: the attempt never finished), and the timeline
/// says so instead of hiding it.
#[test]
fn a_step_interrupted_by_a_kill_runs_again_and_the_timeline_says_so() {
    let mut gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    let def = json!({"id": "interrupted", "steps": {"b": {"topic": "job.hostile-pack.busy", "input": {"ms": 700}}}});
    create(&gw, GLOBEX, &def);
    // A loaded machine may finish the job before the kill lands: try again then.
    for _ in 0..3 {
        let run_id = start(&gw, GLOBEX, "interrupted", &json!({}));
        let job = format!("{run_id}:b@1");
        gw.wait_state(GLOBEX, &job, "RUNNING", WAIT);
        gw.restart(keys_env());
        let done = wait_status(&gw, GLOBEX, &run_id, "succeeded");
        assert_eq!(done["steps"]["b"]["attempts"], 1, "the same step attempt: {done}");
        let job = gw.wait_job(GLOBEX, None, &job, WAIT);
        let events = timeline(&gw, GLOBEX, &run_id);
        assert_eq!(count(&events, "step_succeeded", "b"), 1);
        if job["attempts"] == 1 {
            assert_eq!(count(&events, "step_interrupted", "b"), 0, "{events:?}");
            continue;
        }
        assert_eq!(job["attempts"], 2, "its job ran again: {job}");
        assert_eq!(count(&events, "step_interrupted", "b"), 1, "{events:?}");
        let at = |kind: &str| events.iter().position(|e| e["type"] == kind && e["step_id"] == "b").unwrap();
        assert!(at("step_interrupted") < at("step_succeeded"));
        return;
    }
    panic!("the job finished before the kill three times");
}

#[test]
fn the_hello_pack_workflow_runs_from_the_api() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let list: Value = gw.get(ADMIN, None, "/api/v1/workflows").json().unwrap();
    let hello = list["items"].as_array().unwrap().iter().find(|w| w["id"] == "hello-pack.echo").cloned();
    assert_eq!(hello.expect("pack workflow listed")["source"], "pack:hello-pack");
    let resp = gw
        .client
        .post(gw.url("/api/v1/workflows/hello-pack.echo/runs"))
        .header("X-API-Key", ADMIN)
        .header("Idempotency-Key", "hello-run-1")
        .json(&json!({"message": "hello from a workflow"}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let started: Value = resp.json().unwrap();
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let done = wait_status(&gw, ADMIN, &run_id, "succeeded");
    assert_eq!(done["output"]["message"], "hello from a workflow", "{done}");
    assert_eq!(done["output"]["echo"], "hello from a workflow");
    // `author` was not given: the template dropped it (the pack's schema forbids null).
    assert!(done["steps"]["echo"]["input"].get("author").is_none());
    // Idempotency: same key and input → same run; other input → 409; another tenant → another run.
    let again = gw
        .client
        .post(gw.url("/api/v1/workflows/hello-pack.echo/runs?idempotency_key=hello-run-1"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"message": "hello from a workflow"}))
        .send()
        .unwrap();
    assert_eq!(again.json::<Value>().unwrap()["run_id"], run_id.as_str());
    let conflict = gw
        .client
        .post(gw.url("/api/v1/workflows/hello-pack.echo/runs"))
        .header("X-API-Key", ADMIN)
        .header("Idempotency-Key", "hello-run-1")
        .json(&json!({"message": "different"}))
        .send()
        .unwrap();
    assert_eq!(assert_envelope(conflict, 409)["code"], "RUN_IDEMPOTENCY_CONFLICT");
    let other = gw
        .client
        .post(gw.url("/api/v1/workflows/hello-pack.echo/runs"))
        .header("X-API-Key", GLOBEX)
        .header("Idempotency-Key", "hello-run-1")
        .json(&json!({"message": "hello from a workflow"}))
        .send()
        .unwrap();
    assert_ne!(other.json::<Value>().unwrap()["run_id"], run_id.as_str());
    let runs: Value = gw.get(ADMIN, None, "/api/v1/workflows/hello-pack.echo/runs").json().unwrap();
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "one run in this tenant: {runs}");
    // Input that breaks the step's schema fails the step with the violation; nothing runs.
    let bad_id = start(&gw, ADMIN, "hello-pack.echo", &json!({"message": 5}));
    let bad = wait_status(&gw, ADMIN, &bad_id, "failed");
    assert_eq!(bad["steps"]["echo"]["error"]["code"], "input_schema_violation", "{bad}");
    // Pack workflows are read-only.
    let del = gw.client.delete(gw.url("/api/v1/workflows/hello-pack.echo")).header("X-API-Key", ADMIN).send().unwrap();
    assert_eq!(assert_envelope(del, 409)["code"], "workflow_owned_by_pack");
}

#[test]
fn runs_and_timelines_are_invisible_to_other_tenants() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let def =
        json!({"id": "private", "steps": {"only": {"topic": "job.hello-pack.echo", "input": {"message": "secret"}}}});
    create(&gw, ACME_ADMIN, &def);
    let run_id = start(&gw, ACME_ADMIN, "private", &json!({}));
    wait_status(&gw, ACME_ADMIN, &run_id, "succeeded");
    for path in [
        format!("/api/v1/workflow-runs/{run_id}"),
        format!("/api/v1/workflow-runs/{run_id}/timeline"),
        "/api/v1/workflows/private".to_string(),
        "/api/v1/workflows/private/runs".to_string(),
    ] {
        let env = assert_envelope(gw.get(GLOBEX, None, &path), 404);
        assert!(env["error"].as_str().unwrap().contains("not found"), "{path}: {env}");
    }
    for path in [format!("/api/v1/workflow-runs/{run_id}/cancel"), format!("/api/v1/workflow-runs/{run_id}/rerun")] {
        assert_envelope(gw.post(GLOBEX, None, &path, &json!({})), 404);
    }
    assert_envelope(gw.post(GLOBEX, None, "/api/v1/workflows/private/runs", &json!({})), 404);
    let runs: Value = gw.get(GLOBEX, None, "/api/v1/workflow-runs").json().unwrap();
    assert!(runs["items"].as_array().unwrap().is_empty());
    let listed: Value = gw.get(GLOBEX, None, "/api/v1/workflows").json().unwrap();
    assert!(!listed["items"].as_array().unwrap().iter().any(|w| w["id"] == "private"));
    // The owner sees it.
    let runs: Value = gw.get(ACME_ADMIN, None, "/api/v1/workflow-runs?status=succeeded").json().unwrap();
    assert_eq!(runs["items"][0]["id"], run_id.as_str());
}

#[test]
fn definitions_are_validated_and_managed() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let post = |def: Value| gw.post(ADMIN, None, "/api/v1/workflows", &def);
    let cycle = assert_envelope(
        post(json!({"id": "c", "steps": {
            "a": {"type": "approval", "depends_on": ["b"]},
            "b": {"type": "approval", "depends_on": ["a"]}}})),
        400,
    );
    let msg = cycle["error"].as_str().unwrap();
    assert!(msg.contains("circular dependency") && msg.contains("a") && msg.contains("b"), "{msg}");
    let dangling =
        assert_envelope(post(json!({"id": "d", "steps": {"a": {"type": "approval", "depends_on": ["ghost"]}}})), 400);
    assert!(dangling["error"].as_str().unwrap().contains("\"ghost\""), "{dangling}");
    let unknown = assert_envelope(post(json!({"id": "u", "steps": {"a": {"type": "approval", "dependson": []}}})), 400);
    assert_eq!(unknown["field"], "dependson");
    assert_envelope(post(json!({"id": "t", "steps": {"a": {"type": "teleport"}}})), 400);
    assert_envelope(post(json!({"id": "bad id!", "steps": {"a": {"type": "approval"}}})), 400);
    assert_envelope(post(json!({"id": "e", "steps": {}})), 400);
    assert_envelope(
        post(json!({"id": "x", "steps": {"a": {"topic": "job.hello-pack.echo", "condition": "input.("}}})),
        400,
    );
    assert_envelope(post(json!({"id": "s", "input_schema": {"type": 12}, "steps": {"a": {"type": "approval"}}})), 400);
    // Viewers and users cannot define workflows.
    assert_envelope(
        gw.post(super::VIEWER, None, "/api/v1/workflows", &json!({"id": "v", "steps": {"a": {"type": "approval"}}})),
        403,
    );

    // Create, read, update (PUT replaces), list, delete.
    let def = json!({"id": "managed", "input_schema": {"type": "object", "required": ["n"]},
                     "steps": {"a": {"topic": "job.hello-pack.echo", "input": {"message": "${input.n}"}}}});
    let resp = post(def.clone());
    assert_eq!(resp.status().as_u16(), 201);
    let got: Value = gw.get(ADMIN, None, "/api/v1/workflows/managed").json().unwrap();
    assert_eq!(got["source"], "user");
    assert!(got["created_at"].is_string());
    let bad_input = gw.post(ADMIN, None, "/api/v1/workflows/managed/runs", &json!({"m": 1}));
    let env = assert_envelope(bad_input, 400);
    assert_eq!(env["violations"][0]["keyword"], "required", "{env}");
    let put = gw
        .client
        .put(gw.url("/api/v1/workflows/managed"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"name": "renamed", "steps": {"z": {"type": "approval"}}}))
        .send()
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let got: Value = gw.get(ADMIN, None, "/api/v1/workflows/managed").json().unwrap();
    assert_eq!(got["name"], "renamed");
    assert!(got["steps"].get("a").is_none());
    let del = gw.client.delete(gw.url("/api/v1/workflows/managed")).header("X-API-Key", ADMIN).send().unwrap();
    assert_eq!(del.status().as_u16(), 204);
    assert_envelope(gw.get(ADMIN, None, "/api/v1/workflows/managed"), 404);
    assert_envelope(gw.post(ADMIN, None, "/api/v1/workflows/managed/runs", &json!({})), 404);
    // Run input must be an object.
    let arr = gw
        .client
        .post(gw.url("/api/v1/workflows/hello-pack.echo/runs"))
        .header("X-API-Key", ADMIN)
        .header("Content-Type", "application/json")
        .body("[1]")
        .send()
        .unwrap();
    assert_envelope(arr, 400);
}

#[test]
fn a_step_with_an_unknown_topic_fails_the_run_with_the_reason() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let def = json!({"id": "nowhere", "steps": {
        "go": {"topic": "job.nobody.home", "input": {"x": 1}},
        "after": {"topic": "job.hello-pack.echo", "depends_on": ["go"], "input": {"message": "no"}}}});
    create(&gw, ADMIN, &def);
    let resp = gw.post(ADMIN, None, "/api/v1/workflows/nowhere/runs", &json!({}));
    assert_eq!(resp.status().as_u16(), 200);
    let started: Value = resp.json().unwrap();
    assert_eq!(started["status"], "failed", "the failure is known when the start answers: {started}");
    let run_id = started["run_id"].as_str().unwrap();
    let r = run(&gw, ADMIN, run_id);
    assert_eq!(r["error"]["code"], "unknown_topic", "{r}");
    let events = timeline(&gw, ADMIN, run_id);
    let failed = events.iter().find(|e| e["type"] == "step_failed").expect("step_failed");
    assert!(failed["message"].as_str().unwrap().contains("job.nobody.home"));
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    assert_eq!(events.last().unwrap()["status"], "failed");
}

#[test]
fn a_failing_step_is_retried_with_backoff_then_fails_the_run() {
    let gw = Gateway::start(Options { env: keys_env(), hostile_pack: true, ..Default::default() });
    let def = json!({"id": "flaky", "steps": {
        "try": {"topic": "job.hostile-pack.fail", "input": {},
                "retry": {"max_retries": 2, "initial_backoff_sec": 0.2, "multiplier": 2}}}});
    create(&gw, ADMIN, &def);
    let run_id = start(&gw, ADMIN, "flaky", &json!({}));
    let done = wait_status(&gw, ADMIN, &run_id, "failed");
    assert_eq!(done["steps"]["try"]["attempts"], 3, "{done}");
    assert!(done["steps"]["try"]["job_id"].as_str().unwrap().ends_with("@3"));
    let events = timeline(&gw, ADMIN, &run_id);
    let retries: Vec<&Value> = events.iter().filter(|e| e["type"] == "step_retrying").collect();
    assert_eq!(retries.len(), 2);
    let at = |e: &Value| e["time"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let next =
        |e: &Value| e["data"]["next_attempt_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let first_wait = next(retries[0]) - at(retries[0]);
    let second_wait = next(retries[1]) - at(retries[1]);
    assert!(second_wait > first_wait, "backoff grows: {first_wait} then {second_wait}");
    // The run owns its steps' failures: none is dead-lettered (a DLQ retry
    // would run the step outside its run); the rerun is the retry.
    let dlq: Value = gw.get(ADMIN, None, "/api/v1/dlq").json().unwrap();
    assert!(!dlq.to_string().contains(&run_id), "no step job in the DLQ: {dlq}");
    let failed_job = done["steps"]["try"]["job_id"].as_str().unwrap();
    assert_envelope(gw.post(ADMIN, None, &format!("/api/v1/dlq/{failed_job}/retry"), &json!({})), 404);
}

/// Regression: a run of a workflow whose input schema was deleted from the
/// registry answered 503 (as if the gateway were down) instead of naming
/// the missing schema.
#[test]
fn a_run_whose_input_schema_is_gone_is_a_conflict_naming_it() {
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    let schema = json!({"type": "object", "required": ["a"]});
    let resp = gw.post(ADMIN, None, "/api/v1/schemas", &json!({"id": "runs/Input", "schema": schema}));
    assert!(resp.status().is_success(), "{}", resp.status());
    let def = json!({"id": "checked", "input_schema_id": "runs/Input",
                     "steps": {"echo": {"topic": "job.hello-pack.echo", "input": {"message": "x"}}}});
    create(&gw, ADMIN, &def);
    assert_envelope(gw.post(ADMIN, None, "/api/v1/workflows/checked/runs", &json!({})), 400);
    let del = gw.client.delete(gw.url("/api/v1/schemas/runs%2FInput")).header("X-API-Key", ADMIN).send().unwrap();
    assert!(del.status().is_success(), "{}", del.status());
    let env = assert_envelope(gw.post(ADMIN, None, "/api/v1/workflows/checked/runs", &json!({"a": 1})), 409);
    assert_eq!(env["code"], "input_schema_missing");
    assert!(env["error"].as_str().unwrap().contains("runs/Input"), "{env}");
}
