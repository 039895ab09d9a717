//! Which NATS subscriptions a node holds, with no I/O: one for each pattern its local
//! subscribers ask for, narrowed to the import patterns and counted, so that the last local
//! unsubscribe removes it; and, since NATS delivers a message once to each subscription it
//! matches, which one of them imports it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::subject::{subscription_of, Prefix};
use crate::engine::topic::Segment;
use crate::engine::Pattern;

/// A local subscription to `pattern` started (`added`) or ended, as a shard tells the bridge.
#[derive(Clone, Debug)]
pub struct LocalChange {
    pub pattern: Arc<Pattern>,
    pub added: bool,
}

/// A change to make to the node's NATS subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Subscribe(String),
    Unsubscribe(String),
}

/// The node's interest in NATS: every NATS subscription it holds, with how many local
/// subscriptions need it.
#[derive(Debug)]
pub struct Interest {
    prefix: Prefix,
    imports: Vec<Pattern>,
    /// By NATS subscription subject: how many local subscriptions need it.
    held: BTreeMap<String, usize>,
}

impl Interest {
    /// No interest yet; local patterns will be narrowed to `imports` (`bridge.import`).
    pub fn new(prefix: Prefix, imports: Vec<Pattern>) -> Interest {
        Interest {
            prefix,
            imports,
            held: BTreeMap::new(),
        }
    }

    /// A local subscription to `pattern` started: the NATS subscriptions it newly needs.
    pub fn add(&mut self, pattern: &Pattern) -> Vec<Change> {
        let mut changes = Vec::new();
        for subject in self.subjects_for(pattern) {
            let count = self.held.entry(subject.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                changes.push(Change::Subscribe(subject));
            }
        }
        changes
    }

    /// A local subscription to `pattern` ended: the NATS subscriptions no longer needed.
    pub fn remove(&mut self, pattern: &Pattern) -> Vec<Change> {
        let mut changes = Vec::new();
        for subject in self.subjects_for(pattern) {
            let Some(count) = self.held.get_mut(&subject) else {
                debug_assert!(false, "removed a pattern never added: {subject}");
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.held.remove(&subject);
                changes.push(Change::Unsubscribe(subject));
            }
        }
        changes
    }

    /// The NATS subscriptions held, and for how many local subscriptions each.
    pub fn held(&self) -> impl Iterator<Item = (&str, usize)> {
        self.held.iter().map(|(s, n)| (s.as_str(), *n))
    }

    /// Whether the copy of a message on `subject` that arrived through subscription `via` is
    /// the one to import: each matching subscription gets its own copy, and only the first
    /// of them in order imports it, so an event is imported once.
    pub fn imports_via(&self, via: &str, subject: &str) -> bool {
        let first = self.held.keys().find(|s| nats_matches(s, subject));
        first.is_some_and(|first| first == via)
    }

    /// The NATS subscription subjects a local `pattern` needs: its intersection with each
    /// import pattern (none when it asks for nothing that is imported), without repeats.
    fn subjects_for(&self, pattern: &Pattern) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .imports
            .iter()
            .filter_map(|import| intersection(pattern, import))
            .map(|narrowed| subscription_of(&self.prefix, &narrowed))
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
    }
}

/// NATS's subject matching: a subscription's `*` matches one token, a last `>` one or more.
pub fn nats_matches(subscription: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in subscription.split('.') {
        match wanted {
            ">" => return tokens.next().is_some(),
            "*" => {
                if tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    tokens.next().is_none()
}

/// The pattern matching exactly the topics both `a` and `b` match, if any.
pub fn intersection(a: &Pattern, b: &Pattern) -> Option<Pattern> {
    let a: Vec<Segment<'_>> = a.segments().collect();
    let b: Vec<Segment<'_>> = b.segments().collect();
    let mut out: Vec<&str> = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => break,
            // `**` matches one or more segments: with what is left of the other, which is not
            // empty, the rest is the other's.
            (Some(Segment::Rest), Some(_)) => {
                out.extend(b[j..].iter().map(text));
                break;
            }
            (Some(_), Some(Segment::Rest)) => {
                out.extend(a[i..].iter().map(text));
                break;
            }
            (None, Some(_)) | (Some(_), None) => return None,
            (Some(x), Some(y)) => {
                out.push(match (x, y) {
                    (Segment::Literal(p), Segment::Literal(q)) if p == q => p,
                    (Segment::Literal(p), Segment::Star) | (Segment::Star, Segment::Literal(p)) => {
                        p
                    }
                    (Segment::Star, Segment::Star) => "*",
                    _ => return None,
                });
                i += 1;
                j += 1;
            }
        }
    }
    let narrowed = Pattern::parse(out.join("/").as_bytes());
    debug_assert!(narrowed.is_ok(), "an intersection of patterns is a pattern");
    narrowed.ok()
}

fn text<'a>(segment: &Segment<'a>) -> &'a str {
    match segment {
        Segment::Literal(literal) => literal,
        Segment::Star => "*",
        Segment::Rest => "**",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::subject::subject_of;
    use crate::engine::Topic;
    use proptest::prelude::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text.as_bytes()).unwrap()
    }

    fn interest(imports: &[&str]) -> Interest {
        let prefix = Prefix::new("es").unwrap();
        Interest::new(prefix, imports.iter().map(|i| pattern(i)).collect())
    }

    #[test]
    fn the_last_local_unsubscribe_removes_the_nats_subscription() {
        let mut interest = interest(&["**"]);
        let sub = |s: &str| Change::Subscribe(s.into());
        let unsub = |s: &str| Change::Unsubscribe(s.into());
        assert_eq!(interest.add(&pattern("a/*")), vec![sub("es.a.*")]);
        assert_eq!(interest.add(&pattern("a/*")), vec![]);
        assert_eq!(interest.remove(&pattern("a/*")), vec![]);
        assert_eq!(interest.remove(&pattern("a/*")), vec![unsub("es.a.*")]);
        assert_eq!(interest.held().count(), 0);
    }

    #[test]
    fn local_patterns_are_narrowed_to_what_is_imported() {
        let mut interest = interest(&["sensors/**", "alerts/high"]);
        assert_eq!(
            interest.add(&pattern("**")),
            vec![
                Change::Subscribe("es.alerts.high".into()),
                Change::Subscribe("es.sensors.>".into())
            ]
        );
        assert_eq!(interest.add(&pattern("other/x")), vec![]);
        assert_eq!(
            interest.add(&pattern("*/t1")),
            vec![Change::Subscribe("es.sensors.t1".into())]
        );
    }

    #[test]
    fn a_message_matching_several_subscriptions_is_imported_through_one() {
        let mut interest = interest(&["**"]);
        interest.add(&pattern("a/*"));
        interest.add(&pattern("a/**"));
        let subject = "es.a.b";
        let importers: Vec<&str> = ["es.a.*", "es.a.>"]
            .into_iter()
            .filter(|via| interest.imports_via(via, subject))
            .collect();
        assert_eq!(importers.len(), 1);
        assert!(interest.imports_via("es.a.>", "es.a.b.c"), "the only match");
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![4 => "[ab]".prop_map(String::from), 1 => Just("*".to_owned())]
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        (proptest::collection::vec(segment(), 1..4), any::<bool>()).prop_map(|(mut s, rest)| {
            if rest {
                s.push("**".into());
            }
            s.join("/")
        })
    }

    fn topic_text() -> impl Strategy<Value = String> {
        proptest::collection::vec("[abc]", 1..6).prop_map(|s| s.join("/"))
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn a_topic_matches_the_intersection_exactly_when_it_matches_both(
            a in pattern_text(), b in pattern_text(), t in topic_text(),
        ) {
            let (a, b) = (pattern(&a), pattern(&b));
            let both = a.matches(&t) && b.matches(&t);
            let narrowed = intersection(&a, &b);
            prop_assert_eq!(narrowed.is_some_and(|n| n.matches(&t)), both);
        }

        #[test]
        fn every_imported_topic_a_local_pattern_wants_is_imported_exactly_once(
            locals in proptest::collection::vec(pattern_text(), 1..4),
            imports in proptest::collection::vec(pattern_text(), 1..3),
            t in topic_text(),
        ) {
            let prefix = Prefix::new("es").unwrap();
            let imports: Vec<Pattern> = imports.iter().map(|i| pattern(i)).collect();
            let mut interest = Interest::new(prefix.clone(), imports.clone());
            let locals: Vec<Pattern> = locals.iter().map(|l| pattern(l)).collect();
            for local in &locals {
                interest.add(local);
            }
            let topic = Topic::parse(t.clone().into_bytes().into()).unwrap();
            let subject = subject_of(&prefix, topic.as_str());
            let copies: Vec<String> = interest
                .held()
                .map(|(s, _)| s.to_owned())
                .filter(|s| nats_matches(s, &subject))
                .collect();
            let imported = copies.iter().filter(|via| interest.imports_via(via, &subject)).count();
            let wanted = locals.iter().any(|l| l.matches(&t)) && imports.iter().any(|i| i.matches(&t));
            prop_assert_eq!(imported, usize::from(wanted));
        }
    }
}
