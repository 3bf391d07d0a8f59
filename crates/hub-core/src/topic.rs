//! Topic patterns with AMQP topic-exchange semantics.
//!
//! A topic is a string of words separated by `.`. In a pattern, `*` stands for exactly one word
//! and `#` for zero or more words: `a.#` matches `a`, `a.b` and `a.b.c`; `#.b` matches `b`;
//! `#` matches every topic. The empty topic has zero words.

use std::fmt;
use std::str::FromStr;

/// A compiled topic pattern. Matching allocates nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: Box<str>,
    words: Box<[Word]>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Word {
    Literal(Box<str>),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Many,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error(
        "invalid topic pattern \"\": a pattern needs at least one word (use \"#\" for every topic)"
    )]
    Empty,
    /// Two dots in a row, or a leading or trailing dot.
    #[error(
        "invalid topic pattern {pattern:?}: word {position} is empty (words are separated by single dots)"
    )]
    EmptyWord {
        /// The pattern as written.
        pattern: String,
        /// One-based position of the empty word.
        position: usize,
    },
    /// A wildcard mixed with other characters in one word, such as `*x` or `a#`.
    #[error(
        "invalid topic pattern {pattern:?}: word {word:?} mixes a wildcard with other characters (`*` and `#` must be whole words)"
    )]
    PartialWildcard {
        /// The pattern as written.
        pattern: String,
        /// The offending word.
        word: String,
    },
}

impl Pattern {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// [`PatternError`] for an empty pattern, an empty word (`a..b`, `.a`, `a.`) or a wildcard that
    /// is not a whole word (`*x`).
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut words: Vec<Word> = Vec::new();
        for (i, w) in pattern.split('.').enumerate() {
            let word = match w {
                "" => {
                    return Err(PatternError::EmptyWord {
                        pattern: pattern.to_owned(),
                        position: i + 1,
                    });
                }
                "*" => Word::One,
                "#" => Word::Many,
                w if w.contains(['*', '#']) => {
                    return Err(PatternError::PartialWildcard {
                        pattern: pattern.to_owned(),
                        word: w.to_owned(),
                    });
                }
                w => Word::Literal(w.into()),
            };
            // `#.#` means the same as `#`: keep one, so matching never backtracks over both.
            if word == Word::Many && words.last() == Some(&Word::Many) {
                continue;
            }
            words.push(word);
        }
        Ok(Self {
            source: pattern.into(),
            words: words.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.words.iter().all(|w| matches!(w, Word::Literal(_)))
    }

    /// The longest byte prefix every matching topic starts with: the literal words before the first
    /// wildcard, with the separating dot when a `*` follows (it needs one more word) and without it
    /// when a `#` follows (it may match none). `""` when the pattern starts with a wildcard.
    /// Prefix-filtering transports (ZeroMQ SUB sockets) subscribe to this.
    pub fn prefix(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.words.iter().enumerate() {
            match w {
                Word::Literal(l) => {
                    if i > 0 {
                        out.push('.');
                    }
                    out.push_str(l);
                }
                Word::One => {
                    if i > 0 {
                        out.push('.');
                    }
                    break;
                }
                Word::Many => break,
            }
        }
        out
    }

    /// Does `topic` match this pattern?
    pub fn matches(&self, topic: &str) -> bool {
        self.matches_words(&TopicWords::new(topic))
    }

    /// Does a topic already split into words match? Split once, match against many patterns.
    pub fn matches_words(&self, topic: &TopicWords<'_>) -> bool {
        match topic.as_slice() {
            Some(words) => match_slice(&self.words, words),
            None => {
                let all: Vec<&str> = split(topic.topic).collect();
                match_slice(&self.words, &all)
            }
        }
    }
}

/// Wildcard matching over words: `*` is one word, `#` any number, with a single backtrack point
/// (the last `#` seen), which is exact for these two wildcards.
fn match_slice(pat: &[Word], topic: &[&str]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut hash: Option<(usize, usize)> = None;
    loop {
        if let Some(Word::Many) = pat.get(p) {
            hash = Some((p + 1, i));
            p += 1;
            continue;
        }
        if i == topic.len() {
            return p == pat.len();
        }
        let step = match pat.get(p) {
            Some(Word::One) => true,
            Some(Word::Literal(l)) => **l == *topic[i],
            _ => false,
        };
        if step {
            p += 1;
            i += 1;
            continue;
        }
        match hash {
            // Let the last `#` swallow one more word and retry after it.
            Some((after, from)) if from < topic.len() => {
                hash = Some((after, from + 1));
                p = after;
                i = from + 1;
            }
            _ => return false,
        }
    }
}

const INLINE_WORDS: usize = 16;

/// A topic split into words on the stack (no allocation up to 16 words). The empty topic has
/// no words.
pub struct TopicWords<'a> {
    topic: &'a str,
    words: [&'a str; INLINE_WORDS],
    len: usize,
    overflow: bool,
}

impl<'a> TopicWords<'a> {
    /// Splits `topic` on `.`.
    pub fn new(topic: &'a str) -> Self {
        let mut words = [""; INLINE_WORDS];
        let mut len = 0;
        let mut overflow = false;
        for w in split(topic) {
            if len == INLINE_WORDS {
                overflow = true;
                break;
            }
            words[len] = w;
            len += 1;
        }
        Self {
            topic,
            words,
            len,
            overflow,
        }
    }

    fn as_slice(&self) -> Option<&[&'a str]> {
        (!self.overflow).then(|| &self.words[..self.len])
    }

    fn with_words<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        match self.as_slice() {
            Some(words) => f(words),
            None => f(&split(self.topic).collect::<Vec<_>>()),
        }
    }
}

/// Many patterns compiled into one trie over words, each with an id: one walk finds every id
/// whose pattern matches a topic, however many patterns there are (RabbitMQ's topic exchange
/// does the same).
#[derive(Debug, Clone, Default)]
pub struct PatternSet {
    nodes: Vec<Node>,
    /// Some pattern holds a `#` with more after it: a walk may reach one node at one word
    /// along several paths, so it remembers where it has been (see `for_each_match`).
    branching: bool,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literals: Vec<(Box<str>, u32)>,
    one: Option<u32>,
    many: Option<u32>,
    ids: Vec<u32>,
}

impl PatternSet {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            branching: false,
        }
    }

    fn child(&mut self, at: u32, word: &Word) -> u32 {
        let next = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let node = &mut self.nodes[at as usize];
        let slot = match word {
            Word::Literal(l) => match node.literals.iter().find(|(w, _)| w == l) {
                Some((_, c)) => return *c,
                None => {
                    node.literals.push((l.clone(), next));
                    return self.push_node(next);
                }
            },
            Word::One => &mut node.one,
            Word::Many => &mut node.many,
        };
        match *slot {
            Some(c) => c,
            None => {
                *slot = Some(next);
                self.push_node(next)
            }
        }
    }

    fn push_node(&mut self, id: u32) -> u32 {
        self.nodes.push(Node::default());
        id
    }

    /// Adds `pattern` under `id`. An id may have several patterns.
    pub fn insert(&mut self, pattern: &Pattern, id: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0;
        let last = pattern.words.len().saturating_sub(1);
        for (k, w) in pattern.words.iter().enumerate() {
            if matches!(w, Word::Many) && k < last {
                self.branching = true;
            }
            at = self.child(at, w);
        }
        self.nodes[at as usize].ids.push(id);
    }

    /// Calls `found` with the id of every pattern matching `topic`; an id may come more than once
    /// (several of its patterns match), a pattern's id once. Walks each (trie node, word) at
    /// most once: time at most nodes × words, whatever the topic. Allocates nothing for topics
    /// of up to 16 words when no pattern has a `#` before its last word.
    pub fn for_each_match(&self, topic: &TopicWords<'_>, mut found: impl FnMut(u32)) {
        if self.nodes.is_empty() {
            return;
        }
        topic.with_words(|words| {
            // Without a `#` followed by more words, every (node, word) is reached by one path
            // at most. With one, `#.*.#.*.#` on a long topic would be reached along a number of
            // paths that grows as a power of the topic's length (found by fuzzing: a topic
            // from the bus could stall the intake): each (node, word) is then walked once.
            let mut seen = if self.branching {
                Seen::new(self.nodes.len(), words.len() + 1)
            } else {
                Seen::default()
            };
            self.walk(0, words, words.len(), &mut seen, &mut found);
        });
    }

    fn walk(
        &self,
        at: u32,
        words: &[&str],
        total: usize,
        seen: &mut Seen,
        found: &mut impl FnMut(u32),
    ) {
        if !seen.first_visit(at as usize, total - words.len()) {
            return;
        }
        let node = &self.nodes[at as usize];
        if let Some(many) = node.many {
            // `#` takes zero or more words: continue after it from every suffix.
            for skip in 0..=words.len() {
                self.walk(many, &words[skip..], total, seen, found);
            }
        }
        match words.split_first() {
            None => node.ids.iter().for_each(|&id| found(id)),
            Some((word, rest)) => {
                if let Some(&(_, c)) = node.literals.iter().find(|(l, _)| **l == **word) {
                    self.walk(c, rest, total, seen, found);
                }
                if let Some(one) = node.one {
                    self.walk(one, rest, total, seen, found);
                }
            }
        }
    }
}

/// Which (node, words consumed) a walk has reached, when paths can meet; empty (remembers
/// nothing, allocates nothing) otherwise.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    width: usize,
}

impl Seen {
    fn new(nodes: usize, positions: usize) -> Self {
        Self {
            bits: vec![0; (nodes * positions).div_ceil(64)],
            width: positions,
        }
    }

    /// Whether `(node, at)` is reached for the first time (always, when nothing is remembered).
    #[inline]
    fn first_visit(&mut self, node: usize, at: usize) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        let i = node * self.width + at;
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let first = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        first
    }
}

/// Splits on `.` with a plain byte scan (topics are short; `str::split` costs more to set up).
fn split(topic: &str) -> impl Iterator<Item = &str> {
    let bytes = topic.as_bytes();
    let mut start = 0;
    let mut done = topic.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'.' {
            end += 1;
        }
        // `.` is ASCII, so both ends fall on character boundaries.
        let word = topic.get(start..end).unwrap_or_default();
        if end >= bytes.len() {
            done = true;
        } else {
            start = end + 1;
        }
        Some(word)
    })
}

impl FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
