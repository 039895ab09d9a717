//! Topics and patterns as NATS subjects, and back, with no I/O.
//!
//! A topic's `/`-separated segments become a subject's `.`-separated tokens behind a prefix:
//! `sensors/t1` → `eventstream.sensors.t1`. A pattern maps the same way, and its wildcards
//! mean the same in NATS: `*` matches one segment (one token) and a last `**` one or more (NATS
//! `>`). Topics have no whitespace and no `*` (PROTOCOL.md §4), so within a segment only `.`,
//! `>` and the escape character `%` itself mean something else in NATS; they are written
//! `%2E`, `%3E` and `%25`. The mapping is one-to-one: [`topic_of`] undoes [`subject_of`] and
//! refuses any subject it could not have made.

use crate::engine::topic::Segment;
use crate::engine::{Pattern, Topic};

/// The escape character inside a token, and the escapes it starts.
const ESCAPE: char = '%';
const ESCAPES: [(char, &str); 3] = [('%', "%25"), ('.', "%2E"), ('>', "%3E")];

/// Why a prefix or a subject cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("bridge prefix {0:?} is not one or more NATS tokens (no empty token, no whitespace, no '*' or '>')")]
    BadPrefix(String),
    #[error("subject {0:?} is not under the bridge prefix")]
    NotOurs(String),
    #[error("subject {0:?} has an escape eventstream does not write")]
    BadEscape(String),
    #[error("subject {subject:?} does not name a valid topic: {why}")]
    NotATopic { subject: String, why: String },
}

/// The tokens every bridged subject starts with (`bridge.subject_prefix`), checked once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The prefix and its trailing `.`.
    dotted: String,
}

impl Prefix {
    /// Checks `prefix` is one or more plain NATS tokens.
    pub fn new(prefix: &str) -> Result<Prefix, SubjectError> {
        let plain_token = |t: &str| {
            !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        };
        if !prefix.split('.').all(plain_token) {
            return Err(SubjectError::BadPrefix(prefix.to_owned()));
        }
        Ok(Prefix {
            dotted: format!("{prefix}."),
        })
    }
}

/// The subject events of `topic` (the text of a valid topic: checked once, when its events
/// were published) are exported to.
pub fn subject_of(prefix: &Prefix, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.dotted.len() + topic.len());
    subject.push_str(&prefix.dotted);
    for (i, segment) in topic.split('/').enumerate() {
        if i > 0 {
            subject.push('.');
        }
        push_escaped(&mut subject, segment);
    }
    subject
}

/// The NATS subscription subject that receives every event of a topic `pattern` matches.
pub fn subscription_of(prefix: &Prefix, pattern: &Pattern) -> String {
    let mut subject = prefix.dotted.clone();
    for (i, segment) in pattern.segments().enumerate() {
        if i > 0 {
            subject.push('.');
        }
        match segment {
            Segment::Literal(literal) => push_escaped(&mut subject, literal),
            Segment::Star => subject.push('*'),
            Segment::Rest => subject.push('>'),
        }
    }
    subject
}

/// The topic an imported `subject` names: the inverse of [`subject_of`].
pub fn topic_of(prefix: &Prefix, subject: &str) -> Result<Topic, SubjectError> {
    let Some(rest) = subject.strip_prefix(prefix.dotted.as_str()) else {
        return Err(SubjectError::NotOurs(subject.to_owned()));
    };
    let mut topic = String::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        unescape_into(&mut topic, token).ok_or_else(|| SubjectError::BadEscape(subject.into()))?;
    }
    Topic::parse(topic.into()).map_err(|e| SubjectError::NotATopic {
        subject: subject.to_owned(),
        why: e.to_string(),
    })
}

fn push_escaped(out: &mut String, segment: &str) {
    // Most segments have nothing to escape: copied whole. (Every special character is ASCII.)
    let special = |b: u8| ESCAPES.iter().any(|(c, _)| *c as u32 == u32::from(b));
    if !segment.bytes().any(special) {
        out.push_str(segment);
        return;
    }
    for c in segment.chars() {
        match ESCAPES.iter().find(|(special, _)| *special == c) {
            Some((_, escaped)) => out.push_str(escaped),
            None => out.push(c),
        }
    }
}

/// Appends `token` unescaped; None if it holds an escape [`push_escaped`] never writes.
fn unescape_into(out: &mut String, token: &str) -> Option<()> {
    let mut rest = token;
    while let Some(at) = rest.find(ESCAPE) {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        let (special, _) = ESCAPES.iter().find(|(_, e)| *e == escape)?;
        out.push(*special);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::interest::nats_matches;
    use proptest::prelude::*;

    fn prefix() -> Prefix {
        Prefix::new("eventstream").unwrap()
    }

    fn topic(text: &str) -> Topic {
        Topic::parse(text.as_bytes().to_vec().into()).unwrap()
    }

    #[test]
    fn segments_become_tokens_behind_the_prefix() {
        assert_eq!(
            subject_of(&prefix(), topic("sensors/t1").as_str()),
            "eventstream.sensors.t1"
        );
        let pattern = Pattern::parse(b"sensors/*/x/**").unwrap();
        assert_eq!(
            subscription_of(&prefix(), &pattern),
            "eventstream.sensors.*.x.>"
        );
    }

    #[test]
    fn what_nats_reads_as_separator_or_wildcard_is_escaped_and_comes_back() {
        let tricky = topic("v1.2/a>b/50%/ü");
        let subject = subject_of(&prefix(), tricky.as_str());
        assert_eq!(subject, "eventstream.v1%2E2.a%3Eb.50%25.ü");
        assert_eq!(topic_of(&prefix(), &subject).unwrap(), tricky);
    }

    #[test]
    fn subjects_it_could_not_have_made_are_refused() {
        let p = prefix();
        assert!(matches!(
            topic_of(&p, "other.a"),
            Err(SubjectError::NotOurs(_))
        ));
        for bad in ["eventstream.a%2", "eventstream.a%41", "eventstream.%"] {
            assert!(
                matches!(topic_of(&p, bad), Err(SubjectError::BadEscape(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            topic_of(&p, "eventstream.a..b"),
            Err(SubjectError::NotATopic { .. })
        ));
        assert!(matches!(
            topic_of(&p, "eventstream.a*"),
            Err(SubjectError::NotATopic { .. })
        ));
    }

    #[test]
    fn a_prefix_is_plain_tokens() {
        assert!(Prefix::new("es.prod").is_ok());
        for bad in ["", "a..b", "a.", "a.*", "a.>", "a b"] {
            assert!(Prefix::new(bad).is_err(), "{bad:?}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        // Segment characters a topic allows, weighted toward the ones NATS reads specially.
        proptest::string::string_regex("[a-z0-9.>%$é_-]{1,6}").unwrap()
    }

    fn topic_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 1..5).prop_map(|s| s.join("/"))
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        let part = prop_oneof![3 => segment(), 1 => Just("*".to_owned())];
        (proptest::collection::vec(part, 1..5), any::<bool>()).prop_map(|(mut parts, rest)| {
            if rest {
                parts.push("**".to_owned());
            }
            parts.join("/")
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn every_topic_comes_back_from_its_subject(text in topic_text()) {
            let Ok(t) = Topic::parse(text.into_bytes().into()) else { return Ok(()) };
            let subject = subject_of(&prefix(), t.as_str());
            prop_assert_eq!(topic_of(&prefix(), &subject).unwrap(), t.clone());
            prop_assert_eq!(subject.matches('.').count(), t.as_str().matches('/').count() + 1);
        }

        #[test]
        fn nats_matches_a_subject_exactly_when_the_pattern_matches_the_topic(
            pattern in pattern_text(),
            text in topic_text(),
        ) {
            let (Ok(p), Ok(t)) = (
                Pattern::parse(pattern.as_bytes()),
                Topic::parse(text.into_bytes().into()),
            ) else {
                return Ok(());
            };
            let subscription = subscription_of(&prefix(), &p);
            let subject = subject_of(&prefix(), t.as_str());
            prop_assert_eq!(nats_matches(&subscription, &subject), p.matches(t.as_str()));
        }
    }
}
