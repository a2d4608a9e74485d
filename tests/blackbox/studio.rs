//! Policy Studio end to end in headless Chromium, driven over WebDriver
//! (chromedriver): sign in, edit a bundle with an error shown at its line,
//! fix it, diff, explain with the draft, publish, see the job denied, roll
//! back and see it run again.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them the test fails when `CORDUM_REQUIRE_BROWSER=1` (CI) and is
//! skipped with a notice otherwise.

use super::harness::{Gateway, Options};
use super::{ACME, ACME_ADMIN, ADMIN, echo, keys_env};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_binary(names: &[&str]) -> Option<String> {
    names.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string())
}

impl Browser {
    fn start() -> Option<Browser> {
        let driver_bin = find_binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chrome_bin = find_binary(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let (Some(driver_bin), Some(chrome_bin)) = (driver_bin, chrome_bin) else {
            assert!(
                std::env::var("CORDUM_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "chromium and chromium-driver are required (apt-get install chromium chromium-driver)"
            );
            eprintln!("NOTICE: skipping the Policy Studio browser test: chromium/chromedriver not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chrome_bin, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"
            ]}
        }}});
        let resp: Value = http.post(format!("{base}/session")).json(&caps).send().unwrap().json().unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {resp}")).to_string();
        Some(Browser { driver, base, session, http })
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let resp: Value = req.send().unwrap().json().unwrap();
        if let Some(err) = resp["value"].get("error") {
            panic!("webdriver {method} {path}: {err} {}", resp["value"]["message"]);
        }
        resp["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.call("POST", &format!("/element/{el}/clear"), json!({}));
        self.call("POST", &format!("/element/{el}/value"), json!({"text": text}));
    }

    fn click(&self, css: &str) {
        let el = self.find(css);
        self.call("POST", &format!("/element/{el}/click"), json!({}));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": args}))
    }

    /// Text of the first element matching `css` ("" when there is none).
    fn text(&self, css: &str) -> String {
        self.script("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", json!([css]))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Wait until the text of `css` satisfies `ok`.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text(css);
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} never showed {what}; it shows {text:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Put `text` in the editor as a user typing would (fires `input`).
    fn set_editor(&self, text: &str) {
        self.script(
            "const e = document.getElementById('editor'); e.value = arguments[0]; \
             e.dispatchEvent(new Event('input'));",
            json!([text]),
        );
    }
}

const BROKEN: &str = "rules:\n  - id: stop-hello\n    match:\n      topics: [\"job.hello-pack.echo\"]\n    decision: deny\n    reason: \"closed\"\n  - id: broken\n    match: {topics: [unclosed\n";
const FIXED: &str = "rules:\n  - id: stop-hello\n    match:\n      topics: [\"job.hello-pack.echo\"]\n    decision: deny\n    reason: \"closed\"\n";

#[test]
fn policy_studio_edit_explain_publish_and_roll_back_in_chromium() {
    let Some(browser) = Browser::start() else { return };
    let gw = Gateway::start(Options { env: keys_env(), ..Default::default() });
    browser.goto(&gw.url("/studio"));

    // A wrong key is refused on the page; the right one signs in.
    browser.type_into("#api-key", "not-a-key-at-all");
    browser.click("#signin-button");
    browser.wait_text("#signin-error", "an error", |t| t.contains("not valid"));
    browser.type_into("#api-key", ADMIN);
    browser.click("#signin-button");
    browser.wait_text("#bundle-list", "the pack's bundle", |t| t.contains("hello-pack/safety"));

    // A new bundle with a YAML error: refused, the error shown at its line.
    browser.type_into("#new-bundle-id", "secops/invariants");
    browser.click("#new-bundle-button");
    browser.set_editor(BROKEN);
    browser.click("#save-button");
    let problem = browser.wait_text("#problems", "a problem", |t| t.contains("line"));
    let line = browser.script("return document.querySelector('#problems li').dataset.line;", json!([]));
    let line: u32 = line.as_str().unwrap().parse().unwrap();
    assert!((7..=9).contains(&line), "error reported at line {line}: {problem}");
    let marked = browser.script("return document.querySelector('#gutter .bad').dataset.line;", json!([]));
    assert_eq!(marked.as_str().unwrap(), line.to_string(), "the gutter marks the bad line");
    let bundles: Value = gw.get(ADMIN, None, "/api/v1/policy/bundles").json().unwrap();
    assert!(!bundles.to_string().contains("secops/invariants"), "nothing was saved");

    // Fixed: saved (not live yet), diff shows the new lines.
    browser.set_editor(FIXED);
    browser.click("#save-button");
    browser.wait_text("#status", "saved", |t| t.contains("Saved"));
    browser.click("#diff-button");
    browser.wait_text("#diff", "added lines", |t| t.contains("+ rules:") && t.contains("stop-hello"));
    let (status, _) = gw.submit(ADMIN, None, echo("before publish"));
    assert_eq!(status, 200, "saving does not change the active policy");

    // Explain with the draft: denied by the new rule, the deciding row marked.
    browser.type_into("#try-topic", "job.hello-pack.echo");
    browser.click("#explain-button");
    browser.wait_text("#decision", "the decision", |t| t.starts_with("DENY"));
    assert!(browser.text("#decision").contains("stop-hello"));
    assert!(browser.text("#trace tr.decisive").contains("stop-hello"));

    // Publish: the next job is denied by that rule.
    browser.type_into("#publish-message", "close hello");
    browser.click("#publish-button");
    browser.wait_text("#status", "published", |t| t.contains("Published"));
    browser.wait_text("#history", "the publish", |t| t.contains("close hello"));
    let resp = gw.post(ADMIN, None, "/api/v1/jobs", &echo("after publish"));
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(resp.json::<Value>().unwrap()["rule_id"], "stop-hello");

    // Roll back to the snapshot before: the job runs again.
    browser.click("#history button.rollback");
    browser.wait_text("#status", "rolled back", |t| t.contains("Rolled back"));
    let (status, body) = gw.submit(ADMIN, None, echo("after rollback"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn policy_studio_selects_a_tenant_policy_engine_from_the_marketplace_in_chromium() {
    use sha2::{Digest, Sha256};
    let Some(browser) = Browser::start() else { return };
    // A catalog offering one policy engine (it denies everything).
    let tmp = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(std::path::Path::new(super::harness::TEST_PACKS).join("deny-all-policy.wasm")).unwrap();
    let bundle = super::packs::plugin_bundle("strict", "cordum:policy/policy-plugin@0.1.0", wasm);
    std::fs::write(tmp.path().join("strict.tgz"), &bundle).unwrap();
    let catalog = json!({"packs": [{"id": "strict", "version": "1.0.0", "kind": "policy-component", "title": "Strict engine",
        "url": "strict.tgz", "sha256": hex::encode(Sha256::digest(&bundle))}]});
    std::fs::write(tmp.path().join("catalog.json"), serde_json::to_vec(&catalog).unwrap()).unwrap();
    let gw = Gateway::start(Options {
        env: keys_env(),
        args: vec!["--catalog".into(), tmp.path().display().to_string()],
        ..Default::default()
    });
    browser.goto(&gw.url("/studio"));
    // A tenant admin of acme signs in and picks the engine for acme.
    browser.type_into("#api-key", ACME_ADMIN);
    browser.click("#signin-button");
    browser.wait_text("#engine-current", "the rules-only state", |t| t.contains("shared rules only"));
    browser.wait_text("#engine-list", "the catalog's engine", |t| t.contains("Strict engine"));
    browser.click("#engine-list button.use-engine");
    browser.wait_text("#engine-current", "the engine in use", |t| t.contains("strict@1.0.0"));
    let denied = gw.post(ACME, None, "/api/v1/jobs", &echo("acme"));
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(denied.json::<Value>().unwrap()["rule_id"], "tenant:tenant-deny-all");
    let (status, _) = gw.submit(super::GLOBEX, None, echo("globex"));
    assert_eq!(status, 200, "only acme runs it");
    // Back to the rules only.
    browser.click("#engine-remove");
    browser.wait_text("#engine-current", "the rules-only state", |t| t.contains("shared rules only"));
    let (status, _) = gw.submit(ACME, None, echo("acme again"));
    assert_eq!(status, 200);
}
