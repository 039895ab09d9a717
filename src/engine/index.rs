//! Which subscriptions match a topic, on the shard that owns the topic. A trie of pattern
//! segments: looking a topic up walks its segments once (plus the `*` branches), so the cost
//! does not grow with the number of patterns that cannot match.

use std::collections::HashMap;

use super::event::Priority;
use super::topic::{Pattern, Segment};

/// A subscription as an owner shard knows it: where it lives and what it filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubEntry {
    /// Shard-qualified subscription key (see [`SubKey`]).
    pub key: SubKey,
    pub min_priority: Priority,
}

/// A subscription's identity across shards: its home shard (where its queue and its client
/// live) and a number unique within that shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubKey {
    pub shard: u16,
    pub local: u64,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Patterns ending exactly at this node.
    here: Vec<SubEntry>,
    /// Patterns ending in `**` at this node: they match any one or more further segments.
    rest: Vec<SubEntry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

/// All subscriptions registered on one shard, indexed by pattern.
#[derive(Default)]
pub struct SubscriptionIndex {
    root: Node,
    len: usize,
    /// Bumped on every change, so topics can cache their match lists and notice staleness.
    generation: u64,
}

impl SubscriptionIndex {
    /// Number of registered subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no subscription is registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes whenever a subscription is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Registers `entry` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, entry: SubEntry) {
        let mut node = &mut self.root;
        for segment in pattern.segments() {
            match segment {
                Segment::Literal(lit) => node = node.children.entry(lit.into()).or_default(),
                Segment::Star => node = node.star.get_or_insert_with(Default::default),
                Segment::Rest => {
                    push_exact(&mut node.rest, entry);
                    self.len += 1;
                    self.generation += 1;
                    return;
                }
            }
        }
        push_exact(&mut node.here, entry);
        self.len += 1;
        self.generation += 1;
    }

    /// Removes the subscription `key` registered under `pattern`; false if it was not there.
    pub fn remove(&mut self, pattern: &Pattern, key: SubKey) -> bool {
        let segments: Vec<Segment> = pattern.segments().collect();
        let removed = remove_in(&mut self.root, &segments, key);
        if removed {
            self.len -= 1;
            self.generation += 1;
        }
        removed
    }

    /// Appends every subscription matching `topic` to `out`, each once.
    pub fn matches(&self, topic: &str, out: &mut Vec<SubEntry>) {
        let segments: Vec<&str> = topic.split('/').collect();
        collect(&self.root, &segments, out);
    }
}

/// Pushes the first entry of a list without the spare room `Vec::push` reserves (most patterns are
/// alone at their node, and that room was a measurable part of a subscription's memory:
/// docs/PERFORMANCE.md); later pushes grow the list as usual.
fn push_exact(list: &mut Vec<SubEntry>, entry: SubEntry) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(entry);
}

fn remove_in(node: &mut Node, segments: &[Segment], key: SubKey) -> bool {
    let take = |list: &mut Vec<SubEntry>| match list.iter().position(|e| e.key == key) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    };
    let Some((first, rest)) = segments.split_first() else {
        return take(&mut node.here);
    };
    match first {
        Segment::Rest => take(&mut node.rest),
        Segment::Star => {
            let Some(child) = node.star.as_deref_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, key);
            if child.is_empty() {
                node.star = None;
            }
            removed
        }
        Segment::Literal(lit) => {
            let Some(child) = node.children.get_mut(*lit) else {
                return false;
            };
            let removed = remove_in(child, rest, key);
            if child.is_empty() {
                node.children.remove(*lit);
            }
            removed
        }
    }
}

fn collect(node: &Node, segments: &[&str], out: &mut Vec<SubEntry>) {
    let Some((first, rest)) = segments.split_first() else {
        out.extend_from_slice(&node.here);
        return;
    };
    out.extend_from_slice(&node.rest);
    if let Some(child) = node.children.get(*first) {
        collect(child, rest, out);
    }
    if let Some(star) = node.star.as_deref() {
        collect(star, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(local: u64) -> SubEntry {
        SubEntry {
            key: SubKey { shard: 0, local },
            min_priority: Priority::Batch,
        }
    }

    fn keys(index: &SubscriptionIndex, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        index.matches(topic, &mut out);
        let mut keys: Vec<u64> = out.iter().map(|e| e.key.local).collect();
        keys.sort();
        keys
    }

    #[test]
    fn finds_exact_star_and_rest_subscriptions() {
        let mut index = SubscriptionIndex::default();
        let patterns = [
            "sensors/t1",
            "sensors/*",
            "sensors/**",
            "**",
            "*/t1",
            "other/*",
        ];
        for (i, p) in patterns.iter().enumerate() {
            index.insert(&Pattern::parse(p.as_bytes()).unwrap(), entry(i as u64));
        }
        assert_eq!(keys(&index, "sensors/t1"), vec![0, 1, 2, 3, 4]);
        assert_eq!(keys(&index, "sensors/a/b"), vec![2, 3]);
        assert_eq!(keys(&index, "sensors"), vec![3]);
        assert_eq!(keys(&index, "other/x"), vec![3, 5]);
        let g = index.generation();
        assert!(index.remove(
            &Pattern::parse(b"sensors/*").unwrap(),
            SubKey { shard: 0, local: 1 }
        ));
        assert!(!index.remove(
            &Pattern::parse(b"sensors/*").unwrap(),
            SubKey { shard: 0, local: 1 }
        ));
        assert_ne!(index.generation(), g);
        assert_eq!(keys(&index, "sensors/t1"), vec![0, 2, 3, 4]);
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn wildcards_find_reserved_topics_like_any_other() {
        let mut index = SubscriptionIndex::default();
        for (i, p) in ["**", "*/x", "$sys/*", "other/**"].iter().enumerate() {
            index.insert(&Pattern::parse(p.as_bytes()).unwrap(), entry(i as u64));
        }
        assert_eq!(keys(&index, "$sys/x"), vec![0, 1, 2]);
    }

    #[test]
    fn removing_everything_leaves_an_empty_trie() {
        let mut index = SubscriptionIndex::default();
        let p = Pattern::parse(b"a/*/c/**").unwrap();
        index.insert(&p, entry(1));
        assert!(index.remove(&p, SubKey { shard: 0, local: 1 }));
        assert!(index.root.is_empty());
        assert!(index.is_empty());
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        /// The index finds exactly the patterns whose own `matches` says yes.
        #[test]
        fn index_agrees_with_pattern_matching(
            patterns in prop::collection::vec("(a|b|\\*)(/(a|b|\\*)){0,3}(/\\*\\*)?", 1..20),
            topics in prop::collection::vec("(a|b|c)(/(a|b|c)){0,4}", 1..20),
        ) {
            let mut index = SubscriptionIndex::default();
            let parsed: Vec<Pattern> = patterns.iter().map(|p| Pattern::parse(p.as_bytes()).unwrap()).collect();
            for (i, p) in parsed.iter().enumerate() {
                index.insert(p, entry(i as u64));
            }
            for t in &topics {
                let expected: Vec<u64> = parsed.iter().enumerate()
                    .filter(|(_, p)| p.matches(t)).map(|(i, _)| i as u64).collect();
                prop_assert_eq!(keys(&index, t), expected);
            }
        }
    }
}
