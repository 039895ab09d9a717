//! What the soak's subscribers check, and how publishers stay inside their queues: a ledger of
//! every topic a subscriber matches (sequence order, gaps, the closing marker), and the flow
//! control that keeps every checked subscriber a bounded window behind its publishers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The payload index a closing marker carries: published once per topic after its publisher
/// stopped, so a subscriber knows it has seen the topic's last event.
pub const MARKER_INDEX: u64 = u64::MAX;

/// Bytes of a soak payload: the publisher's index at 8..16 (as the bench rows stamp it).
pub const PAYLOAD_BYTES: usize = 100;

/// A payload carrying `index` (the event's position in its topic, 0-based).
pub fn payload(index: u64) -> Vec<u8> {
    let mut p = vec![0x5a; PAYLOAD_BYTES];
    crate::delivery::stamp(&mut p, 0, index);
    p
}

fn index_of(payload: &[u8]) -> Result<u64, String> {
    let bytes = payload
        .get(8..16)
        .ok_or_else(|| format!("a payload of {} bytes (no index)", payload.len()))?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// What one subscriber saw of one topic.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TopicSeen {
    pub topic: String,
    /// Last sequence seen (0: none).
    pub last: u64,
    pub received: u64,
    /// Sequences skipped between deliveries (events shed for this subscriber).
    pub gaps: u64,
    /// The closing marker's sequence, once seen.
    pub marker: Option<u64>,
}

/// Every topic a subscriber matches, checked event by event. Each soak topic has a single
/// publisher on a single connection, so event `i` of a topic must carry sequence `i + 1`.
pub struct Ledger {
    pub name: String,
    pub seen: Vec<TopicSeen>,
    /// Shedding is expected (the slow subscriber): gaps are counted instead of failing.
    shed_allowed: bool,
    /// Last sequence seen per topic, for the publishers' flow control.
    progress: Arc<Vec<AtomicU64>>,
    markers_left: usize,
}

impl Ledger {
    pub fn new(name: &str, topics: Vec<String>, shed_allowed: bool) -> Ledger {
        let progress = Arc::new(topics.iter().map(|_| AtomicU64::new(0)).collect());
        Ledger {
            name: name.to_owned(),
            markers_left: topics.len(),
            seen: topics
                .into_iter()
                .map(|topic| TopicSeen {
                    topic,
                    ..TopicSeen::default()
                })
                .collect(),
            shed_allowed,
            progress,
        }
    }

    /// Checks one delivery; true once every topic's closing marker arrived.
    pub fn record(&mut self, topic: &[u8], sequence: u64, payload: &[u8]) -> Result<bool, String> {
        let name = &self.name;
        let Some(t) = self.seen.iter().position(|s| s.topic.as_bytes() == topic) else {
            return Err(format!(
                "{name}: an event for {:?}, which its pattern does not match",
                String::from_utf8_lossy(topic)
            ));
        };
        let seen = &mut self.seen[t];
        let index = index_of(payload)?;
        if seen.marker.is_some() {
            return Err(format!(
                "{name}: {}: sequence {sequence} after the closing marker",
                seen.topic
            ));
        }
        if sequence <= seen.last {
            return Err(format!(
                "{name}: {}: sequence {sequence} after {} (reordered or repeated)",
                seen.topic, seen.last
            ));
        }
        if index != MARKER_INDEX && index != sequence - 1 {
            return Err(format!(
                "{name}: {}: sequence {sequence} carries the publisher's event {index} \
                 (expected {}): its events were reordered",
                seen.topic,
                sequence - 1
            ));
        }
        let skipped = sequence - seen.last - 1;
        if skipped > 0 && !self.shed_allowed {
            return Err(format!(
                "{name}: {}: {skipped} events lost after sequence {} (next was {sequence})",
                seen.topic, seen.last
            ));
        }
        seen.gaps += skipped;
        seen.received += 1;
        seen.last = sequence;
        if index == MARKER_INDEX {
            seen.marker = Some(sequence);
            self.markers_left -= 1;
        } else {
            self.progress[t].store(sequence, Ordering::Release);
        }
        Ok(self.markers_left == 0)
    }

    /// The last sequence seen per topic, for a publisher that waits for its events.
    pub fn progress(&self) -> Arc<Vec<AtomicU64>> {
        self.progress.clone()
    }

    pub fn received(&self) -> u64 {
        self.seen.iter().map(|s| s.received).sum()
    }

    pub fn gaps(&self) -> u64 {
        self.seen.iter().map(|s| s.gaps).sum()
    }

    /// Checks, once every marker arrived, that each topic's marker came right after the
    /// `published[t]` events its publisher had sequenced (`topics` names them).
    pub fn check_complete(&self, topics: &[String], published: &[u64]) -> Result<(), String> {
        for s in &self.seen {
            let t = topics
                .iter()
                .position(|x| *x == s.topic)
                .expect("a soak topic");
            if s.marker != Some(published[t] + 1) {
                return Err(format!(
                    "{}: {}: closing marker at {:?}, expected at {} (after {} events)",
                    self.name,
                    s.topic,
                    s.marker,
                    published[t] + 1,
                    published[t]
                ));
            }
        }
        Ok(())
    }
}

/// Flow control and stop signals shared by the soak's publishers and subscribers.
pub struct Flow {
    /// Events a publisher may be ahead of the slowest checked subscriber of its topic: well
    /// inside the server's subscriber queue, so a checked subscriber is never shed.
    window: u64,
    /// For each checked subscriber: the soak topics it matches and its progress on them.
    watchers: Vec<(Vec<usize>, Arc<Vec<AtomicU64>>)>,
    /// Publishers stop.
    pub stop: AtomicBool,
    /// The slow subscriber reads at full speed (the run is closing).
    pub draining: AtomicBool,
    /// Something failed: every thread gives up.
    pub abort: AtomicBool,
}

impl Flow {
    /// `ledgers`: the checked subscribers (not the slow one), with `topics` the soak topics.
    pub fn new(window: u64, topics: &[String], ledgers: &[&Ledger]) -> Flow {
        let watchers = ledgers
            .iter()
            .map(|l| {
                let indices = l
                    .seen
                    .iter()
                    .map(|s| {
                        topics
                            .iter()
                            .position(|t| *t == s.topic)
                            .expect("a soak topic")
                    })
                    .collect::<Vec<_>>();
                (indices, l.progress.clone())
            })
            .collect();
        Flow {
            window,
            watchers,
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        }
    }

    /// May the publisher of topic `t`, having sequenced `sent` events, send `more`?
    pub fn room(&self, t: usize, sent: u64, more: u64) -> bool {
        self.watchers.iter().all(
            |(topics, progress)| match topics.iter().position(|&x| x == t) {
                Some(i) => sent + more <= progress[i].load(Ordering::Acquire) + self.window,
                None => true,
            },
        )
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.aborted()
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    pub fn fail(&self) {
        self.abort.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Vec<String> {
        vec!["a/x".into(), "a/y".into()]
    }

    #[test]
    fn a_checked_subscriber_fails_on_a_gap_and_the_slow_one_counts_it() {
        let mut checked = Ledger::new("checked", topics(), false);
        assert_eq!(checked.record(b"a/x", 1, &payload(0)), Ok(false));
        let e = checked.record(b"a/x", 3, &payload(2)).unwrap_err();
        assert!(e.contains("1 events lost"), "{e}");
        let mut slow = Ledger::new("slow", topics(), true);
        slow.record(b"a/x", 1, &payload(0)).unwrap();
        slow.record(b"a/x", 4, &payload(3)).unwrap();
        assert_eq!(slow.gaps(), 2);
    }

    #[test]
    fn order_payload_index_and_topics_are_checked() {
        let mut l = Ledger::new("l", topics(), true);
        l.record(b"a/x", 2, &payload(1)).unwrap();
        assert!(l.record(b"a/x", 2, &payload(1)).is_err(), "repeated");
        assert!(l.record(b"a/y", 1, &payload(5)).is_err(), "wrong index");
        assert!(l.record(b"b/z", 1, &payload(0)).is_err(), "unmatched topic");
    }

    #[test]
    fn markers_end_the_ledger_and_must_follow_the_last_published_event() {
        let mut l = Ledger::new("l", topics(), false);
        l.record(b"a/x", 1, &payload(0)).unwrap();
        assert_eq!(l.record(b"a/x", 2, &payload(MARKER_INDEX)), Ok(false));
        assert!(
            l.record(b"a/x", 3, &payload(2)).is_err(),
            "after the marker"
        );
        assert_eq!(l.record(b"a/y", 1, &payload(MARKER_INDEX)), Ok(true));
        assert!(l.check_complete(&topics(), &[1, 0]).is_ok());
        assert!(l.check_complete(&topics(), &[2, 0]).is_err());
    }

    #[test]
    fn flow_holds_a_publisher_a_window_ahead_of_its_slowest_subscriber() {
        let all = topics();
        let a = Ledger::new("a", vec!["a/x".into()], false);
        let flow = Flow::new(10, &all, &[&a]);
        assert!(flow.room(0, 0, 10));
        assert!(!flow.room(0, 5, 6));
        assert!(flow.room(1, 1_000, 1), "a topic nobody checks is not held");
        a.progress[0].store(5, Ordering::Release);
        assert!(flow.room(0, 5, 10));
    }
}
