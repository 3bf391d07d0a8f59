//! Remembers which consumers recent topics matched, so a topic seen before is routed with one
//! hash lookup instead of splitting it and walking the pattern trie. Buses carry a bounded set of
//! topics (fedmsg: a few hundred, most of the traffic on a few), so nearly every delivery hits.

use std::collections::HashMap;
use std::sync::{Mutex, TryLockError};

use super::Matched;

/// Entries kept before the cache starts over (bounds memory on a bus with unbounded topics).
const CAPACITY: usize = 4096;

/// A per-[`Intake`](super::Intake) cache; the routing table never changes after the dispatcher
/// is built, so entries never go stale.
#[derive(Default)]
pub(crate) struct RouteCache {
    map: Mutex<HashMap<Box<str>, Matched>>,
}

impl RouteCache {
    /// The cached match for `topic`, else `compute()`'s, remembered. A cache in use by another
    /// task (an `Intake` shared between tasks) is bypassed rather than waited for.
    pub fn get_or_insert(&self, topic: &str, compute: impl FnOnce() -> Matched) -> Matched {
        let mut map = match self.map.try_lock() {
            Ok(map) => map,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return compute(),
        };
        if let Some(m) = map.get(topic) {
            return m.clone();
        }
        let m = compute();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(topic.into(), m.clone());
        m
    }
}
