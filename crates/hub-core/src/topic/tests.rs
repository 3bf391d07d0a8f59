use super::*;
use proptest::prelude::*;

fn m(p: &str, t: &str) -> bool {
    Pattern::new(p).unwrap().matches(t)
}

#[test]
fn table_of_matches() {
    let cases: &[(&str, &str, bool)] = &[
        // RabbitMQ tutorial 5: "*.orange.*", "*.*.rabbit", "lazy.#"
        ("*.orange.*", "quick.orange.rabbit", true),
        ("*.*.rabbit", "quick.orange.rabbit", true),
        ("*.orange.*", "lazy.orange.elephant", true),
        ("lazy.#", "lazy.orange.elephant", true),
        ("*.orange.*", "quick.orange.fox", true),
        ("*.*.rabbit", "quick.orange.fox", false),
        ("lazy.#", "lazy.brown.fox", true),
        ("*.*.rabbit", "lazy.pink.rabbit", true),
        ("lazy.#", "lazy.pink.rabbit", true),
        ("*.orange.*", "quick.brown.fox", false),
        ("*.*.rabbit", "quick.brown.fox", false),
        ("lazy.#", "quick.brown.fox", false),
        ("*.orange.*", "orange", false),
        ("*.orange.*", "quick.orange.male.rabbit", false),
        ("lazy.#", "lazy.orange.male.rabbit", true),
        ("*.*.rabbit", "lazy.orange.male.rabbit", false),
        // The issue's own examples.
        ("a.#", "a", true),
        ("a.#", "a.b", true),
        ("a.#", "a.b.c", true),
        ("#.b", "b", true),
        ("#.b", "a.b", true),
        ("#.b", "a.c.b", true),
        ("#.b", "a.b.c", false),
        ("#", "anything.at.all", true),
        ("#", "x", true),
        ("#", "", true),
        ("*", "", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.#.c", "a.c", true),
        ("a.#.c", "a.b.b.c", true),
        ("a.#.c", "a.b.c.d", false),
        ("#.a.#", "x.a.y", true),
        ("#.a.#", "a", true),
        ("#.a.#", "x.y", false),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("*.#", "a.b.c", true),
        ("#.#", "a", true),
        ("a.b", "a.b", true),
        ("a.b", "a.bc", false),
        ("a.b", "a.b.c", false),
        (
            "org.fedoraproject.*.buildsys.#",
            "org.fedoraproject.prod.buildsys.build.state.change",
            true,
        ),
        (
            "org.fedoraproject.*.buildsys.#",
            "org.fedoraproject.prod.bodhi.update",
            false,
        ),
    ];
    for (p, t, want) in cases {
        assert_eq!(m(p, t), *want, "pattern {p:?} vs topic {t:?}");
    }
}

#[test]
fn invalid_patterns_are_rejected_with_a_clear_error() {
    assert_eq!(Pattern::new(""), Err(PatternError::Empty));
    let e = Pattern::new("a..b").unwrap_err();
    assert_eq!(
        e,
        PatternError::EmptyWord {
            pattern: "a..b".into(),
            position: 2
        }
    );
    assert!(e.to_string().contains("word 2 is empty"), "{e}");
    assert!(matches!(
        Pattern::new(".a"),
        Err(PatternError::EmptyWord { position: 1, .. })
    ));
    assert!(matches!(
        Pattern::new("a."),
        Err(PatternError::EmptyWord { position: 2, .. })
    ));
    let e = Pattern::new("*x").unwrap_err();
    assert!(e.to_string().contains("\"*x\" mixes a wildcard"), "{e}");
    assert!(Pattern::new("a.b#").is_err());
}

#[test]
fn prefixes_for_upstream_filtering() {
    let p = |s: &str| Pattern::new(s).unwrap().prefix();
    assert_eq!(p("a.b.*"), "a.b.");
    assert_eq!(p("a.b.#"), "a.b");
    assert_eq!(p("a.b"), "a.b");
    assert_eq!(p("#"), "");
    assert_eq!(p("*.b"), "");
    assert_eq!(p("org.fedoraproject.*.buildsys.#"), "org.fedoraproject.");
}

/// A slow, obviously correct matcher: recursion over word slices.
fn reference(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern.split_first(), topic.split_first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some((&"#", rest)), _) => (0..=topic.len()).any(|skip| reference(rest, &topic[skip..])),
        (Some(_), None) => false,
        (Some((&"*", prest)), Some((_, trest))) => reference(prest, trest),
        (Some((w, prest)), Some((t, trest))) => w == t && reference(prest, trest),
    }
}

fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        vec![]
    } else {
        s.split('.').collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn agrees_with_reference(
        pat in prop::collection::vec(prop_oneof!["a", "b", Just("*".to_string()), Just("#".to_string())], 1..7),
        topic in prop::collection::vec(prop_oneof!["a", "b", "c"], 0..8),
    ) {
        let pattern = pat.join(".");
        let topic = topic.join(".");
        let compiled = Pattern::new(&pattern).unwrap();
        prop_assert_eq!(compiled.matches(&topic), reference(&words(&pattern), &words(&topic)),
            "pattern {:?} topic {:?}", pattern, topic);
        // Every matching topic starts with the pattern's prefix.
        if compiled.matches(&topic) {
            prop_assert!(topic.starts_with(&compiled.prefix()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn pattern_set_finds_exactly_the_matching_patterns(
        pats in prop::collection::vec(prop::collection::vec(prop_oneof!["a", "b", Just("*".to_string()), Just("#".to_string())], 1..5), 1..8),
        topic in prop::collection::vec(prop_oneof!["a", "b", "c"], 0..7),
    ) {
        let topic = topic.join(".");
        let compiled: Vec<Pattern> = pats.iter().map(|p| Pattern::new(&p.join(".")).unwrap()).collect();
        let mut set = PatternSet::new();
        for (i, p) in compiled.iter().enumerate() {
            set.insert(p, i as u32);
        }
        let mut found = Vec::new();
        set.for_each_match(&TopicWords::new(&topic), |id| found.push(id));
        found.sort_unstable();
        // Each pattern's id once (a walk reaches each trie node at each word once).
        let want: Vec<u32> =
            compiled.iter().enumerate().filter(|(_, p)| p.matches(&topic)).map(|(i, _)| i as u32).collect();
        prop_assert_eq!(found, want, "topic {:?}", topic);
    }
}

/// Found by fuzzing (`topic_patterns`, a 41 s timeout): patterns with several `#` made the
/// trie walk follow every way of splitting the topic among them, a number of paths that grows
/// as a power of the topic's length. A topic of 200 words against `#.*.#.*.#.*.#.*.#` (about
/// 10^13 ways) is now one visit per (node, word), and each id comes once.
#[test]
fn many_hashes_and_a_long_topic_walk_each_node_and_word_once() {
    let mut set = PatternSet::new();
    let patterns = ["#.*.#.*.#.*.#.*.#", "#.a.#.a.#.a.#", "#.#.#.#.#.#.z", "x.#"];
    for (i, p) in patterns.iter().enumerate() {
        set.insert(&Pattern::new(p).unwrap(), i as u32);
    }
    let topic = vec!["a"; 200].join(".");
    let mut found = Vec::new();
    set.for_each_match(&TopicWords::new(&topic), |id| found.push(id));
    found.sort_unstable();
    assert_eq!(found, [0, 1]);
    for (i, p) in patterns.iter().enumerate() {
        assert_eq!(
            Pattern::new(p).unwrap().matches(&topic),
            found.contains(&(i as u32)),
            "{p}"
        );
    }
}
