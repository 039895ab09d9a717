//! Topic names and subscription patterns (PROTOCOL.md §4): validation and matching, with no I/O and
//! no allocation on the matching path.

use bytes::Bytes;
use std::fmt;

use super::routing::{route_hash, table_hash};

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic or pattern is refused; the text is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes, longer than 255")]
    TooLong(usize),
    #[error("is not valid UTF-8")]
    NotUtf8,
    #[error("starts with '/'")]
    LeadingSlash,
    #[error("ends with '/'")]
    TrailingSlash,
    #[error("has an empty segment ('//')")]
    EmptySegment,
    #[error("has whitespace or a control character at byte {0}")]
    BadCharacter(usize),
    #[error("has '*' at byte {0}: a topic never contains '*' (only patterns use '*' and '**')")]
    Star(usize),
    #[error(
        "has '*' at byte {0} inside a segment: a segment with '*' must be exactly '*' or, as \
         the last segment, '**'"
    )]
    StarInSegment(usize),
    #[error("has '**' before its last segment: '**' may only be the last segment")]
    DoubleStarNotLast,
}

/// Checks the rules topics and patterns share, and for a topic (`star_allowed` false) that it
/// has no `*`; returns the text. One pass over the bytes for ASCII names (the common case);
/// Unicode names take the slower, char-aware path. The first refused character is the one
/// reported, whichever rule it breaks.
#[inline]
fn check_shape(bytes: &[u8], star_allowed: bool) -> Result<&str, TopicError> {
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| TopicError::NotUtf8)?;
    let refused = |at: usize| match bytes[at] {
        b'*' => TopicError::Star(at),
        _ => TopicError::BadCharacter(at),
    };
    // Branch-free scans the compiler vectorises; positions are looked for only on error. The
    // star is one more comparison in the same scan, not a pass of its own.
    let ascii_bad = |b: &u8| *b <= b' ' || *b == 0x7f || (*b == b'*' && !star_allowed);
    if bytes.is_ascii() {
        if bytes.iter().any(ascii_bad) {
            let at = bytes.iter().position(ascii_bad).expect("found above");
            return Err(refused(at));
        }
    } else if let Some((at, _)) = text
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control() || (*c == '*' && !star_allowed))
    {
        return Err(refused(at));
    }
    let empty_segment = bytes.windows(2).any(|w| w == b"//");
    if bytes[0] == b'/' {
        return Err(TopicError::LeadingSlash);
    }
    if bytes[bytes.len() - 1] == b'/' {
        return Err(TopicError::TrailingSlash);
    }
    if empty_segment {
        return Err(TopicError::EmptySegment);
    }
    debug_assert!(star_allowed || !bytes.contains(&b'*'));
    Ok(text)
}

/// A topic that passed PROTOCOL.md §4: UTF-8, 1..=255 bytes, non-empty `/`-separated segments, no
/// whitespace or control characters, and no `*` anywhere (so no name can be mistaken for a
/// pattern's wildcard).
///
/// It carries its [`route_hash`] and its [`table_hash`], computed once at parse: a publisher
/// repeating one topic reuses the parsed topic, so routing each of its events costs a
/// division and finding its owner's entry one probe, not passes over the name (both
/// passes were a measurable part of a native publish's server time: docs/PERFORMANCE.md).
#[derive(Clone)]
pub struct Topic {
    bytes: Bytes,
    route: u64,
    table: u64,
}

impl Topic {
    /// Validates `bytes` as a topic; keeps the bytes shared, no copy.
    pub fn parse(bytes: Bytes) -> Result<Topic, TopicError> {
        check_shape(&bytes, false)?;
        let (route, table) = (route_hash(&bytes), table_hash(&bytes));
        Ok(Topic {
            bytes,
            route,
            table,
        })
    }

    /// The same topic in bytes of its own, so that keeping it does not keep alive the whole
    /// receive buffer its bytes were read into.
    pub fn detached(&self) -> Topic {
        Topic {
            bytes: Bytes::copy_from_slice(&self.bytes),
            route: self.route,
            table: self.table,
        }
    }

    /// The stable hash that picks this topic's owner shard ([`route_hash`] of its bytes).
    pub fn route(&self) -> u64 {
        debug_assert_eq!(self.route, route_hash(&self.bytes));
        self.route
    }

    /// The hash of this topic in its owner's topic table ([`table_hash`] of its bytes).
    pub fn table_hash(&self) -> u64 {
        debug_assert_eq!(self.table, table_hash(&self.bytes));
        self.table
    }

    /// The topic's text.
    pub fn as_str(&self) -> &str {
        debug_assert!(std::str::from_utf8(&self.bytes).is_ok());
        // SAFETY: `parse` is the only constructor and it checked UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.bytes) }
    }

    /// The topic's bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for a valid topic; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Topics starting with `$` belong to the server; clients may subscribe, not publish.
    pub fn is_reserved(&self) -> bool {
        self.bytes.first() == Some(&b'$')
    }
}

/// The topic a connection last published to, validated, kept in bytes of its own
/// ([`Topic::detached`]) so that an idle connection does not pin a receive buffer. Publishers
/// usually repeat one topic: [`Shard::publish_in_place`](super::Shard::publish_in_place),
/// [`Shard::publish_batch_in_place`](super::Shard::publish_batch_in_place) and
/// [`Shard::validate_recent`](super::Shard::validate_recent) then reuse it instead of checking
/// and hashing the name again (a measurable part of a native
/// publish's server time, more before the route hash was cached: docs/PERFORMANCE.md).
#[derive(Default)]
pub struct RecentTopic(std::cell::RefCell<Option<Topic>>);

impl RecentTopic {
    /// The remembered topic, if any (borrowed until the guard is dropped).
    #[inline]
    pub fn get(&self) -> std::cell::Ref<'_, Option<Topic>> {
        self.0.borrow()
    }

    /// Remembers `topic` (a copy, made only when it differs from the one remembered).
    #[inline]
    pub fn remember(&self, topic: &Topic) {
        let mut last = self.0.borrow_mut();
        if last.as_ref() != Some(topic) {
            *last = Some(topic.detached());
        }
    }
}

/// Equal names are equal topics (the cached hashes follow from the name). Clones of one topic
/// share their bytes: those compare without reading them.
impl PartialEq for Topic {
    #[inline]
    fn eq(&self, other: &Topic) -> bool {
        let same = self.bytes.as_ptr() == other.bytes.as_ptr() && self.len() == other.len();
        same || self.bytes == other.bytes
    }
}

impl Eq for Topic {}

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.as_str())
    }
}

/// One segment of a pattern, borrowed from its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment<'a> {
    /// Matches exactly this segment.
    Literal(&'a str),
    /// `*`: matches exactly one segment.
    Star,
    /// `**` (last segment only): matches one or more trailing segments.
    Rest,
}

/// A subscription pattern: a topic whose segments may be `*`, and whose last may be `**`; a
/// `*` anywhere else is refused (it would match no topic, since topics have none).
/// Validated once at subscribe time; it keeps only its text (segments are read from it on
/// demand, so a subscription costs one allocation here, not one per segment), and matching
/// walks segments without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
}

impl Pattern {
    /// Validates and parses `bytes` as a pattern.
    pub fn parse(bytes: &[u8]) -> Result<Pattern, TopicError> {
        let text = check_shape(bytes, true)?;
        if bytes.contains(&b'*') {
            let mut start = 0;
            let mut parts = text.split('/').peekable();
            while let Some(part) = parts.next() {
                let last = parts.peek().is_none();
                match part {
                    "*" => {}
                    "**" if last => {}
                    "**" => return Err(TopicError::DoubleStarNotLast),
                    _ => {
                        if let Some(at) = part.find('*') {
                            return Err(TopicError::StarInSegment(start + at));
                        }
                    }
                }
                start += part.len() + 1;
            }
        }
        Ok(Pattern { text: text.into() })
    }

    /// The pattern as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments, in order (`**` can only be the last: `parse` refused it elsewhere).
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + Clone {
        self.text.split('/').map(|part| match part {
            "*" => Segment::Star,
            "**" => Segment::Rest,
            literal => Segment::Literal(literal),
        })
    }

    /// True when the pattern has no wildcard: it names a single topic, so only that topic's
    /// owner shard needs to know about it.
    pub fn is_exact(&self) -> bool {
        self.segments().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Does `topic` match? `sensors/*` matches `sensors/t1`, not `sensors/a/b` nor `sensors`;
    /// `sensors/**` matches `sensors/t1` and `sensors/a/b`, not `sensors`.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for segment in self.segments() {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::Star => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic(s: &str) -> Result<Topic, TopicError> {
        Topic::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn recent_topic_copies_once_per_change_of_topic() {
        let recent = RecentTopic::default();
        assert!(recent.get().is_none());
        let a = topic("a/b").unwrap();
        recent.remember(&a);
        let kept = recent.get().as_ref().unwrap().bytes().as_ptr();
        assert_ne!(kept, a.bytes().as_ptr(), "a copy, not the receive buffer");
        // The same name again (from another buffer) keeps the copy it has.
        recent.remember(&topic("a/b").unwrap());
        assert_eq!(recent.get().as_ref().unwrap().bytes().as_ptr(), kept);
        recent.remember(&topic("a/c").unwrap());
        assert_eq!(recent.get().as_ref().unwrap().as_str(), "a/c");
    }

    #[test]
    fn a_topic_routes_like_its_name_and_a_detached_copy_like_the_original() {
        for name in ["a", "sensors/t1", "ünï/cødé"] {
            let t = topic(name).unwrap();
            assert_eq!(
                t.route(),
                crate::engine::routing::route_hash(name.as_bytes())
            );
            let copy = t.detached();
            assert_eq!(copy, t);
            assert_eq!(copy.route(), t.route());
            assert_ne!(copy.bytes().as_ptr(), t.bytes().as_ptr(), "owns its bytes");
        }
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn topics_follow_section_3() {
        assert!(topic("sensors/t1").is_ok());
        assert!(topic("a").is_ok());
        assert_eq!(topic("").unwrap_err(), TopicError::Empty);
        assert_eq!(topic("/a").unwrap_err(), TopicError::LeadingSlash);
        assert_eq!(topic("a/").unwrap_err(), TopicError::TrailingSlash);
        assert_eq!(topic("a//b").unwrap_err(), TopicError::EmptySegment);
        assert_eq!(topic("a b").unwrap_err(), TopicError::BadCharacter(1));
        assert_eq!(topic("a\tb").unwrap_err(), TopicError::BadCharacter(1));
        assert_eq!(topic("a\u{7}").unwrap_err(), TopicError::BadCharacter(1));
        assert_eq!(
            topic(&"x".repeat(256)).unwrap_err(),
            TopicError::TooLong(256)
        );
        assert!(topic(&"x".repeat(255)).is_ok());
        assert_eq!(
            Topic::parse(Bytes::from_static(b"\xff")).unwrap_err(),
            TopicError::NotUtf8
        );
        assert!(topic("$sys/x").unwrap().is_reserved());
    }

    #[test]
    fn a_topic_never_contains_a_star() {
        for (name, at) in [
            ("a*b", 1),
            ("*", 0),
            ("**", 0),
            ("sensors/*", 8),
            ("sensors/**", 8),
            ("x/**/y", 2),
            ("a*b/c", 1),
            ("a/b*", 3),
            ("ünï/c*", 7),
        ] {
            assert_eq!(topic(name).unwrap_err(), TopicError::Star(at), "{name}");
        }
        let message = topic("a*b").unwrap_err().to_string();
        assert!(message.contains("a topic never contains '*'"), "{message}");
        // A character error before the star is the one reported, on either path.
        assert_eq!(topic("a b*").unwrap_err(), TopicError::BadCharacter(1));
        assert_eq!(topic("é b*").unwrap_err(), TopicError::BadCharacter(2));
    }

    #[test]
    fn a_star_in_a_pattern_is_a_whole_segment() {
        for accepted in ["*", "**", "a/*/c", "a/**", "*/*", "*/x/**", "$sys/**", "a"] {
            assert!(Pattern::parse(accepted.as_bytes()).is_ok(), "{accepted}");
        }
        for (refused, at) in [
            ("a*b", 1),
            ("sensors/t*", 9),
            ("**x", 0),
            ("a/***", 2),
            ("*a/b", 0),
            ("a/b/x**", 5),
            ("ü/t*", 4),
        ] {
            assert_eq!(
                Pattern::parse(refused.as_bytes()).unwrap_err(),
                TopicError::StarInSegment(at),
                "{refused}"
            );
        }
        let message = Pattern::parse(b"sensors/t*").unwrap_err().to_string();
        assert!(
            message.contains("must be exactly '*' or, as the last segment, '**'"),
            "{message}"
        );
        let message = Pattern::parse(b"a/**/b").unwrap_err().to_string();
        assert!(
            message.contains("'**' may only be the last segment"),
            "{message}"
        );
    }

    #[test]
    fn patterns_follow_section_3() {
        assert_eq!(
            Pattern::parse(b"a/**/b").unwrap_err(),
            TopicError::DoubleStarNotLast
        );
        assert_eq!(
            Pattern::parse(b"a/").unwrap_err(),
            TopicError::TrailingSlash
        );
        assert!(pattern("sensors/t1").is_exact());
        assert!(!pattern("sensors/*").is_exact());
    }

    #[test]
    fn the_spec_examples_hold() {
        let one = pattern("sensors/*");
        assert!(one.matches("sensors/t1"));
        assert!(!one.matches("sensors/a/b"));
        assert!(!one.matches("sensors"));
        let rest = pattern("sensors/**");
        assert!(rest.matches("sensors/t1"));
        assert!(rest.matches("sensors/a/b"));
        assert!(!rest.matches("sensors"));
        assert!(!rest.matches("other/t1"));
        assert!(pattern("**").matches("a"));
        assert!(pattern("*/x/**").matches("a/x/b/c"));
        assert!(!pattern("*/x/**").matches("a/y/b"));
        assert!(pattern("a/b").matches("a/b"));
        assert!(!pattern("a/b").matches("a/bc"));
    }

    /// Wildcards treat `$` topics like any other (no MQTT-style exception): this version
    /// publishes nothing to them, so a subscription sees none, but the rule is pinned here.
    #[test]
    fn wildcards_match_reserved_topics_like_any_other() {
        assert!(pattern("**").matches("$sys/x"));
        assert!(pattern("*/x").matches("$sys/x"));
        assert!(pattern("$sys/*").matches("$sys/x"));
        assert!(!pattern("*").matches("$sys/x"));
    }

    /// Reference semantics written the slow, obvious way, to check `matches` against.
    fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
        match (pattern.split_first(), topic.split_first()) {
            (None, None) => true,
            (Some((&"**", [])), Some(_)) => true,
            (Some((&"*", p)), Some((_, t))) => reference_match(p, t),
            (Some((lit, p)), Some((seg, t))) => lit == seg && reference_match(p, t),
            _ => false,
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c1".to_owned()),
            "[a-c]{1,3}"
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        #[test]
        fn matching_agrees_with_reference(
            topic_segs in prop::collection::vec(segment(), 1..6),
            pat_segs in prop::collection::vec(prop_oneof![segment(), Just("*".to_owned())], 0..5),
            rest in any::<bool>(),
        ) {
            let mut pat: Vec<&str> = pat_segs.iter().map(String::as_str).collect();
            if rest || pat.is_empty() { pat.push("**"); }
            let t: Vec<&str> = topic_segs.iter().map(String::as_str).collect();
            let p = Pattern::parse(pat.join("/").as_bytes()).unwrap();
            prop_assert_eq!(p.matches(&t.join("/")), reference_match(&pat, &t));
        }

        /// The fast ASCII path and the char-aware path agree.
        #[test]
        fn ascii_and_unicode_paths_agree(text in "[a/ *\t\u{7f}é]{0,12}") {
            let ascii = text.replace('é', "e");
            let by_fast = Topic::parse(Bytes::from(ascii.clone())).map(|_| ());
            let unicode = format!("{ascii}é");
            let by_slow = Topic::parse(Bytes::from(unicode)).map(|_| ());
            // Appending a letter to the last segment can only fix a trailing slash; every
            // other verdict must match (a star is refused wherever it is).
            if !ascii.ends_with('/') && !ascii.is_empty() {
                prop_assert_eq!(by_fast, by_slow);
            }
        }

        /// Where `*` may appear (PROTOCOL.md §4), against the rule written the obvious way: never
        /// in a topic; in a pattern only as a whole segment `*`, or `**` as the last segment.
        #[test]
        fn stars_follow_the_rule(text in "[ab*/]{1,12}") {
            let segments: Vec<&str> = text.split('/').collect();
            let shaped = segments.iter().all(|s| !s.is_empty());
            let last = segments.len() - 1;
            let stars_whole = segments.iter().enumerate().all(|(i, s)| {
                !s.contains('*') || *s == "*" || (*s == "**" && i == last)
            });
            prop_assert_eq!(
                Topic::parse(Bytes::from(text.clone())).is_ok(),
                shaped && !text.contains('*')
            );
            prop_assert_eq!(Pattern::parse(text.as_bytes()).is_ok(), shaped && stars_whole);
        }

        #[test]
        fn parsing_never_panics_and_valid_topics_are_exact_patterns(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let t = Topic::parse(Bytes::from(bytes.clone()));
            let p = Pattern::parse(&bytes);
            if let Ok(t) = t {
                let p = p.expect("every topic is also a pattern");
                prop_assert!(p.is_exact());
                prop_assert!(p.matches(t.as_str()));
            }
        }
    }
}
