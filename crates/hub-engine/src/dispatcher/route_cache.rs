//! Remembers which consumers recent topics matched, so a topic seen before is routed with one
//! hash lookup instead of splitting it and walking the pattern trie. Buses carry a bounded set of
//! topics (fedmsg: a few hundred, most of the traffic on a few), so nearly every delivery hits.
//! The topic routed last is checked first, by comparison alone: a burst on one topic (what a
//! batch from a busy publisher usually is) then costs no hashing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, TryLockError};

use super::Matched;

/// Entries kept before the cache starts over (bounds memory on a bus with unbounded topics).
const CAPACITY: usize = 4096;

/// A per-[`Intake`](super::Intake) cache; the routing table never changes after the dispatcher
/// is built, so entries never go stale.
#[derive(Default)]
pub(crate) struct RouteCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    map: HashMap<Arc<str>, Matched>,
    /// The topic routed last, sharing its key with `map`.
    last: Option<(Arc<str>, Matched)>,
}

impl RouteCache {
    /// The cached match for `topic`, else `compute()`'s, remembered. A cache in use by another
    /// task (an `Intake` shared between tasks) is bypassed rather than waited for.
    pub fn get_or_insert(&self, topic: &str, compute: impl FnOnce() -> Matched) -> Matched {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return compute(),
        };
        if let Some((last, m)) = &st.last
            && **last == *topic
        {
            return m.clone();
        }
        let (key, m) = match st.map.get_key_value(topic) {
            Some((key, m)) => (Arc::clone(key), m.clone()),
            None => {
                let m = compute();
                if st.map.len() >= CAPACITY {
                    st.map.clear();
                }
                let key: Arc<str> = topic.into();
                st.map.insert(Arc::clone(&key), m.clone());
                (key, m)
            }
        };
        st.last = Some((key, m.clone()));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(ids: &[u32]) -> Matched {
        let mut m = Matched::new();
        for &id in ids {
            m.insert(id);
        }
        m
    }

    #[test]
    fn each_topic_is_computed_once_and_keeps_its_own_match() {
        let cache = RouteCache::default();
        let mut computed = Vec::new();
        for topic in ["a.b", "a.b", "c.d", "a.b", "c.d", "c.d", "e"] {
            let want = match topic {
                "a.b" => vec![1],
                "c.d" => vec![2, 70],
                _ => vec![],
            };
            let got = cache.get_or_insert(topic, || {
                computed.push(topic);
                matched(&want)
            });
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want.iter().map(|&i| i as usize).collect::<Vec<_>>(),
                "{topic}"
            );
        }
        assert_eq!(computed, ["a.b", "c.d", "e"]);
    }
}
