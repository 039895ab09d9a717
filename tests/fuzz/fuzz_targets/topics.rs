//! Topic and pattern parsing, and matching: the first byte splits the input into a pattern
//! and a topic. Parsing refuses or accepts, never panics; a valid topic has no `*` and, used
//! as a pattern, matches itself; a valid pattern has `*` only as a whole wildcard segment.
#![no_main]

use bytes::Bytes;
use eventstream::engine::topic::Segment;
use eventstream::engine::{Pattern, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (pattern, topic) = data.split_at(split);
    let pattern = Pattern::parse(pattern);
    if let Ok(pattern) = &pattern {
        let literal_star = |s: Segment<'_>| matches!(s, Segment::Literal(l) if l.contains('*'));
        assert!(!pattern.segments().any(literal_star));
    }
    if let Ok(topic) = Topic::parse(Bytes::copy_from_slice(topic)) {
        assert!(!topic.bytes().contains(&b'*'));
        let itself = Pattern::parse(topic.bytes()).expect("a topic is a valid pattern");
        assert!(itself.matches(topic.as_str()));
        if let Ok(pattern) = pattern {
            let _ = pattern.matches(topic.as_str());
        }
    }
});
