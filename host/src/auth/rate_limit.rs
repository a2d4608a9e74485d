//! Request rate limits per (tenant, credential), checked after
//! authentication: one caller's burst cannot starve another tenant, and
//! failed logins cannot use up anyone's budget. Public routes (`/health`,
//! `/api/v1/auth/config`) are never limited.
//!
//! A token bucket per key: `burst` requests at once, refilled at `rps`
//! per second. In memory, per process (replicas each allow the rate);
//! idle buckets are dropped once the table grows large.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most buckets kept before idle ones are swept.
const MAX_BUCKETS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rps` 0 turns limiting off.
    pub fn new(rps: u32, burst: u32) -> Self {
        Self { rps: rps as f64, burst: burst.max(1).max(rps) as f64, buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token for `key`; `Err(wait)` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.rps <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Full buckets are idle ones: forgetting them changes nothing.
            let (rps, burst) = (self.rps, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rps < burst);
        }
        if !buckets.contains_key(key) {
            buckets.insert(key.to_string(), Bucket { tokens: self.burst, at: now });
        }
        let Some(bucket) = buckets.get_mut(key) else { return Ok(()) };
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rps).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(2, 3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.check("b").is_ok(), "keys are separate");
        std::thread::sleep(Duration::from_millis(600));
        assert!(limiter.check("a").is_ok(), "refilled");
    }

    #[test]
    fn zero_rps_is_off() {
        let limiter = RateLimiter::new(0, 0);
        for _ in 0..10_000 {
            assert!(limiter.check("a").is_ok());
        }
    }
}
