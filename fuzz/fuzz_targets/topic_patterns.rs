//! `hub_core::Pattern` and `PatternSet` against a reference matcher written here (AMQP topic
//! semantics: words split on `.`, the empty topic has no words, `*` is exactly one word, `#` is
//! zero or more words; a pattern is refused when empty, with an empty word, or with `*`/`#`
//! inside a longer word).
//!
//! Input (with `arbitrary`): up to 8 patterns and 4 topics, each either drawn from a small
//! alphabet (`a`, `b`, `.`, `*`, `#`, `é`, ...) so that wildcards and matches are common, or any
//! string.
//!
//! Asserts: `Pattern::new` accepts exactly the valid patterns and keeps the source; `matches`
//! and `matches_words` agree with the reference (topics over 16 words take the other path);
//! `is_literal` and `prefix` are consistent (every matching topic starts with the prefix);
//! `PatternSet::for_each_match` finds exactly the ids of the matching patterns, each once (each
//! pattern has its own id here).
#![no_main]

use std::collections::BTreeSet;

use arbitrary::{Result, Unstructured};
use hub_core::{Pattern, PatternSet, TopicWords};
use libfuzzer_sys::fuzz_target;

const ALPHABET: [&str; 12] = ["a", "b", ".", ".", ".", "*", "#", "é", "ab", "a.b", "#.", "*."];

fn string(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let n = u.choose_index(40)?;
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(u.choose(&ALPHABET)?);
    }
    Ok(s)
}

fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

fn valid(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|w| {
            !w.is_empty() && (w == "*" || w == "#" || !w.contains(['*', '#']))
        })
}

/// Dynamic programming over (pattern words, topic words): `m[i][j]` = `p[i..]` matches `t[j..]`.
fn reference(p: &[&str], t: &[&str]) -> bool {
    let (np, nt) = (p.len(), t.len());
    let mut m = vec![vec![false; nt + 1]; np + 1];
    m[np][nt] = true;
    for i in (0..np).rev() {
        for j in (0..=nt).rev() {
            m[i][j] = match p[i] {
                "#" => m[i + 1][j] || (j < nt && m[i][j + 1]),
                "*" => j < nt && m[i + 1][j + 1],
                w => j < nt && t[j] == w && m[i + 1][j + 1],
            };
        }
    }
    m[0][0]
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut sources = Vec::new();
    let mut topics = Vec::new();
    let (Ok(np), Ok(nt)) = (u.int_in_range(1..=8usize), u.int_in_range(1..=4usize)) else {
        return;
    };
    for _ in 0..np {
        let Ok(s) = string(&mut u) else { break };
        sources.push(s);
    }
    for _ in 0..nt {
        let Ok(s) = string(&mut u) else { break };
        topics.push(s);
    }
    // A topic made of one pattern's words (wildcards replaced), so matches are common.
    if let Some(p) = sources.first() {
        topics.push(p.replace('*', "x").replace('#', "y.z"));
    }

    let mut compiled: Vec<(Pattern, Vec<&str>)> = Vec::new();
    for s in &sources {
        match Pattern::new(s) {
            Ok(p) => {
                assert!(valid(s), "accepted an invalid pattern {s:?}");
                assert_eq!(p.as_str(), s);
                assert_eq!(p.is_literal(), !s.contains(['*', '#']), "{s:?}");
                assert_eq!(s.parse::<Pattern>().ok().as_ref(), Some(&p));
                compiled.push((p, words(s)));
            }
            Err(e) => {
                assert!(!valid(s), "refused a valid pattern {s:?}: {e}");
                let _ = e.to_string();
            }
        }
    }

    let mut set = PatternSet::new();
    for (id, (p, _)) in compiled.iter().enumerate() {
        set.insert(p, id as u32);
    }
    for topic in &topics {
        let tw = TopicWords::new(topic);
        let t = words(topic);
        let mut want = BTreeSet::new();
        for (id, (p, pw)) in compiled.iter().enumerate() {
            let r = reference(pw, &t);
            assert_eq!(p.matches(topic), r, "pattern {:?} topic {topic:?}", p.as_str());
            assert_eq!(p.matches_words(&tw), r, "pattern {:?} topic {topic:?}", p.as_str());
            if r {
                assert!(
                    topic.starts_with(&p.prefix()),
                    "pattern {:?} prefix {:?} topic {topic:?}",
                    p.as_str(),
                    p.prefix()
                );
                want.insert(id as u32);
            }
        }
        let mut found = Vec::new();
        set.for_each_match(&tw, |id| found.push(id));
        let unique: BTreeSet<u32> = found.iter().copied().collect();
        assert_eq!(unique.len(), found.len(), "an id reported twice: {found:?}");
        assert_eq!(unique, want, "topic {topic:?} patterns {sources:?}");
    }
});
