//! A trie of topic patterns: AMQP topic bindings now, MQTT filters too.
//!
//! Patterns and topics are lists of words. In a pattern, `*` matches exactly
//! one word and `#` matches zero or more words, anywhere in the pattern (AMQP
//! topic exchange rules; MQTT's `+` and trailing `#` are the same thing once
//! translated). Matching walks the trie once per publish instead of testing a
//! regex per binding, so its cost grows with the depth of the topic, not the
//! number of bindings.
//!
//! Words are split by the caller ([`split_amqp`]) so the same trie can serve
//! MQTT's `/`-separated topics.

use crate::FastMap;

/// Split an AMQP routing key or binding key into words. The empty key has no
/// words (as RabbitMQ's `split_topic_key`), so `#` matches it and `*` does not.
pub fn split_amqp(key: &str) -> impl Iterator<Item = &str> + Clone {
    let empty = key.is_empty();
    key.split('.').filter(move |_| !empty)
}

/// A trie node: exact-word children, the `*` child, the `#` child, and the
/// values of patterns that end here.
#[derive(Debug)]
struct Node<T> {
    words: FastMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            words: FastMap::default(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// Which values follow MQTT's rule for `$` topics (MQTT 5.0 §4.7.2, 3.1.1
/// §4.7.2): a topic whose first word starts with `$` is not matched by
/// their patterns that start with a wildcard. AMQP bindings do not follow
/// it (an AMQP `#` binding sees `$SYS` messages, as in RabbitMQ).
pub trait DollarRule<T> {
    /// Whether `value` follows the MQTT rule.
    fn protects(&self, value: &T) -> bool;
}

/// No value follows the MQTT rule: AMQP semantics throughout.
#[derive(Debug, Clone, Copy, Default)]
pub struct AmqpRules;

impl<T> DollarRule<T> for AmqpRules {
    fn protects(&self, _: &T) -> bool {
        false
    }
}

/// Every value follows the MQTT rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttRules;

impl<T> DollarRule<T> for MqttRules {
    fn protects(&self, _: &T) -> bool {
        true
    }
}

impl<T, F: Fn(&T) -> bool> DollarRule<T> for F {
    fn protects(&self, value: &T) -> bool {
        self(value)
    }
}

/// Topic patterns mapping to values `T`; a pattern may hold several values.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `value` under `pattern`. Returns false (and changes nothing) if
    /// that exact pair is already present.
    pub fn insert<'a>(&mut self, pattern: impl IntoIterator<Item = &'a str>, value: T) -> bool {
        let mut node = &mut self.root;
        for w in pattern {
            node = match w {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        if node.values.contains(&value) {
            return false;
        }
        node.values.push(value);
        self.len += 1;
        true
    }

    /// Remove `value` from `pattern`, pruning empty nodes. Returns whether it
    /// was there.
    pub fn remove<'a>(&mut self, pattern: impl IntoIterator<Item = &'a str>, value: &T) -> bool {
        let words: Vec<&str> = pattern.into_iter().collect();
        let removed = Self::remove_in(&mut self.root, &words, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<T>, words: &[&str], value: &T) -> bool {
        let Some((first, rest)) = words.split_first() else {
            let before = node.values.len();
            node.values.retain(|v| v != value);
            return node.values.len() != before;
        };
        match *first {
            "*" | "#" => {
                let slot = if *first == "*" {
                    &mut node.star
                } else {
                    &mut node.hash
                };
                let Some(child) = slot.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, value);
                if child.is_empty() {
                    *slot = None;
                }
                removed
            }
            w => {
                let Some(child) = node.words.get_mut(w) else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, value);
                if child.is_empty() {
                    node.words.remove(w);
                }
                removed
            }
        }
    }

    /// Call `f` for every value whose pattern matches `topic`. A value under
    /// several matching patterns is reported once per pattern; callers that
    /// need a set deduplicate.
    pub fn for_each_match<'t>(
        &self,
        topic: impl IntoIterator<Item = &'t str>,
        rule: impl DollarRule<T>,
        mut f: impl FnMut(&T),
    ) {
        let words: smallvec::SmallVec<[&str; 8]> = topic.into_iter().collect();
        if !words.first().is_some_and(|w| w.starts_with('$')) {
            Self::walk(&self.root, &words, 0, false, &mut f);
            return;
        }
        // A `$` topic: the exact words at the root for everyone, the root's
        // wildcards only for values that do not follow the MQTT rule.
        Self::walk(&self.root, &words, 0, true, &mut f);
        let mut unprotected = |v: &T| {
            if !rule.protects(v) {
                f(v)
            }
        };
        if let Some(star) = &self.root.star {
            Self::walk(star, &words, 1, false, &mut unprotected);
        }
        if let Some(hash) = &self.root.hash {
            Self::walk_hash(hash, &words, 0, &mut unprotected);
        }
    }

    fn walk(node: &Node<T>, words: &[&str], i: usize, no_wild_here: bool, f: &mut impl FnMut(&T)) {
        match words.get(i) {
            None => node.values.iter().for_each(&mut *f),
            Some(w) => {
                if let Some(child) = node.words.get(*w) {
                    Self::walk(child, words, i + 1, false, f);
                }
                if !no_wild_here {
                    if let Some(star) = &node.star {
                        Self::walk(star, words, i + 1, false, f);
                    }
                }
            }
        }
        if no_wild_here {
            return;
        }
        if let Some(hash) = &node.hash {
            Self::walk_hash(hash, words, i, f);
        }
    }

    /// The `#` child `hash` of a node reached at word `i`: `#` swallows
    /// zero or more words, so every split point is tried. A pattern ending
    /// in `#` matches whatever remains in one step.
    fn walk_hash(hash: &Node<T>, words: &[&str], i: usize, f: &mut impl FnMut(&T)) {
        if hash.words.is_empty() && hash.star.is_none() && hash.hash.is_none() {
            hash.values.iter().for_each(&mut *f);
        } else {
            for j in i..=words.len() {
                Self::walk(hash, words, j, false, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(trie: &TopicTrie<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(split_amqp(topic), AmqpRules, |v| {
            if !out.contains(v) {
                out.push(*v)
            }
        });
        out.sort();
        out
    }

    #[test]
    fn tutorial_five_examples() {
        let mut t = TopicTrie::new();
        t.insert(split_amqp("*.orange.*"), "Q1");
        t.insert(split_amqp("*.*.rabbit"), "Q2");
        t.insert(split_amqp("lazy.#"), "Q2");
        assert_eq!(matches(&t, "quick.orange.rabbit"), ["Q1", "Q2"]);
        assert_eq!(matches(&t, "lazy.orange.elephant"), ["Q1", "Q2"]);
        assert_eq!(matches(&t, "quick.orange.fox"), ["Q1"]);
        assert_eq!(matches(&t, "lazy.brown.fox"), ["Q2"]);
        assert_eq!(matches(&t, "lazy.pink.rabbit"), ["Q2"]);
        assert!(matches(&t, "quick.brown.fox").is_empty());
        assert!(matches(&t, "orange").is_empty());
        assert!(matches(&t, "quick.orange.new.rabbit").is_empty());
        assert_eq!(matches(&t, "lazy.orange.new.rabbit"), ["Q2"]);
        assert_eq!(matches(&t, "lazy"), ["Q2"]);
    }

    #[test]
    fn hash_anywhere_and_empty_words() {
        let mut t = TopicTrie::new();
        t.insert(split_amqp("#"), "all");
        t.insert(split_amqp("a.#.z"), "az");
        t.insert(split_amqp("#.b.#"), "hasb");
        t.insert(split_amqp("*"), "one");
        t.insert(split_amqp(""), "empty");
        assert_eq!(matches(&t, ""), ["all", "empty"]);
        assert_eq!(matches(&t, "a.z"), ["all", "az"]);
        assert_eq!(matches(&t, "a.b.c.z"), ["all", "az", "hasb"]);
        assert_eq!(matches(&t, "b"), ["all", "hasb", "one"]);
        assert_eq!(matches(&t, "a..z"), ["all", "az"]);
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        let mut t = TopicTrie::new();
        t.insert(["#"], "all");
        t.insert(["+", "x"].map(|w| if w == "+" { "*" } else { w }), "plus");
        t.insert(["$SYS", "#"], "sys");
        let mut got = Vec::new();
        t.for_each_match(["$SYS", "x"], MqttRules, |v| got.push(*v));
        assert_eq!(got, ["sys"]);
        got.clear();
        t.for_each_match(["a", "x"], MqttRules, |v| got.push(*v));
        got.sort();
        assert_eq!(got, ["all", "plus"]);
        // AMQP bindings see `$` topics through wildcards.
        got.clear();
        t.for_each_match(["$SYS", "x"], AmqpRules, |v| got.push(*v));
        got.sort();
        assert_eq!(got, ["all", "plus", "sys"]);
        // Per value: only those following the MQTT rule are kept out.
        got.clear();
        t.for_each_match(["$SYS", "x"], |v: &&str| *v == "all", |v| got.push(*v));
        got.sort();
        assert_eq!(got, ["plus", "sys"]);
    }

    #[test]
    fn insert_remove_prunes() {
        let mut t = TopicTrie::new();
        assert!(t.insert(split_amqp("a.*.c"), 1));
        assert!(!t.insert(split_amqp("a.*.c"), 1));
        assert!(t.insert(split_amqp("a.#"), 2));
        assert_eq!(t.len(), 2);
        assert!(t.remove(split_amqp("a.*.c"), &1));
        assert!(!t.remove(split_amqp("a.*.c"), &1));
        assert!(t.remove(split_amqp("a.#"), &2));
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }

    /// The trie agrees with a direct recursive matcher on random patterns.
    #[test]
    fn agrees_with_reference_matcher() {
        use proptest::prelude::*;
        fn reference(p: &[&str], t: &[&str]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"#", rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                Some((&"*", rest)) => !t.is_empty() && reference(rest, &t[1..]),
                Some((w, rest)) => t.first() == Some(w) && reference(rest, &t[1..]),
            }
        }
        let word = prop_oneof![Just("a"), Just("b"), Just("*"), Just("#")];
        let tword = prop_oneof![Just("a"), Just("b"), Just("c")];
        proptest!(|(pats in proptest::collection::vec(proptest::collection::vec(word, 0..5), 1..6),
                    topic in proptest::collection::vec(tword, 0..6))| {
            let mut t = TopicTrie::new();
            for (i, p) in pats.iter().enumerate() {
                t.insert(p.iter().copied(), i);
            }
            let mut got = Vec::new();
            t.for_each_match(topic.iter().copied(), AmqpRules, |v| got.push(*v));
            got.sort();
            got.dedup();
            let want: Vec<usize> = pats.iter().enumerate()
                .filter(|(_, p)| reference(p, &topic)).map(|(i, _)| i).collect();
            prop_assert_eq!(got, want);
        });
    }
}
