//! The hello-pack worker: the `cordum:pack/pack-worker` component shipped in
//! `packs/hello-pack` (bundled as `component.wasm`).
//!
//! Owns the handling of `job.hello-pack.echo`: it echoes the input message
//! back, with the job id and a per-(tenant, pack) echo counter kept in the
//! host key-value store under `echo-count`.

use exports::cordum::pack::worker::{Guest, Job, JobError};
use serde_json::{Map, Value, json};

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/pack"],
    world: "cordum:pack/pack-worker",
    generate_all,
});

use cordum::host::config;
use cordum::host::kv;
use cordum::host::log::{Level, log};

/// Key of the echo counter in the host store (scoped by the host to tenant and pack).
const COUNTER_KEY: &str = "echo-count";

struct Worker;

/// What `handle` needs from the job input.
#[derive(Debug, PartialEq)]
struct EchoInput {
    message: String,
    author: Option<String>,
}

fn parse_input(input: &str) -> Result<EchoInput, JobError> {
    let value: Value =
        serde_json::from_str(input).map_err(|e| JobError::InvalidInput(format!("input is not valid JSON: {e}")))?;
    let object: Map<String, Value> = match value {
        Value::Object(object) => object,
        _ => return Err(JobError::InvalidInput("input must be a JSON object".into())),
    };
    let message = match object.get("message") {
        Some(Value::String(message)) => message.clone(),
        Some(_) => return Err(JobError::InvalidInput("`message` must be a string".into())),
        None => return Err(JobError::InvalidInput("`message` is required".into())),
    };
    let author = object.get("author").and_then(Value::as_str).map(str::to_owned);
    Ok(EchoInput { message, author })
}

fn kv_error_text(error: &kv::KvError) -> &str {
    match error {
        kv::KvError::InvalidKey(m) | kv::KvError::QuotaExceeded(m) | kv::KvError::Unavailable(m) => m,
    }
}

/// Increment the echo counter; `None` when its current value could not be read.
fn bump_counter() -> Option<u64> {
    let previous = match kv::get(COUNTER_KEY) {
        Ok(None) => 0,
        Ok(Some(bytes)) => match std::str::from_utf8(&bytes).ok().and_then(|text| text.trim().parse::<u64>().ok()) {
            Some(n) => n,
            None => {
                log(Level::Warn, &format!("{COUNTER_KEY} holds no decimal number; restarting it at 0"));
                0
            }
        },
        Err(e) => {
            log(Level::Warn, &format!("cannot read {COUNTER_KEY}: {}", kv_error_text(&e)));
            return None;
        }
    };
    let count = previous.saturating_add(1);
    if let Err(e) = kv::set(COUNTER_KEY, count.to_string().as_bytes()) {
        log(Level::Warn, &format!("cannot write {COUNTER_KEY}: {}", kv_error_text(&e)));
    }
    Some(count)
}

impl Guest for Worker {
    fn handle(job: Job) -> Result<String, JobError> {
        let input = parse_input(&job.input)?;
        let count = bump_counter();
        log(
            Level::Info,
            &format!(
                "echo job {} for tenant {} (count {})",
                job.job_id,
                job.tenant,
                count.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
            ),
        );
        // The pool this pack's overlay configured, read through the host's
        // effective-config import (null when absent).
        let pool = config::get("pools.pools.hello-pack")
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null);
        let output = json!({
            "message": input.message,
            "author": input.author,
            "echo": input.message,
            "job_id": job.job_id,
            "count": count,
            "pool": pool,
        });
        Ok(output.to_string())
    }
}

export!(Worker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_message_and_author() {
        assert_eq!(
            parse_input(r#"{"message":"hi","author":"ada"}"#).unwrap(),
            EchoInput { message: "hi".into(), author: Some("ada".into()) }
        );
        assert_eq!(parse_input(r#"{"message":"hi"}"#).unwrap().author, None);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "[]", "{}", r#"{"message":3}"#, "{oops"] {
            assert!(matches!(parse_input(bad), Err(JobError::InvalidInput(_))), "{bad}");
        }
    }
}
