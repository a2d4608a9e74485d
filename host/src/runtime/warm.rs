//! Warm instances per (tenant, component) for worlds that allow reuse.
//!
//! A caller takes an idle instance (or builds one), calls it, and gives it
//! back only if the call did not trap; instances of one tenant are never
//! handed to another. The pool keeps a bounded number of idle instances per
//! key so a burst does not pin pool slots forever.

use parking_lot::Mutex;
use std::collections::HashMap;

pub struct WarmPool<T> {
    idle: Mutex<HashMap<String, Vec<T>>>,
    max_idle_per_key: usize,
}

impl<T> WarmPool<T> {
    pub fn new(max_idle_per_key: usize) -> Self {
        Self { idle: Mutex::new(HashMap::new()), max_idle_per_key }
    }

    /// An idle instance for `key`, if any.
    pub fn take(&self, key: &str) -> Option<T> {
        self.idle.lock().get_mut(key).and_then(|v| v.pop())
    }

    /// Return a healthy instance.
    pub fn give_back(&self, key: &str, item: T) {
        let mut idle = self.idle.lock();
        // The key exists after the first call: no allocation on the hot path.
        if !idle.contains_key(key) {
            idle.insert(key.to_string(), Vec::new());
        }
        let Some(list) = idle.get_mut(key) else { return };
        if list.len() < self.max_idle_per_key {
            list.push(item);
        }
    }

    /// Drop every idle instance (after a component change).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }
}
