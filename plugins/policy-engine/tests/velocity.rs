//! Velocity (rate) rules: counted through a [`VelocityCounter`] only once
//! their predicates match; they fire when the count exceeds `max_requests`.

use std::collections::HashMap;

use cordum_policy_engine::{Bundle, DecisionKind, Policy, Request, VelocityCounter, load};

fn policy(yaml: &str) -> Policy {
    load(&[Bundle::new("test", yaml)]).unwrap_or_else(|d| panic!("load failed: {d:?}"))
}

fn req(tenant: &str, topic: &str) -> Request {
    Request { tenant: tenant.to_owned(), topic: topic.to_owned(), ..Request::default() }
}

/// A counter that records every hit (like the host's real decisions) and
/// remembers the calls it got.
#[derive(Default)]
struct Recorder {
    windows: HashMap<(String, String), u64>,
    calls: Vec<(String, String, u32)>,
}

impl VelocityCounter for Recorder {
    fn hit(&mut self, rule_id: &str, key: &str, window_seconds: u32) -> u64 {
        self.calls.push((rule_id.to_owned(), key.to_owned(), window_seconds));
        let n = self.windows.entry((rule_id.to_owned(), key.to_owned())).or_default();
        *n += 1;
        *n
    }
}

const BURST: &str = r#"
default_decision: deny
rules:
  - id: burst
    match: {topics: ["job.hello.*"]}
    decision: throttle
    reason: "Too many requests."
    velocity: {max_requests: 2, window_seconds: 60, key: tenant}
  - id: allow-hello
    match: {topics: ["job.hello.*"]}
    decision: allow
"#;

#[test]
fn fires_only_when_the_count_exceeds_the_limit() {
    let p = policy(BURST);
    assert!(p.has_velocity_rules());
    let mut c = Recorder::default();
    for _ in 0..2 {
        let d = p.evaluate_with_counter(&req("acme", "job.hello.echo"), &mut c);
        assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Allow, "allow-hello"));
    }
    let d = p.evaluate_with_counter(&req("acme", "job.hello.echo"), &mut c);
    assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Throttle, "burst"));
    assert_eq!(d.reason, "Too many requests.");
    // Keyed by tenant: another tenant has its own window.
    let d = p.evaluate_with_counter(&req("globex", "job.hello.echo"), &mut c);
    assert_eq!(d.rule_id, "allow-hello");
    assert_eq!(c.calls[0], ("burst".to_owned(), "acme".to_owned(), 60));
    assert_eq!(c.calls[3].1, "globex");
    // Without a counter the rule is skipped, as before.
    assert_eq!(p.evaluate(&req("acme", "job.hello.echo")).rule_id, "allow-hello");
}

#[test]
fn predicates_must_match_before_anything_is_counted() {
    let p = policy(BURST);
    let mut c = Recorder::default();
    let d = p.evaluate_with_counter(&req("acme", "job.other.x"), &mut c);
    assert_eq!(d.kind, DecisionKind::Deny);
    assert!(c.calls.is_empty(), "{:?}", c.calls);
    let e = p.explain_with_counter(&req("acme", "job.other.x"), &mut c);
    assert!(e.trace[0].detail.starts_with("topics:"), "{:?}", e.trace[0]);
    assert!(c.calls.is_empty());
}

#[test]
fn explain_gives_count_and_limit() {
    let p = policy(BURST);
    // A dry-run counter: the window already holds two requests.
    let mut would_be = |_: &str, _: &str, _: u32| 3u64;
    let e = p.explain_with_counter(&req("acme", "job.hello.echo"), &mut would_be);
    assert_eq!(e.decision.kind, DecisionKind::Throttle);
    assert!(e.trace[0].matched && e.trace[0].decisive);
    assert!(e.trace[0].detail.starts_with("velocity 3/2 in 60 s: fired"), "{}", e.trace[0].detail);
    assert!(e.trace[0].detail.contains("decision throttle"), "{}", e.trace[0].detail);
    assert!(e.trace[1].matched && !e.trace[1].decisive);

    let mut first = |_: &str, _: &str, _: u32| 1u64;
    let e = p.explain_with_counter(&req("acme", "job.hello.echo"), &mut first);
    assert_eq!(e.decision.rule_id, "allow-hello");
    assert!(!e.trace[0].matched && !e.trace[0].decisive);
    assert!(e.trace[0].detail.starts_with("velocity 1/2 in 60 s: under the limit"), "{}", e.trace[0].detail);
    assert!(e.trace[0].detail.contains("key \"acme\""), "{}", e.trace[0].detail);
    assert!(e.trace[1].decisive);

    // At the limit is not over it.
    let mut at = |_: &str, _: &str, _: u32| 2u64;
    assert_eq!(p.evaluate_with_counter(&req("acme", "job.hello.echo"), &mut at).rule_id, "allow-hello");
}

#[test]
fn keys_compose_and_an_empty_key_skips_the_rule() {
    let p = policy(
        r#"
default_decision: allow
rules:
  - id: per-user
    match: {topics: ["job.*"]}
    decision: deny
    velocity: {max_requests: 1, window_seconds: 10, key: "tenant:topic:labels.user:actor_id:actor_type:pack_id:capability"}
"#,
    );
    let mut r = req("", "job.a.b");
    r.actor_id = "alice".into();
    r.actor_type = "human".into();
    r.pack_id = "a".into();
    r.capability = "a.b".into();
    let mut c = Recorder::default();
    // No `user` label: the key resolves empty, nothing is counted.
    let e = p.explain_with_counter(&r, &mut c);
    assert!(c.calls.is_empty());
    assert!(e.defaulted);
    assert_eq!(
        e.trace[0].detail,
        "velocity key \"tenant:topic:labels.user:actor_id:actor_type:pack_id:capability\" resolves empty for this request: rule skipped"
    );
    // With it: every part in order; the tenant falls back to the default;
    // a `:` inside a value is escaped so keys cannot collide.
    r.labels.insert("user".into(), " u:1 ".into());
    assert_eq!(p.evaluate_with_counter(&r, &mut c).kind, DecisionKind::Allow);
    assert_eq!(p.evaluate_with_counter(&r, &mut c).kind, DecisionKind::Deny);
    assert_eq!(c.calls[0], ("per-user".to_owned(), "default:job.a.b:u\\:1:alice:human:a:a.b".to_owned(), 10));
}

#[test]
fn rules_after_the_decision_are_never_counted() {
    let p = policy(
        r#"
default_decision: deny
rules:
  - id: first
    match: {topics: ["job.*"]}
    decision: allow
  - id: later
    match: {topics: ["job.*"]}
    decision: throttle
    velocity: {max_requests: 1, window_seconds: 5, key: topic}
  - velocity: {max_requests: 1, window_seconds: 5, key: topic}
    match: {topics: ["job.x.*"]}
    decision: deny
"#,
    );
    let mut c = Recorder::default();
    assert_eq!(p.evaluate_with_counter(&req("t", "job.a.b"), &mut c).rule_id, "first");
    let e = p.explain_with_counter(&req("t", "job.a.b"), &mut c);
    assert!(c.calls.is_empty(), "{:?}", c.calls);
    assert_eq!(e.trace[1].detail, "matched, but rule \"first\" decided first (velocity not counted)");
    assert!(!e.trace[1].matched);
}

#[test]
fn evaluate_and_explain_count_alike() {
    let p = policy(
        r#"
default_decision: deny
rules:
  - id: a
    match: {topics: ["job.*"]}
    decision: deny
    velocity: {max_requests: 3, window_seconds: 5, key: tenant}
  - match: {topics: ["job.*"]}
    decision: throttle
    velocity: {max_requests: 1, window_seconds: 7, key: "tenant:topic"}
  - id: ok
    match: {topics: ["job.*"]}
    decision: allow
"#,
    );
    let (mut ev, mut ex) = (Recorder::default(), Recorder::default());
    for _ in 0..5 {
        let d = p.evaluate_with_counter(&req("t", "job.a.b"), &mut ev);
        let e = p.explain_with_counter(&req("t", "job.a.b"), &mut ex);
        assert_eq!(d, e.decision);
    }
    assert_eq!(ev.calls, ex.calls);
    // A rule without an id is counted under its position.
    assert_eq!(ev.calls[1], ("#1".to_owned(), "t:job.a.b".to_owned(), 7));
    // 1st: both under; 2nd: the unnamed one fires (2 > 1) before `a` is over.
    let mut c = Recorder::default();
    assert_eq!(p.evaluate_with_counter(&req("t", "job.a.b"), &mut c).rule_id, "ok");
    let d = p.evaluate_with_counter(&req("t", "job.a.b"), &mut c);
    assert_eq!((d.kind, d.rule_id.as_str()), (DecisionKind::Throttle, ""));
    // ... and `a` fires once its own window holds 4.
    p.evaluate_with_counter(&req("t", "job.a.b"), &mut c);
    assert_eq!(p.evaluate_with_counter(&req("t", "job.a.b"), &mut c).rule_id, "a");
}
