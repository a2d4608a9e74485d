//! Velocity counters behind `cordum:host/velocity`: sliding windows in
//! memory, one per (scope, window, rule id, key).
//!
//! A window counts requests per second (like upstream's sorted sets scored in
//! unix seconds): a request made at second `s` counts while `now - s` is less
//! than the window. [`VelocityMode::Record`] adds the request;
//! [`VelocityMode::DryRun`] (simulate, explain, drafts) adds nothing and
//! answers what the count would be with it. The counters are per gateway
//! process and lost on restart.
//!
//! Memory is bounded: at most [`MAX_WINDOWS`] windows and [`MAX_BUCKETS`]
//! seconds-with-requests in all. When either is full, windows with nothing
//! left in them are swept; if that is not enough, the least recently hit
//! eighth is dropped (their counts start again from zero). An identity longer
//! than [`MAX_IDENTITY_BYTES`] is replaced by its SHA-256.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Longest window a rule may ask for (the policy schema's limit).
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// Windows kept at once.
pub const MAX_WINDOWS: usize = 65_536;
/// Seconds-with-requests kept at once, over every window.
pub const MAX_BUCKETS: usize = 1 << 20;
/// Longest (scope, window, rule id, key) identity kept as is.
pub const MAX_IDENTITY_BYTES: usize = 256;
// One window holds at most a bucket per second of its span, so eviction of
// the other windows always makes room.
const _: () = assert!(MAX_BUCKETS / 2 > MAX_WINDOW_SECONDS as usize);

/// Whether a call records its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VelocityMode {
    /// A real decision (`evaluate`): the request is added to the window.
    Record,
    /// A dry run (simulate, explain, drafts, pack-install simulations):
    /// nothing is added; the answer is the count with this request.
    DryRun,
}

/// What one store may count with: the shared counters, its namespace and the
/// mode of the current call.
#[derive(Clone)]
pub struct VelocityAccess {
    pub counters: Arc<VelocityCounters>,
    /// Empty for the first-party rules engine; `tenant:<tenant>` for a
    /// tenant's own policy component, so it can neither read nor push the
    /// rules' windows.
    pub scope: String,
    pub mode: VelocityMode,
}

impl VelocityAccess {
    pub fn hit(&self, rule_id: &str, key: &str, window_seconds: u32) -> u32 {
        self.counters.hit(&self.scope, rule_id, key, window_seconds, self.mode)
    }
}

struct Window {
    /// (second, requests in that second), oldest first.
    buckets: VecDeque<(u64, u32)>,
    /// Sum of `buckets`.
    total: u64,
    span: u64,
    /// Second of the last recorded request.
    last: u64,
}

impl Window {
    /// Drop the seconds that left the window; how many buckets went.
    fn prune(&mut self, now: u64) -> usize {
        let mut freed = 0;
        while let Some(&(sec, n)) = self.buckets.front() {
            if sec + self.span > now {
                break;
            }
            self.buckets.pop_front();
            self.total -= u64::from(n);
            freed += 1;
        }
        freed
    }
}

#[derive(Default)]
struct Inner {
    windows: HashMap<String, Window>,
    buckets: usize,
}

impl Inner {
    /// Sweep empty windows, then drop the least recently hit eighth (never
    /// `keep`) until there is room for one more window and one more bucket.
    fn make_room(&mut self, now: u64, keep: &str, max_windows: usize, max_buckets: usize) {
        let mut freed = 0;
        self.windows.retain(|_, w| {
            freed += w.prune(now);
            !w.buckets.is_empty()
        });
        self.buckets -= freed;
        if self.windows.len() < max_windows && self.buckets < max_buckets {
            return;
        }
        let mut by_age: Vec<(u64, String)> =
            self.windows.iter().filter(|(k, _)| k.as_str() != keep).map(|(k, w)| (w.last, k.clone())).collect();
        by_age.sort_unstable();
        let target_windows = max_windows - max_windows / 8 - 1;
        let target_buckets = max_buckets - max_buckets / 8 - 1;
        for (_, k) in by_age {
            if self.windows.len() <= target_windows && self.buckets <= target_buckets {
                break;
            }
            if let Some(w) = self.windows.remove(&k) {
                self.buckets -= w.buckets.len();
            }
        }
    }
}

/// The gateway's velocity windows (one instance, owned by the policy
/// service). Thread-safe.
pub struct VelocityCounters {
    inner: Mutex<Inner>,
    start: Instant,
    max_windows: usize,
    max_buckets: usize,
}

impl VelocityCounters {
    pub fn new() -> Arc<Self> {
        Self::with_limits(MAX_WINDOWS, MAX_BUCKETS)
    }

    fn with_limits(max_windows: usize, max_buckets: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            start: Instant::now(),
            max_windows: max_windows.max(8),
            max_buckets: max_buckets.max(8),
        })
    }

    /// Access for one store.
    pub fn access(self: &Arc<Self>, scope: impl Into<String>, mode: VelocityMode) -> VelocityAccess {
        VelocityAccess { counters: self.clone(), scope: scope.into(), mode }
    }

    /// Requests in the window of (`scope`, `rule_id`, `key`) over the last
    /// `window_seconds` (clamped to 1..=86400), this one included; recorded
    /// only in [`VelocityMode::Record`].
    pub fn hit(&self, scope: &str, rule_id: &str, key: &str, window_seconds: u32, mode: VelocityMode) -> u32 {
        // Seconds on a monotonic clock, from 1 so that `sec + span` never
        // lands on a window's first second.
        let now = self.start.elapsed().as_secs() + 1;
        self.hit_at(now, scope, rule_id, key, window_seconds, mode)
    }

    fn hit_at(&self, now: u64, scope: &str, rule_id: &str, key: &str, window_seconds: u32, mode: VelocityMode) -> u32 {
        let span = u64::from(window_seconds.clamp(1, MAX_WINDOW_SECONDS));
        let id = identity(scope, span, rule_id, key);
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let existing = match inner.windows.get_mut(&id) {
            Some(w) => {
                let freed = w.prune(now);
                inner.buckets -= freed;
                w.total
            }
            None => 0,
        };
        if mode == VelocityMode::DryRun {
            return saturate(existing + 1);
        }
        let is_new = !inner.windows.contains_key(&id);
        let new_bucket = is_new || inner.windows[&id].buckets.back().is_none_or(|&(sec, _)| sec != now);
        if (is_new && inner.windows.len() >= self.max_windows) || (new_bucket && inner.buckets >= self.max_buckets) {
            inner.make_room(now, &id, self.max_windows, self.max_buckets);
        }
        let w =
            inner.windows.entry(id).or_insert_with(|| Window { buckets: VecDeque::new(), total: 0, span, last: now });
        match w.buckets.back_mut() {
            Some((sec, n)) if *sec == now => *n = n.saturating_add(1),
            _ => {
                w.buckets.push_back((now, 1));
                inner.buckets += 1;
            }
        }
        w.total += 1;
        w.last = now;
        saturate(w.total)
    }

    /// Windows currently kept (for tests and status).
    pub fn window_count(&self) -> usize {
        self.inner.lock().windows.len()
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The map key: the parts separated by NUL (which no part can hold unseen:
/// the host's scope never has one, and the rule id and key are hashed when
/// they do or when the whole is too long).
fn identity(scope: &str, span: u64, rule_id: &str, key: &str) -> String {
    let plain = format!("{scope}\0{span}\0{rule_id}\0{key}");
    if plain.len() <= MAX_IDENTITY_BYTES && !rule_id.contains('\0') && !key.contains('\0') {
        return plain;
    }
    let mut h = Sha256::new();
    h.update(rule_id.len().to_le_bytes());
    h.update(rule_id.as_bytes());
    h.update(key.as_bytes());
    format!("{scope}\0{span}\0#{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::VelocityMode::{DryRun, Record};
    use super::*;

    #[test]
    fn a_sliding_window_counts_what_is_recorded() {
        let c = VelocityCounters::new();
        assert_eq!(c.hit_at(10, "", "r", "acme", 60, Record), 1);
        assert_eq!(c.hit_at(10, "", "r", "acme", 60, Record), 2);
        assert_eq!(c.hit_at(40, "", "r", "acme", 60, Record), 3);
        // A dry run counts this request but keeps nothing.
        for _ in 0..5 {
            assert_eq!(c.hit_at(41, "", "r", "acme", 60, DryRun), 4);
        }
        assert_eq!(c.hit_at(41, "", "r", "acme", 60, Record), 4);
        // Second 10 leaves the window at 70; second 40 at 100.
        assert_eq!(c.hit_at(69, "", "r", "acme", 60, DryRun), 5);
        assert_eq!(c.hit_at(70, "", "r", "acme", 60, DryRun), 3);
        assert_eq!(c.hit_at(100, "", "r", "acme", 60, DryRun), 2);
        assert_eq!(c.hit_at(101, "", "r", "acme", 60, Record), 1);
    }

    #[test]
    fn windows_are_separate_by_scope_rule_key_and_span() {
        let c = VelocityCounters::new();
        c.hit_at(1, "", "r", "acme", 60, Record);
        c.hit_at(1, "", "r", "acme", 60, Record);
        assert_eq!(c.hit_at(1, "", "r", "globex", 60, DryRun), 1);
        assert_eq!(c.hit_at(1, "", "other", "acme", 60, DryRun), 1);
        assert_eq!(c.hit_at(1, "tenant:acme", "r", "acme", 60, DryRun), 1);
        assert_eq!(c.hit_at(1, "", "r", "acme", 30, DryRun), 1);
        assert_eq!(c.hit_at(1, "", "r", "acme", 60, DryRun), 3);
        // Out-of-range windows are clamped, never zero.
        assert_eq!(c.hit_at(5, "", "z", "k", 0, Record), 1);
        assert_eq!(c.hit_at(6, "", "z", "k", 0, DryRun), 1);
        // Long or NUL-bearing identities are hashed, and still distinct.
        let long = "k".repeat(1000);
        assert_eq!(c.hit_at(1, "", "r", &long, 60, Record), 1);
        assert_eq!(c.hit_at(1, "", "r", &long, 60, Record), 2);
        assert_eq!(c.hit_at(1, "", "r", &format!("{long}x"), 60, DryRun), 1);
        assert_eq!(c.hit_at(1, "", "a\0b", "c", 60, Record), 1);
        assert_eq!(c.hit_at(1, "", "a", "b\0c", 60, DryRun), 1);
    }

    #[test]
    fn memory_stays_bounded() {
        let c = VelocityCounters::with_limits(64, 256);
        // Many keys: never more than 64 windows; the newest survive.
        for i in 0..1000u64 {
            c.hit_at(1 + i / 100, "", "r", &format!("user-{i}"), 3600, Record);
            assert!(c.window_count() <= 64);
        }
        assert_eq!(c.hit_at(11, "", "r", "user-999", 3600, DryRun), 2);
        // Many keys over many seconds: never more than 256 buckets.
        for s in 0..100u64 {
            for k in 0..40 {
                c.hit_at(100 + s, "", "hot", &format!("k{k}"), 3600, Record);
                assert!(c.inner.lock().buckets <= 256);
            }
        }
        let inner = c.inner.lock();
        assert!(inner.buckets <= 256, "{}", inner.buckets);
        assert_eq!(inner.buckets, inner.windows.values().map(|w| w.buckets.len()).sum::<usize>());
    }

    #[test]
    fn expired_windows_are_swept_first() {
        let c = VelocityCounters::with_limits(8, 1024);
        for i in 0..7 {
            c.hit_at(1, "", "r", &format!("old-{i}"), 10, Record);
        }
        c.hit_at(5, "", "r", "keep", 3600, Record);
        assert_eq!(c.window_count(), 8);
        // Second 20: the ten-second windows are empty and make room.
        c.hit_at(20, "", "r", "new", 10, Record);
        assert_eq!(c.window_count(), 2);
        assert_eq!(c.hit_at(20, "", "r", "keep", 3600, DryRun), 2);
    }
}
